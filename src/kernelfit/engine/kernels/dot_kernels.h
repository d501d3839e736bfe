// Weight-only products that read GGUF-style groups as stored: 4-bit codes (Q4_0, Q4_1, Q4_K, Q2_K, Q3_K), 6-bit
// (Q6_K) or 8-bit codes (Q8_0, Q5_0, Q5_1, Q5_K) with a scale (and a minimum) per group of 32 or 16 weights, the scales exactly
// the file's (float16 where the file's are, float32 where a K-quant multiplies two of them).
//
// Why not torch's packed kernels: `_weight_int4pack_mm_for_cpu` and `_weight_int8pack_mm` take bf16 only
// (their float32 path is a reference loop ~40x slower here), so every product rounded its input, its output
// and the file's scales to 8 bits of mantissa, and the Q5/Q8/Q6_K types needed a lossy re-grid to int8 per
// row. These products instead follow llama.cpp's dot products (ggml-cpu quants.c, ggml_vec_dot_q4_1_q8_1:
// activations quantized per group of 32 to int8, integer dot products per group, one float scale per group)
// with one change: the activation is split into two int8 digits, a = s * (hi + lo / DIGIT_BASE), ~15 bits
// against llama.cpp's 8, so a product agrees with the float32 product of the file's own weights to ~5e-5.
// Weights are stored in tiles of 8 rows (TILE), so that one 256-bit register holds 8 rows x 4 (8-bit) or x 8
// (4-bit) consecutive columns and each int32 lane of vpdpbusd accumulates one row: no horizontal sums, one
// broadcast activation word per 8 rows, and the tile's 8 scales are one vector load. Codes are unsigned
// (an int8 code c is stored as c + 128, its minimum -128 * scale), so every type is w = scale * code + min per
// group. The integer dots use AVX512-VNNI / AVX-VNNI (vpdpbusd) where the compiler targets them, AVX2
// (vpmaddubsw) otherwise, and a scalar loop elsewhere (fast_dot() says which; the loader then uses torch's).
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "code_formats.h"  // defines KF_DOT_AVX2 where the compiler targets AVX2, FMA and F16C

