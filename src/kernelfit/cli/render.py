"""Human-readable output for the CLI: small aligned tables, no dependencies."""

from __future__ import annotations

import textwrap

from .doctor import Finding
from ..hardware.machine import Machine
from ..planner.hf_args import from_pretrained_kwargs, lean_runner
from ..planner.memory import gib
from ..planner.types import Choice, Plan, RejectKind


MAX_REJECTED = 4
KERNEL_TITLES = {"kv_cache": "KV cache"}  # plan.kernels keys whose title is not the key capitalised


def table(rows: list[list[str]], header: list[str] | None = None) -> str:
    rows = [[str(c) for c in r] for r in rows]
    if header:
        rows = [header, ["-" * len(h) for h in header]] + rows
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def _wrap(text: str, indent: str, width: int = 100) -> str:
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ")


def render_machine(m: Machine, found: list[Finding]) -> str:
    out = [f"kernelfit doctor — {m.name} ({m.origin})", ""]
    rows = []
    for d in m.devices:
        mem = f"{d.memory_gib:g} GiB" + (f" ({d.memory_free_gib:g} free)" if d.memory_free_gib is not None else "")
        rows.append([d.torch_device, d.name, d.compute_capability or "-", d.arch or "-", mem])
    out.append(table(rows, ["device", "name", "compute cap.", "arch", "memory"]))
    c, sw = m.cpu, m.software
    out += ["", f"CPU       {c.model} — {c.cores} cores / {c.threads} threads, {c.arch}",
            f"ISA       {', '.join(c.isa) or '(none of interest)'}",
            f"RAM       {m.memory_gib:g} GiB" + (f" ({m.memory_available_gib:g} available)" if m.memory_available_gib is not None else ""),
            f"Disk      {f'{m.disk_free_gib:g} GiB free in the cache dir (disk offload)' if m.disk_free_gib is not None else 'unknown'}",
            f"Python    {sw.python or '?'} on {sw.os or '?'}"]
    torch = sw.torch or "not installed"
    if sw.torch_cuda:
        torch += f" (CUDA {sw.torch_cuda}; archs {' '.join(sw.torch_cuda_arch_list) or '?'} — {sw.torch_arch_list_source})"
    elif sw.torch_hip:
        torch += f" (ROCm/HIP {sw.torch_hip})"
    elif sw.torch:
        torch += " (CPU build)"
    out.append(f"torch     {torch}")
    if sw.nvidia_driver:
        out.append(f"driver    NVIDIA {sw.nvidia_driver} (CUDA {sw.cuda_driver or '?'})")
    pk = ", ".join(f"{k} {v}" for k, v in sorted(sw.packages.items()) if k != "torch")
    out.append(_wrap(f"packages  {pk or '(none kernelfit knows)'}", "")[:2000])
    out += ["", "Findings:"]
    for f in found:
        out.append(_wrap(f"[{f.level}] {f.message}", "  "))
        if f.fix:
            out.append(f"      fix: {f.fix}")
    return "\n".join(out)


def _choice_lines(title: str, c: Choice) -> list[str]:
    lines = [_wrap(f"{title:<10}{c.value} — {c.reason}", "")]
    for r in c.rejected:
        lines.append(_wrap(f"✗ {r.name}: {r.reason}", "            "))
    return lines


