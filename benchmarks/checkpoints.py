"""transformers safetensors checkpoints on kernelfit's engine, against what their users run today (issue 27).

    python benchmarks/checkpoints.py [--rounds 3] [--shapes qwen2.5-1.5b]

1. SmolLM2-135M-Instruct as a bf16 safetensors folder, written here from the bundled GGUF file (transformers
   dequantizes it; save_pretrained writes bf16): kernelfit's engine against transformers' default load of the same
   folder (`AutoModelForCausalLM.from_pretrained(dir)`), decode of 64 tokens after a 256-token prompt, peak RSS over
   each interpreter's baseline against the checkpoint's bytes.
2. Real shapes (benchmarks/shapes.py's random-weight F16 files): the same weights as a bf16 safetensors folder with
   the model's config.json, and as llama.cpp's BF16 GGUF (`llama-quantize F16 -> BF16`, the same rounding), so both
   engines read the same 2 bytes a weight; llama-bench -p 256 -n 64 beside kernelfit, with the read bandwidth.
3. The same shape re-quantized: `--quantization q8_0` on the bf16 folder against llama.cpp's Q8_0 of the F16 file;
   and (--packed) 4-bit AWQ (GEMM, a zero per group) and GPTQ (symmetric, v1) folders of the bf16 weights in groups
   of 128, written here in the formats' layouts, against llama.cpp's Q4_0 of the F16 file (4.5 bits a weight) and
   against transformers' default load of each folder (gptqmodel's CPU kernels).

Workers are benchmarks/llamacpp.py's (fresh interpreters), rounds interleaved. Folders in .engines/safetensors/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp  # noqa: E402
import shapes  # noqa: E402

OUT = llamacpp.ROOT / ".engines" / "safetensors"
HF = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
      "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
      "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def smollm2_dir() -> Path:
    """The bundled SmolLM2 GGUF as a transformers bf16 checkpoint (weights, config, tokenizer, chat template)."""
    out = OUT / "smollm2-135m-bf16"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kernelfit.model.spec import bundled_gguf

    gguf = bundled_gguf("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None  # transformers marks a GGUF load unserialisable; its weights are plain bf16 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def shape_dirs(name: str) -> tuple[Path, Path]:
    """(safetensors folder, llama.cpp BF16 GGUF) of benchmarks/shapes.py's F16 file `name`: the same bf16 values."""
    from gguf import GGUFReader

    f16 = shapes.OUT / f"{name}-F16.gguf"
    if not f16.is_file():
        shapes.OUT.mkdir(parents=True, exist_ok=True)
        shapes.write_f16(name, f16)
    bf16 = OUT / f"{name}-BF16.gguf"
    if not bf16.is_file():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(llamacpp.QUANTIZE_BIN), str(f16), str(bf16), "BF16"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = OUT / f"{name}-bf16"
    if (out / "config.json").is_file():
        return out, bf16
    arch, hidden, layers, heads, kv, ffn, vocab, base, llama3 = shapes.SHAPES[name]
    tensors = {}
    for t in GGUFReader(str(bf16)).tensors:  # llama.cpp's bf16 bytes, renamed; a llama file's Q/K rows un-paired
        if t.name == "rope_freqs.weight":
            continue
        data = np.array(t.data)
        if data.dtype == np.uint8:  # gguf-py hands BF16 tensors over as their bytes
            data = data.view(np.uint16)
        rows = data.reshape(-1, int(t.shape[0])) if len(t.shape) > 1 else data
        part, _, rest = t.name.partition(".")
        if part == "blk":
            i, _, leaf = rest.partition(".")
            key, _, kind = leaf.rpartition(".")
            if arch == "llama" and key in ("attn_q", "attn_k"):
                n = rows.shape[0] // (hidden // heads)
                rows = rows.reshape(n, (hidden // heads) // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)
            hf = f"model.layers.{i}.{HF[key]}.{kind}"
        else:
            hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}[t.name]
        tensors[hf] = np.ascontiguousarray(rows.view(np.uint16) if rows.dtype != np.float32 else rows)
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    write_safetensors(tmp / "model.safetensors", tensors)
    rope = {"rope_type": "default", "rope_theta": base} if not llama3 else {
        "rope_type": "llama3", "rope_theta": base, "factor": llama3[0], "low_freq_factor": llama3[1],
        "high_freq_factor": llama3[2], "original_max_position_embeddings": llama3[3]}
    (tmp / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"], "model_type": arch,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "intermediate_size": ffn, "vocab_size": vocab, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
        "rope_parameters": rope, "tie_word_embeddings": True, "dtype": "bfloat16"}, indent=1))
    tmp.rename(out)
    return out, bf16


