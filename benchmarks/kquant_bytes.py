"""Bytes a token on K-quant files: the one-row (decode) products of a Qwen2.5-1.5B-shaped layer set, Q4_K for Q/K/V,
O, gate/up and Q6_K for down (llama-quantize's Q4_K_M mix), in the layout the runner uses (the file's two-level
scales: a float16 d per 256 weights, an integer sub-scale per group) against the layout before (float32 scales per
group: Q4_K 6 bits a weight instead of 4.625, Q6_K 10 instead of 8.56), interleaved in one run, next to this machine's
measured read bandwidth (a sum over 1 GiB on the same threads). The weights are far larger than the caches, so the
products read DRAM as a decode step does.

    python benchmarks/kquant_bytes.py [--layers 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

# Qwen2.5-1.5B: hidden 1536, 12 heads of 128 (2 KV heads), ffn 8960
HIDDEN, QKV, FFN = 1536, 1536 + 2 * 256, 8960
LAYER = [("Q4_K", QKV, HIDDEN), ("Q4_K", HIDDEN, HIDDEN), ("Q4_K", 2 * FFN, HIDDEN), ("Q6_K", HIDDEN, FFN)]
BLOCK = {"Q4_K": 144, "Q6_K": 210}
D_AT = {"Q4_K": (0, 2), "Q6_K": (208,)}


def random_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
    raw = rng.integers(0, 256, (rows * cols // 256, BLOCK[qtype]), dtype=np.uint8)
    for off in D_AT[qtype]:  # finite scales
        raw[:, off:off + 2] = np.frombuffer(np.float16(rng.uniform(1e-3, 1e-2, len(raw))).tobytes(),
                                            np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def weights(layers: int):
    """(two-level, float32-scale) DotWeights of `layers` layer sets, and the file's bytes."""
    from kernelfit.engine.gguf import blocks as gb
    from kernelfit.engine.weights import DotWeight

    rng = np.random.default_rng(0)
    two, flat, file_bytes = [], [], 0
    for _ in range(layers):
        for qtype, n, k in LAYER:
            raw = random_blocks(qtype, n, k, rng)
            file_bytes += raw.nbytes
            g = gb.dot_groups(raw, qtype, n, k)
            two.append(DotWeight.from_groups(g))
            scale, mins = g.float_scales()
            flat.append(DotWeight.from_groups(gb.DotGroups(g.codes, scale, mins, g.bits, g.group)))
    return two, flat, file_bytes


def read_bandwidth_gbs() -> float:
    x = torch.ones(1 << 28)  # 1 GiB of float32
    x.sum()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        runs.append(time.perf_counter() - t)
    return x.numel() * 4 / min(runs) / 1e9


def step_ms(ws, x) -> float:
    t = time.perf_counter()
    for w in ws:
        w.mm(x[w.in_features])
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    two, flat, file_bytes = weights(args.layers)
    x = {k: torch.randn(1, k) for k in (HIDDEN, FFN)}
    nb = {name: sum(w.nbytes() for w in ws) for name, ws in (("two-level", two), ("float32 scales", flat))}
    bw = read_bandwidth_gbs()
    times = {name: [] for name in nb}
    for _ in range(2):
        step_ms(two, x), step_ms(flat, x)
    for _ in range(args.rounds):  # interleaved: A B A B ...
        times["two-level"].append(step_ms(two, x))
        times["float32 scales"].append(step_ms(flat, x))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} Qwen2.5-1.5B layer sets "
          f"(Q4_K_M mix), file {file_bytes / 2**20:.1f} MiB; read bandwidth {bw:.1f} GB/s")
    print(f"{'layout':>15} {'MiB':>7} {'x file':>7} {'ms (median)':>12} {'GB/s read':>10} {'% of bw':>8}")
    for name, ms in times.items():
        med = statistics.median(ms)
        gbs = nb[name] / (med / 1e3) / 1e9
        print(f"{name:>15} {nb[name] / 2**20:7.1f} {nb[name] / file_bytes:7.3f} {med:12.2f} {gbs:10.1f} "
              f"{100 * gbs / bw:7.0f}%")
    ratios = [f / t for t, f in zip(times["two-level"], times["float32 scales"])]
    print(f"two-level speed-up per round: median {statistics.median(ratios):.2f}x "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
