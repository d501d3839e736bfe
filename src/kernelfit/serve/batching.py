"""Continuous batching on the packed engine: up to `max_batch` requests decode together, one step for all of them
(engine/sequences.py: each its own KV cache, the weights read once a step for every row). A new request joins
between two steps and a finished one leaves; a long prompt is prefilled in chunks between decode steps so the
others keep decoding (llama-server's continuous batching, vLLM's chunked prefill). Each row samples, stops and is
seeded as it would alone (serve/engine.py's _pick and _advance), and a greedy row's tokens are exactly those it gets
alone: every row's logits equal its own decode step's (Step.batch), and prompts' keys and values do not depend on
chunking or reuse (SequencePool).

A sequence decoding alone drafts by prompt lookup as `LeanRunner.greedy` does (its draft checked in the same step),
greedy or sampled: each row's token is picked as a plain step would pick it (the same sampling, the same generator
calls in the same order), so a seeded request gives the same tokens drafted or not (engine/speculative.py
accepted_tokens). With others beside it the step already reads the weights once for several tokens and drafts are
not tried. A grammar-constrained request does not draft (its matcher would have to step through the draft).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass

import torch

from ..engine.sequences import STEP_ROWS, Row, Sequence, SequencePool
from ..engine.speculative import DraftGate, accepted_tokens

# Prompt tokens prefilled between two decode steps while other requests decode: SmolLM2 prefills ~1,500 tok/s on
# 2 cores here, so a 256-token chunk holds the others' next token ~0.15-0.2 s; alone, a prompt runs in one call
PREFILL_CHUNK = 256


@dataclass
class Active:
    job: object  # serve.engine.Job
    seq: Sequence
    prefilled: int  # prompt positions whose keys and values are in the cache
    pos: int  # where `token` goes
    token: int  # the next token to feed: the prompt's last, then each new one
    gen: torch.Generator | None
    lookup: object | None  # its drafter: prompt lookup, or the draft model (LeanRunner.drafter)
    gate: DraftGate

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.job.prompt_ids) - 1


class Batcher:
    def __init__(self, engine, pool: SequencePool):
        self.engine, self.pool = engine, pool
        self.active: list[Active] = []
        self.steps = 0  # decode steps run (reports)
        self.largest = 0  # the most requests one step decoded

    def serve(self, stop, until) -> None:
        while not stop.is_set() and not until():
            self._admit(block=not self.active)
            self._drop_cancelled()
            if not self.active:
                continue
            try:
                self._advance_once()
            except Exception as exc:  # noqa: BLE001 - the requests in flight fail, the server goes on
                self.abandon(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")

    def abandon(self, reason: str) -> None:
        for a in self.active:
            if not a.job.done:
                a.job.emit("error", reason)
            a.job.done = True
        self._retire()

    def _admit(self, block: bool) -> None:
        while self.pool.free:
            try:
                job = self.engine.jobs.get(timeout=0.2) if block else self.engine.jobs.get_nowait()
            except queue.Empty:
                return
            block = False
            if job.cancelled.is_set() or self.engine.expired(job):  # it waited past its --request-timeout
                continue
            seq, same = self.pool.acquire(job.prompt_ids)
            job.cached = same
            # drafts: unconstrained rows, greedy or sampled; not a hybrid's (its recurrent state keeps rejected drafts)
            drafts = job.matcher is None and not self.pool.build.cfg.recurrent_layers
            drafter = self.engine.model.drafter(job.prompt_ids) if drafts else None
            self.active.append(Active(job, seq, same, len(job.prompt_ids) - 1, job.prompt_ids[-1],
                                      self.engine._generator(job.sampling, "cpu"), drafter, DraftGate.of(drafter)))

    def _drop_cancelled(self) -> None:
        for a in self.active:
            if a.job.cancelled.is_set() or self.engine.expired(a.job):
                a.job.done = True
        self._retire()

    def _retire(self) -> None:
        for a in self.active:
            if a.job.done:
                self.pool.release(a.seq)
        self.active = [a for a in self.active if not a.job.done]

    def _advance_once(self) -> None:
        """One prompt chunk (the oldest request still prefilling), then one decode step for every other request."""
        decoding = [a for a in self.active if not a.prefilling]
        waiting = [a for a in self.active if a.prefilling]
        if waiting:
            a = waiting[0]
            last = len(a.job.prompt_ids) - 1
            end = min(last, a.prefilled + PREFILL_CHUNK) if decoding else last
            self.pool.prefill(a.seq, a.job.prompt_ids, a.prefilled, end)
            a.prefilled = end
        self.largest = max(self.largest, len(decoding))
        if self.engine.metrics is not None:
            self.engine.metrics.batch.observe(len(decoding))
        for i in range(0, len(decoding), STEP_ROWS):  # more requests than a step's rows (--max-batch > 12)
            self._step(decoding[i:i + STEP_ROWS], alone=len(decoding) == 1)
        self._retire()

    def _step(self, decoding: list[Active], alone: bool) -> None:
        rows, drafts, asked = [], [], []
        t0 = time.perf_counter()  # a draft model's drafting counts in the drafted step's time (the gate weighs it)
        for a in decoding:
            draft = []
            asked.append(alone and a.lookup is not None and a.gate.allow())
            if asked[-1]:
                draft = a.lookup.draft(min(STEP_ROWS - 1, a.job.max_new - len(a.job.tokens) - 1))
            drafts.append(draft)
            rows += [Row(a.seq, a.token, a.pos)] + [Row(a.seq, t, a.pos + 1 + i) for i, t in enumerate(draft)]
        logits = self.pool.step(rows)
        seconds = time.perf_counter() - t0
        self.steps += 1
        first = 0
        for a, draft, ask in zip(decoding, drafts, asked):
            if draft:
                pick = lambda row, a=a: self.engine.choose(a.job, row, a.gen)  # noqa: E731 - as a plain step picks
                tokens = accepted_tokens(draft, logits[first:first + len(draft) + 1], pick)
                a.gate.drafted(len(tokens), seconds)
                a.lookup.accepted(len(draft), len(tokens) - 1)
            else:
                tokens = [self.engine.choose(a.job, logits[first], a.gen)]
                if alone and a.lookup is not None:
                    a.gate.undrafted(seconds, ask)
            first += len(draft) + 1
            for token in tokens:
                self.engine._advance(a.job, token)
                if a.job.done:
                    break
            if a.lookup is not None:
                a.lookup.extend(tokens)
            a.token, a.pos = tokens[-1], a.pos + len(tokens)