SAFETENSORS_DTYPES = {"<u2": "BF16", "<f4": "F32", "<f2": "F16", "<i4": "I32"}  # uint16 arrays hold bf16 bits


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format by hand (safetensors.numpy has no bf16): a little-endian header length, the JSON
    header padded to 8 bytes, the tensors' bytes; uint16 arrays are bf16 bits."""
    header, offset = {}, 0
    for k, v in tensors.items():
        header[k] = {"dtype": SAFETENSORS_DTYPES[v.dtype.str], "shape": list(v.shape),
                     "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for v in tensors.values():
            f.write(v.tobytes())


GROUP = 128


def _pack(codes: np.ndarray, axis: int, order: np.ndarray | None = None) -> np.ndarray:
    """4-bit codes packed eight to an int32 along `axis` (0: rows, 1: columns), low nibble first."""
    c = np.moveaxis(codes, axis, -1)
    c = c.reshape(*c.shape[:-1], -1, 8).astype(np.uint32)
    if order is not None:
        c = c[..., order]
    words = np.zeros(c.shape[:-1], dtype=np.uint32)
    for i in range(8):
        words |= c[..., i] << np.uint32(4 * i)
    return np.ascontiguousarray(np.moveaxis(words, -1, axis)).view(np.int32)


def _quantize(w: np.ndarray, sym: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[out, in] float32 -> 4-bit codes [out, in], zeros and float16 scales [out, in/GROUP] (AutoAWQ's min/max
    asymmetric rule, or GPTQ's symmetric one around 8, without the calibration: speed only)."""
    o, i = w.shape
    g = w.reshape(o, i // GROUP, GROUP)
    mx, mn = g.max(-1), g.min(-1)
    if sym:
        scale = (2 * np.maximum(np.abs(mx), np.abs(mn)) / 15).clip(1e-5).astype(np.float16)
        zero = np.full(scale.shape, 8, dtype=np.int32)
    else:
        scale = ((mx - mn) / 15).clip(1e-5).astype(np.float16)
        zero = np.clip(np.round(-mn / scale.astype(np.float32)), 0, 15).astype(np.int32)
    q = np.clip(np.round(g / scale.astype(np.float32)[..., None] + zero[..., None]), 0, 15).astype(np.uint8)
    return q.reshape(o, i), zero, scale


def packed_dir(name: str, folder: Path, method: str) -> Path:
    """`folder`'s bf16 checkpoint with every projection packed as 4-bit AWQ (gemm) or GPTQ (sym, v1), group 128."""
    out = OUT / f"{name}-{method}"
    if (out / "config.json").is_file():
        return out
    from kernelfit.model.quantization import AWQ_ORDER
    from kernelfit.model.safetensors_header import read_header

    shard = folder / "model.safetensors"
    header = read_header(shard)
    with shard.open("rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    data = np.memmap(shard, dtype=np.uint8, mode="r")
    tensors = {}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[start + b:start + e].view(np.uint16 if info["dtype"] == "BF16" else np.float32).reshape(info["shape"])
        if not k.endswith("_proj.weight"):
            tensors[k] = np.array(raw)
            continue
        w = (raw.astype(np.uint32) << 16).view(np.float32)
        q, zero, scale = _quantize(w, sym=method == "gptq")
        p = k[: -len("weight")]
        if method == "awq":
            tensors[p + "qweight"] = _pack(q.T, 1, np.array(AWQ_ORDER))  # [in, out/8]
            tensors[p + "qzeros"] = _pack(zero.T.astype(np.uint8), 1, np.array(AWQ_ORDER))  # [in/g, out/8]
        else:
            tensors[p + "qweight"] = _pack(q.T, 0)  # [in/8, out]
            tensors[p + "qzeros"] = _pack((zero.T - 1).astype(np.uint8), 1)  # v1: zero - 1
            tensors[p + "g_idx"] = (np.arange(w.shape[1]) // GROUP).astype(np.int32)
        tensors[p + "scales"] = np.ascontiguousarray(scale.T)  # [in/g, out]
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    write_safetensors(tmp / "model.safetensors", tensors)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = (
        {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}
        if method == "awq" else {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "sym": True,
                                 "desc_act": False, "checkpoint_format": "gptq"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    tmp.rename(out)
    return out


def _groups(small: Path, big: dict, packed: bool) -> list[tuple[str, Path, tuple[str, Path], list[tuple[str, Path]]]]:
    """(label, checkpoint folder, kernelfit's (kind, path), the peers' (kind, path)) a table row group each."""
    groups = [("smollm2 bf16", small, ("kernelfit", small), [("transformers", small)])]
    for s, (folder, gguf) in big.items():
        groups.append((f"{s} bf16", folder, ("kernelfit", folder), [("llama.cpp BF16", gguf)]))
        groups.append((f"{s} q8_0", folder, ("kernelfit-q8_0", folder), [("llama.cpp Q8_0", shapes.make(s, "Q8_0"))]))
        if packed:
            q4 = shapes.make(s, "Q4_0")
            for method in ("awq", "gptq"):
                d = packed_dir(s, folder, method)
                groups.append((f"{s} {method}", d, ("kernelfit", d), [("llama.cpp Q4_0", q4), ("transformers", d)]))
    return groups


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="qwen2.5-1.5b", help="benchmarks/shapes.py names, or '' for none")
    ap.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                    help="the AWQ / GPTQ rows (gptqmodel through transformers is slow at these sizes)")
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    names = [s for s in a.shapes.split(",") if s]
    if a.prepare:  # in a process of its own: a child's peak RSS starts at its parent's RSS when it forks
        _groups(smollm2_dir(), {s: shape_dirs(s) for s in names}, a.packed)
        return 0
    llamacpp.build_llama_bench()
    subprocess.run([sys.executable, __file__, "--prepare", "--shapes", a.shapes,
                    "--packed" if a.packed else "--no-packed"], check=True)
    groups = _groups(smollm2_dir(), {s: shape_dirs(s) for s in names}, a.packed)
    runs: dict[tuple[str, str], list[dict]] = {}
    bw = []
    for r in range(a.rounds):
        bw.append(llamacpp.read_bandwidth_gbs(a.threads))
        for label, _, ours, peers in groups:
            for kind, path in [ours, *peers]:
                res = llamacpp.llama_cpp(path, a.threads) if kind.startswith("llama.cpp") else \
                    llamacpp.python_worker(kind, path, a.threads)
                runs.setdefault((label, kind), []).append(res)
                print(f"round {r + 1}: {label:<18} {kind:<15} prefill {res['prefill']:7.1f} tok/s  decode "
                      f"{res['decode']:6.1f} tok/s  peak RSS {res['peak_rss_mib']:7.1f} MiB (baseline "
                      f"{res['baseline_rss_mib']:.0f})", flush=True)
    bandwidth = statistics.median(bw)
    med = lambda rs, f: statistics.median(x[f] for x in rs)  # noqa: E731
    print(f"\n{a.rounds} interleaved rounds, {a.threads} threads, medians; read bandwidth {bandwidth:.1f} GB/s; "
          f"prefill {llamacpp.PROMPT}, decode {llamacpp.NEW} tokens; decode x: kernelfit / the peer, the median of "
          "each round's ratio\n")
    print("| checkpoint | MiB | engine | prefill tok/s | decode tok/s | bytes read a token, MiB | decode GB/s (% of read "
          "bw) | kernelfit decode x | peak RSS - baseline MiB (x checkpoint) |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|")
    for label, folder, ours, peers in groups:
        size = _bytes(folder)
        kf = runs[(label, ours[0])]
        for kind, path in [ours, *peers]:
            rs = runs[(label, kind)]
            read = kf[-1]["weights_bytes"] if kind == ours[0] else _bytes(path)
            gbs = med(rs, "decode") * read / 1e9
            rss = med(rs, "peak_rss_mib") - med(rs, "baseline_rss_mib")
            ratio = "" if kind == ours[0] else \
                f"{statistics.median(x['decode'] / y['decode'] for x, y in zip(kf, rs)):.2f}x"
            print(f"| {label} | {size / 2**20:.0f} | {kind} | {med(rs, 'prefill'):.1f} | {med(rs, 'decode'):.1f} | "
                  f"{read / 2**20:.0f} | {gbs:.1f} ({gbs / bandwidth:.0%}) | {ratio} | {rss:.0f} "
                  f"({rss * 2**20 / size:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
