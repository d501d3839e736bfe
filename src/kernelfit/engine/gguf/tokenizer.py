"""A GGUF file's tokenizer read straight from its metadata and held as plain Python tables, the way
llama.cpp holds it (src/llama-vocab.cpp): no tokenizer.json, no Rust tokenizer object.

Why: transformers' tokenizer built from the same metadata is the largest resident cost of the packed runner
after the weights — measured over `import torch, transformers`: +57 MiB for SmolLM2's 49k vocabulary, +331 MiB
(peak +471) for Gemma 3's 262k vocabulary with its 6,384 added tokens — against +9 and +22 (peak +28) here, where
the tokens stay the file's bytes (Vocab). Encoding is slower (a 4,000-character prompt: ~25-30 ms against ~2-7),
which a prompt does not notice.

It reproduces transformers' tokenizer for the same file token for token (tests/test_gguf_tokenizer.py compares
both on the real files and the tiny ones), for the kinds it covers:
- byte-level BPE (`tokenizer.ggml.model` = gpt2) with the file's merges and a known split pattern;
- Gemma's sentencepiece BPE (gemma, gemma2, gemma3): merges are not in the file; transformers recovers them from
  the vocabulary order (`generate_merges` with each token's position as its score), so a pair's rank here is
  (position of the merged token, longer left piece first) — the same order, without building 515k merges.
Any other kind returns None from `gguf_tokenizer()` and the caller loads transformers' tokenizer instead.
"""

from __future__ import annotations

import heapq
import unicodedata
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

# tokenizers' ByteLevel pre-tokenizer (GPT-2's pattern); the split patterns transformers uses for other
# `tokenizer.ggml.pre` values (transformers/integrations/gguf/gguf_tokenizer_mapping.py, models/qwen2).
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # models/qwen3_5 PRETOKENIZE_REGEX
# Mistral's Tekken (Ministral 3, Mistral Small 3.x, Nemo) and OpenAI's o200k (gpt-oss; Llama 4, MiniMax-M2 alike)
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# transformers' GGUF_PRE_TOKENIZER_SPLITS (integrations/gguf/gguf_tokenizer_mapping.py, 5.25), and GPT-2's for the
# files that name none of them
SPLITS = {None: _GPT2_SPLIT, "default": _GPT2_SPLIT, "gpt2": _GPT2_SPLIT, "smollm": _GPT2_SPLIT,
          **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                           "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
          **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
          "qwen35": _QWEN35_SPLIT, "tekken": _TEKKEN_SPLIT,
          **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT)}
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")


class TokenizerKind(str, Enum):
    BYTE_LEVEL_BPE = "byte-level-bpe"  # tokenizer.ggml.model gpt2, merges in the file
    GEMMA_BPE = "gemma-bpe"  # sentencepiece BPE, merges recovered from the vocabulary order

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types (gguf-py TokenType)
SPACE = "\u2581"  # sentencepiece's visible space
KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"})


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Vocab:
    """id -> token and token -> id over the file's own string bytes (model/gguf_header.StringArray), with the
    few respelled tokens beside them. A Python dict of 262k str -> int costs ~35 MB (the str objects, one int
    object an id, the table); this is ~8 MB: the bytes, plus the tokens' hashes sorted with their ids."""

    def __init__(self, strings, respell):
        import numpy as np

        self.strings, self.respelled = strings, {}
        hashes = np.empty(len(strings), np.int64)
        for i in range(len(strings)):
            t = strings[i]
            r = respell(t)
            if r != t:
                self.respelled[i] = r
            hashes[i] = hash(r)
        order = np.argsort(hashes, kind="stable")  # equal strings keep id order: get() returns the last, as a dict
        self.hashes = array("q", hashes[order].tobytes())
        self.ids = array("i", order.astype(np.int32).tobytes())

    def __len__(self) -> int:
        return len(self.strings)

    def __getitem__(self, i: int) -> str:
        r = self.respelled.get(i)
        return r if r is not None else self.strings[i]

    def get(self, token: str, default=None):
        h = hash(token)
        k = bisect_left(self.hashes, h)
        found = default
        while k < len(self.hashes) and self.hashes[k] == h:
            if self[self.ids[k]] == token:
                found = self.ids[k]
            k += 1
        return found


