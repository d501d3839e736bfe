"""transformers safetensors checkpoints on kernelfit's engine, against what their users run today (issue 27).

    python benchmarks/checkpoints.py [--rounds 3] [--shapes qwen2.5-1.5b]

1. SmolLM2-135M-Instruct as a bf16 safetensors folder, written here from the bundled GGUF file (transformers
   dequantizes it; save_pretrained writes bf16): kernelfit's engine against transformers' default load of the same
   folder (`AutoModelForCausalLM.from_pretrained(dir)`), decode of 64 tokens after a 256-token prompt, peak RSS over
   each interpreter's baseline against the checkpoint's bytes.
2. Real shapes (benchmarks/shapes.py's random-weight F16 files): the same weights as a bf16 safetensors folder with
   the model's config.json, and as llama.cpp's BF16 GGUF (`llama-quantize F16 -> BF16`, the same rounding), so both
   engines read the same 2 bytes a weight; llama-bench -p 256 -n 64 beside kernelfit, with the read bandwidth.

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


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format by hand (safetensors.numpy has no bf16): a little-endian header length, the JSON
    header padded to 8 bytes, the tensors' bytes; uint16 arrays are bf16 bits."""
    header, offset = {}, 0
    for k, v in tensors.items():
        header[k] = {"dtype": "BF16" if v.dtype == np.uint16 else "F32", "shape": list(v.shape),
                     "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for v in tensors.values():
            f.write(v.tobytes())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="qwen2.5-1.5b", help="benchmarks/shapes.py names, or '' for none")
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.prepare:  # in a process of its own: a child's peak RSS starts at its parent's RSS when it forks
        smollm2_dir()
        for s in a.shapes.split(","):
            if s:
                shape_dirs(s)
        return 0
    llamacpp.build_llama_bench()
    subprocess.run([sys.executable, __file__, "--prepare", "--shapes", a.shapes], check=True)
    small = smollm2_dir()
    big = {s: shape_dirs(s) for s in a.shapes.split(",") if s}
    runs: dict[tuple[str, str], list[dict]] = {}
    bw = []
    for r in range(a.rounds):
        bw.append(llamacpp.read_bandwidth_gbs(a.threads))
        jobs = [("smollm2", "kernelfit", small), ("smollm2", "transformers", small)]
        for s, (folder, gguf) in big.items():
            jobs += [(s, "kernelfit", folder), (s, "llama.cpp BF16", gguf)]
        for model, kind, path in jobs:
            res = llamacpp.llama_cpp(path, a.threads) if kind.startswith("llama.cpp") else \
                llamacpp.python_worker(kind, path, a.threads)
            runs.setdefault((model, kind), []).append(res)
            print(f"round {r + 1}: {model:<14} {kind:<15} prefill {res['prefill']:7.1f} tok/s  decode "
                  f"{res['decode']:6.1f} tok/s  peak RSS {res['peak_rss_mib']:7.1f} MiB (baseline "
                  f"{res['baseline_rss_mib']:.0f})", flush=True)
    bandwidth = statistics.median(bw)
    med = lambda rs, f: statistics.median(x[f] for x in rs)  # noqa: E731
    print(f"\n{a.rounds} interleaved rounds, {a.threads} threads, medians; read bandwidth {bandwidth:.1f} GB/s; "
          f"prefill {llamacpp.PROMPT}, decode {llamacpp.NEW} tokens\n")
    print("| checkpoint | MiB | engine | prefill tok/s | decode tok/s | decode GB/s (% of read bw) | decode x | "
          "peak RSS - baseline MiB (x checkpoint) |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    models = [("smollm2", small, "transformers")] + [(s, f, "llama.cpp BF16") for s, (f, _) in big.items()]
    for model, folder, peer in models:
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        kf, other = runs[(model, "kernelfit")], runs[(model, peer)]
        ratio = statistics.median(x["decode"] / y["decode"] for x, y in zip(kf, other))
        for kind, rs in (("kernelfit", kf), (peer, other)):
            gbs = med(rs, "decode") * (kf[-1]["weights_bytes"] if kind == "kernelfit" else size) / 1e9
            rss = med(rs, "peak_rss_mib") - med(rs, "baseline_rss_mib")
            print(f"| {model} bf16 | {size / 2**20:.0f} | {kind} | {med(rs, 'prefill'):.1f} | {med(rs, 'decode'):.1f} "
                  f"| {gbs:.1f} ({gbs / bandwidth:.0%}) | {ratio if kind == 'kernelfit' else 1:.2f}x | "
                  f"{rss:.0f} ({rss * 2**20 / size:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
