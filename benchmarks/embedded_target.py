"""A target of a real large shape whose function is a real model's: SmolLM2-135M-Instruct (the bundled Q4_1 file,
dequantized) embedded in SmolLM2-1.7B's width — hidden 2048, 32 heads of 64 (keys and values per head, as the 1.7B
has), feed-forward 8192 (SmolLM2-1.7B's config.json) — over the 135M's 30 layers: ~2.1B weights, ~1.3 GB at Q4_K_M.

Speculative decoding needs a draft the target agrees with; random weights agree with nothing, and no larger model of
the family can be read here without a hub download. So the extra width computes nothing, exactly:
- the residual stream's extra 1472 dimensions stay zero (the embedding's extra columns and the output projections'
  extra rows are zero), so the tied output head gives the 135M's logits;
- RMSNorm averages over 2048 dimensions where 576 are non-zero: mean_2048 = mean_576 * 576/2048, so the norm
  weights are scaled by sqrt(576/2048) and epsilon by 576/2048 — then x / rms' * w' = x / rms * w exactly;
- heads 0-8 are the 135M's query heads, key/value head i (i < 9) the 135M's key/value head i // 3 (its 3:1 grouping
  written out per head, as the 1.7B has one key/value head a query head); heads 9-31 and feed-forward units 1536-8191
  have zero output columns, so they add nothing (their other weights are zero too: a file's bytes read a token do not
  depend on the values).
Every byte of the 1.3 GB is read a token, as for any model of that shape; the logits are the 135M's, up to the
quantization llama-quantize applies to the whole file.

    python benchmarks/embedded_target.py OUT.gguf [--type Q4_K_M]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

HIDDEN, HEADS, FFN, HEAD_DIM = 2048, 32, 8192, 64  # SmolLM2-1.7B's width


def _read(src: Path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(src))
    tensors = {t.name: dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)]).astype(np.float32)
               for t in r.tensors}
    return r, tensors


def _copy_fields(r, w, overrides: dict) -> None:
    from gguf import GGUFValueType

    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in overrides:
            value = overrides[name]
            if isinstance(value, float):
                w.add_float32(name, value)
            else:
                w.add_uint32(name, value)
            continue
        types = f.types
        if types[0] == GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), types[0], sub_type=types[1])
        else:
            w.add_key_value(name, f.contents(), types[0])


def embed(src: Path, dst: Path) -> Path:
    from gguf import GGUFWriter

    r, t = _read(src)
    arch = r.fields["general.architecture"].contents()
    key = lambda k: f"{arch}.{k}"  # noqa: E731
    hidden = int(r.fields[key("embedding_length")].contents())
    heads = int(r.fields[key("attention.head_count")].contents())
    kv_heads = int(r.fields[key("attention.head_count_kv")].contents())
    ffn = int(r.fields[key("feed_forward_length")].contents())
    eps = float(r.fields[key("attention.layer_norm_rms_epsilon")].contents())
    layers = int(r.fields[key("block_count")].contents())
    group = heads // kv_heads
    norm_scale = np.float32(np.sqrt(hidden / HIDDEN))
    w = GGUFWriter(str(dst), arch, use_temp_file=True)
    _copy_fields(r, w, {key("embedding_length"): HIDDEN, key("attention.head_count"): HEADS,
                        key("attention.head_count_kv"): HEADS, key("feed_forward_length"): FFN,
                        key("attention.layer_norm_rms_epsilon"): eps * hidden / HIDDEN, "general.file_type": 1})

    def add(name: str, x: np.ndarray) -> None:
        w.add_tensor(name, x.astype(np.float32 if x.ndim == 1 else np.float16))

    def padded(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
        out = np.zeros((rows, cols), np.float32)
        out[:x.shape[0], :x.shape[1]] = x
        return out

    add("token_embd.weight", padded(t["token_embd.weight"], t["token_embd.weight"].shape[0], HIDDEN))
    norm = np.zeros(HIDDEN, np.float32)
    norm[:hidden] = t["output_norm.weight"] * norm_scale
    add("output_norm.weight", norm)
    if "output.weight" in t:
        add("output.weight", padded(t["output.weight"], t["output.weight"].shape[0], HIDDEN))
    for i in range(layers):
        p = f"blk.{i}."
        for n in ("attn_norm", "ffn_norm"):
            norm = np.zeros(HIDDEN, np.float32)
            norm[:hidden] = t[p + n + ".weight"] * norm_scale
            add(p + n + ".weight", norm)
        add(p + "attn_q.weight", padded(t[p + "attn_q.weight"], HEADS * HEAD_DIM, HIDDEN))
        for n in ("attn_k", "attn_v"):
            real = t[p + n + ".weight"].reshape(kv_heads, HEAD_DIM, hidden)
            per_head = np.repeat(real, group, axis=0).reshape(heads * HEAD_DIM, hidden)  # query head h: kv h // group
            add(p + n + ".weight", padded(per_head, HEADS * HEAD_DIM, HIDDEN))
        add(p + "attn_output.weight", padded(t[p + "attn_output.weight"], HIDDEN, HEADS * HEAD_DIM))
        add(p + "ffn_gate.weight", padded(t[p + "ffn_gate.weight"], FFN, HIDDEN))
        add(p + "ffn_up.weight", padded(t[p + "ffn_up.weight"], FFN, HIDDEN))
        add(p + "ffn_down.weight", padded(t[p + "ffn_down.weight"], HIDDEN, FFN))
    assert ffn <= FFN and heads <= HEADS
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--type", default="Q4_K_M")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import llamacpp

    llamacpp.build_llama_bench()
    src = llamacpp.model_files(["smollm2"])["SmolLM2-135M Q4_1"]
    f16 = a.out.with_suffix(".f16.part")
    embed(src, f16)
    subprocess.run([str(llamacpp.QUANTIZE_BIN), str(f16), str(a.out) + ".part", a.type], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f16.unlink()
    Path(str(a.out) + ".part").rename(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
