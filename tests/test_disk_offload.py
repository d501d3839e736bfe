"""Disk offload, the last rung of the ladder: weights that fit in neither GPU memory nor RAM stay
on disk (accelerate) while the KV cache, activations and runtime must still fit in memory."""

import json

import pytest
import torch

from kernelfit.planner.hf_args import from_pretrained_kwargs, generate_kwargs
from kernelfit.errors import PlanError
from kernelfit.model.spec import load_model_spec
from kernelfit.planner.types import Preferences
from kernelfit.planner.search import plan
from kernelfit.probe import probe_machine
from kernelfit.profiles import load_profile
from kernelfit.api import load

from conftest import run_cli
from test_health import save_tiny
from tiny_models import tiny_llama

LLAMA7B = load_model_spec("tests/data/model-configs/llama-2-7b.json")


def test_disk_is_the_last_rung_and_keeps_kv_and_activations_in_ram():
    m = load_profile("cpu-avx2")
    p = plan(m, LLAMA7B, Preferences(quantization="none", max_memory={"cpu": 8.0, "disk": 100.0}))
    assert p.placement.device_map == "auto" and "disk" in p.placement.reason
    non_weights = p.memory.total - p.memory.weights
    assert p.offload["disk_gib"] == pytest.approx((p.memory.total - 8 * 2**30) / 2**30, abs=0.01)
    # accelerate's max_memory counts weights only: the CPU entry leaves room for KV cache and activations
    assert p.placement.max_memory["cpu"] / 2**30 == pytest.approx(8 - non_weights / 2**30, abs=0.01)  # bytes
    assert any("on disk" in w for w in p.warnings)
    assert from_pretrained_kwargs(p)["offload_folder"].endswith("offload/llama-2-7b")
    # RAM too small even for the KV cache and activations: disk cannot help
    with pytest.raises(PlanError, match="does not fit"):
        plan(m, LLAMA7B, Preferences(quantization="none", max_memory={"cpu": 1.0, "disk": 100.0}))
    # profiles do not know the disk: no disk offload unless --max-memory disk=... says how much
    with pytest.raises(PlanError, match="does not fit"):
        plan(m, LLAMA7B, Preferences(quantization="none", max_memory={"cpu": 8.0}))
    # a quantized plan that fits in RAM beats disk offload
    assert plan(m, LLAMA7B, Preferences(max_memory={"cpu": 8.0, "disk": 100.0})).offload["disk_gib"] == 0


def test_plan_json_reports_disk_offload():
    r = run_cli("plan", "tests/data/model-configs/llama-2-7b.json", "--profile", "cpu-avx2", "--quantization", "none",
                "--max-memory", "cpu=8GiB,disk=100GiB", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["offload"]["disk_gib"] > 7 and d["from_pretrained"]["offload_folder"]


def test_disk_offloaded_tiny_model_generates_the_same_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(tmp_path / "cache"))
    d = save_tiny(tmp_path / "tiny")  # its tokenizer, with weights big enough (17 MB) to split
    ref = tiny_llama(seed=4, hidden_size=256, intermediate_size=1024, num_hidden_layers=4)
    ref.save_pretrained(d)
    machine = probe_machine()
    full = plan(machine, load_model_spec(str(d)), Preferences(dtype="float32", quantization="none"))
    # room for 5% of the fp32 weights: not even bf16 (half the weights, KV and activations) fits in RAM
    ram = (full.memory.total - 0.95 * full.memory.weights) / 2**30
    loaded = load(str(d), machine=machine, dtype="float32", quantization="none", use_tune_cache=False,
                  max_memory={"cpu": ram, "disk": 1.0})
    assert loaded.plan.offload["disk_gib"] > 0
    assert "disk" in set(loaded.model.hf_device_map.values())
    assert loaded.health.ok  # offloaded weights sit on the meta device by design, not "never loaded"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(loaded.model.generate(ids, **kw), ref.generate(ids, **kw))