namespace dot {

constexpr int64_t QK = 32;           // activation group: one scale per 32 inputs (llama.cpp's Q8_1 block)
constexpr int64_t TILE = 8;          // weight rows per tile: the int32 lanes of a 256-bit register
constexpr int64_t SUB = 16;          // activation sums are kept per 16 inputs (Q6_K's scale group)
constexpr float DIGIT_BASE = 128.f;  // weight of the second digit: lo = round((u - hi) * 128) is in [-64, 64]
// Codes are streamed from DRAM once per token: prefetched this far ahead (the hardware prefetcher alone left a
// 1536x576 product at ~16 GB/s here; 1-4 KB measured alike)
constexpr int64_t PREFETCH_BYTES = 4096;

inline float to_f32(float v) { return v; }
inline float to_f32(at::Half v) { return static_cast<float>(v); }

// One activation row in two int8 digits per group of 32; `scale` is s / DIGIT_BASE; `sum` per SUB inputs of the
// quantized values (the minimum of a group multiplies it).
struct Act {
  std::vector<int8_t> hi, lo;
  std::vector<float> scale, sum;
  std::vector<int32_t> hi_sum, lo_sum;  // each digit's integer sum per SUB inputs (8-bit codes without VNNI: dot_tiles.h)
  explicit Act(int64_t k) : hi(k), lo(k), scale(k / QK), sum(k / SUB), hi_sum(k / SUB), lo_sum(k / SUB) {}
};

inline void quantize(const float* x, int64_t k, Act& a) {
  for (int64_t g = 0; g < k / QK; ++g) {
    const float* v = x + g * QK;
    float amax = 0.f;
    bool finite = true;
    for (int64_t i = 0; i < QK; ++i) {
      amax = std::max(amax, std::fabs(v[i]));  // drops a NaN: it is caught below
      finite = finite && std::isfinite(v[i]);
    }
    const float d = amax / 127.f, inv = d > 0.f && std::isfinite(d) ? 1.f / d : 0.f;
    for (int64_t i = 0; i < QK; ++i) {
      const float u = std::isfinite(v[i]) ? v[i] * inv : 0.f, h = std::nearbyint(u);  // no NaN to int8 (UB)
      a.hi[g * QK + i] = static_cast<int8_t>(h);
      a.lo[g * QK + i] = static_cast<int8_t>(std::nearbyint((u - h) * DIGIT_BASE));
    }
    // a NaN or infinite input makes its group's scale NaN, so that it reaches the output as in a float product
    // (int8 codes cannot hold it; the health check looks for non-finite logits)
    a.scale[g] = finite ? d / DIGIT_BASE : NAN;
  }
  // The sums are of the quantized values, not of x: then sum (code + offset) * a - offset * sum(a) is exactly
  // sum code * a, and a symmetric type stored with an offset (Q8_0's c + 128, min -128 * d) loses nothing to it
  // (with float sums, the activation's rounding would meet codes of up to 255 instead of |c|: ~2-3x the error).
  for (int64_t j = 0; j < k / SUB; ++j) {
    int32_t h = 0, l = 0;
    for (int64_t i = j * SUB; i < (j + 1) * SUB; ++i) h += a.hi[i], l += a.lo[i];
    a.hi_sum[j] = h, a.lo_sum[j] = l;
    a.sum[j] = float(h * int32_t(DIGIT_BASE) + l) * a.scale[j * SUB / QK];
  }
}

// A tile's codes: code_formats.h (8, 4 or 6 bits a code; 4-bit codes of a grid).
// scale and mins: [K / G][8] per tile. mins may instead be one number f (a 0-d tensor): every group's minimum is
// f * its scale (the symmetric types: Q4_0 -8, Q5_0 -16, Q8_0 -128, Q6_K -32), which saves their bytes.

#if defined(KF_DOT_AVX2)
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {  // acc + 8 lanes of 4 products u8 * s8
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else  // vpmaddubsw saturates its int16 pair sums (255 * 127 * 2 > 2^15): the codes go in as two nibbles
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i lo_u = _mm256_and_si256(u, _mm256_set1_epi8(0x0F)), hi_u = _mm256_and_si256(_mm256_srli_epi16(u, 4), _mm256_set1_epi8(0x0F));
  const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo_u, s), ones),
                                     _mm256_slli_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(hi_u, s), ones), 4));
  return _mm256_add_epi32(acc, p);
#endif
}

