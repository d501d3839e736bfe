import json

import pytest

from conftest import config_path, run_cli, run_json


def assert_usage_error(r, needle=""):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kernelfit: error:"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert needle.lower() in lines[0].lower(), lines[0]


def test_plan_json_contract():
    d = run_json("plan", "smollm2-135m", "--profile", "t4")
    assert {"model", "machine", "attention", "dtype", "device_map", "memory"} <= set(d)
    assert {"implementation", "reason", "rejected"} <= set(d["attention"])
    assert all({"implementation", "reason"} <= set(r) for r in d["attention"]["rejected"])
    assert {"value", "reason"} <= set(d["dtype"]) and d["dtype"]["value"] == "float16"
    assert {"weights_gib", "kv_cache_gib", "total_gib", "budget_gib"} <= set(d["memory"])
    assert d["memory"]["total_gib"] < d["memory"]["budget_gib"]
    assert d["device_map"] == {"": "cuda:0"}
    assert d["machine"]["devices"][0]["compute_capability"] == "7.5"


def test_plan_vlm_has_per_sub_model_attention():
    d = run_json("plan", config_path("llava-1.5-7b"), "--profile", "a100-80gb")
    assert set(d["attention"]["sub_models"]) == {"text_config", "vision_config"}
    assert d["from_pretrained"]["attn_implementation"] == {"text_config": "flash_attention_2",
                                                           "vision_config": "flash_attention_2"}


def test_human_plan_and_profiles_and_matrix():
    r = run_cli("plan", "smollm2-135m", "--profile", "gtx1060-6gb")
    assert r.returncode == 0 and "float32" in r.stdout and "✗ flash_attention_2" in r.stdout
    r = run_cli("profiles")
    assert r.returncode == 0 and "gtx1060-6gb" in r.stdout and "mi300x" in r.stdout
    r = run_cli("matrix", "--markdown")
    assert r.returncode == 0 and r.stdout.startswith("| profile")


def test_doctor_save_then_profile_roundtrip(tmp_path):
    f = tmp_path / "me.toml"
    assert run_cli("doctor", "--save", str(f)).returncode == 0
    assert f.is_file()
    a = run_json("plan", "smollm2-135m", "--profile", str(f))
    b = run_json("plan", "smollm2-135m")
    assert (a["dtype"]["value"], a["attention"]["implementation"]) == (b["dtype"]["value"], b["attention"]["implementation"])
    assert not list(tmp_path.glob(".kernelfit-*"))  # no temp file left behind


@pytest.mark.parametrize("args,needle", [
    (["plan", "/no/such/model"], "no model at"),
    (["plan", "smollm2-135m", "--profile", "t5"], "unknown profile"),
    (["plan", "smollm2-135m", "--context", "-5"], "--context"),
    (["plan", "smollm2-135m", "--context", "abc"], "--context"),
    (["plan", "smollm2-135m", "--context", "0"], "--context"),
    (["plan", "smollm2-135m", "--dtype", "int3"], "unknown dtype"),
    (["plan", "smollm2-135m", "--attn", "flash"], "unknown attention"),
    (["plan", config_path("llama-2-70b"), "--profile", "t4", "--max-memory", "0=15GiB,cpu=8GiB"], "does not fit"),
    (["plan", "smollm2-135m", "--quantization", "3bit"], "invalid choice"),
    (["plan", "smollm2-135m", "--with", "nope-pkg"], "unknown package"),
    (["plan", "smollm2-135m", "--max-memory", "lots"], "--max-memory"),
    (["plan"], "model"),
    (["frobnicate"], "invalid choice"),
    (["doctor", "--save", "/no/such/dir/x.toml"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    assert_usage_error(run_cli(*args), needle)


def test_broken_inputs_on_disk(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    assert_usage_error(run_cli("plan", str(tmp_path)), "not valid JSON")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(run_cli("plan", str(empty)), "no config.json")
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    assert_usage_error(run_cli("plan", str(tmp_path / "c2")), "not supported")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    assert_usage_error(run_cli("plan", "smollm2-135m", "--profile", str(bad)), "not valid TOML")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"name": "x", "cpu": {"model": "y", "colour": 1}, "memory_gib": 4}))
    assert_usage_error(run_cli("plan", "smollm2-135m", "--profile", str(odd)), "unknown key")


def test_plan_json_has_a_kind_on_every_choice_and_rejected_item():
    from kernelfit.planner.types import ChoiceKind, PlacementKind, RejectKind

    d = run_json("plan", config_path("llava-1.5-7b"), "--profile", "gtx1060-6gb")
    rejected_kinds, seen = {k.value for k in RejectKind}, []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "rejected":
                    assert value is not None
                    for r in value:
                        assert r["kind"] in rejected_kinds, r
                        seen.append(r["kind"])
                walk(value)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(d)
    assert seen and "not_runnable" in seen
    for c in (d["dtype"], d["attention"], *d["attention"]["sub_models"].values()):
        assert c["kind"] in {k.value for k in ChoiceKind}
    assert d["device"]["kind"] in {k.value for k in PlacementKind}