def render_plan(p: Plan) -> str:
    m, s = p.model, p.model.text
    quant = ""
    if m.quantization:
        quant = f" {m.quantization.label()}"
    out = [f"kernelfit plan — {m.name} on {p.machine.name} ({p.machine.origin})", "",
           _wrap(f"Model     {m.architecture} ({m.model_type}), {m.params / 1e9:.3f} B params,{quant or ' ' + m.format}; "
                 f"{s.num_layers} layers"
                 + (f" ({s.num_layers - s.recurrent_layers} attention, {s.recurrent_layers} {s.recurrent_kind})"
                    if s.recurrent_layers else "")
                 + f", {s.num_heads} heads / {s.num_kv_heads} KV heads, head_dim {s.head_dim}"
                 + (f", sliding window {s.sliding_window}" if s.sliding_window else ""), "")]
    for sub in m.sub_models[1:]:
        out.append(_wrap(f"          + {sub.role} tower {sub.model_type}: {sub.params / 1e6:.0f} M params, "
                         f"{sub.num_layers} layers, head_dim {sub.head_dim}", ""))
    out.append(_wrap(f"Device    {', '.join(p.placement.devices)} — {p.placement.reason}", ""))
    shown = p.placement.rejected[:MAX_REJECTED]
    for r in shown:
        out.append(_wrap(f"✗ {r.name}: {r.reason}", "            "))
    if len(p.placement.rejected) > len(shown):
        out.append(f"            ({len(p.placement.rejected) - len(shown)} more placements tried: see --json)")
    q = p.quantization
    if q is not None and (q.method != "none" or q.kv_bits):
        label = f"{q.method} {q.bits}-bit ({q.backend})" if q.bits else q.method
        out.append(_wrap(f"Quantize  {label}{' + int' + str(q.kv_bits) + ' KV cache' if q.kv_bits else ''} — {q.reason}", ""))
        for r in [r for r in p.quantization_rejected if r.kind is not RejectKind.DOES_NOT_FIT][:MAX_REJECTED]:
            out.append(_wrap(f"✗ {r.name}: {r.reason}", "            "))
    if m.format == "gguf" and not lean_runner(p):  # say what runs a GGUF file here, and why not packed
        why = next((r.reason for r in p.quantization_rejected if r.method == "gguf"), None)
        if why:
            out.append(_wrap(f"GGUF      dequantized to {p.dtype.value}: {why}", ""))
    if p.offload.get("cpu_gib") or p.offload.get("disk_gib"):
        out.append(f"Offload   {p.offload['cpu_gib']:.2f} GiB to CPU RAM"
                   + (f", {p.offload['disk_gib']:.2f} GiB on disk" if p.offload.get("disk_gib") else ""))
    out += _choice_lines("Dtype", p.dtype)
    for sub in m.sub_models:
        title = "Attention" if sub.role == "text" else f"  {sub.role}"
        out += _choice_lines(title, p.attention[sub.role])
    if p.text_attention.value == "sdpa" and "text" in p.sdpa_kernels:
        ks = ", ".join(f"{k} {'✓' if not r else '✗'}" for k, r in p.sdpa_kernels["text"])
        out.append(f"            SDPA kernels here: {ks}")
    for phase, c in p.kernels.items():
        out += _choice_lines(KERNEL_TITLES.get(phase, phase.capitalize()), c)
    notes = [n for n in (p.decode_fastpath, p.decode_attention) if n and not lean_runner(p)]
    if notes:
        out.append(_wrap(f"Decode    {'; '.join(notes)}", ""))
    mem = p.memory.to_dict()
    out.append(f"Memory    weights {mem['weights_gib']:.2f} + KV cache {mem['kv_cache_gib']:.2f} (context "
               f"{p.preferences.context}, batch {p.preferences.batch}) + activations {mem['activations_gib']:.2f} + "
               f"overhead {mem['overhead_gib']:.2f} = {mem['total_gib']:.2f} GiB of {mem['budget_gib']:.2f} GiB "
               f"{'✓ fits' if mem['fits'] else '✗ does not fit'}")
    if lean_runner(p) and p.quantization.method == "engine":
        pre = p.model.quantization is not None and p.model.quantization.prequantized
        read = (f"their {p.model.quantization.method.upper()} codes and scales read as the dot products' groups"
                if pre else "read as Q8_0 blocks made at load" if p.quantization.bits else "read as 16-bit rows")
        out.append(_wrap(f"Load      kernelfit's CPU engine: the safetensors shards are mapped and {read} (no "
                         "from_pretrained); --quantization none loads it through transformers instead", ""))
    elif lean_runner(p):
        out.append(_wrap("Load      kernelfit's packed CPU runner: the GGUF file is mapped and its tensors tiled "
                         "once into the user's tile cache, read from it on later loads (no from_pretrained); "
                         "--quantization "
                         "none loads it dequantized instead", ""))
    else:
        kw = from_pretrained_kwargs(p)
        if "max_memory" in kw:  # bytes for accelerate; GiB for people
            kw["max_memory"] = {k: f"{gib(v):.2f}GiB" for k, v in kw["max_memory"].items()}
        out.append("Load      from_pretrained(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")")
    if p.tuned:
        extra = "".join([", torch.compile" if p.tuned.get("compile") else "",
                         f", {p.tuned['quantization']}" if p.tuned.get("quantization", "none") != "none" else ""])
        out.append(_wrap(f"Tuned     {p.tuned['reason']}; KV cache {p.tuned['cache']}{extra} (--no-cache ignores it)", ""))
    for w in p.warnings:
        out.append(_wrap(f"warning: {w}", ""))
    return "\n".join(out)


def render_profiles(machines: list[Machine]) -> str:
    rows = []
    for m in machines:
        acc = m.accelerators
        devs = " + ".join(f"{d.name} ({d.compute_capability or d.arch}, {d.memory_gib:g} GiB)" for d in acc) or "CPU only"
        rows.append([m.name, devs, m.software.torch or "-"])
    return table(rows, ["profile", "devices", "assumed torch"])