class PairRanks:
    """Byte-level BPE merges as sorted (left id << 32 | right id) keys beside their ranks and merged ids (the
    first listing of a pair wins, as in tokenizers)."""

    def __init__(self, keys: list[int], ranks: list[int], merged: list[int]):
        import numpy as np

        k, r, m = np.array(keys, np.uint64), np.array(ranks, np.int64), np.array(merged, np.int32)
        order = np.lexsort((r, k))
        k, r, m = k[order], r[order], m[order]
        first = np.ones(len(k), bool)
        first[1:] = k[1:] != k[:-1]
        self.keys, self.ranks = array("Q", k[first].tobytes()), array("q", r[first].tobytes())
        self.merged = array("i", m[first].tobytes())

    def get(self, key: int) -> tuple[int, int] | None:
        """(rank, merged id) of a pair key, or None."""
        k = bisect_left(self.keys, key)
        return (self.ranks[k], self.merged[k]) if k < len(self.keys) and self.keys[k] == key else None


@dataclass
class GgufTokenizer:
    """Encode/decode with the interface `loader.generate` uses of a transformers tokenizer."""

    kind: TokenizerKind
    tokens: Vocab  # id -> token as the model's vocabulary spells it (Gemma: space runs respelled)
    added: dict[str, list[tuple[str, int]]]  # first character -> (added token, id), longest first
    special_ids: frozenset[int]  # dropped by decode(skip_special_tokens=True)
    ranks: PairRanks | None  # byte-level: the file's merges
    split: object | None  # byte-level: compiled pre-tokenizer pattern
    add_bos: bool
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    chat_template: str | None
    whole_words: bool = False  # tokenizers' ignore_merges: a pre-tokenized word in the vocabulary is one token
    normalize: str | None = None  # a unicodedata form applied to the text between added tokens (tokenizer.json's NFC)

    # --- encoding ---------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos and self.bos_token_id is not None else []
        for piece, added_id in self._split_added(text):
            if added_id is not None:
                ids.append(added_id)
            elif self.kind is TokenizerKind.GEMMA_BPE:
                ids.extend(self._bpe(self._gemma_symbols(piece.replace(" ", SPACE))))
            else:
                if self.normalize:
                    piece = unicodedata.normalize(self.normalize, piece)
                for word in self.split.findall(piece):
                    chars = [_BYTE_CHARS[b] for b in word.encode()]
                    whole = self.tokens.get("".join(chars)) if self.whole_words else None
                    ids.extend([whole] if whole is not None else
                               self._bpe([i for i in map(self.tokens.get, chars) if i is not None]))
        return ids

    def _split_added(self, text: str):
        """(piece, None) for text, (token, id) for an added token; leftmost-longest, like tokenizers' trie."""
        start = i = 0
        n = len(text)
        while i < n:
            for tok, tid in self.added.get(text[i], ()):
                if text.startswith(tok, i):
                    if start < i:
                        yield text[start:i], None
                    yield tok, tid
                    i = start = i + len(tok)
                    break
            else:
                i += 1
        if start < n:
            yield text[start:], None

    def _gemma_symbols(self, word: str) -> list[int]:
        """Each character's id; an unknown one as its UTF-8 bytes (<0xXX>), else one unknown (runs fused)."""
        out: list[int] = []
        for ch in word:
            i = self.tokens.get(ch)
            if i is not None:
                out.append(i)
                continue
            fallback = [self.tokens.get(f"<0x{b:02X}>") for b in ch.encode()]
            if all(b is not None for b in fallback):
                out.extend(fallback)
            elif self.unk_token_id is not None and not (out and out[-1] == self.unk_token_id):
                out.append(self.unk_token_id)
        return out

    def _rank(self, left: int, right: int):
        """(rank, merged id) of a pair, or None: tokenizers' BPE order for this vocabulary."""
        if self.ranks is not None:
            return self.ranks.get(left << 32 | right)
        merged = self.tokens.get(self.tokens[left] + self.tokens[right])
        return None if merged is None else ((merged, -len(self.tokens[left])), merged)

    def _bpe(self, symbols: list[int]) -> list[int]:
        """tokenizers' Word::merge_all: repeatedly merge the best-ranked adjacent pair, leftmost on ties."""
        n = len(symbols)
        if n < 2:
            return symbols
        ids, nxt, prv = symbols[:], list(range(1, n + 1)), list(range(-1, n - 1))
        nxt[-1] = -1
        heap = []
        for p in range(n - 1):
            r = self._rank(ids[p], ids[p + 1])
            if r is not None:
                heap.append((r[0], p, r[1]))
        heapq.heapify(heap)
        while heap:
            _, p, merged = heapq.heappop(heap)
            q = nxt[p]
            if ids[p] is None or q == -1:
                continue
            r = self._rank(ids[p], ids[q])
            if r is None or r[1] != merged:
                continue
            ids[p], ids[q] = merged, None
            nxt[p] = nxt[q]
            if nxt[q] != -1:
                prv[nxt[q]] = p
            if prv[p] != -1:
                r = self._rank(ids[prv[p]], merged)
                if r is not None:
                    heapq.heappush(heap, (r[0], prv[p], r[1]))
            if nxt[p] != -1:
                r = self._rank(merged, ids[nxt[p]])
                if r is not None:
                    heapq.heappush(heap, (r[0], p, r[1]))
        return [i for i in ids if i is not None]

    # --- decoding ---------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in self.special_ids)]
        toks = [self.tokens[i] for i in ids if 0 <= i < len(self.tokens)]
        if self.kind is TokenizerKind.BYTE_LEVEL_BPE:
            dec = _CHAR_BYTES
            data = bytearray()
            for t in toks:  # tokenizers' ByteLevel decoder: a token outside the alphabet is taken as its UTF-8
                try:
                    data.extend(dec[c] for c in t)
                except KeyError:
                    data.extend(t.encode())
            return data.decode("utf-8", errors="replace")
        out: list[str] = []
        pending = bytearray()  # tokenizers' ByteFallback: a run of <0xXX> tokens, invalid UTF-8 -> one U+FFFD a byte
        for t in toks:
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                try:
                    pending.append(int(t[3:5], 16))
                    continue
                except ValueError:
                    pass
            _flush_bytes(pending, out)
            out.append(t.replace(SPACE, " "))
        _flush_bytes(pending, out)
        return "".join(out)

    def token_bytes(self) -> list[bytes]:
        """Each token's bytes as decode() writes them (a grammar-constrained sampler matches text byte by byte:
        serve/structured.py); special tokens' own spelling."""
        out = []
        for i in range(len(self.tokens)):
            t = self.tokens[i]
            if i in self.special_ids:
                out.append(t.encode())
            elif self.kind is TokenizerKind.BYTE_LEVEL_BPE:
                try:
                    out.append(bytes(_CHAR_BYTES[c] for c in t))
                except KeyError:
                    out.append(t.encode())
            elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                try:
                    out.append(bytes([int(t[3:5], 16)]))
                except ValueError:
                    out.append(t.encode())
            else:
                out.append(t.replace(SPACE, " ").encode())
        return out

    # --- the transformers tokenizer surface loader.generate uses ------------------------------------------
    def __call__(self, text: str, return_tensors: str | None = None, add_special_tokens: bool = True, **_) -> dict:
        ids = self.encode(text, add_special_tokens)
        if return_tensors == "pt":
            import torch

            t = torch.tensor([ids], dtype=torch.long)
            return {"input_ids": t, "attention_mask": torch.ones_like(t)}
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = True,
                            return_tensors: str | None = None, return_dict: bool = False, **kwargs):
        from transformers.utils.chat_template_utils import render_jinja_template

        if not self.chat_template:
            raise ValueError("this GGUF file has no chat template")
        rendered, _ = render_jinja_template(conversations=[list(messages)], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt,
                                            **{**self.special_tokens_map, **kwargs})
        if not tokenize:
            return rendered[0]
        enc = self(rendered[0], return_tensors=return_tensors, add_special_tokens=False)
        return enc if return_dict else enc["input_ids"]

    @property
    def special_tokens_map(self) -> dict[str, str]:
        named = {"bos_token": self.bos_token_id, "eos_token": self.eos_token_id, "unk_token": self.unk_token_id,
                 "pad_token": self.pad_token_id}
        return {k: self.tokens[i] for k, i in named.items() if i is not None and 0 <= i < len(self.tokens)}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.tokens.get(token, self.unk_token_id)


