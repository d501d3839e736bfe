// Qwen3.5's Gated DeltaNet layer (transformers Qwen3_5GatedDeltaNet with torch_recurrent_gated_delta_rule; llama.cpp
// src/models/qwen35.cpp and delta-net-base.cpp), between its input products and ssm_out, one position at a time:
//   qkv = causal depthwise conv (K taps) of the qkv product, then SiLU; q, k L2-normed per key head, q / sqrt(dk);
//   per value head j (key head j % nk: llama.cpp's converter stores value heads tiled over the key heads):
//     beta = sigmoid(b_j), decay = exp(a_j * softplus(alpha_j + dt_bias_j))    (a = -exp(A_log), as the file stores)
//     S_j *= decay;  delta = (v_j - S_j^T k) * beta;  S_j += k delta^T;  o_j = S_j^T q
//     out_j = rmsnorm(o_j) * norm_w * silu(z_j)
// A prompt runs the same step a row at a time (rows()): the state is [dk, dv] a head, so the recurrence costs ~4 dk dv
// multiply-adds a head and token — 1.2 M for Qwen3.5-0.8B's 18 such layers' heads against its ~0.8 G of products
// a token — and the chunked form transformers and llama.cpp use for long prompts on GPUs is not needed here; a row
// gets what a decode step gets, bit for bit.
//
// State a layer, float32: the conv's last K - 1 inputs [(K - 1), conv_dim] (oldest row first), then S [nv, dk, dv].
#pragma once

#include "rows_kernels.h"

#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace delta {

struct Dims {
  int64_t nk, dk, nv, dv, taps;
  int64_t key_dim() const { return nk * dk; }
  int64_t value_dim() const { return nv * dv; }
  int64_t conv_dim() const { return 2 * nk * dk + nv * dv; }
  int64_t inputs() const { return conv_dim() + value_dim() + 2 * nv; }  // qkv, z, beta, alpha
  int64_t state_floats() const { return (taps - 1) * conv_dim() + nv * dk * dv; }
};

constexpr float L2_EPS = 1e-6f;  // transformers' l2norm (llama.cpp takes rms_norm_eps, 1e-6 in Qwen3.5's configs)

// x[i] = x[i] sigmoid(x[i]) for i < n, on 16 lanes where AVX-512 is (rows_kernels.h's exp; std::exp is a libm call
// an element: the convolution's SiLU was a third of this layer's prompt time)
inline void silu(float* x, int64_t n) {
  int64_t i = 0;
#if defined(KF_ROWS_AVX512)
  const __m512 lo = _mm512_set1_ps(-87.f), hi = _mm512_set1_ps(88.f), one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 e = rows::exp16(_mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), v), lo), hi));
    _mm512_storeu_ps(x + i, _mm512_mul_ps(v, _mm512_div_ps(one, _mm512_add_ps(one, e))));
  }
#endif
  for (; i < n; ++i) x[i] = x[i] * rows::sigmoid(x[i]);
}
inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

constexpr int64_t CONV_GRAIN = 512;  // the convolution's channels a thread takes at least
constexpr int64_t STATE_COLS = 64;  // a task's columns of a head's state: [dk, 64] floats, 32 KiB, stays in L1

