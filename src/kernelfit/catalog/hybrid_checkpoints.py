"""The hybrid architectures' transformers checkpoints under llama.cpp's tensor names and layouts: what
convert_hf_to_gguf.py's modify_tensors does to each of their tensors (conversion/qwen.py Qwen3_5TextModel and
_LinearAttentionVReorderBase, conversion/lfm2.py, conversion/granite.py GraniteHybridModel with conversion/mamba.py),
done here as a view of the checkpoint's own bytes instead of a copy written to a new file — so the builder reads a
safetensors Qwen3.5, LFM2 or Granite 4.0-H exactly as it reads their GGUF files.

A llama.cpp tensor is a `Source`: the checkpoint tensors it is made of (the experts' one each, stacked by rows), the
rows and columns picked from them (Qwen3.5's value heads from transformers' grouped order to llama.cpp's tiled one, a
fused gate|up split), and a fix of its values (the norms stored as 1 + w, A stored as -exp(A_log)). `layout` is a pure
function of config.json and the checkpoint's tensor names; a tensor it does not use, or one it needs and the
checkpoint lacks, refuses the checkpoint in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..errors import UsageError

# config.json model_type -> llama.cpp's architecture (the GGUF files these checkpoints convert to)
HYBRID_CHECKPOINT_ARCHS = {"qwen3_5_text": "qwen35", "qwen3_5_moe_text": "qwen35moe", "lfm2": "lfm2",
                           "lfm2_moe": "lfm2moe", "granitemoehybrid": "granitehybrid"}
HYBRID_CHECKPOINT_SOURCES = ("llama-cpp-convert-hybrids", "llama-cpp-tensor-mapping")
# Multimodal configs whose text model the engine reads alone: model_type -> (the text model's config key, its tensors'
# prefix in place of "model.", the vision tower's prefix). Qwen3.5 and Qwen3.6 ship only as these
# (Qwen3_5ForConditionalGeneration); transformers' AutoModelForCausalLM loads their text model alone the same way
# (modeling_auto.py's "VLM compatibility" rows: qwen3_5 -> Qwen3_5ForCausalLM), and llama.cpp's converter writes it
# to the GGUF file, the vision tower to a separate mmproj file. The vision tower is not read: such a checkpoint
# answers text.
TEXT_OF_VLM = {"qwen3_5": ("text_config", "model.language_model.", "model.visual."),
               "qwen3_5_moe": ("text_config", "model.language_model.", "model.visual.")}
# tensors of the checkpoint no GGUF text model holds: Qwen3.5's multi-token-prediction block (llama.cpp keeps it for
# drafting; the engine does not run it)
SKIPPED_PREFIXES = ("mtp.",)


class Fix(Enum):
    """A change of a small tensor's values the converter makes."""

    PLUS_ONE = "plus_one"  # Qwen3.5's RMSNorms multiply by (1 + w): stored as 1 + w
    NEG_EXP = "neg_exp"  # Gated DeltaNet's and Mamba-2's decay: stored as A = -exp(A_log)


@dataclass(frozen=True)
class Source:
    """One llama.cpp tensor from the checkpoint's: `parts` stacked by rows (each viewed as [rows, last dim]; a 1-D
    tensor as [n, 1]), then `rows` and `cols` picked (None: all, in order), then `fix`."""

    parts: tuple[str, ...]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    fix: Fix | None = None


class LayoutError(UsageError):
    """A checkpoint the layout cannot read: `problem` says why (the plan's reason), the message adds where and what
    to do (the reader's one line)."""

    def __init__(self, where: str, problem: str, todo: str):
        super().__init__(f"{where}: {problem}; {todo}")
        self.problem = problem


def text_config(cfg: dict) -> dict:
    """The config a checkpoint's text model is read from: a TEXT_OF_VLM config's text object (the top level's
    tie_word_embeddings over its own: transformers ties the wrapper's head by it), any other config as it is."""
    if not isinstance(cfg, dict) or cfg.get("model_type") not in TEXT_OF_VLM:
        return cfg
    text = cfg.get(TEXT_OF_VLM[cfg["model_type"]][0])
    if not isinstance(text, dict):
        raise UsageError(f"a {cfg['model_type']} config.json needs its `{TEXT_OF_VLM[cfg['model_type']][0]}` object; "
                         "fix the config")
    return {**text, **({"tie_word_embeddings": cfg["tie_word_embeddings"]} if "tie_word_embeddings" in cfg else {})}


