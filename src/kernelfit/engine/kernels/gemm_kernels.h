// A prompt's products straight from the packed groups: an int8 GEMM on AVX512-VNNI, for calls of more than a few
// rows (dot_kernels.h's dot products take short calls and the decode step).
//
// Why: the other prefill path unpacks each weight to bf16 for every call and hands it to oneDNN, whose bf16 GEMM
// already runs near this CPU's bf16 peak (Gemma 3 270M at 256 tokens: ~63 ms of products + ~11 ms of unpacking).
// vpdpbusd does 64 multiply-adds an instruction against vdpbf16ps's 32, so a GEMM over the int8/int4 codes
// themselves, with the activation quantized per group of 32 to one int8 digit, is the faster product — the
// precision is llama.cpp's (ggml-cpu quants.c, ggml_vec_dot_q4_1_q8_1: activations as Q8_1), a little below a
// bf16 product's; the decode step keeps the two-digit dot products.
//
// Register blocking: one zmm holds 16 weight rows (two of the 8-row tiles, dot_kernels.h's layout) x 4 columns,
// each int32 lane one row's sum; a block of MR activation rows shares every weight load, so per group of 32 a row
// costs 8 vpdpbusd (G = 32) and four float ops (scale, minimum). The 16 rows' codes (K bytes or K/2) stay in L1
// while all activation rows stream past them from L2.
#pragma once

#include "dot_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#define KF_GEMM_VNNI 1
#endif

namespace gemm {

using dot::QK;
using dot::SUB;
using dot::TILE;

// activation rows a block: 12 int32 and 12 float accumulators, with the weights and scales, in 32 zmm registers
// (8 measured alike; a second activation digit — dot_kernels.h's ~15 bits — measured 1.2-1.6x slower than
// unpacking to bf16 for oneDNN, so the precise path stays that one)
constexpr int64_t MR = 12;

// Activation rows in one int8 digit each (llama.cpp's Q8_1 precision), a scale per 32 values and the sum of the
// quantized values per 16 (times the scale: a group's minimum multiplies it)
struct Acts {
  int64_t m = 0, k = 0;
  std::vector<int8_t> q;
  std::vector<float> scale, sum;
};

#if defined(KF_GEMM_VNNI)
inline void quantize_rows(const float* x, int64_t m, int64_t k, Acts& a) {
  a.m = m, a.k = k;
  a.q.resize(m * k), a.scale.resize(m * k / QK), a.sum.resize(m * k / SUB);
  at::parallel_for(0, m * k / QK, 256, [&](int64_t begin, int64_t end) {
    const __m512 sign = _mm512_set1_ps(-0.f);
    for (int64_t g = begin; g < end; ++g) {
      const __m512 v0 = _mm512_loadu_ps(x + g * QK), v1 = _mm512_loadu_ps(x + g * QK + 16);
      // NaN or infinity (fpclass 0x99): the group's scale is NaN, so the output is, as in a float product
      const bool finite = !(_mm512_fpclass_ps_mask(v0, 0x99) | _mm512_fpclass_ps_mask(v1, 0x99));
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
      const float d = amax / 127.f, inv = finite && d > 0.f ? 1.f / d : 0.f;
      const __m512 s = _mm512_set1_ps(inv);
      // round to nearest even (the default rounding mode), saturated to int8; 0 for non-finite (no UB)
      const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a.q.data() + g * QK), _mm512_cvtsepi32_epi8(i0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a.q.data() + g * QK + 16), _mm512_cvtsepi32_epi8(i1));
      a.scale[g] = finite ? d : NAN;
      a.sum[2 * g] = float(_mm512_reduce_add_epi32(i0)) * a.scale[g];
      a.sum[2 * g + 1] = float(_mm512_reduce_add_epi32(i1)) * a.scale[g];
    }
  });
}

inline __m512i pair(const uint8_t* lo, const uint8_t* hi) {  // 32 bytes of tile t then of tile t + 1
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)), 1);
}

template <typename T>
inline __m512 pair8(const T* lo, const T* hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(dot::load8(lo)), dot::load8(hi), 1);
}

inline __m512i bcast4(const int8_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  return _mm512_set1_epi32(w);
}

