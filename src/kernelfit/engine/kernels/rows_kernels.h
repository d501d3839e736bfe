// A prompt's element-wise glue between its products, one pass over the rows each: RMS norm, residual add through
// an optional post-norm, and the gated activation (gelu-tanh or silu of the gate times up).
//
// Why: between the products of a prefill, ATen ran each of these as 2-5 passes over [T, N] float32 (pow, mean,
// rsqrt, two muls; gelu, then mul): Gemma 3 270M at 256 tokens spent ~20 ms in them against ~55 ms of products.
// Plain float loops that GCC vectorises (-O3 -march=native), the rows split between threads.
#pragma once

#include <array>

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "kv_cache.h"

#include <cmath>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rows {

// 1 / sqrt(mean(x^2) + eps), 16 partial sums so that the loop vectorises
inline float rms_scale(const float* x, int64_t n, double eps) {
  float acc[16] = {0};
  const int64_t body = n - n % 16;
  for (int64_t i = 0; i < body; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * x[i + j];
  double ss = 0;
  for (int64_t i = body; i < n; ++i) ss += double(x[i]) * x[i];
  for (int j = 0; j < 16; ++j) ss += acc[j];
  return float(1.0 / std::sqrt(ss / n + eps));
}

inline at::Tensor rows_of(const at::Tensor& x, bool bf16_ok = false) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || (bf16_ok && x.scalar_type() == at::kBFloat16),
              bf16_ok ? "rows: float32 or bf16 input" : "rows: float32 input");
  return x.contiguous().view({-1, x.size(-1)});
}

inline float bf16_to_f32(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Row r of a float32 or bf16 [R, n] matrix as floats: a bf16 row (a oneDNN product's output, read as it is instead
// of cast in a pass of its own) is widened into buf
inline const float* row_floats(const at::Tensor& y, int64_t r, int64_t n, std::vector<float>& buf) {
  if (y.scalar_type() == at::kFloat) return y.data_ptr<float>() + r * n;
  buf.resize(n);
  const auto* p = reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>()) + r * n;
  for (int64_t i = 0; i < n; ++i) buf[i] = bf16_to_f32(p[i]);
  return buf.data();
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN (its high mantissa bits are kept)
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// rmsnorm(x) * w over the last dimension (x float32 [..., N]); w float32 [N], or [H * N]: row r takes the weight
// w[r % H] (Q and K heads of one position side by side, each with its norm: one call instead of two and a cat)
// bf16_out: written as bf16 (rounded as .to(bf16) would), for a bf16 product that reads it next — no cast pass
inline at::Tensor rms_norm_to(const at::Tensor& x_in, const at::Tensor& w, double eps, bool bf16_out) {
  const at::Tensor x = rows_of(x_in);
  const int64_t n = x.size(1), cycle = w.numel() / std::max<int64_t>(n, 1);
  TORCH_CHECK(cycle >= 1 && w.numel() == cycle * n && w.scalar_type() == at::kFloat && w.is_contiguous(),
              "rms_norm: weight of N floats, or of H rows of N");
  auto out = at::empty_like(x, bf16_out ? at::kBFloat16 : at::kFloat);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = bf16_out ? nullptr : out.data_ptr<float>();
  auto* ob = bf16_out ? reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) : nullptr;
  at::parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float s = rms_scale(xp + r * n, n, eps);
      const float* wr = wp + (r % cycle) * n;
      if (ob)
        for (int64_t i = 0; i < n; ++i) ob[r * n + i] = f32_to_bf16(xp[r * n + i] * s * wr[i]);
      else
        for (int64_t i = 0; i < n; ++i) op[r * n + i] = xp[r * n + i] * s * wr[i];
    }
  });
  return out.view(x_in.sizes());
}

inline at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w, double eps) {
  return rms_norm_to(x_in, w, eps, false);
}

