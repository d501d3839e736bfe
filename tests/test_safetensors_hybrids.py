"""The hybrid models' transformers checkpoints (config.json + safetensors) on the packed engine (issue 28): Qwen3.5 and
Qwen3.5-MoE, LFM2 and LFM2-MoE, Granite 4.0-H and its MoE kind, their tensors read in place through llama.cpp's
converter's layout (catalog/hybrid_checkpoints.py) and their keys from config.json (engine/safetensors/config_keys.py),
against transformers' own modeling code on the same weights. Before, every such checkpoint was refused by the engine
("model type 'qwen3_5_text' is not one the engine reads from config.json") and ran through transformers."""

from __future__ import annotations

import json

import pytest
import torch

import gguf_granitehybrid
import gguf_lfm2moe
import gguf_qwen35
from kernelfit import Preferences, load_model_spec, load_profile, plan
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.weights import dot_available
from kernelfit.errors import UsageError
from engine_checks import agreement, steps_and_prompt
from test_packed_gguf import _tokens
from test_safetensors_engine import _word_tokenizer

pytestmark = pytest.mark.skipif(not dot_available(), reason="a hybrid runs in the C++ step only (no compiler here)")
N = 300  # positions compared (>= 256), longer than the convolutions' windows and the DeltaNet's chunk


