"""Qwen3.5 on the packed engine: Gated DeltaNet layers (engine/kernels/delta_net.h) beside gated attention with a
partial rotary, checked against transformers' own Qwen3_5 modeling code on the same weights. transformers reads no
qwen35 GGUF file: the tests write one from the model as llama.cpp's converter does (tests/gguf_qwen35.py), value heads
in llama.cpp's tiled order (2 key heads, 4 value heads)."""

from __future__ import annotations

import pytest
import torch

from engine_checks import few_rows_and_chunks_carry_the_state, resumes_from_the_prefills_state
from gguf_qwen35 import LAYER_TYPES, tiny_model, write_qwen35
from kernelfit.engine.build import build_lean
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.recipe import LayerKind
from kernelfit.engine.weights import dot_available
from test_hybrid_lfm2 import agree, prompt_and_decode_agree, prompt_and_steps
from test_packed_gguf import _tokens

pytestmark = pytest.mark.skipif(not dot_available(), reason="a hybrid runs in the C++ step only (no compiler here)")
N = 300


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen35")
    model = tiny_model()
    path = write_qwen35(d / "m.gguf", model)
    ids = _tokens(N)
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
        for layer in model.model.layers:  # the recurrence's decay at 0 a token: another model, which the test can tell
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.A_log.fill_(10.0)
        other = model(ids[None], use_cache=False).logits[0]
    b = build_lean(path)
    reset_cache(b, N + 8)
    return path, ids, want, other, b


def test_qwen35_prompt_and_decode_agree_with_transformers(qwen35):
    """300 positions, teacher-forced: one prompt (every row's logits), and 100 prompt tokens then 200 decode steps (the
    conv inputs and each value head's [32, 32] state carried a token at a time): top-1 >= 99%, cosine >= 0.999."""
    _, ids, want, other, b = qwen35
    assert b.cfg.layer_kinds == tuple(LayerKind.GATED_DELTA_NET if t == "linear_attention" else LayerKind.ATTENTION
                                      for t in LAYER_TYPES)
    assert b.cfg.delta_heads == (2, 32, 4, 32) and b.cfg.rotary.dims == 16 and b.cfg.attention_gate
    prompt = prompt_and_decode_agree(b, ids, want)
    assert agree(other, prompt)[1] < 0.99  # the recurrence's decay matters
    assert b.model.k_cache.shape[0] == LAYER_TYPES.count("full_attention")


def test_decode_steps_equal_a_few_row_prompt_and_chunks_carry_the_state(qwen35):
    few_rows_and_chunks_carry_the_state(qwen35[4], qwen35[1])


def test_server_sequences_resume_from_the_prefills_state(qwen35):
    resumes_from_the_prefills_state(qwen35[4], qwen35[1])


def test_plan_counts_the_state_not_keys_and_values(qwen35):
    from kernelfit.model.spec import spec_from_gguf

    path, _, _, _, b = qwen35
    s = spec_from_gguf(path, "qwen35").text
    assert (s.num_layers, s.recurrent_layers, s.recurrent_kind) == (6, 4, "Gated DeltaNet")
    assert s.state_values == b.state.values.numel()


