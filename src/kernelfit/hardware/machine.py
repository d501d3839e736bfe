"""`Machine`: what a computer has, as plain data that round-trips JSON and TOML.

A probe fills one in for this computer; reference profiles (`profiles/data/*.toml`) describe
computers that are not here. The planner reads nothing else about hardware.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .capability import Capability
from ..errors import UsageError

DEVICE_KINDS = ("cuda", "rocm", "mps", "xpu", "cpu")


@dataclass(frozen=True)
class Device:
    """One compute device. The host CPU is a device too (kind "cpu"), so a plan can place
    layers on it; its memory is the host RAM."""

    kind: str  # one of DEVICE_KINDS
    name: str
    index: int = 0
    # NVIDIA only (None for CPU, MPS, ROCm); parsed once here from "8.6", "sm_86" or (8, 6)
    compute_capability: Capability | None = None
    arch: str | None = None  # "sm_86", "gfx942", "apple-m2", "x86_64"
    memory_gib: float = 0.0  # nominal capacity
    memory_free_gib: float | None = None  # probed free memory, when known
    bandwidth_gbps: float | None = None  # memory bandwidth, GB/s
    unified_memory: bool = False  # shares RAM with the CPU (Apple, Jetson)
    # dense tensor throughput by dtype (TFLOPS); informative, from spec sheets
    tflops: dict[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # ids in catalog.sources, for the facts above

    def __post_init__(self) -> None:
        cc = self.compute_capability
        if cc is not None and not isinstance(cc, Capability):
            object.__setattr__(self, "compute_capability", Capability.parse(cc))

    @property
    def is_accelerator(self) -> bool:
        return self.kind != "cpu"

    @property
    def torch_device(self) -> str:
        if self.kind == "cpu":
            return "cpu"
        if self.kind == "mps":
            return "mps"
        # ROCm builds of torch expose AMD GPUs as "cuda" devices.
        return f"{'xpu' if self.kind == 'xpu' else 'cuda'}:{self.index}"


@dataclass(frozen=True)
class Cpu:
    model: str
    arch: str = "x86_64"  # platform.machine()
    cores: int = 1  # physical cores
    threads: int = 1  # logical CPUs usable by this process
    isa: tuple[str, ...] = ()  # normalised flags that matter for inference

    def has(self, *flags: str) -> bool:
        return any(f in self.isa for f in flags)


@dataclass(frozen=True)
class Software:
    python: str | None = None
    os: str | None = None
    torch: str | None = None  # "2.9.1+cu126"
    torch_cuda: str | None = None  # CUDA version torch was built with
    torch_hip: str | None = None
    # what the torch build was compiled for: ['sm_60', 'sm_70', ..., 'compute_120']
    torch_cuda_arch_list: tuple[str, ...] = ()
    torch_arch_list_source: str | None = None  # how the list above was learnt
    nvidia_driver: str | None = None
    cuda_driver: str | None = None  # highest CUDA version the driver supports
    packages: dict[str, str] = field(default_factory=dict)  # distribution name -> version

    def has_package(self, name: str) -> bool:
        return normalise_dist(name) in self.packages

    def package_version(self, name: str) -> str | None:
        return self.packages.get(normalise_dist(name))


@dataclass(frozen=True)
class Machine:
    name: str
    cpu: Cpu
    memory_gib: float  # host RAM
    software: Software
    devices: tuple[Device, ...] = ()  # accelerators first, then the CPU device
    memory_available_gib: float | None = None
    disk_free_gib: float | None = None  # free space where kernelfit caches (disk offload); None: unknown
    description: str = ""
    origin: str = "probe"  # "probe", "profile:t4", or a file path
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def accelerators(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.is_accelerator)

    @property
    def cpu_device(self) -> Device:
        for d in self.devices:
            if d.kind == "cpu":
                return d
        return cpu_device_for(self.cpu, self.memory_gib, self.memory_available_gib)

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(_drop_none(self.to_dict()))  # TOML has no null

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str | None = None) -> "Machine":
        try:
            return _machine_from_dict(data, origin)
        except UsageError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise UsageError(
                f"malformed machine profile ({exc}); see `kernelfit doctor --save FILE` for the format"
            ) from None


def normalise_dist(name: str) -> str:
    """PEP 503 name normalisation: 'Flash_Attn' -> 'flash-attn'."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def cpu_device_for(cpu: Cpu, memory_gib: float, available: float | None) -> Device:
    return Device(
        kind="cpu",
        name=cpu.model,
        index=0,
        arch=cpu.arch,
        memory_gib=memory_gib,
        memory_free_gib=available,
    )


