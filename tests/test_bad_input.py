"""Bad input, as a careless or unlucky user brings it, across every command and the Python API: each case
ends with exit code 2 (the API: UsageError), exactly one line on stderr, no traceback, and nothing left in
the cache or the working directory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from conftest import config_path

LLAMA = json.loads(Path(config_path("llama-2-7b")).read_text())
QWEN = config_path("qwen2.5-0.5b")


def _cfg(**change) -> dict:
    d = dict(LLAMA)
    for k, v in change.items():
        if v is ...:
            d.pop(k, None)
        else:
            d[k] = v
    return d


# config.json contents that must be refused (name -> JSON text)
BAD_CONFIGS = {
    "not json": "{not json",
    "a list": "[1, 2]",
    "a string": '"llama"',
    "empty object": "{}",
    "no model_type": json.dumps(_cfg(model_type=...)),
    "model_type list": json.dumps(_cfg(model_type=["llama"])),
    "model_type number": json.dumps(_cfg(model_type=7)),
    "unknown model_type": json.dumps(_cfg(model_type="not-a-model")),
    "architectures int": json.dumps(_cfg(architectures=5)),
    "architectures of ints": json.dumps(_cfg(architectures=[1, 2])),
    "hidden_size true": json.dumps(_cfg(hidden_size=True)),
    "hidden_size string": json.dumps(_cfg(hidden_size="4096")),
    "hidden_size float": json.dumps(_cfg(hidden_size=4096.5)),
    "hidden_size zero": json.dumps(_cfg(hidden_size=0)),
    "hidden_size negative": json.dumps(_cfg(hidden_size=-4096)),
    "hidden_size huge": json.dumps(_cfg(hidden_size=10**12)),
    "no hidden_size": json.dumps(_cfg(hidden_size=...)),
    "layers zero": json.dumps(_cfg(num_hidden_layers=0)),
    "layers null": json.dumps(_cfg(num_hidden_layers=None)),
    "heads do not divide hidden": json.dumps(_cfg(num_attention_heads=30)),
    "kv heads do not divide heads": json.dumps(_cfg(num_key_value_heads=5)),
    "kv heads negative": json.dumps(_cfg(num_key_value_heads=-8)),
    "kv heads string": json.dumps(_cfg(num_key_value_heads="8")),
    "head_dim zero": json.dumps(_cfg(head_dim=0)),
    "head_dim negative": json.dumps(_cfg(head_dim=-128)),
    "vocab 10**400": '{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, '
                     '"intermediate_size": 11008, "vocab_size": 1' + "0" * 400 + "}",
    "vocab zero": json.dumps(_cfg(vocab_size=0)),
    "intermediate missing": json.dumps(_cfg(intermediate_size=...)),
    "max positions negative": json.dumps(_cfg(max_position_embeddings=-5)),
    "max positions string": json.dumps(_cfg(max_position_embeddings="4k")),
    "quantization list": json.dumps(_cfg(quantization_config=[{"quant_method": "awq"}])),
    "quantization string": json.dumps(_cfg(quantization_config="awq")),
    "quantization unknown method": json.dumps(_cfg(quantization_config={"quant_method": "hqq"})),
    "bits four": json.dumps(_cfg(quantization_config={"quant_method": "gptq", "bits": "four"})),
    "bits true": json.dumps(_cfg(quantization_config={"quant_method": "awq", "bits": True})),
    "group_size string": json.dumps(_cfg(quantization_config={"quant_method": "awq", "bits": 4, "group_size": "128"})),
    "fp8 block bad": json.dumps(_cfg(quantization_config={"quant_method": "fp8", "weight_block_size": [0, 128]})),
    "compressed-tensors without config_groups": json.dumps(_cfg(quantization_config={
        "quant_method": "compressed-tensors", "format": "pack-quantized"})),
    "compressed-tensors block_structure bad": json.dumps(_cfg(quantization_config={
        "quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"], "weights": {
            "num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128]}}}})),
    "qwen3_5 without text_config": json.dumps({"model_type": "qwen3_5", "vision_config": {}}),
    "qwen3_5 text_config not object": json.dumps({"model_type": "qwen3_5", "text_config": [1]}),
    "llava without vision": json.dumps({"model_type": "llava", "text_config": _cfg()}),
    "llava text not object": json.dumps({"model_type": "llava", "text_config": 3, "vision_config": {}}),
    "vision incomplete": json.dumps({"model_type": "llava", "text_config": _cfg(),
                                     "vision_config": {"model_type": "clip_vision_model"}}),
    "unknown vision tower": json.dumps({"model_type": "llava", "text_config": _cfg(),
                                        "vision_config": {"model_type": "resnet"}}),
    "text sub-config model_type list": json.dumps({"model_type": "llava", "text_config": _cfg(model_type=["llama"]),
                                                   "vision_config": {"model_type": "clip_vision_model"}}),
}

# profile files that must be refused (name -> (suffix, bytes))
BAD_PROFILES = {
    "toml syntax": (".toml", b"name = \n"),
    "json syntax": (".json", b"{nope"),
    "non-utf8": (".toml", b"name = '\xff\xfe'\n"),
    "missing cpu": (".json", json.dumps({"name": "x", "memory_gib": 8}).encode()),
    "string memory": (".json", json.dumps({"name": "x", "memory_gib": "lots", "cpu": {"model": "c"}}).encode()),
    "negative memory": (".json", json.dumps({"name": "x", "memory_gib": -8, "cpu": {"model": "c"}}).encode()),
    "bool memory": (".json", json.dumps({"name": "x", "memory_gib": True, "cpu": {"model": "c"}}).encode()),
    "unknown key": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": {"model": "c"}, "gpus": 1}).encode()),
    "cpu not table": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": "fast"}).encode()),
    "cpu cores zero": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": {"model": "c", "cores": 0}}).encode()),
    "empty name": (".json", json.dumps({"name": "", "memory_gib": 8, "cpu": {"model": "c"}}).encode()),
    "bad device kind": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": {"model": "c"},
                                             "devices": [{"kind": "tpu", "name": "t"}]}).encode()),
    "bad capability": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": {"model": "c"},
                                            "devices": [{"kind": "cuda", "name": "g", "compute_capability": "nine",
                                                         "memory_gib": 8}]}).encode()),
    "device memory string": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": {"model": "c"},
                                                  "devices": [{"kind": "cuda", "name": "g", "memory_gib": "8GB"}]}).encode()),
    "device index negative": (".json", json.dumps({"name": "x", "memory_gib": 8, "cpu": {"model": "c"},
                                                   "devices": [{"kind": "cuda", "name": "g", "memory_gib": 8,
                                                                "index": -1}]}).encode()),
    "a list": (".json", b"[]"),
}


def _gguf(header_only: bytes) -> bytes:
    return header_only


def _gguf_nested() -> bytes:
    key = b"general.x"
    body = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    body += struct.pack("<I", 9) + struct.pack("<IQ", 9, 1)  # array of arrays ...
    body += struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 1)
    return body


def _gguf_truncated_data() -> bytes:
    key = b"general.architecture"
    arch = b"llama"
    body = struct.pack("<4sIQQ", b"GGUF", 3, 1, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)
    body += struct.pack("<Q", len(arch)) + arch
    name = b"token_embd.weight"
    body += struct.pack("<Q", len(name)) + name + struct.pack("<I", 2) + struct.pack("<QQ", 4096, 32000)
    body += struct.pack("<IQ", 0, 0)  # F32 at offset 0: 500 MB of data that is not there
    return body


BAD_GGUF = {
    "garbage": os.urandom(4096),
    "empty": b"",
    "bad magic": b"GGUX" + bytes(100),
    "version 1": struct.pack("<4sIQQ", b"GGUF", 1, 0, 0),
    "truncated header": struct.pack("<4sIQQ", b"GGUF", 3, 5, 5)[:20],
    "nested arrays": _gguf_nested(),
    "truncated data": _gguf_truncated_data(),
}


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


BAD_SAFETENSORS = {
    "garbage": os.urandom(2048),
    "empty": b"",
    "header length huge": struct.pack("<Q", 1 << 60) + b"{}",
    "header not json": struct.pack("<Q", 5) + b"{nope",
    "truncated": _safetensors({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}, b"\0" * 100),
    "bad offsets": _safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": "x"}}, b"\0" * 8),
}


def _inputs(tmp: Path) -> dict:
    """Every bad input file this module needs, built once per test in an input folder."""
    d = tmp / "inputs"
    d.mkdir()
    made = {}
    for name, text in BAD_CONFIGS.items():
        f = d / f"config-{len(made)}.json"
        f.write_text(text)
        made[("config", name)] = str(f)
    for name, (suffix, data) in BAD_PROFILES.items():
        f = d / f"profile-{len(made)}{suffix}"
        f.write_bytes(data)
        made[("profile", name)] = str(f)
    for name, data in BAD_GGUF.items():
        f = d / f"model-{len(made)}.gguf"
        f.write_bytes(data)
        made[("gguf", name)] = str(f)
    for name, data in BAD_SAFETENSORS.items():
        m = d / f"st-{len(made)}"
        m.mkdir()
        (m / "config.json").write_text(Path(QWEN).read_text())
        (m / "model.safetensors").write_bytes(data)
        made[("safetensors", name)] = str(m)
    stale = d / "stale-index"
    stale.mkdir()
    (stale / "config.json").write_text(Path(QWEN).read_text())
    (stale / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "pytorch_model-1.bin"}}))
    (stale / "pytorch_model-2.bin").write_bytes(b"\0")
    made["stale index"] = str(stale)
    pickle_dir = d / "pickle-only"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text(Path(QWEN).read_text())
    (pickle_dir / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    made["pickle"] = str(pickle_dir)
    config_only = d / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(Path(QWEN).read_text())
    made["config only"] = str(config_only)
    empty_dir = d / "empty-dir"
    empty_dir.mkdir()
    made["empty dir"] = str(empty_dir)
    (d / "notes.txt").write_text("not an image, not a model")
    made["text file"] = str(d / "notes.txt")
    made["dir"] = str(d)
    from gguf_tiny import write_tiny  # a GGUF file whose tokenizer metadata transformers cannot read

    made["gguf no tokenizer scores"] = str(write_tiny(d / "no-scores.gguf", "Q4_0", tokenizer=False))
    from gguf_tiny import write_tiny_lfm2  # hybrids whose per-layer keys are damaged

    made["lfm2 short head table"] = str(write_tiny_lfm2(d / "lfm2-heads.gguf", "Q8_0", head_count_kv=[0, 2, 0]))
    made["qwen35 odd value heads"] = str(_qwen35_header(d / "qwen35-sizes.gguf"))
    return made


def _qwen35_header(path: Path) -> Path:
    """A qwen35 file's keys alone (no tensors) whose ssm.inner_size is not whole value heads."""
    from gguf import GGUFWriter
    from gguf_tiny import finish, tiny_vocab

    w = GGUFWriter(str(path), "qwen35")
    for add, value in (("add_context_length", 1024), ("add_embedding_length", 256), ("add_block_count", 4),
                       ("add_feed_forward_length", 512), ("add_head_count", 4), ("add_head_count_kv", 2),
                       ("add_key_length", 64), ("add_value_length", 64), ("add_ssm_conv_kernel", 4),
                       ("add_ssm_state_size", 32), ("add_ssm_group_count", 2), ("add_ssm_time_step_rank", 4),
                       ("add_ssm_inner_size", 7), ("add_vocab_size", 512)):
        getattr(w, add)(value)
    tiny_vocab(w, 512)
    return finish(w, path)


