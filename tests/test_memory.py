"""The memory model against reality: accelerate's module sizes for weights, and the measured peak
resident memory of SmolLM2 on this CPU (the check the planner's fits/doesn't-fit rests on)."""

import json
import subprocess
import sys

import pytest

from kernelfit.planner.memory import weight_bytes
from kernelfit.model.spec import load_model_spec

from conftest import config_path

PEAK_SCRIPT = r"""
import json, re, sys, torch
from kernelfit.api import load
ctx, dtype = int(sys.argv[1]), sys.argv[2]
loaded = load("smollm2-135m", dtype=dtype, context=ctx, health_check=False, quantization="none")
ids = torch.randint(100, 40000, (1, ctx))
with torch.inference_mode():
    loaded.model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
# VmHWM: this address space's peak RSS (ru_maxrss would carry the parent's peak across execve)
hwm = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"peak": hwm,
                  "estimate": loaded.plan.memory.peak_rss}))
"""


@pytest.mark.parametrize("name", ["llama-2-7b", "qwen2.5-0.5b", "mistral-7b-v0.1"])
def test_weights_match_accelerate_module_sizes(name):
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_path(name))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    model.tie_weights()  # from_config on the meta device leaves tied embeddings untied
    accelerate_bytes = compute_module_sizes(model, dtype=torch.float16)[""]
    ours = weight_bytes(load_model_spec(config_path(name)).params, "float16")
    assert abs(ours - accelerate_bytes) / accelerate_bytes < 0.01, (ours, accelerate_bytes)


@pytest.mark.parametrize("ctx,dtype", [(2048, "float32"), (2048, "bfloat16")])
def test_estimate_within_15_percent_of_measured_peak(ctx, dtype):
    r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(ctx), dtype], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert abs(d["estimate"] - d["peak"]) / d["peak"] < 0.15, d


def test_the_sequences_that_fit_beside_the_model():
    from kernelfit.planner.memory import MemoryEstimate, sequences_that_fit

    gib = 2**30
    m = MemoryEstimate(weights=4 * gib, kv_cache=gib, activations=gib, overhead=gib, budget=16 * gib)
    assert sequences_that_fit(m, 1) == 10  # 16 - (4 + 1 + 1) = 10 GiB of room, 1 GiB a sequence
    assert sequences_that_fit(m, 2) == 20  # the plan's cache held two: half a GiB each
    assert sequences_that_fit(MemoryEstimate(4 * gib, gib, gib, gib, 6 * gib), 1) == 0