// y[r, col0 + j] for R activation rows from row0 and the 16 weight rows of tiles (c0, c1): `valid` of them stored
// gsum: [rows, K / G] the activation's sum over each weight group, times `factor` for a symmetric type (m0 null)
template <int BITS, int G, typename T, int R>
void block(const uint8_t* c0, const uint8_t* c1, const T* s0, const T* s1, const T* m0, const T* m1,
           const float* gsum_all, const Acts& a, int64_t row0, float* y, int64_t ldy, int64_t col0, int64_t valid) {
  const int64_t k = a.k, groups = k / G;
  const int8_t* q = a.q.data() + row0 * k;
  const float* qs = a.scale.data() + row0 * (k / QK);
  const float* gsum = gsum_all + row0 * groups;
  const __m512i nib = _mm512_set1_epi8(0x0F);
  __m512 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const int64_t cb = g * G;
    if (dot::code_bits(BITS) == 4 || BITS == 6) {
#pragma GCC unroll 4
      for (int64_t c = cb; c < cb + G; c += 8) {
        const __m512i v = pair(c0 + dot::nibble_offset(BITS, c), c1 + dot::nibble_offset(BITS, c));
        __m512i lo = dot::grid_bytes<BITS>(_mm512_and_si512(v, nib));
        __m512i hi = dot::grid_bytes<BITS>(_mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
        if (BITS == 6)
          dot::add_high_bits(pair(c0 + dot::pairs_offset(c), c1 + dot::pairs_offset(c)), c % 16 != 0, lo, hi);
        for (int r = 0; r < R; ++r) {
          acc[r] = _mm512_dpbusd_epi32(acc[r], lo, bcast4(q + r * k + c));
          acc[r] = _mm512_dpbusd_epi32(acc[r], hi, bcast4(q + r * k + c + 4));
        }
      }
    } else {
#pragma GCC unroll 8
      for (int64_t c = cb; c < cb + G; c += 4) {
        const __m512i v = pair(c0 + c * 8, c1 + c * 8);
        for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], v, bcast4(q + r * k + c));
      }
    }
    // per row: 3 vector ops beside the group's vpdpbusd (4 with a minimum per group); the scalars are broadcast
    // from memory, which costs a load, not an ALU op
    const __m512 ws = pair8(s0 + g * TILE, s1 + g * TILE);
    if (m0) {
      const __m512 wm = pair8(m0 + g * TILE, m1 + g * TILE);
      for (int r = 0; r < R; ++r) {
        f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]),
                               _mm512_mul_ps(ws, _mm512_set1_ps(qs[r * (k / QK) + cb / QK])), f[r]);
        f[r] = _mm512_fmadd_ps(wm, _mm512_set1_ps(gsum[r * groups + g]), f[r]);
      }
    } else {  // w = scale * (code + factor): y += scale * (dot * a_scale + factor * a_sum)
      for (int r = 0; r < R; ++r)
        f[r] = _mm512_fmadd_ps(ws, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), _mm512_set1_ps(qs[r * (k / QK) + cb / QK]),
                                                   _mm512_set1_ps(gsum[r * groups + g])), f[r]);
    }
  }
  const __mmask16 mask = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + (row0 + r) * ldy + col0, mask, f[r]);
}

template <int BITS, int G, typename T>
void rows_block(int64_t rows, const uint8_t* c0, const uint8_t* c1, const T* s0, const T* s1, const T* m0,
                const T* m1, const float* gsum, const Acts& a, int64_t row0, float* y, int64_t ldy, int64_t col0,
                int64_t valid) {
  switch (rows) {
#define KF_GEMM_ROWS(R) \
  case R: return block<BITS, G, T, R>(c0, c1, s0, s1, m0, m1, gsum, a, row0, y, ldy, col0, valid);
    KF_GEMM_ROWS(1) KF_GEMM_ROWS(2) KF_GEMM_ROWS(3) KF_GEMM_ROWS(4)
    KF_GEMM_ROWS(5) KF_GEMM_ROWS(6) KF_GEMM_ROWS(7) KF_GEMM_ROWS(8)
    KF_GEMM_ROWS(9) KF_GEMM_ROWS(10) KF_GEMM_ROWS(11) KF_GEMM_ROWS(12)
#undef KF_GEMM_ROWS
  }
}

