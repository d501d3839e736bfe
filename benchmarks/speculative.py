"""Speculative decoding by prompt lookup on the two bundled models: single-stream greedy decode with and without it
(in-process, interleaved rounds; the tokens must be identical), against llama.cpp's plain decode of the same file
(`llama-bench -n 64`, same threads), on prompts whose answers repeat their text: a code edit and a summary.

    python benchmarks/speculative.py [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp  # noqa: E402

SOURCE = ("def total(items):\n    result = 0\n    for item in items:\n        result = result + item.price * item.count\n"
          "    return result\n\n\ndef average(items):\n    result = total(items)\n    if not items:\n        return 0\n"
          "    return result / len(items)\n")
ARTICLE = ("The lighthouse on the northern cape was built in 1874 to guard ships entering the harbour. Its keeper, "
           "Ada Lind, lit the lamp every evening for forty years and wrote in a logbook what the sea had done. In "
           "1921 an electric lamp replaced the oil lamp, and in 1958 the light was automated and the keeper's house "
           "became a small museum of the harbour's history.")
PROMPTS = {"code edit": f"Rename `result` to `amount` in this code and show all of it:\n\n{SOURCE}",
           "summary": f"Summarise this text, keeping its wording:\n\n{ARTICLE}"}


def prompt_ids(tok, text: str) -> list[int]:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return ids["input_ids"] if isinstance(ids, dict) else list(ids)
    return tok(text + "\n\n")["input_ids"]


def setup() -> argparse.Namespace:
    """The flags of a speculative-decoding benchmark (this one, draft_model.py), torch's threads set from them and
    llama.cpp's build made."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    llamacpp.build_llama_bench()
    return a


def main() -> int:
    a = setup()
    import kernelfit

    files = llamacpp.model_files(["smollm2", "gemma3"])
    print(f"{a.rounds} interleaved rounds, {a.threads} threads, {a.tokens} new tokens (greedy), medians\n")
    print("| model | prompt | llama.cpp plain decode tok/s | kernelfit plain | kernelfit speculative | tokens a step | "
          "speculative vs llama.cpp | speculative vs plain | same tokens |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name, path in files.items():
        runner, tok, _ = kernelfit.load(str(path), progress=lambda m: None)
        rows = {p: {"plain": [], "spec": [], "per_step": [], "same": True} for p in PROMPTS}
        lc = []
        for _ in range(a.rounds):
            lc.append(llamacpp.llama_cpp(path, a.threads)["decode"])
            for p, text in PROMPTS.items():
                ids = prompt_ids(tok, text)
                plain, _, dp = runner.generate_ids(ids, a.tokens, stop_at_eos=False, speculative=False)
                spec, _, ds = runner.generate_ids(ids, a.tokens, stop_at_eos=False, speculative=True)
                rows[p]["plain"].append((len(plain) - 1) / dp)
                rows[p]["spec"].append((len(spec) - 1) / ds)
                rows[p]["per_step"].append((len(spec) - 1) / max(runner.steps, 1))
                rows[p]["same"] &= plain == spec
        for p, r in rows.items():
            plain, spec, llama = (statistics.median(r[k]) for k in ("plain", "spec")), None, statistics.median(lc)
            plain, spec = statistics.median(r["plain"]), statistics.median(r["spec"])
            print(f"| {name} | {p} | {llama:.1f} | {plain:.1f} | {spec:.1f} | {statistics.median(r['per_step']):.2f} "
                  f"| {spec / llama:.2f}x | {spec / plain:.2f}x | {'yes' if r['same'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
