// One decode step (one token) of loader/lean_lm.py's LeanLM, in C++.
//
// The TorchScript step spends ~2 ms of a ~6 ms SmolLM2 token on ~1,300 small ATen calls (norms, casts,
// rotary, cache writes, residual adds). Here the products and attention stay ATen calls (the packed
// weight-only kernels, SDPA, _int_mm) and everything between them is a plain loop over a few hundred
// floats: per layer 6 products + 1 attention call instead of ~45 ops. Activations stay float32 between
// products: the file's own groups go through dot_kernels.h (float32 in and out), torch's packed kernels get bf16
// copies. The math is LeanLM.forward's for t == 1, checked against it by tests/test_packed_gguf.py.
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "dot_kernels.h"

using at::Tensor;

namespace {

// The weight products of a step: lean_lm.py Product kinds 0 int4, 1 int8, 2 dense (torch's kernels, bf16 in and
// out), 4 and 5 the file's 4- and 8-bit groups (dot_kernels.h, float32 in and out); n: each one's output rows.
struct Weights {
  const std::vector<int64_t>& kinds;
  const std::vector<Tensor>& a;
  const std::vector<Tensor>& b;
  const std::vector<Tensor>& c;
  const std::vector<int64_t>& n;
};

// float32 [1, N] = x @ W^T for x float32 [1, K]
Tensor product(const Tensor& x, int64_t kind, const Tensor& a, const Tensor& b, const Tensor& c, int64_t n) {
  if (kind == 4 || kind == 5) return dot::dot_mm(x, a, b, c, kind == 4 ? 4 : 8, n);
  const Tensor xb = x.to(at::kBFloat16);
  if (kind == 0) return at::_weight_int4pack_mm_for_cpu(xb, a, 32, b).to(at::kFloat);
  if (kind == 1) return at::_weight_int8pack_mm(xb, a, b).to(at::kFloat);
  return at::linear(xb, a).to(at::kFloat);
}

Tensor product(const Tensor& x, const Weights& w, int64_t i) {
  return product(x, w.kinds[i], w.a[i], w.b[i], w.c[i], w.n[i]);
}

// several products over the same input, side by side (float32 [1, sum N])
Tensor products(const Tensor& x, const Weights& w, int64_t first, int64_t count) {
  if (count == 1) return product(x, w, first);
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < count; ++i) parts.push_back(product(x, w, first + i));
  return at::cat(parts, 1);
}

float rms_scale(const float* x, int64_t n, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  return float(1.0 / std::sqrt(ss / n + eps));
}

// float32 [1, n] = rmsnorm(x) * w
Tensor norm(const Tensor& x, const Tensor& w, double eps) {
  int64_t n = x.size(-1);
  auto out = at::empty({1, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float s = rms_scale(xp, n, eps);
  for (int64_t i = 0; i < n; ++i) op[i] = xp[i] * s * wp[i];
  return out;
}

// x += y, through an optional post-norm (Gemma 3)
void residual_add(float* x, const Tensor& y, const Tensor& post, double eps) {
  int64_t n = y.size(-1);
  const float* yp = y.data_ptr<float>();
  if (post.numel() == 0) {
    for (int64_t i = 0; i < n; ++i) x[i] += yp[i];
    return;
  }
  float s = rms_scale(yp, n, eps);
  const float* wp = post.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) x[i] += yp[i] * s * wp[i];
}

// one head's d values: (+ bias) (-> rmsnorm * w) (-> rotary over interleaved pairs with cos/sin at pos) -> dst
void head_vector(const float* src, const float* bias, const float* w, const float* cs, bool rotate,
                 int64_t d, double eps, float* dst) {
  for (int64_t i = 0; i < d; ++i) dst[i] = src[i] + (bias ? bias[i] : 0.f);
  if (w) {
    float s = rms_scale(dst, d, eps);
    for (int64_t i = 0; i < d; ++i) dst[i] = dst[i] * s * w[i];
  }
  if (rotate) {
    for (int64_t j = 0; j < d / 2; ++j) {
      float c = cs[2 * j], sn = cs[2 * j + 1];
      float a = dst[2 * j], b = dst[2 * j + 1];
      dst[2 * j] = a * c - b * sn;
      dst[2 * j + 1] = a * sn + b * c;
    }
  }
}

}  // namespace

