"""`kernelfit run` (the main job) and `kernelfit exec` (run a script under the FA2 guard)."""

from __future__ import annotations

import json
import os
import re
import sys
import time

from ..errors import EXIT_USAGE, UsageError
from ..planner.hf_args import lean_runner
from ..planner.types import RejectKind
from .render import KERNEL_TITLES


def add_run_parser(sub) -> None:
    from .args import add_draft_args, add_quant_args, positive_int

    p = sub.add_parser("run", help="load a model with its plan and generate (default: the bundled SmolLM2)")
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model (default: smollm2-135m, bundled)")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", help="an optional system message")
    p.add_argument("--image", action="append", metavar="PATH", help="an image for a vision-language model (a path, "
                   "file:// or data: URL; repeat for several)")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=64)
    p.add_argument("--attn", default="auto", help="attention preference (used when it can run here)")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32 (a preference)")
    p.add_argument("--context", type=positive_int("--context"), default=None)
    p.add_argument("--device", default="auto")
    add_quant_args(p)
    add_draft_args(p)
    p.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    p.add_argument("--no-health-check", action="store_true", help="skip the post-load health check")
    p.add_argument("--no-dispatch", action="store_true", help="pass the plan's attention to transformers directly")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")

    p.add_argument("--tune", action="store_true", help="measure candidates now (kernelfit bench) and use the winner")
    p.add_argument("--no-cache", action="store_true", help="ignore a cached bench winner")

    p = sub.add_parser("bench", help="measure every runnable configuration here and cache the fastest")
    p.add_argument("model", nargs="?", default="smollm2-135m")
    p.add_argument("--context", type=positive_int("--context"), default=256, help="prompt tokens to time (default 256)")
    p.add_argument("--new-tokens", type=positive_int("--new-tokens"), default=32, help="tokens to decode (default 32)")
    p.add_argument("--trials", type=positive_int("--trials"), default=3)
    p.add_argument("--compile", action="store_true", help="add torch.compile candidates (minutes on small CPUs)")
    p.add_argument("--no-save", action="store_true", help="do not write the winner to the tune cache")
    add_quant_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("exec", help="run a Python script with kernelfit.guard() active (FlashAttention-2 demands "
                                    "are redirected where FA2 cannot run)")
    p.add_argument("script", help="path of the Python script")
    p.add_argument("args", nargs="*", help="arguments for the script (put them after --)")


