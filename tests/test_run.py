"""The main job end to end: `kernelfit run` with the bundled SmolLM2 on this CPU."""

import json
import sys
import textwrap

import pytest

from conftest import run_cli
from test_cli import assert_usage_error

PROMPT = "What is the capital of France?"


def test_run_answers_paris_and_reports_the_plan_and_speed():
    r = run_cli("run", "--prompt", PROMPT, "--max-new-tokens", "16", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "kernelfit plan: smollm2-135m on cpu" in r.stderr and "dtype" in r.stderr and "attention" in r.stderr
    assert "prefill" in r.stderr and "tokens/s" in r.stderr and "Traceback" not in r.stderr


def test_run_with_flash_attention_2_requested_still_answers_and_says_why():
    r = run_cli("run", "--attn", "flash_attention_2", "--prompt", PROMPT, "--max-new-tokens", "16", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "requested flash_attention_2 cannot run" in r.stderr and "cpu" in r.stderr


def test_run_json():
    r = run_cli("run", "--prompt", PROMPT, "--max-new-tokens", "16", "--dtype", "float32", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"text", "plan", "fallbacks", "prefill_tokens_per_s", "decode_tokens_per_s"} <= set(d)
    assert "Paris" in d["text"] and d["plan"]["dtype"]["value"] == "float32"
    assert d["fallbacks"] == [] and d["decode_tokens_per_s"] > 0 and d["prefill_tokens_per_s"] > 0


@pytest.mark.parametrize("args,needle", [
    (["run", "/no/such/model", "--prompt", "hi"], "no model at"),
    (["run", "--prompt", "   "], "--prompt is empty"),
    (["run", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["run", "--prompt", "hi", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["run", "--prompt", "hi", "--attn", "flash"], "unknown attention"),
    (["run"], "--prompt"),
    (["exec", "/no/such/script.py"], "no script"),
])
def test_run_bad_input(args, needle):
    assert_usage_error(run_cli(*args), needle)


def test_exec_runs_fa2_hardcoded_code_under_the_guard(tmp_path):
    script = tmp_path / "seed.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        import torch
        from tiny_models import FA2LlamaForCausalLM, tiny_llama_config
        torch.manual_seed(0)  # a random model may emit EOS early: fix the weights and the length
        model = FA2LlamaForCausalLM(tiny_llama_config()).eval()
        out = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        print("generated", out.shape[1])
    """))
    plain = __import__("subprocess").run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0  # crashes without the guard
    r = run_cli("exec", str(script))
    assert r.returncode == 0, r.stderr
    assert "generated 7" in r.stdout and "flash_attention_2 cannot run here" in r.stderr
    # KERNELFIT_GUARD=1: any script that imports kernelfit (here, before the model code) is guarded
    guarded = tmp_path / "guarded.py"
    guarded.write_text("import kernelfit\n" + script.read_text())
    env = dict(__import__("os").environ, KERNELFIT_GUARD="1")
    r = __import__("subprocess").run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "generated 7" in r.stdout, r.stderr
