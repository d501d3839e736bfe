
import pytest

from kernelfit.errors import UsageError
from kernelfit.model.spec import load_model_spec

from conftest import CONFIGS, PUBLISHED_B


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_param_count_within_2_percent_of_published(path):
    spec = load_model_spec(str(path))
    published = PUBLISHED_B[path.stem] * 1e9
    assert abs(spec.params - published) / published < 0.02, (spec.params, published)


def test_shapes_from_config():
    s = load_model_spec(str(CONFIGS[0].parent / "llama-3.1-8b.json"))
    t = s.text
    assert (t.num_layers, t.num_heads, t.num_kv_heads, t.head_dim, t.vocab_size) == (32, 32, 8, 128, 128256)
    assert s.checkpoint_dtype == "bfloat16" and s.name == "llama-3.1-8b" and not t.tie_embeddings
    m = load_model_spec(str(CONFIGS[0].parent / "mistral-7b-v0.1.json"))
    assert m.text.sliding_window == 4096 and "sliding_window" in m.text.features
    q = load_model_spec(str(CONFIGS[0].parent / "qwen2.5-7b.json"))
    assert q.text.sliding_window is None  # use_sliding_window is false in Qwen2.5
    g = load_model_spec(str(CONFIGS[0].parent / "mistral-7b-gptq.json"))
    assert g.quantization.method == "gptq" and g.quantization.bits == 4


def test_composite_vlm_has_a_vision_sub_model():
    s = load_model_spec(str(CONFIGS[0].parent / "llava-1.5-7b.json"))
    roles = {x.role: x for x in s.sub_models}
    assert set(roles) == {"text", "vision"}
    v = roles["vision"]
    assert v.head_dim == 64 and not v.causal and v.seq_len == 576 and v.config_key == "vision_config"
    assert 300e6 < v.params < 310e6  # CLIP ViT-L/14-336


def test_bundled_smollm2_from_gguf_header():
    s = load_model_spec("smollm2-135m")
    assert s.format == "gguf" and s.gguf_file.endswith(".gguf")
    t = s.text
    assert (t.num_layers, t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.vocab_size) == (30, 576, 9, 3, 64, 49152)
    assert t.tie_embeddings and s.chat_template
    assert s.params == 134_515_008  # the file's own tensor table
    assert s.quantization.format == "Q4_1"


def test_model_dir_and_hub_cache(tmp_path, monkeypatch):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text((CONFIGS[0].parent / "qwen2.5-0.5b.json").read_text())
    (d / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # a valid, empty safetensors file
    s = load_model_spec(str(d))
    assert s.format == "safetensors" and s.model_dir == str(d)
    cache = tmp_path / "hub"
    snap = cache / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((d / "config.json").read_text())
    (cache / "models--Qwen--Qwen2.5-0.5B" / "refs").mkdir()
    (cache / "models--Qwen--Qwen2.5-0.5B" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert load_model_spec("Qwen/Qwen2.5-0.5B").model_type == "qwen2"
    with pytest.raises(UsageError, match="never downloads"):
        load_model_spec("Qwen/Qwen2.5-7B")


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"model_type": "t5", "hidden_size": 1}', "not supported"),
    ('{"hidden_size": 1}', "no model_type"),
    ('{"model_type": "llama", "hidden_size": 4096}', "lacks a positive integer"),
    ("[1, 2]", "JSON object"),
])
def test_broken_configs_are_usage_errors(tmp_path, content, match):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(UsageError, match=match):
        load_model_spec(str(tmp_path))


def test_missing_paths(tmp_path):
    with pytest.raises(UsageError, match="no model at"):
        load_model_spec(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="has no config.json"):
        load_model_spec(str(tmp_path))
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML0000")
    with pytest.raises(UsageError, match="not a readable GGUF"):
        load_model_spec(str(bad))


def test_a_gguf_header_is_parsed_once_per_file_version(tmp_path, monkeypatch):
    """One load asks for the header four times (plan, checks, builder, tokenizer): parsed once; a file changed
    in place is parsed again."""
    from gguf_tiny import write_tiny

    from kernelfit.model import gguf_header as gh

    path = tmp_path / "m.gguf"
    write_tiny(path, "Q8_0")
    calls = []
    real = gh._read_growing
    monkeypatch.setattr(gh, "_read_growing", lambda *a: calls.append(a) or real(*a))
    first = gh.read_gguf_header(path)
    assert gh.read_gguf_header(path) is first and len(calls) == 1
    data = bytearray(path.read_bytes())
    data[4:8] = (3).to_bytes(4, "little")  # the version field: same size, same inode
    path.write_bytes(bytes(data))
    assert gh.read_gguf_header(path).version == 3 and len(calls) == 2


def test_a_gguf_file_names_transformers_class_for_its_architecture():
    """The plan's Model line names the class transformers has for the file's architecture (it said
    "Gpt_ossForCausalLM" and "Qwen3_moeForCausalLM")."""
    import transformers

    from kernelfit.catalog.architectures import GGUF_ARCH_TO_MODEL_TYPE
    from kernelfit.model.spec import causal_lm_class

    for model_type in set(GGUF_ARCH_TO_MODEL_TYPE.values()):
        assert hasattr(transformers, causal_lm_class(model_type)), model_type
    assert causal_lm_class("gpt_oss") == "GptOssForCausalLM"
