"""Generation with streaming and honest timing: prefill (prompt -> first token) and decode
(every later token) are measured separately."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UsageError


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.new_tokens - 1  # the first new token belongs to prefill
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0


class _TimingStreamer:
    """transformers BaseStreamer protocol: put() gets the prompt first, then each new token."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.prompt_seen = False
        self.first_token_at: float | None = None
        self.tokens: list[int] = []
        self.printed = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        if self.on_text is not None:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            # hold back an incomplete multi-byte character or word piece until it is complete
            if not text.endswith("\ufffd"):
                self.on_text(text[self.printed:])
                self.printed = len(text)

    def end(self) -> None:
        if self.on_text is not None:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            if len(text) > self.printed:
                self.on_text(text[self.printed:])
                self.printed = len(text)


def compile_forward(model) -> None:
    """torch.compile the forward that generate() calls (it calls self.forward, so the compiled one
    must replace it there); `del model.forward` restores the class's."""
    model.forward = torch.compile(type(model).forward.__get__(model), dynamic=False)


def no_grad_for(model):
    """torch.inference_mode(), or torch.no_grad() for models it breaks: optimum-quanto's int4
    weights repack in their forward and raise "Cannot set version_counter for inference tensor"."""
    quanto = any(type(m).__module__.startswith("optimum.quanto") for m in model.modules())
    return torch.no_grad() if quanto else torch.inference_mode()


def _tokenizer_of(processor):
    """The text tokenizer of a processor (vision-language models), or the tokenizer itself."""
    return getattr(processor, "tokenizer", None) or processor


def encode_prompt(tokenizer, prompt: str, system: str | None = None, chat: bool = True, images=()) -> dict:
    """Model inputs for one user turn: the chat template when there is one, the images through the
    processor (which expands the image placeholders into the model's image tokens)."""
    images = list(images or ())
    if images:
        if getattr(tokenizer, "image_processor", None) is None:
            raise UsageError("this model's processor takes no images; it is not a vision-language model")
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        if chat and getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        enc = tokenizer(text=text, images=images, return_tensors="pt")
        return {k: v for k, v in enc.items() if v is not None}
    tok = _tokenizer_of(tokenizer)
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        enc = tok(prompt, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc.get("attention_mask")}


def model_inputs(model, enc: dict) -> dict:
    """The encoded inputs on the model's device; pixel tensors in the model's dtype."""
    first = next((p for p in model.parameters() if p.device.type != "meta"), None)
    device = first.device if first is not None else torch.device("cpu")
    out = {}
    for k, v in enc.items():
        if not isinstance(v, torch.Tensor):
            continue
        v = v.to(device)
        out[k] = v.to(first.dtype) if v.is_floating_point() and first is not None and first.is_floating_point() else v
    return out


def generate(model, tokenizer, prompt: str, max_new_tokens: int, on_text: Callable[[str], None] | None = None,
             system: str | None = None, chat: bool = True, images=(), **generate_kwargs) -> Generation:
    """`tokenizer`: a tokenizer, or a vision-language model's processor. `images`: PIL images for the user
    turn (loader.images.load_image). `generate_kwargs`: the plan's (e.g. a quantized KV cache)."""
    from ..engine.runner import LeanRunner

    tok = _tokenizer_of(tokenizer)
    streamer = _TimingStreamer(tok, on_text)
    if isinstance(model, LeanRunner):  # the packed GGUF runner: its own greedy loop, the same streamer
        if images:
            raise UsageError("the packed GGUF runner is text-only")
        ids = encode_prompt(tokenizer, prompt, system, chat)["input_ids"][0].tolist()
        streamer.put(torch.tensor(ids))
        tokens, prefill_s, decode_s = model.generate_ids(ids, max_new_tokens, lambda t: streamer.put(torch.tensor([t])))
        streamer.end()
        return Generation(text=tok.decode(tokens, skip_special_tokens=True), prompt_tokens=len(ids),
                          new_tokens=len(tokens), prefill_seconds=prefill_s, decode_seconds=decode_s)
    inputs = model_inputs(model, encode_prompt(tokenizer, prompt, system, chat, images))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t0 = time.perf_counter()
    with no_grad_for(model):
        model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer, pad_token_id=pad,
                       **generate_kwargs)
    t_end = time.perf_counter()
    first = streamer.first_token_at or t_end
    return Generation(text=tok.decode(streamer.tokens, skip_special_tokens=True),
                      prompt_tokens=int(inputs["input_ids"].shape[-1]), new_tokens=len(streamer.tokens),
                      prefill_seconds=first - t0, decode_seconds=t_end - first)
