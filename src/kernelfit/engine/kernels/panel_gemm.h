// A prompt's precise products straight from the packed groups: each thread unpacks 32 output columns (four of
// dot_kernels.h's 8-row tiles) into a bf16 panel in its cache, then runs every prompt row past it with vdpbf16ps.
//
// Why: the precise path used to unpack a whole weight to bf16 in memory for each call and hand it to oneDNN. The
// unpack is bandwidth-bound (Gemma 3 270M's 4096 x 640 gate/up: ~5 MB written, ~0.2-0.3 ms a layer, ~8 ms of a
// 256-token prompt's ~75), and oneDNN reorders the plain bf16 matrix into its own blocked layout on every call
// again. Here the unpacked weights never leave the core's cache: the panel is written once and read by all rows.
// The arithmetic is the oneDNN path's (bf16 inputs, float32 sums), the output float32 (no bf16 rounding of the
// products). The microkernel alone ran at 476 G multiply-adds/s on 2 cores here (oneDNN's bf16 GEMM: 467).
//
// Register blocking: 12 prompt rows x 32 columns = 24 zmm accumulators; per pair of k, two panel loads and 12
// broadcasts of a row's two bf16 inputs feed 24 vdpbf16ps.
#pragma once

#include "amx_tiles.h"
#include "unpack_kernels.h"

#include <cstdlib>

#if defined(KF_DOT_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512BF16__)
#define KF_PANEL_GEMM 1
#endif

namespace panel {

using dot::TILE;
constexpr int64_t COLS = 32;  // a panel's output columns: 4 tiles, two zmm of float32 sums
constexpr int64_t MR = 12;    // prompt rows a block: 24 accumulators + 2 panel registers + a broadcast

#if defined(KF_PANEL_GEMM)
// Two tiles (16 rows) of a panel at once on AVX-512: tile_columns' arithmetic on 16 lanes, each pair of k converted
// by one vcvtne2ps2bf16 and put in pair order by one vpermw — the same bf16 (round to nearest even) as
// build_panel's 8-row path, a third of its instructions. Why: with the products on AMX tiles, unpacking became the
// prompt's bottleneck where a weight meets few rows (an expert's ~8 rows: 1M Q4_K weights took ~300 us to unpack,
// their products on the tiles a tenth of it).
template <int BITS, int G, typename T>
inline void pair_columns(const uint8_t* c0, const uint8_t* c1, const T* s0, const T* m0, const T* s1, const T* m1,
                         float factor, int64_t c, __m512 col[8]) {
  const __m512i byte = _mm512_set1_epi32(0xFF), nib = _mm512_set1_epi8(0x0F);
  const int64_t g = c / G;
  auto eight = [g](const T* a, const T* b) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(dot::load8(a + g * TILE)), dot::load8(b + g * TILE), 1);
  };
  const __m512 s = eight(s0, s1);
  const __m512 m = m0 ? eight(m0, m1) : _mm512_mul_ps(s, _mm512_set1_ps(factor));
  auto both = [](const uint8_t* a, const uint8_t* b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
  };
  __m512i quads[2];
  if (dot::code_bits(BITS) == 4 || BITS == 6) {
    const __m512i v = both(c0 + dot::nibble_offset(BITS, c), c1 + dot::nibble_offset(BITS, c));
    quads[0] = dot::grid_bytes<BITS>(_mm512_and_si512(v, nib));
    quads[1] = dot::grid_bytes<BITS>(_mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
    if (BITS == 6)
      dot::add_high_bits(both(c0 + dot::pairs_offset(c), c1 + dot::pairs_offset(c)), c % 16 != 0, quads[0], quads[1]);
  } else {
    quads[0] = both(c0 + c * 8, c1 + c * 8);
    quads[1] = both(c0 + c * 8 + 32, c1 + c * 8 + 32);
  }
  for (int h = 0; h < 2; ++h)
    for (int b = 0; b < 4; ++b)
      col[4 * h + b] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(quads[h], 8 * b), byte)), s, m);
}

