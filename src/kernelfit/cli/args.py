"""Argument parsing shared by the commands: one-line errors, sizes, and the plan preferences the flags ask for."""

from __future__ import annotations

import argparse
import re

from ..errors import UsageError
from ..sizes import parse_max_memory, parse_size  # noqa: F401 - re-exported for the commands



class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def positive_int(name: str):
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", text or "") or int(text) < 1:
            raise UsageError(f"{name} must be a positive whole number, not {text!r}")
        return int(text)
    return parse


def add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="NAME|FILE", help="plan for a reference machine or a saved profile instead of this one")
    p.add_argument("--with", dest="with_", action="append", metavar="PKG[==VER]", help="assume this package is installed")
    p.add_argument("--without", action="append", metavar="PKG", help="assume this package is not installed")


def add_quant_args(p: argparse.ArgumentParser) -> None:
    from ..catalog.kv_cache import KV_CACHE_CHOICES
    from ..planner.phases import PREFILL_CHOICES
    from ..planner.quantization import QUANT_CHOICES

    p.add_argument("--max-memory", type=parse_max_memory, help="per-device budget, e.g. 0=20GiB,cpu=64GiB")
    p.add_argument("--quantization", default="auto", choices=QUANT_CHOICES,
                   help="auto: only when the model does not fit (least quality loss first)")
    p.add_argument("--prefill", default="auto", choices=PREFILL_CHOICES,
                   help="packed weights: prefill on the packed weights (memory of the file), a bf16 copy (faster "
                        "prompts) or, for a GGUF file on an AVX512-VNNI CPU, an int8 GEMM over its codes (fastest, "
                        "lossy: llama.cpp's activation precision)")
    p.add_argument("--kv-cache", default="auto", choices=KV_CACHE_CHOICES,
                   help="kernelfit's engine: the KV cache's elements — float16 (auto, llama.cpp's default too), "
                        "float32, or Q8_0 blocks (about half of float16's memory, lossy: the plan says how much)")
    p.add_argument("--allow-dequantize", action="store_true",
                   help="unpack a quantized checkpoint when no kernel for it runs here")


def add_draft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", metavar="PATH", help="kernelfit's engine: a small model of the same tokenizer "
                   "(e.g. SmolLM2-135M for a larger SmolLM2) that drafts tokens the model checks several a step "
                   "(the same output; instead of prompt lookup)")


def preferences(args, **fixed) -> "Preferences":  # noqa: F821
    """The plan preferences a command's flags ask for (`fixed` for flags a command does not have)."""
    from ..planner.types import Preferences

    names = ("dtype", "attention", "context", "batch", "device", "max_memory", "quantization", "allow_dequantize",
             "prefill", "kv_cache", "draft_model")
    given = {n: getattr(args, "attn" if n == "attention" else n) for n in names
             if hasattr(args, "attn" if n == "attention" else n)}
    return Preferences(**{**given, **fixed})


def machine_for(args) -> "Machine":  # noqa: F821
    from ..profiles import apply_overrides, load_profile

    if args.profile is not None:  # --profile '' is a mistake to report, not "this machine"
        m = load_profile(args.profile)
    else:
        from ..probe import probe_machine

        m = probe_machine()
    return apply_overrides(m, args.with_, args.without)