CLI_CASES: list[tuple[str, callable, str]] = []


def case(name: str, expect: str = ""):
    def add(build):
        CLI_CASES.append((name, build, expect))
        return build
    return add


for _name in BAD_CONFIGS:
    case(f"plan config: {_name}")(lambda m, n=_name: ["plan", m[("config", n)]])
for _name in ("not json", "heads do not divide hidden", "bits four", "vocab 10**400"):
    case(f"run config: {_name}")(lambda m, n=_name: ["run", m[("config", n)], "--prompt", "hi"])
for _name in BAD_PROFILES:
    case(f"plan profile: {_name}")(lambda m, n=_name: ["plan", QWEN, "--profile", m[("profile", n)]])
for _name in ("toml syntax", "string memory", "non-utf8"):
    case(f"doctor profile: {_name}")(lambda m, n=_name: ["doctor", "--profile", m[("profile", n)]])
for _name in BAD_GGUF:
    case(f"plan gguf: {_name}", "GGUF")(lambda m, n=_name: ["plan", m[("gguf", n)]])
for _name in ("garbage", "truncated data"):
    case(f"run gguf: {_name}", "GGUF")(lambda m, n=_name: ["run", m[("gguf", n)], "--prompt", "hi"])
case("run gguf: tokenizer metadata transformers cannot read", "tokenizer")(
    lambda m: ["run", m["gguf no tokenizer scores"], "--prompt", "hi"])
