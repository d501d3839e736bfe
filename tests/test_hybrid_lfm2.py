"""LFM2 on the packed engine: short-convolution layers beside attention layers, the recurrent state a sequence carries
(engine/recurrent.py), checked against transformers' own Lfm2 modeling code on the same weights (transformers reads
LFM2's GGUF files, dequantized by gguf-py)."""

from __future__ import annotations

import pytest
import torch

from gguf_tiny import LFM2_KINDS, write_tiny_lfm2
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import empty, reset_cache
from kernelfit.engine.recipe import RouterKind
from kernelfit.engine.weights import dot_available
from test_packed_gguf import _tokens

pytestmark = pytest.mark.skipif(not dot_available(), reason="a hybrid runs in the C++ step only (no compiler here)")
N = 300  # positions compared, as the issue asks (>= 256)


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory):
    """The file, transformers' logits for N tokens (prompt longer than the convolution's 3 taps), and a build."""
    from transformers import AutoModelForCausalLM

    d = tmp_path_factory.mktemp("lfm2")
    path = write_tiny_lfm2(d / "m.gguf", "Q8_0")
    ids = _tokens(N)
    ref = AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(ids[None], use_cache=False).logits[0]
        for layer in ref.model.layers:  # without its convolutions the model is another one: the test can tell
            if not layer.is_attention_layer:
                layer.conv.conv.weight.zero_()
        without = ref(ids[None], use_cache=False).logits[0]
    b = build_lean(path)
    reset_cache(b, N + 8)
    return path, ids, want, without, b


