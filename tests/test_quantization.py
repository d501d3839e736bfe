"""Quantized and too-big models: kernel choice by hardware, least-loss ladder, real CPU loads."""

import pytest
import torch

from kernelfit.planner.report import plan_dict
from kernelfit.planner.hf_args import from_pretrained_kwargs, generate_kwargs
from kernelfit.catalog.quantization import ON_THE_FLY, PREQUANTIZED, why_not_backend
from kernelfit.errors import PlanError
from kernelfit.model.spec import load_model_spec
from kernelfit.planner.types import Preferences
from kernelfit.planner.search import plan
from kernelfit.profiles import load_profile, profile_names

from conftest import CONFIGS, config_path

CC = {"machete": 9.0, "marlin": 8.0, "exllama_v2": 6.0, "gemm": 7.5}


def P(profile, name, **prefs):
    return plan(load_profile(profile), load_model_spec(config_path(name)), Preferences(**prefs))


def test_llama2_7b_on_gtx1060_is_4bit_and_fits_with_the_figures():
    p = P("gtx1060-6gb", "llama-2-7b")
    q = p.quantization
    assert (q.method, q.bits) == ("bitsandbytes", 4) and p.memory.fits
    assert p.placement.devices == ("cuda:0",)
    assert from_pretrained_kwargs(p)["quantization_config"]["bnb_4bit_compute_dtype"] == "float32"  # not fp16 math on sm_61
    d = plan_dict(p)["quantization"]
    assert any(r["method"] == "none" and "does not fit" in r["reason"] for r in d["rejected"])


def test_llama2_7b_on_t4_at_4096_decided_by_the_memory_model():
    p = P("t4", "llama-2-7b", context=4096)
    dense = P("t4", "llama-2-7b", context=4096, quantization="none", device="cpu")  # figures for the dense weights
    assert p.memory.fits and p.memory.total <= p.memory.budget
    assert dense.memory.weights > p.memory.budget * 0.8  # fp16 weights alone nearly fill the T4
    assert p.quantization.method != "none" or p.quantization.kv_bits == 4


@pytest.mark.parametrize("profile,allowed", [("v100-16gb", {"exllama_v2", "torch"}), ("t4", {"exllama_v2", "gemm", "gemv", "torch"}),
                                             ("a100-80gb", {"marlin", "machete"}), ("cpu-spr-amx", {"torch_fused", "torch"})])
def test_awq_backend_by_hardware(profile, allowed):
    p = P(profile, "llama-2-7b-awq")
    q = p.quantization
    assert q.method == "awq" and q.backend in allowed, q
    assert "marlin" not in q.backend or profile == "a100-80gb"
    assert q.install  # gptqmodel is not in these profiles' software sets: the plan says what to install


def test_gptq_on_p100_and_a10_differs_where_faster_is_possible():
    p100, a10 = P("p100-16gb", "mistral-7b-gptq"), P("a10", "mistral-7b-gptq")
    assert p100.quantization.backend == "exllama_v2" and a10.quantization.backend == "marlin"
    rejected = {r.name: r.reason for r in p100.quantization_rejected}
    assert "7.5" in rejected["gptq:marlin"] and "6.0" in rejected["gptq:marlin"]


def test_llama2_70b():
    # 8-bit fits one A100-80GB (65.0 GiB weights + 1.25 KV + 1.0 activations + 0.5 = 67.7 of 75.2), but
    # LLM.int8() decodes ~2x slower than nf4 on CUDA: the automatic ladder takes 4-bit and says why.
    one = P("a100-80gb", "llama-2-70b")
    assert (one.quantization.method, one.quantization.bits, one.quantization.backend) == ("bitsandbytes", 4, "nf4")
    assert 30 < one.memory.weights / 2**30 < 36 and one.memory.fits and one.placement.devices == ("cuda:0",)
    assert one.offload == {"cpu_gib": 0.0, "disk_gib": 0.0}
    slow = {r.name: r.reason for r in one.quantization_rejected}["bitsandbytes:int8"]
    assert "67.70 of 75.20 GiB" in slow and "--quantization 8bit" in slow and "bnb-int8-speed" in slow
    eight = P("a100-80gb", "llama-2-70b", quantization="8bit")  # asked for: kept, with the speed warning
    assert (eight.quantization.method, eight.quantization.bits) == ("bitsandbytes", 8) and eight.memory.fits
    assert 60 < eight.memory.weights / 2**30 < 70 and one.memory.total < 0.6 * eight.memory.total
    assert any("--quantization 4bit" in w for w in eight.warnings)
    two = P("2x-rtx3090", "llama-2-70b")
    assert two.placement.device_map == "auto" and set(two.placement.devices) == {"cuda:0", "cuda:1"}
    assert two.quantization.bits == 4 and two.memory.fits
    with pytest.raises(PlanError, match="does not fit"):
        P("t4", "llama-2-70b", max_memory={"0": 15.0, "cpu": 8.0})


