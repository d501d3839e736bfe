"""A checkpoint's generation_config.json (model/generation.py): `serve` samples with its temperature / top_p where a
request does not say (as vLLM's server), and the engine stops on every end-of-sequence id it lists (Llama 3's
<|eot_id|> beside <|end_of_text|>)."""

from __future__ import annotations

import json

import pytest

from kernelfit.model.generation import generation_defaults
from kernelfit.serve.protocol import ApiError, parse_chat, parse_completion


def _write(path, cfg) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "generation_config.json").write_text(json.dumps(cfg))


def test_the_defaults_are_read_from_the_checkpoint_and_bad_values_left_to_the_request(tmp_path):
    _write(tmp_path / "a", {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [128001, 128009]})
    d = generation_defaults(str(tmp_path / "a"))
    assert (d.temperature, d.top_p, d.eos_token_ids) == (0.6, 0.9, (128001, 128009))
    _write(tmp_path / "b", {"temperature": "hot", "top_p": 0, "eos_token_id": 2})
    d = generation_defaults(str(tmp_path / "b"))
    assert (d.temperature, d.top_p, d.eos_token_ids) == (None, None, (2,))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "generation_config.json").write_text("{not json")
    assert generation_defaults(str(tmp_path / "c")) == generation_defaults(str(tmp_path / "missing"))
    assert generation_defaults(str(tmp_path / "a"), "model.gguf").temperature is None  # a GGUF file: none


def test_requests_take_the_defaults_where_they_do_not_say(tmp_path):
    _write(tmp_path, {"temperature": 0.6, "top_p": 0.9})
    d = generation_defaults(str(tmp_path))
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    s = parse_chat(dict(chat), d).sampling
    assert (s.temperature, s.top_p) == (0.6, 0.9)
    s = parse_chat(dict(chat, temperature=0, top_p=0.5), d).sampling
    assert (s.temperature, s.top_p) == (0.0, 0.5)  # the request wins
    s = parse_chat(dict(chat)).sampling
    assert (s.temperature, s.top_p) == (1.0, 1.0)  # no checkpoint defaults: OpenAI's
    s = parse_completion({"model": "m", "prompt": "hi"}, d).sampling
    assert (s.temperature, s.top_p) == (0.6, 0.9)
    with pytest.raises(ApiError, match="temperature"):
        parse_chat(dict(chat, temperature=-1), d)


def test_the_engine_stops_on_every_end_of_sequence_id_the_checkpoint_lists(tmp_path):
    from kernelfit.api import load
    from test_safetensors_engine import _checkpoint, _word_tokenizer

    _checkpoint(tmp_path, "llama")
    _word_tokenizer(tmp_path)
    _write(tmp_path, {"eos_token_id": [2, 7], "temperature": 0.6})
    loaded = load(str(tmp_path), use_tune_cache=False)
    assert loaded.plan.quantization.method == "engine"
    assert {2, 7} <= loaded.model.eos_ids