// u8 codes below 128 (Q6_K's 6-bit ones; 4-bit linear codes take dot_tiles.h's 16-bit block sums): vpmaddubsw's pair
// sums (2 * 127 * 128 < 2^15) cannot saturate, so without VNNI one vpmaddubsw and one vpmaddwd do what dot_u8s8 splits
// into two nibbles for — the same integers in about half the instructions
inline __m256i dot_u7s8(__m256i acc, __m256i u, __m256i s) {
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
  return dot_u8s8(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

inline __m256i bcast4(const int8_t* p) {  // 4 activation bytes in every int32 lane
  int32_t w;
  std::memcpy(&w, p, 4);
  return _mm256_set1_epi32(w);
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

#include "dot_tiles.h"

struct Layout {
  int64_t bits, k, g, tiles;  // bits: a code's (the tile's bytes are k * bits)
  bool compact = false;  // the scales are bytes the kernels expand (TileScales), not one float a group
  int64_t format = bits;  // bits | grid << 8 (code_bits, grid_of): what the kernels are instantiated for
  bool exponents = false;  // (compact) MXFP4's scales as the file stores them: one e8m0 exponent byte a group
};

// MXFP4's scale of exponent byte e, halved for the doubled grid (ggml_e8m0_to_fp32_half): 2^(e - 128), below e = 2 a
// float32 denormal. Kept as the byte (one a 32 weights, the file's 4.25 bits) where a float32 made them 5.
inline float e8m0_half(uint8_t e) {
  const uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// A K-quant's scales as the file stores them (Q4_K, Q5_K: a float16 d and dmin per 256 weights, an unsigned 6-bit
// scale and minimum per 32; Q6_K: d per 256, a signed 8-bit scale per 16) instead of one float32 a group, which made
// every Q4_K weight 6 bits instead of the file's 4.5 (the runner read 1.38x the file's bytes a token). A tile's bytes
// (a uint8 or int8 [tiles, SUPER_BYTES * K / 256 + K / G * 8] tensor, int8 where the sub-scales are signed):
// for each 256 weights the 8 rows' float16 d (16 bytes), then for each group the 8 rows' integer sub-scale. Minimums
// likewise (dmin, unsigned sub-minimums; the minimum is -dmin * m), or a factor of the scales. Kernels get a tile's
// scales expanded into floats (TileScales::get): d * sub in float32, the same products the float path stored.
constexpr int64_t SUPER = 256, SUPER_BYTES = TILE * 2;

inline bool compact_type(at::ScalarType t) { return t == at::kByte || t == at::kChar; }

inline Layout check(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, int64_t format) {
  TORCH_CHECK(format == 4 || format == 6 || format == 8 || format == IQ4_CODES || format == MXFP4_CODES,
              "dot: bits must be 4, 6 or 8 (or a grid's 4-bit codes)");
  const int64_t bits = code_bits(format);
  TORCH_CHECK(grid_of(format) == LINEAR || (mins.dim() == 0 && mins.item<float>() == -128.f),
              "dot: a grid's codes take the factor -128");
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.is_contiguous(),
              "dot: codes must be contiguous uint8 [N/8, K*bits]");
  const int64_t k = codes.size(1) / bits, tiles = codes.size(0);
  TORCH_CHECK(k % QK == 0 && codes.size(1) == k * bits, "dot: K must be a multiple of 32");
  if (format == MXFP4_CODES && scale.scalar_type() == at::kByte) {
    TORCH_CHECK(scale.dim() == 3 && scale.size(0) == tiles && scale.size(1) * QK == k && scale.size(2) == TILE &&
                    scale.is_contiguous(),
                "dot: MXFP4's exponent bytes must be [N/8, K/32, 8]");
    Layout L{bits, k, QK, tiles, true, format};
    L.exponents = true;
    return L;
  }
  if (compact_type(scale.scalar_type())) {
    TORCH_CHECK(k % SUPER == 0 && scale.dim() == 2 && scale.size(0) == tiles && scale.is_contiguous(),
                "dot: two-level scales need K a multiple of 256 and [N/8, bytes] per tile");
    const int64_t sub = scale.size(1) - SUPER_BYTES * (k / SUPER), groups = sub / TILE;
    TORCH_CHECK(sub > 0 && groups * TILE == sub && k % groups == 0 && (k / groups == 32 || k / groups == 16),
                "dot: two-level scales of one sub-scale per 32 or 16 weights");
    TORCH_CHECK((mins.dim() == 0 && mins.scalar_type() == at::kFloat) ||
                    (mins.sizes() == scale.sizes() && mins.scalar_type() == at::kByte && mins.is_contiguous()),
                "dot: two-level minimums must be shaped as the scales (uint8), or one float32 factor of them");
    TORCH_CHECK(bits != 6 || k / groups == 16, "dot: 6-bit codes (Q6_K) take one sub-scale per 16 weights");
    TORCH_CHECK(grid_of(format) == LINEAR || k / groups == 32, "dot: a grid's codes take one scale per 32 weights");
    return {bits, k, k / groups, tiles, true, format};
  }
  TORCH_CHECK(scale.dim() == 3 && scale.size(0) == tiles && scale.size(2) == TILE && scale.is_contiguous(),
              "dot: scales must be [N/8, K/G, 8]");
  const int64_t g = k / scale.size(1);
  TORCH_CHECK(g * scale.size(1) == k && (g == 32 || g == 16 || g == 128), "dot: one scale per 128, 32 or 16 weights");
  TORCH_CHECK(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kHalf, "dot: float32/16 scales");
  TORCH_CHECK(g != 128 || scale.scalar_type() == at::kHalf, "dot: one scale per 128 weights must be float16");
  TORCH_CHECK(bits != 6 || (g == 16 && scale.scalar_type() == at::kFloat),
              "dot: 6-bit codes (Q6_K) take one float32 scale per 16 weights");
  TORCH_CHECK((mins.dim() == 0 && mins.scalar_type() == at::kFloat) ||
                  (mins.sizes() == scale.sizes() && mins.scalar_type() == scale.scalar_type() && mins.is_contiguous()),
              "dot: mins must be shaped and typed as the scales, or one float32 factor of them");
  TORCH_CHECK(grid_of(format) == LINEAR || (g == 32 && (scale.scalar_type() == at::kHalf) == (format == IQ4_CODES)),
              "dot: IQ4_NL's codes take float16 scales per 32, MXFP4's float32 ones");
  return {bits, k, g, tiles, false, format};
}

// A weight's scales and minimums a tile at a time: pointers into the stored arrays, or (two-level scales) the tile's
// expanded into `buf` (2 * K/G * TILE floats: scales, then minimums). mins is null where they are factor * scale.
template <typename T>
struct TileScales {
  const T* sp = nullptr;
  const T* mp = nullptr;
  const uint8_t* cs = nullptr;
  const uint8_t* cm = nullptr;
  int64_t per_tile, groups, supers, g;
  bool compact, sub_signed, exponents;
  float factor;

  TileScales(const at::Tensor& scale, const at::Tensor& mins, const Layout& L)
      : groups(L.k / L.g), supers(L.k / SUPER), g(L.g), compact(L.compact),
        sub_signed(scale.scalar_type() == at::kChar), exponents(L.exponents),
        factor(mins.dim() ? 0.f : mins.item<float>()) {
    if (exponents) {
      per_tile = scale.size(1) * TILE;
      cs = static_cast<const uint8_t*>(scale.data_ptr());
    } else if (compact) {
      per_tile = scale.size(1);
      cs = static_cast<const uint8_t*>(scale.data_ptr());
      cm = mins.dim() ? static_cast<const uint8_t*>(mins.data_ptr()) : nullptr;
    } else {
      per_tile = scale.size(1) * TILE;
      sp = static_cast<const T*>(scale.data_ptr());
      mp = mins.dim() ? static_cast<const T*>(mins.data_ptr()) : nullptr;
    }
  }

  int64_t buf_floats() const { return compact ? 2 * groups * TILE : 0; }

  void get(int64_t t, const T*& s, const T*& m, float* buf) const {
    if constexpr (std::is_same<T, float>::value) {
      if (exponents) {  // a tile's groups: 8 rows' bytes each, in the order the floats were
        const uint8_t* e = cs + t * per_tile;
        int64_t i = 0;
#if defined(KF_DOT_AVX2)
        // 8 bytes a step (e8m0_half's two cases, blended): the scalar loop cost ~20% of a cache-hot 2880 x 2880 product
        const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2), den = _mm256_set1_epi32(0x00200000);
        for (; i + 8 <= per_tile; i += 8) {
          const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(e + i)));
          const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(x, one), 23);
          const __m256i small = _mm256_sllv_epi32(den, x);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf + i),
                              _mm256_blendv_epi8(normal, small, _mm256_cmpgt_epi32(two, x)));
        }
#endif
        for (; i < per_tile; ++i) buf[i] = e8m0_half(e[i]);
        s = buf;
        m = nullptr;
        return;
      }
      if (compact) {
        expand(cs + t * per_tile, buf, sub_signed, false);
        if (cm) expand(cm + t * per_tile, buf + groups * TILE, false, true);
        s = buf;
        m = cm ? buf + groups * TILE : nullptr;
        return;
      }
    }
    s = sp + t * per_tile;
    m = mp ? mp + t * per_tile : nullptr;
  }

 private:
  void expand(const uint8_t* p, float* out, bool is_signed, bool negate) const {
    const uint8_t* sub = p + SUPER_BYTES * supers;
    const int64_t per_super = SUPER / g;
    for (int64_t sb = 0; sb < supers; ++sb) {
#if defined(KF_DOT_AVX2)
      // per group: 8 rows' sub-scales widened and multiplied by the rows' d (a decode step expands every tile it
      // reads, so this runs beside the products: ~4 instructions a group instead of 8 scalar conversions)
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + sb * SUPER_BYTES)));
      const __m256 sign = _mm256_set1_ps(negate ? -1.f : 1.f);
      for (int64_t j = sb * per_super; j < (sb + 1) * per_super; ++j) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sub + j * TILE));
        const __m256 q = _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
        _mm256_storeu_ps(out + j * TILE, _mm256_mul_ps(_mm256_mul_ps(d, q), sign));  // -(dmin * m) for minimums
      }