// x += y, or x += rmsnorm(y) * post when post is not empty (Gemma 3's post-norms); x float32 contiguous, in place;
// y float32 or bf16
// x += scale * y (Granite's residual multiplier; 1 elsewhere), y through the post-norm where there is one
inline void residual_add(at::Tensor& x, const at::Tensor& y_in, const at::Tensor& post, double eps,
                         double scale = 1.0) {
  const at::Tensor y = rows_of(y_in, true);
  const int64_t n = y.size(1);
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat && x.numel() == y.numel(), "residual_add: shapes");
  TORCH_CHECK(post.numel() == 0 || (post.numel() == n && post.scalar_type() == at::kFloat), "residual_add: post");
  float* xp = x.data_ptr<float>();
  const float* wp = post.numel() ? post.data_ptr<float>() : nullptr;
  at::parallel_for(0, y.size(0), 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    for (int64_t r = begin; r < end; ++r) {
      const float* yr = row_floats(y, r, n, buf);
      const float k = float(scale);
      if (!wp && k == 1.f) {
        for (int64_t i = 0; i < n; ++i) xp[r * n + i] += yr[i];
        continue;
      }
      if (!wp) {
        for (int64_t i = 0; i < n; ++i) xp[r * n + i] += yr[i] * k;
        continue;
      }
      const float s = rms_scale(yr, n, eps);
      if (k == 1.f) {
        for (int64_t i = 0; i < n; ++i) xp[r * n + i] += yr[i] * s * wp[i];
        continue;
      }
      for (int64_t i = 0; i < n; ++i) xp[r * n + i] += yr[i] * s * wp[i] * k;
    }
  });
}

// e^v for v in [-87, 88] (the caller clamps): std::exp is a scalar libm call (~15 ns); this is plain float code
// the compiler vectorises (with -fno-trapping-math): v = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2),
// e^r by its degree-7 Taylor polynomial (relative error < 1e-8 there), 2^n through the exponent bits
inline float exp_clamped(float v) {
  const float n = std::floor(v * 1.44269504f + 0.5f);
  const float r = (v - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// 1 / (1 + e^-z), the argument clamped to float's range
inline float sigmoid(float z) {
  const float v = z == z ? std::min(std::max(-z, -87.0f), 88.0f) : 0.f;  // NaN: no NaN to int (UB); x * .. keeps it
  return 1.f / (1.f + exp_clamped(v));
}

#if defined(__AVX512F__)
#define KF_ROWS_AVX512 1
// exp_clamped on 16 lanes, 2^n by vscalefps. Written out: GCC's vectorisation of the scalar loops above ran ~3x
// slower (0.7 ns an element for Gemma's gelu: 274 us of a 256-token layer's products' ~3 ms)
inline __m512 exp16(__m512 v) {
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(v, _mm512_set1_ps(1.44269504f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r =
      _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), v));
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#endif

// o[i] = e^max(x[i] - shift, -87) (softmax numerators; a NaN stays NaN)
inline void exp_shifted(const float* x, float shift, float* o, int64_t n) {
  int64_t i = 0;
#if defined(KF_ROWS_AVX512)
  const __m512 s = _mm512_set1_ps(shift), lo = _mm512_set1_ps(-87.f);
  for (; i + 16 <= n; i += 16)  // max(lo, NaN) is NaN: the second operand is returned
    _mm512_storeu_ps(o + i, exp16(_mm512_max_ps(lo, _mm512_sub_ps(_mm512_loadu_ps(x + i), s))));
#endif
  for (; i < n; ++i) o[i] = exp_clamped(std::max(x[i] - shift, -87.0f));
}

// x[i] = cap * tanh(x[i] / cap) for i < n (Gemma 2's attention-score soft-capping; cap <= 0: unchanged), tanh(v) as
// 1 - 2 / (e^2v + 1) with 2v clamped to [-87, 88] (exp_clamped's range; tanh is +-1 to float precision past +-9)
inline void softcap(float* x, int64_t n, float cap) {
  if (cap <= 0.f) return;
  const float inv = 2.f / cap;
  int64_t i = 0;
#if defined(KF_ROWS_AVX512)
  const __m512 lo = _mm512_set1_ps(-87.f), hi = _mm512_set1_ps(88.f), one = _mm512_set1_ps(1.f),
               two = _mm512_set1_ps(2.f), vinv = _mm512_set1_ps(inv), vcap = _mm512_set1_ps(cap);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vinv), lo), hi);
    const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(exp16(v), one)));
    _mm512_storeu_ps(x + i, _mm512_mul_ps(vcap, t));
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i] == x[i] ? std::min(std::max(x[i] * inv, -87.f), 88.f) : x[i];
    x[i] = v == v ? cap * (1.f - 2.f / (exp_clamped(v) + 1.f)) : v;
  }
}

