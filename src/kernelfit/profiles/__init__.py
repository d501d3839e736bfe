"""Reference machines shipped as data (`data/*.toml`), and `--profile NAME|FILE` resolution."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

from ..catalog.packages import BY_DIST
from ..errors import UsageError
from ..hardware.machine import Machine, load_machine_file, normalise_dist, with_software

DATA = Path(__file__).parent / "data"


def profile_names() -> list[str]:
    return sorted(p.stem for p in DATA.glob("*.toml"))


@lru_cache(maxsize=None)
def _load_named(name: str) -> Machine:
    return load_machine_file(DATA / f"{name}.toml")


def load_profile(ref: str) -> Machine:
    """A shipped profile by name, or a profile file (.toml/.json) by path."""
    if not ref or not ref.strip():
        raise UsageError("--profile needs a name (see `kernelfit profiles`) or a file path")
    ref = ref.strip()
    if ref in profile_names():
        m = _load_named(ref)
        from dataclasses import replace

        return replace(m, origin=f"profile:{ref}")
    p = Path(ref).expanduser()
    if p.is_file():
        return load_machine_file(p)
    if p.is_dir():
        raise UsageError(f"{ref} is a directory; --profile takes a profile name or a .toml/.json file")
    if p.suffix.lower() in (".toml", ".json") or "/" in ref:
        raise UsageError(f"profile file {ref} does not exist")
    close = difflib.get_close_matches(ref, profile_names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"unknown profile '{ref}'; {hint}`kernelfit profiles` lists them, or pass a file from `kernelfit doctor --save`")


def parse_package_specs(specs: list[str] | None) -> dict[str, str]:
    """`--with flash-attn` / `--with flash-attn==2.8.3` -> {dist: version}. An unversioned package
    is assumed at a version new enough for every rule in the catalog."""
    out: dict[str, str] = {}
    for spec in specs or []:
        m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([0-9][0-9A-Za-z.+-]*))?\s*", spec)
        if not m:
            raise UsageError(f"--with {spec!r}: expected a package name, optionally with ==VERSION")
        dist = normalise_dist(m.group(1))
        out[dist] = m.group(2) or "999"
    return out


def apply_overrides(machine: Machine, with_: list[str] | None, without: list[str] | None) -> Machine:
    add = parse_package_specs(with_)
    remove = [normalise_dist(n) for n in without or []]
    for name in list(add) + remove:
        if name not in BY_DIST:
            known = ", ".join(sorted(BY_DIST))
            raise UsageError(f"unknown package '{name}' in --with/--without; kernelfit knows {known}")
    return with_software(machine, add, remove)
