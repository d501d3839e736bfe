"""The CPU decode fast path (one-row steps skip oneDNN) and CPU fp16 as a measured trade-off."""

from dataclasses import replace

import pytest
import torch

from kernelfit.planner.report import plan_dict
from kernelfit.model.spec import load_model_spec
from kernelfit.planner.types import Preferences
from kernelfit.planner.search import plan
from kernelfit.profiles import load_profile
from kernelfit.bench.candidates import candidates
from kernelfit.loader.cpu_decode import install, installed, uninstall

from tiny_models import tiny_llama

SMOL = load_model_spec("smollm2-135m")
EPYC_ISA = ["avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "f16c", "fma"]


def P(profile, **prefs):
    return plan(load_profile(profile), SMOL, Preferences(**prefs))


def cpu_machine(isa):
    m = load_profile("cpu-spr-amx")
    return replace(m, cpu=replace(m.cpu, isa=tuple(isa)))


def test_fast_path_is_planned_only_for_bf16_on_an_avx512_cpu():
    # the dequantized bundled model (--quantization none); as stored it runs packed, without from_pretrained
    assert P("cpu-spr-amx").quantization.method == "gguf" and P("cpu-spr-amx").decode_fastpath is None
    p = P("cpu-spr-amx", quantization="none")
    assert p.dtype.value == "bfloat16" and "skip oneDNN" in p.decode_fastpath
    assert plan_dict(p)["decode_fastpath"]["enabled"] is True
    assert P("cpu-spr-amx", dtype="float32", quantization="none").decode_fastpath is None
    assert P("t4").decode_fastpath is None  # GPU plans: cuBLAS, no oneDNN
    avx2 = plan(cpu_machine(["avx", "avx2", "f16c", "fma"]), SMOL, Preferences(dtype="bfloat16", quantization="none"))
    assert avx2.decode_fastpath is None  # PyTorch does not send bf16 to oneDNN without AVX-512
    assert P("cpu-spr-amx", quantization="8bit").decode_fastpath is None


def test_cpu_fp16_is_a_tradeoff_measured_and_honoured_never_auto():
    zen = cpu_machine(EPYC_ISA)  # avx512_bf16, F16C, no avx512_fp16/amx_fp16 (like this repo's CI box)
    p = plan(zen, SMOL, Preferences())
    assert p.dtype.value == "bfloat16"
    why = next(r.reason for r in p.dtype.rejected if r.name == "float16")
    assert why.startswith("runs, but") and "decode" in why and "prefill" in why
    assert "float16" in {c.dtype for c in candidates(p)}  # bench measures it
    asked = plan(zen, SMOL, Preferences(dtype="float16"))
    assert asked.dtype.value == "float16" and asked.dtype.reason.startswith("requested")
    assert P("cpu-spr-amx").dtype.value == "bfloat16"  # native fp16 (avx512_fp16) still comes after bf16
    no_f16c = cpu_machine(["avx", "avx2", "fma"])
    assert "float16" not in {c.dtype for c in candidates(plan(no_f16c, SMOL, Preferences()))}
    assert plan(no_f16c, SMOL, Preferences(dtype="float16")).dtype.value != "float16"
    # a GPU that only emulates a dtype still has the request replaced
    assert P("t4", dtype="bfloat16").dtype.value == "float16"


class _Spy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.backends.mkldnn.enabled)
        return x


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_one_row_steps_run_without_onednn_and_the_flag_is_restored():
    model = tiny_llama(seed=1).to(torch.bfloat16)
    spy = _Spy()
    model.model.layers[0].register_forward_pre_hook(lambda m, a: spy(a[0]))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert install(model) and installed(model) and install(model)  # idempotent
        spy.seen.clear()
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert spy.seen == [True] + [False] * 5  # prefill (4 rows) keeps oneDNN, each decode step skips it
    assert torch.backends.mkldnn.enabled  # restored after the last step
    assert torch.equal(out, ref)  # same tokens: only the kernel for one-row products changed
    uninstall(model)
    spy.seen.clear()
    with torch.inference_mode():
        model(torch.tensor([[5]]))
    assert spy.seen == [True] and not installed(model)


def test_flag_is_restored_when_the_forward_raises():
    model = tiny_llama(seed=1)
    install(model)
    with pytest.raises(Exception):
        model(torch.tensor([[10_000]]))  # index out of range in the embedding
    assert torch.backends.mkldnn.enabled
    uninstall(model)


def test_load_installs_the_fast_path_the_plan_names(tmp_path):
    from kernelfit.api import load
    from test_health import save_tiny

    machine = cpu_machine(EPYC_ISA)
    machine = replace(machine, software=replace(machine.software, packages={}))  # nothing to quantize with
    d = save_tiny(tmp_path)
    # quantization="none": transformers' load (a bf16 plan of this checkpoint otherwise runs on kernelfit's engine)
    fast = load(str(d), machine=machine, dtype="bfloat16", quantization="none", dispatch=False, use_tune_cache=False)
    assert fast.plan.decode_fastpath and installed(fast.model)
    plain = load(str(d), machine=machine, dtype="float32", dispatch=False, use_tune_cache=False)
    assert plain.plan.decode_fastpath is None and not installed(plain.model)


def test_the_plan_names_the_long_decode_attention_kernel_where_the_dispatcher_uses_it():
    assert "grouped matmuls" in P("cpu-spr-amx").decode_attention
    assert plan_dict(P("cpu-spr-amx"))["decode_fastpath"]["attention"]
    assert P("t4").decode_attention is None
    mistral = load_model_spec("tests/data/model-configs/mistral-7b-v0.1.json")  # sliding window: not handled
    assert plan(load_profile("cpu-spr-amx"), mistral, Preferences()).decode_attention is None
