// One decode step (one token) of engine/reference.py's LeanLM, in C++ — and a prompt's forward (Step::prefill).
//
// The TorchScript step spends ~2 ms of a ~6 ms SmolLM2 token on ~1,300 small ATen calls (norms, casts,
// rotary, cache writes, residual adds). Here the products are kernelfit's dot products (or torch's packed
// kernels, _int_mm), the one-query attention is a plain loop over the cache (heads split between threads), and
// everything between them is a plain loop over a few hundred floats. Activations stay float32 between
// products: the file's own groups go through dot_kernels.h (float32 in and out), torch's packed kernels get bf16
// copies. The math is LeanLM.forward's for t == 1, checked against it by tests/test_packed_gguf.py; prefill's is
// LeanLM.forward's for a prompt (tests/test_prefill_kernels.py), its products per phase kernel (rows_products).
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "dot_kernels.h"
#include "gemm_kernels.h"
#include "unpack_kernels.h"
#include "panel_gemm.h"
#include "panel_attention.h"
#include "rows_kernels.h"
#include "decode_attention.h"
#include "bf16_rows.h"
#include "repack_kernels.h"
#include "short_conv.h"
#include "delta_net.h"
#include "mamba2.h"

using at::Tensor;

namespace {

using decode::attend;

// The weight products of a step: reference.py Product kinds 0 int4, 1 int8, 2 dense (torch's kernels, bf16 in and
// out), 4, 5 and 7 the file's 4-, 8- and 6-bit groups, 8 and 9 its 4-bit codes of IQ4_NL's and MXFP4's grids
// (dot_kernels.h, float32 in and out), 6 bf16 rows as stored (bf16_rows.h, float32 in and out); n: each one's output
// rows; perm: each one's input column order where its codes hold the columns in another order (an act-order GPTQ /
// compressed-tensors checkpoint's groups side by side: engine/safetensors/packed.py), empty where as stored.
struct Weights {
  const std::vector<int64_t>& kinds;
  const std::vector<Tensor>& a;
  const std::vector<Tensor>& b;
  const std::vector<Tensor>& c;
  const std::vector<int64_t>& n;
  const std::vector<Tensor>& perm;

  bool permuted(int64_t i) const { return perm[i].numel() > 0; }
  // x with its columns in product i's order (x itself where it has none)
  Tensor input(const Tensor& x, int64_t i) const { return permuted(i) ? x.index_select(1, perm[i]) : x; }
};

bool dot_kind(int64_t kind) { return kind == 4 || kind == 5 || kind >= 7; }
// a dot kind's code format (dot_kernels.h Layout::format): 4, 8 or 6 bits, or 4-bit codes of IQ4_NL's or MXFP4's grid
int64_t dot_bits(int64_t kind) {
  return kind == 4 ? 4 : kind == 7 ? 6 : kind == 8 ? dot::IQ4_CODES : kind == 9 ? dot::MXFP4_CODES : 8;
}

// float32 [1, N] = x @ W^T for x float32 [1, K]
Tensor product(const Tensor& x, int64_t kind, const Tensor& a, const Tensor& b, const Tensor& c, int64_t n) {
  if (dot_kind(kind)) return dot::dot_mm(x, a, b, c, dot_bits(kind), n);
  if (kind == 6) return bf16rows::rows_mm(x, a);
  const Tensor xb = x.to(at::kBFloat16);
  if (kind == 0) return at::_weight_int4pack_mm_for_cpu(xb, a, 32, b).to(at::kFloat);
  if (kind == 1) return at::_weight_int8pack_mm(xb, a, b).to(at::kFloat);
  return at::linear(xb, a).to(at::kFloat);
}

Tensor product(const Tensor& x, const Weights& w, int64_t i) {
  return product(w.input(x, i), w.kinds[i], w.a[i], w.b[i], w.c[i], w.n[i]);
}

// several products over the same input, side by side (float32 [1, sum N]); bf16 rows in one parallel region
Tensor products(const Tensor& x, const Weights& w, int64_t first, int64_t count) {
  if (count == 1) return product(x, w, first);
  bool rows = x.size(0) <= bf16rows::DECODE_ROWS;
  for (int64_t i = first; i < first + count; ++i) rows = rows && w.kinds[i] == 6;
  if (rows) return bf16rows::rows_mm_parts(x, std::vector<Tensor>(w.a.begin() + first, w.a.begin() + first + count));
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < count; ++i) parts.push_back(product(x, w, first + i));
  return at::cat(parts, 1);
}

