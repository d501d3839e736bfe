"""A sequence's recurrent state: what a hybrid model's non-attention layers carry from one position to the next
(LFM2's short convolutions: the last L - 1 values of B * x a channel, engine/kernels/short_conv.h; Qwen3.5's Gated
DeltaNet: its convolution's last inputs and a [key size, value size] matrix a head, engine/kernels/delta_net.h;
Granite 4.0-H's Mamba-2: its convolution's last inputs and a [head size, state size] matrix a head, mamba2.h),
beside the KV cache of its attention layers. Its size does not depend on the context.

Unlike keys and values, the state cannot be cut back to an earlier position: it holds the latest position's only.
So every call checks that the state is at the position it starts from (forward in engine/build.py), and a caller
that moves a sequence back — a next chat turn that shares only part of what ran, a server slot reused for a prompt
sharing a prefix — restores a checkpoint: a copy taken where a prompt's prefill ended, as llama-server's
`--ctx-checkpoints` does for recurrent and hybrid models. With no checkpoint at or before the shared prefix, the
prompt is prefilled from the start. Speculative drafts (engine/runner.py greedy) copy the state before the drafted
rows and, where a draft is rejected, run the kept rows again from the copy: a rejected draft's tokens never stay in
the state. The server's batched steps do not draft on such models yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.params import CHECKPOINT_BYTES, CHECKPOINTS  # shared with the plan's memory (checkpoints_kept)


@dataclass
class State:
    values: torch.Tensor  # float32, every recurrent layer's state one after another (state_floats)
    at: int = 0  # the position the next call starts at: what positions before it left in the layers

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def copy(self) -> State:
        return State(self.values.clone(), self.at)

    def load(self, other: State) -> None:
        self.values.copy_(other.values)
        self.at = other.at


def empty_state(cfg) -> State | None:
    """A zeroed state for the recipe's recurrent layers (the state before position 0), or None without any."""
    n = state_floats(cfg)
    return State(torch.zeros(n)) if n else None


def state_floats(cfg) -> int:
    """Values a sequence's state holds, layer after layer (step.cpp state_offsets): a short convolution's last L - 1
    inputs; a Gated DeltaNet layer's conv inputs and its [value heads, key size, value size] matrix."""
    return sum(layer_state_floats(cfg, cfg.kind(i)) for i in range(cfg.layers))


def layer_state_floats(cfg, kind) -> int:
    from ..model.params import delta_net_state, mamba2_state, short_conv_state
    from .recipe import LayerKind

    if kind is LayerKind.SHORT_CONV:
        return short_conv_state(cfg.conv_kernel, cfg.hidden)
    if kind is LayerKind.GATED_DELTA_NET:
        return delta_net_state(cfg.conv_kernel, *cfg.delta_heads)
    if kind is LayerKind.MAMBA2:
        return mamba2_state(cfg.conv_kernel, *cfg.mamba)
    return 0


def state_bytes(cfg) -> int:
    return 4 * state_floats(cfg)


def check_position(state: State | None, pos: int) -> None:
    """Before a call at `pos`: position 0 starts the state over; any other must be where the state is."""
    if state is None:
        return
    if pos == 0:
        state.values.zero_()
        state.at = 0
    elif state.at != pos:
        raise ValueError(f"the recurrent state is at position {state.at}, not {pos}: restore a checkpoint "
                         "(engine/recurrent.py) or start from position 0")


@dataclass
class Checkpoints:
    """Copies of one sequence's state at positions where a prompt's prefill ended, the newest last."""
    keep: int = CHECKPOINTS
    saved: list[State] = field(default_factory=list)

    def take(self, state: State | None) -> None:
        if state is None:
            return
        self.saved = [s for s in self.saved if s.at != state.at][-(self.keep - 1):] if self.keep > 1 else []
        while self.saved and (len(self.saved) + 1) * state.nbytes > CHECKPOINT_BYTES:
            self.saved.pop(0)  # the oldest first
        self.saved.append(state.copy())

    def at(self, n: int) -> State | None:
        """The checkpoint at exactly position n, if any."""
        return next((s for s in self.saved if s.at == n), None)

    def restore(self, state: State | None, n: int) -> int:
        """Move `state` back to the latest checkpoint at or before position `n`; returns that position (0: none, the
        state starts over). Checkpoints past it are dropped: what follows is rewritten."""
        if state is None or state.at == n:
            return n
        best = max((s for s in self.saved if s.at <= n), key=lambda s: s.at, default=None)
        self.saved = [s for s in self.saved if s.at <= (best.at if best else 0)]
        if best is None:
            state.values.zero_()
            state.at = 0
            return 0
        state.load(best)
        return best.at
