"""kernelfit on a CUDA GPU against transformers on the same card, side by side in one run (needs a GPU).

The model is Qwen2.5-0.5B's published config with random weights (no download; the weights do not change the
speed), saved as bf16 safetensors with a word-level tokenizer. Interleaved, medians of REPEATS:
1. transformers' own load, `from_pretrained(dir)` (its defaults: the checkpoint's dtype, sdpa) vs
   `kernelfit.load(dir)` (its plan, attention through kernelfit's dispatcher), moved to the same card:
   prefill of PREFILL tokens (the GPU synchronised before the clock is read) and greedy decode of DECODE
   tokens after a 16-token prompt, and the CUDA allocator's peak.
2. The dispatcher's own cost: kernelfit's model with attn_implementation "sdpa" vs "kernelfit".

Goal: kernelfit's plan no slower than transformers on the card (ratio >= 1.0) and the dispatcher < 2%.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PREFILL, DECODE, REPEATS = 256, 64, 5


def build(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_vlms
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((ROOT / "tests/data/model-configs/qwen2.5-0.5b.json").read_text())
    drop = ("architectures", "transformers_version")
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in drop})
    config.dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    tok, _ = tiny_vlms._tokenizer([], "")
    return tiny_vlms._save(path, model, tok)


def sync_timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def prefill(model, ids):
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)


def decode(model, ids):
    with torch.inference_mode():
        model.generate(ids[:, :16], max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, pad_token_id=0)


def main() -> int:
    import kernelfit
    from transformers import AutoModelForCausalLM

    d = build(Path(tempfile.mkdtemp()) / "qwen2.5-0.5b-random")
    torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    hf = AutoModelForCausalLM.from_pretrained(d).to("cuda").eval()
    hf_weights = torch.cuda.memory_allocated() - base
    loaded = kernelfit.load(str(d), use_tune_cache=False)
    kf = loaded.model
    kf_weights = torch.cuda.memory_allocated() - base - hf_weights
    print(f"GPU: {name}; torch {torch.__version__}; model: Qwen2.5-0.5B config, random bf16 weights")
    print(f"transformers load: {str(hf.dtype).removeprefix('torch.')}, {hf.config._attn_implementation}, "
          f"{hf_weights / 2**20:.0f} MiB")
    print(f"kernelfit plan:    {loaded.plan.dtype.value}, {loaded.plan.text_attention.value} via the dispatcher, "
          f"{kf_weights / 2**20:.0f} MiB (planned weights {loaded.plan.memory.weights / 2**20:.0f} MiB)\n")
    ids = torch.randint(100, 30000, (1, PREFILL), device="cuda")
    models = {"transformers": (hf, "sdpa"), "kernelfit plan": (kf, "kernelfit"), "kernelfit, sdpa direct": (kf, "sdpa")}
    times = {k: {"prefill": [], "decode": []} for k in models}
    for m, attn in models.values():  # warm-up: kernels chosen, caches allocated
        m.set_attn_implementation(attn)
        prefill(m, ids)
        decode(m, ids)
    for _ in range(REPEATS):
        for k, (m, attn) in models.items():
            m.set_attn_implementation(attn)
            times[k]["prefill"].append(PREFILL / sync_timed(lambda: prefill(m, ids)))
            times[k]["decode"].append(DECODE / sync_timed(lambda: decode(m, ids)))
    kf.set_attn_implementation("kernelfit")
    med = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in times.items()}
    print(f"tokens/s (prefill {PREFILL} tokens; decode {DECODE} tokens after a 16-token prompt), median of {REPEATS}, "
          "interleaved")
    print(f"  {'':<26}{'prefill':>10}{'decode':>10}")
    for k in models:
        print(f"  {k:<26}{med[k]['prefill']:10.0f}{med[k]['decode']:10.1f}")
    p = med["kernelfit plan"]["prefill"] / med["transformers"]["prefill"]
    dd = med["kernelfit plan"]["decode"] / med["transformers"]["decode"]
    op = med["kernelfit, sdpa direct"]["prefill"] / med["kernelfit plan"]["prefill"] - 1
    od = med["kernelfit, sdpa direct"]["decode"] / med["kernelfit plan"]["decode"] - 1
    print(f"\nkernelfit / transformers: prefill {p:.2f}x, decode {dd:.2f}x  (goal >= 1.0)")
    print(f"dispatcher cost: prefill {op:+.1%}, decode {od:+.1%}  (goal < 2%)")
    print(f"CUDA allocator peak over the run: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (both models)")
    if "--profile" in sys.argv:  # where a decode step's host time goes, kernelfit's model then transformers'
        from torch.profiler import ProfilerActivity, profile

        for k, (m, attn) in list(models.items())[:2]:
            m.set_attn_implementation(attn)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                decode(m, ids)
            print(f"\n{k}: top host ops of one {DECODE}-token decode")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    sys.exit(main())