for _what, _expect in (("lfm2 short head table", "has 3 entries for 6 layers"),
                       ("qwen35 odd value heads", "is not whole heads")):
    case(f"plan {_what}", _expect)(lambda m, w=_what: ["plan", m[w]])
    case(f"run {_what}", _expect)(lambda m, w=_what: ["run", m[w], "--prompt", "hi"])
for _name in BAD_SAFETENSORS:
    case(f"plan safetensors: {_name}", "damaged")(lambda m, n=_name: ["plan", m[("safetensors", n)]])
    case(f"run safetensors: {_name}", "damaged")(lambda m, n=_name: ["run", m[("safetensors", n)], "--prompt", "hi"])

FLAG_CASES = [
    (["--context", "0"], "--context"), (["--context", "-5"], "--context"), (["--context", "abc"], "--context"),
    (["--context", "1.5"], "--context"), (["--context", "99999999999"], "--context"),
    (["--context", "1000000"], "max_position"), (["--batch", "0"], "--batch"), (["--batch", "x"], "--batch"),
    (["--dtype", "float8"], "dtype"), (["--dtype", "fp16"], "dtype"), (["--dtype", ""], "dtype"),
    (["--attn", "flash"], "attention"), (["--attn", ""], "attention"),
    (["--device", "cuda:7"], "matches no device"), (["--device", "tpu"], "matches no device"),
    (["--quantization", "3bit"], "invalid choice"), (["--quantization", ""], "invalid choice"),
    (["--max-memory", "garbage"], "--max-memory"), (["--max-memory", "gpu7=1GiB"], "gpu7"),
    (["--max-memory", "cpu=0"], "positive"), (["--max-memory", "cpu=-1GiB"], "--max-memory"),
    (["--max-memory", "cpu=1XB"], "not a size"), (["--max-memory", "cpu="], "not a size"),
    (["--max-memory", "=1GiB"], "--max-memory"), (["--max-memory", "cpu=1GiB,cpu=2GiB"], "twice"),
    (["--max-memory", ""], "--max-memory"), (["--max-memory", "cpu=0.000001GiB"], "does not fit"),
    (["--profile", ""], "--profile"), (["--profile", "no-such-gpu"], "unknown profile"),
    (["--profile", "t4x"], "did you mean"), (["--profile", "/nonexistent/p.toml"], "does not exist"),
    (["--with", "not-a-package"], "unknown package"), (["--without", "torchx"], "unknown package"),
    (["--with", "flash-attn==="], "--with"), (["--tune", "--profile", "t4"], "--tune"),
    (["--unknown-flag"], "unrecognized"), (["--quantization", "4bit", "--max-memory", "cpu=0.01GiB"], "does not fit"),
]
for _flags, _expect in FLAG_CASES:
    case(f"plan flags: {' '.join(_flags)}", _expect)(lambda m, f=_flags: ["plan", QWEN, *f])
