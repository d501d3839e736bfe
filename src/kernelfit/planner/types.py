"""The Plan: every choice, its reason, every rejected alternative with its reason, and the
memory estimate. Plain data; `to_dict()` is the `kernelfit plan --json` contract."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hardware.machine import Device, Machine
from .memory import MemoryEstimate
from ..model.spec import ModelSpec

DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
DEFAULT_CONTEXT = 4096


@dataclass(frozen=True)
class Preferences:
    dtype: str = "auto"
    attention: str = "auto"
    context: int | None = None  # tokens to budget for; None: min(4096, the model's max positions)
    batch: int = 1
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    max_memory: dict[str, float] | None = None  # GiB by device key ("0", "cuda:0", "cpu")
    quantization: str = "auto"  # "auto" (only when needed), "none", "8bit", "4bit"
    allow_dequantize: bool = False  # a quantized checkpoint no kernel here runs may be unpacked


@dataclass(frozen=True)
class Rejected:
    name: str
    reason: str


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str
    rejected: tuple[Rejected, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    devices: tuple[str, ...]  # torch device names used, in order ("cuda:0", "cpu")
    device_map: dict | str  # from_pretrained's device_map
    max_memory: dict[str, str] | None
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
    quantization: "QuantOption | None" = None  # noqa: F821 - quantplan.QuantOption
    quantization_rejected: tuple[Rejected, ...] = ()
    offload: dict = field(default_factory=lambda: {"cpu_gib": 0.0, "disk_gib": 0.0})
    tuned: dict | None = None  # a measured winner from the tune cache (tuning.apply_winner)

    @property
    def placement_devices(self) -> list[Device]:
        """The machine's devices the plan places the model on."""
        devices = [d for d in self.machine.devices if d.torch_device in self.placement.devices]
        if "cpu" in self.placement.devices and not any(d.kind == "cpu" for d in devices):
            devices.append(self.machine.cpu_device())
        return devices

    def runnable_attentions(self) -> list[str]:
        """The chosen text attention, then every rejected one the catalog says runs here."""
        a = self.text_attention
        return [a.value] + [r.name for r in a.rejected if r.reason.startswith("runs here")]

    def runnable_dtypes(self) -> list[str]:
        """The chosen dtype, then every rejected one that runs here (slower or later in the order)."""
        return [self.dtype.value] + [r.name for r in self.dtype.rejected if r.reason.startswith("runs,")]

    @property
    def decode_fastpath(self) -> str | None:
        """Why one-row decode steps bypass oneDNN (runtime/cpu_decode.py), or None. Derived, so
        it follows a tuned dtype."""
        from ..catalog.dtypes import cpu_decode_gemv

        if self.quantization is not None and self.quantization.method not in ("none", "dequantize"):
            return None  # quantized linears do not go through torch's bf16 matmul
        return cpu_decode_gemv(self.placement_devices, self.machine.cpu, self.dtype.value)

    @property
    def decode_attention(self) -> str | None:
        """Why long one-query CPU attention calls are specialised (runtime/kernels.py), or None."""
        from ..catalog.attention import cpu_decode_attention

        text = next(s for s in self.model.sub_models if s.role == "text")
        return cpu_decode_attention(self.placement_devices, text.features)

    @property
    def text_attention(self) -> Choice:
        return self.attention["text"]

    def attn_implementation(self) -> str | dict[str, str]:
        """What from_pretrained's `attn_implementation` gets: one name, or one per sub-config."""
        if len(self.attention) == 1:
            return self.attention["text"].value
        out = {}
        for sub in self.model.sub_models:
            out[sub.config_key or ""] = self.attention[sub.role].value
        return out

    def to_dict(self) -> dict:
        def choice(c: Choice, key: str) -> dict:
            return {key: c.value, "reason": c.reason,
                    "rejected": [{key: r.name, "reason": r.reason} for r in c.rejected],
                    "sources": list(c.sources)}

        attention = choice(self.text_attention, "implementation")
        if len(self.attention) > 1:
            attention["sub_models"] = {
                (s.config_key or s.role): choice(self.attention[s.role], "implementation") for s in self.model.sub_models
            }
        if self.text_attention.value == "sdpa" and "text" in self.sdpa_kernels:
            attention["sdpa_kernels"] = [{"kernel": k, "usable": not r, "reasons": r}
                                         for k, r in self.sdpa_kernels["text"]]
        m = self.machine
        return {
            "model": self.model.to_dict(),
            "machine": {"name": m.name, "origin": m.origin,
                        "devices": [{"kind": d.kind, "name": d.name, "index": d.index,
                                     "compute_capability": d.compute_capability, "memory_gib": d.memory_gib}
                                    for d in m.devices],
                        "software": {"torch": m.software.torch, "torch_cuda": m.software.torch_cuda,
                                     "packages": dict(m.software.packages)}},
            "preferences": {"dtype": self.preferences.dtype, "attention": self.preferences.attention,
                            "context": self.preferences.context, "batch": self.preferences.batch,
                            "device": self.preferences.device},
            "device": {"devices": list(self.placement.devices), "reason": self.placement.reason,
                       "rejected": [{"device": r.name, "reason": r.reason} for r in self.placement.rejected]},
            "attention": attention,
            "dtype": choice(self.dtype, "value"),
            "device_map": self.placement.device_map,
            "max_memory": self.placement.max_memory,
            "memory": self.memory.to_dict(),
            "quantization": self.quantization_dict(),
            "offload": dict(self.offload),
            "from_pretrained": self.from_pretrained_kwargs(),
            "generate": self.generate_kwargs(),
            "warnings": list(self.warnings),
            "tuned": self.tuned,
            "decode_fastpath": {"enabled": self.decode_fastpath is not None, "reason": self.decode_fastpath,
                                "attention": self.decode_attention},
        }

    def quantization_dict(self) -> dict:
        q = self.quantization
        if q is None:
            return {"method": "none", "bits": None, "backend": None, "kv_cache_bits": None, "reason": "", "rejected": []}
        return {"method": q.method, "bits": q.bits, "backend": q.backend, "group_size": q.group_size,
                "kv_cache_bits": q.kv_bits, "reason": q.reason, "install": q.install,
                "rejected": [{"method": r.name.split(":")[0], "backend": (r.name.split(":") + [None])[1],
                              "reason": r.reason} for r in self.quantization_rejected]}

    def generate_kwargs(self) -> dict:
        from .quantization import generation_config

        kw = generation_config(self.quantization) if self.quantization else {}
        if self.tuned and self.tuned.get("cache") == "static" and "cache_implementation" not in kw:
            kw["cache_implementation"] = "static"
        return kw

    def offload_folder(self) -> str:
        """Where accelerate writes offloaded weights that are not safetensors (kernelfit's cache)."""
        from ..paths import cache_root

        return str(cache_root() / "offload" / self.model.name.replace("/", "--"))

    def from_pretrained_kwargs(self) -> dict:
        """The arguments `kernelfit.load` passes to from_pretrained (JSON-friendly: dtype as a name)."""
        kw: dict = {"dtype": self.dtype.value, "attn_implementation": self.attn_implementation(),
                    "device_map": self.placement.device_map}
        if self.placement.max_memory:
            kw["max_memory"] = self.placement.max_memory
        if self.model.gguf_file:
            kw["gguf_file"] = self.model.gguf_file
        if self.offload.get("disk_gib"):
            kw["offload_folder"] = self.offload_folder()
        if self.quantization is not None:
            from .quantization import quantization_config

            # fp16 kept only for memory (consumer Pascal): let bitsandbytes compute in fp32
            compute = "float32" if self.dtype.reason.startswith("memory fallback") else self.dtype.value
            qc = quantization_config(self.quantization, compute)
            if qc:
                kw["quantization_config"] = qc
        return kw