def agree(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """Teacher-forced top-1 agreement and the lowest logit cosine over the rows."""
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    return float((want.argmax(-1) == got.argmax(-1)).float().mean()), float(cos.min())


def prompt_and_decode_agree(b, ids: torch.Tensor, want: torch.Tensor, prompted: int = 100) -> torch.Tensor:
    """One prompt of every id (every row's logits), and `prompted` prompt tokens then a decode step a token (the state
    carried a token at a time): each top-1 >= 99% and cosine >= 0.999 at every row against `want`. Returns the
    prompt's logits."""
    prompt = forward(b, ids, 0, True)
    forward(b, ids[:prompted], 0)
    steps = torch.cat([forward(b, ids[i:i + 1], i) for i in range(prompted, len(ids))])
    for got in (prompt, torch.cat([prompt[:prompted], steps])):
        top1, cos = agree(want, got)
        assert top1 >= 0.99 and cos >= 0.999, (top1, cos)
    return prompt


def prompt_and_steps(b, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's logits of one prompt, and of a decode step a token from position 0 (the first row the prompt's)."""
    reset_cache(b, len(ids) + 8)
    prompt = forward(b, ids, 0, True)
    forward(b, ids[:1], 0)
    return prompt, torch.cat([prompt[:1]] + [forward(b, ids[i:i + 1], i) for i in range(1, len(ids))])


def test_lfm2_prompt_and_decode_agree_with_transformers(lfm2):
    """Teacher-forced over 300 positions: one prompt (the bf16 panels, every row's logits), and 100 prompt tokens then
    200 decode steps: top-1 >= 99%, logit cosine >= 0.999 at every position."""
    _, ids, want, without, b = lfm2
    prompt = prompt_and_decode_agree(b, ids, want)
    assert agree(without, prompt)[1] < 0.99  # the convolutions shape the answer
    assert b.cfg.kv_layers == LFM2_KINDS.count("attention") and b.cfg.recurrent_layers == LFM2_KINDS.count("conv")
    assert b.model.k_cache.shape[0] == b.cfg.kv_layers  # keys and values for the attention layers only


def test_decode_steps_equal_a_few_row_prompt_bit_for_bit(lfm2):
    """Up to 12 rows a prompt call takes the decode step's exact products and the same convolution arithmetic: its rows'
    logits equal one decode step a token, bit for bit, from the same state."""
    _, ids, _, _, b = lfm2
    forward(b, ids[:60], 0)
    few = forward(b, ids[60:66], 60, True)
    forward(b, ids[:60], 0)
    steps = torch.cat([forward(b, ids[i:i + 1], i) for i in range(60, 66)])
    assert torch.equal(few, steps)


def test_a_prompt_in_chunks_carries_the_state_exactly(lfm2):
    """The server's prompt kernels compute each row alone (panel_rows): a prompt prefilled in three chunks — chunk
    edges inside the convolution's window — leaves the state and the cache one prefill leaves, bit for bit."""
    _, ids, _, _, b = lfm2
    one, parts = empty(b.cfg, b.kv_cache, 64), empty(b.cfg, b.kv_cache, 64)
    whole = forward(b, ids[:50], 0, cache=one, panel_rows=True)
    for start, end in ((0, 17), (17, 18), (18, 50)):
        last = forward(b, ids[start:end], start, cache=parts, panel_rows=True)
    assert torch.equal(whole, last)
    assert torch.equal(one.state.values, parts.state.values) and one.state.at == parts.state.at == 50
    assert torch.equal(one.k, parts.k)


def test_a_call_away_from_the_state_position_is_refused(lfm2):
    """The state holds only its latest position: a call elsewhere (but 0, which starts over) is an error, not a
    silently wrong answer."""
    _, ids, _, _, b = lfm2
    forward(b, ids[:20], 0)
    with pytest.raises(ValueError, match="recurrent state is at position 20, not 10"):
        forward(b, ids[10:11], 10)
    forward(b, ids[:5], 0)  # position 0 starts the state over
    assert b.state.at == 5


def test_state_bytes_do_not_grow_with_the_context(lfm2):
    """The memory model: a 32k context costs the attention layers' keys and values only, plus a fixed state and the
    engine's copies of it (8 checkpoints of this small one, as the engine keeps them)."""
    from kernelfit.model.params import checkpoints_kept
    from kernelfit.model.spec import spec_from_gguf
    from kernelfit.planner.memory import kv_cache_bytes

    path, _, _, _, b = lfm2
    s = spec_from_gguf(path, "lfm2").text
    assert (s.num_layers, s.recurrent_layers) == (len(LFM2_KINDS), LFM2_KINDS.count("conv"))
    assert s.state_values == b.state.values.numel()
    kv_layers = len(LFM2_KINDS) - s.recurrent_layers
    for context in (1024, 32768):
        want = 2 * s.num_kv_heads * s.head_dim * kv_layers * context * 2 + 4 * s.state_values * (1 + 8)
        assert checkpoints_kept(4 * s.state_values) == 8
        assert kv_cache_bytes(s, context, 1, "bfloat16", value_bytes=2.0) == want
        # transformers' caches keep no checkpoints
        assert kv_cache_bytes(s, context, 1, "bfloat16") == want - 8 * 4 * s.state_values


def _cold(b, prompt: list[int], decode: list[int]) -> torch.Tensor:
    """A fresh sequence: `prompt` but its last token prefilled (the server's prompt kernels), then one step a token of
    prompt[-1:] + decode: the logits of those steps."""
    from kernelfit.engine.sequences import Row, SequencePool

    pool = SequencePool(b, 1)
    seq, _ = pool.acquire(prompt)
    pool.prefill(seq, prompt, 0, len(prompt) - 1)
    tokens = prompt[-1:] + decode
    return torch.cat([pool.step([Row(seq, t, len(prompt) - 1 + i)]) for i, t in enumerate(tokens)])


def test_server_sequences_resume_a_shared_prefix_from_its_state_never_anothers(lfm2):
    """A sequence reused for the next turn resumes from the state saved where its prompt's prefill ended (not the
    state its decode steps left); one taken by another conversation brings it back from the RAM store with the state
    at its end; a prompt sharing only part of a prefix starts over rather than take a state that saw other tokens.
    Each time the logits equal a cold sequence's, bit for bit."""
    from kernelfit.engine.sequences import Row, SequencePool

    _, ids, _, _, b = lfm2
    first, reply, more = ids[:80].tolist(), ids[80:90].tolist(), ids[90:130].tolist()
    pool = SequencePool(b, 1, store_bytes=64 << 20)
    seq, same = pool.acquire(first)
    pool.prefill(seq, first, 0, len(first) - 1)
    for i, t in enumerate(first[-1:] + reply):  # decode steps move the state past the prefix
        pool.step([Row(seq, t, len(first) - 1 + i)])
    pool.release(seq)
    turn = first + reply + more
    seq, same = pool.acquire(turn)
    assert same == len(first) - 1 and seq.cache.state.at == same  # back to the checkpoint, not the decode's state
    pool.prefill(seq, turn, same, len(turn) - 1)
    got = pool.step([Row(seq, turn[-1], len(turn) - 1)])
    assert torch.equal(got, _cold(b, turn, [])[-1:])
    pool.release(seq)
    other = ids[200:290].tolist()  # another conversation takes the only sequence: the turn goes to the store
    seq, _ = pool.acquire(other)
    pool.prefill(seq, other, 0, len(other) - 1)
    pool.release(seq)
    again = turn + ids[130:140].tolist()
    seq, same = pool.acquire(again)
    assert same == len(turn) - 1 and seq.cache.state.at == same
    pool.prefill(seq, again, same, len(again) - 1)
    assert torch.equal(pool.step([Row(seq, again[-1], len(again) - 1)]), _cold(b, again, [])[-1:])
    pool.release(seq)
    # sharing 70 tokens of a stored prefix of 119: its state is the one at 119, so nothing is copied back
    partial = turn[:70] + ids[290:300].tolist()
    seq, same = pool.acquire(partial)
    assert same == 0


def test_chat_runner_next_turn_restores_its_checkpoint(lfm2):
    """`kernelfit run`'s chat: the next turn reuses the prompt the last one prefilled (its state saved there, before
    the reply's decode steps — drafted ones among them — moved it) and gives a cold start's logits."""
    from kernelfit.engine.runner import LeanRunner
    from kernelfit.model.spec import spec_from_gguf

    path, ids, _, _, b = lfm2
    runner = LeanRunner(b, spec_from_gguf(path, "lfm2"))
    assert runner.can_speculate  # drafts run on hybrids (the state copied before them: tests/test_hybrid_qwen35.py)
    first = ids[:60].tolist()
    logits, _ = runner.start(first, 32)
    reply = list(runner.greedy(first, int(logits.argmax()), len(first), 8))
    turn = first + reply + ids[60:100].tolist()
    warm, same = runner.start(turn, 32)
    assert same == len(first) - 1
    cold, same = runner.start(turn, 32, reuse=False)
    assert same == 0 and torch.equal(warm, cold)


def test_without_the_cpp_step_a_hybrid_is_refused_in_one_line(lfm2, monkeypatch, capsys):
    """Where kernelfit's C++ step does not run (KERNELFIT_DOT=0 stands in for no compiler), a hybrid's recurrent layers
    cannot run: one line, exit 2, before the plan is shown — not after packing."""
    from kernelfit.cli import main

    path = lfm2[0]
    monkeypatch.setenv("KERNELFIT_DOT", "0")
    capsys.readouterr()
    rc = main(["run", str(path), "--prompt", "t1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "recurrent layers run in kernelfit's C++ step only" in err[0], err


def test_lfm2_moe_agrees_with_transformers(tmp_path):
    """LFM2-MoE (lfm2moe): a dense first layer, then experts weighed by their sigmoid and chosen by it plus a selection
    bias, renormalised — against transformers' Lfm2Moe on the same weights. Decode steps (exact products): top-1 >=
    99%, cosine >= 0.999 everywhere. The prompt's bf16 panels can flip a routing near-tie (the chosen 2nd and the
    3rd expert's scores within 0.01), and the convolution carries a flipped row into the next two: every prompt row
    below 0.999 must be within two positions after such a near-tie."""
    from gguf_lfm2moe import tiny_model, write_lfm2moe

    model = tiny_model()
    path = write_lfm2moe(tmp_path / "moe.gguf", model)
    ids = _tokens(N)
    inputs = []
    hooks = [layer.feed_forward.gate.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach())))
             for layer in model.model.layers if hasattr(layer.feed_forward, "gate")]
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
    for h in hooks:
        h.remove()
    near_tie = torch.zeros(N, dtype=torch.bool)
    for layer, (router, x) in zip([la for la in model.model.layers if hasattr(la.feed_forward, "gate")], inputs):
        score = torch.sigmoid(x.reshape(N, -1) @ router.weight.detach().T) + layer.feed_forward.expert_bias
        top = score.topk(3, -1).values
        near_tie |= (top[:, 1] - top[:, 2]) < 0.01
    reach = near_tie | torch.roll(near_tie, 1) | torch.roll(near_tie, 2)
    b = build_lean(path)
    assert (b.cfg.arch, b.cfg.router, b.cfg.experts, b.cfg.top_k, b.cfg.norm_topk) == ("lfm2moe", RouterKind.SIGMOID,
                                                                                       4, 2, True)
    prompt, steps = prompt_and_steps(b, ids)
    top1, cos = agree(want, steps)
    assert top1 >= 0.99 and cos >= 0.999, (top1, cos)
    low = torch.nn.functional.cosine_similarity(want, prompt, dim=-1) < 0.999
    assert agree(want, prompt)[0] >= 0.99 and bool(reach[low].all()), low.nonzero().flatten().tolist()
