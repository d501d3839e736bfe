#pragma once

// Step's mixture-of-experts members (declared and described in step.cpp's Step): the router and each chosen
// expert's products over its rows, the shared expert, and a block of a product's rows (an expert's; an MLA head's).
// Included by step.cpp after Step, so that file stays the layer loop.

inline Step::DotBlock Step::dot_block(const Weights& w, int64_t i, int64_t e, int64_t rows) const {
  TORCH_CHECK(!w.permuted(i), "a block of a product's rows: its input in the stored column order (no act-order)");
  TORCH_CHECK(dot_kind(w.kinds[i]) && rows % dot::TILE == 0, "a block of a product's rows: whole tiles of a dot "
              "weight, or float rows");
  const int64_t tiles = rows / dot::TILE;
  return {w.a[i].narrow(0, e * tiles, tiles), w.b[i].narrow(0, e * tiles, tiles),
          w.c[i].dim() ? w.c[i].narrow(0, e * tiles, tiles) : w.c[i], dot_bits(w.kinds[i])};
}

inline Tensor Step::block_product(const Tensor& x, const Weights& w, int64_t i, int64_t e, int64_t rows,
                                  int64_t dot_rows) const {
  if (w.kinds[i] == 6) return bf16rows::rows_mm(x, w.a[i].narrow(0, e * rows, rows));
  const DotBlock d = dot_block(w, i, e, rows);
  if (x.size(0) <= dot_rows) return dot::dot_mm(x, d.a, d.b, d.c, d.bits, rows);
  return panel::gemm_parts(x.to(at::kBFloat16), {d.a}, {d.b}, {d.c}, {d.bits}, {rows});
}

// o += w * y over n floats: one compiled body for both of moe()'s orders of work, so that they write the same bits
__attribute__((noinline)) inline void add_weighted(float* o, const float* y, float w, int64_t n) {
  for (int64_t c = 0; c < n; ++c) o[c] += w * y[c];
}

inline void Step::route(const Tensor& h, int64_t li, std::vector<int64_t>& chosen, std::vector<float>& top) const {
  const int64_t t = h.size(0), experts = routers[li].size(0), hidden = h.size(1);
  // routing a row at a time in plain loops (a GEMM's blocking would depend on how many rows share the call, and
  // a row's answer must not): each logit one dot16, the work split by blocks of ROUTER_BLOCK experts (their rows
  // stay in L2 while every row passes) so that a decode step's row and a prompt's rows all run on every thread
  std::vector<float> logits(t * experts);
  const float* rw = routers[li].data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  const float* logit_bias = slot(li, ROUTER_BIAS);  // gpt-oss: added to the logits
  const int64_t blocks = (experts + ROUTER_BLOCK - 1) / ROUTER_BLOCK;
  at::parallel_for(0, blocks * t, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i % t, e0 = (i / t) * ROUTER_BLOCK, e1 = std::min(experts, e0 + ROUTER_BLOCK);
      for (int64_t e = e0; e < e1; ++e)
        logits[r * experts + e] =
            decode::dot16(hp + r * hidden, rw + e * hidden, hidden) + (logit_bias ? logit_bias[e] : 0.f);
    }
  });
  const float* bias = slot(li, SELECTION_BIAS);  // LFM2-MoE: added to the scores, for choosing only
  at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> sel(experts);
    std::vector<int64_t> order(experts);
    for (int64_t r = r0; r < r1; ++r) {
      float* p = logits.data() + r * experts;
      float sum = 1;
      if (sigmoid_router) {  // LFM2-MoE: each expert's sigmoid, chosen by it plus the layer's selection bias
        for (int64_t e = 0; e < experts; ++e) p[e] = 1.f / (1.f + std::exp(-p[e]));
      } else {
        const float m = *std::max_element(p, p + experts);
        sum = 0;
        for (int64_t e = 0; e < experts; ++e) sum += (p[e] = std::exp(p[e] - m));
      }
      for (int64_t e = 0; e < experts; ++e) sel[e] = p[e] + (bias ? bias[e] : 0.f), order[e] = e;
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                        [&](int64_t a, int64_t b) { return sel[a] > sel[b] || (sel[a] == sel[b] && a < b); });
      float kept = 0;
      for (int64_t j = 0; j < top_k; ++j) kept += p[order[j]] / sum;
      for (int64_t j = 0; j < top_k; ++j) {
        chosen[r * top_k + j] = order[j];
        top[r * top_k + j] = float(routed_scale) * (norm_topk ? (p[order[j]] / sum) / kept : p[order[j]] / sum);
      }
    }
  });
}

