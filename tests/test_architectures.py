"""Every architecture transformers registers, through attn_implementation="kernelfit" — identical to
"sdpa" on logits (a left-padded batch), greedy tokens, and greedy tokens after a 140-token prompt (where
the CPU decode kernel takes over). Plus named regressions for the classes of failure found by hand."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch

from arch_sweep import build_pair, compare, mappings, tiny_config

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def test_registry_sweep_every_architecture_that_runs_under_sdpa_is_identical_through_kernelfit():
    import kernelfit  # noqa: F401 - importing it is all the registration needed

    lines, built, identical, not_built = [], 0, 0, []
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mapping, (names, auto) in mappings().items():
            for mt in names:
                o = compare(mt, auto)
                if not o.built:
                    not_built.append(f"{mapping}/{mt}: {o.why}")
                    continue
                built += 1
                if o.identical:
                    identical += 1
                else:
                    failures.append(o)
    total = sum(len(n) for n, _ in mappings().values())
    print(f"\nkernelfit architecture sweep (transformers {transformers.__version__}): {identical} of {built} "
          f"architectures that build and run under sdpa are identical through kernelfit; {len(not_built)} of "
          f"{total} registered do not build under sdpa with a generic tiny config:")
    for line in not_built:
        print(f"  not built: {line}")
    assert not failures, failures
    assert built >= 150  # the sweep really ran (transformers 5.24: 162 of 296 build)


# -- named regressions ---------------------------------------------------------------------------
def _logits_and_long_greedy(ref, kf, vocab=300):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    long = torch.randint(3, vocab, (1, 140), generator=gen)
    with torch.no_grad():
        diff = float((ref(input_ids=ids, attention_mask=mask).logits - kf(input_ids=ids, attention_mask=mask).logits)
                     .abs().max())
        same = torch.equal(*(m.generate(long, max_new_tokens=6, do_sample=False, pad_token_id=0) for m in (ref, kf)))
    return diff, same


@pytest.mark.parametrize("model_type", ["deepseek_v3", "minicpm3"])
def test_mla_models_decode_with_their_own_value_head_dim(model_type):
    """MLA: v_head_dim (12) != the query/key head_dim (16). The CPU decode kernel reshaped its output with
    the query's head_dim: RuntimeError "shape '[1, 4, 1, 16]' is invalid" after 128 cached keys."""
    from transformers import AutoModelForCausalLM

    ref, kf, cfg = build_pair(model_type, AutoModelForCausalLM)
    assert cfg.v_head_dim != cfg.qk_rope_head_dim + cfg.qk_nope_head_dim
    diff, same = _logits_and_long_greedy(ref, kf)
    assert diff < 1e-4 and same


def test_additive_float_masks_keep_their_biases():
    """Doge passes learned biases in a float mask; they used to become a boolean (mask == 0)."""
    from transformers import AutoModelForCausalLM

    ref, kf, cfg = build_pair("doge", AutoModelForCausalLM, {"keep_window_size": 8})
    diff, same = _logits_and_long_greedy(ref, kf)
    assert diff < 1e-4 and same


def _dense_logits(kf, ids):
    """The same model with the selection dropped: what "silently dense" would give."""
    from kernelfit.dispatch import dispatcher as D

    original = D.fold_selection

    def drop(module, mask, query, key, kwargs):
        kwargs.pop("indices", None)
        kwargs.pop("block_indices", None)
        return mask, False

    D.fold_selection = drop
    try:
        with torch.no_grad():
            return kf(input_ids=ids).logits
    finally:
        D.fold_selection = original


@pytest.mark.parametrize("model_type,extra", [
    ("deepseek_v32", {"index_topk": 4, "index_head_dim": 16, "index_n_heads": 4}),
    ("glm_moe_dsa", {"index_topk": 4, "index_head_dim": 16, "index_n_heads": 4}),
    ("minimax_m3_vl_text", {"index_n_heads": 2, "index_head_dim": 16, "index_block_size": 4, "index_topk_blocks": 2,
                            "index_local_blocks": 1, "layer_types": ["minimax_m3_sparse", "minimax_m3_sparse"]}),
])
def test_sparse_selection_is_applied_not_dropped(model_type, extra):
    """DeepSeek-V3.2 / GLM-MoE-DSA pass `indices=`, MiniMax-M3 `block_indices=` to the attention function
    under any name but "eager"/"sdpa"; every backend ignored them and attention silently became dense."""
    from transformers import AutoModelForCausalLM

    ref, kf, _ = build_pair(model_type, AutoModelForCausalLM, extra)
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ref(input_ids=ids).logits, kf(input_ids=ids).logits
    assert float((a - b).abs().max()) < 1e-4
    assert float((a - _dense_logits(kf, ids)).abs().max()) > 1e-3  # the selection matters at this size
    diff, same = _logits_and_long_greedy(ref, kf)
    assert diff < 1e-4 and same


