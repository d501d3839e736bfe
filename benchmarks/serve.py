"""kernelfit serve under concurrent streaming clients: aggregate decode tokens/s with 1, 4 and 8 clients,
measured in interleaved rounds against one server (the bundled SmolLM2 unless a model is given).

    python benchmarks/serve.py [MODEL] [--rounds 3] [--tokens 64] [--dtype bfloat16] [--quantization none]

A GGUF file is served packed (one request at a time) by default; `--quantization none` serves it dequantized
through transformers, requests batched.

Then a chat's second turn: a ~1,500-token history answered once, then the same history + the answer + one more
question; the second turn's latency (time to the whole 16-token answer, non-streaming) when the server still holds
the first turn's prompt in its cache ("warm": only the new part is prefilled) and after an unrelated request took
the cache ("cold"), interleaved.
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

PROMPTS = ["What is the capital of France?", "Name three colors.", "Explain rain in one sentence.", "Say hello.",
           "What is the largest planet?", "Name a fruit.", "What do bees make?", "Name an ocean."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantization", default="auto")
    args = ap.parse_args()
    from openai import AsyncOpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "kernelfit", "serve", args.model, "--port", str(port), "--dtype",
                             args.dtype, "--quantization", args.quantization], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")

        async def one(i: int) -> int:
            s = await client.chat.completions.create(
                model=args.model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=args.tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            n = 0
            async for c in s:
                if c.usage:
                    n = c.usage.completion_tokens
            return n

        async def run(clients: int) -> float:
            t = time.perf_counter()
            tokens = sum(await asyncio.gather(*(one(i) for i in range(clients))))
            return tokens / (time.perf_counter() - t)

        async def measure() -> dict[int, list[float]]:
            await run(1)  # warm-up
            rates: dict[int, list[float]] = {1: [], 4: [], 8: []}
            for _ in range(args.rounds):  # interleaved: a noisy moment hits every setting alike
                for clients in rates:
                    rates[clients].append(await run(clients))
            return rates

        story = ("A lighthouse keeper named Ada lived on a rocky island and kept the light burning through every "
                 "storm for forty years, writing each night in a logbook what the sea had done. ") * 40

        async def turn(messages) -> tuple[float, int]:
            t = time.perf_counter()
            r = await client.chat.completions.create(model=args.model, messages=messages, max_tokens=16,
                                                     temperature=0)
            cached = r.usage.prompt_tokens_details.cached_tokens if r.usage.prompt_tokens_details else 0
            return time.perf_counter() - t, cached, r

        async def second_turn() -> dict[str, list[float]]:
            first = [{"role": "user", "content": story + "Who is the story about?"}]
            _, _, a = await turn(first)
            second = first + [{"role": "assistant", "content": a.choices[0].message.content},
                              {"role": "user", "content": "Where did she live?"}]
            out: dict[str, list] = {"warm": [], "cold": [], "prompt": [a.usage.prompt_tokens]}
            for _ in range(args.rounds):
                await turn(first)
                sec, cached, _ = await turn(second)
                out["warm"].append((sec, cached))
                await turn([{"role": "user", "content": "Say hello."}])
                sec, cached, _ = await turn(second)
                out["cold"].append((sec, cached))
            return out

        async def both():  # one event loop: the client's connections belong to it
            return await measure(), await second_turn()

        rates, turns = asyncio.run(both())
        base = statistics.median(rates[1])
        print(f"kernelfit serve, {args.model}, {args.tokens} tokens per request, {os.cpu_count()} CPUs, "
              f"{args.rounds} interleaved rounds (median)")
        print("| concurrent streaming clients | aggregate tokens/s | vs 1 client |")
        print("|---|---|---|")
        for clients, r in rates.items():
            med = statistics.median(r)
            print(f"| {clients} | {med:.1f} | {med / base:.2f}x |")
        print(f"\nsecond turn of a {turns['prompt'][0]}-token chat (16-token answer), median of {args.rounds}")
        print("| cache | seconds | cached prompt tokens |")
        print("|---|---|---|")
        for kind in ("warm", "cold"):
            print(f"| {kind} | {statistics.median(t for t, _ in turns[kind]):.2f} | "
                  f"{statistics.median(c for _, c in turns[kind]):.0f} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
