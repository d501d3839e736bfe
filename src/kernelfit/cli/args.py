"""Argument parsing shared by the commands: one-line errors, sizes, and the plan preferences the flags ask for."""

from __future__ import annotations

import argparse
import re

from ..errors import UsageError

SIZE_UNITS = {"": 1.0, "gib": 1.0, "gb": 1e9 / 1024**3, "mib": 1 / 1024, "mb": 1e6 / 1024**3, "tib": 1024.0}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def positive_int(name: str):
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", text or "") or int(text) < 1:
            raise UsageError(f"{name} must be a positive whole number, not {text!r}")
        return int(text)
    return parse


def parse_max_memory(text: str) -> dict[str, float]:
    """'0=20GiB,1=20GiB,cpu=64GiB' -> {'0': 20.0, '1': 20.0, 'cpu': 64.0} (GiB)."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        m = re.fullmatch(r"\s*([\w:]+)\s*=\s*([\d.]+)\s*([A-Za-z]*)\s*", part)
        if not m or m.group(3).lower() not in SIZE_UNITS:
            raise UsageError(f"--max-memory {text!r}: expected DEVICE=SIZE pairs like 0=20GiB,cpu=64GiB")
        value = float(m.group(2)) * SIZE_UNITS[m.group(3).lower()]
        if value <= 0:
            raise UsageError(f"--max-memory for {m.group(1)} must be positive")
        out[m.group(1)] = value
    return out


def add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="NAME|FILE", help="plan for a reference machine or a saved profile instead of this one")
    p.add_argument("--with", dest="with_", action="append", metavar="PKG[==VER]", help="assume this package is installed")
    p.add_argument("--without", action="append", metavar="PKG", help="assume this package is not installed")


def add_quant_args(p: argparse.ArgumentParser) -> None:
    from ..planner.quantization import QUANT_CHOICES

    p.add_argument("--max-memory", type=parse_max_memory, help="per-device budget, e.g. 0=20GiB,cpu=64GiB")
    p.add_argument("--quantization", default="auto", choices=QUANT_CHOICES,
                   help="auto: only when the model does not fit (least quality loss first)")
    p.add_argument("--allow-dequantize", action="store_true",
                   help="unpack a quantized checkpoint when no kernel for it runs here")


def preferences(args, **fixed) -> "Preferences":  # noqa: F821
    """The plan preferences a command's flags ask for (`fixed` for flags a command does not have)."""
    from ..planner.types import Preferences

    names = ("dtype", "attention", "context", "batch", "device", "max_memory", "quantization", "allow_dequantize")
    given = {n: getattr(args, "attn" if n == "attention" else n) for n in names
             if hasattr(args, "attn" if n == "attention" else n)}
    return Preferences(**{**given, **fixed})