def _flush_bytes(pending: bytearray, out: list[str]) -> None:
    if pending:
        try:
            out.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("\ufffd" * len(pending))
        pending.clear()


_BYTE_CHARS = bytes_to_unicode()
_CHAR_BYTES = {c: b for b, c in _BYTE_CHARS.items()}


def tokenizer_kind(header) -> TokenizerKind | None:
    """Which of this module's tokenizers a file's header (model/gguf_header.GgufHeader) describes, or None."""
    md = header.metadata
    model, pre = md.get("tokenizer.ggml.model"), md.get("tokenizer.ggml.pre")
    if "tokenizer.ggml.tokens" not in md:
        return None
    if model == "gpt2" and pre in SPLITS and "tokenizer.ggml.merges" in md:
        return TokenizerKind.BYTE_LEVEL_BPE
    if model == "llama" and header.architecture in GEMMA_ARCHS and "tokenizer.ggml.merges" not in md:
        return TokenizerKind.GEMMA_BPE
    return None


def gguf_tokenizer(path: str | Path) -> GgufTokenizer | None:
    """The file's tokenizer, or None when it is of a kind this module does not reproduce exactly."""
    from ...model.gguf_header import StringArray, read_gguf_header

    h = read_gguf_header(path, keep=KEYS)
    md = h.metadata
    kind, pre = tokenizer_kind(h), md.get("tokenizer.ggml.pre")
    raw, types = md.get("tokenizer.ggml.tokens"), md.get("tokenizer.ggml.token_type") or []
    if kind is None or not isinstance(raw, StringArray) or not len(raw):
        return None
    import regex

    byte_level = kind is TokenizerKind.BYTE_LEVEL_BPE
    alphabet, ranks = None, None
    if byte_level:  # transformers respells a token outside the byte alphabet in it
        alphabet = set(_CHAR_BYTES)
        tokens = Vocab(raw, lambda t: t if set(t) <= alphabet else "".join(_BYTE_CHARS[b] for b in t.encode()))
        keys, order, merged = [], [], []
        merges = md.get("tokenizer.ggml.merges")
        for rank, merge in enumerate(merges if isinstance(merges, StringArray) else ()):
            left, _, right = merge.partition(" ")
            a, b, m = tokens.get(left), tokens.get(right), tokens.get(left + right)
            if a is not None and b is not None and m is not None:
                keys.append(a << 32 | b)
                order.append(rank)
                merged.append(m)
        ranks = PairRanks(keys, order, merged)
    else:  # a run of real spaces is looked up as the same run of sentencepiece spaces
        tokens = Vocab(raw, lambda t: SPACE * len(t) if " " in t and not t.strip() else t)
    added: dict[str, list[tuple[str, int]]] = {}  # keyed by the file's spelling: what an added token matches
    special: set[int] = set()
    for i, ty in enumerate(types):
        if ty not in (CONTROL, USER_DEFINED) or i >= len(raw):
            continue
        t = raw[i]
        at = tokens.get(t) if t else None
        if at is None:
            continue
        if ty == CONTROL and (alphabet is None or set(t) <= alphabet):
            special.add(i)
        elif ty == CONTROL:
            continue
        added.setdefault(t[0], []).append((t, at))
    for group in added.values():
        group.sort(key=lambda e: -len(e[0]))

    def tid(key):
        v = md.get(f"tokenizer.ggml.{key}")
        return v if isinstance(v, int) and 0 <= v < len(tokens) else None

    ids = {k: tid(k) for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")}
    special |= {i for i in ids.values() if i is not None}
    add_bos = md.get("tokenizer.ggml.add_bos_token", kind is TokenizerKind.GEMMA_BPE)
    template = md.get("tokenizer.chat_template")
    return GgufTokenizer(kind, tokens, added, frozenset(special), ranks,
                         regex.compile(SPLITS[pre]) if byte_level else None, bool(add_bos),
                         ids["bos_token_id"], ids["eos_token_id"], ids["unknown_token_id"], ids["padding_token_id"],
                         template if isinstance(template, str) else None)
