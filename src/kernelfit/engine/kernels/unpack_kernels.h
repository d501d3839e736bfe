// A dot weight's rows unpacked to float32 or bf16: the token table's lookup, and a prompt's products on the precise
// path (the layer's weights unpacked to bf16 — float32 without AVX512-BF16 — for that call and multiplied by oneDNN;
// gemm_kernels.h's int8 GEMM is the lossy alternative). The layout is dot_kernels.h's (tiles of 8 rows).
#pragma once

#include "dot_kernels.h"

namespace dot {

#if defined(KF_DOT_AVX2)
inline void transpose8(__m256 r[8]) {  // 8x8 floats: r[i][j] -> r[j][i]
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}
#endif

#if defined(KF_DOT_AVX2)
inline void store8(float* dst, __m256 v) { _mm256_storeu_ps(dst, v); }
inline void store8(at::BFloat16* dst, __m256 v) {  // round to nearest even (NaN kept: the health check sees it)
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
  // one vcvtneps2bf16 (round to nearest even) instead of six integer ops: the unpack is compute-bound, ~1/3 of
  // its ops were this conversion (weights are never float32 denormals, which the instruction flushes)
  const __m128bh h = _mm256_cvtneps_pbh(v);
  std::memcpy(dst, &h, sizeof h);
  return;
#endif
  const __m256i b = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_packus_epi32(_mm256_castsi256_si128(r),
                                                                      _mm256_extracti128_si256(r, 1)));
}
#endif

#if defined(KF_DOT_AVX2)
// Columns c..c+7 of a tile's 8 rows as floats: col[j] holds column c + j
template <int BITS, int G, typename T>
inline void tile_columns(const uint8_t* codes, const T* scale, const T* mins, float factor, int64_t c, __m256 col[8]) {
  const __m256i byte = _mm256_set1_epi32(0xFF), nib = _mm256_set1_epi8(0x0F);
  const int64_t g = c / G;
  const __m256 s = load8(scale + g * TILE);
  const __m256 m = mins ? load8(mins + g * TILE) : _mm256_mul_ps(s, _mm256_set1_ps(factor));
  __m256i quads[2];  // columns c..c+3 and c+4..c+7, 4 bytes (columns) per row lane
  if (code_bits(BITS) == 4 || BITS == 6) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + nibble_offset(BITS, c)));
    quads[0] = grid_bytes<BITS>(_mm256_and_si256(v, nib));
    quads[1] = grid_bytes<BITS>(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
    if (BITS == 6)
      add_high_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + pairs_offset(c))), c % 16 != 0,
                    quads[0], quads[1]);
  } else {
    quads[0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * 8));
    quads[1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * 8 + 32));
  }
  for (int h = 0; h < 2; ++h)
    for (int b = 0; b < 4; ++b)
      col[4 * h + b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(quads[h], 8 * b), byte)), s, m);
}
#endif

// One weight of a tile's row r, column c (the scalar path)
template <int BITS, int G, typename T>
inline float tile_value(const uint8_t* codes, const T* scale, const T* mins, float factor, int64_t k, int64_t r,
                        int64_t c) {
  const int32_t u = code_at(BITS, codes, r, c);
  const int64_t g = c / G;
  const float s = to_f32(scale[g * TILE + r]);
  return s * float(u) + (mins ? to_f32(mins[g * TILE + r]) : factor * s);
}

// The 8 rows of a tile as float32 or bf16 [8, K] (rows `k` apart)
template <int BITS, int G, typename T, typename O>
void tile_dequant(const uint8_t* codes, const T* scale, const T* mins, float factor, int64_t k, O* out) {
#if defined(KF_DOT_AVX2)
  for (int64_t c = 0; c < k; c += 8) {
    __m256 col[8];
    tile_columns<BITS, G, T>(codes, scale, mins, factor, c, col);
    transpose8(col);
    for (int r = 0; r < TILE; ++r) store8(out + r * k + c, col[r]);
  }
#else
  for (int64_t r = 0; r < TILE; ++r)
    for (int64_t c = 0; c < k; ++c) out[r * k + c] = O(tile_value<BITS, G, T>(codes, scale, mins, factor, k, r, c));
#endif
}

