"""Prompt-lookup drafting (speculative decoding without a draft model): the tokens that followed the latest earlier
occurrence of the sequence's last n tokens are proposed as the next ones, and one multi-row step of the target model
checks them all (runner.py LeanRunner.greedy). Text that repeats its prompt — a summary quoting its source, a code
edit, a chat answer naming what the question named — is decoded several tokens a step; a decode step reads the
weights once whether it checks 1 or 8 tokens, so accepted drafts come at almost no cost (llama.cpp's `--spec-type
ngram`, transformers' `prompt_lookup_num_tokens` draft the same way).

Output is unchanged: a drafted token is kept only where the token the target picks at that row — its argmax, or its
sample (serve/batching.py) — is that token, and the verification's logits equal the one-token decode step's bit for bit
(kernels/step.cpp: the exact dot products and the decode step's attention for up to DOT_MAX_ROWS rows).
"""

from __future__ import annotations

NGRAM_MAX, NGRAM_MIN = 3, 2  # longest / shortest suffix looked up (1-grams propose too often and are mostly wrong)
DRAFT_MIN, DRAFT_START, DRAFT_MAX = 2, 4, 10  # tokens proposed a step: adapted to how many were accepted
DRAFT_COOLDOWN = 32  # DraftGate's first pause, in steps


class PromptLookup:
    """The sequence so far, indexed by its n-grams (n = NGRAM_MIN..NGRAM_MAX: where each last started), so a
    draft costs a few dictionary lookups however long the prompt (not `costly`: a step it proposes nothing for is a
    plain step)."""

    costly = False
    cooldown = DRAFT_COOLDOWN  # plain steps after drafting measured slower (DraftGate)

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.last: dict[tuple[int, ...], int] = {}
        self.size = DRAFT_START
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            self.tokens.append(t)
            end = len(self.tokens)
            # index the n-grams that end before the last token: the newest n-gram is the key drafts look up
            for n in range(NGRAM_MIN, NGRAM_MAX + 1):
                if end - 1 >= n:
                    self.last[tuple(self.tokens[end - 1 - n:end - 1])] = end - 1 - n

    def draft(self, limit: int) -> list[int]:
        """Up to min(limit, the adaptive size) tokens that followed the newest earlier occurrence of the longest
        matching suffix; [] when none."""
        k = min(limit, self.size)
        if k <= 0:
            return []
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(self.tokens) <= n:
                continue
            start = self.last.get(tuple(self.tokens[-n:]))
            if start is not None:
                follow = self.tokens[start + n:start + n + k]
                if follow:
                    return follow
        return []

    def accepted(self, proposed: int, kept: int) -> None:
        """Grow the draft after a fully accepted one, shrink it after a rejected one."""
        if proposed and kept == proposed:
            self.size = min(DRAFT_MAX, self.size * 2)
        elif proposed and kept == 0:
            self.size = max(DRAFT_MIN, self.size // 2)


class DraftGate:
    """Whether drafting pays on this model and text, measured as it runs: a step that checks k drafted tokens costs
    more than a plain one where a step is compute-bound (a 135M model: each extra row is more arithmetic, the weights
    are read once either way). The gate keeps the running tokens-per-second of drafted steps against plain ones and
    stops drafting for COOLDOWN steps (then twice as long) when it is behind (SmolLM2: 0.90-0.94x with drafting
    always on, here)."""

    ALPHA, COOLDOWN, JUDGE_AFTER = 0.3, DRAFT_COOLDOWN, 4  # drafted steps measured before the gate may close

    def __init__(self, cooldown: int = COOLDOWN, costly: bool = False):
        self.plain_s: float | None = None  # seconds a plain step (running average)
        self.draft_rate: float | None = None  # tokens a second of drafted steps
        self.step, self.resume, self.drafts, self.cooldown = 0, 0, 0, cooldown
        self.costly = costly  # asking the drafter costs steps of its own (a draft model)

    @classmethod
    def of(cls, drafter) -> "DraftGate":
        """The gate of a drafter (PromptLookup, draft_model.ModelDrafter; None: a gate that never drafts anyway),
        with its first pause and whether asking it costs."""
        return cls(drafter.cooldown, drafter.costly) if drafter is not None else cls()

    def allow(self) -> bool:
        return self.plain_s is not None and self.step >= self.resume

    def plain(self, seconds: float) -> None:
        self.step += 1
        self.plain_s = seconds if self.plain_s is None else self.plain_s + self.ALPHA * (seconds - self.plain_s)

    def undrafted(self, seconds: float, asked: bool) -> None:
        """A step that checked no draft: a plain step — or, where a costly drafter was asked in vain (its steps ran
        within this one), a drafted step of one token."""
        if asked and self.costly:
            self.drafted(1, seconds)
        else:
            self.plain(seconds)

    def drafted(self, tokens: int, seconds: float) -> None:
        self.step += 1
        self.drafts += 1
        rate = tokens / seconds
        self.draft_rate = rate if self.draft_rate is None else self.draft_rate + self.ALPHA * (rate - self.draft_rate)
        if self.drafts >= self.JUDGE_AFTER and self.plain_s is not None and self.draft_rate < 1.0 / self.plain_s:
            # behind: pause, twice as long each time it is behind again
            self.resume, self.draft_rate, self.drafts = self.step + self.cooldown, None, 0
            self.cooldown *= 2


def accepted_tokens(draft: list[int], logits, pick=None) -> list[int]:
    """The tokens one verification step yields (`logits`: the step's rows for the last token and the draft,
    [len(draft) + 1, vocab]): each row's own token — its argmax, or `pick(row)` for a sampled sequence — in order, up
    to the first that differs from the drafted one, which ends the step. Row i's logits equal the one-token decode
    step's at that position bit for bit, and `pick` is called once a yielded token, in order, as plain decoding calls
    it (a seeded generator is consumed the same way), so the tokens are those one step a token gives: greedy, or
    sampled from exactly the same distribution with the same seed. For a draft that is one fixed token a position this
    keeps each drafted token with probability p(token), the most any exact scheme can (speculative sampling's
    min(1, p / q) with q = 1)."""
    if pick is None:
        best = logits.argmax(-1).tolist()
        kept = 0
        while kept < len(draft) and best[kept] == draft[kept]:
            kept += 1
        return draft[:kept] + [best[kept]]
    out = []
    for i in range(len(draft) + 1):
        out.append(pick(logits[i]))
        if i == len(draft) or out[-1] != draft[i]:
            return out
    return out
