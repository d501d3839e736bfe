"""kernelfit's own tokenizer for a transformers checkpoint (engine/safetensors/tokenizer.py) gives the same tokens and
text as transformers' tokenizer of the same tokenizer.json: the shapes of the Llama / Qwen / SmolLM families (GPT-2's
ByteLevel split, a Split regex, Digits, NFC, ignore_merges, a leading BOS), and other shapes are left to
transformers."""

from __future__ import annotations

import json

import pytest

import gguf_tiny_vocab as tv
from kernelfit.engine.safetensors.tokenizer import json_tokenizer
from test_gguf_tokenizer import FIXED, assert_same, texts


def _saved(tmp_path, pre: str):
    """A tiny byte-level tokenizer (tests/gguf_tiny_vocab.py's learned vocabulary) saved by transformers as
    tokenizer.json + tokenizer_config.json + chat_template.jinja."""
    from transformers import AutoTokenizer

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{pre}.gguf"
    tv.write_byte_level(path, pre=pre)
    out = tmp_path / "tok"
    AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name).save_pretrained(out)
    return out


def _edit(folder, change) -> None:
    f = folder / "tokenizer.json"
    tj = json.loads(f.read_text())
    change(tj)
    f.write_text(json.dumps(tj))


def _compare(folder, n: int = 200):
    from transformers import AutoTokenizer

    ours, ref = json_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    assert ours is not None and ours.kind == "byte-level-bpe"
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    assert_same(ours, ref, texts(ours, n))
    assert len(ours.encode(FIXED[0], False)) <= 0.6 * len(FIXED[0])  # merges do happen
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    for gen in (True, False):
        assert ours.apply_chat_template(chat, add_generation_prompt=gen) == \
            ref.apply_chat_template(chat, add_generation_prompt=gen, return_dict=False)
    return ours


@pytest.mark.parametrize("pre", ["smollm", "llama3", "qwen2"])
def test_tokenizer_json_files_tokenize_like_transformers(tmp_path, pre):
    _compare(_saved(tmp_path, pre))


def test_the_shapes_of_real_checkpoints_tokenize_like_transformers(tmp_path):
    """SmolLM2's own tokenizer.json splits digits one by one before GPT-2's split; Llama 3's ignores merges for words
    in the vocabulary and puts <|begin_of_text|> first; Qwen2's normalizes to NFC."""
    smol = _saved(tmp_path / "a", "smollm")
    _edit(smol, lambda tj: tj.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}))
    ours = _compare(smol)
    assert ours.encode("year 2026", False)[-4:] == [ours.tokens.get(c) for c in "2026"]

    llama = _saved(tmp_path / "b", "llama3")
    tj = json.loads((llama / "tokenizer.json").read_text())
    bos = next(a for a in tj["added_tokens"] if a["special"])["content"]

    def llama3(tj):
        tj["model"]["ignore_merges"] = True
        tj["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                      {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [tj["model"]["vocab"].get(bos, next(
                 a["id"] for a in tj["added_tokens"] if a["content"] == bos))], "tokens": [bos]}}}]}
    _edit(llama, llama3)
    cfg = json.loads((llama / "tokenizer_config.json").read_text())
    cfg["bos_token"] = bos
    (llama / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours = _compare(llama)
    assert ours.encode("hello")[0] == ours.bos_token_id and ours.encode("hello", False)[0] != ours.bos_token_id

    qwen = _saved(tmp_path / "c", "qwen2")
    _edit(qwen, lambda tj: tj.update(normalizer={"type": "NFC"}))
    ours = _compare(qwen)
    assert ours.encode("cafe\u0301", False) == ours.encode("caf\u00e9", False)  # NFC: one é


def test_shapes_it_does_not_reproduce_are_left_to_transformers(tmp_path):
    folder = _saved(tmp_path, "smollm")
    _edit(folder, lambda tj: tj["added_tokens"][0].update(lstrip=True))
    assert json_tokenizer(folder) is None
    _edit(folder, lambda tj: (tj["added_tokens"][0].update(lstrip=False), tj.update(normalizer={"type": "NFKC"})))
    assert json_tokenizer(folder) is None
    _edit(folder, lambda tj: (tj.update(normalizer=None), tj["model"].update(type="Unigram")))
    assert json_tokenizer(folder) is None
    (folder / "tokenizer.json").unlink()
    assert json_tokenizer(folder) is None
