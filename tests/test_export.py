"""`kernelfit export`: engine command lines from the plan's hardware rules, or a one-line refusal."""

from __future__ import annotations

import json

import pytest

from conftest import CONFIGS, config_path, run_cli

from kernelfit.catalog.engines import FACTS
from kernelfit.profiles import profile_names


def _export(*args) -> dict:
    r = run_cli("export", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_70b_on_two_3090s_plans_tensor_parallel_and_a_way_to_fit():
    d = _export("vllm", config_path("llama-2-70b"), "--profile", "2x-rtx3090")
    assert _flag(d["argv"], "--tensor-parallel-size") == "2"
    assert _flag(d["argv"], "--quantization") == "bitsandbytes"
    assert any("vllm-bnb-plugin" in w for w in d["warnings"])  # the plugin vLLM needs for it, named
    s = _export("sglang", config_path("llama-2-70b"), "--profile", "2x-rtx3090")
    assert _flag(s["argv"], "--tp-size") == "2" and s["argv"][:3] == ["python", "-m", "sglang.launch_server"]


@pytest.mark.parametrize("engine,backend", [("vllm", "TRITON_ATTN"), ("sglang", "triton")])
def test_t4_gets_half_and_a_non_flash_attention_backend(engine, backend):
    d = _export(engine, config_path("llama-2-7b"), "--profile", "t4")
    assert _flag(d["argv"], "--dtype") == "half"
    assert _flag(d["argv"], "--attention-backend") == backend
    assert "VLLM_ATTENTION_BACKEND" not in d["env"]  # deprecated and silently ignored by vLLM now


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("profile", ["gtx1060-6gb", "p100-16gb", "v100-16gb"])
def test_engines_refuse_gpus_their_builds_do_not_run_on(engine, profile):
    r = run_cli("export", engine, config_path("llama-2-7b"), "--profile", profile)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "cannot run" in r.stderr and "kernelfit serve" in r.stderr


def test_ampere_names_marlin_kernels_and_bf16_models_keep_bf16():
    assert _flag(_export("vllm", config_path("llama-2-7b-awq"), "--profile", "a100-80gb")["argv"],
                 "--quantization") == "awq_marlin"
    assert _flag(_export("sglang", config_path("mistral-7b-gptq"), "--profile", "a10")["argv"],
                 "--quantization") == "gptq_marlin"
    assert _flag(_export("vllm", config_path("qwen2.5-7b"), "--profile", "a100-80gb")["argv"], "--dtype") == "bfloat16"


def test_a_cpu_machine_gets_vllms_cpu_build():
    d = _export("vllm", config_path("qwen2.5-0.5b"), "--profile", "cpu-spr-amx")
    assert d["env"]["VLLM_CPU_KVCACHE_SPACE"] and _flag(d["argv"], "--dtype") == "bfloat16"
    r = run_cli("export", "sglang", config_path("qwen2.5-0.5b"), "--profile", "cpu-spr-amx")
    assert r.returncode == 2 and "kernelfit serve" in r.stderr


def test_every_profile_and_model_exports_or_refuses_in_one_line(capsys):
    from kernelfit.cli import main

    known = {e: {v for v in f.flags.values()} for e, f in FACTS.items()}
    done = refused = 0
    for engine in FACTS:
        for profile in profile_names():
            for cfg in CONFIGS:
                rc = main(["export", engine, str(cfg), "--profile", profile, "--json"])
                out = capsys.readouterr()
                if rc == 0:
                    d = json.loads(out.out)
                    flags = [a for a in d["argv"] if a.startswith("--")]
                    assert set(flags) <= known[engine] | {"--model-path"}, flags
                    assert len(flags) == len(set(flags))  # each flag once
                    done += 1
                else:
                    assert rc == 2 and len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err
                    refused += 1
    print(f"\nexport: {done} command lines, {refused} refusals over {len(profile_names())} profiles x "
          f"{len(CONFIGS)} models x {len(FACTS)} engines")
    assert done > refused > 0


SGLANG_DIR = __import__("pathlib").Path(__file__).parent.parent / ".engines" / "sglang"
PARSE_ALL = """
import argparse, json, sys
from sglang.srt.server_args import ServerArgs
bad = []
for argv in json.load(sys.stdin):
    parser = argparse.ArgumentParser(exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    try:
        ServerArgs.from_cli_args(parser.parse_args(argv[3:]))  # after `python -m sglang.launch_server`
    except (Exception, SystemExit) as exc:
        bad.append([argv, f"{type(exc).__name__}: {exc}"])
print(json.dumps(bad))
"""


@pytest.mark.skipif(not (SGLANG_DIR / ".kernelfit-installed").exists(), reason="make test installs SGLang's parser")
def test_sglangs_own_parser_accepts_every_exported_command_line(capsys):
    """Every exported SGLang argv (every reference profile x model config that SGLang runs on) goes through
    SGLang 0.5.23's own ServerArgs: its argparse choices and its __post_init__ checks."""
    import os
    import subprocess
    import sys

    from kernelfit.cli import main

    argvs = []
    for profile in profile_names():
        for cfg in CONFIGS:
            if main(["export", "sglang", str(cfg), "--profile", profile, "--json"]) == 0:
                argvs.append(json.loads(capsys.readouterr().out)["argv"])
            capsys.readouterr()
    assert len(argvs) > 100
    env = dict(os.environ, PYTHONPATH=str(SGLANG_DIR))
    r = subprocess.run([sys.executable, "-c", PARSE_ALL], input=json.dumps(argvs), capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, bad[:3]
    print(f"\nSGLang's ServerArgs accepted all {len(argvs)} exported command lines")


VLLM_PY = __import__("pathlib").Path(__file__).parent.parent / ".engines" / "vllm" / "bin" / "python"
VLLM_CHECK = """
import json, sys
from vllm.config import AttentionConfig, CacheConfig, ParallelConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser
bad = []
for item in json.load(sys.stdin):
    argv, plugins = item["argv"], item["plugins"]
    try:
        args = ["--model", argv[2], *argv[3:]]  # `vllm serve MODEL ...` is EngineArgs with --model
        ea = EngineArgs.from_cli_args(EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(args))
        if ea.attention_backend is not None:
            AttentionConfig(backend=ea.attention_backend)
        CacheConfig(cache_dtype=ea.kv_cache_dtype, gpu_memory_utilization=ea.gpu_memory_utilization)
        ParallelConfig(tensor_parallel_size=ea.tensor_parallel_size, pipeline_parallel_size=ea.pipeline_parallel_size)
        if ea.quantization is not None and ea.quantization not in QUANTIZATION_METHODS and not plugins:
            raise ValueError(f"unknown quantization {ea.quantization!r} and no plugin named")
    except (Exception, SystemExit) as exc:
        bad.append([argv, f"{type(exc).__name__}: {str(exc)[:300]}"])
print(json.dumps(bad))
"""


@pytest.mark.skipif(not (VLLM_PY.parent.parent / ".kernelfit-installed").exists(),
                    reason="make test installs vLLM's CPU build into .engines/vllm")
def test_vllms_own_parser_and_configs_accept_every_exported_command_line(capsys):
    """Every exported vLLM argv goes through vLLM 0.32's EngineArgs parser, then the config classes that validate
    what the parser lets through (--attention-backend, --kv-cache-dtype, parallel sizes); a --quantization
    outside vLLM's core list must name the plugin that provides it."""
    import os
    import subprocess

    from kernelfit.cli import main

    items = []
    for profile in profile_names():
        for cfg in CONFIGS:
            if main(["export", "vllm", str(cfg), "--profile", profile, "--json"]) == 0:
                d = json.loads(capsys.readouterr().out)
                items.append({"argv": d["argv"], "plugins": [w for w in d["warnings"] if "plugin" in w]})
            capsys.readouterr()
    assert len(items) > 100
    r = subprocess.run([str(VLLM_PY), "-c", VLLM_CHECK], input=json.dumps(items), capture_output=True, text=True,
                       env=dict(os.environ, VLLM_TARGET_DEVICE="cpu"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, bad[:3]
    print(f"\nvLLM's EngineArgs and configs accepted all {len(items)} exported command lines")