// the tile pair t, t + 1 of a panel (pair_columns); arguments as build_panel's, buf2 the second tile's buffer
template <int BITS, int G, typename T>
void build_pair(const uint8_t* codes, const dot::TileScales<T>& ts, int64_t t0, int64_t t, int64_t k,
                uint32_t* panel, float* buf, float* buf2) {
  const T *s0, *m0, *s1, *m1;
  ts.get(t0 + t, s0, m0, buf);
  ts.get(t0 + t + 1, s1, m1, buf2);
  const uint8_t* c0 = codes + t * k * dot::code_bits(BITS);
  const uint8_t* c1 = c0 + k * dot::code_bits(BITS);
  // uint16 j of a pair row: even k of row j / 2 (the conversion's low half), odd k of it (its high half)
  alignas(64) static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(order);
  for (int64_t col = 0; col < k; col += 8) {
    __m512 v[8];  // v[j]: the two tiles' 16 rows at column col + j
    pair_columns<BITS, G, T>(c0, c1, s0, m0, s1, m1, ts.factor, col, v);
    for (int j = 0; j < 8; j += 2) {
      const __m512i pairs = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(v[j + 1], v[j]));
      _mm512_storeu_si512(panel + ((col + j) / 2) * COLS + t * TILE, pairs);
    }
  }
}

// Panel layout: for each pair of k (kp), 32 lanes of two bf16 (k = 2 kp, 2 kp + 1), lane j = output column j —
// vdpbf16ps's operand order. Tiles past the weight's last (a part of fewer than 32 columns) are zeros.
// codes: the panel's first tile's; ts.get(t0 + t) its scales (buf, buf2: ts.buf_floats() floats each)
template <int BITS, int G, typename T>
void build_panel(const uint8_t* codes, const dot::TileScales<T>& ts, int64_t t0, int64_t k, int64_t tiles,
                 uint32_t* panel, float* buf, float* buf2) {
  for (int64_t t = 0; t < COLS / TILE; ++t) {
    if (t % 2 == 0 && t + 1 < tiles) {  // two whole tiles: 16 lanes at a time
      build_pair<BITS, G, T>(codes, ts, t0, t, k, panel, buf, buf2);
      ++t;
      continue;
    }
    if (t >= tiles) {
      for (int64_t kp = 0; kp < k / 2; ++kp) std::memset(panel + kp * COLS + t * TILE, 0, TILE * sizeof(uint32_t));
      continue;
    }
    const uint8_t* c = codes + t * k * dot::code_bits(BITS);
    const T *s, *m;
    ts.get(t0 + t, s, m, buf);
    for (int64_t col = 0; col < k; col += 8) {
      __m256 v[8];  // v[j]: the tile's 8 rows at column col + j
      dot::tile_columns<BITS, G, T>(c, s, m, ts.factor, col, v);
      for (int j = 0; j < 8; j += 2) {
        // rows' (k, k + 1) pairs: bf16 of k in the low half of each lane, k + 1 in the high half
        const __m256i even = _mm256_castsi128_si256((__m128i)_mm256_cvtneps_pbh(v[j]));
        const __m256i odd = _mm256_castsi128_si256((__m128i)_mm256_cvtneps_pbh(v[j + 1]));
        const __m128i lo = _mm_unpacklo_epi16(_mm256_castsi256_si128(even), _mm256_castsi256_si128(odd));
        const __m128i hi = _mm_unpackhi_epi16(_mm256_castsi256_si128(even), _mm256_castsi256_si128(odd));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + ((col + j) / 2) * COLS + t * TILE),
                            _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
      }
    }
  }
}

// y[R rows, 32 columns (the first `valid` stored)] = x rows . panel over k; x bf16 rows ldx apart, y float32 rows ldy
// apart
template <int R>
void micro(const uint16_t* x, int64_t ldx, int64_t k, const uint32_t* panel, float* y, int64_t ldy, int64_t valid) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < k / 2; ++kp) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + kp * COLS);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + kp * COLS + 16);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * ldx + 2 * kp, sizeof pair);
      const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
      a0[r] = _mm512_dpbf16_ps(a0[r], b, w0);
      a1[r] = _mm512_dpbf16_ps(a1[r], b, w1);
    }
  }
  const __mmask16 m0 = valid >= 16 ? 0xFFFF : __mmask16((1u << valid) - 1);
  const __mmask16 m1 = valid >= 32 ? 0xFFFF : valid <= 16 ? 0 : __mmask16((1u << (valid - 16)) - 1);
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, a0[r]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, a1[r]);
  }
}