def text_tensors(names, model_type: str | None) -> dict[str, str]:
    """The text model's tensor names -> the checkpoint's own: for a TEXT_OF_VLM checkpoint its language model's
    tensors as model.* (as a text checkpoint names them), its vision tower's left out; any other's as they are."""
    if model_type not in TEXT_OF_VLM:
        return {n: n for n in names}
    _, text, vision = TEXT_OF_VLM[model_type]
    return {("model." + n[len(text):] if n.startswith(text) else n): n for n in names if not n.startswith(vision)}


def layout(model_type: str, cfg: dict, names: set[str], where: str) -> dict[str, Source]:
    """llama.cpp's tensor name -> its Source, for a checkpoint of `model_type` (HYBRID_CHECKPOINT_ARCHS) with these
    tensor names; a LayoutError for one it would not read, one it lacks, or a config.json without the sizes it
    needs."""
    out: dict[str, Source] = {}
    take = _Taker(names, where, out)
    take("token_embd.weight", "model.embed_tokens.weight")
    if "lm_head.weight" in names:
        take("output.weight", "lm_head.weight")
    try:
        _ARCH_LAYOUTS[model_type](cfg, take)
    except (KeyError, TypeError, ValueError) as exc:
        raise LayoutError(where, f"config.json lacks or mistypes {exc}", "fix the config") from None
    unused = sorted(n for n in names - take.used if not n.startswith(SKIPPED_PREFIXES))
    if unused:
        raise LayoutError(where, f"tensor {unused[0]} is not one the engine's recipe reads"
                          + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""),
                          "--quantization none loads it through transformers")
    return out


class _Taker:
    """Records each llama.cpp tensor's Source and the checkpoint names it used."""

    def __init__(self, names: set[str], where: str, out: dict):
        self.names, self.where, self.out, self.used = names, where, out, set()

    def __call__(self, ours: str, *parts: str, rows=None, cols=None, fix: Fix | None = None) -> None:
        missing = [p for p in parts if p not in self.names]
        if missing:
            raise LayoutError(self.where, f"tensor {missing[0]} is missing from the checkpoint", "re-save it")
        self.used.update(parts)
        self.out[ours] = Source(tuple(parts), rows, cols, fix)

    def has(self, name: str) -> bool:
        return name in self.names

    def experts(self, b: str, p: str, n: int, size: int, names: dict[str, str], fused: tuple[str, str]) -> None:
        """A layer's experts: one tensor each (`names`: llama.cpp's gate/up/down -> the expert's own leaf, as
        transformers saves them) or transformers' fused [experts, 2 size, hidden] gate|up and [experts, hidden, size]
        down (`fused`: their leaves) — stacked by rows as llama.cpp's 3-D ffn_*_exps."""
        gate_up, down = (p + x for x in fused)
        if self.has(gate_up) or not names:  # (neither: the fused tensors are named missing)
            rows = np.arange(n)[:, None] * 2 * size
            self(b + "ffn_gate_exps.weight", gate_up, rows=(rows + np.arange(size)).reshape(-1))
            self(b + "ffn_up_exps.weight", gate_up, rows=(rows + size + np.arange(size)).reshape(-1))
            self(b + "ffn_down_exps.weight", down)
            return
        for ours, leaf in names.items():
            self(b + f"ffn_{ours}_exps.weight", *(p + f"{e}.{leaf}.weight" for e in range(n)))


