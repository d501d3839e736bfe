// The Mamba-2 mixer of Granite 4.0-H (transformers GraniteMoeHybridMambaLayer; llama.cpp llm_build_mamba_base::
// build_mamba2_layer and ggml_ssm_scan), between its in_proj and out_proj products, one position at a time:
//   [z | xBC | dt] = in_proj(x);  xBC = SiLU(causal depthwise conv (K taps) of xBC + bias);  xBC = [x | B | C]
//   per head h (of H, P values each; its group g = h / (H / G) gives B_g, C_g of N values):
//     dt = softplus(dt_h + dt_bias_h);  S_h = exp(dt A_h) S_h + dt x_h B_g^T;  y_h = S_h C_g + D_h x_h
//   out = grouped RMS norm (d_inner / G values a group) of y * silu(z), times norm_w
// The state is [P, N] a head: a step costs ~3 P N multiply-adds a head, so a prompt runs the recurrence a row at a time
// (rows()), as the decode step does — each row gets what a decode step gets, bit for bit; the chunked scan (SSD) that
// GPUs use for long prompts is not needed at these sizes (Granite 4.0-H-Micro: 48 heads of 64 x 128, ~1.2 M a layer and
// token, against its ~3 G of products a token).
//
// State a layer, float32: the conv's last K - 1 inputs [(K - 1), conv_dim] (oldest row first), then S [H, P, N].
#pragma once

#include "delta_net.h"
#include "rows_kernels.h"

#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mamba {

struct Dims {
  int64_t heads, head_dim, groups, state, taps;
  int64_t inner() const { return heads * head_dim; }
  int64_t conv_dim() const { return inner() + 2 * groups * state; }
  int64_t inputs() const { return inner() + conv_dim() + heads; }  // z, xBC, dt
  int64_t state_floats() const { return (taps - 1) * conv_dim() + heads * head_dim * state; }
};

// One row of a head's state S[i] ([N]) through a step: S[i] = decay S[i] + xi B; returns S[i] . C. On 16 lanes where
// AVX-512 is (the scalar loop's sum is one chain the compiler keeps in order: ~6% of a Granite 4.0-H decode step)
inline float state_row(float* row, int64_t N, float decay, float xi, const float* B, const float* C) {
  int64_t n = 0;
  float acc = 0.f;
#if defined(__AVX512F__)
  __m512 sum = _mm512_setzero_ps();
  const __m512 vd = _mm512_set1_ps(decay), vx = _mm512_set1_ps(xi);
  for (; n + 16 <= N; n += 16) {
    const __m512 s = _mm512_fmadd_ps(vx, _mm512_loadu_ps(B + n), _mm512_mul_ps(_mm512_loadu_ps(row + n), vd));
    _mm512_storeu_ps(row + n, s);
    sum = _mm512_fmadd_ps(s, _mm512_loadu_ps(C + n), sum);
  }
  acc = _mm512_reduce_add_ps(sum);
#endif
  for (; n < N; ++n) {
    row[n] = row[n] * decay + xi * B[n];
    acc += row[n] * C[n];
  }
  return acc;
}

// p: t rows of in_proj's products [z (inner) | xBC (conv_dim) | dt (heads)], `ld` floats apart; taps float32
// [conv_dim, K], conv_bias [conv_dim] (or null); a (A = -exp(A_log), as the file stores it), dt_bias, d [heads];
// norm_w [inner]; state (updated); out [t, inner].
inline void rows(const float* p, int64_t t, int64_t ld, const Dims& m, const float* taps, const float* conv_bias,
                 const float* a, const float* dt_bias, const float* d, const float* norm_w, double eps, float* state,
                 float* out) {
  const int64_t C = m.conv_dim(), K = m.taps, in = m.inner(), H = m.heads, P = m.head_dim, N = m.state;
  std::vector<float> mixed(t * C);
  delta::causal_conv(p + in, t, ld, C, K, taps, conv_bias, state, mixed.data());
  float* states = state + (K - 1) * C;
  const int64_t per_group = H / m.groups;
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      float* S = states + h * P * N;
      const int64_t g = h / per_group;
      for (int64_t r = 0; r < t; ++r) {
        const float* mr = mixed.data() + r * C;
        const float* x = mr + h * P;
        const float* B = mr + in + g * N;
        const float* Cg = mr + in + m.groups * N + g * N;
        const float dt = delta::softplus(p[r * ld + in + C + h] + dt_bias[h]);
        const float decay = std::exp(dt * a[h]);
        float* y = out + r * in + h * P;
        for (int64_t i = 0; i < P; ++i) y[i] = state_row(S + i * N, N, decay, dt * x[i], B, Cg) + d[h] * x[i];
      }
    }
  });
  const int64_t gs = in / m.groups;
  at::parallel_for(0, t * m.groups, t > 1 ? 16 : t * m.groups, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {  // y * silu(z), then each group's RMS norm, times norm_w
      const int64_t r = u / m.groups, g = u % m.groups;
      float* o = out + r * in + g * gs;
      const float* z = p + r * ld + g * gs;
      float ss = 0.f;
      for (int64_t e = 0; e < gs; ++e) {
        o[e] = o[e] * z[e] * rows::sigmoid(z[e]);
        ss += o[e] * o[e];
      }
      const float rs = 1.f / std::sqrt(ss / gs + static_cast<float>(eps));
      for (int64_t e = 0; e < gs; ++e) o[e] = o[e] * rs * norm_w[g * gs + e];
    }
  });
}

}  // namespace mamba