// o[i] = act(g[i]) * u[i]: gelu with the tanh approximation (0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2/pi)
// (x + 0.044715 x^3)) or silu (x sigmoid(x)); a NaN in g stays NaN (x multiplies the result)
inline void gated_row(const float* g, const float* u, float* o, int64_t n, bool gelu) {
  int64_t i = 0;
#if defined(KF_ROWS_AVX512)
  const __m512 lo = _mm512_set1_ps(-87.f), hi = _mm512_set1_ps(88.f), one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512 z = gelu ? _mm512_mul_ps(_mm512_set1_ps(1.5957691216f),
                                          _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x),
                                                          _mm512_mul_ps(x, x), x))
                          : x;
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), lo), hi);
    const __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, exp16(v)));
    _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_mul_ps(x, sg), _mm512_loadu_ps(u + i)));
  }
#endif
  if (gelu)
    for (; i < n; ++i) o[i] = g[i] * sigmoid(1.5957691216f * (g[i] + 0.044715f * g[i] * g[i] * g[i])) * u[i];
  else
    for (; i < n; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
}

// gpt-oss's clamped SwiGLU: x = min(g, limit); o = x sigmoid(alpha x) (clamp(u, -limit, limit) + 1) (transformers
// GptOssExperts._apply_gate; llama.cpp ggml_swiglu_oai). g and u are overwritten (the clamped values); the product
// is gated_row's silu over the scaled gate, so one vector loop serves both: silu(alpha x) / alpha = x sigmoid(alpha x)
inline void clamped_swiglu_row(float* g, float* u, float* o, int64_t n, float alpha, float limit) {
  for (int64_t i = 0; i < n; ++i) {
    g[i] = alpha * std::min(g[i], limit);
    u[i] = (std::min(std::max(u[i], -limit), limit) + 1.f) / alpha;
  }
  gated_row(g, u, o, n, false);
}

