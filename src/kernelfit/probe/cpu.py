"""Host CPU and memory, from /proc (Linux) or sysctl (macOS), without third-party packages."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from ..hardware.machine import Cpu

GIB = 1024**3

# Flags that change what runs fast, in kernelfit's names. Keys: /proc/cpuinfo or macOS sysctl
# spellings; values: the name used in the catalog and in profiles.
X86_FLAGS = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_fp16": "amx_fp16",
}
ARM_FLAGS = {
    "asimd": "neon",
    "asimdhp": "neon_fp16",
    "asimddp": "dotprod",
    "sve": "sve",
    "sve2": "sve2",
    "bf16": "bf16",
    "svebf16": "sve_bf16",
    "i8mm": "i8mm",
    "sme": "sme",
}
MAC_ARM_SYSCTL = {
    "hw.optional.AdvSIMD": "neon",
    "hw.optional.arm.FEAT_FP16": "neon_fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_SME": "sme",
}


def parse_cpuinfo(text: str, arch: str) -> tuple[str, tuple[str, ...], int | None]:
    """(model name, normalised ISA flags, physical core count or None) from /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    block: dict[str, str] = {}

    def flush() -> None:
        if "core id" in block:
            cores.add((block.get("physical id", "0"), block["core id"]))

    for line in text.splitlines() + [""]:
        if not line.strip():
            flush()
            block = {}
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        block[key] = value
        if key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
    table = ARM_FLAGS if arch in ("aarch64", "arm64") else X86_FLAGS
    isa = tuple(sorted({table[f] for f in flags if f in table}))
    return model, isa, (len(cores) or None)


def _sysctl(name: str) -> str | None:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def usable_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def probe_cpu() -> Cpu:
    arch = platform.machine() or "unknown"
    threads = usable_threads()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model, isa, cores = parse_cpuinfo(cpuinfo.read_text(errors="replace"), arch)
        return Cpu(model=model or platform.processor() or arch, arch=arch,
                   cores=min(cores or threads, threads), threads=threads, isa=isa)
    if platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string") or "Apple"
        cores = int(_sysctl("hw.physicalcpu") or threads)
        isa = tuple(sorted(v for k, v in MAC_ARM_SYSCTL.items() if _sysctl(k) == "1"))
        return Cpu(model=model, arch=arch, cores=cores, threads=threads, isa=isa)
    return Cpu(model=platform.processor() or arch, arch=arch, cores=threads, threads=threads)


def _cgroup_limit_bytes() -> int | None:
    """A container's memory limit is lower than MemTotal; plans must use the limit."""
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(p).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (1 << 60):
            return int(raw)
    return None


def probe_memory() -> tuple[float, float | None]:
    """(total GiB, available GiB or None), capped by a cgroup limit when there is one."""
    total = avail = None
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0]) * 1024
        total, avail = info.get("MemTotal"), info.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        raw = _sysctl("hw.memsize") if platform.system() == "Darwin" else None
        if raw and raw.isdigit():
            total = int(raw)
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
    limit = _cgroup_limit_bytes()
    if limit is not None:
        total = min(total, limit)
        avail = min(avail, limit) if avail is not None else None
    return round(total / GIB, 2), (round(avail / GIB, 2) if avail is not None else None)
