"""The per-product figures behind catalog/packed_kernels.py: one weight-only product at 1 row (decode) and
256 rows (prefill), bf16 dense (oneDNN; ATen's GEMV at one row) vs torch's int4 group-32 and int8 per-row
CPU kernels and kernelfit's C++ group dot products (4-bit Q4_1-like and 8-bit Q8_0-like groups; at 256 rows
the runner unpacks the product to bf16 for oneDNN instead, "dot unpack" times that), on SmolLM2-135M's shapes
(fused QKV, gate+up, down, the 49152-row output table).

    python benchmarks/packed_kernels.py

Microseconds per product, median of 5 batches; hot caches (the weight is read again and again), so the
one-row figures are the kernels' speed, not DRAM's — the whole-model figures are benchmarks/llamacpp.py's.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]


def us(f, n=50) -> float:
    for _ in range(5):
        f()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            f()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def dot_weights(n: int, k: int):
    """A 4-bit and an 8-bit dot weight of random groups (engine/weights.py), or None without the C++ build."""
    from kernelfit.engine.gguf import blocks as gb
    from kernelfit.engine.weights import DotWeight, dot_available

    if not dot_available():
        return None
    rng = np.random.default_rng(0)
    scale = rng.uniform(1e-3, 1e-2, (n, k // 32)).astype(np.float16)
    q4 = gb.DotGroups(rng.integers(0, 16, (n, k), dtype=np.uint8), scale, scale, 4, 32)
    q8 = gb.DotGroups(rng.integers(0, 256, (n, k), dtype=np.uint8), scale, -128.0, 8, 32)
    return DotWeight.from_groups(q4), DotWeight.from_groups(q8)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':>12} {'rows':>5} {'bf16 dense':>11} {'int4 g32':>9} {'int8 row':>9} {'dot 4-bit':>10} "
          f"{'dot 8-bit':>10} {'dot unpack':>11}")
    for rows in (1, 256):
        for n, k in SHAPES:
            if rows > 1 and n > 4096:
                continue  # prefill runs the output table on the last row only
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            w = torch.randn(n, k, dtype=torch.bfloat16)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
            sz = torch.rand(k // 32, n, 2, dtype=torch.bfloat16)
            w8, s8 = torch.randint(-127, 127, (n, k), dtype=torch.int8), torch.rand(n, dtype=torch.bfloat16)
            torch._C._set_mkldnn_enabled(rows > 1)  # one row: ATen's GEMV (loader/cpu_decode.py says why)
            dense = us(lambda: torch.nn.functional.linear(x, w))
            torch._C._set_mkldnn_enabled(True)
            int4 = us(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz))
            int8 = us(lambda: torch.ops.aten._weight_int8pack_mm(x, w8, s8))
            dots, xf = dot_weights(n, k), x.float()
            d4 = d8 = unpack = float("nan")
            if dots is not None:
                d4, d8 = (us(lambda: w.mm(xf)) for w in dots)
                unpack = us(lambda: torch.nn.functional.linear(x, dots[0].dequantize(bf16=True)), 10)
            print(f"{n:>6}x{k:<5} {rows:>5} {dense:11.1f} {int4:9.1f} {int8:9.1f} {d4:10.1f} {d8:10.1f} {unpack:11.1f}")


if __name__ == "__main__":
    main()
