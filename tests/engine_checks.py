"""Checks every architecture's engine tests share: a batched decode step equals each sequence's own step bit for bit,
a server sequence reused for a longer turn resumes from the state its prompt's prefill left, and a model's logits
teacher-forced against a reference's (decode steps after a prompt, and one prompt of all the tokens)."""

from __future__ import annotations

import torch

from kernelfit.engine.build import batch_step, forward
from kernelfit.engine.kv_cache import grown, reset_cache


def batched_steps_equal_alone(b, ids: torch.Tensor, lengths: tuple[int, ...] = (20, 53, 61), cap: int = 64) -> None:
    """Sequences of `lengths` tokens (prefilled through the server's prompt kernels) take their next tokens in one
    batched step; each row equals that sequence's own decode step, bit for bit."""
    reset_cache(b, max(lengths) + 35)
    caches, alone = [], []
    for n in lengths:
        c = grown(b, None, cap)
        forward(b, ids[:n], 0, False, cache=c, panel_rows=True)
        caches.append(c)
        c2 = grown(b, None, cap)
        forward(b, ids[:n], 0, False, cache=c2, panel_rows=True)
        alone.append(forward(b, ids[n:n + 1], n, False, cache=c2)[-1])
    got = batch_step(b, [int(ids[n]) for n in lengths], list(lengths), list(range(len(lengths))), caches)
    for s in range(len(lengths)):
        assert torch.equal(got[s], alone[s]), s


def resumes_from_the_prefills_state(b, ids: torch.Tensor) -> None:
    """A reused sequence resumes from the state its prompt's prefill left (not its decode steps'): the next turn's
    logits equal a cold sequence's, bit for bit."""
    from kernelfit.engine.sequences import Row, SequencePool

    first, more = ids[:70].tolist(), ids[70:120].tolist()
    pool = SequencePool(b, 1)
    seq, _ = pool.acquire(first)
    pool.prefill(seq, first, 0, len(first) - 1)
    for i, t in enumerate(first[-1:] + more[:5]):
        pool.step([Row(seq, t, len(first) - 1 + i)])
    pool.release(seq)
    turn = first + more
    seq, same = pool.acquire(turn)
    assert same == len(first) - 1
    pool.prefill(seq, turn, same, len(turn) - 1)
    got = pool.step([Row(seq, turn[-1], len(turn) - 1)])
    cold = SequencePool(b, 1)
    c, _ = cold.acquire(turn)
    cold.prefill(c, turn, 0, len(turn) - 1)
    assert torch.equal(got, cold.step([Row(c, turn[-1], len(turn) - 1)]))


def few_rows_and_chunks_carry_the_state(b, ids: torch.Tensor) -> None:
    """Up to 12 rows a prompt call gives one decode step a token's logits bit for bit; the server's prompt kernels
    (panel_rows) in chunks leave the state (and the logits) one prefill leaves, bit for bit."""
    from kernelfit.engine.kv_cache import empty

    forward(b, ids[:60], 0)
    few = forward(b, ids[60:66], 60, True)
    forward(b, ids[:60], 0)
    assert torch.equal(few, torch.cat([forward(b, ids[i:i + 1], i) for i in range(60, 66)]))
    one, parts = empty(b.cfg, b.kv_cache, 64), empty(b.cfg, b.kv_cache, 64)
    whole = forward(b, ids[:50], 0, cache=one, panel_rows=True)
    for start, end in ((0, 3), (3, 30), (30, 50)):
        last = forward(b, ids[start:end], start, cache=parts, panel_rows=True)
    assert torch.equal(whole, last) and torch.equal(one.state.values, parts.state.values)


def agreement(want: torch.Tensor, got: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Top-1 agreement and the cosine at each position of two [positions, vocab] logit tables."""
    return (float((want.argmax(-1) == got.argmax(-1)).float().mean()),
            torch.nn.functional.cosine_similarity(want, got, dim=-1))


def steps_and_prompt(b, ids: torch.Tensor, want: torch.Tensor, prompt: int = 100):
    """The agreement with `want` (the reference's logits over `ids`) of the decode steps after a `prompt`-token
    prefill (float32 activations), and of one prefill of all of `ids` (the prompt kernels)."""
    reset_cache(b, len(ids) + 8)
    forward(b, ids[:prompt], 0)
    steps = agreement(want[prompt:], torch.cat([forward(b, ids[i:i + 1], i) for i in range(prompt, len(ids))]))
    reset_cache(b, len(ids) + 8)
    return steps, agreement(want, forward(b, ids, 0, True))