for _flags, _expect in FLAG_CASES[:12]:
    case(f"run flags: {' '.join(_flags)}", _expect)(lambda m, f=_flags: ["run", QWEN, "--prompt", "hi", *f])

MODEL_CASES = [
    ("nonexistent path", lambda m: "/nonexistent/model", "no model at"),
    ("empty model", lambda m: "", "no model"),
    ("blank model", lambda m: "   ", "no model"),
    ("dir without config", lambda m: m["empty dir"], "no config.json"),
    ("text file", lambda m: m["text file"], "not valid JSON"),
    ("hub id not cached", lambda m: "someone/not-cached-model", "never downloads"),
    ("stale index", lambda m: m["stale index"], "missing"),
]
for _name, _model, _expect in MODEL_CASES:
    case(f"plan model: {_name}", _expect)(lambda m, f=_model: ["plan", f(m)])
    case(f"run model: {_name}", _expect)(lambda m, f=_model: ["run", f(m), "--prompt", "hi"])
    case(f"bench model: {_name}", _expect)(lambda m, f=_model: ["bench", f(m)])

OTHER = [
    ("run empty prompt", lambda m: ["run", QWEN, "--prompt", ""], "--prompt"),
    ("run blank prompt", lambda m: ["run", QWEN, "--prompt", "   "], "--prompt"),
    ("run non-utf8 prompt", lambda m: ["run", "--prompt", "\udcff\udcfe"], "UTF-8"),
    ("run non-utf8 system", lambda m: ["run", "--prompt", "hi", "--system", "\udcff"], "UTF-8"),
    ("run no prompt", lambda m: ["run"], "--prompt"),
    ("run bad prefill kernel", lambda m: ["run", "--prompt", "hi", "--prefill", "sideways"], "--prefill"),
    ("plan bad quantization int3", lambda m: ["plan", "smollm2-135m", "--quantization", "int3"], "--quantization"),
    ("plan bad kv cache", lambda m: ["plan", "smollm2-135m", "--kv-cache", "q4"], "--kv-cache: invalid choice"),
    ("serve request timeout 0", lambda m: ["serve", "--request-timeout", "0"], "--request-timeout must be a positive"),
    ("serve cache-ram not a number", lambda m: ["serve", "--cache-ram", "1GiB"], "--cache-ram: invalid int value"),
    ("run max-new-tokens 0", lambda m: ["run", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("run config only", lambda m: ["run", m["config only"], "--prompt", "hi"], "no weights"),
    ("run pickle", lambda m: ["run", m["pickle"], "--prompt", "hi"], "pickle"),
    ("run image missing", lambda m: ["run", "--image", "/nonexistent.png", "--prompt", "hi"], "no image"),
    ("run image text file", lambda m: ["run", "--image", m["text file"], "--prompt", "hi"], "not an image"),
    ("run image dir", lambda m: ["run", "--image", m["dir"], "--prompt", "hi"], "not a file"),
    ("run image url", lambda m: ["run", "--image", "https://x.org/a.png", "--prompt", "hi"], "never downloads"),
    ("run image bad data url", lambda m: ["run", "--image", "data:image/png;base64,@", "--prompt", "hi"], "base64"),
    ("run image plain data url", lambda m: ["run", "--image", "data:text/plain,hi", "--prompt", "hi"], "base64"),
    ("run image on a text model", lambda m: ["run", "--image", m[("safetensors", "garbage")] + "/config.json",
                                               "--prompt", "hi"], "not an image"),
    ("bench pickle", lambda m: ["bench", m["pickle"]], "pickle"),
    ("bench config only", lambda m: ["bench", m["config only"]], "no weights"),
    ("bench context 0", lambda m: ["bench", "--context", "0"], "--context"),
    ("bench trials x", lambda m: ["bench", "--trials", "x"], "--trials"),
    ("bench bad quantization", lambda m: ["bench", "--quantization", "2bit"], "invalid choice"),
    ("doctor save to a directory", lambda m: ["doctor", "--save", m["dir"]], "directory"),
    ("doctor save to a missing dir", lambda m: ["doctor", "--save", "/nonexistent/dir/p.toml"], "does not exist"),
    ("doctor unknown profile", lambda m: ["doctor", "--profile", "nope"], "unknown profile"),
    ("doctor empty profile", lambda m: ["doctor", "--profile", ""], "--profile"),
    ("doctor profile is a dir", lambda m: ["doctor", "--profile", m["dir"]], "directory"),
    ("doctor bad --with", lambda m: ["doctor", "--with", "nope"], "unknown package"),
    ("exec missing script", lambda m: ["exec", "/nonexistent.py"], "no script"),
    ("exec a directory", lambda m: ["exec", m["dir"]], "no script"),
    ("unknown command", lambda m: ["serve-me"], "invalid choice"),
    ("matrix bad flag", lambda m: ["matrix", "--html"], "unrecognized"),
    ("profiles bad flag", lambda m: ["profiles", "--yaml"], "unrecognized"),
    ("plan missing model", lambda m: ["plan"], "required"),
    ("plan pickle is fine to plan, run is not", lambda m: ["run", m["pickle"], "--prompt", "x", "--no-health-check"],
     "pickle"),
]
DRAFTS = [  # --draft-model: refused from the plans and headers, before either model loads
    ("run draft model missing", lambda m: ["run", "--prompt", "x", "--draft-model", m["dir"] + "/none.gguf"],
     "--draft-model: no model at"),
    ("run draft model of another vocabulary", lambda m: ["run", "--prompt", "x", "--draft-model",
                                                         m["gguf no tokenizer scores"]], "does not share"),
    ("serve draft model with vllm", lambda m: ["serve", "--engine", "vllm", "--draft-model",
                                               m["gguf no tokenizer scores"]], "vLLM's own speculative"),
    ("run draft model for a model on transformers", lambda m: ["run", "--prompt", "x", "--quantization", "none",
                                                               "--draft-model", m["gguf no tokenizer scores"]],
     "needs kernelfit's engine"),
]
for _name, _build, _expect in DRAFTS:
    case(_name, _expect)(_build)
for _name, _build, _expect in OTHER:
    case(_name, _expect)(_build)


def _one_case(build, expect, tmp_path, monkeypatch, capsys):
    from kernelfit.cli import main

    made = _inputs(tmp_path)
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(cache))
    monkeypatch.setenv("KERNELFIT_TUNE_CACHE", str(cache / "tune.json"))
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    rc = main(build(made))
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert rc == 2, (rc, out.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("kernelfit: error: "), out.err[-2000:]
    assert "Traceback" not in out.err
    assert expect.lower() in lines[0].lower(), lines[0]
    assert not cache.exists() or not any(cache.rglob("*")), sorted(str(p) for p in cache.rglob("*"))
    assert not any(cwd.iterdir())
    return lines[0]


@pytest.mark.parametrize("name,build,expect", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(name, build, expect, tmp_path, monkeypatch, capsys):
    _one_case(build, expect, tmp_path, monkeypatch, capsys)


class _Payload:
    """Pickles as the call `func(arg)`: what a malicious checkpoint runs when it is unpickled without weights_only."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _malicious_checkpoint(path: Path, payload: _Payload) -> Path:
    """A tiny Llama with its tokenizer whose only weights are a pytorch_model.bin (torch's zip format) that calls
    `payload` when unpickled."""
    import zipfile

    import torch
    from test_health import save_tiny

    save_tiny(path)
    (path / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": payload}, path / "pytorch_model.bin")
    with zipfile.ZipFile(path / "pytorch_model.bin") as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert payload.func.__name__.encode() in pickled  # the pickle really calls it
    return path


@pytest.mark.parametrize("func,rejected", [(exec, "builtins.exec"), (os.system, "system")], ids=["exec", "os.system"])
def test_run_allow_pickle_refuses_a_pickle_that_calls_code(func, rejected, tmp_path, monkeypatch, capsys):
    """--allow-pickle still loads with torch's weights-only unpickler: a global it rejects ends as one line that
    names it, exit 2, and the payload never runs."""
    marker = tmp_path / "payload-ran"
    arg = f"open({str(marker)!r}, 'w').write('ran')" if func is exec else f"touch '{marker}'"
    model = _malicious_checkpoint(tmp_path / "model", _Payload(func, arg))
    line = _one_case(lambda m: ["run", str(model), "--allow-pickle", "--prompt", "hi", "--json"], rejected,
                     tmp_path, monkeypatch, capsys)
    assert "not safe to load" in line and str(model) in line, line
    assert not marker.exists()


def test_allow_pickle_refusal_after_the_plan_and_in_the_python_api(tmp_path, monkeypatch, capsys):
    import kernelfit
    from kernelfit.cli import main
    from kernelfit.errors import UsageError

    marker = tmp_path / "payload-ran"
    model = _malicious_checkpoint(tmp_path / "model", _Payload(exec, f"open({str(marker)!r}, 'w').write('ran')"))
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(tmp_path / "cache"))
    capsys.readouterr()
    rc = main(["run", str(model), "--allow-pickle", "--prompt", "hi"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("kernelfit: error:")]
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "builtins.exec" in errors[0], err[-2000:]
    with pytest.raises(UsageError, match="builtins.exec") as info:
        kernelfit.load(str(model), allow_pickle=True)
    assert "not safe to load" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def _python_and_exec(script: Path, *args: str):
    """`python script.py ARGS` and `kernelfit exec script.py ARGS`, each in its own process."""
    import subprocess
    import sys

    from conftest import run_cli

    python = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    return python, run_cli("exec", str(script), *args)


@pytest.mark.parametrize("source", [b'print("caf\xe9")\n', b"x = 1\n\ny = 2  # caf\xe9\n"],
                         ids=["in a string", "in a comment on line 3"])
def test_exec_a_script_that_is_not_utf8_ends_as_python_does(source, tmp_path):
    script = tmp_path / "latin1.py"
    script.write_bytes(source)
    python, kf = _python_and_exec(script)
    assert python.returncode == 1 and kf.returncode == 2, (kf.returncode, kf.stderr[-2000:])
    lines = [line for line in kf.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("SyntaxError: Non-UTF-8 code") and str(script) in lines[0], kf.stderr
    assert kf.stderr == python.stderr and kf.stdout == ""  # Python's own line: no traceback, no kernelfit frames


def test_exec_a_syntax_error_is_shown_as_python_shows_it(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("print('never')\ndef f(:\n    pass\n")
    python, kf = _python_and_exec(script)
    assert kf.returncode == 2 and kf.stdout == "" and "Traceback" not in kf.stderr, kf.stderr[-2000:]
    assert kf.stderr == python.stderr and "SyntaxError: invalid syntax" in kf.stderr


def test_exec_runs_a_latin1_script_with_a_coding_cookie(tmp_path):
    script = tmp_path / "cookie.py"
    script.write_bytes(b"# -*- coding: latin-1 -*-\nimport sys\nx: int = 1\n"
                       b"print('caf\xe9', sys.argv[1:], __name__, __file__ == %r, __annotations__)\n"
                       % str(script))
    python, kf = _python_and_exec(script, "a", "b")
    assert python.returncode == 0 and kf.returncode == 0, kf.stderr[-2000:]
    assert kf.stdout == python.stdout == "café ['a', 'b'] __main__ True {'x': <class 'int'>}\n"


def test_exec_a_script_that_raises_shows_only_the_scripts_frames(tmp_path):
    script = tmp_path / "raises.py"
    script.write_text("def f():\n    raise ValueError('the script failed')\n\nprint('before')\nf()\n")
    python, kf = _python_and_exec(script)
    assert python.returncode == kf.returncode == 1 and kf.stdout == "before\n", kf.stderr[-2000:]
    tail = kf.stderr[kf.stderr.index("Traceback (most recent call last):"):]
    assert tail == python.stderr, kf.stderr  # the script's frames only: no kernelfit or runpy ones
    assert "kernelfit" not in tail and "runpy" not in tail


API_CASES = [
    ("load max_memory garbage", dict(max_memory="garbage"), "--max-memory"),
    ("load max_memory list", dict(max_memory=[1, 2]), "max_memory"),
    ("load max_memory bad unit", dict(max_memory={"cpu": "8 parsecs"}), "not a size"),
    ("load max_memory unknown device", dict(max_memory={"gpu7": "8GiB"}), "gpu7"),
    ("load max_memory zero", dict(max_memory={"cpu": 0}), "positive"),
    ("load max_memory bool", dict(max_memory={"cpu": True}), "positive"),
    ("load max_memory key list", dict(max_memory={("cpu",): 1}), "keys"),
    ("load quantization bogus", dict(quantization="bogus"), "unknown quantization"),
    ("load quantization none-ish", dict(quantization=None), "unknown quantization"),
    ("load dtype bogus", dict(dtype="float8"), "dtype"),
    ("load attention bogus", dict(attention="flash"), "attention"),
    ("load attn_implementation bogus", dict(attn_implementation="flash"), "attention"),
    ("load context zero", dict(context=0), "--context"),
    ("load context string", dict(context="4k"), "--context"),
    ("load batch zero", dict(batch=0), "--batch"),
    ("load device unknown", dict(device="cuda:9"), "matches no device"),
    ("load device empty", dict(device=""), "device"),
    ("load device_map dict", dict(device_map={"model.layers.0": 0}), "device_map"),
    ("load device and device_map", dict(device="cpu", device_map="auto"), "not both"),
    ("load allow_dequantize string", dict(allow_dequantize="yes"), "allow_dequantize"),
]


@pytest.mark.parametrize("name,kwargs,expect", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_bad_input(name, kwargs, expect, tmp_path, monkeypatch):
    import kernelfit
    from kernelfit.errors import UsageError

    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UsageError, match=None) as info:
        kernelfit.load(QWEN, **kwargs)
    assert expect.lower() in str(info.value).lower()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_the_suite_is_large(capsys):
    total = len(CLI_CASES) + len(API_CASES)
    print(f"\nkernelfit bad-input suite: {total} cases ({len(CLI_CASES)} CLI, {len(API_CASES)} Python API)")
    assert total >= 150


def _packed_folder(path: Path, change, desc_act: bool) -> Path:
    """A tiny GPTQ checkpoint (tests/test_packed_checkpoints_engine.py; act-order where desc_act) with a tokenizer,
    damaged by `change`, which the plan still sends to the engine: its reader refuses it before the plan is shown."""
    from safetensors.torch import load_file, save_file
    from test_packed_checkpoints_engine import _packed_checkpoint
    from test_safetensors_engine import _word_tokenizer

    _packed_checkpoint(path, "gptq", sym=True, desc_act=desc_act)
    _word_tokenizer(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["desc_act"] = False  # g_idx still says otherwise
    (path / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def _one_group(tensors: dict, name: str) -> None:
    """An act-order g_idx that puts every column in group 0 (GPTQ's groups each hold group_size columns)."""
    import torch

    tensors[name] = torch.zeros(len(tensors[name]), dtype=torch.int32)


@pytest.mark.parametrize("name,change,desc_act,expect", [
    ("g_idx groups of unequal sizes", lambda t: _one_group(t, "model.layers.0.self_attn.o_proj.g_idx"), True,
     "g_idx does not give each"),
    ("a linear without scales", lambda t: t.pop("model.layers.1.mlp.up_proj.scales"), False, "has no scales"),
])
def test_run_a_packed_checkpoint_the_engine_cannot_read(name, change, desc_act, expect, tmp_path, monkeypatch,
                                                         capsys):
    d = _packed_folder(tmp_path / "ck", change, desc_act)
    _one_case(lambda m: ["run", str(d), "--prompt", "w5 w6"], expect, tmp_path, monkeypatch, capsys)


def test_run_a_compressed_tensors_checkpoint_whose_linear_lacks_its_scale(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file
    from test_compressed_checkpoints_engine import _ct_checkpoint
    from test_safetensors_engine import _word_tokenizer

    d = tmp_path / "ck"
    _ct_checkpoint(d)
    _word_tokenizer(d)
    tensors = load_file(d / "model.safetensors")
    tensors.pop("model.layers.1.self_attn.k_proj.weight_scale")
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    _one_case(lambda m: ["run", str(d), "--prompt", "w5 w6"], "has no weight_scale", tmp_path, monkeypatch, capsys)


def test_run_an_fp8_checkpoint_whose_scale_does_not_tile_its_weight(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file
    from test_compressed_checkpoints_engine import _fp8_checkpoint
    from test_safetensors_engine import _word_tokenizer

    d = tmp_path / "ck"
    _fp8_checkpoint(d, "hf")
    _word_tokenizer(d)
    tensors = load_file(d / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight_scale_inv"
    tensors[name] = tensors[name][:, :1].contiguous()  # one column of blocks for a weight of 16
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    _one_case(lambda m: ["run", str(d), "--prompt", "w5 w6"], "does not tile", tmp_path, monkeypatch, capsys)


def _edited_file(module, path: Path, arch: str, extra: dict | None = None, replace: dict | None = None,
                 skip: tuple[str, ...] = (), rename: dict | None = None) -> Path:
    """A tiny real file written by a test writer (tests/gguf_<arch>.py, its model random) with keys added (`extra`),
    given other values (`replace`: a GGUFWriter add_ method -> its value; None leaves the key out) and tensors left
    out (`skip`) or renamed (`rename`)."""
    base = module.GGUFWriter

    class Edited(base):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            for key, value in (extra or {}).items():
                self.add_uint32(f"{self.arch}.{key}", value)

        def add_tensor(self, name, *args, **kw):
            if name not in skip:
                super().add_tensor((rename or {}).get(name, name), *args, **kw)

    for method, value in (replace or {}).items():
        setattr(Edited, method, (lambda self, *a, m=method, v=value: None if v is None else
                                 getattr(base, m)(self, v)))
    module.GGUFWriter = Edited
    try:
        return getattr(module, f"write_{arch}")(path, module.tiny_model())
    finally:
        module.GGUFWriter = base


ENGINE_REFUSALS = [  # what the packed engine does not run, found when its recipe is read (after the plan is made)
    ("deepseek2 experts chosen within groups", "deepseek2", dict(extra={"expert_group_count": 8}), "within groups"),
    ("deepseek2 unsplit attn_kv_b", "deepseek2", dict(rename={"blk.0.attn_k_b.weight": "blk.0.attn_kv_b.weight"}),
     "reconvert"),
    ("glm4moe the MTP block alone", "glm4moe", dict(skip=("blk.0.attn_norm.weight",)),
     "multi-token-prediction block alone"),
    ("mistral3 a temperature without its original context", "mistral3",
     dict(replace={"add_rope_scaling_type": None, "add_rope_scaling_orig_ctx_len": None}),
     "temperature without rope.scaling.original_context_length"),
    ("granitehybrid Mamba-2 sizes not whole heads", "granitehybrid", dict(replace={"add_ssm_inner_size": 7}),
     "damaged"),
]


@pytest.mark.parametrize("name,arch,edit,expect", ENGINE_REFUSALS, ids=[c[0] for c in ENGINE_REFUSALS])
def test_run_a_gguf_file_the_engine_refuses_ends_in_one_line(name, arch, edit, expect, tmp_path, monkeypatch,
                                                             capsys):
    """Each refusal (tested as a UsageError in its architecture's tests) from the CLI: exit 2, one line, nothing
    written."""
    import importlib

    (tmp_path / "files").mkdir()
    path = _edited_file(importlib.import_module(f"gguf_{arch}"), tmp_path / "files" / f"{arch}.gguf", arch, **edit)
    _one_case(lambda m: ["run", str(path), "--prompt", "hi"], expect, tmp_path, monkeypatch, capsys)


def test_run_a_hybrid_checkpoint_whose_config_lacks_a_size_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """An LFM2 checkpoint whose config.json lacks conv_L_cache (the converter's shortconv key): planned for the engine,
    refused by its reader before the plan is shown — one line that names the key, exit 2."""
    from test_safetensors_engine import _word_tokenizer
    from test_safetensors_hybrids import _saved

    d = tmp_path / "ck"
    _saved(d, "lfm2")
    _word_tokenizer(d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["conv_L_cache"]
    (d / "config.json").write_text(json.dumps(cfg))
    _one_case(lambda m: ["run", str(d), "--prompt", "w5 w6"], "config.json lacks or mistypes 'conv_L_cache'",
              tmp_path, monkeypatch, capsys)