#if defined(__AVX512F__)
// One row through 64 columns of a head's state S ([dk rows, dv apart]), as the loops in rows() compute it (a column's
// sums in the same order: over i), four zmm a row: the four columns' chains are independent, so the FMAs' latency
// is hidden (the loops, with the columns' count unknown to the compiler, ran at ~10% of the FMA peak here)
inline void columns64(float* S, int64_t dv, int64_t dk, const float* q, const float* k, const float* v, float b,
                      float g, float* o) {
  __m512 kv[4], acc[4];
  for (int c = 0; c < 4; ++c) kv[c] = _mm512_setzero_ps();
  for (int64_t i = 0; i < dk; ++i) {
    const float* row = S + i * dv;
    const __m512 ki = _mm512_set1_ps(k[i] * g);
    for (int c = 0; c < 4; ++c) kv[c] = _mm512_fmadd_ps(_mm512_loadu_ps(row + 16 * c), ki, kv[c]);
  }
  const __m512 vb = _mm512_set1_ps(b), vg = _mm512_set1_ps(g);
  for (int c = 0; c < 4; ++c) {  // delta
    kv[c] = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(v + 16 * c), kv[c]), vb);
    acc[c] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < dk; ++i) {
    float* row = S + i * dv;
    const __m512 ki = _mm512_set1_ps(k[i]), qi = _mm512_set1_ps(q[i]);
    for (int c = 0; c < 4; ++c) {
      const __m512 s = _mm512_fmadd_ps(ki, kv[c], _mm512_mul_ps(_mm512_loadu_ps(row + 16 * c), vg));
      _mm512_storeu_ps(row + 16 * c, s);
      acc[c] = _mm512_fmadd_ps(s, qi, acc[c]);
    }
  }
  for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + 16 * c, acc[c]);
}
#endif

// The causal depthwise convolution both recurrent mixers open with (Qwen3.5's over q, k, v; Mamba-2's over x, B, C):
// C channels of t input rows (`ld` floats apart, the channels contiguous from p) through K taps a channel (float32 [C,
// K]), plus a bias (or none), then SiLU, into mixed [t, C]; conv (the channels' last K - 1 inputs [(K - 1), C], oldest
// first) is read and updated. Channels in ranges a thread, the rows in order inside one.
inline void causal_conv(const float* p, int64_t t, int64_t ld, int64_t C, int64_t K, const float* taps,
                        const float* bias, float* conv, float* mixed) {
  at::parallel_for(0, C, t > 1 ? CONV_GRAIN : C, [&](int64_t c0, int64_t c1) {
    const int64_t n = c1 - c0;
    std::vector<float> win((K - 1) * n), w(K * n);  // the range's state rows and taps, tap-major
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < K; ++j) w[j * n + i] = taps[(c0 + i) * K + j];
      for (int64_t j = 0; j < K - 1; ++j) win[j * n + i] = conv[j * C + c0 + i];
    }
    for (int64_t r = 0; r < t; ++r) {  // the taps oldest first, the current input last; the state keeps inputs
      const float* x = p + r * ld + c0;
      float* mo = mixed + r * C + c0;
      for (int64_t i = 0; i < n; ++i) mo[i] = bias ? bias[c0 + i] : 0.f;
      for (int64_t j = 0; j < K - 1; ++j)
        for (int64_t i = 0; i < n; ++i) mo[i] += w[j * n + i] * win[j * n + i];
      for (int64_t i = 0; i < n; ++i) mo[i] += w[(K - 1) * n + i] * x[i];
      if (K > 1) {
        std::copy(win.begin() + n, win.end(), win.begin());
        std::copy(x, x + n, win.begin() + (K - 2) * n);
      }
      silu(mo, n);
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < K - 1; ++j) conv[j * C + c0 + i] = win[j * n + i];
  });
}

