"""Speculative decoding with a draft model (`--draft-model`): the draft decodes ahead, the target checks its tokens in
one step; the output is exactly the target's alone, greedy or seeded-sampled, whatever the draft proposes."""

from __future__ import annotations

import json

import pytest
import torch

import kernelfit
from gguf_tiny import write_tiny, write_tiny_lfm2
from kernelfit.engine.draft_model import DraftModel, ModelDrafter, vocabulary_mismatch
from kernelfit.engine.speculative import PromptLookup

STORY = "Write a short story about a robot who learns to paint."  # text a prompt lookup cannot draft


def _chat(tok, text: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return ids["input_ids"] if isinstance(ids, dict) else list(ids)


@pytest.fixture(scope="module")
def smol():
    """The bundled SmolLM2 and a second load of it as its draft (its own build and KV cache)."""
    r, tok, _ = kernelfit.load("smollm2-135m")
    if not r.can_speculate:
        pytest.skip("no C++ step here: drafts are not checked")
    d, _, _ = kernelfit.load("smollm2-135m")
    assert d.build is not r.build
    return r, tok, d


def _greedy(r, ids, n, draft):
    r.draft = draft
    try:
        tokens, _, _ = r.generate_ids(ids, n, stop_at_eos=False, speculative=draft is not None)
        return tokens, r.steps
    finally:
        r.draft = None


def test_a_draft_model_gives_the_plain_greedy_tokens_in_fewer_steps(smol, monkeypatch):
    """SmolLM2 drafting for itself: every drafted token the target checks is its own (the draft's KV cache follows the
    sequence: a stale or misplaced position would propose other tokens), on text prompt lookup cannot draft."""
    from kernelfit.engine.speculative import DraftGate

    monkeypatch.setattr(DraftGate, "allow", lambda self: True)  # measure the drafts, not whether they pay here
    r, tok, d = smol
    ids = _chat(tok, STORY)
    plain, plain_steps = _greedy(r, ids, 96, None)
    draft = DraftModel(d, "smollm2-135m", p_min=0.0)  # every token drafted, however unsure
    fast, steps = _greedy(r, ids, 96, draft)
    assert fast == plain and plain_steps == 95
    assert draft.proposed >= 40 and draft.kept >= 0.95 * draft.proposed, (draft.proposed, draft.kept)
    assert steps <= plain_steps - draft.kept + 1
    # the draft's cache holds the sequence's tokens, and past them at most the last draft's
    seq, same = ids + fast, 0
    while same < min(len(seq), len(draft.held)) and seq[same] == draft.held[same]:
        same += 1
    assert len(draft.held) - same <= 11 and same >= len(seq) - 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny Llamas of one vocabulary: `target`, and `other` with different random weights."""
    root = tmp_path_factory.mktemp("draft")
    return {name: str(write_tiny(root / f"{name}.gguf", "Q8_0", seed=seed)) for name, seed in
            (("target", 0), ("other", 1))}


def _loaded(path):
    r, tok, _ = kernelfit.load(path)
    if not r.can_speculate:
        pytest.skip("no C++ step here: drafts are not checked")
    return r, tok


@pytest.mark.parametrize("draft_of,min_kept", [("target", 0.95), ("other", 0.0)])
def test_any_draft_leaves_the_greedy_tokens_unchanged(tiny, draft_of, min_kept, monkeypatch):
    """A draft of other weights is mostly rejected (p_min 0: it proposes whatever it decodes), the same weights' mostly
    kept; the tokens are the target's alone either way."""
    from kernelfit.engine.speculative import DraftGate

    monkeypatch.setattr(DraftGate, "allow", lambda self: True)
    r, tok = _loaded(tiny["target"])
    d, _ = _loaded(tiny[draft_of])
    ids = list(range(3, 40))
    plain, _ = _greedy(r, ids, 80, None)
    draft = DraftModel(d, draft_of, p_min=0.0)
    fast, steps = _greedy(r, ids, 80, draft)
    assert fast == plain
    assert draft.proposed >= 60 and draft.kept >= min_kept * draft.proposed, (draft.proposed, draft.kept)
    if draft_of == "other":
        assert draft.kept < 0.5 * draft.proposed  # rejections were checked, not only acceptances


def test_a_draft_stops_before_a_token_it_gives_less_than_p_min(tiny):
    """llama.cpp's p_min: the draft proposes its next token only where its probability is at least p_min."""
    d, _ = _loaded(tiny["other"])
    ids = list(range(3, 20))
    from kernelfit.engine.kv_cache import reset_cache

    reset_cache(d.build, 64)
    p = float(torch.softmax(d.prompt_logits(ids, 0).float(), -1).max())
    assert DraftModel(d, "other", p_min=p + 1e-4).propose(ids, 8, 512) == []
    assert len(DraftModel(d, "other", p_min=p - 1e-4).propose(ids, 8, 512)) >= 1
    # a token the target's logits do not have is never proposed
    assert DraftModel(d, "other", p_min=0.0).propose(ids, 8, 0) == []


def _served(r, tok, ids, sampling, draft, monkeypatch):
    """One request through the server's engine with `draft` as the runner's draft model (None: no drafts at all)."""
    from test_speculative import _served as served

    r.draft = draft
    try:
        return served(r, tok, ids, sampling, draft is not None, monkeypatch, tokens=64)
    finally:
        r.draft = None


def test_sampled_drafts_from_a_draft_model_give_the_seeded_tokens_of_plain_sampling(smol, monkeypatch):
    """The server samples each drafted row as a plain step samples it: a seeded request's tokens are those without
    drafts (the distribution exact), in fewer steps where samples confirm the draft."""
    from kernelfit.engine.speculative import DraftGate
    from kernelfit.serve.protocol import Sampling

    monkeypatch.setattr(DraftGate, "allow", lambda self: True)
    r, tok, d = smol
    ids = _chat(tok, STORY)
    s = Sampling(64, temperature=0.7, top_p=1.0, seed=3, ignore_eos=True)
    plain, plain_steps = _served(r, tok, ids, s, None, monkeypatch)
    draft = DraftModel(d, "smollm2-135m")
    fast, steps = _served(r, tok, ids, s, draft, monkeypatch)
    assert fast == plain and len(plain) == 64 and plain_steps == 64
    assert draft.kept > 0 and steps < plain_steps


def test_drafters_say_whether_asking_them_costs_a_step():
    """The gate counts a draft model's vain asks as drafted steps (they cost its steps); a lookup miss is a plain one."""
    assert ModelDrafter.costly and not PromptLookup.costly


def test_vocabularies_are_compared_as_llama_cpp_compares_a_draft(tiny, tmp_path):
    from kernelfit.engine.runner import load_tokenizer
    from kernelfit.model.spec import load_model_spec

    smol_tok = load_tokenizer(load_model_spec("smollm2-135m"))
    tiny_tok = load_tokenizer(load_model_spec(tiny["target"]))
    assert vocabulary_mismatch(tiny_tok, load_tokenizer(load_model_spec(tiny["other"]))) is None
    assert "tokens, the model's 49152" in vocabulary_mismatch(smol_tok, tiny_tok)
    assert vocabulary_mismatch(smol_tok, smol_tok) is None


def test_the_plan_names_the_draft_model(tiny):
    from kernelfit.planner.types import Preferences

    plain = kernelfit.make_plan(tiny["target"]).kernels["decode"].reason
    drafted = kernelfit.make_plan(tiny["target"], Preferences(draft_model="small.gguf")).kernels["decode"].reason
    assert "prompt-lookup" in plain and "small.gguf" not in plain
    assert "draft model small.gguf" in drafted and "prompt-lookup" not in drafted


def test_run_with_a_draft_model_answers_and_reports_its_drafts(capsys):
    from kernelfit.cli import main

    import glob
    from kernelfit.model.spec import load_model_spec

    path = glob.glob(load_model_spec("smollm2-135m").model_dir + "/*.gguf")[0]
    assert main(["run", "--prompt", "What is the capital of France?", "--max-new-tokens", "12",
                 "--draft-model", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "Paris" in out["text"]
    assert out["draft"]["model"] == path and out["draft"]["kept"] <= out["draft"]["proposed"]
    assert "draft model" in out["plan"]["kernels"]["decode"]["reason"]


def test_a_hybrid_draft_is_refused_before_loading(tiny, tmp_path):
    from kernelfit.errors import UsageError

    lfm2 = write_tiny_lfm2(tmp_path / "lfm2.gguf", "Q8_0")
    with pytest.raises(UsageError, match="recurrent layers"):
        kernelfit.load(tiny["target"], draft_model=str(lfm2))
