"""Shared fixtures: model configs, a fake NVML, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

DATA = Path(__file__).parent / "data"
# Tests never read or write the user's autotune cache (a measured winner would change the plans
# they assert on); subprocesses inherit this. The GGUF conversion cache stays shared: it is slow.
os.environ["KERNELFIT_TUNE_CACHE"] = str(Path(tempfile.mkdtemp(prefix="kernelfit-tune-")) / "tune.json")
# the packed tiles of the suite's many temporary GGUF files: a folder of the run's own (engine/tile_cache.py)
os.environ["KERNELFIT_TILE_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernelfit-tiles-")
CONFIGS = sorted((DATA / "model-configs").glob("*.json"))

# Published parameter counts (shared/model-configs/README.md), in billions.
PUBLISHED_B = {"llama-2-7b": 6.74, "llama-2-7b-awq": 6.74, "llama-2-70b": 68.98, "llama-3.1-8b": 8.03,
               "mistral-7b-v0.1": 7.24, "mistral-7b-gptq": 7.24, "qwen2.5-7b": 7.62, "qwen2.5-0.5b": 0.49,
               "llava-1.5-7b": 7.06}


def config_path(name: str) -> str:
    return str(DATA / "model-configs" / f"{name}.json")


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class FakeNVMLError(Exception):
    pass


def fake_nvml(gpus: list[tuple[str, tuple[int, int], float, float]] | None, driver="550.54.15", cuda=12040):
    """A pynvml stand-in. gpus: (name, (major, minor), total GiB, free GiB); None = no driver."""
    gib = 1024**3

    def init():
        if gpus is None:
            raise FakeNVMLError("NVML Shared Library Not Found")

    return SimpleNamespace(
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: driver,
        nvmlSystemGetCudaDriverVersion=lambda: cuda,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h][0].encode(),
        nvmlDeviceGetCudaComputeCapability=lambda h: gpus[h][1],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=int(gpus[h][2] * gib), free=int(gpus[h][3] * gib),
                                                          used=int((gpus[h][2] - gpus[h][3]) * gib)),
    )


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelfit", *args], capture_output=True, text=True, timeout=timeout)


def run_json(*args: str) -> dict:
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def pytest_sessionfinish(session, exitstatus):
    """The run's tile cache (above) removed with it."""
    import shutil

    shutil.rmtree(os.environ["KERNELFIT_TILE_CACHE_DIR"], ignore_errors=True)