#else
      float d[TILE];
      for (int64_t r = 0; r < TILE; ++r) {
        at::Half h;
        std::memcpy(&h, p + sb * SUPER_BYTES + r * 2, 2);
        d[r] = static_cast<float>(h);
      }
      for (int64_t j = sb * per_super; j < (sb + 1) * per_super; ++j)
        for (int64_t r = 0; r < TILE; ++r) {
          const float q = is_signed ? float(static_cast<int8_t>(sub[j * TILE + r])) : float(sub[j * TILE + r]);
          out[j * TILE + r] = negate ? -(d[r] * q) : d[r] * q;  // -(dmin * m), as the float path stored it
        }
#endif
    }
  }
};

// The layouts of several weights over one input of k columns (Q, K, V or gate and up): each checked, all of k
// columns, n[i] rows in part i's tiles; `who` names the caller in the messages. total: the parts' rows together.
inline std::vector<Layout> check_parts(const std::vector<at::Tensor>& codes, const std::vector<at::Tensor>& scale,
                                       const std::vector<at::Tensor>& mins, const std::vector<int64_t>& bits,
                                       const std::vector<int64_t>& n, int64_t k, const char* who, int64_t& total) {
  const size_t parts = codes.size();
  TORCH_CHECK(parts >= 1 && scale.size() == parts && mins.size() == parts && bits.size() == parts && n.size() == parts,
              who, ": one codes, scale, mins, bits and n a part");
  std::vector<Layout> layouts;
  total = 0;
  for (size_t i = 0; i < parts; ++i) {
    layouts.push_back(check(codes[i], scale[i], mins[i], bits[i]));
    const Layout& L = layouts.back();
    TORCH_CHECK((k < 0 ? layouts[0].k : k) == L.k && n[i] <= L.tiles * TILE && n[i] > (L.tiles - 1) * TILE, who,
                ": shapes do not match");
    total += n[i];
  }
  return layouts;
}