def _class_dict_causal_lms() -> list[str]:
    """The causal-LM model types of the installed transformers whose modeling module picks attention classes from
    a `*_ATTENTION_CLASSES` dict (Falcon until 5.24, GPT-Neo in 5.25): found, not named, so the test keeps testing
    this on the next transformers."""
    import importlib

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from kernelfit.dispatch.class_dicts import class_dict_substitute

    found = []
    for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        try:
            module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        except Exception:  # noqa: BLE001 - renamed folders, optional dependencies: not a class-dict model here
            continue
        if class_dict_substitute(module) is not None:
            found.append(model_type)
    return found


# what the generic tiny config needs to build them: GPT-Neo's per-layer pattern must list the 2 tiny layers
CLASS_DICT_EXTRAS = {"gpt_neo": {"attention_types": [[["global", "local"], 1]]}}


def test_class_dict_models_build_and_match():
    """Falcon (to transformers 5.24) and GPT-Neo pick XXX_ATTENTION_CLASSES[config._attn_implementation]:
    KeyError: 'kernelfit' before. Now such a model is built with its own SDPA (or eager) implementation, with one
    warning that names it, and matches sdpa."""
    from transformers import AutoModelForCausalLM

    from kernelfit.dispatch import class_dicts
    from kernelfit.dispatch.class_dicts import ClassDictModelWarning

    types = _class_dict_causal_lms()
    if not types:
        pytest.skip("no causal LM of this transformers picks its attention classes from a dict")
    import importlib

    from kernelfit.dispatch.class_dicts import class_dict_substitute

    built = 0
    for model_type in types:
        own = class_dict_substitute(importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}"))
        class_dicts._warned.clear()  # once per model class and process: the sweep may have warned already
        try:
            cfg = tiny_config(model_type, CLASS_DICT_EXTRAS.get(model_type))
            torch.manual_seed(0)
            ref = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=own).eval()
        except Exception as exc:  # noqa: BLE001 - a model the generic tiny config cannot build: listed, not judged
            print(f"{model_type}: not built with a generic tiny config ({type(exc).__name__}: {exc})")
            continue
        with pytest.warns(ClassDictModelWarning) as caught:
            kf = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="kernelfit").eval()
        kf.load_state_dict(ref.state_dict(), strict=False)
        assert kf.config._attn_implementation == own
        assert any(type(kf).__name__ in str(w.message) and f"'{own}'" in str(w.message) for w in caught)
        diff, same = _logits_and_long_greedy(ref, kf)
        assert diff < 1e-4 and same, model_type
        built += 1
    assert built, f"none of {types} built"


def test_flash_kernels_never_get_a_mask_they_cannot_express():
    """A float-biased or sparse-selected call is refused by FlashAttention backends before they are chosen."""
    from kernelfit.catalog.attention import BACKENDS, FLOAT_MASK, SPARSE_SELECTION

    for name in ("flash_attention_2", "flash_attention_3", "flash_attention_4"):
        assert {FLOAT_MASK, SPARSE_SELECTION} <= BACKENDS[name].unsupported
    assert not {FLOAT_MASK, SPARSE_SELECTION} & BACKENDS["sdpa"].unsupported


def test_import_kernelfit_is_enough_for_attn_implementation_kernelfit():
    code = (
        "import sys, kernelfit\n"
        "assert 'torch' not in sys.modules  # registration waits for transformers\n"
        "import transformers\n"
        "cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,\n"
        "    num_attention_heads=4, num_key_value_heads=2, vocab_size=100)\n"
        "m = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation='kernelfit')\n"
        "print(m.config._attn_implementation)\n"
    )
    assert _last_line(code) == "kernelfit"


def test_registration_also_works_when_transformers_came_first():
    code = (
        "import transformers.modeling_utils, transformers\n"
        "import kernelfit\n"
        "from transformers import AttentionInterface\n"
        "print('kernelfit' in AttentionInterface._global_mapping)\n"
    )
    assert _last_line(code) == "True"


def _last_line(code: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet) and return its last line of output."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    return r.stdout.strip().splitlines()[-1]
