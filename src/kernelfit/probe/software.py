"""Installed software, read from package metadata and torch's version file — nothing heavy
is imported. torch is only asked directly when the caller already imported it."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import re
import sys
from pathlib import Path

from ..catalog.packages import PACKAGES
from ..catalog.torch_builds import known_arch_list
from ..hardware.machine import Software, normalise_dist


def installed_packages() -> dict[str, str]:
    wanted = {p.dist for p in PACKAGES}
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = normalise_dist(dist.metadata.get("Name") or "")
        if name in wanted and name not in found:
            found[name] = dist.version
    return found


def _torch_version_file() -> dict[str, str | None]:
    """Parse torch/version.py (`__version__`, `cuda`, `hip`) without importing torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, str | None] = {}
    for key in ("__version__", "cuda", "hip"):
        m = re.search(rf"^{key}\s*(?::\s*[^=]+)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, re.M)
        if m:
            out[key] = m.group(1) or m.group(2)
    return out


def torch_arch_list(version: str | None, cuda: str | None) -> tuple[tuple[str, ...], str | None]:
    if cuda is None:
        return (), None
    torch = sys.modules.get("torch")
    if torch is not None:  # exact, and free since torch is already loaded
        try:
            flags = torch._C._cuda_getArchFlags()
            if flags:
                return tuple(flags.split()), "torch._C._cuda_getArchFlags()"
        except Exception:
            pass
    known = known_arch_list(version, cuda)
    if known:
        return known[0], f"official wheel table ({known[1]})"
    return (), "unknown (not an official wheel; import torch to read torch.cuda.get_arch_list())"


def probe_software(nvidia_driver: str | None = None, cuda_driver: str | None = None) -> Software:
    vf = _torch_version_file()
    torch_version = vf.get("__version__")
    torch_cuda = vf.get("cuda")
    archs, arch_source = torch_arch_list(torch_version, torch_cuda)
    return Software(
        python=platform.python_version(),
        os=f"{platform.system()} {platform.release()}".strip(),
        torch=torch_version,
        torch_cuda=torch_cuda,
        torch_hip=vf.get("hip"),
        torch_cuda_arch_list=archs,
        torch_arch_list_source=arch_source,
        nvidia_driver=nvidia_driver,
        cuda_driver=cuda_driver,
        packages=installed_packages(),
    )