// Runs FN<BITS, G, T>(args...) for a layout (C++17: no templated lambdas).
#define KF_DOT_DISPATCH(L, st, FN, ...)                                  \
  do {                                                                   \
    if ((L).format == dot::IQ4_CODES) {                                  \
      if ((st) == at::kHalf) FN<dot::IQ4_CODES, 32, at::Half>(__VA_ARGS__); \
      else FN<dot::IQ4_CODES, 32, float>(__VA_ARGS__);                   \
    } else if ((L).format == dot::MXFP4_CODES) {                         \
      FN<dot::MXFP4_CODES, 32, float>(__VA_ARGS__);                      \
    } else if ((st) == at::kHalf) {                                      \
      if ((L).bits == 4 && (L).g == 32) FN<4, 32, at::Half>(__VA_ARGS__); \
      else if ((L).g == 128) {                                           \
        if ((L).bits == 4) FN<4, 128, at::Half>(__VA_ARGS__);            \
        else FN<8, 128, at::Half>(__VA_ARGS__);                          \
      } else if ((L).bits == 4) FN<4, 16, at::Half>(__VA_ARGS__);        \
      else if ((L).g == 32) FN<8, 32, at::Half>(__VA_ARGS__);            \
      else FN<8, 16, at::Half>(__VA_ARGS__);                             \
    } else {                                                             \
      if ((L).bits == 6) FN<6, 16, float>(__VA_ARGS__);                  \
      else if ((L).bits == 4 && (L).g == 32) FN<4, 32, float>(__VA_ARGS__); \
      else if ((L).bits == 4) FN<4, 16, float>(__VA_ARGS__);             \
      else if ((L).g == 32) FN<8, 32, float>(__VA_ARGS__);               \
      else FN<8, 16, float>(__VA_ARGS__);                                \
    }                                                                    \
  } while (0)

