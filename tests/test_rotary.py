"""Rotary scalings as recipe data: Llama 3.x's frequency factors (the `rope_freqs` tensor) and YaRN run on the packed
engine, equal to transformers' own rotary maths. Before, every Llama 3.1/3.2/3.3 GGUF and every YaRN file fell off
the engine onto the dequantized transformers path (0.24x llama.cpp's decode at 10.7x its memory)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gguf_tiny import HEAD_DIM, write_tiny
from kernelfit import Preferences, load_model_spec, load_profile, plan
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.recipe import Rotary, RotaryKind, inverse_frequencies
from kernelfit.planner.types import RejectKind
from test_packed_gguf import _tokens

LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # short: the factors matter in 300 tokens
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}


def _hf(rope: dict, family: str = "llama"):
    from transformers import LlamaConfig, Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cls = LlamaConfig if family == "llama" else Qwen2Config
    cfg = cls(hidden_size=HEAD_DIM * 4, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=int(rope["original_max_position_embeddings"] * rope["factor"]),
              rope_parameters=dict(rope))
    inv, attention = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
    return cfg, inv.double(), attention


def _llama3_factors() -> np.ndarray:
    """What llama.cpp's converter writes as rope_freqs for rope_scaling "llama3": plain / scaled frequencies."""
    _, inv, _ = _hf(LLAMA3)
    plain = inverse_frequencies(Rotary(10000.0), HEAD_DIM)
    return (plain / inv).numpy()


def test_llama3_factors_and_yarn_give_transformers_frequencies_and_magnitude():
    _, want, attention = _hf(LLAMA3)
    got = inverse_frequencies(Rotary(10000.0, freq_factors=tuple(_llama3_factors())), HEAD_DIM)
    assert torch.allclose(got, want, rtol=1e-6) and attention == 1.0
    assert not torch.allclose(got, inverse_frequencies(Rotary(10000.0), HEAD_DIM))  # the factors change something
    _, want, attention = _hf(YARN, "qwen2")
    r = Rotary(10000.0, RotaryKind.YARN, 4.0, None, 64)
    assert torch.allclose(inverse_frequencies(r, HEAD_DIM), want, rtol=1e-6)
    assert r.magnitude == pytest.approx(attention, rel=1e-12) and r.magnitude > 1.1