def test_cpu_keeps_8bit_when_it_fits():
    # the decode-speed rule is CUDA's (catalog SLOW_8BIT_DECODE): a CPU keeps least quality loss first
    p = P("cpu-spr-amx", "llama-2-7b", max_memory={"cpu": 10.0})
    assert (p.quantization.method, p.quantization.bits) == ("bitsandbytes", 8)
    assert "bitsandbytes:int8" not in {r.name for r in p.quantization_rejected}


def test_quantization_preference_and_offload():
    assert P("a100-80gb", "llama-2-7b", quantization="4bit").quantization.bits == 4
    p = P("rtx3060-12gb", "llama-3.1-8b", quantization="none", context=8192)
    assert p.offload["cpu_gib"] > 0 and p.placement.device_map == "auto" and "cpu" in p.placement.max_memory


@pytest.mark.parametrize("profile", profile_names())
def test_property_no_backend_the_catalog_rejects(profile):
    m = load_profile(profile)
    for c in CONFIGS:
        for q in ("auto", "8bit", "4bit"):
            try:
                p = plan(m, load_model_spec(str(c)), Preferences(quantization=q))
            except PlanError:
                continue
            qo = p.quantization
            if qo.backend is None:
                continue
            backend = next(b for b in PREQUANTIZED + ON_THE_FLY if b.method == qo.method and b.name == qo.backend)
            compute = [d for d in m.devices if d.torch_device in p.placement.devices and d.is_accelerator] or \
                      [d for d in m.devices if d.torch_device in p.placement.devices]
            for d in compute:
                assert why_not_backend(backend, d, m.software, p.dtype.value, qo.bits, check_package=False) == [], \
                    (profile, c.stem, q, d.name, qo)


# -- real loads on this CPU ----------------------------------------------------------------
def _tiny_dir(tmp_path):
    from test_health import save_tiny

    from tiny_models import tiny_llama

    save_tiny(tmp_path)
    tiny_llama(seed=3, hidden_size=256, intermediate_size=512).save_pretrained(tmp_path)  # wider: quantizers need >=128
    return tmp_path


@pytest.mark.parametrize("quantization,method,min_cosine", [("8bit", "bitsandbytes", 0.999), ("4bit", "bitsandbytes", 0.95)])
def test_bitsandbytes_loads_agree_with_fp32(tmp_path, quantization, method, min_cosine):
    pytest.importorskip("bitsandbytes")
    from kernelfit.api import load

    d = str(_tiny_dir(tmp_path))
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    ref = load(d, dtype="float32", quantization="none").model
    q = load(d, dtype="float32", quantization=quantization)
    assert q.plan.quantization.method == method
    kinds = {type(m).__name__ for m in q.model.modules()}
    assert kinds & {"Linear8bitLt", "Linear4bit"}
    with torch.no_grad():
        a, b = ref(ids).logits.flatten(), q.model(ids).logits.flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > min_cosine


