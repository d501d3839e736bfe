// One query's attention over a sequence's cached keys and values, as the decode step (and the few-row steps:
// speculative drafts, a batch of sequences) computes it: plain vectorised loops, the heads split between threads.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

// 16 floats as one GCC/Clang vector: one AVX-512 register, two AVX2 ones, four SSE ones — whatever -march gives.
typedef float Vec16 __attribute__((vector_size(64)));

inline Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float lanes_sum(Vec16 v) {
  float s = 0;
  for (int j = 0; j < 16; ++j) s += v[j];
  return s;
}

// s[t] = q . k[t] * sc for t < len (k rows d apart; d a multiple of 16), four rows at a time so that four
// independent accumulation chains hide the FMA latency
void scores16(const float* q, const float* k, int64_t d, int64_t len, float sc, float* s) {
  int64_t t = 0;
  for (; t + 4 <= len; t += 4) {
    const float* k0 = k + t * d;
    Vec16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < d; i += 16) {
      const Vec16 qv = load16(q + i);
      a0 += qv * load16(k0 + i);
      a1 += qv * load16(k0 + d + i);
      a2 += qv * load16(k0 + 2 * d + i);
      a3 += qv * load16(k0 + 3 * d + i);
    }
    s[t] = lanes_sum(a0) * sc, s[t + 1] = lanes_sum(a1) * sc, s[t + 2] = lanes_sum(a2) * sc;
    s[t + 3] = lanes_sum(a3) * sc;
  }
  for (; t < len; ++t) s[t] = dot16(q, k + t * d, d) * sc;
}

// out = sum over t < len of p[t] * v[t] (v rows d apart; d a multiple of 16), four rows a pass over out
void weighted16(const float* p, const float* v, int64_t d, int64_t len, float* out) {
  std::fill(out, out + d, 0.f);
  int64_t t = 0;
  for (; t + 4 <= len; t += 4) {
    const float* v0 = v + t * d;
    for (int64_t i = 0; i < d; i += 16) {
      Vec16 o = load16(out + i);
      o += p[t] * load16(v0 + i) + p[t + 1] * load16(v0 + d + i) + p[t + 2] * load16(v0 + 2 * d + i) +
           p[t + 3] * load16(v0 + 3 * d + i);
      std::memcpy(out + i, &o, sizeof o);
    }
  }
  for (; t < len; ++t)
    for (int64_t i = 0; i < d; ++i) out[i] += p[t] * v[t * d + i];
}

// One query head over cached positions t < len (k, v: rows d apart): softmax(q . k[t] * scaling) . v -> out;
// s: len floats of scratch. A head size that is not a multiple of 16 takes the scalar loops.
void attend_head(const float* q, const float* k, const float* v, int64_t d, int64_t len, float scaling, float* s,
                 float* out, float cap = 0.f) {
  if (d % 16 == 0) {
    scores16(q, k, d, len, scaling, s);
  } else {
    for (int64_t t = 0; t < len; ++t) s[t] = dot16(q, k + t * d, d) * scaling;
  }
  rows::softcap(s, len, cap);  // Gemma 2's attention soft-capping (cap 0: none)
  const float inv = 1.f / exp_shifted(s, len, *std::max_element(s, s + len));
  for (int64_t t = 0; t < len; ++t) s[t] *= inv;
  if (d % 16 == 0) {
    weighted16(s, v, d, len, out);
    return;
  }
  std::fill(out, out + d, 0.f);
  for (int64_t t = 0; t < len; ++t)
    for (int64_t i = 0; i < d; ++i) out[i] += s[t] * v[t * d + i];
}

// One query's attention over cached positions [start, end) of one layer (k, v: [nkv, cap, d]; score_cap: Gemma 2's
// soft-cap, 0 for none); query head h reads
// kv head h / (nq / nkv). Plain loops, the heads split between threads: at::scaled_dot_product_attention cost
// ~10 us of dispatch a layer for a few us of arithmetic at SmolLM2's sizes, on one thread.
void attend(const float* q, const float* k, const float* v, int64_t nq, int64_t nkv, int64_t d, int64_t cap,
            int64_t start, int64_t end, double scaling, float* out, std::vector<float>& scores,
            double score_cap = 0) {
  const int64_t len = end - start, group = nq / nkv;
  scores.resize(nq * len);
  at::parallel_for(0, nq, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t kv = (h / group) * cap * d + start * d;
      attend_head(q + h * d, k + kv, v + kv, d, len, float(scaling), scores.data() + h * len, out + h * d,
                  float(score_cap));
    }
  });
}

}  // namespace decode
