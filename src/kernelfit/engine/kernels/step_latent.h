#pragma once

// Step's multi-head latent attention members (DeepSeek's MLA, absorbed; declared and described in step.cpp's Step).
// Included by step.cpp after Step.

template <class CacheOf, class Prod>
void Step::latent_heads(const Tensor& qkv_in, const Weights& w, int64_t li, int64_t lat0, const Tensor& rope,
                        const std::vector<int64_t>& pos, int64_t kl, float* q, CacheOf cache_of, Prod prod,
                        int64_t dot_rows) const {
  const Tensor qkv = qkv_in.to(at::kFloat).contiguous();
  const int64_t t = qkv.size(0), qr = lat[0], kr = lat[1], nope = lat[2], rp = lat[3], hd = nope + rp;
  const int64_t qw = qr ? qr : nq * hd;
  TORCH_CHECK(d == rp + kr && qkv.size(1) == qw + kr + rp, "latent attention: the layer's products give ",
              qkv.size(1), " values a row for its sizes");
  const Tensor qh = (qr ? prod(rows::rms_norm_to(qkv.narrow(1, 0, qr).contiguous(), norms[li][3], eps, false), lat0)
                        : qkv.narrow(1, 0, qw)).to(at::kFloat).contiguous().view({t, nq, hd});
  const Tensor c = rows::rms_norm_to(qkv.narrow(1, qw, kr).contiguous(), norms[li][4], eps, false);
  const float* rp0 = rope.data_ptr<float>();
  std::vector<float> row(d);
  for (int64_t r = 0; r < t; ++r) {
    const float* src = qkv.data_ptr<float>() + r * qkv.size(1) + qw + kr;  // k_pe
    std::copy(src, src + rp, row.begin());
    std::copy(c.data_ptr<float>() + r * kr, c.data_ptr<float>() + (r + 1) * kr, row.begin() + rp);
    head_vector(row.data(), nullptr, nullptr, rp0 + pos[r] * d, true, d, eps, row.data());  // rotated in place
    const kv::View& cache = cache_of(r);
    const int64_t at = cache.row(kl, 1, 0, pos[r]);
    kv::store(cache.kind, cache.k, at, row.data(), d);
    if (cache.v != cache.k) kv::store(cache.kind, cache.v, at, row.data(), d);  // engine/kv_cache.py: one tensor
  }
  const int64_t kb = lat0 + (qr ? 1 : 0);
  heads_in_turn(t, dot_rows, [&](int64_t h) {
    const Tensor absorbed =
        block_product(qh.select(1, h).narrow(1, 0, nope).contiguous(), w, kb, h, kr, dot_rows).to(at::kFloat)
            .contiguous();
    std::vector<float> part(d);
    for (int64_t r = 0; r < t; ++r) {
      const float* qp = qh.data_ptr<float>() + (r * nq + h) * hd + nope;  // q_pe
      std::copy(qp, qp + rp, part.begin());
      std::copy(absorbed.data_ptr<float>() + r * kr, absorbed.data_ptr<float>() + (r + 1) * kr, part.begin() + rp);
      head_vector(part.data(), nullptr, nullptr, rp0 + pos[r] * d, true, d, eps, q + (r * nq + h) * d);
    }
  });
}

template <class F>
void Step::heads_in_turn(int64_t t, int64_t dot_rows, F f) const {
  if (t <= dot_rows) {
    at::parallel_for(0, nq, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) f(h);
    });
  } else {
    for (int64_t h = 0; h < nq; ++h) f(h);
  }
}

inline Tensor Step::latent_values(const Tensor& att_in, const Weights& w, int64_t lat0, int64_t dot_rows) const {
  const Tensor att = att_in.to(at::kFloat).contiguous();
  const int64_t r = att.size(0), kr = lat[1], rp = lat[3], vd = lat[4], vb = lat0 + (lat[0] ? 2 : 1);
  std::vector<Tensor> parts(nq);
  heads_in_turn(r, dot_rows, [&](int64_t h) {
    parts[h] = block_product(att.view({r, nq, d}).select(1, h).narrow(1, rp, kr).contiguous(), w, vb, h, vd,
                             dot_rows).to(at::kFloat);
  });
  return at::cat(parts, 1);
}
