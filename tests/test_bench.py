"""kernelfit bench and the autotune cache: measured winners, validated before they are trusted."""

import json
from dataclasses import replace

import pytest

from kernelfit.planner.hf_args import from_pretrained_kwargs, generate_kwargs
from kernelfit.model.spec import load_model_spec
from kernelfit.planner.types import Preferences
from kernelfit.planner.search import plan
from kernelfit.probe import probe_machine
from kernelfit.bench.cache import TuneCacheWarning, cached_winner, save_winner, tune_key, with_cached_winner

from conftest import config_path, run_cli
from test_health import save_tiny


@pytest.fixture
def tune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELFIT_TUNE_CACHE", str(tmp_path / "tune.json"))
    return tmp_path / "tune.json"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def static_plan(model="smollm2-135m", **prefs):
    return plan(probe_machine(), load_model_spec(model), Preferences(**prefs))


WINNER = {"attention": "eager", "dtype": "float32", "cache": "static", "compile": False,
          "prefill_tokens_per_s": 900.0, "decode_tokens_per_s": 30.0}


def test_cached_winner_round_trip_and_apply(tune_cache):
    p = static_plan()
    assert cached_winner(p) is None
    save_winner(p.machine, p.model, p.placement.devices, WINNER, [WINNER])
    tuned = with_cached_winner(p)
    assert (tuned.text_attention.value, tuned.dtype.value) == ("eager", "float32")
    assert "measured fastest" in tuned.text_attention.reason
    assert generate_kwargs(tuned)["cache_implementation"] == "static"
    assert {r.name for r in tuned.text_attention.rejected} >= {p.text_attention.value}


def test_explicit_preferences_are_not_overridden(tune_cache):
    p = static_plan()
    save_winner(p.machine, p.model, p.placement.devices, WINNER, [])
    asked = static_plan(dtype="float16")  # honoured on every x86 CPU (native, or a trade-off the plan keeps when asked;
    # bf16 is refused where it is not native: planner/dtype.py)
    assert asked.dtype.value == "float16" and with_cached_winner(asked).dtype.value == "float16"


def test_corrupt_cache_is_ignored_with_a_warning(tune_cache):
    tune_cache.write_text("{not json")
    with pytest.warns(TuneCacheWarning, match="ignoring the tune cache"):
        assert cached_winner(static_plan()) is None


def test_stale_winner_is_not_trusted(tune_cache):
    p = static_plan()
    save_winner(p.machine, p.model, p.placement.devices, dict(WINNER, attention="flash_attention_2"), [])
    with pytest.warns(TuneCacheWarning, match="no longer runs here"):
        assert with_cached_winner(p).text_attention.value == p.text_attention.value


def test_key_changes_with_software_and_model():
    p = static_plan()
    m2 = replace(p.machine, software=replace(p.machine.software, torch="2.99.0+cpu"))
    assert tune_key(p.machine, p.model, p.placement.devices) != tune_key(m2, p.model, p.placement.devices)
    q = load_model_spec("tests/data/model-configs/qwen2.5-0.5b.json")
    assert tune_key(p.machine, p.model, ("cpu",)) != tune_key(p.machine, q, ("cpu",))


