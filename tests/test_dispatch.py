"""attn_implementation="kernelfit": per-call choice, fallback on real kernel error messages."""

import warnings
from dataclasses import replace

import pytest
import torch

from kernelfit.hardware.machine import Device
from kernelfit.probe.software import probe_software
from kernelfit.dispatch import dispatcher as D
from kernelfit.dispatch.kernels import KernelBackend

A100 = Device(kind="cuda", name="Simulated A100", index=0, compute_capability="8.0", arch="sm_80")
T4 = Device(kind="cuda", name="Simulated T4", index=1, compute_capability="7.5", arch="sm_75")
PROMPTS = ["What is the capital of France?",
           "Write one sentence about the history of the printing press in Europe and why it mattered so much."]

# Real messages raised by real kernels when they cannot run on the device / install.
CANNOT_RUN = [
    (RuntimeError, "FlashAttention only supports Ampere GPUs or newer."),
    (RuntimeError, "CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors might be "
                   "asynchronously reported"),
    (RuntimeError, "CUDA error: invalid device function"),
    (RuntimeError, "Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your Tesla T4 GPU "
                   "has compute capability 7.5."),
    (ModuleNotFoundError, "No module named 'flash_attn'"),
    (ImportError, "FlashAttention2 has been toggled on, but it cannot be used due to the following error: the "
                  "package flash_attn seems to be not installed."),
]


@pytest.fixture(scope="module")
def smol():
    from kernelfit.api import load

    loaded = load("smollm2-135m", dtype="float32", quantization="none")  # the dequantized model: transformers
    tok = loaded.tokenizer
    tok.padding_side = "left"
    return loaded.model, tok


@pytest.fixture(scope="module")
def smol_bf16():
    """FlashAttention is half-precision only: the catalog offers it for bf16/fp16 queries."""
    from kernelfit.api import load

    loaded = load("smollm2-135m", dtype="bfloat16", quantization="none")
    loaded.tokenizer.padding_side = "left"
    # a CPU without native bf16 (no AVX512-BF16/AMX) plans float32 even when bf16 is asked (planner/dtype.py): the
    # simulated GPUs here need half-precision queries whatever this CPU is
    return loaded.model.to(torch.bfloat16), loaded.tokenizer


@pytest.fixture
def clean():
    d = D.dispatcher()
    saved = (dict(d.backends), d.software, d.resolve, d.preferred, dict(d.by_config))
    d.reset()
    d.preferred = ()  # load() put each model's plan choice first; these tests exercise the catalog order
    d.by_config.clear()
    yield d
    d.backends, d.software, d.resolve, d.preferred = saved[0], saved[1], saved[2], saved[3]
    d.by_config.clear()
    d.by_config.update(saved[4])
    d.reset()


def encode(tok, prompts):
    return tok([tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
               for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)


def greedy(model, tok, attn, prompts=PROMPTS[:1], n=12):
    model.set_attn_implementation(attn)
    enc = encode(tok, prompts)
    with torch.inference_mode():
        return model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)


