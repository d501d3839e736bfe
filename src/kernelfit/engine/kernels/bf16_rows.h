// Products over a checkpoint's bf16 or float16 weight rows as stored ([N, K] row-major, a transformers safetensors
// tensor or a GGUF BF16/F16 tensor; F32 is rounded to bf16 once): y float32 [M, N] = x @ W^T.
//
// Why not torch's bf16 linear: its one-row product rounds the activation to bf16 and the output to bf16 — a logit
// of 25 then moves in steps of 0.125, which swapped SmolLM2's top two answers to "What is the capital of France?"
// (margin 0.1; transformers' float32 load says "The capital ...", the bf16 output "L'Étoile ...") — and it streamed
// 12-21 GB/s here where this CPU reads 28-30 GB/s. Here a call of up to DECODE_ROWS rows widens each weight to
// float32 (exact: bf16 is float32's upper half) and multiplies it with the float32 activation (FMA, 16 lanes a
// row in two chains, summed in a fixed order), each row alone whatever else shares the call — so a batched step
// equals one decode step a row, bit for bit, as with the dot products. Larger calls (a prompt) take panel_gemm.h's bf16
// microkernel over panels transposed from the rows (bf16 inputs, float32 sums and output), or a float32 product
// without it (a CPU without AVX512-BF16 has no faster bf16 product, and oneDNN's rounds the output to bf16).
#pragma once

#include <algorithm>

#include "panel_gemm.h"

namespace bf16rows {

constexpr int64_t DECODE_ROWS = 12;  // reference.py DOT_MAX_ROWS
constexpr int64_t ROW_BLOCK = 64;    // weight rows a thread task: ~64 KB of a 576-wide table, well past the call cost

template <bool F16>
inline float widen(uint16_t b) {
  if constexpr (F16) {
    at::Half h;
    std::memcpy(&h, &b, sizeof b);
    return static_cast<float>(h);
  }
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// software prefetch: the rows PREFETCH_ROWS ahead of the one multiplied, the first ones all at the start
constexpr int64_t PREFETCH_ROWS = 6;

inline void prefetch_row(const uint16_t* row, int64_t k) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < 2 * k; off += 64) __builtin_prefetch(p + off, 0, 3);
}

#if defined(__AVX512F__)
// 16 weights as stored, widened to float32 exactly (float16: vcvtph2ps; bf16: the upper half of a float32)
template <bool F16>
inline __m512 widen16(const uint16_t* w) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return F16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

// y[r, n] for rows r < R of x (float32, K apart) and weight rows [n0, n1); F16: the rows are float16 (a float16
// checkpoint's weights as stored: vcvtph2ps widens them exactly, as the shift widens bf16)
template <int R, bool F16>
void dot_rows(const float* x, int64_t k, const uint16_t* w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < std::min(n1, n0 + PREFETCH_ROWS); ++n) prefetch_row(w + n * k, k);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * k;
    if (n + PREFETCH_ROWS < n1) prefetch_row(w + (n + PREFETCH_ROWS) * k, k);
    int64_t i = 0;
#if defined(__AVX512F__)
    // two chains a row (even and odd vectors of 16), added before the lanes: a one-row call is bound by the FMA's
    // latency with one chain, and then also issues the weights' loads too slowly to stream from DRAM
    __m512 acc[R], odd[R];
    for (int r = 0; r < R; ++r) acc[r] = odd[r] = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
      const __m512 w0 = widen16<F16>(wr + i), w1 = widen16<F16>(wr + i + 16);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * k + i), w0, acc[r]);
        odd[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * k + i + 16), w1, odd[r]);
      }
    }
    for (; i + 16 <= k; i += 16) {
      const __m512 wf = widen16<F16>(wr + i);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * k + i), wf, acc[r]);
    }
    float sums[R];
    for (int r = 0; r < R; ++r) sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], odd[r]));
#elif defined(KF_DOT_AVX2)
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (; i + 8 <= k; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + i));
      const __m256 wf = F16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * k + i), wf, acc[r]);
    }
    float sums[R];
    for (int r = 0; r < R; ++r) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[r]);
      float s = 0;
      for (int j = 0; j < 8; ++j) s += lanes[j];
      sums[r] = s;
    }