def with_software(machine: Machine, add: dict[str, str], remove: list[str]) -> Machine:
    """A copy whose software set has packages added (`--with`) or removed (`--without`)."""
    packages = dict(machine.software.packages)
    for name in remove:
        packages.pop(normalise_dist(name), None)
    for name, version in add.items():
        packages[normalise_dist(name)] = version
    return replace(machine, software=replace(machine.software, packages=packages))


def _clean(value: Any) -> Any:
    """asdict() output made JSON friendly: capabilities become "8.6", tuples become lists."""
    if isinstance(value, Capability):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _pick(klass: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UsageError(f"malformed machine profile: `{where}` must be a table/object")
    names = {f.name for f in fields(klass)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(
            f"malformed machine profile: unknown key(s) {', '.join(unknown)} in `{where}`"
            f" (known: {', '.join(sorted(names))})"
        )
    out = {}
    for k, v in data.items():
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _number(value, where: str, positive: bool = True, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"),) \
            or (value <= 0 if positive else value < 0):
        raise UsageError(f"malformed machine profile: `{where}` must be a {'positive ' if positive else ''}number, "
                         f"not {value!r}")
    return float(value)


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"malformed machine profile: `{where}` must be a non-empty string, not {value!r}")
    return value


def _machine_from_dict(data: dict[str, Any], origin: str | None) -> Machine:
    top = _pick(Machine, data, "machine")
    for required in ("name", "cpu", "memory_gib"):
        if required not in top:
            raise UsageError(f"malformed machine profile: missing `{required}`")
    _text(top["name"], "name")
    top["memory_gib"] = _number(top["memory_gib"], "memory_gib")
    for key in ("memory_available_gib", "disk_free_gib"):
        top[key] = _number(top.get(key), key, positive=False, optional=True)
    cpu_data = top["cpu"]
    if isinstance(cpu_data, dict):
        _text(cpu_data.get("model"), "cpu.model")
        for key in ("cores", "threads"):
            if key in cpu_data and (isinstance(cpu_data[key], bool) or not isinstance(cpu_data[key], int) or cpu_data[key] < 1):
                raise UsageError(f"malformed machine profile: `cpu.{key}` must be a positive whole number")
    cpu = Cpu(**_pick(Cpu, top.pop("cpu"), "cpu"))
    soft = _pick(Software, top.pop("software", {}) or {}, "software")
    soft["packages"] = {normalise_dist(k): str(v) for k, v in dict(soft.get("packages", {})).items()}
    software = Software(**soft)
    devices = []
    for i, d in enumerate(top.pop("devices", ()) or ()):
        dd = _pick(Device, d, f"devices[{i}]")
        if dd.get("kind") not in DEVICE_KINDS:
            raise UsageError(
                f"malformed machine profile: devices[{i}].kind must be one of {', '.join(DEVICE_KINDS)}"
            )
        _text(dd.get("name"), f"devices[{i}].name")
        dd["memory_gib"] = _number(dd.get("memory_gib", 0.0), f"devices[{i}].memory_gib", positive=dd["kind"] != "cpu")
        dd["memory_free_gib"] = _number(dd.get("memory_free_gib"), f"devices[{i}].memory_free_gib", positive=False,
                                        optional=True)
        if isinstance(dd.get("index", 0), bool) or not isinstance(dd.get("index", 0), int) or dd.get("index", 0) < 0:
            raise UsageError(f"malformed machine profile: `devices[{i}].index` must be a whole number >= 0")
        if dd.get("compute_capability") is not None:
            dd["compute_capability"] = Capability.parse(str(dd["compute_capability"]))
        dd["tflops"] = {str(k): float(v) for k, v in dict(dd.get("tflops", {})).items()}
        devices.append(Device(**dd))
    if not any(d.kind == "cpu" for d in devices):
        devices.append(cpu_device_for(cpu, float(top["memory_gib"]), top.get("memory_available_gib")))
    if origin is not None:
        top["origin"] = origin
    return Machine(cpu=cpu, software=software, devices=tuple(devices), **top)


def load_machine_file(path: str | Path) -> Machine:
    """Read a profile written by `kernelfit doctor --save` or by hand (.json or .toml)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read profile file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"profile file {p} is not UTF-8 text; save it as UTF-8 (kernelfit doctor --save writes one)") from None
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"profile file {p} is not valid {p.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from None
    if isinstance(data, dict) and "machine" in data and "cpu" not in data:
        data = data["machine"]  # accept `kernelfit doctor --json` output too
    return Machine.from_dict(data, origin=str(p))