inline void rows_micro(int64_t rows, const uint16_t* x, int64_t ldx, int64_t k, const uint32_t* panel, float* y,
                       int64_t ldy, int64_t valid) {
  switch (rows) {
#define KF_PANEL_ROWS(R) \
  case R: return micro<R>(x, ldx, k, panel, y, ldy, valid);
    KF_PANEL_ROWS(1) KF_PANEL_ROWS(2) KF_PANEL_ROWS(3) KF_PANEL_ROWS(4) KF_PANEL_ROWS(5) KF_PANEL_ROWS(6)
    KF_PANEL_ROWS(7) KF_PANEL_ROWS(8) KF_PANEL_ROWS(9) KF_PANEL_ROWS(10) KF_PANEL_ROWS(11) KF_PANEL_ROWS(12)
#undef KF_PANEL_ROWS
  }
}

// x's m rows (ldx apart) past one panel over k into y's first `valid` columns: on the tiles (the rows past m up to
// the next multiple of amx::ROWS readable, the worker's tiles configured) or 12 rows at a time
inline void panel_rows(bool tiles, const uint16_t* x, int64_t ldx, int64_t m, int64_t k, const uint32_t* panel,
                       float* y, int64_t ldy, int64_t valid) {
#if defined(KF_AMX)
  if (tiles) return amx::rows(x, ldx, m, k, panel, COLS, y, ldy, valid);
#endif
  for (int64_t r0 = 0; r0 < m; r0 += MR)
    rows_micro(std::min(MR, m - r0), x + r0 * ldx, ldx, k, panel, y + r0 * ldy, ldy, valid);
}

// x as bf16 rows for panel_rows: padded with zero rows (whose outputs are not stored) where the tiles run, and its
// rows TILE_ROW_PAD columns longer (read x's row stride, size(1), as ldx). Why: a tile load reads 16 rows ldx apart;
// at k = 2048 they sit 4 KiB apart, all in one L1 set — 16 x 2048 panels past 256 rows ran at 283 G multiply-adds/s
// unpadded, 341 padded (32 rows: 276, 302).
constexpr int64_t TILE_ROW_PAD = 32;
inline at::Tensor tile_rows(const at::Tensor& x, bool tiles) {
  if (!tiles) return x;
  const int64_t rows = (amx::ROWS - x.size(0) % amx::ROWS) % amx::ROWS;
  return at::constant_pad_nd(x, {0, TILE_ROW_PAD, 0, rows});
}

// One part's panels [first, last): unpack each, run all rows past it; its columns start at y's column col0.
// x's rows ldx apart. tiles: on AMX (amx_tiles.h; x then tile_rows', the worker's tiles configured)
template <int BITS, int G, typename T>
void part_panels(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, const dot::Layout& L,
                 int64_t n, const uint16_t* x, int64_t ldx, int64_t m, float* y, int64_t ldy, int64_t first,
                 int64_t last, std::vector<uint32_t>& panel, bool tiles) {
  const auto* cp = codes.data_ptr<uint8_t>();
  const dot::TileScales<T> ts(scale, mins, L);
  const int64_t k = L.k, per_panel = COLS / TILE;
  std::vector<float> buf(ts.buf_floats()), buf2(ts.buf_floats());
#if defined(KF_AMX)
  if (tiles && m <= amx::ROWS) {  // one row tile: two panels a pass (amx::rows_two)
    panel.resize(k * COLS);
    uint32_t* second = panel.data() + k / 2 * COLS;
    for (int64_t p = first; p < last; p += 2) {
      const int64_t t0 = p * per_panel, col0 = p * COLS;
      build_panel<BITS, G, T>(cp + t0 * k * L.bits, ts, t0, k, std::min(per_panel, L.tiles - t0), panel.data(),
                              buf.data(), buf2.data());
      if (p + 1 == last) {
        amx::rows(x, ldx, m, k, panel.data(), COLS, y + col0, ldy, std::min(COLS, n - col0));
        break;
      }
      const int64_t t1 = t0 + per_panel;
      build_panel<BITS, G, T>(cp + t1 * k * L.bits, ts, t1, k, std::min(per_panel, L.tiles - t1), second, buf.data(),
                              buf2.data());
      amx::rows_two(x, ldx, m, k, panel.data(), second, COLS, y + col0, ldy, std::min(COLS, n - col0),
                    std::min(COLS, n - col0 - COLS));
    }
    return;
  }
#endif
  panel.resize(k / 2 * COLS);
  for (int64_t p = first; p < last; ++p) {
    const int64_t t0 = p * per_panel, col0 = p * COLS;
    build_panel<BITS, G, T>(cp + t0 * k * L.bits, ts, t0, k, std::min(per_panel, L.tiles - t0), panel.data(),
                            buf.data(), buf2.data());
    const int64_t valid = std::min(COLS, n - col0);
    panel_rows(tiles, x, ldx, m, k, panel.data(), y + col0, ldy, valid);
  }
}
#endif

