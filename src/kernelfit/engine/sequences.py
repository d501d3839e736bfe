"""Several sequences on one packed build: each its own KV cache, prompts prefilled into it (in chunks where the caller
interleaves them with decode steps), and one step that advances any mix of them (build.batch_step: the weights read
once for all rows). `kernelfit serve` batches its requests through this (serve/batching.py).

A sequence keeps the tokens whose keys and values its prompts' prefills wrote, so the next request that starts with
them (the usual next chat turn, a shared system prompt) prefills only the rest; `acquire` picks the free sequence
with the longest such prefix. Prompts are prefilled with the prompt kernels at every length (Step.prefill's
panel_rows: each row computed alone), so a reused prefix, or a prompt split into chunks, holds exactly what one cold
prefill of the whole prompt writes: answers do not depend on what the server ran before or beside a request.
Positions written by decode steps are never reused (their exact products differ from a prefill's in the last bits).

When a sequence is taken for an unrelated prompt, what its prompts wrote is copied into a bounded RAM store first
(PrefixStore, llama-server's `--cache-ram`), and a later request that starts like a stored prefix gets it copied back
instead of prefilling it again: more conversations keep their history than there are sequences.

A hybrid model's sequence also carries a recurrent state (engine/recurrent.py), which holds only the latest
position: a reused prefix resumes from a copy of the state taken where a prefill ended (a sequence's checkpoints, a
stored prefix's own copy at its end), and is shortened to one; never from another sequence's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .build import LeanBuild, batch_ready, batch_step, forward
from .kv_cache import KvCache, grown
from .recurrent import Checkpoints, State
from .reference import DOT_MAX_ROWS

STEP_ROWS = DOT_MAX_ROWS  # rows a step takes: up to here each row's logits equal its own decode step's (Step.batch)
REUSE_SHARE = 0.5  # a free sequence is reused for a prompt sharing at least this share of what it holds (llama-server's
# --slot-prompt-similarity, 0.5 by default)
GROW_AHEAD = 256  # positions a sequence's cache is sized past its prompt; it grows (doubling) as decoding needs
STORE_MIN_TOKENS = 64  # shorter prefixes are not worth a copy: prefilling them is about as fast


@dataclass
class Sequence:
    index: int
    cache: KvCache | None = None
    prefilled: list[int] = field(default_factory=list)  # tokens at positions 0.. that prompt prefills wrote
    busy: bool = False
    used: float = 0.0  # when it was last acquired (the least recently used free one is reused first)
    checkpoints: Checkpoints = field(default_factory=Checkpoints)  # a hybrid's state where prefills ended


@dataclass
class Row:
    """One token of a step: `token` at position `pos` of `seq`."""
    seq: Sequence
    token: int
    pos: int


@dataclass
class Stored:
    tokens: list[int]
    cache: KvCache  # a copy of the sequence's cache rows of positions 0..len(tokens) - 1 (and a hybrid's state there)

    def usable(self, n: int) -> int:
        """How much of a shared prefix of n tokens can be copied back: all of it, or for a hybrid, the whole stored
        prefix (its state is the one at its end) or nothing."""
        if self.cache.state is None:
            return n
        return n if n == self.cache.state.at else 0

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes


class PrefixStore:
    """Prefixes evicted from sequences, newest last, up to `budget` bytes (the oldest dropped first)."""

    def __init__(self, budget: int):
        self.budget, self.entries = budget, []
        self.hits = self.hit_tokens = 0  # prompts that found a prefix here, and the tokens copied back (/metrics)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def put(self, tokens: list[int], cache: KvCache, state: State | None = None) -> None:
        """`state`: a hybrid's recurrent state at len(tokens) (a checkpoint); without one such a prefix is not kept."""
        n = len(tokens)
        if cache.state is not None and (state is None or state.at != n):
            return
        if cache.rows_nbytes(n) > self.budget:  # before copying them
            return
        kept = cache.copy_rows(n)
        entry = Stored(list(tokens), KvCache(kept.k, kept.v, state.copy() if state else None))
        # a stored prefix of this one holds nothing this one does not: dropped
        self.entries = [e for e in self.entries if _common(e.tokens, tokens, len(e.tokens)) < len(e.tokens)]
        self.entries.append(entry)
        while self.nbytes > self.budget:
            self.entries.pop(0)

    def best(self, prompt: list[int]) -> tuple[Stored | None, int]:
        """The stored prefix sharing the most tokens with `prompt` (its last token excluded: it always runs)."""
        found, most = None, 0
        for e in self.entries:
            n = e.usable(_common(e.tokens, prompt, len(prompt) - 1))
            if n > most:
                found, most = e, n
        if found is not None:  # the most recently used last
            self.entries.remove(found)
            self.entries.append(found)
        return found, most


