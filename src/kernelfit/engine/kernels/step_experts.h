#pragma once

// Step's mixture-of-experts members (declared and described in step.cpp's Step): the router and each chosen
// expert's products over its rows, the shared expert, and a block of a product's rows (an expert's; an MLA head's).
// Included by step.cpp after Step, so that file stays the layer loop.

inline Tensor Step::block_product(const Tensor& x, const Weights& w, int64_t i, int64_t e, int64_t rows,
                                  int64_t dot_rows) const {
  if (w.kinds[i] == 6) return bf16rows::rows_mm(x, w.a[i].narrow(0, e * rows, rows));
  TORCH_CHECK(dot_kind(w.kinds[i]) && rows % dot::TILE == 0, "a block of a product's rows: whole tiles of a dot "
              "weight, or float rows");
  const int64_t tiles = rows / dot::TILE;
  const Tensor a = w.a[i].narrow(0, e * tiles, tiles), b = w.b[i].narrow(0, e * tiles, tiles);
  const Tensor c = w.c[i].dim() ? w.c[i].narrow(0, e * tiles, tiles) : w.c[i];
  const int64_t bits = dot_bits(w.kinds[i]);
  if (x.size(0) <= dot_rows) return dot::dot_mm(x, a, b, c, bits, rows);
  return panel::gemm_parts(x.to(at::kBFloat16), {a}, {b}, {c}, {bits}, {rows});
}

inline Tensor Step::moe(const Tensor& h_in, const Weights& w, int64_t li, int64_t idx, MoeRows how) const {
  const Tensor h = h_in.contiguous();
  const int64_t t = h.size(0), experts = routers[li].size(0), hidden = h.size(1);
  // routing a row at a time in plain loops (a GEMM's blocking would depend on how many rows share the call, and
  // a row's answer must not): logits, softmax, the top_k (ties to the lower expert), renormalised where asked
  std::vector<int64_t> chosen(t * top_k);
  std::vector<float> top(t * top_k), p(experts), sel(experts);
  const float* rw = routers[li].data_ptr<float>();
  const float* logit_bias = slot(li, ROUTER_BIAS);  // gpt-oss: added to the logits
  const float* bias = slot(li, SELECTION_BIAS);  // LFM2-MoE: added to the scores, for choosing only
  for (int64_t r = 0; r < t; ++r) {
    const float* x = h.data_ptr<float>() + r * hidden;
    for (int64_t e = 0; e < experts; ++e)
      p[e] = decode::dot16(x, rw + e * hidden, hidden) + (logit_bias ? logit_bias[e] : 0.f);
    float sum = 1;
    if (sigmoid_router) {  // LFM2-MoE: each expert's sigmoid, chosen by it plus the layer's selection bias
      for (int64_t e = 0; e < experts; ++e) p[e] = 1.f / (1.f + std::exp(-p[e]));
    } else {
      const float m = *std::max_element(p.begin(), p.end());
      sum = 0;
      for (int64_t e = 0; e < experts; ++e) sum += (p[e] = std::exp(p[e] - m));
    }
    for (int64_t e = 0; e < experts; ++e) sel[e] = p[e] + (bias ? bias[e] : 0.f);
    std::vector<int64_t> order(experts);
    for (int64_t e = 0; e < experts; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                      [&](int64_t a, int64_t b) { return sel[a] > sel[b] || (sel[a] == sel[b] && a < b); });
    float kept = 0;
    for (int64_t j = 0; j < top_k; ++j) kept += p[order[j]] / sum;
    for (int64_t j = 0; j < top_k; ++j) {
      chosen[r * top_k + j] = order[j];
      top[r * top_k + j] = float(routed_scale) * (norm_topk ? (p[order[j]] / sum) / kept : p[order[j]] / sum);
    }
  }
  Tensor out = at::zeros({t, hidden}, h.options());
  const int64_t dot_rows = expert_dot_rows(how, t);
  for (int64_t e = 0; e < experts; ++e) {
    std::vector<int64_t> rows;
    std::vector<float> weights;
    for (int64_t r = 0; r < t; ++r)
      for (int64_t j = 0; j < top_k; ++j)
        if (chosen[r * top_k + j] == e) rows.push_back(r), weights.push_back(top[r * top_k + j]);
    if (rows.empty()) continue;
    const Tensor ids = at::tensor(rows, at::kLong), xe = h.index_select(0, ids).contiguous();
    const Tensor y = expert_ffn_rows(xe, w, li, idx, e, dot_rows);
    out.index_add_(0, ids, y * at::tensor(weights, h.options()).unsqueeze(1));
  }
  if (has_shared(li)) {  // the shared expert's SwiGLU on every row, scaled by sigmoid(h . gate) where it has a
    // gate (Qwen2-MoE, Qwen3.5-MoE), added as it is where not (GLM-4.5)
    const int64_t s = idx + 3;
    const Tensor y = shared_rows(rows::gated(shared_rows(h, w, s, 2, how), w.n[s], false), w, s + 2, 1, how);
    const float* g = slot(li, SHARED_GATE);
    if (!g) {
      out.add_(y);
      return out;
    }
    std::vector<float> gate(t);
    for (int64_t r = 0; r < t; ++r)
      gate[r] = 1.f / (1.f + std::exp(-decode::dot16(h.data_ptr<float>() + r * hidden, g, hidden)));
    out.add_(y * at::tensor(gate, h.options()).unsqueeze(1));
  }
  return out;
}

inline Tensor Step::expert_ffn_rows(const Tensor& xe, const Weights& w, int64_t li, int64_t idx, int64_t e,
                                    int64_t dot_rows) const {
  Tensor g = block_product(xe, w, idx, e, expert_ffn, dot_rows);
  Tensor u = block_product(xe, w, idx + 1, e, expert_ffn, dot_rows);
  const bool bias = slot(li, EXPERT_BIASES) != nullptr;
  if (bias) {
    g = g.to(at::kFloat) + norms[li][EXPERT_BIASES][e];
    u = u.to(at::kFloat) + norms[li][EXPERT_BIASES + 1][e];
  }
  const Tensor act = rows::gated_to(at::cat({g, u}, 1), expert_ffn, false, false, float(act_alpha), float(act_limit));
  const Tensor y = block_product(act, w, idx + 2, e, hidden(), dot_rows);
  return bias ? y.to(at::kFloat) + norms[li][EXPERT_BIASES + 2][e] : y;
}

inline Tensor Step::shared_rows(const Tensor& x, const Weights& w, int64_t first, int64_t count, MoeRows how) const {
  const bool dots = how == MoeRows::STEP || (how == MoeRows::BY_COUNT && x.size(0) <= DOT_MAX_ROWS);
  if (dots || !panel::available()) return products(x, w, first, count);
  return rows_products(x.to(at::kBFloat16), w, first, count, false, how == MoeRows::SERVER_PROMPT).to(at::kFloat);
}
