// A sequence's KV cache rows in one of three element kinds, and the loads and stores every attention kernel uses on
// them: float32 (4 bytes a value), float16 (2 bytes: the default, llama.cpp's `--cache-type-k f16` default too)
// and Q8_0 blocks (34 bytes per 32 values: llama.cpp's block_q8_0, a float16 scale and 32 int8 codes —
// `--kv-cache q8_0`).
//
// A cache tensor is [layers, 1, kv heads, positions, width]: float32 or float16 elements, width = head size; or
// uint8 bytes, width = head size / 32 * 34. Every kernel reads a row as floats 16 at a time (load16) and writes a
// row from floats once (store): the attention's arithmetic stays float32 whatever the cache holds.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace kv {

// 16 floats as one GCC/Clang vector: one AVX-512 register, two AVX2 ones, four SSE ones — whatever -march gives.
typedef float Vec16 __attribute__((vector_size(64)));

inline Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

constexpr int64_t Q8_BLOCK = 32, Q8_BYTES = 34;  // ggml-common.h block_q8_0: ggml_half d; int8_t qs[32]
constexpr float F16_MAX = 65504.f;  // float16's largest finite value: a larger key saturates there, not to inf

enum class Kind { F32, F16, Q8_0 };

inline Kind kind_of(const at::Tensor& c) {
  if (c.scalar_type() == at::kFloat) return Kind::F32;
  if (c.scalar_type() == at::kHalf) return Kind::F16;
  TORCH_CHECK(c.scalar_type() == at::kByte, "KV cache: float32, float16 or Q8_0 bytes (uint8)");
  return Kind::Q8_0;
}

// a row's elements in the cache tensor's own scalar type, for a head size d
inline int64_t width(Kind k, int64_t d) { return k == Kind::Q8_0 ? d / Q8_BLOCK * Q8_BYTES : d; }

// the head size of a cache tensor's rows
inline int64_t head_size(const at::Tensor& c) {
  const int64_t w = c.size(-1);
  return kind_of(c) == Kind::Q8_0 ? w / Q8_BYTES * Q8_BLOCK : w;
}

inline float half_to_float(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }

inline uint16_t float_to_half(float f) {  // round to nearest even, saturating at +-65504
  return c10::detail::fp16_ieee_from_fp32_value(std::min(std::max(f, -F16_MAX), F16_MAX));
}

struct F32Rows {
  using T = float;
  static Vec16 load(const T* row, int64_t i) { return load16(row + i); }
  static float at(const T* row, int64_t i) { return row[i]; }
  static void store(const float* x, T* row, int64_t d) { std::memcpy(row, x, d * sizeof(float)); }
};

struct F16Rows {
  using T = uint16_t;
  static Vec16 load(const T* row, int64_t i) {
    Vec16 v;
#if defined(__AVX512F__)
    const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)));
    std::memcpy(&v, &f, sizeof v);
#elif defined(__F16C__)
    const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i)));
    const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i + 8)));
    std::memcpy(&v, &lo, 32);
    std::memcpy(reinterpret_cast<char*>(&v) + 32, &hi, 32);
#else
    for (int j = 0; j < 16; ++j) v[j] = half_to_float(row[i + j]);
#endif
    return v;
  }
  static float at(const T* row, int64_t i) { return half_to_float(row[i]); }
  static void store(const float* x, T* row, int64_t d) {
    for (int64_t i = 0; i < d; ++i) row[i] = float_to_half(x[i]);
  }
};

// Q8_0 rows: i a multiple of 16 (half a block) in load
struct Q8Rows {
  using T = uint8_t;
  static float scale(const T* row, int64_t block) {
    uint16_t h;
    std::memcpy(&h, row + block * Q8_BYTES, 2);
    return half_to_float(h);
  }
  static Vec16 load(const T* row, int64_t i) {
    const T* qs = row + (i / Q8_BLOCK) * Q8_BYTES + 2 + i % Q8_BLOCK;
    Vec16 v;
#if defined(__AVX512F__)
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs))));
    std::memcpy(&v, &f, sizeof v);
#else
    for (int j = 0; j < 16; ++j) v[j] = float(static_cast<int8_t>(qs[j]));
