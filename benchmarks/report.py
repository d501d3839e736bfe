"""Performance report for this machine: transformers' default load, kernelfit's static plan, its
tuned plan, the best of the sweep, and the decode roofline — measured side by side in one run.

Writes benchmarks/results/<machine>-report.md, a PNG plot beside it (needs matplotlib:
`pip install matplotlib`), and the machine profile (`kernelfit doctor --save`) it was measured on.

Decode roofline: every generated token reads every weight once, so decode cannot beat
(memory bandwidth) / (weight bytes per token); the bandwidth is measured here with a large copy.

usage: python benchmarks/report.py [MODEL] [--context 256] [--new-tokens 32] [--trials 3] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def memory_bandwidth_gbps(mib: int = 512, repeats: int = 7) -> float:
    """Copy bandwidth (read + write) of a buffer far larger than the caches, median of repeats."""
    src = torch.ones(mib * 1024 * 1024 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        rates.append(2 * src.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also measure the static plan under torch.compile")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from kernelfit.model.spec import load_model_spec
    from kernelfit.planner.types import Preferences
    from kernelfit.planner.search import plan as make_plan
    from kernelfit.probe import probe_machine
    from kernelfit.bench.measure import Candidate, _measure, bench
    from kernelfit.loader.gguf_cache import materialise
    from kernelfit.api import load
    from kernelfit.bench.cache import save_winner

    machine = probe_machine()
    spec = load_model_spec(args.model)
    plan = make_plan(machine, spec, Preferences())
    vocab = spec.text.vocab_size or 1000
    ids = torch.randint(100, vocab, (1, args.context), generator=torch.Generator().manual_seed(0))
    rows: dict[str, dict] = {}

    print("measuring memory bandwidth ...", file=sys.stderr)
    bw = memory_bandwidth_gbps()

    print("transformers default load ...", file=sys.stderr)
    path = str(materialise(spec)) if spec.format == "gguf" else spec.model_dir
    default = AutoModelForCausalLM.from_pretrained(path).eval()
    d_dtype = str(default.dtype).removeprefix("torch.")
    r = _measure(default, Candidate(default.config._attn_implementation, d_dtype, "dynamic"), ids, args.new_tokens, args.trials)
    rows["transformers default"] = {"config": f"{r.candidate.attention}, {d_dtype}, dynamic", "result": r}
    del default

    print("sweep ...", file=sys.stderr)
    results, winner = bench(args.model, plan, args.context, args.new_tokens, args.trials)
    static = next(x for x in results if x.candidate.attention == plan.text_attention.value
                  and x.candidate.dtype == plan.dtype.value and x.candidate.cache == "dynamic")
    rows["kernelfit static plan"] = {"config": f"{plan.text_attention.value}, {plan.dtype.value}, dynamic", "result": static}
    save_winner(machine, spec, plan.placement.devices, winner.to_dict(), [x.to_dict() for x in results])

    print("tuned plan (kernelfit.load with the cached winner, measured again) ...", file=sys.stderr)
    tuned = load(args.model, machine=machine, health_check=False)
    r = _measure(tuned.model, Candidate("kernelfit", tuned.plan.dtype.value, tuned.plan.tuned["cache"]), ids,
                 args.new_tokens, args.trials)
    rows["kernelfit tuned plan"] = {"config": f"{tuned.plan.text_attention.value} (dispatch), {tuned.plan.dtype.value}, "
                                              f"{tuned.plan.tuned['cache']}", "result": r}
    if plan.decode_fastpath or args.compile:
        static_model = load(args.model, plan=plan, dispatch=False, health_check=False).model
        what = f"{plan.text_attention.value}, {plan.dtype.value}"
        if plan.decode_fastpath:
            print("static plan without the CPU decode fast path ...", file=sys.stderr)
            from kernelfit.loader.cpu_decode import install, uninstall

            uninstall(static_model)
            r = _measure(static_model, Candidate(plan.text_attention.value, plan.dtype.value, "dynamic"), ids,
                         args.new_tokens, args.trials)
            rows["static plan, oneDNN for decode (fast path off)"] = {"config": f"{what}, dynamic", "result": r}
            install(static_model)
        if args.compile:
            print("static plan + torch.compile (the warm-up round compiles) ...", file=sys.stderr)
            t = time.perf_counter()
            r = _measure(static_model, Candidate(plan.text_attention.value, plan.dtype.value, "static", True), ids,
                         args.new_tokens, args.trials)
            rows["static plan + torch.compile"] = {
                "config": f"{what}, static, compiled ({time.perf_counter() - t:.0f} s with compilation)", "result": r}
            results.append(r)
        del static_model
    best = min((x for x in results if x.error is None), key=lambda x: x.seconds(args.context, args.new_tokens))
    bc = best.candidate
    rows["best of sweep"] = {"config": f"{bc.attention}, {bc.dtype}, {bc.cache}{', compiled' if bc.compile else ''}",
                             "result": best}

    weight_bytes = spec.params * {"float32": 4, "bfloat16": 2, "float16": 2}[tuned.plan.dtype.value]
    roofline = bw * 1e9 / weight_bytes

    import re

    hw = machine.accelerators[0].name if machine.accelerators else machine.cpu.model
    name = re.sub(r"[^a-z0-9]+", "-", f"{hw} {machine.cpu.threads}t".lower()).strip("-")  # e.g. amd-epyc-2t
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}-machine.toml").write_text(machine.to_toml())
    lines = [f"# kernelfit performance report — {spec.name} on {name}", "",
             f"Machine: {machine.cpu.model}, {machine.cpu.threads} threads, ISA {' '.join(machine.cpu.isa)}; "
             f"{', '.join(d.name for d in machine.accelerators) or 'no GPU'}. torch {machine.software.torch}, "
             f"transformers {machine.software.package_version('transformers')}. Profile: `{name}-machine.toml`.",
             f"Workload: prefill {args.context} tokens; decode {args.new_tokens} tokens; median of {args.trials} "
             f"trials after a warm-up (± = (max-min)/median). Measured {time.strftime('%Y-%m-%d %H:%M')}.", "",
             "| configuration | what | prefill tok/s | decode tok/s | vs default (prefill / decode) |",
             "|---|---|---|---|---|"]
    base = rows["transformers default"]["result"]
    for label, row in rows.items():
        x = row["result"]
        lines.append(f"| {label} | {row['config']} | {x.prefill_tokens_per_s:.0f} ±{x.prefill_spread:.0%} | "
                     f"{x.decode_tokens_per_s:.1f} ±{x.decode_spread:.0%} | "
                     f"{x.prefill_tokens_per_s / base.prefill_tokens_per_s:.2f}x / "
                     f"{x.decode_tokens_per_s / base.decode_tokens_per_s:.2f}x |")
    lines.append(f"| decode roofline | {bw:.1f} GB/s measured copy bandwidth / {weight_bytes / 1e9:.3f} GB of "
                 f"{tuned.plan.dtype.value} weights per token | — | {roofline:.1f} | — |")
    s_time, b_time = static.seconds(args.context, args.new_tokens), best.seconds(args.context, args.new_tokens)
    t_res = rows["kernelfit tuned plan"]["result"]
    eager_best = min((x for x in results if x.error is None and not x.candidate.compile),
                     key=lambda x: x.seconds(args.context, args.new_tokens))
    lines += ["", "Goals:",
              f"- static plan vs best of sweep (request time): {b_time / s_time:.2f}x (goal >= 0.9x)"
              + (f"; vs the best uncompiled candidate: {eager_best.seconds(args.context, args.new_tokens) / s_time:.2f}x "
                 "(compiled rows leave out their compilation time)" if best.candidate.compile else ""),
              f"- tuned plan vs best of sweep (request time): {b_time / t_res.seconds(args.context, args.new_tokens):.2f}x "
              f"(goal >= 0.97x; the tuned plan runs through the dispatcher and is measured in a separate round)",
              f"- kernelfit static plan vs transformers default, prefill: "
              f"{static.prefill_tokens_per_s / base.prefill_tokens_per_s:.2f}x (goal >= 1.5x)",
              f"- best decode vs roofline: {best.decode_tokens_per_s / roofline:.0%} (goal >= 60%); static plan: "
              f"{static.decode_tokens_per_s / roofline:.0%}", ""]
    md = RESULTS / f"{name}-report.md"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = list(rows)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.barh(labels, [rows[k]["result"].prefill_tokens_per_s for k in labels], color="#4c72b0")
        a1.set_xlabel("prefill tokens/s")
        a2.barh(labels, [rows[k]["result"].decode_tokens_per_s for k in labels], color="#55a868")
        a2.axvline(roofline, color="#c44e52", linestyle="--", label=f"roofline {roofline:.0f}")
        a2.set_xlabel("decode tokens/s")
        a2.legend(loc="lower right")
        a2.set_yticklabels([])
        fig.suptitle(f"{spec.name} on {name}")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}-report.png", dpi=110)
        lines.append(f"![report]({name}-report.png)")
    except ImportError:
        lines.append("(no plot: `pip install matplotlib` for the PNG)")
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