// float32 -> bf16, round to nearest even
inline void to_bf16(const float* x, int64_t n, at::BFloat16* out) {
  int64_t i = 0;
#if defined(KF_DOT_AVX2)
  for (; i + 8 <= n; i += 8) store8(out + i, _mm256_loadu_ps(x + i));
#endif
  for (; i < n; ++i) out[i] = at::BFloat16(x[i]);
}

template <int BITS, int G, typename T>
void dequant_tiles(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, const Layout& L,
                   const at::Tensor& rows, at::Tensor& out) {
  const auto* cp = codes.data_ptr<uint8_t>();
  const TileScales<T> ts(scale, mins, L);
  const float factor = ts.factor;
  const int64_t k = L.k, count = out.size(0);
  const int64_t* ids = rows.numel() ? rows.data_ptr<int64_t>() : nullptr;
  const bool f32 = out.scalar_type() == at::kFloat;
  // whole tiles when all rows are asked for; else the tile of each asked row
  const int64_t units = ids ? count : L.tiles;
  at::parallel_for(0, units, ids ? 64 : 4, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(TILE * k), buf(ts.buf_floats());
    for (int64_t u = begin; u < end; ++u) {
      const int64_t t = ids ? ids[u] / TILE : u;
      const uint8_t* c = cp + t * k * L.bits;
      const T *s, *m;
      ts.get(t, s, m, buf.data());
      if (!ids && (t + 1) * TILE <= count) {  // a whole tile of a whole weight: straight into the output
        if (f32) tile_dequant<BITS, G, T, float>(c, s, m, factor, k, out.data_ptr<float>() + t * TILE * k);
        else tile_dequant<BITS, G, T, at::BFloat16>(c, s, m, factor, k, out.data_ptr<at::BFloat16>() + t * TILE * k);
        continue;
      }
      tile_dequant<BITS, G, T, float>(c, s, m, factor, k, tile.data());
      const int64_t first = ids ? ids[u] % TILE : 0, last = ids ? first + 1 : std::min<int64_t>(TILE, count - t * TILE);
      for (int64_t r = first; r < last; ++r) {
        const int64_t dst = ids ? u : t * TILE + r;
        if (f32) std::memcpy(out.data_ptr<float>() + dst * k, tile.data() + r * k, k * sizeof(float));
        else to_bf16(tile.data() + r * k, k, out.data_ptr<at::BFloat16>() + dst * k);
      }
    }
  });
}

// Rows of the weight as float32 or bf16 [len(rows), K]; rows empty: all n rows (a prefill product's bf16 copy)
inline at::Tensor dot_dequant(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, int64_t bits,
                              int64_t n, const at::Tensor& rows, bool bf16) {
  const Layout L = check(codes, scale, mins, bits);
  const at::Tensor ids = rows.numel() ? rows.to(at::kLong).contiguous() : rows;
  if (ids.numel()) TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < n, "dot: row out of range");
  auto out = at::empty({ids.numel() ? ids.numel() : n, L.k}, codes.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  KF_DOT_DISPATCH(L, scale.scalar_type(), dequant_tiles, codes, scale, mins, L, ids, out);
  return out;
}

// Several dot weights over the same input (Q, K, V or gate and up of mixed types) unpacked into one bf16 (or float32)
// [sum n, K]: a prompt's one oneDNN product instead of one a part and a cat
inline at::Tensor dot_dequant_parts(const std::vector<at::Tensor>& codes, const std::vector<at::Tensor>& scale,
                                    const std::vector<at::Tensor>& mins, const std::vector<int64_t>& bits,
                                    const std::vector<int64_t>& n, bool bf16 = true) {
  int64_t total = 0;
  const std::vector<Layout> layouts = check_parts(codes, scale, mins, bits, n, -1, "dot", total);  // k: the first's
  at::Tensor out = at::empty({total, layouts[0].k}, codes[0].options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  const at::Tensor all_rows = at::empty({0}, codes[0].options().dtype(at::kLong));
  int64_t row = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    at::Tensor part = out.narrow(0, row, n[i]);  // whole rows: contiguous
    KF_DOT_DISPATCH(layouts[i], scale[i].scalar_type(), dequant_tiles, codes[i], scale[i], mins[i], layouts[i],
                    all_rows, part);
    row += n[i];
  }
  return out;
}

}  // namespace dot
