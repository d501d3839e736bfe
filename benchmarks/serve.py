"""kernelfit serve against llama-server (llama.cpp's, built by benchmarks/llamacpp.py) on the same GGUF files, same
threads: aggregate decode tokens/s with 1, 4 and 8 concurrent clients, and a chat's second-turn latency.

    python benchmarks/serve.py [--files smollm2,qwen2.5-1.5b] [--rounds 2] [--tokens 64] [--threads 2]

Both servers run side by side and are measured in interleaved rounds (a noisy moment hits both alike). llama-server
runs with `-np 8` (8 slots: its continuous batching) and its prompt cache (on by default); kernelfit with its
default `--max-batch 8`. Each client asks for `--tokens` tokens with `ignore_eos` (both servers honour it) through
/v1/completions; the bundled SmolLM2 gets text prompts, a real-shape file (benchmarks/shapes.py: random weights, no
real vocabulary) distinct token-id prompts of 32 tokens.

Second turn (the bundled SmolLM2 only: it has a chat template): a ~1,500-token chat answered once, then the same
history + the answer + one more question; the time to the whole 16-token answer while the server still holds the
first turn (both servers reuse the shared prefix). Then the cost of structured output: a json_schema answer's
seconds a token against the same request unconstrained (llama-server's own grammar sampler beside kernelfit's
llguidance).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp  # noqa: E402
import shapes  # noqa: E402

TEXTS = ["The capital of France is", "Three colors are", "Rain falls because", "Hello! My name is",
         "The largest planet is", "A fruit I like is", "Bees make", "The oceans of the world are"]
CLIENTS = (1, 4, 8)
SLOTS = 8
SLOT_CONTEXT = 2048


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen, port: int, name: str) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            sys.exit(f"{name} exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{name} did not start")


def start(kind: str, path: Path, threads: int) -> tuple[subprocess.Popen, int]:
    port = _port()
    if kind == "kernelfit":
        cmd = [sys.executable, "-m", "kernelfit", "serve", str(path), "--port", str(port), "--max-batch", str(SLOTS)]
        # kernelfit's plan uses every core (torch's threads), llama-server gets -t as many
    else:
        cmd = [str(llamacpp.build_llama_server()), "-m", str(path), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads), "-np", str(SLOTS), "-c", str(SLOTS * SLOT_CONTEXT)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait(proc, port, kind)
    return proc, port


def prompts(real_text: bool) -> list:
    if real_text:
        return TEXTS
    import random

    rng = random.Random(0)
    return [[rng.randrange(1000, 100000) for _ in range(32)] for _ in range(SLOTS)]


async def aggregate(client, asks: list, clients: int, tokens: int) -> float:
    model = (await client.models.list()).data[0].id

    async def one(i: int) -> int:
        r = await client.completions.create(model=model, prompt=asks[i % len(asks)], max_tokens=tokens, temperature=0,
                                            extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    t = time.perf_counter()
    n = sum(await asyncio.gather(*(one(i) for i in range(clients))))
    return n / (time.perf_counter() - t)


STORY = ("A lighthouse keeper named Ada lived on a rocky island and kept the light burning through every storm for "
         "forty years, writing each night in a logbook what the sea had done. ") * 40


async def second_turn(client) -> tuple[float, int, int]:
    model = (await client.models.list()).data[0].id
    first = [{"role": "user", "content": STORY + "Who is the story about?"}]
    a = await client.chat.completions.create(model=model, messages=first, max_tokens=16, temperature=0)
    second = first + [{"role": "assistant", "content": a.choices[0].message.content},
                      {"role": "user", "content": "Where did she live?"}]
    t = time.perf_counter()
    r = await client.chat.completions.create(model=model, messages=second, max_tokens=16, temperature=0)
    details = getattr(r.usage, "prompt_tokens_details", None)
    return time.perf_counter() - t, a.usage.prompt_tokens, (details.cached_tokens or 0) if details else -1


STORY_SCHEMA = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}


async def structured_cost(client, tokens: int) -> float:
    """Seconds a token of a json_schema answer over seconds a token of the same request unconstrained (greedy, one
    client; the constrained answer is one long string, so both decode `tokens` tokens or close to it)."""
    model = (await client.models.list()).data[0].id
    ask = [{"role": "user", "content": "Write a long story about the sea, as JSON."}]
    per_token = []
    for fmt in (None, {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}):
        extra = {"response_format": fmt} if fmt else {"extra_body": {"ignore_eos": True}}
        t = time.perf_counter()
        r = await client.chat.completions.create(model=model, messages=ask, max_tokens=tokens, temperature=0, **extra)
        per_token.append((time.perf_counter() - t) / r.usage.completion_tokens)
    return per_token[1] / per_token[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", default="smollm2,qwen2.5-1.5b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server's -t (kernelfit: every core)")
    a = ap.parse_args()
    from openai import AsyncOpenAI

    from kernelfit.model.spec import bundled_gguf

    files = {}
    for name in a.files.split(","):
        files[name] = bundled_gguf("smollm2-135m") if name == "smollm2" else shapes.make(name, "Q4_K_M")
    kinds = ("llama-server", "kernelfit")
    for name, path in files.items():
        servers = {k: start(k, path, a.threads) for k in kinds}
        try:
            clients = {k: AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=600)
                       for k, (_, port) in servers.items()}
            asks = prompts(name == "smollm2")

            async def measure():
                for k in kinds:  # warm-up
                    await aggregate(clients[k], asks, 1, 8)
                rates = {(k, c): [] for k in kinds for c in CLIENTS}
                turns = {k: [] for k in kinds}
                costs = {k: [] for k in kinds}
                for r in range(a.rounds):
                    for c in CLIENTS:
                        for k in kinds:
                            rates[(k, c)].append(await aggregate(clients[k], asks, c, a.tokens))
                            print(f"round {r + 1}: {name} {k:<12} {c} clients {rates[(k, c)][-1]:7.1f} tok/s",
                                  flush=True)
                    if name == "smollm2":
                        for k in kinds:
                            turns[k].append(await second_turn(clients[k]))
                            costs[k].append(await structured_cost(clients[k], a.tokens))
                return rates, turns, costs

            rates, turns, costs = asyncio.run(measure())
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=60)
        print(f"\n{name} ({path.name}, {path.stat().st_size / 2**20:.0f} MiB): {a.tokens} tokens a request, "
              f"{a.threads} threads, {a.rounds} interleaved rounds (medians)")
        print("| concurrent clients | llama-server -np 8 tok/s | kernelfit serve tok/s | kernelfit / llama-server | "
              "kernelfit vs its 1 client |")
        print("|---:|---:|---:|---:|---:|")
        one = statistics.median(rates[("kernelfit", 1)])
        for c in CLIENTS:
            lc, kf = statistics.median(rates[("llama-server", c)]), statistics.median(rates[("kernelfit", c)])
            ratio = statistics.median(x / y for x, y in zip(rates[("kernelfit", c)], rates[("llama-server", c)]))
            print(f"| {c} | {lc:.1f} | {kf:.1f} | {ratio:.2f}x | {kf / one:.2f}x |")
        if turns["kernelfit"]:
            print(f"\nsecond turn of a {turns['kernelfit'][0][1]}-token chat (16-token answer), median seconds")
            print("| server | seconds | cached prompt tokens |")
            print("|---|---:|---:|")
            for k in kinds:
                print(f"| {k} | {statistics.median(t for t, _, _ in turns[k]):.2f} | "
                      f"{statistics.median(c for _, _, c in turns[k]):.0f} |")
            print("\njson_schema answer, seconds a token over the same request unconstrained (one client, greedy)")
            print("| server | constrained / free |")
            print("|---|---:|")
            for k in kinds:
                print(f"| {k} | {statistics.median(costs[k]):.2f}x |")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