#endif
    return v * scale(row, i / Q8_BLOCK);
  }
  static float at(const T* row, int64_t i) {
    return scale(row, i / Q8_BLOCK) * float(static_cast<int8_t>(row[(i / Q8_BLOCK) * Q8_BYTES + 2 + i % Q8_BLOCK]));
  }
  // ggml-quants.c quantize_row_q8_0_ref: d = amax / 127, codes round(x / d), d kept as float16
  static void store(const float* x, T* row, int64_t d) {
    for (int64_t b = 0; b < d / Q8_BLOCK; ++b) {
      const float* xb = x + b * Q8_BLOCK;
      float amax = 0;
      for (int64_t j = 0; j < Q8_BLOCK; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float s = amax / 127.f, inv = s != 0.f ? 1.f / s : 0.f;
      const uint16_t h = float_to_half(s);
      T* dst = row + b * Q8_BYTES;
      std::memcpy(dst, &h, 2);
      for (int64_t j = 0; j < Q8_BLOCK; ++j)
        dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(xb[j] * inv)));
    }
  }
};

// One layer-and-sequence view of a cache pair: k and v base pointers, the row width in elements, the capacity
struct View {
  Kind kind;
  void* k;
  void* v;
  int64_t cap, width;

  static View of(const at::Tensor& k, const at::Tensor& v) {
    const Kind kind = kind_of(k);
    TORCH_CHECK(v.scalar_type() == k.scalar_type() && v.sizes() == k.sizes() && k.is_contiguous() &&
                    v.is_contiguous() && k.dim() == 5,
                "KV cache: k and v alike, [layers, 1, kv heads, positions, width], contiguous");
    return View{kind, k.data_ptr(), v.data_ptr(), k.size(3), k.size(4)};
  }

  // element offset of row (layer li, kv head hk, position p) for nkv kv heads
  int64_t row(int64_t li, int64_t nkv, int64_t hk, int64_t p) const { return ((li * nkv + hk) * cap + p) * width; }
};

// call f with the row type of `kind` (a value of F32Rows, F16Rows or Q8Rows)
template <class F>
inline auto visit(Kind kind, F&& f) {
  if (kind == Kind::F16) return f(F16Rows{});
  if (kind == Kind::Q8_0) return f(Q8Rows{});
  return f(F32Rows{});
}

// write float row x (d values) at element offset `at` of cache base `base`
inline void store(Kind kind, void* base, int64_t at, const float* x, int64_t d) {
  visit(kind, [&](auto r) {
    using R = decltype(r);
    R::store(x, static_cast<typename R::T*>(base) + at, d);
  });
}

// A cache tensor (or a slice of it, [..., width]) as float32 [..., head size]: the prompt kernels without the bf16
// panels read a Q8_0 cache through this
inline at::Tensor to_float(const at::Tensor& c) {
  const Kind kind = kind_of(c);
  if (kind != Kind::Q8_0) return c.to(at::kFloat);
  const at::Tensor src = c.contiguous();
  const int64_t w = src.size(-1), d = w / Q8_BYTES * Q8_BLOCK, rows = src.numel() / w;
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  shape.back() = d;
  at::Tensor out = at::empty(shape, src.options().dtype(at::kFloat));
  const uint8_t* s = src.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t i = 0; i < d; ++i) o[r * d + i] = Q8Rows::at(s + r * w, i);
  });
  return out;
}

// float32 rows [..., d] stored as a cache of `kind` (0 float32, 1 float16, 2 Q8_0) [..., width]: what the steps
// write, for tests
inline at::Tensor from_float(const at::Tensor& x_in, int64_t kind_id) {
  TORCH_CHECK(kind_id >= 0 && kind_id <= 2, "KV cache: kind 0 (float32), 1 (float16) or 2 (Q8_0)");
  const Kind kind = static_cast<Kind>(kind_id);
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t d = x.size(-1), rows = x.numel() / std::max<int64_t>(d, 1);
  TORCH_CHECK(kind != Kind::Q8_0 || d % Q8_BLOCK == 0, "KV cache Q8_0: the head size must be a multiple of 32");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = width(kind, d);
  const auto dtype = kind == Kind::F32 ? at::kFloat : kind == Kind::F16 ? at::kHalf : at::kByte;
  at::Tensor out = at::empty(shape, x.options().dtype(dtype));
  const int64_t w = width(kind, d);
  const size_t elem = out.element_size();
  for (int64_t r = 0; r < rows; ++r)
    store(kind, static_cast<char*>(out.data_ptr()) + r * w * elem, 0, x.data_ptr<float>() + r * d, d);
  return out;
}

}  // namespace kv
