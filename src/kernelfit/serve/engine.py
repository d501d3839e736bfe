"""One worker thread owns the model and serves a bounded queue of generation jobs. The packed engine batches them
continuously (serve/batching.py: requests join and leave between steps); a transformers model batches the ones that
are waiting when it becomes free (static batches: left-padded prompts, one decoding loop, per-row sampling and stop
conditions). A job whose client went away is dropped at the next step; a full queue is refused.

Each job streams its own text through an asyncio queue of its request's event loop, so concurrent streams
never mix: a row's tokens are decoded from that row's ids only.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from .protocol import Sampling

MAX_BATCH = 8  # rows decoded together; more waiting requests form the next batch
QUEUE_SIZE = 64  # waiting requests beyond this are refused (503), not queued without limit
GATHER_S = 0.005  # how long a free worker waits for more requests to join a batch


class Busy(Exception):
    """The queue is full."""


class ShuttingDown(Exception):
    """The server is draining: it finishes what it runs and takes nothing new."""


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    max_new: int  # tokens this job may add (max_tokens, or what the context has left)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    extra: dict | None = None  # pixel inputs of a vision-language request: such a job runs alone
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    cached: int = 0  # prompt tokens whose keys and values came from the cache (usage.prompt_tokens_details)
    sent: int = 0  # characters of the decoded text already sent
    text: str = ""
    done: bool = False
    matcher: object = None  # llguidance.LLMatcher of a constrained request (serve/structured.py)
    arrived: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter time past which it ends in a time-out (--request-timeout)
    last_token_at: float | None = None  # metrics: time to first token, then between tokens

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's loop is gone: the client left
            self.cancelled.set()


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = MAX_BATCH, queue_size: int = QUEUE_SIZE,
                 background: bool = True, request_timeout: float | None = None, prefix_store_bytes: int = 0):
        """`background=False`: the caller runs `serve()` on its own thread. Measured on a 2-core EPYC, the
        same bf16 products run 1.8x slower on a secondary Python thread than on the main one (PyTorch's
        OpenMP pool belongs to the main thread), so `kernelfit serve` decodes on the main thread and runs
        the HTTP server on the other. request_timeout: seconds a request may take from its arrival, queued or
        running; past it, it ends with a time-out error (its row leaves the batch) and the others go on.
        prefix_store_bytes: RAM for the prompts' keys and values of sequences taken by other requests (engine/sequences.py
        PrefixStore), so that their conversations' next turns still find them."""
        self.request_timeout = request_timeout
        from ..engine.build import batch_ready
        from ..engine.runner import LeanRunner
        from ..engine.sequences import SequencePool
        from .batching import Batcher

        self.model, self.processor = model, tokenizer
        self.tok = getattr(tokenizer, "tokenizer", None) or tokenizer
        self.lean = isinstance(model, LeanRunner)
        # the packed runner batches continuously where its C++ step runs every call (serve/batching.py); a build on
        # TorchScript has one KV cache and runs its requests one at a time
        batched = self.lean and batch_ready(model.build)
        self.batcher = Batcher(self, SequencePool(model.build, max_batch, store_bytes=prefix_store_bytes)) \
            if batched else None
        self.max_batch = 1 if self.lean and self.batcher is None else max_batch
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        eos = sorted(model.eos_ids) if self.lean else getattr(model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {e for e in (*eos, self.tok.eos_token_id) if isinstance(e, int)}
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (min(self.eos) if self.eos else 0)
        self.batches: list[int] = []  # sizes of the batches run, for reports
        self._running = 0  # requests in the static batch running now
        # transformers >= 5.2x names the cache argument `cache` (`past_key_values` is deprecated)
        self._cache_kw = "past_key_values" if self.lean or "cache" not in inspect.signature(model.forward).parameters \
            else "cache"
        self._stop = threading.Event()
        self.metrics = None  # serve.metrics.Metrics, set by the app
        self.drain_by: float | None = None  # drain(): running requests may finish until then
        if background:
            threading.Thread(target=self.serve, name="kernelfit-engine", daemon=True).start()

    def submit(self, job: Job) -> None:
        if self.drain_by is not None:
            raise ShuttingDown
        if self.request_timeout is not None:
            job.deadline = job.arrived + self.request_timeout
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Busy from None

    def close(self) -> None:
        self._stop.set()

    def drain(self, seconds: float) -> None:
        """Take no new request (503) and let the running and queued ones finish within `seconds`; serve() then
        fails what is left ("the server shut down") and returns (SIGTERM to `kernelfit serve`)."""
        if self.drain_by is None:
            self.drain_by = time.monotonic() + seconds

    def drained(self) -> bool:
        """Draining, and nothing left to run (or the time is up)."""
        if self.drain_by is None:
            return False
        idle = self.jobs.empty() and not self.running()
        return idle or time.monotonic() >= self.drain_by

    def abandon(self) -> None:
        """Fail every request still queued or running: the drain's time is up."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            job.emit("error", "the server shut down before this request started; retry on another server")
        if self.batcher is not None:
            self.batcher.abandon("the server shut down before this request finished")

    def running(self) -> int:
        if self.batcher is not None:
            return sum(not a.job.done for a in self.batcher.active)  # a finished one leaves after its step
        return self._running

    def kv_bytes(self) -> int:
        if self.batcher is not None:
            return self.batcher.pool.kv_bytes()
        from ..engine.kv_cache import kv_bytes

        return kv_bytes(self.model.build) if self.lean else 0

    # -- the worker ----------------------------------------------------------------------------
    def serve(self, until=lambda: False) -> None:
        """Run jobs until close() (or `until()` says so), or until a drain() is done."""
        until_drained = lambda: until() or self.drained()  # noqa: E731
        if self.batcher is not None:
            self.batcher.serve(self._stop, until_drained)
        else:
            self._serve_static(until_drained)
        if self.drain_by is not None:
            self.abandon()

    def _serve_static(self, until) -> None:
        while not self._stop.is_set() and not until():
            try:
                first = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            if first.extra is None:
                deadline = time.perf_counter() + GATHER_S
                while len(batch) < self.max_batch:
                    try:
                        job = self.jobs.get(timeout=max(deadline - time.perf_counter(), 0))
                    except queue.Empty:
                        break
                    if job.extra is not None:  # a VLM request runs alone: back to the queue for the next round
                        self.jobs.put(job)
                        break
                    batch.append(job)
            batch = [j for j in batch if not j.cancelled.is_set() and not self.expired(j)]
            if not batch:
                continue
            self.batches.append(len(batch))
            self._running = len(batch)
            try:
                with torch.inference_mode():
                    self._run(batch)
            except Exception as exc:  # noqa: BLE001 - the request fails, the server goes on
                for job in batch:
                    if not job.done:
                        job.emit("error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
            finally:
                self._running = 0

    def _run(self, batch: list[Job]) -> None:
        if self.lean:
            self._run_lean(batch[0])
            return
        model = self.model
        device = next(p.device for p in model.parameters() if p.device.type != "meta")
        lens = [len(j.prompt_ids) for j in batch]
        width = max(lens)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, job in enumerate(batch):
            ids[i, width - lens[i]:] = torch.tensor(job.prompt_ids)
            mask[i, width - lens[i]:] = 1
        ids, mask = ids.to(device), mask.to(device)
        padded = min(lens) != width
        kwargs = dict(batch[0].extra) if batch[0].extra else {}
        # left padding: each row counts its positions from its first real token
        positions = (mask.cumsum(-1) - 1).clamp(min=0) if padded else None
        if positions is not None:
            kwargs["position_ids"] = positions
        gens = [self._generator(j.sampling, device) for j in batch]
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
        past = out.past_key_values
        for _ in range(max(j.max_new for j in batch)):
            logits = out.logits[:, -1, :].float()
            step = []
            for i, job in enumerate(batch):
                if job.done or job.cancelled.is_set() or self.expired(job):
                    job.done = True
                    step.append(self.pad)
                    continue
                token = self.choose(job, logits[i], gens[i])
                step.append(token)
                self._advance(job, token)
            if all(j.done for j in batch):
                return
            nxt = torch.tensor(step, device=device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            kw = {}
            if positions is not None:
                positions = positions[:, -1:] + 1
                kw["position_ids"] = positions
            out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{self._cache_kw: past}, **kw)
            past = out.past_key_values
        for job in batch:
            if not job.done:
                self._finish(job, "length")

    def _run_lean(self, job: Job) -> None:
        """One request through the packed runner: the part of its prompt the cache does not hold yet (a chat's
        earlier turns are) in one prefill, then one C++ decode step a token."""
        runner = self.model
        pos = len(job.prompt_ids)
        logits, job.cached = runner.start(job.prompt_ids, job.max_new)
        if job.sampling.temperature == 0 and job.matcher is None:  # greedy: prompt-lookup drafts, the same tokens
            for token in runner.greedy(job.prompt_ids, int(logits.argmax()), pos, job.max_new):
                if job.cancelled.is_set() or self.expired(job):
                    job.done = True
                    return
                self._advance(job, token)
                if job.done:
                    return
            return
        gen = self._generator(job.sampling, "cpu")
        while True:
            if job.cancelled.is_set() or self.expired(job):
                job.done = True
                return
            token = self.choose(job, logits, gen)
            self._advance(job, token)
            if job.done:
                return
            logits = runner.logits(torch.tensor([token]), pos)[-1]
            pos += 1

    def expired(self, job: Job) -> bool:
        """Whether `job` has run past its deadline; the first time, it ends with a "timeout" event."""
        if job.deadline is None or job.done or time.perf_counter() <= job.deadline:
            return False
        job.emit("timeout", f"the request took longer than the server's --request-timeout ({self.request_timeout:g} s)"
                 f" after {len(job.tokens)} tokens; ask for fewer max_tokens, or retry when the server is less busy")
        job.done = True
        if self.metrics is not None:
            self.metrics.done(job, "timeout")
        return True

    @staticmethod
    def _generator(s: Sampling, device) -> torch.Generator | None:
        if s.temperature == 0:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little"))
        return g

    def choose(self, job: Job, logits: torch.Tensor, gen) -> int:
        """The job's next token: its sampling over the logits, the tokens its grammar cannot take removed first."""
        if job.matcher is None:
            return self._pick(logits.float(), job.sampling, gen)
        from .structured import mask_logits

        token = self._pick(mask_logits(job.matcher, logits), job.sampling, gen)
        job.matcher.consume_token(token)
        return token

    @staticmethod
    def _pick(logits: torch.Tensor, s: Sampling, gen) -> int:
        if s.temperature == 0 or gen is None:
            return int(logits.argmax())
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # the smallest set whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def _advance(self, job: Job, token: int) -> None:
        if token in self.eos and not job.sampling.ignore_eos:
            self._finish(job, "stop")
            return
        job.tokens.append(token)
        if self.metrics is not None:
            self.metrics.token(job)
        if job.matcher is not None and job.matcher.is_stopped():  # the grammar is complete: nothing may follow
            job.text = self.tok.decode(job.tokens, skip_special_tokens=True)
            self._finish(job, "stop")
            return
        text = self.tok.decode(job.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            job.text = text[:cut]
            self._send(job, final=True)
            self._finish(job, "stop")
            return
        job.text = text
        self._send(job, final=False)
        if len(job.tokens) >= job.max_new:
            self._finish(job, "length")

    def _send(self, job: Job, final: bool) -> None:
        text = job.text
        if not final:
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                return
            hold = max((len(s) - 1 for s in job.sampling.stop), default=0)  # a stop string may be starting
            text = text[: len(text) - hold] if hold else text
        if len(text) > job.sent:
            job.emit("text", text[job.sent:])
            job.sent = len(text)

    def _finish(self, job: Job, reason: str) -> None:
        self._send(job, final=True)
        job.done = True
        if self.metrics is not None:
            self.metrics.done(job, reason)
        job.emit("done", reason, len(job.prompt_ids), len(job.tokens), job.cached)
