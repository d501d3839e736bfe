"""Speculative decoding with a draft model (`--draft-model`) against llama.cpp's, on a real pair of one tokenizer:
SmolLM2-135M-Instruct's weights at F16 as the target (made from the bundled Q4_1 file by llama.cpp's own
`llama-quantize --allow-requantize ... F16`: the same values, 2 bytes a weight, ~260 MB read a token) drafted by the
bundled Q4_1 file itself (~4x fewer bytes a token). No larger model of the family can be made here without a hub
download (random weights would accept no drafts), so the pair is a model and its own quantization — the shape of the
common "quantized self-draft" use, at a small size.

One interleaved run, greedy, `--tokens` new tokens a prompt (end tokens ignored), medians over `--rounds`:
kernelfit plain (one step a token), prompt lookup, and the draft model (the tokens must be identical: a column says
so); llama-bench's plain decode of the F16 file; llama-server with `--model-draft` (its speculative decode: the
/completion response's `timings`, the same token ids sent, the same draft limits: up to 11 tokens, p_min 0.75); the
read bandwidth (benchmarks/llamacpp.py's probe) beside them.

    python benchmarks/draft_model.py [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp  # noqa: E402
from serve import _port, _wait  # noqa: E402
from speculative import PROMPTS, prompt_ids, setup  # noqa: E402

STORY = "Write a short story about a robot who learns to paint."
ALL_PROMPTS = {**PROMPTS, "story": STORY}
DRAFT_MAX = 11  # kernelfit's DOT_MAX_ROWS - 1: the most drafted rows one exact verification step takes
P_MIN = 0.75


def f16_target(q4: Path) -> Path:
    """The bundled file's weights at F16, written once by llama-quantize (dequantized from its Q4_1 blocks)."""
    out = llamacpp.ENGINE / "models" / "SmolLM2-135M-Instruct.F16-from-Q4_1.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(llamacpp.QUANTIZE_BIN), "--allow-requantize", str(q4), str(out) + ".part", "F16"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        Path(str(out) + ".part").rename(out)
    return out


def llama_server_spec(target: Path, draft: Path, threads: int, ids: dict[str, list[int]], tokens: int) -> dict:
    """llama-server's speculative decode of each prompt (greedy, ids as given): tok/s and drafted / accepted tokens."""
    port = _port()
    cmd = [str(llamacpp.build_llama_server()), "-m", str(target), "-md", str(draft), "--host", "127.0.0.1",
           "--port", str(port), "-t", str(threads), "-tb", str(threads), "-td", str(threads), "-np", "1",
           "-c", "2048"]  # its own draft limits (this build: up to 3 tokens, p_min 0)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(proc, port, "llama-server")
        out = {}
        for name, prompt in ids.items():
            body = json.dumps({"prompt": prompt, "n_predict": tokens, "temperature": 0, "ignore_eos": True,
                               "cache_prompt": False}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                t = json.loads(r.read())["timings"]
            out[name] = {"tok_s": t["predicted_per_second"], "drafted": t.get("draft_n"),
                         "accepted": t.get("draft_n_accepted")}
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    a = setup()
    import kernelfit
    from kernelfit.engine.draft_model import DraftModel

    q4 = llamacpp.model_files(["smollm2"])["SmolLM2-135M Q4_1"]
    target = f16_target(q4)
    runner, tok, _ = kernelfit.load(str(target), progress=lambda m: None)
    drafter, _, _ = kernelfit.load(str(q4), progress=lambda m: None)
    ids = {p: prompt_ids(tok, text) for p, text in ALL_PROMPTS.items()}
    kinds = ("plain", "lookup", "draft")
    rate = {(p, k): [] for p in ids for k in kinds}
    per_step = {(p, k): [] for p in ids for k in kinds}
    same = {p: True for p in ids}
    lc_plain, lc_spec, bw = [], {p: [] for p in ids}, []
    for _ in range(a.rounds):
        bw.append(llamacpp.read_bandwidth_gbs(a.threads))
        lc_plain.append(llamacpp.llama_cpp(target, a.threads)["decode"])
        for p, r in llama_server_spec(target, q4, a.threads, ids, a.tokens).items():
            lc_spec[p].append(r)
        for p, prompt in ids.items():
            out = {}
            for k in kinds:
                runner.draft = DraftModel(drafter, q4.name) if k == "draft" else None
                tokens, _, seconds = runner.generate_ids(prompt, a.tokens, stop_at_eos=False,
                                                         speculative=k != "plain")
                out[k] = tokens
                rate[(p, k)].append((len(tokens) - 1) / seconds)
                per_step[(p, k)].append((len(tokens) - 1) / max(runner.steps, 1))
            runner.draft = None
            same[p] &= out["plain"] == out["lookup"] == out["draft"]
    med = statistics.median
    plain_lc = med(lc_plain)
    print(f"SmolLM2-135M-Instruct F16 target ({target.stat().st_size / 2**20:.0f} MiB), draft: the bundled Q4_1 file "
          f"({q4.stat().st_size / 2**20:.0f} MiB); {a.rounds} interleaved rounds, {a.threads} threads, {a.tokens} new "
          f"tokens (greedy), medians; read bandwidth {med(bw):.1f} GB/s; llama.cpp plain decode (llama-bench tg64) "
          f"{plain_lc:.1f} tok/s\n")
    print("| prompt | kernelfit plain | prompt lookup | draft model | tokens a step (draft) | llama-server -md "
          "| its accepted / drafted | draft model vs llama.cpp plain | vs llama-server -md | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in ids:
        kp, kl, kd = (med(rate[(p, k)]) for k in kinds)
        ls = med(r["tok_s"] for r in lc_spec[p])
        last = lc_spec[p][-1]
        acc = f"{last['accepted']} / {last['drafted']}" if last["drafted"] is not None else "-"
        print(f"| {p} | {kp:.1f} | {kl:.1f} | {kd:.1f} | {med(per_step[(p, 'draft')]):.2f} | {ls:.1f} | {acc} | "
              f"{kd / plain_lc:.2f}x | {kd / ls:.2f}x | {'yes' if same[p] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