def _scaled_reference(path, rope: dict, family: str):
    """transformers' GGUF load of the file (which ignores rotary scaling), its rotary replaced by transformers' own
    scaled one: the same weights, transformers' maths."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    plain = copy.deepcopy(ref)
    cfg = copy.deepcopy(ref.config)
    cfg.rope_parameters = dict(rope)
    cfg.max_position_embeddings = int(rope["original_max_position_embeddings"] * rope["factor"])
    ref.model.rotary_emb = type(ref.model.rotary_emb)(cfg)
    return ref, plain


@pytest.mark.parametrize("family,rope,qtype", [("llama", LLAMA3, "Q4_K"), ("qwen2", YARN, "Q8_0"),
                                               ("llama", YARN, "Q4_0")])
def test_scaled_rotary_files_run_packed_and_agree_with_transformers(tmp_path, family, rope, qtype):
    """Teacher-forced over 300 positions (well past the original context of 32/64): prefill logits and decode steps
    top-1 >= 99%, cosine >= 0.999 against transformers with the same scaling; the plain rotary does not agree."""
    kw = {"rope_freqs": _llama3_factors()} if rope is LLAMA3 else {"yarn_context": (4.0, 64)}
    path = write_tiny(tmp_path / f"{family}-{rope['rope_type']}.gguf", qtype, family, **kw)
    ref, plain = _scaled_reference(path, rope, family)
    ids = _tokens()
    with torch.no_grad():
        want, unscaled = ref(ids[None]).logits[0], plain(ids[None]).logits[0]
    b = build_lean(path)
    reset_cache(b, len(ids) + 8)
    got = forward(b, ids, 0, True)
    for logits in (got,):
        cos = torch.nn.functional.cosine_similarity(want, logits, dim=-1)
        assert float((want.argmax(-1) == logits.argmax(-1)).float().mean()) >= 0.99
        assert float(cos.mean()) >= 0.999 and float(cos.min()) >= 0.998, (float(cos.mean()), float(cos.min()))
    # the scaling matters at these positions: the unscaled rotary is 5x further from the engine than transformers is
    assert float((got - unscaled).abs().mean()) > 5 * float((got - want).abs().mean())
    # decode: 256 positions one step at a time after a 44-token prompt
    reset_cache(b, len(ids) + 8)
    forward(b, ids[:44], 0, False)
    steps = torch.stack([forward(b, ids[i:i + 1], i, False)[-1] for i in range(44, 300)])
    cos = torch.nn.functional.cosine_similarity(want[44:], steps, dim=-1)
    assert float((want[44:].argmax(-1) == steps.argmax(-1)).float().mean()) >= 0.99 and float(cos.min()) >= 0.999


def test_scaled_rotary_files_plan_packed_and_odd_yarn_is_refused_at_plan_time(tmp_path):
    cpu = load_profile("cpu-spr-amx")
    for name, kw in (("freqs", {"rope_freqs": _llama3_factors()}), ("yarn", {"yarn_context": (4.0, 64)})):
        spec = load_model_spec(str(write_tiny(tmp_path / f"{name}.gguf", "Q4_0", **kw)))
        p = plan(cpu, spec, Preferences())
        assert p.quantization.method == "gguf", name
        assert {"transformers-rope-utils", "ggml-rope"} <= set(p.kernels["decode"].sources)  # the maths it runs
    spec = load_model_spec(str(write_tiny(tmp_path / "bare-yarn.gguf", "Q4_0", yarn=True)))  # no original context
    p = plan(cpu, spec, Preferences())
    why = next(r for r in p.quantization_rejected if r.name == "gguf:packed-cpu")
    assert p.quantization.method == "none" and why.kind is RejectKind.NOT_RUNNABLE
    assert "rope.scaling.original_context_length" in why.reason


def _agrees_with_transformers_phi3(path, rope: dict, original: int, tokens: int):
    """transformers' Phi3 with `rope` (rope_parameters) on the weights of transformers' own load of `path` (which
    ignores the file's rotary extras) against the engine: top-1 >= 99%, mean cosine >= 0.999, and closer than that
    plain load; the plan runs the file packed. Returns the build."""
    from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    cfg = Phi3Config(**{k: v for k, v in loaded.config.to_dict().items() if k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")},
        max_position_embeddings=1024, original_max_position_embeddings=original, rope_parameters=rope)
    ref = Phi3ForCausalLM(cfg).eval()
    missing, unexpected = ref.load_state_dict(loaded.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)  # only rotary buffers differ
    ids = _tokens(tokens)
    with torch.no_grad():
        want, plain = ref(ids[None]).logits[0], loaded(ids[None]).logits[0]
    b = build_lean(path)
    reset_cache(b, len(ids) + 8)
    got = forward(b, ids, 0, True)
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    assert float((want.argmax(-1) == got.argmax(-1)).float().mean()) >= 0.99 and float(cos.mean()) >= 0.999
    assert float(torch.nn.functional.cosine_similarity(plain, got, dim=-1).mean()) < float(cos.mean())
    p = plan(load_profile("cpu-spr-amx"), load_model_spec(str(path)), Preferences())
    assert p.quantization.method == "gguf"
    return b


def _longrope(pairs: int) -> dict:
    """The LongRoPE tables gguf_tiny writes (original context 512 of the file's 1024), as rope_parameters."""
    return {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 512,
            "short_factor": np.linspace(1, 3.0, pairs).tolist(), "long_factor": np.linspace(1, 8.0, pairs).tolist()}


def test_longrope_phi3_agrees_with_transformers_phi3_on_the_same_weights(tmp_path):
    """Phi-3.5's LongRoPE: transformers' Phi3 with rope_type longrope (its factor tables from the file), the weights
    of transformers' own load of the file; within the original context (512 of 1024) the short table and the
    attention factor sqrt(1 + ln 2 / ln 512) apply. The plan runs it packed, limited to the original context."""
    path = write_tiny(tmp_path / "m.gguf", "Q8_0", "phi3", longrope=True)
    b = _agrees_with_transformers_phi3(path, _longrope(HEAD_DIM // 2), 512, 300)
    assert b.cfg.max_positions == 512


@pytest.mark.parametrize("longrope", [False, True])
def test_partial_rotary_phi_agrees_with_transformers_phi3(tmp_path, longrope):
    """A rotary over half of each head (Phi-4-mini rotates 3/4), alone and with LongRoPE: transformers' Phi3 with that
    partial_rotary_factor on the file's weights; the dimensions past the rotated ones pass through unchanged."""
    path = write_tiny(tmp_path / "m.gguf", "Q8_0", "phi3", rope_dims=HEAD_DIM // 2, longrope=longrope)
    rope = {**(_longrope(HEAD_DIM // 4) if longrope else {"rope_type": "default", "rope_theta": 10000.0}),
            "partial_rotary_factor": 0.5}
    b = _agrees_with_transformers_phi3(path, rope, 512 if longrope else 1024, 200)
    assert b.cfg.rotary.dims == HEAD_DIM // 2


@pytest.mark.parametrize("arch", ["phi3", "gemma2", "smollm3", "granite", "olmo2", "glm4", "gemma", "qwen3moe"])
def test_new_architectures_plan_packed(tmp_path, arch):
    spec = load_model_spec(str(write_tiny(tmp_path / f"{arch}.gguf", "Q4_K", arch)))
    assert plan(load_profile("cpu-spr-amx"), spec, Preferences()).quantization.method == "gguf"


GGUF_ARCHS = sorted(__import__("kernelfit.catalog.architectures", fromlist=["x"]).GGUF_ARCH_TO_MODEL_TYPE)


def _tiny_of(path, arch: str):
    """A tiny file of `arch`: the hybrids' own writers (their layers' tensors and keys), else gguf_tiny's."""
    if arch == "lfm2":
        from gguf_tiny import write_tiny_lfm2

        return write_tiny_lfm2(path, "Q4_0")
    if arch == "lfm2moe":
        from gguf_lfm2moe import tiny_model as lfm2moe_model, write_lfm2moe

        return write_lfm2moe(path, lfm2moe_model())
    if arch == "gpt-oss":
        from gguf_gptoss import tiny_model as gptoss_model, write_gptoss

        return write_gptoss(path, gptoss_model())
    if arch == "glm4moe":
        from gguf_glm4moe import tiny_model as glm_model, write_glm4moe

        return write_glm4moe(path, glm_model())
    if arch == "granitehybrid":
        from gguf_granitehybrid import tiny_model as granite_model, write_granitehybrid

        return write_granitehybrid(path, granite_model())
    if arch == "deepseek2":
        from gguf_deepseek2 import tiny_model as deepseek_model, write_deepseek2

        return write_deepseek2(path, deepseek_model())
    if arch == "mistral3":
        from gguf_mistral3 import tiny_model as mistral3_model, write_mistral3

        return write_mistral3(path, mistral3_model())
    if arch in ("qwen35", "qwen35moe"):
        from gguf_qwen35 import tiny_model, write_qwen35

        return write_qwen35(path, tiny_model(moe=arch == "qwen35moe"))
    return write_tiny(path, "Q4_0", arch)


@pytest.mark.parametrize("arch", GGUF_ARCHS)
def test_every_admitted_gguf_architecture_loads_or_is_refused_at_plan_time(tmp_path, arch):
    """Each GGUF architecture the model stage admits, on a CPU: the plan runs it packed (and the engine builds it),
    or dequantized (and transformers loads it), or `kernelfit plan` exits 2 with one line — never a plan that then
    fails in the loader."""
    import subprocess
    import sys

    from kernelfit.errors import PlanError

    path = _tiny_of(tmp_path / f"{arch}.gguf", arch)
    try:
        p = plan(load_profile("cpu-spr-amx"), load_model_spec(str(path)), Preferences())
    except PlanError:
        r = subprocess.run([sys.executable, "-m", "kernelfit", "plan", str(path), "--profile", "cpu-spr-amx"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no GGUF loader" in r.stderr
        return
    if p.quantization.method == "gguf":
        build_lean(path)
    else:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