def test_qwen35_moe_agrees_with_transformers(tmp_path):
    """Qwen3.5-MoE (qwen35moe): the same layers with a mixture-of-experts FFN — softmax over 4 experts, the top 2
    renormalised, and a shared expert scaled by sigmoid(x . gate) — against transformers' Qwen3_5Moe on the same
    weights. Decode steps (the exact products): top-1 >= 99%, cosine >= 0.999 everywhere. The prompt's bf16 panels
    move a row's router inputs by their rounding: where transformers' 2nd and 3rd experts are within 0.01 of each
    other, the other expert can be chosen (as at llama.cpp's int8 activations), and the recurrent state and attention
    carry that row's other output to the next rows; every prompt row below 0.999 must be such a near-tie or follow one
    within 2 rows, and at most 2% of them. (Which rows flip depends on the float32 rounding of the sums: the AMX
    tiles and the AVX512-BF16 kernel flip different ones; with seed 1 the latter has a row after a near tie too.)"""
    model = tiny_model(moe=True)
    path = write_qwen35(tmp_path / "moe.gguf", model)
    ids = _tokens(N)
    inputs = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach())))
             for layer in model.model.layers]
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
    for h in hooks:
        h.remove()
    near_tie = torch.zeros(N, dtype=torch.bool)
    for router, x in inputs:
        top = torch.softmax(x.reshape(N, -1) @ router.weight.detach().T, -1).topk(3, -1).values
        near_tie |= (top[:, 1] - top[:, 2]) < 0.01
    b = build_lean(path)
    assert b.cfg.arch == "qwen35moe" and (b.cfg.experts, b.cfg.top_k, b.cfg.norm_topk) == (4, 2, True)
    prompt, steps = prompt_and_steps(b, ids)
    top1, cos = agree(want, steps)
    assert top1 >= 0.99 and cos >= 0.999, (top1, cos)
    top1, _ = agree(want, prompt)
    low = torch.nn.functional.cosine_similarity(want, prompt, dim=-1) < 0.999
    near = near_tie | torch.cat([near_tie.new_zeros(1), near_tie[:-1]]) | torch.cat([near_tie.new_zeros(2), near_tie[:-2]])
    assert top1 >= 0.99 and bool(near[low].all()) and int(low.sum()) <= 0.02 * N, (top1, low.nonzero().tolist())


def test_checkpoints_keep_within_their_byte_budget():
    """A sequence keeps at most 8 state copies and at most 64 MiB of them, the newest: Qwen3.5-0.8B's ~19 MiB state
    keeps 3, a small one 8, one over 64 MiB itself 1 — what the plan's memory counts (checkpoints_kept)."""
    from kernelfit.engine.recurrent import CHECKPOINT_BYTES, Checkpoints, State
    from kernelfit.model.params import checkpoints_kept

    for floats, kept in ((19 << 18, 3), (1000, 8), (17 << 20, 1)):
        assert checkpoints_kept(4 * floats) == kept
        c, s = Checkpoints(), State(torch.zeros(floats))
        for at in range(1, 11):
            s.at = at
            c.take(s)
        assert [x.at for x in c.saved] == list(range(11 - kept, 11))
        assert sum(x.nbytes for x in c.saved) <= max(CHECKPOINT_BYTES, s.nbytes)


def test_speculative_greedy_on_a_hybrid_gives_the_plain_tokens_in_fewer_steps(qwen35, monkeypatch):
    """Prompt-lookup drafts on Qwen3.5 (before: never drafted on a hybrid): the recurrent state is copied before each
    drafted step and, where a draft is rejected, the kept rows run again from the copy — the greedy tokens equal one
    step a token's, in fewer steps. This random model repeats its last token, so drafts of the text are all kept;
    drafts whose last token is wrong (three repeats, then another) are rejected at every step: the same tokens and
    the same final state bit for bit; without the copy put back a rejected token stays in the DeltaNet state (the
    test can tell; this model's tokens hardly depend on it)."""
    from kernelfit.engine.recurrent import State
    from kernelfit.engine.runner import LeanRunner
    from kernelfit.engine.speculative import PromptLookup

    _, ids, _, _, b = qwen35
    r = LeanRunner(b, None)
    prompt = ids[:24].tolist() * 4  # text that repeats, as an edit repeats its source

    def run(speculative: bool) -> tuple[list[int], int, torch.Tensor]:  # the tokens, and the state they left
        tokens = r.generate_ids(prompt, 80, stop_at_eos=False, speculative=speculative)[0]
        return tokens, b.state.at, b.state.values.clone()

    plain = run(False)
    plain_steps = r.steps
    fast = run(True)
    assert fast[0] == plain[0] and r.steps < plain_steps
    monkeypatch.setattr(PromptLookup, "draft", lambda self, limit: (self.tokens[-1:] * 3 + [self.tokens[-1] ^ 1])[
        :max(limit, 0)])
    rejected = run(True)
    assert rejected[0] == plain[0] and rejected[1] == plain[1] and torch.equal(rejected[2], plain[2])
    monkeypatch.setattr(State, "load", lambda self, other: setattr(self, "at", other.at))  # the position, not values
    kept_in = run(True)
    assert kept_in[1] == plain[1] and not torch.equal(kept_in[2], plain[2])