inline Tensor Step::moe(const Tensor& h_in, const Weights& w, int64_t li, int64_t idx, MoeRows how) const {
  const Tensor h = h_in.contiguous();
  const int64_t t = h.size(0), experts = routers[li].size(0), hidden = h.size(1);
  std::vector<int64_t> chosen(t * top_k);
  std::vector<float> top(t * top_k);
  route(h, li, chosen, top);
  // each expert's rows in ascending order and their weights, expert after expert (a counting sort of the choices)
  std::vector<int64_t> first(experts + 1, 0), at_row(t * top_k);
  std::vector<float> weight(t * top_k);
  for (const int64_t e : chosen) ++first[e + 1];
  for (int64_t e = 0; e < experts; ++e) first[e + 1] += first[e];
  std::vector<int64_t> fill(first.begin(), first.end() - 1);
  for (int64_t r = 0; r < t; ++r)
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t k = fill[chosen[r * top_k + j]]++;
      at_row[k] = r, weight[k] = top[r * top_k + j];
    }
  Tensor out = at::zeros({t, hidden}, h.options());
  float* op = out.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  const int64_t dot_rows = expert_dot_rows(how, t);
  auto rows_of = [&](int64_t e) {  // expert e's rows through its feed-forward, float32 [n, hidden]
    const int64_t n = first[e + 1] - first[e];
    const Tensor xe = at::empty({n, hidden}, h.options());
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(xe.data_ptr<float>() + i * hidden, hp + at_row[first[e] + i] * hidden, hidden * sizeof(float));
    return expert_ffn_rows(xe, w, li, idx, e, dot_rows).to(at::kFloat).contiguous();
  };
  if (t <= DOT_MAX_ROWS || at::get_num_threads() < 2) {  // a step's few rows: each product across the threads
    for (int64_t e = 0; e < experts; ++e) {
      if (first[e + 1] == first[e]) continue;
      const Tensor y = rows_of(e);
      for (int64_t k = first[e]; k < first[e + 1]; ++k)  // a row's experts added in ascending order
        add_weighted(op + at_row[k] * hidden, y.data_ptr<float>() + (k - first[e]) * hidden, weight[k], hidden);
    }
  } else {
    // A prompt's experts side by side: each thread takes the next expert (the most rows first) and runs its products
    // alone. Why: an expert's ~8 rows made each product a few panels a thread and its serial glue (gather, quantize,
    // activation, add) idle time on the other — Qwen3.6-35B-A3B shape, 256-token prompt, 2 threads, two interleaved
    // runs: 594 -> 429 ms, 685 -> 550 ms. Its rows wait in a buffer (rows x top_k x hidden floats, kept by the
    // thread: 32 MiB at a 512-row chunk of that shape) and are added as the loop above adds them, each row's experts
    // in ascending order: the same bits.
    thread_local std::vector<float> ys;
    ys.resize(t * top_k * hidden);
    std::vector<int64_t> order;
    for (int64_t e = 0; e < experts; ++e)
      if (first[e + 1] > first[e]) order.push_back(e);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return first[a + 1] - first[a] > first[b + 1] - first[b]; });
    std::atomic<size_t> next{0};
    float* yp = ys.data();
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
      for (size_t i = next++; i < order.size(); i = next++) {
        const Tensor y = rows_of(order[i]);
        std::memcpy(yp + first[order[i]] * hidden, y.data_ptr<float>(), y.numel() * sizeof(float));
      }
    });
    std::vector<int64_t> slots(t * top_k), filled(t, 0);
    for (int64_t k = 0; k < t * top_k; ++k) slots[at_row[k] * top_k + filled[at_row[k]]++] = k;  // experts ascend
    at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < top_k; ++j) {
          const int64_t k = slots[r * top_k + j];
          add_weighted(op + r * hidden, yp + k * hidden, weight[k], hidden);
        }
    });
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

inline Tensor Step::expert_gate_up(const Tensor& xe, const Weights& w, int64_t idx, int64_t e, int64_t dot_rows) const {
  const int64_t rows = expert_ffn;
  if (!dot_kind(w.kinds[idx]) || !dot_kind(w.kinds[idx + 1]))
    return at::cat({block_product(xe, w, idx, e, rows, dot_rows), block_product(xe, w, idx + 1, e, rows, dot_rows)}, 1);
  std::vector<Tensor> a, b, c;
  std::vector<int64_t> bits, n{rows, rows};
  for (const int64_t i : {idx, idx + 1}) {
    const DotBlock d = dot_block(w, i, e, rows);
    a.push_back(d.a);
    b.push_back(d.b);
    c.push_back(d.c);
    bits.push_back(d.bits);
  }
  if (xe.size(0) <= dot_rows) return dot::dot_mm_parts(xe, a, b, c, bits, n);
  return panel::gemm_parts(xe.to(at::kBFloat16), a, b, c, bits, n);
}

inline Tensor Step::expert_ffn_rows(const Tensor& xe, const Weights& w, int64_t li, int64_t idx, int64_t e,
                                    int64_t dot_rows) const {
  Tensor gu = expert_gate_up(xe, w, idx, e, dot_rows);
  if (slot(li, EXPERT_BIASES)) {  // gpt-oss: the experts' gate, up and down biases
    gu = gu.to(at::kFloat).contiguous();
    gu.narrow(1, 0, expert_ffn).add_(norms[li][EXPERT_BIASES][e]);
    gu.narrow(1, expert_ffn, expert_ffn).add_(norms[li][EXPERT_BIASES + 1][e]);
  }
  // bf16 out where the down product reads bf16 (the panels): the rounding .to(bf16) would do, without its pass
  const bool bf16 = xe.size(0) > dot_rows && dot_kind(w.kinds[idx + 2]);
  const Tensor act = rows::gated_to(gu, expert_ffn, false, bf16, float(act_alpha), float(act_limit));
  const Tensor y = block_product(act, w, idx + 2, e, hidden(), dot_rows);
  return slot(li, EXPERT_BIASES) ? y.to(at::kFloat) + norms[li][EXPERT_BIASES + 2][e] : y;
}

inline Tensor Step::shared_rows(const Tensor& x, const Weights& w, int64_t first, int64_t count, MoeRows how) const {
  const bool dots = how == MoeRows::STEP || (how == MoeRows::BY_COUNT && x.size(0) <= DOT_MAX_ROWS);
  if (dots || !panel::available()) return products(x, w, first, count);
  return rows_products(x.to(at::kBFloat16), w, first, count, false, how == MoeRows::SERVER_PROMPT).to(at::kFloat);
}
