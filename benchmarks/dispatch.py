"""Dispatcher overhead and kernelfit's plan vs transformers' default load, side by side in one run.

1. Overhead: the same SmolLM2 model, attn_implementation "sdpa" vs "kernelfit" (which picks
   sdpa on this CPU), interleaved forward passes; goal < 2%.
2. Throughput: kernelfit.load's plan vs transformers' default load of the same weights
   (from_pretrained with no dtype/attention arguments: float32 for this dequantized GGUF),
   prefill of PREFILL tokens and greedy decode of DECODE tokens; goal >= 1.5x prefill where the
   hardware has native bf16.
3. Long-context decode: after a LONG_CONTEXT-token prompt, "kernelfit" (grouped-matmul decode
   attention on CPU) vs "sdpa" on the same model.

Numbers are medians of interleaved repeats; a noisy 2-core machine moves them by a few %.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

PREFILL, DECODE, REPEATS = 256, 64, 7
LONG_CONTEXT, LONG_DECODE = 2048, 16


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def prefill_fn(model, ids):
    def run():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    return run


def decode_fn(model, ids):
    def run():
        with torch.inference_mode():
            model.generate(ids[:, :16], max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, pad_token_id=0)
    return run


def main() -> int:
    from transformers import AutoModelForCausalLM

    from kernelfit.loader.gguf_cache import materialise
    from kernelfit.api import load

    loaded = load("smollm2-135m")
    plan = loaded.plan
    print(f"machine: {plan.machine.cpu.model}, {plan.machine.cpu.threads} threads, ISA {' '.join(plan.machine.cpu.isa)}")
    print(f"kernelfit plan: {plan.dtype.value}, {plan.text_attention.value} via 'kernelfit' dispatch, "
          f"torch threads {torch.get_num_threads()}")
    kf = loaded.model
    ids = torch.randint(100, 40000, (1, PREFILL))
    default = AutoModelForCausalLM.from_pretrained(str(materialise(plan.model)))
    default.eval()
    print(f"transformers default load: {str(default.dtype).removeprefix('torch.')}, "
          f"{default.config._attn_implementation}\n")

    # 1. dispatcher overhead on the same model object
    cases = {"sdpa direct": "sdpa", "kernelfit dispatch": "kernelfit"}
    times = {k: {"prefill": [], "decode": []} for k in cases}
    for name, attn in cases.items():  # warm-up
        kf.set_attn_implementation(attn)
        prefill_fn(kf, ids)()
    for _ in range(REPEATS):
        for name, attn in cases.items():
            kf.set_attn_implementation(attn)
            times[name]["prefill"].append(timed(prefill_fn(kf, ids)))
            times[name]["decode"].append(timed(decode_fn(kf, ids)))
    kf.set_attn_implementation("kernelfit")
    print(f"1. dispatcher overhead ({plan.dtype.value}, median of {REPEATS}, interleaved)")
    print(f"   {'':<22}{'prefill ms':>12}{'decode ms':>12}")
    med = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in times.items()}
    for k in cases:
        print(f"   {k:<22}{med[k]['prefill'] * 1e3:12.1f}{med[k]['decode'] * 1e3:12.1f}")
    over_p = med["kernelfit dispatch"]["prefill"] / med["sdpa direct"]["prefill"] - 1
    over_d = med["kernelfit dispatch"]["decode"] / med["sdpa direct"]["decode"] - 1
    print(f"   overhead: prefill {over_p:+.1%}, decode {over_d:+.1%}  (goal < 2%)\n")

    # 2. kernelfit plan vs transformers default
    models = {"transformers default": default, "kernelfit plan": kf}
    tp = {k: {"prefill": [], "decode": []} for k in models}
    for m in models.values():
        prefill_fn(m, ids)()
    for _ in range(REPEATS):
        for k, m in models.items():
            tp[k]["prefill"].append(PREFILL / timed(prefill_fn(m, ids)))
            tp[k]["decode"].append(DECODE / timed(decode_fn(m, ids)))
    print(f"2. throughput, tokens/s (prefill {PREFILL} tokens, decode {DECODE} tokens incl. a 16-token prefill)")
    print(f"   {'':<22}{'prefill':>10}{'decode':>10}")
    mt = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in tp.items()}
    for k in models:
        print(f"   {k:<22}{mt[k]['prefill']:10.1f}{mt[k]['decode']:10.1f}")
    rp = mt["kernelfit plan"]["prefill"] / mt["transformers default"]["prefill"]
    rd = mt["kernelfit plan"]["decode"] / mt["transformers default"]["decode"]
    print(f"   kernelfit / default: prefill {rp:.2f}x, decode {rd:.2f}x  (goal >= 1.5x prefill with native bf16)\n")

    # 3. long-context decode: one query against a long KV cache goes to the grouped-matmul kernel
    long_ids = torch.randint(100, 40000, (1, LONG_CONTEXT))
    lt = {k: [] for k in cases}

    def long_decode(m, streamer):
        with torch.inference_mode():
            m.generate(long_ids, max_new_tokens=LONG_DECODE, min_new_tokens=LONG_DECODE, do_sample=False,
                       pad_token_id=0, streamer=streamer)

    from kernelfit.loader.generate import _TimingStreamer

    for _ in range(3):
        for name, attn in cases.items():
            kf.set_attn_implementation(attn)
            streamer = _TimingStreamer(None, None)
            long_decode(kf, streamer)
            lt[name].append((LONG_DECODE - 1) / (time.perf_counter() - streamer.first_token_at))
    kf.set_attn_implementation("kernelfit")
    ml = {k: statistics.median(v) for k, v in lt.items()}
    print(f"3. decode after a {LONG_CONTEXT}-token prompt, tokens/s (median of 3, interleaved)")
    for k in cases:
        print(f"   {k:<22}{ml[k]:10.1f}")
    print(f"   kernelfit dispatch / sdpa direct: {ml['kernelfit dispatch'] / ml['sdpa direct']:.2f}x "
          f"(one-query attention over >= 128 cached keys uses grouped matmuls on CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