def peak_rss_mib() -> float:
    """This process's peak resident set so far (getrusage: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def peak_gpu_mib() -> dict[str, float]:
    """The CUDA caching allocator's peak reservation per GPU this process used (what nvidia-smi shows of it,
    less the CUDA context); empty when CUDA was never initialised (CPU runs, or a torch without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    return {f"cuda:{i}": round(torch.cuda.max_memory_reserved(i) / 2**20, 1) for i in range(torch.cuda.device_count())
            if torch.cuda.max_memory_reserved(i)}


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _summary(plan) -> str:
    mem = plan.memory.to_dict()
    lines = [f"kernelfit plan: {plan.model.name} on {', '.join(plan.placement.devices)} "
             f"({plan.placement.reason})",
             f"  dtype      {plan.dtype.value}: {plan.dtype.reason}"]
    for r in plan.dtype.rejected:
        lines.append(f"    ✗ {r.name}: {r.reason}")
    lines.append(f"  attention  {plan.text_attention.value}: {plan.text_attention.reason}")
    for r in plan.text_attention.rejected:
        if r.kind is not RejectKind.RUNS_BUT_LOWER_PRIORITY:
            lines.append(f"    ✗ {r.name}: {r.reason}")
    for sub in plan.model.sub_models[1:]:  # each sub-model's own plan (a VLM's vision tower)
        c = plan.attention[sub.role]
        lines.append(f"  {sub.role:<10} {sub.model_type}, {sub.num_layers} layers, head_dim {sub.head_dim}: "
                     f"attention {c.value} ({c.reason})")
    q = plan.quantization
    if q is not None and q.packed:
        lines.append(f"  weights    {q.reason}")
    for phase, c in plan.kernels.items():
        lines.append(f"  {KERNEL_TITLES.get(phase, phase).lower():<10} {c.value}: {c.reason}")
        lines += [f"    ✗ {r.name}: {r.reason}" for r in c.rejected]
    for note in (plan.decode_fastpath, plan.decode_attention):
        if note and not lean_runner(plan):
            lines.append(f"  decode     {note}")
    lines.append(f"  memory     {mem['total_gib']:.2f} GiB of {mem['budget_gib']:.2f} GiB "
                 f"(weights {mem['weights_gib']:.2f}, KV cache {mem['kv_cache_gib']:.2f} at context "
                 f"{plan.preferences.context})")
    return "\n".join(lines)


def cmd_run(args) -> int:
    if not args.prompt or not args.prompt.strip():
        raise UsageError("--prompt is empty; give the text to answer, e.g. --prompt \"What is the capital of France?\"")
    from ..planner.devices import attention_names

    if args.attn not in attention_names():
        raise UsageError(f"unknown attention implementation '{args.attn}'; choose one of {', '.join(attention_names())}")
    quiet = args.json
    say = (lambda m: None) if quiet else (lambda m: _err(f"kernelfit: {m}"))
    from ..api import make_draft_plan, make_plan
    from .args import preferences

    images = []
    if args.image:  # a missing or broken image fails here, before the model is read
        from ..loader.images import load_image

        images = [load_image(ref) for ref in args.image]
    # bad model input fails here, before torch is imported
    plan = make_plan(args.model, preferences(args), use_tune_cache=not (args.no_cache or args.tune))
    if images and not any(s.role == "vision" for s in plan.model.sub_models):
        raise UsageError(f"{plan.model.name} is a text-only model ({plan.model.architecture}); --image needs a "
                         "vision-language model")
    from ..loader.load import check_loadable

    check_loadable(plan, args.allow_pickle)  # no weights, or pickle not allowed: say so before the plan
    draft_plan = make_draft_plan(plan)
    if args.tune:
        plan = run_bench(plan, quiet, save=True)[2] or plan
    if not quiet:
        _err(_summary(plan))
    if quiet:
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    from ..dispatch.dispatcher import fallbacks
    from ..loader.generate import generate
    from ..loader.load import load_plan
    from ..planner.hf_args import generate_kwargs

    with warnings.catch_warnings(record=quiet):
        loaded = load_plan(plan, dispatch=not args.no_dispatch, health_check=not args.no_health_check,
                           trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle, progress=say)
        if draft_plan is not None:
            from ..loader.draft import attach_draft

            attach_draft(loaded, draft_plan, args.draft_model, say)
        say(f"loaded in {loaded.load_seconds:.1f} s; generating")
        stream = None if quiet else (lambda t: (sys.stdout.write(t), sys.stdout.flush()))
        gen = generate(loaded.model, loaded.tokenizer, args.prompt, args.max_new_tokens, stream, args.system,
                       chat=not args.no_chat_template, images=images, **generate_kwargs(loaded.plan))
    events = loaded.fallbacks + [dict(e, stage="runtime") for e in fallbacks()]
    if quiet:
        from ..planner.report import plan_dict

        print(json.dumps({"text": gen.text, "plan": plan_dict(loaded.plan), "fallbacks": events,
                          "prompt_tokens": gen.prompt_tokens, "new_tokens": gen.new_tokens,
                          "prefill_tokens_per_s": round(gen.prefill_tokens_per_s, 2),
                          "decode_tokens_per_s": round(gen.decode_tokens_per_s, 2),
                          "load_seconds": round(loaded.load_seconds, 2), "packing": loaded.packing,
                          "draft": _draft_report(loaded.model),
                          "peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": peak_gpu_mib()}, indent=2))
    else:
        sys.stdout.write("\n")
        for e in events:
            _err(f"kernelfit: fallback ({e['stage']}): {e.get('backend') or e.get('attention')} failed — {e['error']}")
        _err(f"kernelfit: prefill {gen.prompt_tokens} tokens at {gen.prefill_tokens_per_s:.1f} tokens/s, "
             f"decode {gen.new_tokens} tokens at {gen.decode_tokens_per_s:.1f} tokens/s "
             f"({loaded.dtype}, {'packed runner' if lean_runner(loaded.plan) else loaded.plan.text_attention.value}, "
             f"{', '.join(loaded.plan.placement.devices)}), peak RSS {peak_rss_mib():.0f} MiB"
             + "".join(f", peak {d} {mib:.0f} MiB" for d, mib in peak_gpu_mib().items()))
    return 0


def _draft_report(model) -> dict | None:
    """What the draft model did: tokens it proposed, the ones kept, the target's decode steps."""
    d = getattr(model, "draft", None)
    if d is None:
        return None
    return {"model": d.name, "proposed": d.proposed, "kept": d.kept, "decode_steps": model.steps}


def run_bench(plan, quiet: bool, save: bool, context: int = 256, new_tokens: int = 32, trials: int = 3,
              compile: bool = False):
    """Measure `plan`'s candidates, save the winner, return (results, winner, plan with the winner applied)."""
    from ..bench.cache import apply_winner, save_winner
    from ..bench.measure import bench

    say = (lambda m: None) if quiet else (lambda m: _err(f"kernelfit bench: {m}"))
    results, winner = bench(plan, context, new_tokens, trials, compile, progress=say)
    tuned = None
    if winner is not None:
        w = winner.to_dict()
        if save:
            path = save_winner(plan.machine, plan.model, plan.placement.devices, w, [r.to_dict() for r in results])
            if path is not None:
                say(f"saved the winner to {path}")
        tuned = apply_winner(plan, dict(w, measured_at="now"))
    return results, winner, tuned


def cmd_bench(args) -> int:
    from ..api import make_plan
    from ..planner.types import Preferences

    plan = make_plan(args.model, Preferences(max_memory=args.max_memory, quantization=args.quantization,
                                             allow_dequantize=args.allow_dequantize), use_tune_cache=False)
    t0 = time.perf_counter()
    results, winner, tuned = run_bench(plan, args.json, not args.no_save, args.context, args.new_tokens,
                                       args.trials, args.compile)
    from ..bench.candidates import static_candidate

    static = next((r for r in results if r.candidate == static_candidate(plan)), None)
    if args.json:
        print(json.dumps({"candidates": [r.to_dict() for r in results],
                          "chosen": winner.to_dict() if winner else None,
                          "static_plan": static.to_dict() if static else None,
                          "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
        return 0 if winner else 1
    from .render import table

    rows = []
    for r in results:
        c = r.candidate
        mark = "★" if r is winner else ("static plan" if r is static else "")
        quant = c.quantization + (f", prefill {c.prefill}" if c.prefill != "auto" else "")
        rows.append([c.attention, c.dtype, c.cache, "yes" if c.compile else "no", quant,
                     f"{r.prefill_tokens_per_s:.0f} ±{r.prefill_spread:.0%}" if r.prefill_tokens_per_s else "-",
                     f"{r.decode_tokens_per_s:.1f} ±{r.decode_spread:.0%}" if r.decode_tokens_per_s else "-",
                     r.error or mark])
    print(table(rows, ["attention", "dtype", "cache", "compile", "quantization", "prefill tok/s", "decode tok/s", ""]))
    if winner and static:
        ctx, n = args.context, args.new_tokens
        w = winner.candidate
        packed = f", {w.quantization} with prefill {w.prefill}" if w.prefill != "auto" else ""
        print(f"\nwinner: {w.attention}, {w.dtype}, {w.cache} cache{packed} — "
              f"static plan reaches {winner.seconds(ctx, n) / static.seconds(ctx, n):.2f}x of the winner's speed "
              f"({time.perf_counter() - t0:.0f} s)")
    return 0 if winner else 1


_CODING_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+", re.ASCII)  # PEP 263


def _compile_script(path: str):
    """The script's code object, compiled as `python script.py` compiles it: a coding cookie or BOM (PEP 263)
    chooses the encoding, else the file must be UTF-8 (checked as Python's own tokenizer does, comments
    included). Raises SyntaxError with Python's message."""
    with open(path, "rb") as f:
        source = f.read()
    declared = source.startswith(b"\xef\xbb\xbf") or any(_CODING_COOKIE.match(line)
                                                        for line in source.splitlines()[:2])
    if not declared:
        try:
            source.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = source.count(b"\n", 0, exc.start) + 1
            raise SyntaxError(f"Non-UTF-8 code starting with '\\x{source[exc.start]:02x}' in file {path} on line "
                              f"{line}, but no encoding declared; see https://peps.python.org/pep-0263/ for details"
                              ) from None
    try:
        # dont_inherit: this module's `from __future__ import annotations` is not the script's
        return compile(source, path, "exec", dont_inherit=True)
    except ValueError as exc:  # null bytes, on Pythons that raise ValueError for them
        raise SyntaxError(str(exc)) from None


def cmd_exec(args) -> int:
    """Run the script as `python script.py` would, under kernelfit.guard(). A script that does not compile
    (not UTF-8 without a coding cookie, a syntax error) ends with Python's SyntaxError display and exit 2 before
    anything runs; an exception the script raises shows the script's own frames (no kernelfit or runpy ones) and
    exits 1, as Python does."""
    import traceback
    import types

    if not os.path.isfile(args.script):
        raise UsageError(f"no script at {args.script}")
    path = os.path.abspath(args.script)  # as `python script.py` names it in tracebacks and __file__
    try:
        code = _compile_script(path)
    except SyntaxError as exc:
        sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
        return EXIT_USAGE
    from ..dispatch.guard import guard

    guard()
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __loader__=None, __package__=None, __spec__=None)
    saved_main, saved_argv = sys.modules.get("__main__"), sys.argv
    sys.modules["__main__"] = main  # pickle and multiprocessing find the script's classes where Python puts them
    sys.argv = [args.script, *args.args]
    try:
        exec(code, main.__dict__)
    except Exception as exc:  # noqa: BLE001 - the script's own error, shown as Python shows it
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code is not code:  # drop kernelfit's frames above the script's
            tb = tb.tb_next
        exc.with_traceback(tb or exc.__traceback__)  # Python's excepthook prints the exception's own traceback
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        sys.argv = saved_argv
    return 0


COMMANDS = {"run": cmd_run, "exec": cmd_exec, "bench": cmd_bench}