// the sum and the maximum of n floats through 16 partial lanes, so that the loops vectorise; a NaN in x gives NaN
inline float lanes_sum(const float* x, int64_t n) {
  float acc[16] = {0};
  const int64_t body = n - n % 16;
  for (int64_t i = 0; i < body; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j];
  float s = 0.f;
  for (int64_t i = body; i < n; ++i) s += x[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

inline float lanes_max(const float* x, int64_t n) {
  float acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = -INFINITY;
  const int64_t body = n - n % 16;
  bool nan = false;
  for (int64_t i = 0; i < body; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  float m = -INFINITY;
  for (int64_t i = body; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int j = 0; j < 16; ++j) m = acc[j] > m ? acc[j] : m;
  for (int64_t i = 0; i < n; ++i) nan |= x[i] != x[i];  // comparisons drop NaN: carry it (|, not ||: vectorises)
  return nan ? NAN : m;
}

// An attention sink's term in its softmax's denominator, e^(sink - m) (m: the maximum over the scores and the sink),
// 0 for no sink (-inf). gpt-oss: a learned logit a head that takes part in the softmax and has no value, so that a
// query can attend to nothing (transformers' eager_attention_forward: the sinks concatenated to the scores, dropped
// after the softmax; llama.cpp ggml_soft_max_add_sinks)
inline float sink_weight(float sink, float m) { return sink == -INFINITY ? 0.f : std::exp(sink - m); }

// A softmax row's weights from its scaled scores e[lo, hi) (m: their maximum, NaN if one is NaN; e is overwritten):
// o[j] for j in [from, to) in bf16, the softmax inside [lo, hi) and 0 outside. A NaN score makes the row NaN. sink:
// the row's attention sink (sink_weight), -inf for none
inline void softmax_weights(float* e, int64_t lo, int64_t hi, float m, uint16_t* o, int64_t from, int64_t to,
                            float sink = -INFINITY) {
  m = m == m ? std::max(m, sink) : m;
  exp_shifted(e + lo, m, e + lo, hi - lo);
  const float inv = 1.f / (lanes_sum(e + lo, hi - lo) + sink_weight(sink, m));
  std::memset(o + from, 0, sizeof(uint16_t) * (lo - from));
  int64_t j = lo;
#if defined(KF_ROWS_AVX512)
  const __m512 vi = _mm512_set1_ps(inv);
  const __m512i round = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
  for (; j + 16 <= hi; j += 16) {  // round to nearest even, as f32_to_bf16
    const __m512i b = _mm512_castps_si512(_mm512_mul_ps(_mm512_loadu_ps(e + j), vi));
    const __m512i r = _mm512_add_epi32(_mm512_add_epi32(b, round), _mm512_and_si512(_mm512_srli_epi32(b, 16), one));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
#endif
  for (; j < hi; ++j) o[j] = f32_to_bf16(e[j] * inv);
  std::memset(o + hi, 0, sizeof(uint16_t) * (to - hi));
}

// One row of masked_softmax: o[lo, hi) = softmax(s[lo, hi) * scale) in bf16, 0 elsewhere; e: len floats of scratch.
// A NaN score makes the row NaN, as in ATen.
inline void softmax_row(const uint16_t* s, uint16_t* o, int64_t lo, int64_t hi, int64_t len, float scale, float* e,
                        float cap = 0.f, float sink = -INFINITY) {
  int64_t j = lo;
  float m = -INFINITY;
#if defined(KF_ROWS_AVX512)
  // written out: GCC's vectorisation of the separate scalar passes (widen, max with a NaN flag, sum, narrow) ran
  // ~80 us for a 1024 x 256 block of scores
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  for (; j + 16 <= hi; j += 16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j)));
    const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), sc);
    _mm512_storeu_ps(e + j, v);
    vmax = _mm512_max_ps(vmax, v);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  m = nan ? NAN : _mm512_reduce_max_ps(vmax);
#endif
  for (; j < hi; ++j) {
    e[j] = bf16_to_f32(s[j]) * scale;
    m = (e[j] > m || e[j] != e[j] || m != m) ? (m != m ? m : e[j]) : m;
  }
  if (cap > 0.f && hi > lo) {  // capping is monotonic: the capped maximum is the maximum's cap
    softcap(e + lo, hi - lo, cap);
    softcap(&m, 1, cap);
  }
  softmax_weights(e, lo, hi, m, o, 0, len, sink);
}

// A prompt's scores [H, R, L] of `type`, checked: (H * R rows, R, L)
inline std::array<int64_t, 3> score_dims(const at::Tensor& scores, at::ScalarType type, int64_t per, const char* what) {
  TORCH_CHECK(scores.scalar_type() == type && scores.dim() == 3 && scores.is_contiguous() && per >= 1, what, " [H, R, L]");
  return {scores.size(0) * scores.size(1), scores.size(1), scores.size(2)};
}

// Row r of a prompt's scores [H, R, L] (as masked_softmax reads them): the keys [lo, hi) its query sees, and its sink
struct ScoreRow {
  int64_t lo, hi;
  float sink;
  ScoreRow(int64_t r, int64_t per_head, int64_t per, int64_t q0, int64_t key0, int64_t window, int64_t len,
           const float* sinks) {
    const int64_t q = q0 + (r % per_head) / per;  // the query's position
    lo = std::min(len, std::max<int64_t>(0, window > 0 ? q - window + 1 - key0 : 0));
    hi = std::max(lo, std::min(len, q + 1 - key0));
    sink = sinks ? sinks[(r / per_head) * per + (r % per_head) % per] : -INFINITY;
  }
};

// A prompt's attention weights from its bf16 scores [H, R, L]: row r of each H is query position q0 + r / per (the
// query heads that share a kv head side by side), column j key position key0 + j. One pass a row: scale, the
// causal (and sliding-window) mask from the positions, a float32 softmax, bf16 out — where ATen took six (cast,
// scale, masked_fill, softmax, cast, and the mask built per layer). sinks: a logit a query head (head H * per + the
// row's place among its `per`), or null
inline at::Tensor masked_softmax(const at::Tensor& scores, double scale, int64_t q0, int64_t per, int64_t key0,
                                 int64_t window, double cap = 0, const float* sinks = nullptr) {
  const auto [rows, per_head, len] = score_dims(scores, at::kBFloat16, per, "masked_softmax: contiguous bf16 scores");
  auto out = at::empty_like(scores);
  const auto* sp = reinterpret_cast<const uint16_t*>(scores.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> e(len);
    for (int64_t r = begin; r < end; ++r) {
      const ScoreRow row(r, per_head, per, q0, key0, window, len, sinks);
      softmax_row(sp + r * len, op + r * len, row.lo, row.hi, len, float(scale), e.data(), float(cap), row.sink);
    }
  });
  return out;
}

