"""A transformers checkpoint's tokenizer.json read into the engine's own tokenizer tables (engine/gguf/tokenizer.py's
GgufTokenizer): the vocabulary, merges and added tokens as plain Python tables, no Rust tokenizer object — as the
GGUF runner holds a file's tokenizer (57 -> 9 MiB resident for SmolLM2's vocabulary there).

It covers the byte-level BPE tokenizers of the Llama / Qwen / SmolLM families in tokenizers' own terms:
- model BPE (merges as "a b" or ["a", "b"], `ignore_merges`: a word in the vocabulary is one token, as Llama 3's);
- pre-tokenizers ByteLevel (GPT-2's split, or none after a Split), Split (a regex, Isolated), Digits, in a Sequence;
- normalizer none or NFC (Qwen2's); post-processor ByteLevel or TemplateProcessing (a leading BOS, Llama 3's);
- added tokens without lstrip / rstrip / single_word.
Anything else returns None and the caller loads transformers' tokenizer (tests/test_json_tokenizer.py compares both
token for token on tokenizer.json files of each shape).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..gguf.tokenizer import _GPT2_SPLIT, GgufTokenizer, PairRanks, TokenizerKind, Vocab


class Splitter:
    """tokenizers' pre-tokenizers as regexes applied in turn, each keeping its matches and the text between them
    (SplitDelimiterBehavior::Isolated) — the `findall` GgufTokenizer.encode calls."""

    def __init__(self, patterns: list[str]):
        import regex

        self.patterns = [regex.compile(p) for p in patterns]

    def findall(self, text: str) -> list[str]:
        pieces = [text]
        for p in self.patterns:
            out = []
            for piece in pieces:
                at = 0
                for m in p.finditer(piece):
                    if m.start() > at:
                        out.append(piece[at:m.start()])
                    if m.end() > m.start():
                        out.append(m.group())
                    at = m.end()
                if at < len(piece):
                    out.append(piece[at:])
            pieces = out
        return pieces


def _patterns(pre: dict | None) -> list[str] | None:
    """The split regexes of a pre_tokenizer, or None where it is not one of the covered kinds."""
    import regex

    if pre is None:
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    out, byte_level = [], False
    for s in steps or ():
        kind = s.get("type")
        if kind == "ByteLevel" and not s.get("add_prefix_space", False) and not byte_level:
            byte_level = True
            if s.get("use_regex", True):
                out.append(_GPT2_SPLIT)
        elif kind == "Split" and s.get("behavior") == "Isolated" and not s.get("invert", False) and not byte_level:
            p = s.get("pattern") or {}
            out.append(p["Regex"] if "Regex" in p else regex.escape(p["String"]) if "String" in p else None)
        elif kind == "Digits" and not byte_level:
            out.append(r"\p{N}" if s.get("individual_digits") else r"\p{N}+")
        else:
            return None
    return out if byte_level and None not in out else None


def _leading_special(post: dict | None) -> str | None:
    """The special token a TemplateProcessing post-processor puts before a single sequence (Llama 3's BOS)."""
    if post is None:
        return None
    steps = post.get("processors") if post.get("type") == "Sequence" else [post]
    for s in steps or ():
        if s.get("type") == "TemplateProcessing":
            first = (s.get("single") or [{}])[0]
            return first.get("SpecialToken", {}).get("id")
    return None


def _named(cfg: dict, key: str) -> str | None:
    v = cfg.get(key)
    return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None


def _chat_template(directory: Path, cfg: dict) -> str | None:
    t = cfg.get("chat_template")
    if isinstance(t, list):  # named templates: the default one
        t = next((e.get("template") for e in t if isinstance(e, dict) and e.get("name") == "default"), None)
    if isinstance(t, str):
        return t
    f = directory / "chat_template.jinja"  # transformers 5 saves it beside tokenizer_config.json
    return f.read_text(encoding="utf-8") if f.is_file() else None


def json_tokenizer(directory: str | Path) -> GgufTokenizer | None:
    """The checkpoint's tokenizer, or None when tokenizer.json is missing or of a kind this module does not
    reproduce exactly."""
    directory = Path(directory)
    try:
        tj = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        cfg_file = directory / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    except (OSError, ValueError):
        return None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") or \
            model.get("end_of_word_suffix") or model.get("byte_fallback") or model.get("fuse_unk"):
        return None
    patterns = _patterns(tj.get("pre_tokenizer"))
    norm = tj.get("normalizer")
    if patterns is None or (norm is not None and norm.get("type") != "NFC") or \
            (tj.get("decoder") or {}).get("type") != "ByteLevel":
        return None
    added = tj.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") for a in added):
        return None
    vocab = dict(model.get("vocab") or {})
    for a in added:
        vocab.setdefault(a["content"], a["id"])
    strings = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        strings[i] = t
    tokens = Vocab(strings, lambda t: t)
    keys, order, merged = [], [], []
    for rank, m in enumerate(model.get("merges") or ()):
        left, right = (m.split(" ", 1) if isinstance(m, str) else m)
        a, b, c = tokens.get(left), tokens.get(right), tokens.get(left + right)
        if a is not None and b is not None and c is not None:
            keys.append(a << 32 | b)
            order.append(rank)
            merged.append(c)
    by_first: dict[str, list[tuple[str, int]]] = {}
    for a in added:
        if a["content"]:
            by_first.setdefault(a["content"][0], []).append((a["content"], a["id"]))
    for group in by_first.values():
        group.sort(key=lambda e: -len(e[0]))
    special = {a["id"] for a in added if a.get("special")}
    ids = {k: tokens.get(_named(cfg, k)) if _named(cfg, k) else None
           for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    lead = _leading_special(tj.get("post_processor"))
    bos = tokens.get(lead) if lead else ids["bos_token"]
    return GgufTokenizer(TokenizerKind.BYTE_LEVEL_BPE, tokens, by_first, frozenset(special), PairRanks(keys, order, merged),
                         Splitter(patterns), lead is not None and bos is not None, bos, ids["eos_token"],
                         ids["unk_token"], ids["pad_token"], _chat_template(directory, cfg),
                         whole_words=bool(model.get("ignore_merges")), normalize="NFC" if norm else None)