#else
    float sums[R] = {};
#endif
    for (; i < k; ++i) {  // a row tail past the last whole vector
      const float wf = widen<F16>(wr[i]);
      for (int r = 0; r < R; ++r) sums[r] += x[r * k + i] * wf;
    }
    for (int r = 0; r < R; ++r) y[r * ldy + n] = sums[r];
  }
}

template <bool F16>
void dot_block(int64_t rows, const float* x, int64_t k, const uint16_t* w, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  switch (rows) {
#define KF_BF16_ROWS(R) \
  case R: return dot_rows<R, F16>(x, k, w, n0, n1, y, ldy);
    KF_BF16_ROWS(1) KF_BF16_ROWS(2) KF_BF16_ROWS(3) KF_BF16_ROWS(4) KF_BF16_ROWS(5) KF_BF16_ROWS(6)
    KF_BF16_ROWS(7) KF_BF16_ROWS(8) KF_BF16_ROWS(9) KF_BF16_ROWS(10) KF_BF16_ROWS(11) KF_BF16_ROWS(12)
#undef KF_BF16_ROWS
  }
}

#if defined(KF_PANEL_GEMM)
// panel_gemm.h's layout from bf16 rows n0..n0+32 (zeros past n): lane j of pair kp holds row n0 + j's k = 2 kp and
// 2 kp + 1, which are one uint32 of the row as stored. Float16 rows are rounded to bf16 first, a row at a time into
// `tmp` (a prompt's products take bf16 inputs; the decode rows above stay exact)
inline void rows_panel(const uint16_t* w, int64_t n, int64_t k, int64_t n0, uint32_t* panel, bool f16,
                       std::vector<uint16_t>& tmp) {
  for (int64_t j = 0; j < panel::COLS; ++j) {
    if (n0 + j >= n) {
      for (int64_t kp = 0; kp < k / 2; ++kp) panel[kp * panel::COLS + j] = 0;
      continue;
    }
    const uint16_t* row = w + (n0 + j) * k;
    if (f16) {
      tmp.resize(k);
      int64_t i = 0;
      for (; i + 16 <= k; i += 16) {
        const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(tmp.data() + i), (__m256i)_mm512_cvtneps_pbh(v));
      }
      for (; i < k; ++i) {
        const at::BFloat16 b(widen<true>(row[i]));
        std::memcpy(tmp.data() + i, &b, 2);
      }
      row = tmp.data();
    }
    for (int64_t kp = 0; kp < k / 2; ++kp) std::memcpy(panel + kp * panel::COLS + j, row + 2 * kp, 4);
  }
}
#endif

// y float32 [M, sum N] = x @ [W_0; W_1; ...]^T for M <= DECODE_ROWS: several weights over one input (Q, K and V;
// gate and up) in one parallel region — a small model's products are ~1 MB each, and each region's start and its
// threads' last wait cost a fixed ~20 us of DRAM streaming (SmolLM2-135M's 7 products a layer streamed 14.5 GB/s one
// call each, where one 57 MB product streams 22). Each output is dot_rows' as in rows_mm: the same bits.
inline at::Tensor rows_mm_parts(const at::Tensor& x_in, const std::vector<at::Tensor>& ws) {
  const int64_t k = ws[0].size(1), m = x_in.numel() / k;
  TORCH_CHECK(m <= DECODE_ROWS && x_in.size(-1) == k, "bf16 row parts: at most DECODE_ROWS rows of K columns");
  std::vector<int64_t> first_block{0}, column{0};
  for (const auto& w : ws) {
    TORCH_CHECK((w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16) && w.dim() == 2 &&
                    w.is_contiguous() && w.size(1) == k, "bf16 row parts: bf16 or float16 [N, K] weights");
    first_block.push_back(first_block.back() + (w.size(0) + ROW_BLOCK - 1) / ROW_BLOCK);
    column.push_back(column.back() + w.size(0));
  }
  const at::Tensor x = x_in.to(at::kFloat).contiguous().view({m, k});
  at::Tensor y = at::empty({m, column.back()}, x.options());
  if (m == 0) return y;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t ldy = column.back();
  at::parallel_for(0, first_block.back(), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1;) {  // a thread's blocks, one part at a time
      const size_t p = std::upper_bound(first_block.begin(), first_block.end(), b) - first_block.begin() - 1;
      const int64_t end = std::min(b1, first_block[p + 1]), n = ws[p].size(0);
      const int64_t n0 = (b - first_block[p]) * ROW_BLOCK, n1 = std::min(n, (end - first_block[p]) * ROW_BLOCK);
      const auto* wp = static_cast<const uint16_t*>(ws[p].data_ptr());
      if (ws[p].scalar_type() == at::kHalf) dot_block<true>(m, xp, k, wp, n0, n1, yp + column[p], ldy);
      else dot_block<false>(m, xp, k, wp, n0, n1, yp + column[p], ldy);
      b = end;
    }
  });
  return y;
}