// one head's d values: (+ bias) (-> rmsnorm * w) (-> rotary over interleaved pairs with cos/sin at pos) -> dst
void head_vector(const float* src, const float* bias, const float* w, const float* cs, bool rotate,
                 int64_t d, double eps, float* dst) {
  for (int64_t i = 0; i < d; ++i) dst[i] = src[i] + (bias ? bias[i] : 0.f);
  if (w) {
    float s = rows::rms_scale(dst, d, eps);
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

// a layer's flags (native.py NativeArgs.sliding). LAYER_CONV: a short-convolution layer (short_conv.h), LAYER_DELTA a
// Gated DeltaNet layer (delta_net.h): neither keeps keys and values. LAYER_GATED: attention whose Q product also
// gives a gate a query head (Qwen3.5: its rows [q, gate] after K and V... see attention_row), output * sigmoid(gate)
// LAYER_SHARED: an MoE layer with a shared expert (its sigmoid gate in norms slot SHARED_GATE where it has one).
// LAYER_LATENT: DeepSeek's multi-head latent attention (latent_heads; its q_a and kv_a norms in norms slots 3 and 4).
// LAYER_MAMBA: a Mamba-2 layer (mamba2.h): its taps in slot 8, A, dt bias and norm [groups, inner / groups] in 9-11, D
// and the conv's bias in MAMBA_D, MAMBA_CONV_BIAS; in_proj takes the Q/K/V slot and out_proj O's
constexpr int64_t LAYER_SLIDING = 1, LAYER_NO_ROTARY = 2, LAYER_CONV = 4, LAYER_DELTA = 8, LAYER_GATED = 16,
                  LAYER_SHARED = 32, LAYER_LATENT = 64, LAYER_MAMBA = 128;
constexpr int64_t DOT_MAX_ROWS = 12;  // lean_lm.py's: calls of up to 12 rows take the exact dot products
// An expert's rows in a local prompt: up to this many the dot products, past it the panels — measured on a 512 x 2048
// Q4_K expert product with the panels on AMX tiles (two-tile unpacking): 4 rows 121 us panels / 107 dots, 8 rows
// 132 / 221, 16 rows 99 / 318. Where the panels run on AVX512-BF16 alone, DOT_MAX_ROWS; in a call of up to
// DOT_MAX_ROWS rows, the dot products (what decode steps give).
constexpr int64_t EXPERT_DOT_ROWS_AMX = 5;
// The router's experts a thread takes at a time: 32 rows of a 2048-wide router (256 KiB) stay in L2 while the rows
// pass (a Qwen3.6-35B-A3B router is 2 MiB: read whole for each row, it was 5% of a 256-token prompt)
constexpr int64_t ROUTER_BLOCK = 32;
constexpr int64_t PROMPT_BLOCK = 128;  // lean_lm.py's: a prompt's attention in blocks of 128 queries
// gpt-oss's tensors in a layer's norms (native.py native_args): the attention output's bias [hidden], the sinks [nq],
// the router's bias [experts], and the experts' gate, up and down biases [experts, rows] (absent: empty)
constexpr size_t O_BIAS = 13, SINKS = 14, ROUTER_BIAS = 15, EXPERT_BIASES = 16;
// and the MoE layers' others: a shared expert's sigmoid gate (Qwen2-MoE), the experts' selection bias (LFM2-MoE)
constexpr size_t SHARED_GATE = 7, SELECTION_BIAS = 12;
constexpr size_t MAMBA_D = 19, MAMBA_CONV_BIAS = 20;  // a Mamba-2 layer's D [heads] and conv bias [conv channels]

// the attention sinks of the kernels' bindings: float32 [heads] or undefined/empty (none)
const float* sink_ptr(const Tensor& sinks, int64_t heads) {
  if (!sinks.defined() || !sinks.numel()) return nullptr;
  TORCH_CHECK(sinks.scalar_type() == at::kFloat && sinks.is_contiguous() && sinks.numel() == heads,
              "sinks: float32, one a query head");
  return sinks.data_ptr<float>();
}

}  // namespace

// One decode step of LeanLM with its per-model arguments bound once: passing the ~600 tensors of SmolLM2's lists
// on every call cost ~0.3 ms a token in pybind11's conversions. The KV cache and rotary tables are passed per call
// (reset_cache replaces them).
// run: x float32 [1, hidden] (the token's embedding, already scaled) -> float32 logits [1, vocab].
// Per layer li, in order: its QKV products (n_qkv[li] of them), O, gate/up parts (n_gu[li]), down.
// norms[li]: {attn_norm, ffn_norm, qkv_bias, q_norm, k_norm, post_attn_norm, post_ffn_norm, shared_expert_gate,
// conv taps, ssm_a, ssm_dt bias, ssm_norm, expert selection bias, o bias, sinks, router bias, expert gate, up and
// down biases} (empty = absent). A short-convolution layer (LAYER_CONV) has one "QKV"
// product, its in_proj, and O is its out_proj; a Gated DeltaNet layer (LAYER_DELTA) its qkv, gate (z), beta and alpha
// products, and O its ssm_out. The KV cache holds the attention layers only (slot kl: the layer's rank among them), and
// `state` a sequence's recurrent layers' states, float32, one after another (state_offsets), empty without them.
struct Step {
  std::vector<int64_t> kinds;
  std::vector<Tensor> as, bs, mins;
  std::vector<int64_t> ns, n_qkv, n_gu;
  std::vector<std::vector<Tensor>> norms;
  std::vector<int64_t> sliding;  // per layer: LAYER_SLIDING, LAYER_NO_ROTARY
  Tensor final_norm;
  int64_t head_kind;
  Tensor head_a, head_b, head_c;
  int64_t head_n, nq, nkv, d, ffn;
  double eps, scaling;
  int64_t window;
  bool gelu;
  int64_t top_exact;
  double attn_cap = 0, final_cap = 0;  // Gemma 2's soft-caps: cap * tanh(x / cap) of scores, of logits (0: none)
  double residual_scale = 1, logit_scale = 1;  // Granite: x += scale * block output; logits / logit_scale
  // Mixture of experts (qwen3moe): routers[li] float32 [experts, hidden] for an MoE layer (empty: a dense FFN); its
  // gate, up and down products hold every expert's rows, expert_ffn (gate, up) or hidden (down) rows an expert
  std::vector<Tensor> routers;
  int64_t top_k = 0, expert_ffn = 0;
  bool norm_topk = false;
  int64_t lin_nk = 0, lin_dk = 0;  // Gated DeltaNet: key heads and their size (value heads: ssm_a, size: ssm_norm)
  bool sigmoid_router = false;  // experts weighed by sigmoid, not softmax (LFM2-MoE; norms slot SELECTION_BIAS)
  double act_alpha = 1, act_limit = 0;  // the experts' activation: gpt-oss's clamped SwiGLU where act_limit > 0
  // Mistral 3's query temperature: a query at position p times 1 + temp_beta ln(1 + floor(p / temp_length))
  // (engine/recipe.py Recipe.query_temperature); temp_beta 0: none
  double temp_beta = 0;
  int64_t temp_length = 0;
  double routed_scale = 1;  // the chosen experts' weights times this (GLM-4.5's routed_scaling_factor)
  // MLA (engine/recipe.py Latent): q_rank (0: Q one product), kv_rank, nope, rope, value; empty without it. Its layers'
  // cache rows are one head of d = rope + kv_rank: [k_pe rotated, the normed latent], keys and values alike
  std::vector<int64_t> lat;
  std::vector<Tensor> perms;  // per product: its input's column order, or empty (Weights::perm)

  // layer li's tensor in norms slot i as floats, or null where the layer has none
  const float* slot(int64_t li, size_t i) const {
    return norms[li].size() > i && norms[li][i].numel() ? norms[li][i].data_ptr<float>() : nullptr;
  }

  // y + layer li's bias in slot i (a row vector) where it has one, float32; y itself otherwise
  Tensor biased(const Tensor& y, int64_t li, size_t i) const {
    return slot(li, i) ? y.to(at::kFloat) + norms[li][i] : y;
  }

  // How an MoE layer's products pick their kernel: by their rows (a local prompt: the exact dot products up to
  // DOT_MAX_ROWS, the panels past it); the server's prompts (a row's answer must not depend on how the prompt was
  // split into calls: experts on the dot products, the shared expert on the panels, each row alone on either); a
  // (batched) decode step (the dot products: every sequence's row gets what its own decode step gives)
  enum class MoeRows { BY_COUNT, SERVER_PROMPT, STEP };

  // The most rows an expert's products take the exact dot products for (the panels past it), in a call of t rows:
  // any, for the server's prompts and the steps (MoeRows: each row alone and exact, whatever the split); a local
  // prompt of up to DOT_MAX_ROWS rows gives what decode steps give; past it, EXPERT_DOT_ROWS_AMX on AMX tiles
  int64_t expert_dot_rows(MoeRows how, int64_t t) const {
    if (how != MoeRows::BY_COUNT || !panel::available()) return INT64_MAX;
    return amx::ready() && t > DOT_MAX_ROWS ? EXPERT_DOT_ROWS_AMX : DOT_MAX_ROWS;
  }

  // Block e of product i's rows (`rows` each, whole tiles) over x: an expert's rows, an MLA head's k_b or v_b rows.
  // The exact dot products up to dot_rows rows (expert_dot_rows), else the bf16 panels; float rows as stored
  Tensor block_product(const Tensor& x, const Weights& w, int64_t i, int64_t e, int64_t rows, int64_t dot_rows) const;
  // Block e of dot weight i's codes, scales and minimums (`rows` rows each, whole tiles): what block_product and
  // expert_gate_up multiply
  struct DotBlock {
    Tensor a, b, c;
    int64_t bits;
  };
  DotBlock dot_block(const Weights& w, int64_t i, int64_t e, int64_t rows) const;

  // The FFN of MoE layer li over h float32 [t, hidden] (its normed input); products idx (gate), idx + 1 (up),
  // idx + 2 (down): softmax over the router's logits, the top_k experts (their weights renormalised where the model
  // does), each expert's SwiGLU over the rows that chose it, weighted into the rows. Only chosen experts are read.
  Tensor moe(const Tensor& h_in, const Weights& w, int64_t li, int64_t idx, MoeRows how) const;
  // MoE layer li's choice for each row of h: its top_k experts (chosen [t, top_k]) and their weights (top)
  void route(const Tensor& h, int64_t li, std::vector<int64_t>& chosen, std::vector<float>& top) const;
  // expert e's gate and up products over its rows xe side by side, float32 [r, 2 expert_ffn] (one call where both
  // are dot weights: the rows quantized or rounded to bf16 once)
  Tensor expert_gate_up(const Tensor& xe, const Weights& w, int64_t idx, int64_t e, int64_t dot_rows) const;

  // expert e's feed-forward over its rows xe [r, hidden] (MoE layer li, products idx..idx + 2: gate, up, down), with
  // the expert's biases where the layer has them (gpt-oss) -> float32 [r, hidden]
  Tensor expert_ffn_rows(const Tensor& xe, const Weights& w, int64_t li, int64_t idx, int64_t e,
                         int64_t dot_rows) const;

  // whether MoE layer li has a shared expert (LAYER_SHARED), and the products the layer takes: the routed experts'
  // gate, up and down (n_gu[li] + 1), then the shared expert's gate, up and down
  bool has_shared(int64_t li) const { return (sliding[li] & LAYER_SHARED) != 0; }
  int64_t moe_products(int64_t li) const { return n_gu[li] + 1 + (has_shared(li) ? 3 : 0); }

  // products [first, first + count) over every row (a shared expert's): the exact dot products up to DOT_MAX_ROWS
  // rows (each row alone, as the decode step), else the prompt kernels; always those for the server's prompts (as
  // their dense products), always the dot products for a step (MoeRows); float32 out
  Tensor shared_rows(const Tensor& x, const Weights& w, int64_t first, int64_t count, MoeRows how) const;

  bool latent(int64_t li) const { return (sliding[li] & LAYER_LATENT) != 0; }
  // the products an MLA layer takes between its Q (or q_a) and kv_a products and O: q_b where Q is low-rank, k_b, v_b
  int64_t latent_products(int64_t li) const { return latent(li) ? (lat[0] ? 3 : 2) : 0; }

  // MLA layer li over its first products' rows qkv [t, Q (or q_a) | kv_a] (lat0: its q_b/k_b/v_b products' index):
  // each row's latent row [k_pe rotated, kv_a_norm(c_kv)] stored as its key and its value in cache_of(r) (slot kl) at
  // pos[r], and its query heads [q_pe rotated, k_b[h] q_nope[h]] into q (float32 [t, nq, d]) — llama.cpp's absorbed
  // MLA (src/models/deepseek2.cpp). prod(x, i): product i over rows x; dot_rows: as block_product's
  template <class CacheOf, class Prod>
  void latent_heads(const Tensor& qkv_in, const Weights& w, int64_t li, int64_t lat0, const Tensor& rope,
                    const std::vector<int64_t>& pos, int64_t kl, float* q, CacheOf cache_of, Prod prod,
                    int64_t dot_rows) const;

  // f(h) for every query head: side by side on the threads where each head's products are the dot products of a
  // few rows (a head's k_b or v_b block is ~0.1 MB: one call a head on all threads spent more in starting them than
  // in reading it), one after another where they are panel GEMMs (each on all threads)
  template <class F>
  void heads_in_turn(int64_t t, int64_t dot_rows, F f) const;

  // MLA: attention rows att [r, nq d] (each head's [rope part, latent part] over the cached rows) -> float32
  // [r, nq value]: v_b[h] times head h's latent part, the heads side by side (O's input)
  Tensor latent_values(const Tensor& att_in, const Weights& w, int64_t lat0, int64_t dot_rows) const;

  bool conv_layer(int64_t li) const { return (sliding[li] & LAYER_CONV) != 0; }
  bool delta_layer(int64_t li) const { return (sliding[li] & LAYER_DELTA) != 0; }
  bool mamba_layer(int64_t li) const { return (sliding[li] & LAYER_MAMBA) != 0; }
  bool attention_layer(int64_t li) const { return !conv_layer(li) && !delta_layer(li) && !mamba_layer(li); }

  // a Mamba-2 layer's sizes from its tensors: heads (A's), groups (the norm's rows), the conv's channels and taps
  mamba::Dims mamba_dims(int64_t li) const {
    const int64_t heads = norms[li][9].numel(), inner = norms[li][11].numel(), groups = norms[li][11].size(0);
    const int64_t channels = norms[li][8].size(0);
    return {heads, inner / heads, groups, (channels - inner) / (2 * groups), norms[li][8].size(1)};
  }

  // layer li's Mamba-2 mixer over its in_proj rows [t, inputs] (any float type), its state at `st` (updated) ->
  // float32 [t, inner], the input of its out_proj
  Tensor mamba_rows(const Tensor& p_in, int64_t li, float* st) const;

  bool gated(int64_t li) const { return (sliding[li] & LAYER_GATED) != 0; }

  int64_t kv_layers() const {
    int64_t n = 0;
    for (size_t li = 0; li < norms.size(); ++li) n += attention_layer(static_cast<int64_t>(li));
    return n;
  }

  int64_t hidden() const { return final_norm.numel(); }

  delta::Dims dims(int64_t li) const {
    return {lin_nk, lin_dk, norms[li][9].numel(), norms[li][11].numel(), norms[li][8].size(1)};
  }

  // where each layer's state starts in a sequence's state (the last entry: its size)
  std::vector<int64_t> state_offsets() const;

  // a sequence's recurrent state: float32, contiguous, the size state_offsets gives (empty where there is none)
  std::vector<int64_t> checked_offsets(const Tensor& state) const {
    auto off = state_offsets();
    if (off.back() > 0)
      TORCH_CHECK(state.numel() == off.back() && state.scalar_type() == at::kFloat && state.is_contiguous(),
                  "recurrent state: ", off.back(), " float32 values for this model");
    return off;
  }

  // layer li's short convolution over in_proj's rows bcx [t, 3 hidden] (any float type), its state at `st` (updated)
  // -> float32 [t, hidden], the input of its out_proj
  Tensor short_conv(const Tensor& bcx_in, int64_t li, float* st) const;

  // layer li's Gated DeltaNet over its products' rows [t, inputs] (any float type), each row in turn through its
  // state at `st` -> float32 [t, value_dim], the input of its ssm_out
  Tensor delta_rows(const Tensor& p_in, int64_t li, float* st) const;

  // A recurrent layer's rows through its state: rows [t, inputs] -> float32 [t, width of its output product]
  Tensor recurrent_rows(const Tensor& rows, int64_t li, float* st) const {
    if (conv_layer(li)) return short_conv(rows, li, st);
    return mamba_layer(li) ? mamba_rows(rows, li, st) : delta_rows(rows, li, st);
  }

  // One position's attention products src as position_heads reads them, [Q | K | V]: a gated layer's Q product rows
  // are [q, gate] (Qwen3.5's per-head [q_h, gate_h] rows, re-ordered at load to all q then all gates: build.py)
  const float* attention_row(const float* src, int64_t li, std::vector<float>& buf) const {
    if (!gated(li)) return src;
    buf.resize((nq + 2 * nkv) * d);
    std::copy(src, src + nq * d, buf.begin());
    std::copy(src + 2 * nq * d, src + 2 * nq * d + 2 * nkv * d, buf.begin() + nq * d);
    return buf.data();
  }

  // a gated layer's attention output rows att [r, nq d] times sigmoid of the gates of its products' rows first..
  // -> float32 (att itself where the layer has no gate)
  Tensor gate_output(const Tensor& att, int64_t li, const Tensor& qkv, int64_t first) const {
    if (!gated(li)) return att;
    Tensor out = att.to(at::kFloat).contiguous().clone();
    std::vector<float> buf;
    for (int64_t r = 0; r < out.size(0); ++r) {
      const float* g = rows::row_floats(qkv, first + r, qkv.size(1), buf) + nq * d;
      float* o = out.data_ptr<float>() + r * nq * d;
      for (int64_t i = 0; i < nq * d; ++i) o[i] *= 1.f / (1.f + std::exp(-g[i]));
    }
    return out;
  }

  Tensor run(Tensor x, int64_t pos, Tensor k_cache, Tensor v_cache, Tensor state, Tensor rope_global,
             Tensor rope_local) const {
    at::NoGradGuard no_grad;
    const Weights w{kinds, as, bs, mins, ns, perms};
    x = x.contiguous().clone();
    const int64_t layers = static_cast<int64_t>(norms.size());
    const kv::View cache = cache_view(k_cache, v_cache);
    const auto offs = checked_offsets(state);
    std::vector<float> q(nq * d), att(nq * d), scores, row;
    int64_t idx = 0, kl = 0;
    for (int64_t li = 0; li < layers; ++li) {
      const auto& nm = norms[li];
      auto qkv = products(pre_norm(x, nm[0], false), w, idx, n_qkv[li]);
      idx += n_qkv[li];
      if (!attention_layer(li)) {
        rows::residual_add(x, product(recurrent_rows(qkv, li, state.data_ptr<float>() + offs[li]), w, idx), nm[5],
                           eps, residual_scale);
      } else {
        bool slide = (sliding[li] & LAYER_SLIDING) != 0;
        const Tensor& rope = (slide && rope_local.numel() > 0) ? rope_local : rope_global;
        const float* cs = rope.data_ptr<float>() + pos * d;  // [cap, d/2, 2]
        const int64_t lat0 = idx;
        idx += latent_products(li);
        if (latent(li))
          latent_heads(qkv, w, li, lat0, rope, {pos}, kl, q.data(), [&](int64_t) -> const kv::View& { return cache; },
                       [&](const Tensor& a, int64_t i) { return product(a, w, i); }, INT64_MAX);
        else
          position_heads(attention_row(qkv.data_ptr<float>(), li, row), nm, cs, li, kl, pos, q.data(), cache);
        attend(q.data(), cache, kl++, nq, nkv, d, window_start(slide, pos), pos + 1, scaling, att.data(), scores,
               attn_cap, slot(li, SINKS));
        Tensor a = torch::from_blob(att.data(), {1, nq * d}, x.options());
        if (latent(li)) a = latent_values(a, w, lat0, INT64_MAX);
        auto o = product(gate_output(a, li, qkv, 0), w, idx);
        rows::residual_add(x, biased(o, li, O_BIAS), nm[5], eps, residual_scale);
      }
      idx += 1;
      if (routers[li].numel()) {
        rows::residual_add(x, moe(pre_norm(x, nm[1], false), w, li, idx, MoeRows::STEP), nm[6], eps, residual_scale);
        idx += moe_products(li);
        continue;
      }
      auto gu = products(pre_norm(x, nm[1], false), w, idx, n_gu[li]);
      idx += n_gu[li];
      const auto act = rows::gated(gu, ffn, gelu);  // one vectorised pass (a scalar std::tanh loop: ~0.4 ms a token)
      auto y = product(act, w, idx);
      idx += 1;
      rows::residual_add(x, y, nm[6], eps, residual_scale);
    }
    return logits(x);
  }

  // A block's input to its attention or FFN products: rmsnorm(x) * w, or x itself where the block has no pre-norm
  // (OLMo 2: its norms follow attention and the FFN, residual_add's post-norms); bf16 where the product wants it
  Tensor pre_norm(const Tensor& x, const Tensor& w, bool bf16_out) const {
    if (w.numel()) return rows::rms_norm_to(x, w, eps, bf16_out);
    return bf16_out ? x.to(at::kBFloat16) : x.clone();
  }

  // the first key position a query at position p sees: 0, or the start of its sliding window
  int64_t window_start(bool slide, int64_t p) const { return slide ? std::max<int64_t>(0, p - window + 1) : 0; }

  // a sequence's K and V caches (kv_cache.h: float32, float16 or Q8_0 rows) for this model's layers and heads
  kv::View cache_view(const Tensor& k, const Tensor& v) const {
    const kv::View c = kv::View::of(k, v);
    TORCH_CHECK(k.size(0) == kv_layers() && k.size(2) == nkv && kv::head_size(k) == d &&
                    c.width == kv::width(c.kind, d),
                "KV cache: [layers, 1, kv heads, positions, width] for this model");
    return c;
  }

  // One position p's fused Q/K/V product row src: bias, the head norms and rotary with that position's cos/sin
  // (cs); its query heads into q, its K and V into the rows of layer li (cache slot kl) of the cache c (stored as its
  // rows are)
  void position_heads(const float* src, const std::vector<Tensor>& nm, const float* cs, int64_t li, int64_t kl,
                      int64_t p, float* q, const kv::View& c) const {
    const float* bias = nm[2].numel() ? nm[2].data_ptr<float>() : nullptr;
    const float* qn = nm[3].numel() ? nm[3].data_ptr<float>() : nullptr;
    const float* kn = nm[4].numel() ? nm[4].data_ptr<float>() : nullptr;
    const bool rotate = (sliding[li] & LAYER_NO_ROTARY) == 0;
    std::vector<float> normed;
    if (qn && nm[3].numel() == nq * d) {
      // OLMo 2: one RMSNorm over all query heads' values and one over all key heads' (biases first), then the heads
      normed.resize((nq + 2 * nkv) * d);
      for (int64_t i = 0; i < (nq + 2 * nkv) * d; ++i) normed[i] = src[i] + (bias ? bias[i] : 0.f);
      const float sq = rows::rms_scale(normed.data(), nq * d, eps), sk = rows::rms_scale(normed.data() + nq * d,
                                                                                          nkv * d, eps);
      for (int64_t i = 0; i < nq * d; ++i) normed[i] *= sq * qn[i];
      for (int64_t i = 0; i < nkv * d; ++i) normed[nq * d + i] *= sk * kn[i];
      src = normed.data();
      bias = qn = kn = nullptr;
    }
    for (int64_t hq = 0; hq < nq; ++hq)
      head_vector(src + hq * d, bias ? bias + hq * d : nullptr, qn, cs, rotate, d, eps, q + hq * d);
    if (temp_beta != 0 && p >= temp_length) {  // below the original context the temperature is 1
      const float t = float(1.0 + temp_beta * std::log(1.0 + double(p / temp_length)));
      for (int64_t i = 0; i < nq * d; ++i) q[i] *= t;
    }
    std::vector<float> kv_row(d);
    for (int64_t hk = 0; hk < nkv; ++hk) {
      const int64_t o = nq + hk, at = c.row(kl, nkv, hk, p);
      head_vector(src + o * d, bias ? bias + o * d : nullptr, kn, cs, rotate, d, eps, kv_row.data());
      kv::store(c.kind, c.k, at, kv_row.data(), d);
      head_vector(src + (o + nkv) * d, bias ? bias + (o + nkv) * d : nullptr, nullptr, cs, false, d, eps,
                  kv_row.data());
      kv::store(c.kind, c.v, at, kv_row.data(), d);
    }
  }

  // logits through Granite's scale and the final soft-cap (Gemma 2: 30 * tanh(logits / 30)) where the model has
  // them, in place
  Tensor capped(Tensor logits) const {
    if (logit_scale != 1) logits.div_(logit_scale);
    if (final_cap > 0) rows::softcap(logits.data_ptr<float>(), logits.numel(), float(final_cap));
    return logits;
  }

  // float32 logits [1, vocab] of one residual row x [1, hidden]: the final norm, then the head
  Tensor logits(const Tensor& x) const { return capped(head_logits(x).contiguous()); }

  Tensor head_logits(const Tensor& x) const {
    const Tensor hn = rows::rms_norm(x, final_norm, eps);
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

  // Whether a prompt call of `rows` rows takes the exact dot products (and the decode step's attention) rather than
  // the prompt kernels. panel_rows: never — the server's prompts, whose keys and values must not depend on how a
  // prompt was split into calls (the panel GEMM and attention compute each row alone), so that a cached prefix and
  // a prompt prefilled in chunks between decode steps hold what one cold prefill writes, bit for bit
  static bool few_rows(int64_t rows, bool panel_rows) { return rows <= DOT_MAX_ROWS && !panel_rows; }

  // whether a prompt call computes each row alone with the decode step's kernels (its dot products, bf16 rows a few at
  // a time, its attention): a few rows, and the server's prompts where no panels run (a float32 or oneDNN GEMM's sums
  // depend on the rows in the call)
  static bool rows_alone(int64_t rows, bool panel_rows) {
    return few_rows(rows, panel_rows) || (panel_rows && !panel::available());
  }

  // whether rows_products takes a call of `rows` rows to a bf16 product (its input then best made bf16): the bf16
  // panels; without them (no AVX512-BF16) the products are float32 and so stay their inputs
  static bool bf16_inputs(int64_t rows, bool int8, bool panel_rows) {
    return !few_rows(rows, panel_rows) && !int8 && panel::bf16_native();
  }

  // A prompt's products over t rows for parts [first, first + count) (all of them the file's groups): up to
  // DOT_MAX_ROWS rows the exact dot products; then the int8 GEMM (--prefill int8); else the bf16 panel GEMM
  // (panel_gemm.h, AVX512-BF16), or the parts unpacked into one bf16 matrix for oneDNN (KERNELFIT_PANEL_GEMM=0) —
  // and on a CPU without AVX512-BF16, where oneDNN converts bf16 matmuls to float32 and runs them slower than float32
  // (catalog source torch-cpu-bf16), into one float32 matrix (exact) for one float32 product: a bf16 product there
  // also rounded every output to bf16, which flipped 1.7% of a tiny model's prompt answers against transformers'
  // float32 on the same weights (tests/test_safetensors_engine.py). The server's prompts (panel_rows) there take the
  // exact dot products: a float32 GEMM's sums depend on how many rows share the call.
  Tensor rows_products(const Tensor& x, const Weights& w, int64_t first, int64_t count, bool int8,
                      bool panel_rows) const {
    const bool alone = rows_alone(x.size(0), panel_rows);
    if (alone && kinds[first] == 6)
      return bf16rows::rows_mm_exact(x, std::vector<Tensor>(as.begin() + first, as.begin() + first + count));
    if (alone || kinds[first] == 6) return products(x, w, first, count);  // bf16 rows: rows_mm picks by rows
    bool permuted = false;
    for (int64_t i = first; i < first + count; ++i) permuted = permuted || w.permuted(i);
    if (!permuted) return prompt_products(x, first, count, int8);
    std::vector<Tensor> parts;  // act-order parts: each over its own column order, alone
    for (int64_t i = first; i < first + count; ++i)
      parts.push_back(prompt_products(w.input(x, i), i, 1, int8).to(at::kFloat));
    return at::cat(parts, 1);
  }

  // rows_products' kernels for parts [first, first + count) over the same input, in the codes' column order
  Tensor prompt_products(const Tensor& x, int64_t first, int64_t count, bool int8) const {
    std::vector<Tensor> a(as.begin() + first, as.begin() + first + count),
        b(bs.begin() + first, bs.begin() + first + count), c(mins.begin() + first, mins.begin() + first + count);
    std::vector<int64_t> bits, n(ns.begin() + first, ns.begin() + first + count);
    for (int64_t i = first; i < first + count; ++i) bits.push_back(dot_bits(kinds[i]));
    if (int8) return gemm::gemm_parts(x, a, b, c, bits, n);
    if (panel::available()) return panel::gemm_parts(x, a, b, c, bits, n);  // float32 out
    if (panel::bf16_native()) return at::linear(x.to(at::kBFloat16), dot::dot_dequant_parts(a, b, c, bits, n));
    return at::linear(x.to(at::kFloat), dot::dot_dequant_parts(a, b, c, bits, n, false));
  }

  // LeanLM.forward for a prompt, in C++ (lean_lm.py's TorchScript forward is the reference and the fallback): x
  // float32 [t, hidden] (the tokens' embeddings, scaled) at positions pos.. -> float32 logits of the last row, or of
  // every row (all_logits; the head must then be the file's groups). Every layer product must be the file's groups.
  Tensor prefill(Tensor x, int64_t pos, Tensor k_cache, Tensor v_cache, Tensor state, Tensor rope_global,
                 Tensor rope_local, bool int8, bool all_logits, bool panel_rows) const {
    at::NoGradGuard no_grad;
    const Weights w{kinds, as, bs, mins, ns, perms};
    x = x.contiguous().clone();
    const int64_t t = x.size(0), layers = static_cast<int64_t>(norms.size());
    const kv::View cache = cache_view(k_cache, v_cache);
    TORCH_CHECK(pos + t <= cache.cap, "prefill: positions beyond the KV cache");
    TORCH_CHECK(!all_logits || head_kind >= 4, "prefill: all logits need a dot-group or bf16-rows head");
    const auto offs = checked_offsets(state);
    Tensor q = at::empty({t, nq, d}, x.options());
    int64_t idx = 0, kl = 0;
    for (int64_t li = 0; li < layers; ++li) {
      const auto& nm = norms[li];
      const bool slide = (sliding[li] & LAYER_SLIDING) != 0;
      const Tensor& rope = (slide && rope_local.numel() > 0) ? rope_local : rope_global;
      // the bf16 product's inputs are written as bf16 by the pass before it (no cast pass between)
      const bool bf = bf16_inputs(t, int8, panel_rows);
      const Tensor qkv =
          rows_products(pre_norm(x, nm[0], bf), w, idx, n_qkv[li], int8, panel_rows).contiguous();
      idx += n_qkv[li];
      if (!attention_layer(li)) {  // every row through the layer's state, then past the last layer only the last
        Tensor y = recurrent_rows(qkv, li, state.data_ptr<float>() + offs[li]);
        if (!all_logits && li == layers - 1 && t > 1) y = y.narrow(0, t - 1, 1), x = x.narrow(0, t - 1, 1);
        if (bf16_inputs(y.size(0), int8, panel_rows)) y = y.to(at::kBFloat16);
        rows::residual_add(x, rows_products(y, w, idx, 1, int8, panel_rows), nm[5], eps, residual_scale);
      } else {
        const int64_t width = qkv.size(1);
        float* qp = q.data_ptr<float>();
        const int64_t lat0 = idx;
        idx += latent_products(li);
        const int64_t dot_rows = expert_dot_rows(panel_rows ? MoeRows::SERVER_PROMPT : MoeRows::BY_COUNT, t);
        if (latent(li)) {
          std::vector<int64_t> at_pos(t);
          for (int64_t r = 0; r < t; ++r) at_pos[r] = pos + r;
          latent_heads(qkv, w, li, lat0, rope, at_pos, kl, qp, [&](int64_t) -> const kv::View& { return cache; },
                       [&](const Tensor& a, int64_t i) {
                         return rows_products(bf16_inputs(t, int8, panel_rows) ? a.to(at::kBFloat16) : a, w, i, 1,
                                              int8, panel_rows);
                       }, dot_rows);
        } else {
          at::parallel_for(0, t, 8, [&](int64_t r0, int64_t r1) {  // the decode step's per-head work, a row at a time
            std::vector<float> buf, row;
            for (int64_t r = r0; r < r1; ++r)
              position_heads(attention_row(rows::row_floats(qkv, r, width, buf), li, row), nm,
                             rope.data_ptr<float>() + (pos + r) * d, li, kl, pos + r, qp + r * nq * d, cache);
          });
        }
        Tensor att;
        std::vector<float> last_att, scores;
        if (!all_logits && li == layers - 1 && t > 1) {
          // Past the last layer's keys and values only the last row is read (llama.cpp's inp_out_ids does the
          // same): its attention, output product and feed-forward run for that row alone, as in the decode step
          const int64_t p = pos + t - 1;
          last_att.resize(nq * d);
          attend(qp + (t - 1) * nq * d, cache, kl, nq, nkv, d, window_start(slide, p), p + 1, scaling,
                 last_att.data(), scores, attn_cap, slot(li, SINKS));
          att = torch::from_blob(last_att.data(), {1, nq * d}, x.options());
          x = x.narrow(0, t - 1, 1);
        } else if (rows_alone(t, panel_rows) || !panel::bf16_native()) {
          // A few rows (a speculative step's drafted tokens, a short prompt): each row's attention as the decode step
          // computes it, after every row's keys and values are in the cache — with the exact dot products of these
          // row counts, the rows' logits equal one decode step a token, bit for bit (runner.py verifies drafts so).
          // So too the server's prompts where no panels run, and every prompt on a CPU without AVX512-BF16: a float32
          // GEMM over a block of queries sums in an order that depends on the block, and a reused prefix (runner.py)
          // must give the keys and values a cold prefill writes
          att = at::empty({t, nq * d}, x.options());
          for (int64_t r = 0; r < t; ++r)
            attend(qp + r * nq * d, cache, kl, nq, nkv, d, window_start(slide, pos + r), pos + r + 1, scaling,
                   att.data_ptr<float>() + r * nq * d, scores, attn_cap, slot(li, SINKS));
        } else {
          att = panel::prompt_attention(q, k_cache.select(0, kl).select(0, 0), v_cache.select(0, kl).select(0, 0),
                                        pos, window_start(slide, pos), slide ? window : 0, scaling, PROMPT_BLOCK, bf,
                                        attn_cap, slot(li, SINKS));
        }
        if (gated(li) || latent(li)) {
          att = latent(li) ? latent_values(att, w, lat0, dot_rows)
                           : gate_output(att, li, qkv, att.size(0) == t ? 0 : t - 1);
          if (bf16_inputs(att.size(0), int8, panel_rows)) att = att.to(at::kBFloat16);
        }
        rows::residual_add(x, biased(rows_products(att, w, idx, 1, int8, panel_rows), li, O_BIAS), nm[5], eps,
                           residual_scale);
        ++kl;
      }
      idx += 1;
      if (routers[li].numel()) {
        const MoeRows how = panel_rows ? MoeRows::SERVER_PROMPT : MoeRows::BY_COUNT;
        rows::residual_add(x, moe(pre_norm(x, nm[1], false), w, li, idx, how), nm[6], eps, residual_scale);
        idx += moe_products(li);
        continue;
      }
      const bool bf_rows = bf16_inputs(x.size(0), int8, panel_rows);  // one row past the last layer's keys and values
      const Tensor gu = rows_products(pre_norm(x, nm[1], bf_rows), w, idx, n_gu[li], int8, panel_rows);
      idx += n_gu[li];
      rows::residual_add(
          x, rows_products(rows::gated_to(gu, ffn, gelu, bf_rows), w, idx, 1, int8, panel_rows), nm[6], eps,
          residual_scale);
      idx += 1;
    }
    if (!all_logits) return logits(x.narrow(0, x.size(0) - 1, 1).contiguous());
    return capped(product(rows::rms_norm(x, final_norm, eps), head_kind, head_a, head_b, head_c, head_n));
  }

  // Several sequences' tokens in one step (continuous batching; a sequence's speculative drafts): row r is the token
  // at position pos[r] of sequence seq[r], whose caches are k_caches[seq[r]] and v_caches[seq[r]] (kv_cache.h
  // [layers, 1, nkv, cap, width], each sequence its own cap). Every row's keys and values are written before any row
  // attends, so a sequence's rows see each other in order. The weights are read once for all rows; with up to
  // DOT_MAX_ROWS rows the products are the exact dot products, which compute each row alone: a row's logits equal
  // one decode step of its sequence (run), bit for bit, whatever else shares the step. -> float32 logits [R, vocab]
  Tensor batch(Tensor x, const std::vector<int64_t>& pos, const std::vector<int64_t>& seq,
               const std::vector<Tensor>& k_caches, const std::vector<Tensor>& v_caches,
               const std::vector<Tensor>& states, Tensor rope_global, Tensor rope_local) const {
    at::NoGradGuard no_grad;
    const Weights w{kinds, as, bs, mins, ns, perms};
    x = x.contiguous().clone();
    const int64_t t = x.size(0), layers = static_cast<int64_t>(norms.size());
    TORCH_CHECK(t >= 1 && t <= DOT_MAX_ROWS && static_cast<int64_t>(pos.size()) == t &&
                    static_cast<int64_t>(seq.size()) == t && k_caches.size() == v_caches.size() &&
                    states.size() == k_caches.size(),
                "batch: 1 to 12 rows, a position and a sequence each, a K and a V cache and a state a sequence");
    std::vector<kv::View> caches;
    std::vector<int64_t> offs;
    for (size_t s = 0; s < k_caches.size(); ++s) {
      caches.push_back(cache_view(k_caches[s], v_caches[s]));
      offs = checked_offsets(states[s]);
    }
    for (int64_t r = 0; r < t; ++r)
      TORCH_CHECK(seq[r] >= 0 && seq[r] < static_cast<int64_t>(caches.size()) && pos[r] >= 0 &&
                      pos[r] < caches[seq[r]].cap && pos[r] < rope_global.size(0),
                  "batch: row ", r, "'s sequence or position is outside its cache");
    std::vector<float> q(t * nq * d), scores;
    Tensor att = at::empty({t, nq * d}, x.options());
    int64_t idx = 0, kl = 0;
    std::vector<float> row;
    for (int64_t li = 0; li < layers; ++li) {
      const auto& nm = norms[li];
      const bool slide = (sliding[li] & LAYER_SLIDING) != 0;
      const Tensor& rope = (slide && rope_local.numel() > 0) ? rope_local : rope_global;
      const Tensor qkv = products(pre_norm(x, nm[0], false), w, idx, n_qkv[li]).contiguous();
      const int64_t width = qkv.size(1);
      idx += n_qkv[li];
      if (!attention_layer(li)) {  // a row at a time through its sequence's state, in order (its rows follow on)
        std::vector<Tensor> ys;
        for (int64_t r = 0; r < t; ++r)
          ys.push_back(recurrent_rows(qkv.narrow(0, r, 1), li, states[seq[r]].data_ptr<float>() + offs[li]));
        rows::residual_add(x, products(at::cat(ys, 0), w, idx, 1), nm[5], eps, residual_scale);
      } else {
        const int64_t lat0 = idx;
        idx += latent_products(li);
        if (latent(li))
          latent_heads(qkv, w, li, lat0, rope, pos, kl, q.data(),
                       [&](int64_t r) -> const kv::View& { return caches[seq[r]]; },
                       [&](const Tensor& a, int64_t i) { return products(a, w, i, 1); }, INT64_MAX);
        else
          for (int64_t r = 0; r < t; ++r)
            position_heads(attention_row(qkv.data_ptr<float>() + r * width, li, row), nm,
                           rope.data_ptr<float>() + pos[r] * d, li, kl, pos[r], q.data() + r * nq * d, caches[seq[r]]);
        for (int64_t r = 0; r < t; ++r)
          attend(q.data() + r * nq * d, caches[seq[r]], kl, nq, nkv, d, window_start(slide, pos[r]), pos[r] + 1,
                 scaling, att.data_ptr<float>() + r * nq * d, scores, attn_cap, slot(li, SINKS));
        const Tensor a = latent(li) ? latent_values(att, w, lat0, INT64_MAX) : gate_output(att, li, qkv, 0);
        rows::residual_add(x, biased(products(a, w, idx, 1), li, O_BIAS), nm[5], eps, residual_scale);
        ++kl;
      }
      idx += 1;
      if (routers[li].numel()) {
        rows::residual_add(x, moe(pre_norm(x, nm[1], false), w, li, idx, MoeRows::STEP), nm[6], eps, residual_scale);
        idx += moe_products(li);
        continue;
      }
      const Tensor gu = products(pre_norm(x, nm[1], false), w, idx, n_gu[li]);
      idx += n_gu[li];
      rows::residual_add(x, product(rows::gated_to(gu, ffn, gelu, false), w, idx), nm[6], eps, residual_scale);
      idx += 1;
    }
    if (head_kind != 3)
      return capped(product(rows::rms_norm(x, final_norm, eps), head_kind, head_a, head_b, head_c, head_n));
    std::vector<Tensor> rows_out;  // the two-digit int8 head corrects one row's top logits at a time
    for (int64_t r = 0; r < t; ++r) rows_out.push_back(logits(x.narrow(0, r, 1).contiguous()));
    return at::cat(rows_out, 0);
  }
};

#include "step_experts.h"
#include "step_latent.h"
#include "step_recurrent.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Step>(m, "Step", pybind11::module_local())  // local: two builds may share a process
      .def(pybind11::init<std::vector<int64_t>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                          std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                          std::vector<std::vector<Tensor>>, std::vector<int64_t>, Tensor, int64_t, Tensor, Tensor,
                          Tensor, int64_t, int64_t, int64_t, int64_t, int64_t, double, double, int64_t, bool,
                          int64_t, double, double, double, double, std::vector<Tensor>, int64_t, int64_t, bool,
                          int64_t, int64_t, bool, double, double, double, int64_t, double, std::vector<int64_t>,
                          std::vector<Tensor>>())
      // the GIL is released while a step or a prompt runs: `kernelfit serve`'s event loop keeps answering meanwhile
      .def("run", &Step::run, "one decode step", pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("prefill", &Step::prefill, "a prompt's forward", pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("batch", &Step::batch, "several sequences' tokens in one step",
           pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("dot_mm", &dot::dot_mm, "x @ W^T over a weight's file groups (dot_kernels.h)");
  m.def("dot_dequant", &dot::dot_dequant, "a dot weight's rows as float32 or bf16");
  m.def("bf16_native", &panel::bf16_native, "whether this build multiplies bf16 natively (AVX512-BF16)");
  m.def("dot_dequant_parts", &dot::dot_dequant_parts, "several dot weights unpacked into one bf16 (or float32) matrix",
        pybind11::arg("codes"), pybind11::arg("scale"), pybind11::arg("mins"), pybind11::arg("bits"), pybind11::arg("n"),
        pybind11::arg("bf16") = true);
  m.def("bf16_rows_mm", &bf16rows::rows_mm, "x @ W^T over bf16 weight rows as stored, float32 out (bf16_rows.h)");
  m.def("bf16_rows_mm_parts", &bf16rows::rows_mm_parts, "x @ [W_0; W_1; ...]^T for up to 12 rows in one parallel "
        "region (bf16_rows.h)");
  m.def("fast_dot", &dot::fast_dot, "whether the dot products are vectorised here");
  m.def("gemm_mm", &gemm::gemm_mm, "a prompt's x @ W^T over a weight's file groups, int8 VNNI (gemm_kernels.h)");
  m.def("rms_norm", &rows::rms_norm, "rmsnorm(x) * w over the last dimension (rows_kernels.h)");
  m.def("residual_add", &rows::residual_add, "x += scale * y, through an optional post-norm, in place",
        pybind11::arg("x"), pybind11::arg("y"), pybind11::arg("post"), pybind11::arg("eps"),
        pybind11::arg("scale") = 1.0);
  m.def("gated", &rows::gated, "gelu-tanh or silu of the gate times up");
  m.def("masked_softmax", [](const Tensor& scores, double scale, int64_t q0, int64_t per, int64_t key0, int64_t window,
                             double cap) { return rows::masked_softmax(scores, scale, q0, per, key0, window, cap); },
        "a prompt's attention weights from bf16 scores, masked by position",
        pybind11::arg("scores"), pybind11::arg("scale"), pybind11::arg("q0"), pybind11::arg("per"),
        pybind11::arg("key0"), pybind11::arg("window"), pybind11::arg("cap") = 0.0);
  m.def("prompt_attention", [](const Tensor& q, const Tensor& k, const Tensor& v, int64_t pos, int64_t start,
                               int64_t window, double scale, int64_t block, double cap, const Tensor& sinks) {
    return panel::prompt_attention(q, k, v, pos, start, window, scale, block, false, cap, sink_ptr(sinks, q.size(1)));
  }, "a prompt's attention for one layer: bf16 panels where built, else oneDNN in query blocks",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("pos"), pybind11::arg("start"),
        pybind11::arg("window"), pybind11::arg("scale"), pybind11::arg("block"), pybind11::arg("cap") = 0.0,
        pybind11::arg("sinks") = at::empty({0}));
  m.def("blocked_attention", [](const Tensor& q, const Tensor& k, const Tensor& v, int64_t pos, int64_t start,
                                int64_t window, double scale, int64_t block, double cap, const Tensor& sinks) {
    return rows::prompt_attention_to(q, k, v, pos, start, window, scale, block, false, cap, sink_ptr(sinks, q.size(1)));
  }, "a prompt's attention for one layer, oneDNN in query blocks",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("pos"), pybind11::arg("start"),
        pybind11::arg("window"), pybind11::arg("scale"), pybind11::arg("block"), pybind11::arg("cap") = 0.0,
        pybind11::arg("sinks") = at::empty({0}));
  m.def("kv_rows", &kv::from_float, "float32 rows [..., d] as KV cache rows of a kind (0 f32, 1 f16, 2 q8_0)");
  m.def("kv_float", &kv::to_float, "KV cache rows [..., width] as float32 [..., d]");
  m.def("decode_attention", [](const Tensor& q, const Tensor& k, const Tensor& v, int64_t li, int64_t start,
                               int64_t end, double scale, double cap, const Tensor& sinks) {
    // one query's attention over layer li of a cache pair [layers, 1, nkv, positions, width], as the steps run it
    const Tensor qc = q.to(at::kFloat).contiguous();
    const int64_t nq = qc.size(0), d = qc.size(1);
    const kv::View c = kv::View::of(k, v);
    TORCH_CHECK(qc.dim() == 2 && kv::head_size(k) == d && nq % k.size(2) == 0 && li >= 0 && li < k.size(0) &&
                    start >= 0 && start < end && end <= c.cap,
                "decode_attention: q [heads, d] for the cache's head size, a layer and positions within it");
    Tensor out = at::empty({nq, d}, qc.options());
    std::vector<float> scores;
    decode::attend(qc.data_ptr<float>(), c, li, nq, k.size(2), d, start, end, scale, out.data_ptr<float>(), scores,
                   cap, sink_ptr(sinks, nq));
    return out;
  }, "one query's attention over a KV cache (decode_attention.h)", pybind11::arg("q"), pybind11::arg("k"),
        pybind11::arg("v"), pybind11::arg("li"), pybind11::arg("start"), pybind11::arg("end"), pybind11::arg("scale"),
        pybind11::arg("cap") = 0.0, pybind11::arg("sinks") = at::empty({0}));
  // load-time repacking, called from the reader's threads: the GIL released, no ATen op inside
  m.def("tile_codes", &repack::tile_codes, "codes [n, k] into a dot weight's tiles from tile0 (repack_kernels.h)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("q4_k_codes", &repack::q4_k_codes, "Q4_K blocks at an address -> codes 0..15",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("q6_k_codes", &repack::q6_k_codes, "Q6_K blocks at an address -> codes 0..63",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("block_tiles", &repack::block_tiles, "Q4_K / Q6_K blocks at an address straight into a dot weight's tiles",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("gemm_parts", &gemm::gemm_parts, "several weights' products over one input, side by side (int8 VNNI)");
  m.def("fast_gemm", &gemm::fast_gemm, "whether the int8 VNNI GEMM is built here");
  m.def("panel_gemm_parts", &panel::gemm_parts, "several weights' products over one input, bf16 panels (precise)");
  m.def("panel_available", &panel::available, "whether the AVX512-BF16 panel GEMM is built here");
  m.def("panel_tiles", &amx::ready, "whether the panel GEMM runs on AMX tiles here (amx_tiles.h)");
}
