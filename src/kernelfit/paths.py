"""Where kernelfit keeps files, and how it writes them without leaving anything half-written."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """The user cache dir (platformdirs conventions), or $KERNELFIT_CACHE_DIR."""
    env = os.environ.get("KERNELFIT_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kernelfit"))


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def not_private(directory: Path) -> tuple[bool, str] | None:
    """Why `directory` is no place to load native code or caches from, or None when it is: it must be a real folder
    (not a symlink) owned by this user that no group or other user can write. Anyone who can write there can
    replace a compiled library or a cached conversion before the next run, and have it loaded into this process.
    The flag says whether the user can mend it (their own folder, too loose a mode)."""
    if not hasattr(os, "getuid"):
        return None  # Windows: ACLs, not modes; the user's own profile folder
    import stat

    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        return False, f"{directory} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return False, f"{directory} is not a folder"
    if st.st_uid != os.geteuid():
        return False, f"{directory} belongs to {_owner_name(st.st_uid)}, not to you"
    if st.st_mode & 0o022:
        return True, f"{directory} can be written by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_dir(directory: Path) -> Path:
    """`directory`, created if missing (mode 700), checked with not_private; a folder of this user's with loose
    permissions (a umask of 002) is tightened to 700. Raises UsageError naming the folder and what to do."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # a file or a dangling link in the way: not_private names it
    problem = not_private(directory)
    if problem and problem[0]:
        os.chmod(directory, 0o700)  # ours (checked above): tighten it rather than refuse it
        problem = not_private(directory)
    if problem:
        problem = problem[1]
        from .errors import UsageError

        raise UsageError(f"kernelfit loads compiled kernels and caches only from a folder you own that others cannot "
                         f"write, and {problem}; set KERNELFIT_CACHE_DIR to such a folder (or remove {directory})")
    return directory


_warned_fallback: set[str] = set()


def writable_cache_root() -> Path:
    """cache_root() when kernelfit can write there and it is private (not_private); else (read-only, a file in
    the way, no permission, another user's folder) a private folder in the system's temporary directory, created
    with mode 700 — an existing one is used only when it is this user's and private — with a one-line warning
    once per process. A KERNELFIT_CACHE_DIR that is not the user's is refused, not replaced."""
    from .errors import UsageError

    root = cache_root()
    why = "is not writable"
    if _writable(root):
        try:
            return private_dir(root)
        except UsageError:
            if os.environ.get("KERNELFIT_CACHE_DIR"):
                raise  # asked for by name: refused in one line rather than silently replaced
            why = "is not yours alone"  # another user's default cache dir: the private fallback
    fallback = Path(tempfile.gettempdir()) / f"kernelfit-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    try:
        fallback.mkdir(mode=0o700)  # created here: ours and private
    except OSError:
        pass  # it exists (whose? checked next, never trusted by its name), or the temp dir is not writable
    if fallback.exists() or fallback.is_symlink():
        private_dir(fallback)
    if not _writable(fallback):
        raise UsageError(f"neither the cache directory {root} nor {fallback} is writable; set KERNELFIT_CACHE_DIR "
                         "to a writable folder")
    if str(root) not in _warned_fallback:
        _warned_fallback.add(str(root))
        print(f"kernelfit: warning: the cache directory {root} {why}; using {fallback} for now (set "
              "KERNELFIT_CACHE_DIR to keep conversions between runs)", file=sys.stderr, flush=True)
    return fallback


def write_atomic(path: str | Path, text: str) -> None:
    """Write a temp file beside the target, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


SAMPLE_BYTES = 4 << 20  # how much of each end of a file the content key reads


def files_key(files: list[Path], version: int) -> str:
    """A cache key for data derived from `files`, from their content: each file's name, size and the
    SHA-256 of its first and last 4 MiB. The same checkpoint in two clones or venvs (different
    paths and mtimes) shares one cache entry; a re-written file of the same size still changes
    its key unless it differs only in the middle, where checkpoints hold tensor data, not headers."""
    import hashlib

    h = hashlib.sha256(f"v{version}".encode())
    for f in sorted(files, key=lambda p: p.name):
        size = f.stat().st_size
        h.update(f"|{f.name}:{size}|".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(SAMPLE_BYTES))
            if size > 2 * SAMPLE_BYTES:
                fh.seek(size - SAMPLE_BYTES)
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]