// p: t rows of the layer's products [qkv (conv_dim) | z (value_dim) | beta logits (nv) | alpha (nv)], `ld` floats
// apart; taps float32 [conv_dim, K]; a, dt_bias [nv]; norm_w [dv]; state (updated); out [t, value_dim].
// A prompt's rows go through one call: the convolution a range of channels a thread, row after row, then each block
// of 64 of a value head's state columns over all rows on one thread (a column's recurrence reads no other column:
// only the output's RMS norm, a last pass, needs the whole head), its 32 KiB staying in L1 — a call a row read and
// wrote the 64 KiB head twice a row from L2. Each row's arithmetic is a one-row call's, in the same order: a prompt
// gets what decode steps get, bit for bit.
inline void rows(const float* p, int64_t t, int64_t ld, const Dims& m, const float* taps, const float* a,
                 const float* dt_bias, const float* norm_w, double eps, float* state, float* out) {
  const int64_t C = m.conv_dim(), K = m.taps, kd = m.key_dim(), vd = m.value_dim(), nv = m.nv, dv = m.dv;
  std::vector<float> mixed(t * C);
  causal_conv(p, t, ld, C, K, taps, nullptr, state, mixed.data());
  const float qscale = 1.f / std::sqrt(static_cast<float>(m.dk));
  std::vector<float> beta(t * nv), decay(t * nv);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t h = 0; h < 2 * m.nk; ++h) {  // q heads then k heads: L2 norm (q also scaled)
      float* x = mixed.data() + r * C + h * m.dk;
      float ss = 0.f;
      for (int64_t i = 0; i < m.dk; ++i) ss += x[i] * x[i];
      const float s = 1.f / std::sqrt(ss + L2_EPS) * (h < m.nk ? qscale : 1.f);
      for (int64_t i = 0; i < m.dk; ++i) x[i] *= s;
    }
    const float* pr = p + r * ld;
    for (int64_t j = 0; j < nv; ++j) {
      beta[r * nv + j] = 1.f / (1.f + std::exp(-pr[C + vd + j]));
      decay[r * nv + j] = std::exp(a[j] * softplus(pr[C + vd + nv + j] + dt_bias[j]));
    }
  }
  float* states = state + (K - 1) * C;
  const int64_t cols = std::min(STATE_COLS, dv), per_head = (dv + cols - 1) / cols;
  at::parallel_for(0, nv * per_head, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> kv(cols);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t j = u / per_head, e0 = (u % per_head) * cols, ne = std::min(cols, dv - e0);
      float* S = states + j * m.dk * dv + e0;  // the head's state, its columns e0..e0 + ne; rows dv apart
      for (int64_t r = 0; r < t; ++r) {
        const float* mr = mixed.data() + r * C;
        const float* q = mr + (j % m.nk) * m.dk;
        const float* k = mr + kd + (j % m.nk) * m.dk;
        const float* v = mr + 2 * kd + j * dv + e0;
        float* o = out + r * vd + j * dv + e0;  // o, normed below
#if defined(__AVX512F__)
        if (ne == STATE_COLS) {
          columns64(S, dv, m.dk, q, k, v, beta[r * nv + j], decay[r * nv + j], o);
          continue;
        }
#endif
        const float b = beta[r * nv + j], g = decay[r * nv + j];
        // two passes over the columns, the first only reading them: kv = (decay S)^T k; then S = decay S + k
        // delta^T and o = S^T q in one read and write
        std::fill(kv.begin(), kv.end(), 0.f);
        for (int64_t i = 0; i < m.dk; ++i) {
          const float* row = S + i * dv;
          const float ki = k[i] * g;
          for (int64_t e = 0; e < ne; ++e) kv[e] += row[e] * ki;
        }
        for (int64_t e = 0; e < ne; ++e) kv[e] = (v[e] - kv[e]) * b;  // delta
        std::fill(o, o + ne, 0.f);
        for (int64_t i = 0; i < m.dk; ++i) {
          float* row = S + i * dv;
          for (int64_t e = 0; e < ne; ++e) {
            row[e] = row[e] * g + k[i] * kv[e];
            o[e] += row[e] * q[i];
          }
        }
      }
    }
  });
  at::parallel_for(0, t * nv, t > 1 ? 16 : t * nv, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {  // each head's output: RMS norm, times norm_w, times silu(z) (gated_row)
      const int64_t r = u / nv, j = u % nv;
      float* o = out + r * vd + j * dv;
      float ss = 0.f;
      for (int64_t e = 0; e < dv; ++e) ss += o[e] * o[e];
      const float rs = 1.f / std::sqrt(ss / dv + static_cast<float>(eps));
      for (int64_t e = 0; e < dv; ++e) o[e] = o[e] * rs * norm_w[e];
      rows::gated_row(p + r * ld + C + j * dv, o, o, dv, false);
    }
  });
}

}  // namespace delta
