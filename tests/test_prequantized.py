"""AWQ / GPTQ checkpoints built in the tests: real loads through kernelfit.load on this CPU.

Without gptqmodel: --allow-dequantize unpacks them (kernelfit's own pure-torch unpacker) and
the output must match the dequantized reference exactly; without the flag the load refuses with
the install command. With gptqmodel (installed by `make test`): the plan's CPU kernel runs the
packed AWQ weights and its greedy output must agree with the reference.
"""

from dataclasses import replace
from importlib.util import find_spec

import pytest
import torch

from kernelfit.planner.hf_args import from_pretrained_kwargs, generate_kwargs
from kernelfit.errors import UsageError
from kernelfit.model.spec import load_model_spec
from kernelfit.probe import probe_machine
from kernelfit.loader.dequantize import awq_gemm_weight, gptq_weight
from kernelfit.api import load

from quantized_checkpoints import (GROUP, pack_awq_cols, pack_awq_cols_plain, pack_gptq_rows, quantize,
                                   reference_model, save_tiny_quantized)

HAS_GPTQMODEL = find_spec("gptqmodel") is not None
HAS_OPTIMUM = find_spec("optimum") is not None and find_spec("optimum.gptq") is not None
IDS = torch.tensor([[5, 17, 33, 60, 8, 41]])


def machine_without(*packages):
    m = probe_machine()
    pk = {k: v for k, v in m.software.packages.items() if k not in packages}
    return replace(m, software=replace(m.software, packages=pk))


def greedy(model, n=12):
    with torch.inference_mode():
        return model.generate(IDS, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)[0, IDS.shape[1]:]


def logits(model):
    with torch.inference_mode():
        return model(IDS).logits.float()


@pytest.fixture(scope="module")
def awq(tmp_path_factory):
    d = tmp_path_factory.mktemp("awq")
    return d, save_tiny_quantized(d, "awq")


@pytest.fixture(scope="module")
def gptq(tmp_path_factory):
    d = tmp_path_factory.mktemp("gptq")
    return d, save_tiny_quantized(d, "gptq")


def test_unpackers_invert_the_packers():
    w = torch.randn(96, 64)
    q, zero, scale, dense = quantize(w)
    got = awq_gemm_weight(pack_awq_cols(q.t().contiguous()), pack_awq_cols(zero.t().contiguous()),
                          scale.t().contiguous(), GROUP)
    assert got.shape == (96, 64) and torch.equal(got.float(), dense.half().float())
    q, zero, scale, dense = quantize(w, sym=True)
    got = gptq_weight(pack_gptq_rows(q.t().contiguous()), pack_awq_cols_plain(zero.t().contiguous() - 1),
                      scale.t().contiguous(), None, GROUP, 4, v2=False)
    assert torch.equal(got.float(), dense.half().float())
    # a wrong order of the AWQ nibbles must not pass
    wrong = awq_gemm_weight(pack_awq_cols(q.t().contiguous()).flip(-1), pack_awq_cols(zero.t().contiguous()),
                            scale.t().contiguous(), GROUP)
    assert not torch.equal(wrong.float(), dense.half().float())


@pytest.mark.skipif(not HAS_GPTQMODEL, reason="gptqmodel is not installed (pip install gptqmodel --no-build-isolation)")
def test_awq_unpacker_agrees_with_gptqmodel():
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    w = torch.randn(128, 64)
    q, zero, scale, _ = quantize(w)
    qw, qz, sc = pack_awq_cols(q.t().contiguous()), pack_awq_cols(zero.t().contiguous()), scale.t().contiguous()
    theirs = dequantize_gemm(qw, qz, sc, 4, GROUP).t()
    assert torch.allclose(awq_gemm_weight(qw, qz, sc, GROUP).float(), theirs.float(), atol=1e-3)


def test_awq_plan_names_the_cpu_kernel_and_what_to_install(awq):
    d, _ = awq
    spec = load_model_spec(str(d))
    assert spec.quantization.method == "awq"
    from kernelfit.planner.search import plan
    from kernelfit.planner.types import Preferences

    # kernelfit's engine runs it by default (tests/test_packed_checkpoints_engine.py); through transformers:
    p = plan(machine_without("gptqmodel"), spec, Preferences(quantization="none"))
    assert p.quantization.backend == "torch_fused" and "gptqmodel" in p.quantization.install
    assert from_pretrained_kwargs(p)["quantization_config"]["backend"] == "torch_fused_awq"  # transformers' name
    with pytest.raises(UsageError, match="pip install gptqmodel"):
        load(str(d), machine=machine_without("gptqmodel"), quantization="none", use_tune_cache=False)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_allow_dequantize_loads_and_matches_the_reference(method, awq, gptq):
    d, reference = awq if method == "awq" else gptq
    loaded = load(str(d), machine=machine_without("gptqmodel"), allow_dequantize=True, dtype="float32",
                  quantization="none", use_tune_cache=False)
    assert loaded.plan.quantization.method == "dequantize"
    assert any("not installed" in r.reason for r in loaded.plan.quantization_rejected)
    assert loaded.health.ok
    ref = reference_model(reference)
    a, b = logits(loaded.model), logits(ref)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert torch.equal(greedy(loaded.model), greedy(ref))


BIG = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4}


