"""kernelfit bench: measure every configuration the catalog says runs here, keep the fastest.

Candidates: attention implementation x dtype x KV cache (dynamic / static) x torch.compile (only
with compile=True: on a 2-core CPU each compile costs minutes), plus — when the model must be
quantized to fit — every other installed quantizer at the same or fewer bits (and at 8 bits where the
plan chose nf4 over an 8-bit that fits, for speed). Each is warmed up once, then
timed `trials` times; prefill and decode are measured separately (decode from the streamer's
first-token time) and reported as medians with their spread. A candidate that fails is reported
with its error. The winner minimises the time of one request of the measured shape
(context/prefill + new_tokens/decode) — but replaces the static plan only when its gain exceeds
the measured spread — and is saved to the tune cache.
"""

from __future__ import annotations

import statistics
import sys
import time
import torch

from ..planner.types import Plan
from .candidates import Candidate, Result, candidate_plan, candidates, static_candidate


def _spread(values: list[float]) -> float:
    med = statistics.median(values)
    return round((max(values) - min(values)) / med, 3) if med else 0.0


def _measure(model, cand: Candidate, ids: torch.Tensor, new_tokens: int, trials: int) -> Result:
    from ..engine.runner import LeanRunner

    if isinstance(model, LeanRunner):
        return _runner_trials(model, cand, ids, new_tokens, trials)
    model.set_attn_implementation(cand.attention)
    if cand.compile:
        from ..loader.generate import compile_forward

        compile_forward(model)
    try:
        return _trials(model, cand, ids, new_tokens, trials)
    finally:
        if cand.compile:
            del model.forward


def _synchronize(device: torch.device) -> None:
    """GPU kernels run asynchronously: a clock read before they finish times only their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trials(model, cand: Candidate, ids: torch.Tensor, new_tokens: int, trials: int) -> Result:
    from ..loader.generate import _TimingStreamer, no_grad_for

    forward = model.forward
    device = next(p for p in model.parameters() if p.device.type != "meta").device
    ids = ids.to(device)  # the embedding's device (the first layer's, when layers are spread over devices)
    prefill, decode = [], []
    gen_kw = {"cache_implementation": "static"} if cand.cache == "static" else {}
    prompt = ids[:, :16]
    for i in range(trials + 1):  # the first round is warm-up
        with no_grad_for(model):
            _synchronize(device)
            t = time.perf_counter()
            forward(input_ids=ids, use_cache=False)
            _synchronize(device)
            p = time.perf_counter() - t
            streamer = _TimingStreamer(None, None)
            t = time.perf_counter()
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0, streamer=streamer, **gen_kw)  # ends on the host: tokens are read
            end = time.perf_counter()
        if i:
            prefill.append(ids.shape[1] / p)
            decode.append((new_tokens - 1) / max(end - (streamer.first_token_at or t), 1e-9))
    return Result(cand, round(statistics.median(prefill), 1), _spread(prefill),
                  round(statistics.median(decode), 2), _spread(decode))


def _runner_trials(runner, cand: Candidate, ids: torch.Tensor, new_tokens: int, trials: int) -> Result:
    """The packed runner: the same shapes as _trials (a `context`-token prefill; decode after a 16-token prompt)."""
    from ..engine.kv_cache import reset_cache

    prefill, decode = [], []
    for i in range(trials + 1):
        reset_cache(runner.build, ids.shape[1] + new_tokens)
        t = time.perf_counter()
        runner.logits(ids[0], 0)
        p = time.perf_counter() - t
        _, _, d = runner.generate_ids(ids[0, :16].tolist(), new_tokens, stop_at_eos=False)
        if i:
            prefill.append(ids.shape[1] / p)
            decode.append((new_tokens - 1) / max(d, 1e-9))
    return Result(cand, round(statistics.median(prefill), 1), _spread(prefill),
                  round(statistics.median(decode), 2), _spread(decode))


def bench(plan: Plan, context: int = 256, new_tokens: int = 32, trials: int = 3,
          compile: bool = False, progress=None) -> tuple[list[Result], Result | None]:
    """Measure every candidate of `plan` on the devices it places the model on; returns (results, winner)."""
    from ..loader.load import check_loadable, load_plan

    check_loadable(plan)  # a model that cannot load here is one error, not one per candidate
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cands = candidates(plan, compile)
    vocab = plan.model.text.vocab_size or 1000
    ids = torch.randint(min(100, vocab - 1), vocab, (1, context), generator=torch.Generator().manual_seed(0))
    results: list[Result] = []
    models: dict[tuple[str, str], object] = {}
    for i, cand in enumerate(cands, 1):
        say(f"[{i}/{len(cands)}] {cand.attention}, {cand.dtype}, {cand.cache} cache{', compiled' if cand.compile else ''}"
            + (f", {cand.quantization}" if cand.quantization != "none" else "")
            + (f", prefill {cand.prefill}" if cand.prefill != "auto" else ""))
        try:
            key = (cand.dtype, cand.quantization, cand.prefill)
            if key not in models:
                models.clear()  # one model in memory at a time
                models[key] = load_plan(candidate_plan(plan, cand), dispatch=False, health_check=False).model
            results.append(_measure(models[key], cand, ids, new_tokens, trials))
        except Exception as exc:  # noqa: BLE001 - a failed candidate is a result, reported with its error
            results.append(Result(cand, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    ok = [r for r in results if r.error is None]
    winner = min(ok, key=lambda r: r.seconds(context, new_tokens)) if ok else None
    static = next((r for r in ok if r.candidate == static_candidate(plan)), None)
    if winner is not None and static is not None and winner is not static:
        # replace the static choice only when the gain is larger than the measurement noise
        noise = max(winner.prefill_spread, winner.decode_spread, static.prefill_spread, static.decode_spread)
        gain = static.seconds(context, new_tokens) / winner.seconds(context, new_tokens) - 1
        if gain <= noise:
            say(f"best measured ({winner.candidate.attention}, {winner.candidate.dtype}, {winner.candidate.cache}) "
                f"is {gain:.0%} faster, within the {noise:.0%} noise: keeping the static plan")
            winner = static
    return results, winner
