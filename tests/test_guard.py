"""The seed case: code that hard-codes FlashAttention-2 must run on this CPU under the guard."""

import warnings

import pytest
import torch

from kernelfit.dispatch.guard import FlashAttentionGuardWarning, guard, unguard
from kernelfit.profiles import load_profile

from tiny_models import FA2LlamaForCausalLM, LlavaForConditionalGeneration, llava_inputs, tiny_llama, tiny_llama_config, tiny_llava_config

IDS = torch.tensor([[1, 5, 6, 7, 8]])


@pytest.fixture
def clean_guard():
    unguard()
    yield
    unguard()


def fa2_model():
    torch.manual_seed(0)
    return FA2LlamaForCausalLM(tiny_llama_config()).eval()


def test_fa2_hardcoded_layers_crash_without_guard(clean_guard):
    with pytest.raises((ImportError, RuntimeError, ValueError)):
        fa2_model().generate(IDS, max_new_tokens=3, do_sample=False)


def test_fa2_hardcoded_layers_generate_with_guard_and_match_sdpa(clean_guard):
    assert "flash_attention_2" in guard()
    model = fa2_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.generate(IDS, max_new_tokens=6, do_sample=False)
        model.generate(IDS, max_new_tokens=2, do_sample=False)
    guard_warnings = [w for w in caught if issubclass(w.category, FlashAttentionGuardWarning)]
    assert len(guard_warnings) == 1 and "flash_attention_2 cannot run here" in str(guard_warnings[0].message)
    assert "cpu" in str(guard_warnings[0].message).lower()
    torch.manual_seed(0)
    reference = tiny_llama(seed=0)
    reference.set_attn_implementation("sdpa")
    assert torch.equal(out, reference.generate(IDS, max_new_tokens=6, do_sample=False))


def test_from_pretrained_request_for_fa2_is_redirected(clean_guard, tmp_path):
    tiny_llama(seed=1).save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    with pytest.raises((ImportError, ValueError)):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
    guard()
    with pytest.warns(FlashAttentionGuardWarning):
        m = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
    assert m.config._attn_implementation == "kernelfit"
    assert m.generate(IDS, max_new_tokens=3, do_sample=False).shape == (1, 8)


def fa2_config():
    cfg = tiny_llava_config()
    cfg._attn_implementation = "flash_attention_2"  # the VLM's code demands FA2 for text and vision
    return cfg


def test_tiny_llava_vlm_with_fa2_forced(clean_guard):
    with pytest.raises((ImportError, ValueError)):
        LlavaForConditionalGeneration(fa2_config())
    guard()
    torch.manual_seed(0)
    cfg = fa2_config()
    vlm = LlavaForConditionalGeneration(cfg).eval()
    assert vlm.config.vision_config._attn_implementation == "kernelfit"
    inputs = llava_inputs(cfg)
    out = vlm.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    vlm.set_attn_implementation("sdpa")
    assert torch.equal(out, vlm.generate(**inputs, max_new_tokens=4, do_sample=False))


def test_guard_changes_nothing_where_fa2_runs(clean_guard):
    from transformers import AttentionInterface

    before = AttentionInterface._global_mapping["flash_attention_2"]
    # an H100 with flash-attn and flash-attn-3 installed: only FA4 (not installed) is redirected
    assert guard(load_profile("h100-sxm")) == ["flash_attention_4"]
    assert AttentionInterface._global_mapping["flash_attention_2"] is before
    assert AttentionInterface._global_mapping["flash_attention_4"] is not before