def test_allow_dequantize_requantizes_when_the_dense_model_does_not_fit(tmp_path):
    from kernelfit.planner.types import Preferences
    from kernelfit.planner.search import plan

    reference = save_tiny_quantized(tmp_path, "awq", **BIG)
    machine = machine_without("gptqmodel")
    spec = load_model_spec(str(tmp_path))
    dense = plan(machine, spec, Preferences(allow_dequantize=True, dtype="bfloat16", quantization="none"))
    assert dense.quantization.method == "dequantize"
    ram = (dense.memory.total - dense.memory.weights / 4) / 2**30  # the dense weights no longer fit; 8-bit does
    loaded = load(str(tmp_path), machine=machine, allow_dequantize=True, dtype="bfloat16", max_memory={"cpu": ram},
                  quantization="none", use_tune_cache=False)
    q = loaded.plan.quantization
    assert (q.method, q.bits, q.dequantize_first) == ("bitsandbytes", 8, True) and "unpacked, then" in q.reason
    assert any("dequantized" in r.reason and "does not fit" in r.reason for r in loaded.plan.quantization_rejected)
    assert loaded.health.ok  # bitsandbytes modules really replaced the linears
    ref = reference_model(reference, torch.bfloat16, **BIG)
    a, b = logits(loaded.model), logits(ref)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert cos > 0.999, cos


def test_awq_on_a_gtx1060_without_gptqmodel_is_requantized_for_the_gpu():
    from kernelfit.planner.types import Preferences
    from kernelfit.planner.search import plan
    from kernelfit.profiles import load_profile

    spec = load_model_spec("tests/data/model-configs/llama-2-7b-awq.json")
    m = load_profile("gtx1060-6gb")
    p = plan(m, spec, Preferences(allow_dequantize=True))
    q = p.quantization
    assert p.placement.devices == ("cuda:0",) and p.memory.fits
    assert (q.method, q.bits, q.dequantize_first) == ("bitsandbytes", 4, True)
    assert any("not installed" in r.reason for r in p.quantization_rejected)  # exllama_v2 would need gptqmodel
    # without the flag the packed kernel is planned, with what to install
    assert plan(m, spec, Preferences()).quantization.backend == "exllama_v2"


PACKED_NEEDS = {"awq": HAS_GPTQMODEL, "gptq": HAS_GPTQMODEL and HAS_OPTIMUM}


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_runs_packed_on_gptqmodel_and_agrees_with_the_reference(method, awq, gptq):
    if not PACKED_NEEDS[method]:
        pytest.skip("packed AWQ/GPTQ loads need gptqmodel (and optimum for GPTQ): "
                    "pip install gptqmodel --no-build-isolation optimum")
    d, reference = awq if method == "awq" else gptq
    loaded = load(str(d), quantization="none", use_tune_cache=False)  # auto: kernelfit's engine
    q = loaded.plan.quantization
    assert (q.method, q.backend) == (method, "torch_fused")
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert type(layer).__module__.startswith("gptqmodel") and hasattr(layer, "qweight")  # packed, not dense
    ref = reference_model(reference, loaded.model.dtype)
    a, b = logits(loaded.model), logits(ref)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert cos > 0.9999, cos  # measured in bf16: AWQ 0.99997, GPTQ 0.99998
    # greedy next-token agreement along the reference's own greedy continuation (teacher-forced, so
    # one flipped near-tie in a random tiny model does not derail every later token)
    seq = torch.cat([IDS, greedy(ref).unsqueeze(0)], dim=1)
    with torch.inference_mode():
        mine, theirs = loaded.model(seq).logits.argmax(-1), ref(seq).logits.argmax(-1)
    agree = (mine[0, IDS.shape[1] - 1:] == theirs[0, IDS.shape[1] - 1:]).float().mean().item()
    assert agree >= 0.9, agree  # measured in bf16: 12 of 13 positions for AWQ and for GPTQ


def test_gptq_plan_asks_for_optimum_too():
    from kernelfit.planner.types import Preferences
    from kernelfit.planner.search import plan
    from kernelfit.profiles import load_profile

    spec = load_model_spec("tests/data/model-configs/mistral-7b-gptq.json")
    p = plan(load_profile("a10"), spec, Preferences())
    assert "gptqmodel" in p.quantization.install and "optimum" in p.quantization.install



def test_fp8_checkpoint_plans_native_fp8_only_from_sm89_and_dequantizes_elsewhere(tmp_path):
    import json

    from kernelfit.errors import PlanError
    from kernelfit.planner.types import Preferences
    from kernelfit.planner.search import plan
    from kernelfit.profiles import load_profile

    cfg = json.loads(open("tests/data/model-configs/llama-3.1-8b.json").read())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load_model_spec(str(tmp_path / "config.json"))
    h100 = plan(load_profile("h100-sxm"), spec, Preferences())
    assert (h100.quantization.method, h100.quantization.backend) == ("fp8", "finegrained_fp8")
    assert 7.5 < h100.memory.weights / 2**30 < 9  # one byte per weight (+ embeddings in bf16)
    with pytest.raises(PlanError):  # an A100 has no fp8 tensor cores and nothing else runs fp8 weights
        plan(load_profile("a100-80gb"), spec, Preferences())
    a100 = plan(load_profile("a100-80gb"), spec, Preferences(allow_dequantize=True))
    assert a100.quantization.method == "dequantize" and a100.dtype.value == "bfloat16"
    why = next(r.reason for r in a100.quantization_rejected if r.name.startswith("fp8"))
    assert "compute capability >= 8.9" in why


def test_fp8_checkpoint_loads_dequantized_on_this_cpu(tmp_path):
    reference = save_tiny_quantized(tmp_path, "fp8")
    loaded = load(str(tmp_path), allow_dequantize=True, dtype="float32", use_tune_cache=False)
    assert loaded.plan.quantization.method == "dequantize" and loaded.health.ok
    ref = reference_model(reference)
    assert torch.allclose(logits(loaded.model), logits(ref), atol=1e-4)
    assert torch.equal(greedy(loaded.model), greedy(ref))