// y (rows ldy apart) = the quantized rows . one part's tiles (n rows): two tiles at a time where Zmm runs (dot_tiles.h)
template <int BITS, int G, typename T>
void mm_tiles(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, const std::vector<Act>& acts,
              const Layout& L, int64_t n, float* yp, int64_t ldy) {
  const auto* cp = codes.data_ptr<uint8_t>();
  const TileScales<T> ts(scale, mins, L);
  at::parallel_for(0, L.tiles, 8, [&](int64_t begin, int64_t end) {
    float out[2 * TILE];
    std::vector<float> buf(ts.buf_floats()), buf2(ts.buf_floats());
    const T *s, *mn;
    int64_t t = begin;
#if defined(KF_DOT_PAIRS)
    const T *s1, *mn1;
    for (; t + 1 < end; t += 2) {
      ts.get(t, s, mn, buf.data());
      ts.get(t + 1, s1, mn1, buf2.data());
      const uint8_t* c0 = cp + t * L.k * L.bits;
      for (size_t m = 0; m < acts.size(); ++m) {
        tile_dot<BITS, G, T, Zmm>(c0, c0 + L.k * L.bits, s, mn, s1, mn1, ts.factor, acts[m], L.k, out);
        const int64_t rows = std::min<int64_t>(2 * TILE, n - t * TILE);
        std::memcpy(yp + m * ldy + t * TILE, out, rows * sizeof(float));
      }
    }
#endif
    for (; t < end; ++t) {
      ts.get(t, s, mn, buf.data());
      for (size_t m = 0; m < acts.size(); ++m) {
#if defined(KF_DOT_AVX2)
        tile_dot<BITS, G, T, Ymm>(cp + t * L.k * L.bits, nullptr, s, mn, s, mn, ts.factor, acts[m], L.k, out);
#else
        tile_dot_scalar<BITS, G, T>(cp + t * L.k * L.bits, s, mn, ts.factor, acts[m], L.k, out);
#endif
        const int64_t rows = std::min<int64_t>(TILE, n - t * TILE);
        std::memcpy(yp + m * ldy + t * TILE, out, rows * sizeof(float));
      }
    }
  });
}

// [x @ W_0^T, x @ W_1^T, ...]: x float [M, K] -> float32 [M, sum n] for weights over the same input (gate and up):
// its rows quantized once for all the parts (n: each part's rows before tile padding)
inline at::Tensor dot_mm_parts(const at::Tensor& x_in, const std::vector<at::Tensor>& codes,
                               const std::vector<at::Tensor>& scale, const std::vector<at::Tensor>& mins,
                               const std::vector<int64_t>& bits, const std::vector<int64_t>& n) {
  const at::Tensor x = x_in.to(at::kFloat).contiguous().view({-1, x_in.size(-1)});
  int64_t total = 0;
  const std::vector<Layout> layouts = check_parts(codes, scale, mins, bits, n, x.size(1), "dot", total);
  std::vector<Act> acts;
  for (int64_t m = 0; m < x.size(0); ++m) {
    acts.emplace_back(x.size(1));
    quantize(x.data_ptr<float>() + m * x.size(1), x.size(1), acts.back());
  }
  auto y = at::empty({x.size(0), total}, x.options());
  int64_t col = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    KF_DOT_DISPATCH(layouts[i], scale[i].scalar_type(), mm_tiles, codes[i], scale[i], mins[i], acts, layouts[i], n[i],
                    y.data_ptr<float>() + col, total);
    col += n[i];
  }
  return y;
}

// y[m, n] = sum_k x[m, k] * w[n, k]: x float [M, K] -> float32 [M, n] (n: the rows before tile padding)
inline at::Tensor dot_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins,
                         int64_t bits, int64_t n) {
  return dot_mm_parts(x, {codes}, {scale}, {mins}, {bits}, {n});
}

inline bool fast_dot() {
#if defined(KF_DOT_AVX2)
  return true;
#else
  return false;
#endif
}

}  // namespace dot