def _lfm2():
    """A random LFM2 (dense): two attention layers among four short convolutions, its feed-forward size set by
    block_auto_adjust_ff_dim (the converter's rule: 2/3 of block_ff_dim, to a multiple of 256)."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(0)
    model = Lfm2ForCausalLM(Lfm2Config(
        vocab_size=512, hidden_size=256, block_ff_dim=768, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["conv", "conv", "full_attention", "conv", "full_attention", "conv"],
        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 1.0 if "embed" in name else 0.3 if "conv.conv" in name else \
                0.03 if any(x in name for x in ("out_proj", "w2")) else 0.08  # gguf_lfm2moe.tiny_model's sizes
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else std * torch.randn_like(p))
    return model


MODELS = {"qwen3_5_text": gguf_qwen35.tiny_model, "qwen3_5_moe_text": lambda: gguf_qwen35.tiny_model(moe=True),
          "lfm2": _lfm2, "lfm2_moe": gguf_lfm2moe.tiny_model, "granitemoehybrid": gguf_granitehybrid.tiny_model,
          "granitemoehybrid-moe": lambda: gguf_granitehybrid.tiny_model(moe=True)}
ARCHS = {"qwen3_5_text": "qwen35", "qwen3_5_moe_text": "qwen35moe", "lfm2": "lfm2", "lfm2_moe": "lfm2moe",
         "granitemoehybrid": "granitehybrid", "granitemoehybrid-moe": "granitehybrid"}


def _saved(path, kind: str):
    """The model saved by save_pretrained in bf16, and transformers' float32 load of what was written (the reference
    on the same weights)."""
    from transformers import AutoModelForCausalLM

    MODELS[kind]().to(torch.bfloat16).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("kind", list(MODELS))
def test_hybrid_checkpoints_agree_with_transformers_on_the_same_weights(tmp_path, kind):
    """300 positions teacher-forced: decode steps after a 100-token prompt (the exact float32-activation rows) top-1
    >= 99% and cosine >= 0.999 at every position; one prompt of all 300 (the bf16 panels) top-1 >= 99% and cosine >=
    0.999 at every position for the dense models. For the MoE ones the prompt's bf16 panels flip routing near-ties
    (the 2nd and 3rd experts within 0.01), which the recurrences carry a row or two: there top-1 >= 99% and the mean
    cosine >= 0.999 (tests/test_hybrid_qwen35.py and test_hybrid_lfm2.py tie each such row to a near-tie on the GGUF
    files: the same engine code after the reader)."""
    ref = _saved(tmp_path, kind)
    ids = _tokens(N)
    with torch.no_grad():
        want = ref(ids[None], use_cache=False).logits[0]
    b = build_lean(tmp_path, kv_cache="f32")
    assert b.cfg.arch == ARCHS[kind] and b.cfg.recurrent_layers == 4
    assert {c.layout for c in b.conversions} == {"bf16"} and all(c.rel_error == 0 for c in b.conversions)
    (top1, cos), (prompt_top1, prompt_cos) = steps_and_prompt(b, ids, want)
    assert top1 >= 0.99 and float(cos.min()) >= 0.999, (top1, float(cos.min()))
    assert prompt_top1 >= 0.99 and float(prompt_cos.mean() if b.cfg.experts else prompt_cos.min()) >= 0.999, \
        (prompt_top1, float(prompt_cos.min()))


def test_fused_experts_read_as_the_per_expert_tensors(tmp_path):
    """transformers' in-memory layout — experts' gate|up fused [experts, 2 size, hidden] and down [experts, hidden,
    size] — as some checkpoints store it: the same logits, bit for bit, as one tensor an expert."""
    from safetensors.torch import load_file, save_file

    _saved(tmp_path / "each", "qwen3_5_moe_text")
    tensors = load_file(tmp_path / "each" / "model.safetensors")
    for i in range(6):
        e = f"model.layers.{i}.mlp.experts."
        gate_up = [torch.cat([tensors.pop(e + f"{j}.gate_proj.weight"), tensors.pop(e + f"{j}.up_proj.weight")])
                   for j in range(4)]
        tensors[e + "gate_up_proj"] = torch.stack(gate_up)
        tensors[e + "down_proj"] = torch.stack([tensors.pop(e + f"{j}.down_proj.weight") for j in range(4)])
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_text((tmp_path / "each" / "config.json").read_text())
    save_file(tensors, fused / "model.safetensors", metadata={"format": "pt"})
    ids = _tokens(40)
    out = []
    for d in (tmp_path / "each", fused):
        b = build_lean(d, kv_cache="f32")
        reset_cache(b, 48)
        out.append(forward(b, ids, 0, True))
    assert torch.equal(out[0], out[1])


def test_value_heads_are_re_ordered_as_llama_cpp_tiles_them(tmp_path, monkeypatch):
    """Qwen3.5's 4 value heads over 2 key heads: without the converter's grouped -> tiled order the engine pairs a
    value head with the wrong key head — the logits differ (the test can tell); with it they agree (above)."""
    from kernelfit.catalog import hybrid_checkpoints as hc

    ref = _saved(tmp_path, "qwen3_5_text")
    ids = _tokens(60)
    with torch.no_grad():
        want = ref(ids[None], use_cache=False).logits[0]
    real = hc._qwen35

    def grouped(cfg, take):  # the same layout with the value heads left in transformers' order (as if nv == nk)
        real({**cfg, "linear_num_value_heads": cfg["linear_num_key_heads"]}, take)

    monkeypatch.setitem(hc._ARCH_LAYOUTS, "qwen3_5_text", grouped)
    b = build_lean(tmp_path, kv_cache="f32")
    reset_cache(b, 64)
    _, cos = agreement(want, forward(b, ids, 0, True))
    assert float(cos.min()) < 0.99


def test_a_tensor_the_layout_does_not_read_or_lacks_is_named_at_plan_time_and_at_load(tmp_path):
    """Checked from the shards' headers when the plan is made (the engine rejected with the tensor's name, so
    transformers loads it), and by the reader (one line, no KeyError)."""
    from safetensors.torch import load_file, save_file

    cpu = load_profile("cpu-spr-amx")
    _saved(tmp_path, "lfm2")
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.0.conv.bias"] = torch.zeros(8)
    save_file(tensors, f, metadata={"format": "pt"})
    why = next(r for r in plan(cpu, load_model_spec(str(tmp_path)), Preferences()).quantization_rejected
               if r.method == "engine")
    assert "model.layers.0.conv.bias is not one the engine's recipe reads" in why.reason
    with pytest.raises(UsageError, match=r"model\.layers\.0\.conv\.bias.*--quantization none"):
        build_lean(tmp_path)
    del tensors["model.layers.0.conv.bias"], tensors["model.layers.3.conv.out_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    why = next(r for r in plan(cpu, load_model_spec(str(tmp_path)), Preferences()).quantization_rejected
               if r.method == "engine")
    assert "model.layers.3.conv.out_proj.weight is missing" in why.reason
    with pytest.raises(UsageError, match=r"model\.layers\.3\.conv\.out_proj\.weight is missing"):
        build_lean(tmp_path)


def test_kernelfit_run_on_a_hybrid_checkpoint_uses_the_engine_and_says_the_layout(tmp_path):
    from conftest import run_cli

    _saved(tmp_path, "qwen3_5_text")
    _word_tokenizer(tmp_path)
    spec = load_model_spec(str(tmp_path))
    assert (spec.text.recurrent_layers, spec.text.recurrent_kind) == (4, "Gated DeltaNet")
    p = plan(load_profile("cpu-spr-amx"), spec, Preferences())
    assert p.quantization.method == "engine" and "llama.cpp's qwen35" in p.quantization.reason
    out = run_cli("run", str(tmp_path), "--prompt", "w5 w6 w7", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["plan"]["quantization"]["method"] == "engine"
    assert d["packing"]["tensors"][0]["gguf_type"] == "BF16"


def _multimodal(path, text):
    """`text` (a Qwen3.5 / Qwen3.5-MoE text model) inside Qwen3_5(Moe)ForConditionalGeneration with a 1-layer vision
    tower, saved in bf16 as Qwen3.5 ships: config.json model_type qwen3_5 with text_config and vision_config, the
    text model under model.language_model.*, the vision tower under model.visual.*."""
    import transformers

    moe = "Moe" in type(text).__name__
    kind = "Qwen3_5Moe" if moe else "Qwen3_5"
    cfg = getattr(transformers, kind + "Config")(
        text_config=text.config.to_dict(), tie_word_embeddings=text.config.tie_word_embeddings,
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                       "out_hidden_size": text.config.hidden_size, "num_position_embeddings": 16})
    vlm = getattr(transformers, kind + "ForConditionalGeneration")(cfg).eval()
    vlm.model.language_model.load_state_dict(text.model.state_dict())
    vlm.lm_head.load_state_dict(text.lm_head.state_dict())
    vlm.to(torch.bfloat16).save_pretrained(path)


@pytest.mark.parametrize("moe", [False, True])
def test_a_qwen35_multimodal_checkpoint_runs_its_text_model_on_the_engine(tmp_path, moe):
    """Qwen3.5 and Qwen3.6 ship only as Qwen3_5(Moe)ForConditionalGeneration: the engine reads their text model
    alone (transformers' AutoModelForCausalLM does the same; llama.cpp's converter writes it as the GGUF file) — the
    logits of the text checkpoint of the same weights, bit for bit — and the plan says the vision tower is not run.
    Before, kernelfit refused the folder (model_type 'qwen3_5' is not one its planner reads)."""
    from safetensors import safe_open

    text = gguf_qwen35.tiny_model(moe=moe)
    text.to(torch.bfloat16).save_pretrained(tmp_path / "text")
    _multimodal(tmp_path / "vlm", text)
    with safe_open(tmp_path / "vlm" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert any(n.startswith("model.visual.") for n in names) and "model.language_model.norm.weight" in names
    spec = load_model_spec(str(tmp_path / "vlm"))
    assert spec.model_type == ("qwen3_5_moe" if moe else "qwen3_5") and len(spec.sub_models) == 1
    # a Qwen3.5-MoE text config has no intermediate_size (its experts' moe_intermediate_size): read, not refused
    assert load_model_spec(str(tmp_path / "text")).text.intermediate_size == text.config.to_dict().get(
        "intermediate_size", text.config.to_dict().get("moe_intermediate_size"))
    assert spec.text.recurrent_layers == 4
    p = plan(load_profile("cpu-spr-amx"), spec, Preferences())
    assert p.quantization.method == "engine", p.quantization_rejected
    assert "llama.cpp's qwen35" in p.quantization.reason and "vision tower is not run" in p.quantization.reason
    ids = _tokens(40)
    out = []
    for d in ("text", "vlm"):
        b = build_lean(tmp_path / d, kv_cache="f32")
        reset_cache(b, 48)
        out.append(forward(b, ids, 0, True))
    assert torch.equal(out[0], out[1])


def test_what_the_engine_does_not_run_on_a_hybrid_is_said_before_loading(tmp_path):
    """A rotary scaling beside the hybrids' plain one, and a packed (AWQ/GPTQ) hybrid: rejected by the plan with the
    reason, refused by the reader in one line."""
    from kernelfit.catalog.engine_checkpoints import why_not_engine_checkpoint
    from kernelfit.model.quantization import parse_quantization

    assert "rotary scaling 'yarn'" in why_not_engine_checkpoint("qwen3_5_text", "bfloat16", "yarn", None)[0]
    awq = parse_quantization({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm",
                              "zero_point": True}, "config.json")
    assert "awq lfm2 checkpoint" in why_not_engine_checkpoint("lfm2", None, None, awq)[0]
    _saved(tmp_path, "granitemoehybrid")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                              "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="rotary scaling 'yarn' on a granitemoehybrid checkpoint"):
        build_lean(tmp_path)


@pytest.mark.parametrize("kind,key", [("lfm2", "conv_L_cache"), ("qwen3_5_text", "linear_num_key_heads")])
def test_a_config_without_a_size_the_engine_reads_is_refused_in_one_line(tmp_path, kind, key):
    """A key the converter's keys need (conv_L_cache) or the layout needs (the DeltaNet's key heads): one line that
    names it, not a KeyError."""
    from kernelfit.catalog.engine_checkpoints import tensor_problem

    _saved(tmp_path, kind)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg[key]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match=f"config.json lacks or mistypes '{key}'") as e:
        build_lean(tmp_path)
    assert "\n" not in str(e.value)
    if kind == "qwen3_5_text":  # the plan's check reads the same layout: the reason, not an exception
        from safetensors import safe_open

        with safe_open(tmp_path / "model.safetensors", "pt") as f:
            names = set(f.keys())
        assert tensor_problem(names, kind, 6, True, cfg=cfg) == f"config.json lacks or mistypes '{key}'"
