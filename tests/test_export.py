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


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> str:
    from gguf_tiny import write_tiny

    return str(write_tiny(tmp_path_factory.mktemp("gguf") / "tiny-q4_0.gguf", "Q4_0"))


def test_rocm_exports_for_both_engines_with_their_rocm_rules():
    """vLLM and SGLang both run on MI300X (gfx942): bf16, the engines' own ROCm attention (none named), and the
    quantization names their ROCm builds run (no Marlin on ROCm; SGLang's ROCm AWQ takes fp16 only)."""
    for engine in ("vllm", "sglang"):
        d = _export(engine, config_path("llama-3.1-8b"), "--profile", "mi300x")
        assert _flag(d["argv"], "--dtype") == "bfloat16" and "--attention-backend" not in d["argv"]
        assert any("gfx942" in r for r in d["reasons"])
        a = _export(engine, config_path("llama-2-7b-awq"), "--profile", "mi300x")
        assert _flag(a["argv"], "--quantization") == "awq" and _flag(a["argv"], "--dtype") == "float16"
    assert _flag(_export("vllm", config_path("mistral-7b-gptq"), "--profile", "mi300x")["argv"],
                 "--quantization") == "gptq"
    big = _export("sglang", config_path("llama-2-70b"), "--profile", "mi300x")  # 138 GB of fp16 on one 192 GB GPU
    assert "--tp-size" not in big["argv"] and "--quantization" not in big["argv"]
    r = run_cli("export", "sglang", config_path("mistral-7b-gptq"), "--profile", "mi300x")  # no GPTQ kernel on ROCm
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "gfx942" in r.stderr


def test_sglang_loads_gguf_from_sm80_and_refuses_it_below_and_on_rocm(tiny_gguf):
    for profile in ("a100-80gb", "rtx4090", "h100-sxm"):
        d = _export("sglang", tiny_gguf, "--profile", profile)
        assert d["argv"][4] == tiny_gguf  # the .gguf file itself, after --model-path
        assert _flag(d["argv"], "--load-format") == "gguf" and _flag(d["argv"], "--quantization") == "gguf"
    for profile, says in (("t4", "8.0"), ("mi300x", "ROCm")):  # sgl-kernel's GGUF kernels: CUDA sm80+ only
        r = run_cli("export", "sglang", tiny_gguf, "--profile", profile)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr


@pytest.mark.parametrize("profile,dtype", [("cpu-avx2", "float16"), ("cpu-spr-amx", "bfloat16")])
@pytest.mark.parametrize("model", ["llama-2-7b-awq", "mistral-7b-gptq"])
def test_vllm_cpu_runs_awq_and_gptq_in_a_half_dtype(model, profile, dtype):
    """vLLM's AWQ/GPTQ configs take fp16/bf16 activations only: never float32, even on a CPU without bf16."""
    d = _export("vllm", config_path(model), "--profile", profile)
    assert _flag(d["argv"], "--dtype") == dtype
    assert any("float32" in r for r in d["reasons"])  # says why not float32
    assert _flag(_export("vllm", config_path("llama-2-7b"), "--profile", "cpu-avx2")["argv"], "--dtype") == "float32"


def test_a_float32_request_for_a_packed_checkpoint_is_one_line():
    from kernelfit.errors import UsageError
    from kernelfit.export.engine_args import export
    from kernelfit.model.spec import load_model_spec
    from kernelfit.profiles import load_profile

    with pytest.raises(UsageError, match="float32") as e:
        export("vllm", load_profile("cpu-avx2"), load_model_spec(config_path("llama-2-7b-awq")), dtype="float32")
    assert "\n" not in str(e.value)