def test_int4_kv_cache_rung_loads_and_generates_with_a_quantized_cache(tmp_path):
    # The ladder's second rung (dense weights + int4 KV cache) must reach generate() as transformers'
    # quanto QuantizedCache, not only appear in the plan.
    pytest.importorskip("optimum.quanto")
    from test_health import save_tiny

    from kernelfit.api import load
    from tiny_models import VOCAB, tiny_llama

    save_tiny(tmp_path)
    tiny_llama(seed=3, hidden_size=256, intermediate_size=512, max_position_embeddings=4096).save_pretrained(tmp_path)
    d = str(tmp_path)
    ref = load(d, quantization="none", context=4096)
    dense = ref.plan.memory
    # a budget 1 MiB short of the dense plan: the full-precision KV cache (4-8 MiB) no longer fits, an int4 one
    # does; no smaller native dtype comes first (the plan's dtype is already this CPU's smallest native one)
    # the same dtype as the dense plan: on a CPU without native bf16 that is float32, which keeps the engine (bf16 rows,
    # half the weights) out of the ladder, as bf16 weights that no longer fit do on one with it
    tight = load(d, context=4096, dtype=ref.plan.dtype.value, max_memory={"cpu": (dense.total - 2**20) / 2**30})
    q = tight.plan.quantization
    assert (q.method, q.kv_bits) == ("none", 4) and tight.plan.memory.kv_cache < dense.kv_cache / 2
    assert tight.plan.dtype.value == ref.plan.dtype.value
    kwargs = generate_kwargs(tight.plan)
    assert kwargs["cache_implementation"] == "quantized" and kwargs["cache_config"]["nbits"] == 4
    ids = torch.randint(3, VOCAB, (1, 300), generator=torch.Generator().manual_seed(0))  # past the 128-token residual
    with torch.no_grad():
        want = ref.model.generate(ids, max_new_tokens=16, do_sample=False)
        out = tight.model.generate(ids, max_new_tokens=16, do_sample=False, return_dict_in_generate=True, **kwargs)
    layer = out.past_key_values.layers[0]
    assert type(layer).__name__ == "QuantoQuantizedLayer" and layer._quantized_keys is not None
    agree = (out.sequences[0, 300:] == want[0, 300:]).float().mean().item()
    assert agree >= 0.75, agree  # int4 keys/values on a random tiny model: most greedy tokens survive


def test_quanto_int8_agrees_with_fp32(tmp_path):
    pytest.importorskip("optimum.quanto")
    from kernelfit.api import load

    d = str(_tiny_dir(tmp_path))
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    ref = load(d, dtype="float32", quantization="none").model
    from dataclasses import replace

    from kernelfit.probe import probe_machine

    machine = probe_machine()
    machine = replace(machine, software=replace(machine.software, packages={
        k: v for k, v in machine.software.packages.items() if k != "bitsandbytes"}))  # quanto is the fallback
    q = load(d, dtype="float32", quantization="8bit", machine=machine)
    assert (q.plan.quantization.method, q.plan.quantization.backend) == ("quanto", "int8")
    with torch.no_grad():
        a, b = ref(ids).logits.flatten(), q.model(ids).logits.flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999



def test_chosen_dtype_is_never_listed_as_rejected():
    for profile, name in (("gtx1060-6gb", "llama-2-7b"), ("t4", "llama-2-7b"), ("a100-80gb", "llama-2-70b")):
        p = P(profile, name)
        assert p.dtype.value not in {r.name for r in p.dtype.rejected}


def test_quantization_matrix_names_the_kernel_each_device_runs():
    from kernelfit.cli.matrix import quantization_matrix

    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in
            quantization_matrix(markdown=True).splitlines()[2:]}
    # columns: profile, device, AWQ 4-bit, GPTQ 4-bit, fp8, bitsandbytes, quanto
    assert rows["gtx1060-6gb"][2:5] == ["exllama_v2", "exllama_v2", "✗"]  # fp16 kept for memory on Pascal
    assert rows["a100-80gb"][2:5] == ["marlin", "marlin", "✗"]  # fp8 needs sm89
    assert rows["h100-sxm"][2:5] == ["machete", "machete", "finegrained_fp8"]
    assert rows["t4"][2:4] == ["exllama_v2", "marlin"]  # AWQ Marlin sm80; gptqmodel's GPTQ Marlin check sm75
    assert rows["cpu-spr-amx"][2:3] == ["torch_fused"] and rows["apple-m2"][5] == "✗"  # no bitsandbytes on MPS
