"""`kernelfit doctor`: findings about a Machine, each with the exact fix when there is one."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..hardware.capability import SM53_FP16_ARITH, SM60_PASCAL, SM70_FP16_TENSOR_CORES, SM80_AMPERE, SM90_HOPPER
from ..catalog.packages import install_hint
from ..catalog.versions import release
from ..hardware.machine import Machine
from ..catalog.torch_builds import cuda_install_command, device_blockers

LOW_RAM_GIB = 2.0


@dataclass(frozen=True)
class Finding:
    level: str  # "error" (something cannot run), "warning" (runs, but slowly or riskily), "info"
    message: str
    fix: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def findings(machine: Machine) -> list[Finding]:
    out: list[Finding] = []
    sw = machine.software
    accels = machine.accelerators
    if not accels:
        why = next((n for n in machine.notes if "NVIDIA" in n or "GPU" in n), "no accelerator in this profile")
        out.append(Finding("info", f"No GPU: {why}. Plans run on the CPU ({machine.cpu.model})."))
    if sw.torch is None:
        out.append(Finding("error", "torch is not installed: nothing can be loaded or run (planning still works)",
                           "pip install torch"))
    for d in accels:
        if sw.torch is None:
            continue  # said once above
        for b in device_blockers(d, sw):
            out.append(Finding("error", f"{d.torch_device} {d.name}: {b.reason}", b.fix))
        cap = d.compute_capability
        if d.kind == "cuda" and cap is not None:
            if cap < SM80_AMPERE:
                out.append(Finding("info", f"{d.name} (compute capability {cap}) has no native bf16: "
                                   "torch.cuda.is_bf16_supported() may still say True (it counts emulation); "
                                   "kernelfit plans float16 or float32 here."))
                out.append(Finding("info", f"{d.name}: FlashAttention-2 needs compute capability 8.0 — code that "
                                   "hard-codes attn_implementation='flash_attention_2' crashes here; kernelfit.guard() "
                                   "substitutes the best runnable implementation."))
            if SM53_FP16_ARITH <= cap < SM70_FP16_TENSOR_CORES and cap != SM60_PASCAL:
                out.append(Finding("warning", f"{d.name} runs fp16 arithmetic at 1/64 of its fp32 rate: "
                                   "kernelfit computes in float32 and uses fp16 only when memory demands it."))
            if cap >= SM80_AMPERE and not sw.has_package("flash-attn") and sw.torch_cuda:
                out.append(Finding("info", f"{d.name} can run FlashAttention-2, which is not installed "
                                   "(SDPA is used meanwhile)", install_hint("flash-attn")))
            if cap == SM90_HOPPER and not sw.has_package("flash-attn-3"):
                out.append(Finding("info", f"{d.name} is Hopper: FlashAttention-3 would be faster than FA2 "
                                   "(not installed)", install_hint("flash-attn-3")))
    if sw.cuda_driver and sw.torch_cuda:
        drv, built = release(sw.cuda_driver), release(sw.torch_cuda)
        if drv and built and drv[0] < built[0]:
            out.append(Finding("error", f"the NVIDIA driver supports CUDA {sw.cuda_driver}, but torch {sw.torch} "
                               f"needs CUDA {sw.torch_cuda}", f"update the NVIDIA driver, or {cuda_install_command(sw.cuda_driver)}"))
    cpu = machine.cpu
    if cpu.has("amx_bf16", "avx512_bf16", "bf16", "sve_bf16"):
        flags = ", ".join(f for f in ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16") if cpu.has(f))
        out.append(Finding("info", f"CPU has native bf16 ({flags}): CPU plans use bfloat16"))
    else:
        out.append(Finding("info", "CPU has no native bf16 (avx512_bf16/amx_bf16): CPU plans use float32"))
    if machine.memory_available_gib is not None and machine.memory_available_gib < LOW_RAM_GIB:
        out.append(Finding("warning", f"only {machine.memory_available_gib:.1f} GiB of RAM is free"))
    return out
