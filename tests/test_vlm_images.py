"""Vision-language models run with images: tiny random VLMs of four families (LLaVA, Idefics3, Gemma 3,
PaliGemma), each with a processor assembled offline, loaded through kernelfit's plan and dispatcher."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import tiny_vlms
from conftest import run_cli

FAMILIES = ("llava", "idefics3", "gemma3", "paligemma")


@pytest.fixture(scope="module")
def vlm_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in FAMILIES:
            tiny_vlms.FAMILIES[fam](root / fam)
    tiny_vlms.image(root / "red.png", (200, 30, 30))
    tiny_vlms.image(root / "green.png", (20, 200, 90))
    (root / "notes.txt").write_text("not an image")
    return root


def _last_logits(model, processor, image):
    from kernelfit.loader.generate import encode_prompt, model_inputs

    inputs = model_inputs(model, encode_prompt(processor, "what is in the image", images=[image]))
    with torch.no_grad():
        return model(**inputs).logits[0, -1].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_reaches_the_model_and_matches_transformers(vlm_root, family):
    import kernelfit
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = vlm_root / family
    red, green = (kernelfit.load_image(str(vlm_root / f)) for f in ("red.png", "green.png"))
    loaded = kernelfit.load(str(d), dtype="float32", use_tune_cache=False)
    assert set(loaded.plan.attention) == {"text", "vision"}  # a plan per sub-model
    ours_red, ours_green = (_last_logits(loaded.model, loaded.tokenizer, im) for im in (red, green))
    assert float((ours_red - ours_green).abs().max()) > 1e-3  # different images, different answers
    ref = AutoModelForImageTextToText.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32).eval()
    theirs = _last_logits(ref, AutoProcessor.from_pretrained(d), red)
    assert float((ours_red - theirs).abs().max()) < 1e-4
    gen = kernelfit.generate(loaded.model, loaded.tokenizer, "what is in the image", 4, images=[red])
    assert gen.new_tokens == 4 and gen.prompt_tokens > 10


def test_cli_run_with_an_image(vlm_root):
    r = run_cli("run", str(vlm_root / "llava"), "--image", str(vlm_root / "red.png"), "--prompt", "what is in the image",
                "--max-new-tokens", "4", "--dtype", "float32", "--no-cache", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["new_tokens"] == 4 and out["prompt_tokens"] > 16  # 16 image tokens + the question
    assert set(out["plan"]["attention"]["sub_models"]) == {"text_config", "vision_config"}


@pytest.mark.parametrize("image,model,says", [
    ("missing.png", "llava", "no image at"),
    ("notes.txt", "llava", "is not an image"),
    (".", "llava", "is not a file"),
    ("https://example.com/cat.png", "llava", "never downloads"),
    ("data:image/png;base64,@@@", "llava", "not valid base64"),
    ("red.png", "smollm2-135m", "text-only model"),
])
def test_bad_images_end_in_one_line(vlm_root, image, model, says):
    ref = image if "://" in image or image.startswith("data:") else str(vlm_root / image)
    target = model if model == "smollm2-135m" else str(vlm_root / model)
    r = run_cli("run", target, "--image", ref, "--prompt", "hi", "--no-cache")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
