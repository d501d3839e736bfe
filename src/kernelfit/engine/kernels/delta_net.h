// Qwen3.5's Gated DeltaNet layer (transformers Qwen3_5GatedDeltaNet with torch_recurrent_gated_delta_rule; llama.cpp
// src/models/qwen35.cpp and delta-net-base.cpp), between its input products and ssm_out, one position at a time:
//   qkv = causal depthwise conv (K taps) of the qkv product, then SiLU; q, k L2-normed per key head, q / sqrt(dk);
//   per value head j (key head j % nk: llama.cpp's converter stores value heads tiled over the key heads):
//     beta = sigmoid(b_j), decay = exp(a_j * softplus(alpha_j + dt_bias_j))    (a = -exp(A_log), as the file stores)
//     S_j *= decay;  delta = (v_j - S_j^T k) * beta;  S_j += k delta^T;  o_j = S_j^T q
//     out_j = rmsnorm(o_j) * norm_w * silu(z_j)
// A prompt runs the same step a row at a time (rows(): a head's rows on one thread): the state is [dk, dv] a head, so the recurrence costs ~4 dk dv
// multiply-adds a head and token — 1.2 M for Qwen3.5-0.8B's 18 such layers' heads against its ~0.8 G of products
// a token — and the chunked form transformers and llama.cpp use for long prompts on GPUs is not needed here; a row
// gets what a decode step gets, bit for bit.
//
// State a layer, float32: the conv's last K - 1 inputs [(K - 1), conv_dim] (oldest row first), then S [nv, dk, dv].
#pragma once

#include <ATen/Parallel.h>

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

inline float silu(float x) { return x / (1.f + std::exp(-x)); }
inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

// p: t rows of the layer's products [qkv (conv_dim) | z (value_dim) | beta logits (nv) | alpha (nv)], `ld` floats
// apart; taps float32 [conv_dim, K]; a, dt_bias [nv]; norm_w [dv]; state (updated); out [t, value_dim].
// A prompt's rows go through one call: the convolution a channel at a time over all rows, then each value head's
// recurrence over all rows on one thread, its 64 KiB state staying in that core's cache (a call a row spent ~a
// third of Qwen3.5-0.8B's 256-token prompt in these layers, the state read and written twice a row from wherever
// the last row's thread had left it). Each row's arithmetic is a one-row call's, in the same order: a prompt gets
// what decode steps get, bit for bit.
inline void rows(const float* p, int64_t t, int64_t ld, const Dims& m, const float* taps, const float* a,
                 const float* dt_bias, const float* norm_w, double eps, float* state, float* out) {
  const int64_t C = m.conv_dim(), K = m.taps, kd = m.key_dim(), vd = m.value_dim();
  std::vector<float> mixed(t * C);
  float* conv = state;
  at::parallel_for(0, C, t > 1 ? 64 : C, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {  // the conv's taps oldest first, the current input last; the state keeps inputs
      const float* w = taps + c * K;
      for (int64_t r = 0; r < t; ++r) {
        const float x = p[r * ld + c];
        float acc = 0.f;
        for (int64_t j = 0; j < K - 1; ++j) acc += w[j] * conv[j * C + c];
        acc += w[K - 1] * x;
        for (int64_t j = 0; j + 1 < K - 1; ++j) conv[j * C + c] = conv[(j + 1) * C + c];
        if (K > 1) conv[(K - 2) * C + c] = x;
        mixed[r * C + c] = silu(acc);
      }
    }
  });
  const float qscale = 1.f / std::sqrt(static_cast<float>(m.dk));
  for (int64_t r = 0; r < t; ++r)
    for (int64_t h = 0; h < 2 * m.nk; ++h) {  // q heads then k heads: L2 norm (q also scaled)
      float* x = mixed.data() + r * C + h * m.dk;
      float ss = 0.f;
      for (int64_t i = 0; i < m.dk; ++i) ss += x[i] * x[i];
      const float s = 1.f / std::sqrt(ss + L2_EPS) * (h < m.nk ? qscale : 1.f);
      for (int64_t i = 0; i < m.dk; ++i) x[i] *= s;
    }
  float* states = state + (K - 1) * C;
  at::parallel_for(0, m.nv, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> kv(m.dv), o(m.dv);
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t r = 0; r < t; ++r) {
        const float* pr = p + r * ld;
        const float* mr = mixed.data() + r * C;
        const float* q = mr + (j % m.nk) * m.dk;
        const float* k = mr + kd + (j % m.nk) * m.dk;
        const float* v = mr + 2 * kd + j * m.dv;
        const float beta = 1.f / (1.f + std::exp(-pr[C + vd + j]));
        const float decay = std::exp(a[j] * softplus(pr[C + vd + m.nv + j] + dt_bias[j]));
        float* S = states + j * m.dk * m.dv;
        // two passes over the head's state, the first only reading it: kv = (decay S)^T k; then S = decay S + k
        // delta^T and o = S^T q in one read and write (the state, 64 KiB a head, is most of what the layer touches
        // besides its weights; a decay pass of its own wrote it once more)
        std::fill(kv.begin(), kv.end(), 0.f);
        for (int64_t i = 0; i < m.dk; ++i) {
          const float* row = S + i * m.dv;
          const float ki = k[i] * decay;
          for (int64_t e = 0; e < m.dv; ++e) kv[e] += row[e] * ki;
        }
        for (int64_t e = 0; e < m.dv; ++e) kv[e] = (v[e] - kv[e]) * beta;  // delta
        std::fill(o.begin(), o.end(), 0.f);
        for (int64_t i = 0; i < m.dk; ++i) {
          float* row = S + i * m.dv;
          for (int64_t e = 0; e < m.dv; ++e) {
            row[e] = row[e] * decay + k[i] * kv[e];
            o[e] += row[e] * q[i];
          }
        }
        float ss = 0.f;
        for (int64_t e = 0; e < m.dv; ++e) ss += o[e] * o[e];
        const float rs = 1.f / std::sqrt(ss / m.dv + static_cast<float>(eps));
        const float* z = pr + C + j * m.dv;
        float* dst = out + r * vd + j * m.dv;
        for (int64_t e = 0; e < m.dv; ++e) dst[e] = o[e] * rs * norm_w[e] * silu(z[e]);
      }
  });
}

}  // namespace delta
