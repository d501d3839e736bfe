import itertools

import pytest

from kernelfit.catalog.attention import BACKENDS, AttentionQuery, why_not
from kernelfit.catalog.dtypes import dtype_verdicts
from kernelfit.errors import PlanError, UsageError
from kernelfit.model.spec import load_model_spec
from kernelfit.planner.types import Preferences
from kernelfit.planner.search import plan
from kernelfit.profiles import apply_overrides, load_profile, profile_names

from conftest import CONFIGS, config_path

SMOL = load_model_spec("smollm2-135m")


def P(profile, model=SMOL, **prefs):
    return plan(load_profile(profile), model, Preferences(**prefs))


def rejected(choice, name):
    return next(r.reason for r in choice.rejected if r.name == name)


def test_gtx1060_never_flash_attention_2_and_says_why():
    p = P("gtx1060-6gb")
    assert p.text_attention.value != "flash_attention_2"
    why = rejected(p.text_attention, "flash_attention_2")
    assert "6.1" in why and "8.0" in why
    assert p.dtype.value == "float32"
    assert p.placement.devices == ("cuda:0",)


def test_t4_fp16_and_bf16_rejected_with_reason():
    p = P("t4")
    assert p.text_attention.value != "flash_attention_2" and p.dtype.value == "float16"
    assert "8.0" in rejected(p.dtype, "bfloat16") and "emulation" in rejected(p.dtype, "bfloat16")


def test_a100_flash_attention_2_bf16_and_without_flash_attn_sdpa():
    p = P("a100-80gb")
    assert (p.text_attention.value, p.dtype.value) == ("flash_attention_2", "bfloat16")
    m = apply_overrides(load_profile("a100-80gb"), None, ["flash-attn"])
    q = plan(m, SMOL, Preferences())
    assert q.text_attention.value == "sdpa"
    assert "not installed" in rejected(q.text_attention, "flash_attention_2")


def test_cpus():
    assert (P("cpu-spr-amx").text_attention.value, P("cpu-spr-amx").dtype.value) == ("sdpa", "bfloat16")
    assert (P("cpu-avx2").text_attention.value, P("cpu-avx2").dtype.value) == ("sdpa", "float32")


def test_hopper_prefers_fa3_and_mixed_box_uses_the_a100():
    assert P("h100-sxm").text_attention.value == "flash_attention_3"
    assert P("b200").text_attention.value == "flash_attention_4"
    mixed = P("a100-80gb+t4")
    assert mixed.placement.devices == ("cuda:0",) and mixed.text_attention.value == "flash_attention_2"


def test_pascal_with_a_cu128_torch_falls_back_to_cpu_with_the_build_reason():
    from dataclasses import replace

    m = load_profile("gtx1060-6gb")
    t4sw = load_profile("t4").software
    m = replace(m, software=replace(m.software, torch=t4sw.torch, torch_cuda_arch_list=t4sw.torch_cuda_arch_list))
    p = plan(m, SMOL, Preferences())
    assert p.placement.devices == ("cpu",)
    why = next(r.reason for r in p.placement.rejected if r.name == "cuda:0")
    assert "not compiled for sm_61" in why and "cu126" in why


def test_preferences_that_cannot_run_are_replaced_with_a_reason():
    p = P("t4", dtype="bfloat16", attention="flash_attention_2")
    assert p.dtype.value == "float16" and "requested" in rejected(p.dtype, "bfloat16")
    assert p.text_attention.value == "sdpa" and "requested flash_attention_2 cannot run" in p.text_attention.reason
    assert P("a100-80gb", attention="eager").text_attention.value == "eager"


def test_memory_estimate_and_context():
    small, big = P("t4", context=1024), P("t4", context=8192)
    assert big.memory.kv_cache == 8 * small.memory.kv_cache
    # SmolLM2: 30 layers x 3 KV heads x 64 dims x 2 (K,V) x 2 bytes = 23,040 bytes per token
    assert small.memory.kv_cache == 1024 * 30 * 3 * 64 * 2 * 2
    with pytest.raises(UsageError, match="max_position_embeddings"):
        P("t4", context=100_000)