def fake(exc_type=None, message="", log=None):
    """A fake kernel: raises `message` as a real kernel would, or computes with SDPA (and logs)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def fn(module, query, key, value, attention_mask, **kwargs):
        if log is not None:
            log.append((module.layer_idx, attention_mask if attention_mask is None else tuple(attention_mask.shape)))
        if exc_type is not None:
            raise exc_type(message)
        from kernelfit.dispatch.kernels import to_bool4d

        mask = to_bool4d(attention_mask, query, key, True, None)
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)

    return fn


def with_flash_attn(d):
    d.software = replace(probe_software(), packages={**probe_software().packages, "flash-attn": "2.8.3"})


def test_registered_in_both_registries():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert D.register() == "kernelfit"
    assert "kernelfit" in AttentionInterface._global_mapping
    assert "kernelfit" in AttentionMaskInterface._global_mapping


def test_cpu_picks_sdpa_and_matches_direct_sdpa(smol, clean):
    model, tok = smol
    D.register()
    assert torch.equal(greedy(model, tok, "kernelfit"), greedy(model, tok, "sdpa"))
    order = clean.order_for(Device(kind="cpu", name="cpu"), "float32", 64, frozenset())
    assert order[0] == "cpu_decode"  # a shape specialisation, tried only for long one-query calls
    assert [n for n in order if clean.backends[n].applies is None][0] == "sdpa"


@pytest.mark.parametrize("padded", [False, True])
def test_cpu_decode_kernel_matches_sdpa(padded):
    from kernelfit.dispatch.kernels import decode_attention_forward, to_additive

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, s, 64, generator=g) for h, s in ((9, 1), (3, 300), (3, 300)))
    mask = None
    if padded:  # the second sequence is left-padded by 40 keys
        mask = torch.ones(2, 1, 1, 300, dtype=torch.bool)
        mask[1, ..., :40] = False
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    out, _ = decode_attention_forward(None, q, k, v, to_additive(mask, q, k, True, None))
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_long_cpu_decode_goes_through_the_decode_kernel_with_the_same_tokens(smol, clean):
    model, tok = smol
    D.register()
    calls = []
    real = clean.backends["cpu_decode"]
    clean.backends["cpu_decode"] = replace(real, fn=lambda *a, **kw: calls.append(a[2].shape[2]) or real.fn(*a, **kw))
    clean._order.clear()
    long_prompt = [" ".join(["The printing press changed how Europe shared ideas."] * 16)]  # > 128 tokens
    assert torch.equal(greedy(model, tok, "kernelfit", long_prompt, n=8), greedy(model, tok, "sdpa", long_prompt, n=8))
    assert calls and min(calls) >= 128  # decode steps only (one query against >= 128 cached keys)
    assert len(calls) == 7 * model.config.num_hidden_layers  # every decode step after the prefill, every layer


def test_batched_left_padded_generation_matches_sdpa_and_needs_the_mask_registration(smol, clean):
    model, tok = smol
    D.register()
    ref = greedy(model, tok, "sdpa", PROMPTS)
    assert torch.equal(greedy(model, tok, "kernelfit", PROMPTS), ref)
    # the trap: a name registered only in AttentionInterface silently gets attention_mask=None
    from transformers import AttentionInterface

    AttentionInterface.register("kernelfit_nomask", D.kernelfit_attention_forward)
    enc = encode(tok, PROMPTS)
    assert int(enc["attention_mask"][0].sum()) < enc["attention_mask"].shape[1]  # row 0 is left-padded
    logits = {}
    for attn in ("sdpa", "kernelfit", "kernelfit_nomask"):
        model.set_attn_implementation(attn)
        with torch.inference_mode():
            logits[attn] = model(**enc).logits[0, -1]
    assert torch.allclose(logits["kernelfit"], logits["sdpa"], atol=1e-5)
    assert not torch.allclose(logits["kernelfit_nomask"], logits["sdpa"], atol=1e-2)


@pytest.mark.parametrize("exc_type,message", CANNOT_RUN, ids=[m[:40] for _, m in CANNOT_RUN])
def test_fallback_on_each_real_error_gives_the_sdpa_tokens(smol_bf16, clean, exc_type, message):
    model, tok = smol_bf16
    D.register()
    reference = greedy(model, tok, "sdpa")
    clean.resolve = lambda module, q: A100  # the catalog says FA2 runs here ...
    with_flash_attn(clean)
    calls = []
    D.register_backend(KernelBackend("flash_attention_2", fake(exc_type, message, calls), "padding2d"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = greedy(model, tok, "kernelfit")  # ... but the kernel says otherwise
    assert torch.equal(out, reference)
    assert len(calls) == 1  # tried once, then dead for this device
    fallback_warnings = [w for w in caught if issubclass(w.category, D.KernelFallbackWarning)]
    assert len(fallback_warnings) == 1 and "flash_attention_2" in str(fallback_warnings[0].message)
    assert D.fallbacks() == [{"device": "Simulated A100", "device_index": 0, "backend": "flash_attention_2",
                              "error": f"{exc_type.__name__}: {message.splitlines()[0]}"}]


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64)")])
def test_other_errors_are_not_swallowed(smol_bf16, clean, exc):
    model, tok = smol_bf16
    D.register()
    clean.resolve = lambda module, q: A100
    with_flash_attn(clean)
    D.register_backend(KernelBackend("flash_attention_2", fake(type(exc), str(exc)), "padding2d"))
    with pytest.raises(type(exc)):
        greedy(model, tok, "kernelfit")
    assert D.fallbacks() == []


def test_simulated_mixed_box_gets_a_backend_per_layer(smol_bf16, clean):
    model, tok = smol_bf16
    D.register()
    reference = greedy(model, tok, "sdpa")
    n_layers = model.config.num_hidden_layers
    clean.resolve = lambda module, q: A100 if module.layer_idx < n_layers // 2 else T4
    with_flash_attn(clean)
    log = []
    D.register_backend(KernelBackend("flash_attention_2", fake(log=log), "padding2d"))
    out = greedy(model, tok, "kernelfit")
    layers = {layer for layer, _ in log}
    assert layers == set(range(n_layers // 2))  # FA2 only on the simulated A100's layers
    assert all(mask is None or len(mask) == 2 for _, mask in log)  # FA2 got its 2D padding-mask form
    assert torch.equal(out, reference) and D.fallbacks() == []


def test_catalog_rules_apply_per_call(clean):
    with_flash_attn(clean)
    D.register_backend(KernelBackend("flash_attention_2", fake(), "padding2d"))
    assert clean.order_for(A100, "bfloat16", 128, frozenset())[0] == "flash_attention_2"
    assert "flash_attention_2" not in clean.order_for(A100, "float32", 128, frozenset())  # FA2 is half-only
    assert "flash_attention_2" not in clean.order_for(T4, "float16", 128, frozenset())
    assert "flash_attention_2" not in clean.order_for(A100, "float16", 512, frozenset())  # head_dim > 256
    assert clean.order_for(A100, "float16", 64, frozenset({"output_attentions"})) == ["eager"]


def test_each_loaded_model_keeps_its_own_plans_choice(tmp_path, clean):
    from kernelfit.api import load
    from test_health import save_tiny

    d = save_tiny(tmp_path)
    seen = []
    for name in ("sdpa", "eager"):
        real = clean.backends[name]
        clean.backends[name] = replace(real, fn=lambda *a, _n=name, _f=real.fn, **kw: seen.append(_n) or _f(*a, **kw))
    clean._order.clear()
    first = load(str(d), attention="eager", dtype="float32", use_tune_cache=False).model
    second = load(str(d), attention="sdpa", dtype="float32", use_tune_cache=False).model  # loaded later
    ids = torch.tensor([[5, 6, 7]])
    for model, want in ((first, "eager"), (second, "sdpa"), (first, "eager")):
        seen.clear()
        with torch.inference_mode():
            model(ids)
        assert set(seen) == {want}, (want, seen)
