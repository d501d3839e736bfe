"""The plan's vocabulary: Preferences in, Plan out. Every choice and every rejected alternative
carries a typed kind (code branches on it) and a human reason (people read it; no code parses it).

Plain data. `planner.report.plan_dict` is the `kernelfit plan --json` contract and
`planner.hf_args` the one translation into from_pretrained / generate arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..catalog.attention import cpu_decode_attention
from ..catalog.dtypes import DTYPES, cpu_decode_gemv
from ..hardware.machine import Device, Machine
from ..model.spec import ModelSpec
from .memory import MemoryEstimate

DTYPE_CHOICES = ("auto", *DTYPES)
DEFAULT_CONTEXT = 4096


class RejectKind(str, Enum):
    """Why an alternative was not chosen. A closed set: code branches on these, never on reasons."""

    NOT_RUNNABLE = "not_runnable"  # the hardware, the torch build or a model feature rules it out
    NOT_INSTALLED = "not_installed"  # runs here once a package is installed (`install` says how)
    RUNS_BUT_LOWER_PRIORITY = "runs_but_lower_priority"  # runs here; another comes first in the order
    TRADE_OFF = "trade_off"  # runs here, faster in one phase and slower in another: measured, never auto
    MEMORY_FALLBACK = "memory_fallback"  # runs, but emulated or slow: used only when nothing native fits
    DOES_NOT_FIT = "does_not_fit"  # too big for the budget (`needs_gib` / `budget_gib`)
    SLOWER_HERE = "slower_here"  # fits and runs, but the catalog knows a faster option here
    MEASURED_SLOWER = "measured_slower"  # the static choice, beaten by a `kernelfit bench` measurement


class ChoiceKind(str, Enum):
    """How a choice was made."""

    PRIORITY = "priority"  # first in the catalog's priority / preference order that runs here
    REQUESTED = "requested"  # the user asked for it, and it runs
    MEMORY_FALLBACK = "memory_fallback"  # runs slowly, chosen only because nothing native fits
    MEASURED = "measured"  # the fastest in a `kernelfit bench` measurement on this machine


class PlacementKind(str, Enum):
    ONE_DEVICE = "one_device"  # the whole model on one accelerator, or on the CPU
    SPLIT = "split"  # split by layer across accelerators of one kind
    CPU_OFFLOAD = "cpu_offload"  # accelerators + layers streamed from CPU RAM
    DISK_OFFLOAD = "disk_offload"  # weights that fit nowhere else read from disk


@dataclass(frozen=True)
class Preferences:
    dtype: str = "auto"
    attention: str = "auto"
    context: int | None = None  # tokens to budget for; None: min(4096, the model's max positions)
    batch: int = 1
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    max_memory: dict[str, float] | None = None  # GiB by device key ("0", "cuda:0", "cpu", "disk")
    quantization: str = "auto"  # "auto" (only when needed), "none", "8bit", "4bit", "METHOD-Nbit"
    allow_dequantize: bool = False  # a quantized checkpoint no kernel here runs may be unpacked
    prefill: str = "auto"  # packed weights: "packed" (memory of the file), "dense" (a bf16 copy), "auto"
    kv_cache: str = "auto"  # kernelfit's engine: "f16" (auto), "f32", "q8_0" (catalog/kv_cache.py)
    draft_model: str | None = None  # kernelfit's engine: a draft model of the same tokenizer (engine/draft_model.py)


@dataclass(frozen=True)
class Rejected:
    name: str
    kind: RejectKind
    reason: str  # for people only
    install: str | None = None  # NOT_INSTALLED: the command that installs what is missing
    needs_gib: float | None = None  # DOES_NOT_FIT / SLOWER_HERE: the figures
    budget_gib: float | None = None
    method: str | None = None  # quantization rows: the method and kernel they name
    backend: str | None = None
    # DOES_NOT_FIT rows: the configuration tried (dtype, weight bits, KV-cache bits), so two attempts
    # differ as data, not only in their wording
    dtype: str | None = None
    bits: int | None = None
    kv_bits: int | None = None
    place: str | None = None  # quantization DOES_NOT_FIT rows: where it was tried ("cuda:0", "cuda:0+cuda:1")

    def __post_init__(self) -> None:  # a hook (tests reword every reason to prove no decision reads it)
        pass

    def to_dict(self, key: str = "name") -> dict:
        d = {key: self.name, "kind": self.kind.value, "reason": self.reason}
        d.update({k: v for k, v in (("install", self.install), ("needs_gib", self.needs_gib),
                                    ("budget_gib", self.budget_gib), ("dtype", self.dtype), ("bits", self.bits),
                                    ("kv_bits", self.kv_bits), ("place", self.place)) if v is not None})
        return d


@dataclass(frozen=True)
class Choice:
    value: str
    kind: ChoiceKind
    reason: str  # for people only
    rejected: tuple[Rejected, ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # see Rejected.__post_init__
        pass


@dataclass(frozen=True)
class Placement:
    devices: tuple[str, ...]  # torch device names used, in order ("cuda:0", "cpu")
    kind: PlacementKind
    device_map: dict | str  # from_pretrained's device_map
    max_memory: dict[str, int] | None  # bytes by accelerate key ("0", "cpu"); None for one device
    reason: str
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    machine: Machine
    preferences: Preferences
    placement: Placement
    dtype: Choice
    attention: dict[str, Choice]  # by sub-model role: "text", "vision"
    sdpa_kernels: dict[str, list[tuple[str, list[str]]]]
    memory: MemoryEstimate
    warnings: tuple[str, ...] = ()
    quantization: "QuantOption | None" = None  # noqa: F821 - planner.quantization.QuantOption
    quantization_rejected: tuple[Rejected, ...] = ()
    offload: dict = field(default_factory=lambda: {"cpu_gib": 0.0, "disk_gib": 0.0})
    tuned: dict | None = None  # a measured winner from the tune cache (bench.cache.apply_winner)
    kernels: dict[str, Choice] = field(default_factory=dict)  # packed weights: "decode" and "prefill" kernels

    @property
    def placement_devices(self) -> list[Device]:
        """The machine's devices the plan places the model on (the CPU is always one of them)."""
        return [d for d in self.machine.devices if d.torch_device in self.placement.devices]

    def runnable_attentions(self) -> list[str]:
        """The chosen text attention, then every rejected one the catalog says runs here."""
        a = self.text_attention
        return [a.value] + [r.name for r in a.rejected if r.kind is RejectKind.RUNS_BUT_LOWER_PRIORITY]

    def runnable_dtypes(self) -> list[str]:
        """The chosen dtype, then every rejected one that runs here (later in the order, or a trade-off)."""
        runs = (RejectKind.RUNS_BUT_LOWER_PRIORITY, RejectKind.TRADE_OFF)
        return [self.dtype.value] + [r.name for r in self.dtype.rejected if r.kind in runs]

    @property
    def decode_fastpath(self) -> str | None:
        """Why one-row decode steps bypass oneDNN (loader/cpu_decode.py), or None. Derived, so
        it follows a tuned dtype."""
        if self.quantization is not None and self.quantization.method not in ("none", "dequantize"):
            return None  # quantized linears do not go through torch's bf16 matmul
        return cpu_decode_gemv(self.placement_devices, self.machine.cpu, self.dtype.value)

    @property
    def decode_attention(self) -> str | None:
        """Why long one-query CPU attention calls are specialised (dispatch/kernels.py), or None."""
        return cpu_decode_attention(self.placement_devices, self.model.text.features)

    @property
    def text_attention(self) -> Choice:
        return self.attention["text"]

    @property
    def compute_dtype(self) -> str:
        """The dtype quantized kernels compute in: fp16 kept only for memory (consumer Pascal runs it at
        1/64 rate) lets bitsandbytes compute in fp32."""
        return "float32" if self.dtype.kind is ChoiceKind.MEMORY_FALLBACK else self.dtype.value
