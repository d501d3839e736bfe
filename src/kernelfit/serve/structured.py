"""Grammar-constrained sampling for `response_format` (JSON, JSON schema) and tool calls, with llguidance (the
grammar engine llama.cpp and vLLM use: a Rust library with no further dependencies; its masks cost ~10-100 us a
token here against a 3-5 ms decode step).

Each constrained request gets a matcher; before each of its tokens is sampled, the tokens that cannot continue the
grammar get -inf logits, and the sampled token advances the matcher. The end-of-sequence token is allowed only where
the grammar may end, so the answer is always complete JSON of the schema (unless max_tokens cuts it, which
finish_reason "length" says).
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import torch

from .protocol import ApiError, Constraint


class Grammars:
    def __init__(self, tokenizer, vocab: int, eos_ids: set[int]):
        self.tokenizer, self.vocab, self.eos_ids = tokenizer, vocab, sorted(eos_ids)
        self._ll = None  # built on first use (~0.1-1 s)

    def ll_tokenizer(self):
        if self._ll is None:
            import llguidance

            tok = self.tokenizer
            if hasattr(tok, "token_bytes"):  # the GGUF file's own tables (engine/gguf/tokenizer.py)
                self._ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrapped(tok)), n_vocab=self.vocab,
                                                  eos_token=self.eos_ids or None)
            else:
                from llguidance.hf import from_tokenizer

                self._ll = from_tokenizer(tok, n_vocab=self.vocab, eos_token=self.eos_ids or None)
        return self._ll

    def grammar(self, c: Constraint) -> str:
        """The llguidance grammar of a constraint; an invalid schema is a 400 with llguidance's reason."""
        import llguidance

        try:
            if c.free_text:  # tool_choice auto: a call as JSON, or text that does not start with "{"
                lark = f"start: call | TEXT\ncall: %json {json.dumps(c.schema)}\nTEXT: /[^{{\\s][\\s\\S]*/\n"
                grammar = llguidance.LLMatcher.grammar_from_lark(lark)
            else:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(
                    c.schema, defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as exc:
            raise ApiError(400, f"the schema cannot be compiled: {exc}", "response_format") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer())
        if is_error:  # llguidance's own verdict (warnings are not errors)
            raise ApiError(400, f"the schema cannot be enforced: {messages[0].splitlines()[0]}",
                           "tools" if c.kind == "tool" else "response_format")
        return grammar

    def matcher(self, grammar: str):
        import llguidance

        return llguidance.LLMatcher(self.ll_tokenizer(), grammar, log_level=0)


class _Wrapped:
    """What llguidance.TokenizerWrapper reads of a tokenizer."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_token_id, self.bos_token_id = tok.eos_token_id, tok.bos_token_id
        self.tokens = tok.token_bytes()
        self.special_token_ids = sorted(tok.special_ids)

    def __call__(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tok.encode(text, add_special_tokens=False)


def mask_logits(matcher, logits: torch.Tensor) -> torch.Tensor:
    """logits with the tokens the grammar cannot take next at -inf (a copy)."""
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    allowed = torch.from_numpy(bits[:logits.shape[-1]].astype(bool))
    out = logits.float().clone()
    n = min(out.shape[-1], allowed.shape[0])
    out[:n][~allowed[:n]] = float("-inf")
    if out.shape[-1] > n:
        out[n:] = float("-inf")
    return out


def tool_calls(text: str) -> list[dict] | None:
    """A constrained tool answer as OpenAI's tool_calls, or None when it is text (tool_choice auto)."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not isinstance(call, dict) or "name" not in call:
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}]
