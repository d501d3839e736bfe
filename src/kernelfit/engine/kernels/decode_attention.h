// One query's attention over a sequence's cached keys and values, as the decode step (and the few-row steps:
// speculative drafts, a batch of sequences) computes it: plain vectorised loops, the heads split between threads.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kv_cache.h"
#include "rows_kernels.h"

namespace decode {

// sum of a[i] * b[i], in 16 independent partial sums so that the compiler vectorises it
inline float dot16(const float* a, const float* b, int64_t d) {
  float acc[16] = {0};
  const int64_t body = d - d % 16;
  for (int64_t i = 0; i < body; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (int64_t i = body; i < d; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

// x[i] = e^(x[i] - shift) for x[i] <= shift (a softmax's scores), returning their sum (rows_kernels.h's vector
// exp; below e^-87, float's smallest normal, it flushes to about 1e-38)
inline float exp_shifted(float* x, int64_t len, float shift) {
  rows::exp_shifted(x, shift, x, len);
  return rows::lanes_sum(x, len);
}

using kv::load16;
using kv::Vec16;

inline float lanes_sum(Vec16 v) {
  float s = 0;
  for (int j = 0; j < 16; ++j) s += v[j];
  return s;
}

// s[t] = q . k[t] * sc for t < len (cache rows w elements apart, d values a row; d a multiple of 16), four rows at a
// time so that four independent accumulation chains hide the FMA latency. R: the cache's row type (kv_cache.h)
template <class R>
void scores16(const float* q, const typename R::T* k, int64_t d, int64_t w, int64_t len, float sc, float* s) {
  int64_t t = 0;
  for (; t + 4 <= len; t += 4) {
    const typename R::T* k0 = k + t * w;
    Vec16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < d; i += 16) {
      const Vec16 qv = load16(q + i);
      a0 += qv * R::load(k0, i);
      a1 += qv * R::load(k0 + w, i);
      a2 += qv * R::load(k0 + 2 * w, i);
      a3 += qv * R::load(k0 + 3 * w, i);
    }
    s[t] = lanes_sum(a0) * sc, s[t + 1] = lanes_sum(a1) * sc, s[t + 2] = lanes_sum(a2) * sc;
    s[t + 3] = lanes_sum(a3) * sc;
  }
  for (; t < len; ++t) {
    Vec16 a = {};
    for (int64_t i = 0; i < d; i += 16) a += load16(q + i) * R::load(k + t * w, i);
    s[t] = lanes_sum(a) * sc;
  }
}

// out = sum over t < len of p[t] * v[t] (cache rows w elements apart, d values a row; d a multiple of 16), four rows
// a pass over out
template <class R>
void weighted16(const float* p, const typename R::T* v, int64_t d, int64_t w, int64_t len, float* out) {
  std::fill(out, out + d, 0.f);
  int64_t t = 0;
  for (; t + 4 <= len; t += 4) {
    const typename R::T* v0 = v + t * w;
    for (int64_t i = 0; i < d; i += 16) {
      Vec16 o = load16(out + i);
      o += p[t] * R::load(v0, i) + p[t + 1] * R::load(v0 + w, i) + p[t + 2] * R::load(v0 + 2 * w, i) +
           p[t + 3] * R::load(v0 + 3 * w, i);
      std::memcpy(out + i, &o, sizeof o);
    }
  }
  for (; t < len; ++t)
    for (int64_t i = 0; i < d; i += 16) {
      const Vec16 o = load16(out + i) + p[t] * R::load(v + t * w, i);
      std::memcpy(out + i, &o, sizeof o);
    }
}

// One query head over cached positions t < len (k, v: rows w elements apart): softmax(q . k[t] * scaling) . v -> out;
// s: len floats of scratch. A head size that is not a multiple of 16 takes the scalar loops. sink: the head's
// attention sink (gpt-oss), a logit in the softmax's denominator with no value (-inf: none)
template <class R>
void attend_head(const float* q, const typename R::T* k, const typename R::T* v, int64_t d, int64_t w, int64_t len,
                 float scaling, float* s, float* out, float cap = 0.f, float sink = -INFINITY) {
  const bool vec = d % 16 == 0;
  if (vec) {
    scores16<R>(q, k, d, w, len, scaling, s);
  } else {
    for (int64_t t = 0; t < len; ++t) {
      float a = 0;
      for (int64_t i = 0; i < d; ++i) a += q[i] * R::at(k + t * w, i);
      s[t] = a * scaling;
    }
  }
  rows::softcap(s, len, cap);  // Gemma 2's attention soft-capping (cap 0: none)
  const float m = std::max(*std::max_element(s, s + len), sink);
  const float inv = 1.f / (exp_shifted(s, len, m) + rows::sink_weight(sink, m));
  for (int64_t t = 0; t < len; ++t) s[t] *= inv;
  if (vec) {
    weighted16<R>(s, v, d, w, len, out);
    return;
  }
  std::fill(out, out + d, 0.f);
  for (int64_t t = 0; t < len; ++t)
    for (int64_t i = 0; i < d; ++i) out[i] += s[t] * R::at(v + t * w, i);
}

// One query's attention over cached positions [start, end) of layer li of a cache (kv_cache.h View: float32, float16
// or Q8_0 rows; score_cap: Gemma 2's soft-cap, 0 for none; sinks: a logit a query head, or null — gpt-oss); query
// head h reads kv head h / (nq / nkv). Plain loops,
// the heads split between threads: at::scaled_dot_product_attention cost ~10 us of dispatch a layer for a few us of
// arithmetic at SmolLM2's sizes, on one thread.
inline void attend(const float* q, const kv::View& c, int64_t li, int64_t nq, int64_t nkv, int64_t d, int64_t start,
                   int64_t end, double scaling, float* out, std::vector<float>& scores, double score_cap = 0,
                   const float* sinks = nullptr) {
  const int64_t len = end - start, group = nq / nkv;
  scores.resize(nq * len);
  kv::visit(c.kind, [&](auto rows) {
    using R = decltype(rows);
    const auto* k = static_cast<const typename R::T*>(c.k);
    const auto* v = static_cast<const typename R::T*>(c.v);
    at::parallel_for(0, nq, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t at = c.row(li, nkv, h / group, start);
        attend_head<R>(q + h * d, k + at, v + at, d, c.width, len, float(scaling), scores.data() + h * len,
                       out + h * d, float(score_cap), sinks ? sinks[h] : -INFINITY);
      }
    });
  });
}

}  // namespace decode