def test_bench_measures_only_runnable_candidates_and_caches_the_winner(tiny_dir, tune_cache):
    r = run_cli("bench", str(tiny_dir), "--context", "16", "--new-tokens", "4", "--trials", "1", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    names = {(c["attention"], c["dtype"], c["cache"]) for c in d["candidates"]}
    assert all(a in ("sdpa", "eager") for a, _, _ in names)  # never a backend the catalog rejects on a CPU
    assert {c for _, _, c in names} == {"dynamic", "static"}
    ok = [c for c in d["candidates"] if c["error"] is None]
    assert ok and all(c["prefill_tokens_per_s"] > 0 and c["decode_tokens_per_s"] > 0 for c in ok)
    # the static plan runs the checkpoint on kernelfit's engine; transformers' own configurations are measured too
    assert d["chosen"] in d["candidates"] and d["static_plan"]["quantization"] == "engine"
    assert {c["quantization"] for c in ok} == {"engine", "none"}
    saved = json.loads(tune_cache.read_text())
    assert len(saved["entries"]) == 1
    entry = next(iter(saved["entries"].values()))
    assert entry["winner"]["attention"] == d["chosen"]["attention"]
    p = run_cli("plan", str(tiny_dir), "--json")
    assert json.loads(p.stdout)["tuned"]["cache"] == d["chosen"]["cache"]
    p = run_cli("plan", str(tiny_dir), "--json", "--no-cache")
    assert json.loads(p.stdout)["tuned"] is None


def test_run_loads_the_cached_winner_and_no_cache_really_ignores_it(tune_cache):
    p = static_plan()
    save_winner(p.machine, p.model, p.placement.devices, WINNER, [WINNER])
    args = ("run", "--prompt", "What is the capital of France?", "--max-new-tokens", "4")
    # the last stderr line names what was really loaded: (dtype, attention, devices)
    tuned = run_cli(*args, timeout=300)
    assert tuned.returncode == 0, tuned.stderr
    assert "(float32, eager, cpu)" in tuned.stderr.splitlines()[-1]
    plain = run_cli(*args, "--no-cache", timeout=300)
    # the static plan runs the bundled GGUF file packed (kernelfit's runner)
    assert p.quantization.method == "gguf"
    assert f"({p.dtype.value}, packed runner, cpu)" in plain.stderr.splitlines()[-1]
    assert "measured fastest" not in plain.stderr


def test_bench_measures_the_8bit_the_plan_passed_over_for_speed():
    # the plan prefers nf4 to LLM.int8 on CUDA from published figures; bench measures the 8-bit that also fits
    from kernelfit.profiles import load_profile
    from kernelfit.bench.candidates import quantization_candidates

    one = plan(load_profile("a100-80gb"), load_model_spec("tests/data/model-configs/llama-2-70b.json"), Preferences())
    assert one.quantization.bits == 4 and one.quantization.passed_over_bits == 8
    assert quantization_candidates(one) == ["bitsandbytes-8bit"]  # quanto is not in the profile's software
    two = plan(load_profile("2x-rtx3090"), load_model_spec("tests/data/model-configs/llama-2-70b.json"), Preferences())
    assert two.quantization.passed_over_bits is None and quantization_candidates(two) == []  # 8-bit does not fit there


def test_a_model_that_must_be_quantized_sweeps_the_quantizers_and_the_winner_is_applied(tiny_dir, tune_cache):
    from kernelfit.bench.candidates import candidates, static_candidate
    from kernelfit.bench.measure import bench
    from kernelfit.bench.cache import apply_winner

    spec = load_model_spec(str(tiny_dir))
    p = plan(probe_machine(), spec, Preferences(quantization="8bit", dtype="float32"))
    assert (p.quantization.method, p.quantization.bits) == ("bitsandbytes", 8)
    cands = candidates(p)
    quants = {c.quantization for c in cands}
    assert quants == {"bitsandbytes-8bit", "quanto-8bit", "bitsandbytes-4bit", "quanto-4bit"}
    assert static_candidate(p) in cands
    results, winner = bench(p, context=16, new_tokens=4, trials=1, progress=lambda m: None)
    measured = {r.candidate.quantization: r for r in results}
    assert all(measured[q].error is None and measured[q].decode_tokens_per_s > 0 for q in quants), \
        {q: measured[q].error for q in quants}
    # a winner with another quantizer re-plans with it (llama-2-7b must be quantized to fit an RTX 3060)...
    from kernelfit.profiles import load_profile

    auto = plan(load_profile("rtx3060-12gb"), load_model_spec("tests/data/model-configs/llama-2-7b.json"), Preferences())
    assert auto.quantization.method == "bitsandbytes"
    quanto = dict(WINNER, attention=auto.text_attention.value, dtype=auto.dtype.value, quantization="quanto-8bit")
    tuned = apply_winner(auto, quanto)
    assert (tuned.quantization.method, tuned.quantization.bits) == ("quanto", 8) and tuned.tuned["quantization"] == "quanto-8bit"
    # ...but a model that fits unquantized is never quantized by a cached result (on this CPU it plans the engine,
    # which reads the checkpoint's own bf16 weights)
    fits = static_plan(str(tiny_dir))
    kept = apply_winner(fits, dict(quanto, attention=fits.text_attention.value, dtype=fits.dtype.value)).quantization
    assert kept.method in ("none", "engine") and kept.bits is None


def test_a_compiled_winner_is_loaded_compiled(tiny_dir, tune_cache):
    from kernelfit.api import load

    p = static_plan(str(tiny_dir))
    w = dict(WINNER, attention=p.text_attention.value, dtype=p.dtype.value, compile=True)
    save_winner(p.machine, p.model, p.placement.devices, w, [w])
    loaded = load(str(tiny_dir), health_check=False)
    assert loaded.plan.tuned["compile"] is True
    assert hasattr(loaded.model.forward, "_torchdynamo_orig_callable")  # what torch.compile returns
    plain = load(str(tiny_dir), health_check=False, use_tune_cache=False, quantization="none")
    assert not hasattr(plain.model.forward, "_torchdynamo_orig_callable")


def test_bench_candidates_keep_the_plans_device():
    """`run --tune --device cpu` on a GPU box: every candidate is planned (and so loaded and measured) on
    the CPU, like the plan whose tune-cache key it is saved under. Before, bench re-planned each candidate
    from a model string and a few preferences, dropped --device and measured on the GPU."""
    from kernelfit.bench.candidates import candidate_plan, candidates
    from kernelfit.profiles import load_profile

    spec = load_model_spec(config_path("qwen2.5-0.5b"))
    on_cpu = plan(load_profile("t4"), spec, Preferences(device="cpu"))
    assert on_cpu.placement.devices == ("cpu",)
    cands = candidates(on_cpu)
    assert len(cands) > 2
    for c in cands:
        p = candidate_plan(on_cpu, c)
        assert p.placement.devices == ("cpu",) and p.dtype.value == c.dtype


def test_a_tuned_dtype_brings_its_own_memory_estimate():
    """Tuning a bf16 plan to fp32 reports fp32 weights (it used to keep the bf16 estimate)."""
    from kernelfit.bench.cache import apply_winner
    from kernelfit.planner.types import ChoiceKind, RejectKind
    from kernelfit.profiles import load_profile

    spec = load_model_spec(config_path("qwen2.5-0.5b"))
    static = plan(load_profile("cpu-spr-amx"), spec, Preferences())
    assert static.dtype.value == "bfloat16"
    tuned = apply_winner(static, {"attention": "sdpa", "dtype": "float32", "cache": "dynamic",
                                  "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0})
    assert tuned.dtype.value == "float32" and tuned.dtype.kind is ChoiceKind.MEASURED
    assert tuned.memory.weights == 2 * static.memory.weights == spec.params * 4
    assert tuned.memory.total > static.memory.total
    assert tuned.preferences.dtype == "auto"  # measured, not requested
    assert any(r.name == "bfloat16" and r.kind is RejectKind.MEASURED_SLOWER for r in tuned.dtype.rejected)


GOOD_WINNER = {"attention": "eager", "dtype": "float32", "cache": "static", "compile": False, "quantization": "none",
               "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0}
BAD_FIELDS = [("attention", None), ("attention", ["sdpa"]), ("attention", "flash_attention_9"), ("dtype", 5),
              ("dtype", {"a": 1}), ("cache", "x"), ("prefill_tokens_per_s", None), ("prefill_tokens_per_s", -1),
              ("prefill_tokens_per_s", "fast"), ("prefill_tokens_per_s", float("nan")), ("decode_tokens_per_s", None),
              ("decode_tokens_per_s", True), ("compile", "yes"), ("quantization", 3), ("quantization", "bogus"),
              ("measured_at", 5)]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_a_tune_cache_with_one_bad_field_is_ignored_with_a_warning(tmp_path, monkeypatch, field, value):
    from kernelfit.profiles import load_profile

    monkeypatch.setenv("KERNELFIT_TUNE_CACHE", str(tmp_path / "tune.json"))
    spec = load_model_spec(config_path("qwen2.5-0.5b"))
    static = plan(load_profile("cpu-spr-amx"), spec, Preferences())
    save_winner(static.machine, spec, static.placement.devices, dict(GOOD_WINNER, **{field: value}), [])
    with pytest.warns(TuneCacheWarning):
        p = with_cached_winner(static)
    assert p.tuned is None and p.dtype == static.dtype
    save_winner(static.machine, spec, static.placement.devices, GOOD_WINNER, [])  # the good one still applies
    assert with_cached_winner(static).tuned is not None


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b'{"format": 1, "entries": []}',
                                     b'{"format": 1, "entries": {"k": "not an entry"}}', b"[]"])
def test_a_damaged_tune_cache_file_never_stops_planning(tmp_path, monkeypatch, content):
    monkeypatch.setenv("KERNELFIT_TUNE_CACHE", str(tmp_path / "tune.json"))
    (tmp_path / "tune.json").write_bytes(content)
    r = run_cli("plan", config_path("qwen2.5-0.5b"))
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_bench_keeps_its_measurement_when_the_tune_cache_cannot_be_written(tmp_path, monkeypatch):
    from kernelfit.profiles import load_profile

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("KERNELFIT_TUNE_CACHE", str(blocker / "tune.json"))
    spec = load_model_spec(config_path("qwen2.5-0.5b"))
    static = plan(load_profile("cpu-spr-amx"), spec, Preferences())
    with pytest.warns(TuneCacheWarning, match="not cached"):
        assert save_winner(static.machine, spec, static.placement.devices, GOOD_WINNER, []) is None