class SequencePool:
    def __init__(self, build: LeanBuild, slots: int, limit: int | None = None, store_bytes: int = 0):
        """`slots` sequences at most at once, each up to `limit` positions (default: the model's); `store_bytes`: the
        RAM store of prefixes evicted from sequences (0: none)."""
        if not batch_ready(build):
            raise ValueError("batching needs the C++ step and prompt forward (every product the file's groups)")
        self.build, self.limit = build, limit or build.cfg.max_positions or 1 << 20
        self.sequences = [Sequence(i) for i in range(slots)]
        self.store = PrefixStore(store_bytes)

    @property
    def free(self) -> int:
        return sum(not s.busy for s in self.sequences)

    def kv_bytes(self) -> int:
        return sum(s.cache.nbytes for s in self.sequences if s.cache is not None)

    def acquire(self, prompt: list[int]) -> tuple[Sequence, int]:
        """A free sequence for `prompt`, and how many of its first tokens are already in its cache: the free sequence
        sharing the longest prefix with it where that is most of what it holds, else the least recently used one
        (what it holds is overwritten)."""
        free = [s for s in self.sequences if not s.busy]
        if not free:
            raise RuntimeError("no free sequence")
        shared = {s.index: _common(s.prefilled, prompt, len(prompt) - 1) for s in free}  # the last token always runs
        best = max(free, key=lambda s: (shared[s.index], -s.used))
        if shared[best.index] < REUSE_SHARE * len(best.prefilled):
            # mostly another conversation (a shared system prompt): kept for its next turn, the least recently used
            # free sequence (an empty one first) is taken instead
            best = min(free, key=lambda s: s.used)
        same = shared[best.index]
        if len(best.prefilled) - same >= STORE_MIN_TOKENS and self.store.budget:  # about to be overwritten: kept
            self.store.put(best.prefilled, best.cache, best.checkpoints.at(len(best.prefilled)))
        best.busy, best.used = True, time.monotonic()
        if best.cache is not None:  # a hybrid: back to the state saved at or before the shared prefix
            same = best.checkpoints.restore(best.cache.state, same)
        del best.prefilled[same:]
        self.reserve(best, len(prompt) + GROW_AHEAD)
        stored, n = self.store.best(prompt)
        if stored is not None and n > same and n >= STORE_MIN_TOKENS:  # a longer prefix in RAM: copied back
            best.cache.k[:, :, :, :n] = stored.cache.k[:, :, :, :n]
            best.cache.v[:, :, :, :n] = stored.cache.v[:, :, :, :n]
            if stored.cache.state is not None:
                best.cache.state.load(stored.cache.state)
                best.checkpoints.take(best.cache.state)
            best.prefilled[:] = stored.tokens[:n]
            self.store.hits += 1
            self.store.hit_tokens += n - same
            same = n
        return best, same

    def release(self, seq: Sequence) -> None:
        seq.busy = False

    def reserve(self, seq: Sequence, positions: int) -> None:
        seq.cache = grown(self.build, seq.cache, min(positions, self.limit))

    def prefill(self, seq: Sequence, prompt: list[int], start: int, end: int) -> None:
        """Write prompt[start:end]'s keys and values at positions start..end - 1 (start: what the cache holds)."""
        if end <= start:
            return
        del seq.prefilled[start:]
        forward(self.build, torch.tensor(prompt[start:end]), start, cache=seq.cache, panel_rows=True)
        seq.prefilled.extend(prompt[start:end])
        seq.checkpoints.take(seq.cache.state)

    def step(self, rows: list[Row]) -> torch.Tensor:
        """Logits float32 [len(rows), vocab]: each row's token through the model at its position (a sequence's rows
        at consecutive positions see each other, as drafts do). Positions from a row's on are no longer reusable."""
        if not 1 <= len(rows) <= STEP_ROWS:
            raise ValueError(f"a step takes 1 to {STEP_ROWS} rows, not {len(rows)}")
        seqs: list[Sequence] = []
        for r in rows:
            if r.seq not in seqs:
                seqs.append(r.seq)
            del r.seq.prefilled[r.pos:]
            if r.pos >= r.seq.cache.capacity:
                self.reserve(r.seq, r.pos + 1)
        return batch_step(self.build, [r.token for r in rows], [r.pos for r in rows],
                          [seqs.index(r.seq) for r in rows], [s.cache for s in seqs])


def _common(a: list[int], b: list[int], limit: int) -> int:
    n, limit = 0, min(len(a), len(b), limit)
    while n < limit and a[n] == b[n]:
        n += 1
    return n