// masked_softmax over float32 scores, float32 out: the prompt attention of a CPU without AVX512-BF16 (no faster bf16
// product there, and bf16 scores and weights moved the keys and values a prompt writes ~1e-3 from the decode step's)
inline at::Tensor masked_softmax_f32(const at::Tensor& scores, double scale, int64_t q0, int64_t per, int64_t key0,
                                     int64_t window, double cap = 0, const float* sinks = nullptr) {
  const auto [rows, per_head, len] = score_dims(scores, at::kFloat, per, "masked_softmax_f32: contiguous float scores");
  auto out = at::empty_like(scores);
  const float* sp = scores.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> e(len);
    for (int64_t r = begin; r < end; ++r) {
      const ScoreRow row(r, per_head, per, q0, key0, window, len, sinks);
      const int64_t lo = row.lo, hi = row.hi;
      const float sink = row.sink;
      float m = -INFINITY;
      bool nan = false;
      for (int64_t j = lo; j < hi; ++j) {
        e[j] = sp[r * len + j] * float(scale);
        nan = nan || e[j] != e[j];
        m = std::max(m, e[j]);
      }
      m = nan ? NAN : m;
      if (cap > 0 && hi > lo) {
        softcap(e.data() + lo, hi - lo, float(cap));
        softcap(&m, 1, float(cap));
      }
      m = m == m ? std::max(m, sink) : m;
      exp_shifted(e.data() + lo, m, e.data() + lo, hi - lo);
      const float inv = 1.f / (lanes_sum(e.data() + lo, hi - lo) + sink_weight(sink, m));
      float* o = op + r * len;
      std::fill(o, o + lo, 0.f);
      for (int64_t j = lo; j < hi; ++j) o[j] = e[j] * inv;
      std::fill(o + hi, o + len, 0.f);
    }
  });
  return out;
}

// act(gate) * up for gu float32 or bf16 [T, 2F] (gate then up; gated_row's activations) -> float32 [T, F]
// bf16_out: the product written as bf16 (see rms_norm_to). limit > 0: gpt-oss's clamped SwiGLU (clamped_swiglu_row)
inline at::Tensor gated_to(const at::Tensor& gu_in, int64_t ffn, bool gelu, bool bf16_out, float alpha = 1.f,
                           float limit = 0.f) {
  const at::Tensor gu = rows_of(gu_in, true);
  TORCH_CHECK(gu.size(1) == 2 * ffn, "gated: gate and up of ffn columns each");
  auto out = at::empty({gu.size(0), ffn}, gu.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  float* op = bf16_out ? nullptr : out.data_ptr<float>();
  auto* ob = bf16_out ? reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) : nullptr;
  at::parallel_for(0, gu.size(0), 4, [&](int64_t begin, int64_t end) {
    std::vector<float> buf, row(bf16_out ? ffn : 0), clamped(limit > 0 ? 2 * ffn : 0);
    for (int64_t r = begin; r < end; ++r) {
      const float* g = row_floats(gu, r, 2 * ffn, buf);
      float* o = ob ? row.data() : op + r * ffn;
      if (limit > 0) {
        std::copy(g, g + 2 * ffn, clamped.begin());
        clamped_swiglu_row(clamped.data(), clamped.data() + ffn, o, ffn, alpha, limit);
      } else {
        gated_row(g, g + ffn, o, ffn, gelu);
      }
      if (ob)
        for (int64_t i = 0; i < ffn; ++i) ob[r * ffn + i] = f32_to_bf16(o[i]);
    }
  });
  return out;
}