def test_engine_rules_cite_defined_sources():
    from kernelfit.catalog.engines import cited
    from kernelfit.catalog.sources import SOURCES

    assert cited() and not cited() - set(SOURCES)


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
def test_sglangs_own_parser_accepts_every_exported_command_line(capsys, tiny_gguf):
    """Every exported SGLang argv (every reference profile x model config, and a GGUF file, that SGLang runs on)
    goes through SGLang 0.5.23's own ServerArgs: its argparse choices and its __post_init__ checks. The ROCm
    exports (MI300X) and the GGUF ones are among them."""
    import os
    import subprocess
    import sys

    from kernelfit.cli import main

    argvs, where = [], []
    for profile in profile_names():
        for cfg in [*CONFIGS, tiny_gguf]:
            if main(["export", "sglang", str(cfg), "--profile", profile, "--json"]) == 0:
                argvs.append(json.loads(capsys.readouterr().out)["argv"])
                where.append(profile)
            capsys.readouterr()
    assert len(argvs) > 100 and where.count("mi300x") == len(CONFIGS) - 1  # all but GPTQ (no ROCm kernel)
    assert sum(_flag(a, "--load-format") == "gguf" for a in argvs) >= 10  # every sm80+ profile
    _on_rocm_list("sglang", [a for a, p in zip(argvs, where) if p == "mi300x"])
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
import torch
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
        if item["packed"]:  # the checkpoint's own method: vLLM checks --dtype against its activation dtypes
            from vllm.model_executor.layers.quantization import get_quantization_config
            takes = get_quantization_config(ea.quantization or item["packed"]).get_supported_act_dtypes()
            if getattr(torch, {"half": "float16"}.get(ea.dtype, ea.dtype)) not in takes:
                raise ValueError(f"{ea.dtype} is not supported for {item['packed']}: {takes}")
    except (Exception, SystemExit) as exc:
        bad.append([argv, f"{type(exc).__name__}: {str(exc)[:300]}"])
print(json.dumps(bad))
"""


@pytest.mark.skipif(not (VLLM_PY.parent.parent / ".kernelfit-installed").exists(),
                    reason="make test installs vLLM's CPU build into .engines/vllm")
def test_vllms_own_parser_and_configs_accept_every_exported_command_line(capsys, tiny_gguf):
    """Every exported vLLM argv goes through vLLM 0.32's EngineArgs parser, then the config classes that validate
    what the parser lets through (--attention-backend, --kv-cache-dtype, parallel sizes); a --quantization
    outside vLLM's core list must name the plugin that provides it; for an AWQ/GPTQ/fp8 checkpoint --dtype must
    be one its quantization config takes (the check vLLM makes when it loads: float32 fails on CPU). The ROCm
    (MI300X) and CPU exports are among them; the ROCm ones name only quantization methods vLLM's ROCm platform
    lists."""
    import os
    import subprocess

    from kernelfit.cli import main
    from kernelfit.model.spec import load_model_spec

    items, where = [], []
    for profile in profile_names():
        for cfg in [*CONFIGS, tiny_gguf]:
            if main(["export", "vllm", str(cfg), "--profile", profile, "--json"]) == 0:
                d = json.loads(capsys.readouterr().out)
                q = load_model_spec(str(cfg)).quantization
                items.append({"argv": d["argv"], "plugins": [w for w in d["warnings"] if "plugin" in w],
                              "packed": q.method if q is not None and q.prequantized else None})
                where.append(profile)
            capsys.readouterr()
    assert len(items) > 100 and where.count("mi300x") == len(CONFIGS)
    assert sum(bool(i["packed"]) for i, p in zip(items, where) if p.startswith("cpu-")) == 4  # AWQ + GPTQ, 2 CPUs
    _on_rocm_list("vllm", [i["argv"] for i, p in zip(items, where) if p == "mi300x"])
    r = subprocess.run([str(VLLM_PY), "-c", VLLM_CHECK], input=json.dumps(items), capture_output=True, text=True,
                       env=dict(os.environ, VLLM_TARGET_DEVICE="cpu"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, bad[:3]
    print(f"\nvLLM's EngineArgs and configs accepted all {len(items)} exported command lines")


def _rocm_names(engine: str) -> set[str]:
    """The quantization names the installed engine registers on ROCm, read from its own source (its ROCm module
    cannot be imported without an AMD GPU): vLLM's RocmPlatform.supported_quantization; SGLang's
    BASE_QUANTIZATION_METHODS (what it registers on every platform, HIP included)."""
    import ast

    if engine == "vllm":
        path = next(VLLM_PY.parent.parent.glob("lib/python3*/site-packages/vllm/platforms/rocm.py"))
        target = "supported_quantization"
    else:
        path = SGLANG_DIR / "sglang" / "srt" / "layers" / "quantization" / "__init__.py"
        target = "BASE_QUANTIZATION_METHODS"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.AnnAssign, ast.Assign)):
            names = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(getattr(t, "id", None) == target for t in names):
                value = ast.literal_eval(node.value) if engine == "vllm" else [k.value for k in node.value.keys]
                return set(value)
    raise AssertionError(f"{target} not found in {path}")


def _on_rocm_list(engine: str, rocm_argvs: list[list[str]]) -> None:
    """Every --quantization exported for the ROCm profile is one the engine registers on ROCm."""
    names = _rocm_names(engine)
    used = {_flag(a, "--quantization") for a in rocm_argvs} - {None}
    assert used and used <= names, (used, names)