// x: float32 [1, hidden] (the token's embedding, already scaled); returns float32 logits [1, vocab].
// Per layer li, in order: its QKV products (n_qkv[li] of them), O, gate/up parts (n_gu[li]), down.
// norms[li]: {attn_norm, ffn_norm, qkv_bias, q_norm, k_norm, post_attn_norm, post_ffn_norm} (empty = absent).
Tensor decode_step(Tensor x, int64_t pos, const std::vector<int64_t>& kinds, const std::vector<Tensor>& as,
                   const std::vector<Tensor>& bs, const std::vector<Tensor>& mins, const std::vector<int64_t>& ns,
                   const std::vector<int64_t>& n_qkv, const std::vector<int64_t>& n_gu,
                   const std::vector<std::vector<Tensor>>& norms, const std::vector<int64_t>& sliding, Tensor k_cache,
                   Tensor v_cache, Tensor rope_global, Tensor rope_local, Tensor final_norm, int64_t head_kind,
                   Tensor head_a, Tensor head_b, Tensor head_c, int64_t head_n, int64_t nq, int64_t nkv, int64_t d,
                   int64_t ffn, double eps, double scaling, int64_t window, bool gelu, int64_t top_exact) {
  at::NoGradGuard no_grad;
  const Weights w{kinds, as, bs, mins, ns};
  x = x.contiguous().clone();
  float* xp = x.data_ptr<float>();
  const int64_t layers = static_cast<int64_t>(norms.size());
  const int64_t cap = k_cache.size(3);
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  std::vector<float> q(nq * d);
  int64_t idx = 0;
  for (int64_t li = 0; li < layers; ++li) {
    const auto& nm = norms[li];
    bool slide = sliding[li] != 0;
    const Tensor& rope = (slide && rope_local.numel() > 0) ? rope_local : rope_global;
    const float* cs = rope.data_ptr<float>() + pos * d;  // [cap, d/2, 2]
    auto h = norm(x, nm[0], eps);
    auto qkv = products(h, w, idx, n_qkv[li]);
    idx += n_qkv[li];
    const float* src = qkv.data_ptr<float>();
    const float* bias = nm[2].numel() ? nm[2].data_ptr<float>() : nullptr;
    const float* qn = nm[3].numel() ? nm[3].data_ptr<float>() : nullptr;
    const float* kn = nm[4].numel() ? nm[4].data_ptr<float>() : nullptr;
    for (int64_t hq = 0; hq < nq; ++hq)
      head_vector(src + hq * d, bias ? bias + hq * d : nullptr, qn, cs, true, d, eps, q.data() + hq * d);
    for (int64_t hk = 0; hk < nkv; ++hk) {
      int64_t o = nq + hk;
      float* kdst = kc + ((li * nkv + hk) * cap + pos) * d;
      head_vector(src + o * d, bias ? bias + o * d : nullptr, kn, cs, true, d, eps, kdst);
      float* vdst = vc + ((li * nkv + hk) * cap + pos) * d;
      head_vector(src + (o + nkv) * d, bias ? bias + (o + nkv) * d : nullptr, nullptr, cs, false, d, eps, vdst);
    }
    int64_t start = slide ? std::max<int64_t>(0, pos - window + 1) : 0;
    auto k = k_cache[li].narrow(2, start, pos + 1 - start);
    auto v = v_cache[li].narrow(2, start, pos + 1 - start);
    auto qt = torch::from_blob(q.data(), {1, nq, 1, d}, x.options());
    auto a = at::scaled_dot_product_attention(qt, k, v, {}, 0.0, false, scaling, nq != nkv);
    auto o = product(a.reshape({1, nq * d}).contiguous(), w, idx);
    idx += 1;
    residual_add(xp, o, nm[5], eps);
    h = norm(x, nm[1], eps);
    auto gu = products(h, w, idx, n_gu[li]);
    idx += n_gu[li];
    // ATen's vectorised gelu/silu (a scalar std::tanh / std::exp loop costs ~10 ns a value: ~0.4 ms a Gemma token)
    const auto g = gu.narrow(1, 0, ffn);
    const auto act = (gelu ? at::gelu(g, "tanh") : at::silu(g)).mul_(gu.narrow(1, ffn, ffn));
    auto y = product(act, w, idx);
    idx += 1;
    residual_add(xp, y, nm[6], eps);
  }
  auto hn = x.clone();
  float s = rms_scale(xp, x.size(-1), eps);
  const float* fw = final_norm.data_ptr<float>();
  float* hp = hn.data_ptr<float>();
  for (int64_t i = 0; i < x.size(-1); ++i) hp[i] = xp[i] * s * fw[i];
  if (head_kind != 3) return product(hn, head_kind, head_a, head_b, head_c, head_n);
  // lean_lm.py Product kind 3: _int_mm on one int8 digit, the top logits recomputed with the second
  auto sx = hn.abs().amax(-1, true).clamp_min(1e-30) / 127.0;
  auto u = hn / sx;
  auto hi = at::round(u);
  auto lo = at::round((u - hi) * 254.0);
  auto logits = at::_int_mm(hi.to(at::kChar), head_a.t()).to(at::kFloat);
  auto top = std::get<1>(at::topk(logits[0] * head_b.to(at::kFloat), top_exact));  // ranked with the row scales
  auto fix = at::mv(head_a.index_select(0, top).to(at::kFloat), lo[0]) / 254.0;
  logits[0].index_add_(0, top, fix);
  return logits * sx * head_b.to(at::kFloat);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_step", &decode_step, "LeanLM decode step");
  m.def("dot_mm", &dot::dot_mm, "x @ W^T over a weight's file groups (dot_kernels.h)");
  m.def("dot_dequant", &dot::dot_dequant, "a dot weight's rows as float32 or bf16");
  m.def("fast_dot", &dot::fast_dot, "whether the dot products are vectorised here");
}
