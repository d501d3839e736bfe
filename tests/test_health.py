"""A silently broken model is never returned: missing, renamed and unquantized tensors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernelfit.errors import HealthCheckError
from kernelfit.model.spec import load_model_spec
from kernelfit.loader.health import check_health
from kernelfit.api import load

from tiny_models import tiny_llama


def save_tiny(path, tamper=None):
    model = tiny_llama(seed=3)
    model.save_pretrained(path)
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)} | {"[UNK]": 95}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0", eos_token="w2",
                            bos_token="w1").save_pretrained(path)
    if tamper:
        f = path / "model.safetensors"
        tensors = load_file(f)
        tamper(tensors)
        save_file(tensors, f, metadata={"format": "pt"})
    return path


def test_healthy_tiny_model_loads(tmp_path):
    loaded = load(str(save_tiny(tmp_path)))
    assert loaded.health.ok and "smoke forward" in loaded.health.checked
    assert loaded.plan.placement.devices == ("cpu",)


def test_missing_tensor_is_refused(tmp_path):
    path = save_tiny(tmp_path, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(HealthCheckError) as e:
        load(str(path))
    assert any("model.layers.1.mlp.down_proj.weight" in p and "missing" in p for p in e.value.problems)


def test_renamed_tensor_is_refused_not_randomly_initialised(tmp_path):
    def rename(t):
        t["model.layers.0.self_attn.q_proj.weight_renamed"] = t.pop("model.layers.0.self_attn.q_proj.weight")

    with pytest.raises(HealthCheckError) as e:
        load(str(save_tiny(tmp_path, rename)))
    text = "\n".join(e.value.problems)
    assert "model.layers.0.self_attn.q_proj.weight" in text and "randomly initialised" in text


def test_no_health_check_loads_anyway(tmp_path):
    path = save_tiny(tmp_path, lambda t: t.pop("model.norm.weight"))
    assert load(str(path), health_check=False).health is None


def test_quantized_checkpoint_that_loaded_as_plain_linear(tmp_path):
    save_tiny(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load_model_spec(str(tmp_path))
    report = check_health(tiny_llama(seed=3), spec, {"missing_keys": set()}, smoke=False)
    assert not report.ok and "awq-quantized" in report.problems[0] and "q_proj" in report.problems[0]


def test_non_finite_logits_are_caught():
    model = tiny_llama(seed=4)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    spec = load_model_spec("smollm2-135m")
    report = check_health(model, spec, {}, smoke=True, dequantized=True)
    assert not report.ok and "non-finite" in report.problems[0]


def test_nan_weights_get_advice_that_helps(tmp_path):
    """NaN weights: the advice used to be --no-health-check; now it says the weights are broken."""
    path = save_tiny(tmp_path, lambda t: t["model.norm.weight"].fill_(float("nan")))
    with pytest.raises(HealthCheckError, match="weights themselves are broken") as info:
        load(str(path), dtype="float32", use_tune_cache=False)
    assert "--no-health-check" not in str(info.value).splitlines()[0]


def test_loaded_values_are_compared_with_the_checkpoint(tmp_path):
    """Finite but wrong weights (not what the file holds) are caught by the sampled-tensor comparison."""
    loaded = load(str(save_tiny(tmp_path)), dtype="float32", use_tune_cache=False)
    spec = load_model_spec(str(tmp_path))
    assert "sampled tensors against the checkpoint" in loaded.health.checked
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.5)  # every tensor now differs from the file
    report = check_health(loaded.model, spec, {}, source_dir=str(tmp_path))
    assert not report.ok and report.weights_broken and any("differs from" in p for p in report.problems)