def layer_types(cfg: dict, attention: str, recurrent: str, layers: int) -> list[bool]:
    """Which layers attend: config.json's layer_types (transformers 5 writes Granite 4.0-H's "mamba" / "attention" as
    "linear_attention" / "full_attention": both read), else LFM2's older full_attn_idxs, else Qwen3.5's every
    full_attention_interval-th layer."""
    types = cfg.get("layer_types")
    if types:
        attends, recurs = {attention, "full_attention"}, {recurrent, "linear_attention"}
        odd = sorted({t for t in types if t not in attends | recurs})
        if odd or len(types) != layers:
            raise LayoutError("config.json", f"layer_types {odd or len(types)} are not {layers} of '{attention}' / "
                              f"'{recurrent}'", "fix the config")
        return [t in attends for t in types]
    if "full_attn_idxs" in cfg:
        return [i in set(cfg["full_attn_idxs"]) for i in range(layers)]
    every = int(cfg.get("full_attention_interval") or 4)
    return [(i + 1) % every == 0 for i in range(layers)]


def _qwen35(cfg: dict, take: _Taker) -> None:
    """conversion/qwen.py: every norm but the Gated DeltaNet's own stored + 1; A as -exp(A_log); the conv taps [channels,
    K]; q_proj kept whole ([q_h, gate_h] a head); value-head tensors from transformers' grouped order (value head j of
    key head j // r) to llama.cpp's tiled one (GGUF head j = transformers' (j % nk) r + j // nk)."""
    layers = int(cfg["num_hidden_layers"])
    nk, dk = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
    nv, dv = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
    tiled = np.array([(j % nk) * (nv // nk) + j // nk for j in range(nv)])

    def v_order(prefix: int, size: int) -> np.ndarray | None:  # rows [prefix | nv blocks of size], blocks re-ordered
        if nv == nk:
            return None
        return np.concatenate([np.arange(prefix), prefix + (tiled[:, None] * size + np.arange(size)).reshape(-1)])

    take("output_norm.weight", "model.norm.weight", fix=Fix.PLUS_ONE)
    for i, attends in enumerate(layer_types(cfg, "full_attention", "linear_attention", layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "input_layernorm.weight", fix=Fix.PLUS_ONE)
        take(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", fix=Fix.PLUS_ONE)
        if attends:
            a = p + "self_attn."
            for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj")):
                take(b + f"attn_{ours}.weight", a + leaf + ".weight")
            take(b + "attn_q_norm.weight", a + "q_norm.weight", fix=Fix.PLUS_ONE)
            take(b + "attn_k_norm.weight", a + "k_norm.weight", fix=Fix.PLUS_ONE)
        else:
            a, kd = p + "linear_attn.", 2 * nk * dk
            take(b + "attn_qkv.weight", a + "in_proj_qkv.weight", rows=v_order(kd, dv))
            take(b + "attn_gate.weight", a + "in_proj_z.weight", rows=v_order(0, dv))
            take(b + "ssm_beta.weight", a + "in_proj_b.weight", rows=v_order(0, 1))
            take(b + "ssm_alpha.weight", a + "in_proj_a.weight", rows=v_order(0, 1))
            take(b + "ssm_conv1d.weight", a + "conv1d.weight", rows=v_order(kd, dv))
            take(b + "ssm_dt.bias", a + "dt_bias", rows=v_order(0, 1))
            take(b + "ssm_a", a + "A_log", rows=v_order(0, 1), fix=Fix.NEG_EXP)
            take(b + "ssm_norm.weight", a + "norm.weight")
            take(b + "ssm_out.weight", a + "out_proj.weight", cols=v_order(0, dv))
        m = p + "mlp."
        if take.has(m + "gate.weight"):  # Qwen3.5-MoE: the router, the experts, the shared expert and its gate
            take(b + "ffn_gate_inp.weight", m + "gate.weight")
            take.experts(b, m + "experts.", int(cfg["num_experts"]), int(cfg["moe_intermediate_size"]),
                         {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}, ("gate_up_proj", "down_proj"))
            for x in ("gate", "up", "down"):
                take(b + f"ffn_{x}_shexp.weight", m + f"shared_expert.{x}_proj.weight")
            take(b + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight")
        else:
            for x in ("gate", "up", "down"):
                take(b + f"ffn_{x}.weight", m + f"{x}_proj.weight")


def _lfm2(cfg: dict, take: _Taker) -> None:
    """conversion/lfm2.py: norms as they are (the final one, transformers' embedding_norm, under token_embd_norm), the
    short convolution's taps [channels, K]; LFM2-MoE's first num_dense_layers dense, then sigmoid-routed experts with
    their selection bias."""
    layers = int(cfg["num_hidden_layers"])
    take("token_embd_norm.weight", "model.embedding_norm.weight")
    for i, attends in enumerate(layer_types(cfg, "full_attention", "conv", layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "operator_norm.weight")
        take(b + "ffn_norm.weight", p + "ffn_norm.weight")
        if attends:
            a = p + "self_attn."
            for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "out_proj")):
                take(b + f"attn_{ours}.weight", a + leaf + ".weight")
            take(b + "attn_q_norm.weight", a + "q_layernorm.weight")
            take(b + "attn_k_norm.weight", a + "k_layernorm.weight")
        else:
            for leaf in ("conv", "in_proj", "out_proj"):
                take(b + f"shortconv.{leaf}.weight", p + f"conv.{leaf}.weight")
        f = p + "feed_forward."
        if take.has(f + "gate.weight"):
            take(b + "ffn_gate_inp.weight", f + "gate.weight")
            take(b + "exp_probs_b.bias", f + "expert_bias")
            take.experts(b, f + "experts.", int(cfg["num_experts"]), int(cfg["moe_intermediate_size"]),
                         {"gate": "w1", "up": "w3", "down": "w2"}, ("gate_up_proj", "down_proj"))
        else:
            for ours, leaf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                take(b + f"ffn_{ours}.weight", f + leaf + ".weight")


def _granite(cfg: dict, take: _Taker) -> None:
    """conversion/granite.py GraniteHybridModel: the shared MLP's input_linear split into gate and up (a shared expert's
    where the layer has experts), a Mamba-2 layer's in_proj as ssm_in, its conv taps [channels, K] and bias, A as
    -exp(A_log), D, the gated norm, out_proj."""
    layers = int(cfg["num_hidden_layers"])
    shared = int(cfg["shared_intermediate_size"])
    experts = int(cfg.get("num_local_experts") or 0)
    take("output_norm.weight", "model.norm.weight")
    for i, attends in enumerate(layer_types(cfg, "attention", "mamba", layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "input_layernorm.weight")
        take(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        if attends:
            for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj")):
                take(b + f"attn_{ours}.weight", p + f"self_attn.{leaf}.weight")
        else:
            m = p + "mamba."
            for ours, leaf in (("ssm_in.weight", "in_proj.weight"), ("ssm_conv1d.weight", "conv1d.weight"),
                               ("ssm_dt.bias", "dt_bias"), ("ssm_d", "D"), ("ssm_norm.weight", "norm.weight"),
                               ("ssm_out.weight", "out_proj.weight")):
                take(b + ours, m + leaf)
            if take.has(m + "conv1d.bias"):
                take(b + "ssm_conv1d.bias", m + "conv1d.bias")
            take(b + "ssm_a", m + "A_log", fix=Fix.NEG_EXP)
        x = "_shexp" if experts else ""  # beside experts the shared MLP is a shared expert
        mlp = p + "shared_mlp."
        take(b + f"ffn_gate{x}.weight", mlp + "input_linear.weight", rows=np.arange(shared))
        take(b + f"ffn_up{x}.weight", mlp + "input_linear.weight", rows=shared + np.arange(shared))
        take(b + f"ffn_down{x}.weight", mlp + "output_linear.weight")
        if experts:
            e = p + "block_sparse_moe."
            take(b + "ffn_gate_inp.weight", e + "router.layer.weight")
            take.experts(b, e, experts, int(cfg["intermediate_size"]), {}, ("input_linear.weight",
                                                                             "output_linear.weight"))


_ARCH_LAYOUTS = {"qwen3_5_text": _qwen35, "qwen3_5_moe_text": _qwen35, "lfm2": _lfm2, "lfm2_moe": _lfm2,
                 "granitemoehybrid": _granite}