// y float32 [M, N] = x @ W^T; x float32 or bf16 [M, K], w bf16 [N, K] contiguous
// rows_mm_parts over any number of rows, DECODE_ROWS at a time: each row's outputs whatever else shares the call (the
// server's prompts on a CPU without the panels, whose float32 GEMM's sums depend on the rows in the call)
inline at::Tensor rows_mm_exact(const at::Tensor& x_in, const std::vector<at::Tensor>& ws) {
  const at::Tensor x = x_in.reshape({-1, x_in.size(-1)});
  std::vector<at::Tensor> chunks;
  for (int64_t r = 0; r < x.size(0); r += DECODE_ROWS)
    chunks.push_back(rows_mm_parts(x.narrow(0, r, std::min(DECODE_ROWS, x.size(0) - r)), ws));
  return at::cat(chunks, 0);
}

inline at::Tensor rows_mm(const at::Tensor& x_in, const at::Tensor& w) {
  const bool f16 = w.scalar_type() == at::kHalf;
  TORCH_CHECK((f16 || w.scalar_type() == at::kBFloat16) && w.dim() == 2 && w.is_contiguous(),
              "bf16 rows: W bf16 or float16 [N, K]");
  const int64_t n = w.size(0), k = w.size(1);
  TORCH_CHECK(x_in.size(-1) == k, "bf16 rows: x has ", x_in.size(-1), " columns, W ", k);
  const auto* wp = static_cast<const uint16_t*>(w.data_ptr());
  const int64_t m = x_in.numel() / k;
  if (m <= DECODE_ROWS) return rows_mm_parts(x_in, {w});
#if defined(KF_PANEL_GEMM)
  if (panel::available() && k % 2 == 0) {
    const bool tiles = amx::ready() && k % 32 == 0;
    const at::Tensor x = panel::tile_rows(x_in.to(at::kBFloat16).contiguous().view({m, k}), tiles);
    at::Tensor y = at::empty({m, n}, x.options().dtype(at::kFloat));
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, (n + panel::COLS - 1) / panel::COLS, 1, [&](int64_t p0, int64_t p1) {
      if (tiles) amx::configure();
      std::vector<uint32_t> pan(k / 2 * panel::COLS);
      std::vector<uint16_t> tmp;
      for (int64_t p = p0; p < p1; ++p) {
        rows_panel(wp, n, k, p * panel::COLS, pan.data(), f16, tmp);
        const int64_t valid = std::min(panel::COLS, n - p * panel::COLS);
        panel::panel_rows(tiles, xp, x.size(1), m, k, pan.data(), yp + p * panel::COLS, n, valid);
      }
      if (tiles) amx::release();
    });
    return y;
  }
#endif
  if (panel::bf16_native()) return at::linear(x_in.to(w.scalar_type()).view({m, k}), w).to(at::kFloat);
  // no AVX512-BF16: float32 (exact; oneDNN converts a bf16 product there anyway, and rounds its output to bf16)
  return at::linear(x_in.to(at::kFloat).view({m, k}), w.to(at::kFloat));
}

}  // namespace bf16rows