inline at::Tensor gated(const at::Tensor& gu_in, int64_t ffn, bool gelu) { return gated_to(gu_in, ffn, gelu, false); }


// A prompt's attention for one layer: q float32 [t, nq, d] at positions pos.., the layer's float32 cache k, v
// [nkv, cap, d] already holding positions start..pos+t -> float32 [t, nq * d]. Two bf16 GEMMs (oneDNN) per block of
// `block` queries, each over only the keys its queries see (causal: 256 tokens in blocks of 128 do 75% of the full
// square's products; Gemma 3 270M's 256 x 256 scores at ~400 GFLOP/s were ~0.6 ms a layer), the query heads of a kv
// head stacked query-major so that a block is a slice, and masked_softmax between them. (Blocks of 64, 62% of the
// square, measured ~10% slower: more, smaller oneDNN calls.)
// bf16_math false (a CPU without AVX512-BF16): the same in float32 — two float32 GEMMs and masked_softmax_f32.
inline at::Tensor prompt_attention_to(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos,
                                      int64_t start, int64_t window, double scale, int64_t block, bool bf16_out,
                                      double cap = 0, const float* sinks = nullptr, bool bf16_math = true) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes() && q.size(2) == kv::head_size(k) &&
                  q.size(1) % k.size(0) == 0 && block >= 1 && start >= 0 && start <= pos,
              "prompt_attention: q [t, nq, d], k and v [nkv, cap, width] (kv_cache.h)");
  const int64_t t = q.size(0), nq = q.size(1), d = q.size(2), nkv = k.size(0), group = nq / nkv;
  const int64_t len = pos + t - start;
  TORCH_CHECK(pos + t <= k.size(1), "prompt_attention: positions beyond the cache");
  const at::ScalarType math = bf16_math ? at::kBFloat16 : at::kFloat;
  const at::Tensor qb = q.reshape({t, nkv, group, d}).transpose(0, 1).to(math).contiguous().view({nkv, t * group, d});
  // float32 and float16 caches convert straight to bf16; Q8_0 rows are widened first
  const bool q8 = kv::kind_of(k) == kv::Kind::Q8_0;
  const at::Tensor ks = k.narrow(1, start, len), vs = v.narrow(1, start, len);
  const at::Tensor kb = (q8 ? kv::to_float(ks) : ks).to(math).contiguous();
  const at::Tensor vb = (q8 ? kv::to_float(vs) : vs).to(math).contiguous();
  at::Tensor out = at::empty({nkv, t * group, d}, qb.options());
  for (int64_t b0 = 0; b0 < t; b0 += block) {
    const int64_t b1 = std::min(t, b0 + block);
    // keys seen by queries pos + b0 .. pos + b1 - 1
    const int64_t lo = window > 0 ? std::max<int64_t>(0, pos + b0 - window + 1 - start) : 0, hi = pos + b1 - start;
    const at::Tensor qs = qb.narrow(1, b0 * group, (b1 - b0) * group);
    const at::Tensor scores = at::bmm(qs, kb.narrow(1, lo, hi - lo).transpose(1, 2));
    const at::Tensor p = bf16_math ? masked_softmax(scores, scale, pos + b0, group, start + lo, window, cap, sinks)
                                   : masked_softmax_f32(scores, scale, pos + b0, group, start + lo, window, cap, sinks);
    at::Tensor dst = out.narrow(1, b0 * group, (b1 - b0) * group);
    if (dst.is_contiguous()) at::bmm_out(dst, p, vb.narrow(1, lo, hi - lo));  // one kv head: straight into place
    else dst.copy_(at::bmm(p, vb.narrow(1, lo, hi - lo)));
  }
  if (bf16_out && bf16_math && nkv == 1) return out.view({t, nq * d});  // one kv head: already [t, nq, d]
  at::Tensor res = at::empty({t, nq * d}, q.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  res.view({t, nkv, group, d}).copy_(out.view({nkv, t, group, d}).transpose(0, 1));  // one pass: reorder and widen
  return res;
}

inline at::Tensor prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos,
                                   int64_t start, int64_t window, double scale, int64_t block, double cap) {
  return prompt_attention_to(q, k, v, pos, start, window, scale, block, false, cap);
}

}  // namespace rows