def test_sliding_window_caps_kv_cache():
    m = load_model_spec(config_path("mistral-7b-v0.1"))
    a, b = P("a100-80gb", m, context=4096), P("a100-80gb", m, context=16384)
    assert a.memory.kv_cache == b.memory.kv_cache  # window 4096 on every layer


def test_eager_materialises_scores():
    m = load_model_spec(config_path("llama-2-7b"))
    eager, sdpa = P("a100-80gb", m, attention="eager"), P("a100-80gb", m, attention="sdpa")
    assert eager.memory.activations > sdpa.memory.activations + 2 * 1024**3  # 32 heads x 4096^2 x (2+4) bytes


def test_70b_on_a_t4_offloads_or_fails_cleanly():
    m = load_model_spec(config_path("llama-2-70b"))
    with pytest.raises(PlanError, match="does not fit"):
        P("t4", m, max_memory={"0": 15.0, "cpu": 8.0})
    p = P("t4", m)  # 64 GiB of host RAM: 4-bit on the CPU, never a choice that cannot run
    assert p.memory.fits and p.quantization.bits == 4
    p = P("2x-rtx3090", load_model_spec(config_path("llama-3.1-8b")), context=65536)
    assert p.placement.device_map in ("auto", {"": "cuda:0"})


def _runs(machine, plan_):
    """The catalog agrees every choice in the plan can run on every device that computes."""
    compute = [d for d in machine.devices if d.torch_device in plan_.placement.devices and
               (d.is_accelerator or not any(x.is_accelerator for x in machine.devices
                                            if x.torch_device in plan_.placement.devices))]
    for d in compute:
        v = {x.dtype: x for x in dtype_verdicts(d, machine.cpu, machine.software)}
        assert v[plan_.dtype.value].runnable, (machine.name, d.name, plan_.dtype.value)
        for sub in plan_.model.sub_models:
            q = AttentionQuery(d, machine.software, plan_.dtype.value, sub.head_dim, frozenset(sub.features))
            assert why_not(BACKENDS[plan_.attention[sub.role].value], q) == [], (machine.name, d.name, sub.role)


@pytest.mark.parametrize("profile", profile_names())
def test_property_every_profile_config_and_dtype(profile):
    machine = load_profile(profile)
    models = [load_model_spec(str(c)) for c in CONFIGS] + [SMOL]
    outcomes = set()
    for model, dtype in itertools.product(models, ("auto", "bfloat16", "float16", "float32")):
        try:
            p = plan(machine, model, Preferences(dtype=dtype))
        except PlanError as exc:
            assert "does not fit" in str(exc)
            outcomes.add("no-fit")
            continue
        _runs(machine, p)
        assert p.memory.fits
        outcomes.add("ok")
    assert "ok" in outcomes  # every machine runs at least SmolLM2


def test_paged_eager_is_known_but_not_for_plain_generate():
    p = P("t4", attention="paged|eager")
    assert p.text_attention.value == "sdpa"
    assert "continuous batching" in p.text_attention.reason


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROFILES = profile_names()
MODELS = [load_model_spec(str(c)) for c in CONFIGS] + [SMOL]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), model=st.sampled_from(MODELS),
       dtype=st.sampled_from(["auto", "bfloat16", "float16", "float32"]),
       quant=st.sampled_from(["auto", "none", "8bit", "4bit"]),
       context=st.integers(1, 32768), batch=st.integers(1, 8),
       attention=st.sampled_from(["auto", "flash_attention_2", "sdpa", "eager", "flex_attention"]))
def test_property_random_requests_never_choose_what_cannot_run(profile, model, dtype, quant, context, batch, attention):
    machine = load_profile(profile)
    limit = model.text.max_positions or context
    try:
        p = plan(machine, model, Preferences(dtype=dtype, quantization=quant, context=min(context, limit),
                                             batch=batch, attention=attention))
    except PlanError as exc:
        assert "does not fit" in str(exc)
        return
    _runs(machine, p)
    assert p.memory.fits and p.memory.total <= p.memory.budget
    assert p.preferences.context == min(context, limit)
