"""Small GGUF files holding only a tokenizer, of the kinds llama.cpp's converter writes: byte-level BPE (gpt2, merges
in the file) and Gemma's sentencepiece BPE (no merges; the vocabulary order is the merge order). The vocabularies
are learned here from tests/data/prose.txt by plain BPE, so real words merge and unseen text falls back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import GGUFWriter

from kernelfit.engine.gguf.tokenizer import bytes_to_unicode

PROSE = Path(__file__).parent / "data" / "prose.txt"
CONTROL, USER_DEFINED, BYTE, NORMAL = 3, 4, 6, 1


def learn_merges(words: list[list[str]], count: int) -> list[tuple[str, str]]:
    """Plain BPE training: the most frequent adjacent pair, `count` times (ties: first seen)."""
    merges = []
    words = [w[:] for w in words]
    for _ in range(count):
        pairs = Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        best = max(pairs, key=pairs.get)
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


def _header(w: GGUFWriter) -> None:
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-6)


def write_byte_level(path: Path, pre: str = "smollm", merges: int = 300) -> Path:
    import regex

    enc = bytes_to_unicode()
    split = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    words = [[enc[b] for b in m.encode()] for m in split.findall(PROSE.read_text()[:20000])]
    learned = learn_merges(words, merges)
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = control + [enc[b] for b in range(256)] + [a + b for a, b in learned] + ["<think>", "Ċ Ċ"]
    types = [CONTROL] * 3 + [NORMAL] * (256 + len(learned)) + [USER_DEFINED, CONTROL]  # the last: outside the alphabet
    w = GGUFWriter(str(path), "llama")
    _header(w)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in learned])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    _finish(w)
    return path


def write_gemma(path: Path, merges: int = 300) -> Path:
    text = PROSE.read_text()[:20000].replace(" ", "\u2581")
    learned = learn_merges([list(text[i:i + 200]) for i in range(0, len(text), 200)], merges)
    chars = sorted(set(text))
    head = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pieces = list(dict.fromkeys(a + b for a, b in learned))  # merge order = vocabulary order
    extra = ["\n\n", "  ", "   "]  # a user-defined newline run; space runs stored as real spaces (respelled)
    tokens = head + byte_tokens + chars + pieces + extra
    types = ([CONTROL] * 3 + [2] + [CONTROL] * 3 + [BYTE] * 256 + [NORMAL] * (len(chars) + len(pieces))
             + [USER_DEFINED, NORMAL, NORMAL])
    w = GGUFWriter(str(path), "gemma3")
    _header(w)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(len(tokens))])
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    _finish(w)
    return path


def _finish(w: GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
