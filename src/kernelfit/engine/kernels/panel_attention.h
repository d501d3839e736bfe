// A prompt's attention for one layer on panel_gemm.h's microkernel (AVX512-BF16): the layer's keys and values written
// once into bf16 panels, then each block of 12 query rows (32 on AMX tiles) multiplies only the key panels its rows
// see, takes a float32 softmax of its scores in place, and multiplies the weights by the value panels.
//
// Why: the blocked path (rows_kernels.h's prompt_attention) runs two oneDNN bf16 GEMMs per block of 128 queries over
// every key the block's last query sees — 75% of the 256 x 256 square at 256 tokens — with bf16 scores and casts
// between the passes (Gemma 3 270M: ~0.4 ms a layer). Here the causal skip is 32 keys fine (~53% of the square), the
// scores stay float32 and the output is written where the next product reads it.
#pragma once

#include "kv_cache.h"
#include "panel_gemm.h"
#include "rows_kernels.h"

namespace panel {

#if defined(KF_PANEL_GEMM)
// 16 values of a cache row (kv_cache.h row type R) from element i as one AVX-512 register
template <class R>
inline __m512 load512(const typename R::T* row, int64_t i) {
  const kv::Vec16 v = R::load(row, i);
  __m512 r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

// q float32 [t, nq, d] at positions pos.., the layer's cache k, v [nkv, cap, width] (kv_cache.h: float32, float16 or
// Q8_0 rows, R) holding positions start..pos+t -> [t, nq * d], float32 or bf16 (bf16_out). window > 0: a query sees
// the last `window` positions.
template <class R>
inline at::Tensor attention_rows(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v, int64_t pos,
                                 int64_t start, int64_t window, double scale, bool bf16_out, double score_cap,
                                 const float* sinks) {
  const at::Tensor q = q_in.contiguous();
  const int64_t t = q.size(0), nq = q.size(1), d = q.size(2), nkv = k.size(0), group = nq / nkv, cap = k.size(1);
  const int64_t w = k.size(2);
  TORCH_CHECK(q.scalar_type() == at::kFloat && v.sizes() == k.sizes() && k.is_contiguous() && v.is_contiguous() &&
                  kv::head_size(k) == d && nq % nkv == 0 && d % COLS == 0 && start >= 0 && start <= pos &&
                  pos + t <= cap,
              "panel attention: q [t, nq, d], k and v [nkv, cap, width] contiguous, d a multiple of 32");
  const auto* kbase = static_cast<const typename R::T*>(k.data_ptr());
  const auto* vbase = static_cast<const typename R::T*>(v.data_ptr());
  const int64_t len = pos + t - start, kpanels = (len + COLS - 1) / COLS, lpad = kpanels * COLS, dp = d / COLS;
  // key panels [nkv][kpanels][d/2][32] and value panels [nkv][dp][lpad/2][32], zero past the last key
  std::vector<uint32_t> kp(nkv * kpanels * (d / 2) * COLS), vp(nkv * dp * (lpad / 2) * COLS);
  at::parallel_for(0, nkv * kpanels, 1, [&](int64_t b, int64_t e) {
    std::vector<uint32_t> rows_pairs(COLS * (d / 2));  // the panel's 32 keys as bf16 pairs, a key a row
    for (int64_t u = b; u < e; ++u) {
      const int64_t h = u / kpanels, p = u % kpanels;
      uint32_t* dst = kp.data() + u * (d / 2) * COLS;
      for (int64_t j = 0; j < COLS; ++j) {
        const int64_t key = p * COLS + j;
        uint32_t* row = rows_pairs.data() + j * (d / 2);
        if (key >= len) {
          std::memset(row, 0, d / 2 * sizeof(uint32_t));
          continue;
        }
        const auto* src = kbase + (h * cap + start + key) * w;
        for (int64_t i = 0; i < d; i += 16)  // 16 floats -> 8 (even, odd) pairs, round to nearest even
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + i / 2),
                              (__m256i)_mm512_cvtneps_pbh(load512<R>(src, i)));
      }
      for (int64_t i = 0; i < d / 2; ++i)
        for (int64_t j = 0; j < COLS; ++j) dst[i * COLS + j] = rows_pairs[j * (d / 2) + i];
      for (int64_t c = 0; c < dp; ++c) {  // the values of the same 32 keys: 16 pairs of keys, 32 dims a panel
        uint32_t* vd = vp.data() + ((h * dp + c) * (lpad / 2) + p * COLS / 2) * COLS;
        for (int64_t i = 0; i < COLS / 2; ++i) {
          const int64_t k0 = p * COLS + 2 * i, k1 = k0 + 1;
          const auto* a = vbase + (h * cap + start + k0) * w;
          for (int64_t j = 0; j < COLS; j += 16) {  // key k0's bf16 in the low half of each lane, k1's in the high
            const __m512 va = k0 < len ? load512<R>(a, c * COLS + j) : _mm512_setzero_ps();
            const __m512 vb = k1 < len ? load512<R>(a + w, c * COLS + j) : _mm512_setzero_ps();
            const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(va));
            const __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(vb)), 16);
            _mm512_storeu_si512(vd + i * COLS + j, _mm512_or_si512(lo, hi));
          }
        }
      }
    }
  });
  // queries as bf16 rows, the heads of a kv head query-major: row r = i * group + g is position pos + i, head
  // h * group + g
  // On AMX (amx_tiles.h) blocks of 32 rows, the tiles reading 16 at a time: the last head's rows padded with zeros
  // (the other heads' tails read the next head's rows, whose outputs there are not stored: each row is alone)
  const bool tiles = amx::ready();
  const int64_t br = tiles ? 32 : MR;
  at::Tensor qb = q.view({t, nkv, group, d}).transpose(0, 1).to(at::kBFloat16).contiguous().view({-1, d});
  if (tiles) qb = at::constant_pad_nd(qb, {0, 0, 0, br});
  const auto* qp = reinterpret_cast<const uint16_t*>(qb.data_ptr<at::BFloat16>());
  at::Tensor res = at::empty({t, nq * d}, q.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  const int64_t rows_h = t * group, blocks = (rows_h + br - 1) / br;
  at::parallel_for(0, nkv * blocks, 1, [&](int64_t b, int64_t e) {
    if (tiles) amx::configure();
    std::vector<float> s(br * lpad), o(br * d);
    std::vector<uint16_t> w(br * lpad);  // weights; a padded row's are whatever is there (its output is not kept)
    for (int64_t z = b; z < e; ++z) {
      // zigzag: a causal block's work grows with its position, so the first and the last alternate and each
      // thread's contiguous range gets light and heavy blocks alike
      const int64_t n = nkv * blocks, u = z % 2 == 0 ? z / 2 : n - 1 - z / 2;
      const int64_t h = u / blocks, r0 = (u % blocks) * br, rn = std::min(br, rows_h - r0);
      const int64_t first = r0 / group, last = (r0 + rn - 1) / group;  // the block's query positions - pos
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos + first - window + 1 - start) : 0;
      const int64_t hi = pos + last + 1 - start;  // keys [lo, hi) seen by some row of the block
      const int64_t p0 = lo / COLS, p1 = (hi + COLS - 1) / COLS, k0 = p0 * COLS, kn = p1 * COLS - k0;
      const uint16_t* x = qp + (h * rows_h + r0) * d;
      for (int64_t p = p0; p < p1; ++p)
        panel_rows(tiles, x, d, rn, d, kp.data() + (h * kpanels + p) * (d / 2) * COLS, s.data() + p * COLS, lpad,
                   COLS);
      for (int64_t r = 0; r < rn; ++r) {  // each row's own window: scale, mask, softmax -> bf16 weights
        const int64_t i = (r0 + r) / group;
        const int64_t rlo = window > 0 ? std::max<int64_t>(0, pos + i - window + 1 - start) : 0;
        const int64_t rhi = pos + i + 1 - start;
        float* sr = s.data() + r * lpad;
        uint16_t* wr = w.data() + r * lpad;
        for (int64_t j = rlo; j < rhi; ++j) sr[j] *= float(scale);
        rows::softcap(sr + rlo, rhi - rlo, float(score_cap));  // Gemma 2: cap * tanh(score / cap); none at 0
        rows::softmax_weights(sr, rlo, rhi, rows::lanes_max(sr + rlo, rhi - rlo), wr, k0, k0 + kn,
                              sinks ? sinks[h * group + (r0 + r) % group] : -INFINITY);
      }
      for (int64_t c = 0; c < dp; ++c)
        panel_rows(tiles, w.data() + k0, lpad, rn, kn, vp.data() + ((h * dp + c) * (lpad / 2) + k0 / 2) * COLS,
                   o.data() + c * COLS, d, COLS);
      for (int64_t r = 0; r < rn; ++r) {
        const int64_t i = (r0 + r) / group, head = h * group + (r0 + r) % group;
        const float* src = o.data() + r * d;
        if (bf16_out) {
          auto* dst = reinterpret_cast<uint16_t*>(res.data_ptr<at::BFloat16>()) + i * nq * d + head * d;
          for (int64_t j = 0; j < d; ++j) dst[j] = rows::f32_to_bf16(src[j]);
        } else {
          std::memcpy(res.data_ptr<float>() + i * nq * d + head * d, src, d * sizeof(float));
        }
      }
    }
    if (tiles) amx::release();
  });
  return res;
}

inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos, int64_t start,
                            int64_t window, double scale, bool bf16_out, double score_cap = 0,
                            const float* sinks = nullptr) {
  return kv::visit(kv::kind_of(k), [&](auto rows) {
    return attention_rows<decltype(rows)>(q, k, v, pos, start, window, scale, bf16_out, score_cap, sinks);
  });
}
#endif

// The prompt's attention through the panels where they are built (and not turned off), else rows_kernels.h's
// blocked oneDNN path (`block` queries a block). sinks: a logit a query head (gpt-oss), or null
inline at::Tensor prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos,
                                   int64_t start, int64_t window, double scale, int64_t block, bool bf16_out,
                                   double score_cap = 0, const float* sinks = nullptr) {
#if defined(KF_PANEL_GEMM)
  if (available() && q.size(2) % COLS == 0)
    return attention(q, k, v, pos, start, window, scale, bf16_out, score_cap, sinks);
#endif
  // without the bf16 panels: oneDNN in query blocks, in bf16 where the CPU has AVX512-BF16 (a head size off the
  // panels' columns, KERNELFIT_PANEL_GEMM=0), else in float32 (no faster bf16 product there)
  return rows::prompt_attention_to(q, k, v, pos, start, window, scale, block, bf16_out, score_cap, sinks,
                                   bf16_native());
}

}  // namespace panel