template <int BITS, int G, typename T>
void gemm_tiles(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, const Acts& a,
                const dot::Layout& L, int64_t n, float* y, int64_t ldy) {
  const auto* cp = codes.data_ptr<uint8_t>();
  const dot::TileScales<T> ts(scale, mins, L);
  const bool has_mins = mins.dim() > 0;
  const int64_t tile_bytes = L.k * L.bits, groups = L.k / G;
  std::vector<float> gsum(a.m * groups);
  for (int64_t i = 0; i < a.m * groups; ++i)
    gsum[i] = (G == 32 ? a.sum[2 * i] + a.sum[2 * i + 1] : a.sum[i]) * (has_mins ? 1.f : ts.factor);
  at::parallel_for(0, (L.tiles + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf0(ts.buf_floats()), buf1(ts.buf_floats());
    const T *s0, *s1, *m0, *m1;
    for (int64_t p = begin; p < end; ++p) {
      // an odd last tile is paired with itself: its second half is computed and not stored
      const int64_t t0 = 2 * p, t1 = std::min(t0 + 1, L.tiles - 1), col0 = t0 * TILE;
      const int64_t valid = std::min<int64_t>(2 * TILE, n - col0);
      ts.get(t0, s0, m0, buf0.data());
      ts.get(t1, s1, m1, buf1.data());
      for (int64_t row0 = 0; row0 < a.m; row0 += MR)
        rows_block<BITS, G, T>(std::min(MR, a.m - row0), cp + t0 * tile_bytes, cp + t1 * tile_bytes, s0, s1, m0, m1,
                               gsum.data(), a, row0, y, ldy, col0, valid);
    }
  });
}
#endif

inline bool fast_gemm() {
#if defined(KF_GEMM_VNNI)
  return true;
#else
  return false;
#endif
}

// y = [x @ W_0^T, x @ W_1^T, ...] for weights over the same input (Q, K, V or gate and up of mixed types): x is
// quantized per group of 32 to int8 once, each part written into its columns of one float32 [M, sum n] (no cat)
inline at::Tensor gemm_parts(const at::Tensor& x_in, const std::vector<at::Tensor>& codes,
                             const std::vector<at::Tensor>& scale, const std::vector<at::Tensor>& mins,
                             const std::vector<int64_t>& bits, const std::vector<int64_t>& n) {
  TORCH_CHECK(fast_gemm(), "gemm: this build has no AVX512-VNNI int8 GEMM (fast_gemm() is false)");
  const at::Tensor x = x_in.to(at::kFloat).contiguous().view({-1, x_in.size(-1)});
  int64_t total = 0;
  const std::vector<dot::Layout> layouts = dot::check_parts(codes, scale, mins, bits, n, x.size(1), "gemm", total);
  for (const auto& L : layouts)  // a group's integers at one activation scale: groups of up to one block (32)
    TORCH_CHECK(L.g <= QK, "gemm: the int8 GEMM takes groups of 16 or 32 weights (not ", L.g, ")");
  const size_t parts = codes.size();
  auto y = at::empty({x.size(0), total}, x.options());
#if defined(KF_GEMM_VNNI)
  Acts a;
  quantize_rows(x.data_ptr<float>(), x.size(0), x.size(1), a);
  int64_t col = 0;
  for (size_t i = 0; i < parts; ++i) {
    KF_DOT_DISPATCH(layouts[i], scale[i].scalar_type(), gemm_tiles, codes[i], scale[i], mins[i], a, layouts[i], n[i],
                    y.data_ptr<float>() + col, total);
    col += n[i];
  }
#endif
  return y;
}

// y[m, n] = sum_k x[m, k] * w[n, k] with x quantized per group of 32 to int8: float32 [M, n]
inline at::Tensor gemm_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale,
                          const at::Tensor& mins, int64_t bits, int64_t n) {
  return gemm_parts(x, {codes}, {scale}, {mins}, {bits}, {n});
}

}  // namespace gemm