// Whether this build runs bf16 products natively (AVX512-BF16, the panels' own condition), whatever
// KERNELFIT_PANEL_GEMM says: where not, oneDNN converts a bf16 product to float32 and rounds its output to bf16, so
// the fallbacks multiply in float32 instead (exact weights, float32 outputs)
inline bool bf16_native() {
#if defined(KF_PANEL_GEMM)
  return true;
#else
  return false;
#endif
}

// Built here, and not turned off by KERNELFIT_PANEL_GEMM=0 (read at each call: the unpack + oneDNN path can be
// compared with it in one process)
inline bool available() {
#if defined(KF_PANEL_GEMM)
  const char* off = std::getenv("KERNELFIT_PANEL_GEMM");
  return !(off && off[0] == '0');
#else
  return false;
#endif
}

// y = [x @ W_0^T, x @ W_1^T, ...] float32 [M, sum n] for dot weights over the same input (Q, K, V or gate and up of
// mixed types); x is taken as bf16 (a float32 x is rounded to it, as for oneDNN)
inline at::Tensor gemm_parts(const at::Tensor& x_in, const std::vector<at::Tensor>& codes,
                             const std::vector<at::Tensor>& scale, const std::vector<at::Tensor>& mins,
                             const std::vector<int64_t>& bits, const std::vector<int64_t>& n) {
  TORCH_CHECK(available(), "panel gemm: this build has no AVX512-BF16 kernel (available() is false)");
  const at::Tensor x = x_in.to(at::kBFloat16).contiguous().view({-1, x_in.size(-1)});
  int64_t total = 0;
  const std::vector<dot::Layout> layouts =
      dot::check_parts(codes, scale, mins, bits, n, x.size(1), "panel gemm", total);
  const size_t parts = codes.size();
  std::vector<int64_t> first_panel{0};  // the parts' panels numbered one after another
  for (size_t i = 0; i < parts; ++i) first_panel.push_back(first_panel.back() + (n[i] + COLS - 1) / COLS);
  auto y = at::empty({x.size(0), total}, x.options().dtype(at::kFloat));
#if defined(KF_PANEL_GEMM)
  // the tiles read 16 rows at a time: x padded with zero rows (whose outputs are not stored), and columns (tile_rows)
  const bool tiles = amx::ready() && x.size(1) % 32 == 0;
  const at::Tensor xs = tile_rows(x, tiles);
  const auto* xp = reinterpret_cast<const uint16_t*>(xs.data_ptr<at::BFloat16>());
  at::parallel_for(0, first_panel.back(), 1, [&](int64_t begin, int64_t end) {
    if (tiles) amx::configure();
    std::vector<uint32_t> panel;
    int64_t col = 0;
    for (size_t i = 0; i < parts; ++i) {
      const int64_t lo = std::max(begin, first_panel[i]) - first_panel[i];
      const int64_t hi = std::min(end, first_panel[i + 1]) - first_panel[i];
      if (lo < hi)
        KF_DOT_DISPATCH(layouts[i], scale[i].scalar_type(), part_panels, codes[i], scale[i], mins[i], layouts[i], n[i],
                        xp, xs.size(1), x.size(0), y.data_ptr<float>() + col, total, lo, hi, panel, tiles);
      col += n[i];
    }
    if (tiles) amx::release();
  });
#endif
  return y;
}

}  // namespace panel
