"""Real-CUDA checks (`@pytest.mark.gpu`: skipped where torch sees no CUDA device). The rest of the suite runs
the GPU paths against simulated devices and fake kernels; these run them on the GPU that is here: the NVML
probe against torch's own view, the plan, a load and generation against transformers on the same card, the
seed's hard-wired FlashAttention-2 model, a GGUF file, a vision-language model and `run --json`'s figures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import gguf_tiny
import tiny_vlms
from conftest import run_cli

pytestmark = pytest.mark.gpu
TESTS = Path(__file__).parent


def _flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a word-level tokenizer and chat template, saved like a hub checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("gpu") / "llama"
    tok, _ = tiny_vlms._tokenizer([], "")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**tiny_vlms._text(), tie_word_embeddings=False)).eval()
    return tiny_vlms._save(path, model, tok)


def test_probe_reads_the_gpu_through_nvml_and_creates_no_cuda_context():
    code = textwrap.dedent("""
        import json, torch
        from kernelfit.probe import probe_machine
        m = probe_machine()
        print(json.dumps({"initialized": torch.cuda.is_initialized(),
                          "gpus": [[d.name, str(d.compute_capability), d.memory_gib] for d in m.devices
                                   if d.kind == "cuda"]}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert not seen["initialized"]  # NVML only: no CUDA context, no memory taken, CUDA_VISIBLE_DEVICES not fixed
    import torch

    assert len(seen["gpus"]) == torch.cuda.device_count()
    for i, (name, cc, mem) in enumerate(seen["gpus"]):
        props = torch.cuda.get_device_properties(i)
        assert name == props.name
        assert cc == "{}.{}".format(*torch.cuda.get_device_capability(i))
        assert abs(mem - props.total_memory / 2**30) < 0.02 * mem + 0.5  # torch reports a little less (reserved)


def test_the_plan_for_this_gpu(llama_dir):
    import torch
    from kernelfit.api import make_plan
    from kernelfit.planner.types import RejectKind

    plan = make_plan(str(llama_dir), use_tune_cache=False)
    assert plan.placement.devices == ("cuda:0",)
    major = torch.cuda.get_device_capability(0)[0]
    assert plan.dtype.value == ("bfloat16" if major >= 8 else "float16")
    attention = plan.attention["text"]
    if _flash_attn_installed():
        assert attention.value.startswith("flash_attention")
    else:  # the image here has no flash-attn: SDPA, and the plan says what to install
        assert attention.value == "sdpa"
        fa2 = [r for r in attention.rejected if r.name == "flash_attention_2"]
        assert fa2 and fa2[0].kind == (RejectKind.NOT_INSTALLED if major >= 8 else RejectKind.NOT_RUNNABLE)
        assert fa2[0].kind != RejectKind.NOT_INSTALLED or fa2[0].install


def test_load_on_the_gpu_matches_transformers_on_the_same_card(llama_dir):
    import torch
    import kernelfit
    from transformers import LlamaForCausalLM

    loaded = kernelfit.load(str(llama_dir), use_tune_cache=False)
    p = next(loaded.model.parameters())
    assert p.device.type == "cuda" and p.dtype == torch.bfloat16
    assert loaded.health is not None and loaded.fallbacks == []
    ref = LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    ids = loaded.tokenizer("what is in the image describe this picture", return_tensors="pt").input_ids.cuda()
    with torch.no_grad():
        ours, theirs = loaded.model(ids).logits.float(), ref(ids).logits.float()
    assert float((ours - theirs).abs().max()) < 0.05  # bf16 kernels may order sums differently
    gen = kernelfit.generate(loaded.model, loaded.tokenizer, "describe this picture", 8)
    assert gen.new_tokens >= 1


def test_the_planned_weights_are_what_the_card_holds(tmp_path):
    """memory.py's weight bytes against the CUDA allocator, on a ~110 M-parameter model (big enough that the
    allocator's rounding is noise), and the peak while generating stays under the plan's total."""
    import torch
    import kernelfit
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, _ = tiny_vlms._tokenizer([], "")
    torch.manual_seed(0)
    cfg = LlamaConfig(**{**tiny_vlms._text(), "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "num_key_value_heads": 4, "vocab_size": 32000},
                      tie_word_embeddings=False)
    d = tiny_vlms._save(tmp_path / "llama-110m", LlamaForCausalLM(cfg).to(torch.bfloat16).eval(), tok)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(0)
    loaded = kernelfit.load(str(d), use_tune_cache=False)
    held = torch.cuda.memory_allocated(0) - before
    planned = loaded.plan.memory
    print(f"planned weights {planned.weights / 2**20:.1f} MiB, allocated {held / 2**20:.1f} MiB")
    assert abs(held - planned.weights) < 0.03 * planned.weights
    torch.cuda.reset_peak_memory_stats(0)
    gen = kernelfit.generate(loaded.model, loaded.tokenizer, "describe this picture " * 20, 32)
    peak = torch.cuda.max_memory_allocated(0) - before
    print(f"peak while generating {peak / 2**20:.1f} MiB, planned total {planned.total / 2**20:.1f} MiB")
    assert gen.new_tokens >= 1 and peak < planned.total


def test_the_seeds_flash_attention_2_model_runs_on_this_gpu_under_the_guard(tmp_path):
    """The VILA-style decoder hard-wired to FlashAttention-2, on a real CUDA device: it runs as written where
    flash_attn is installed and the card is Ampere or newer, and falls back to SDPA (saying why) otherwise."""
    script = tmp_path / "seed.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import torch
        from tiny_models import FA2LlamaForCausalLM, tiny_llama_config
        torch.manual_seed(0)
        model = FA2LlamaForCausalLM(tiny_llama_config()).to("cuda", torch.bfloat16).eval()
        ids = torch.tensor([[1, 5, 6]], device="cuda")
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        print("generated", out.shape[1], out.device.type)
    """))
    r = run_cli("exec", str(script), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "generated 7 cuda" in r.stdout
    if not _flash_attn_installed():
        assert "flash_attention_2 cannot run here" in r.stderr


def test_a_gguf_file_on_the_gpu_says_what_runs_and_matches_the_cpu(tmp_path):
    """GGUF on CUDA: no packed CUDA kernel is run for GGUF blocks, so the plan dequantizes the file to the card's
    dtype and runs transformers there (the packed runner is CPU-only); the logits match a float32 CPU load."""
    import torch
    import kernelfit

    path = gguf_tiny.write_tiny(tmp_path / "tiny-q4k.gguf", "Q4_K")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpu = kernelfit.load(str(path), use_tune_cache=False)
        cpu = kernelfit.load(str(path), device="cpu", dtype="float32", quantization="none", use_tune_cache=False)
    assert gpu.plan.placement.devices == ("cuda:0",)
    assert gpu.plan.kernels == {}  # no packed kernels: transformers runs the dequantized weights
    assert next(gpu.model.parameters()).device.type == "cuda"
    ids = torch.tensor([[1, 7, 9, 11, 13, 17, 19, 23]])
    with torch.no_grad():
        a = gpu.model(ids.cuda()).logits.float().cpu()[0]
        b = cpu.model(ids).logits.float()[0]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cos.min()) > 0.99


def test_a_vision_language_model_on_the_gpu_sees_its_image(tmp_path):
    import torch
    import kernelfit
    from kernelfit.loader.generate import encode_prompt, model_inputs

    d = tiny_vlms.llava(tmp_path / "llava")
    red = kernelfit.load_image(str(tiny_vlms.image(tmp_path / "red.png", (200, 30, 30))))
    green = kernelfit.load_image(str(tiny_vlms.image(tmp_path / "green.png", (20, 200, 90))))
    loaded = kernelfit.load(str(d), use_tune_cache=False)
    assert next(loaded.model.parameters()).device.type == "cuda"

    def last(image):
        inputs = model_inputs(loaded.model, encode_prompt(loaded.tokenizer, "what is in the image", images=[image]))
        with torch.no_grad():
            return loaded.model(**inputs).logits[0, -1].float()

    assert float((last(red) - last(green)).abs().max()) > 1e-3
    gen = kernelfit.generate(loaded.model, loaded.tokenizer, "what is in the image", 4, images=[red])
    assert gen.new_tokens == 4


def test_run_json_reports_the_gpu_and_its_peak_memory(llama_dir):
    r = run_cli("run", str(llama_dir), "--prompt", "describe this picture", "--max-new-tokens", "8", "--no-cache",
                "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["plan"]["device"]["devices"] == ["cuda:0"]
    assert out["new_tokens"] >= 1 and out["decode_tokens_per_s"] > 0
    peak = out["peak_gpu_mib"]["cuda:0"]
    planned = out["plan"]["memory"]
    assert 0 < peak < 4096  # a tiny model: the allocator's reservation, not a whole card
    print("plan memory", planned, "peak GPU MiB", peak)


def test_bench_measures_every_candidate_on_the_gpu(llama_dir):
    """`kernelfit bench` on a CUDA plan: the prompt goes to the model's device and the clock waits for the GPU
    (before this, every candidate failed with 'index is on cpu, different from other tensors on cuda:0')."""
    r = run_cli("bench", str(llama_dir), "--context", "64", "--new-tokens", "8", "--trials", "2", "--no-save", "--json",
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["candidates"] and all(c["error"] is None for c in out["candidates"]), out["candidates"]
    assert all(c["prefill_tokens_per_s"] > 0 and c["decode_tokens_per_s"] > 0 for c in out["candidates"])
    assert out["chosen"] is not None
