"""Read a GGUF file's metadata and tensor table (no tensor data, no numpy, no gguf package).

The format (ggml docs/gguf.md): magic "GGUF", uint32 version (2 or 3), uint64 tensor count,
uint64 metadata count, the metadata key/values, then one info record per tensor.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_ARRAY_NESTING = 2  # real files hold arrays of scalars or strings; deeper nesting is a broken file

# ggml tensor types: (block size in elements, bytes per block). ggml/src/ggml.c type_traits.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    20: ("IQ4_NL", 32, 18), 23: ("IQ4_XS", 256, 136), 39: ("MXFP4", 32, 17),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2),
}


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int = 0  # absolute position of the tensor's data in the file

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (str(self.ggml_type),))[0]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        _, block, size = GGML_TYPES.get(self.ggml_type, ("?", 1, 4))
        return self.numel // block * size


@dataclass(frozen=True)
class GgufHeader:
    path: str
    version: int
    metadata: dict
    tensors: tuple[GgufTensor, ...]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def rope_scaling(self) -> str | None:
        """The rotary scaling ("linear", "yarn", ...; "rope_freqs" for a per-frequency table), None when plain; a
        YaRN with keys beyond the plain maths names them ("yarn with rope.scaling.yarn_attn_factor")."""
        from ..catalog.packed_kernels import YARN_UNSUPPORTED_KEYS

        kind = self.arch_key("rope.scaling.type")
        kind = None if kind in (None, "none") else str(kind)
        odd = [k for k in YARN_UNSUPPORTED_KEYS if self.arch_key(k) not in (None, 0.0, 1.0)]
        if kind == "yarn" and (odd or not self.arch_key("rope.scaling.original_context_length")):
            return f"yarn with {', '.join(odd) or 'no rope.scaling.original_context_length'}"
        names = {t.name for t in self.tensors}
        if "rope_factors_long.weight" in names:  # Phi-3.5 / Phi-4's LongRoPE: two factor tables, no type key
            return "longrope"
        if kind in (None, "linear", "yarn") and "rope_freqs.weight" in names:
            return "rope_freqs"
        return kind

    def arch_key(self, key: str, default=None):
        return self.metadata.get(f"{self.architecture}.{key}", default)


_U64 = struct.Struct("<Q")


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise EOFError
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        s = self.data[self.pos:self.pos + n]
        if len(s) != n:
            raise EOFError
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def strings(self, count: int) -> StringArray:
        # one loop of locals (a 152k-token vocabulary and its 151k merges: 0.45 s through take(), ~3x less so)
        data, pos, end, unpack = self.data, self.pos, len(self.data), _U64.unpack_from
        begin, starts, lengths = pos, array("I"), array("I")  # a header prefix is <= 64 MiB
        for _ in range(count):
            if pos + 8 > end:
                raise EOFError
            n = unpack(data, pos)[0]
            pos += 8
            if pos + n > end:
                raise EOFError
            starts.append(pos - begin)
            lengths.append(n)
            pos += n
        self.pos = pos
        return StringArray(self.data[begin:pos], starts, lengths)

    def value(self, vtype: int, depth: int = 0, keep: bool = False):
        """`keep`: an array is returned whole (a list) instead of as its count."""
        if depth > MAX_ARRAY_NESTING:
            raise ValueError(f"arrays nested deeper than {MAX_ARRAY_NESTING} levels")
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("<I"), self.take("<Q")
            if itype in _SCALARS:
                fmt = _SCALARS[itype]
                size = struct.calcsize(fmt)
                if self.pos + size * count > len(self.data):
                    raise EOFError
                if keep or count <= SMALL_ARRAY:
                    items = list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, self.pos))
                    self.pos += size * count
                    return items
                self.pos += size * count  # large arrays (token scores) are not needed: keep the count
                return _ArrayInfo(count)
            if count > len(self.data):
                raise EOFError
            if itype == _STRING:  # walked without decoding: the vocabulary is kept only when asked for
                strings = self.strings(count)
                return strings if keep else _ArrayInfo(count)
            return [self.value(itype, depth + 1) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")


@dataclass(frozen=True, eq=False)
class StringArray:
    """A kept array of strings held as the file's own bytes (a 262k-token vocabulary: ~5 MB here, ~20 MB as
    Python str objects): item i is data[starts[i]:starts[i] + lengths[i]], UTF-8."""

    data: bytes
    starts: array
    lengths: array

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> str:
        s = self.starts[i]
        return self.data[s:s + self.lengths[i]].decode("utf-8", errors="replace")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class _ArrayInfo:
    """An array whose items we skipped; only its length matters (e.g. the vocabulary)."""

    count: int


# The last headers read, by file identity: one load asks for a file's header in the plan, the loader's checks, the
# builder and the tokenizer — a 152k-token vocabulary took ~0.23 s to parse each time (Qwen2.5: 0.94 s of a 4.5 s load)
_RECENT: dict[tuple, GgufHeader] = {}
SMALL_ARRAY = 1024  # numeric arrays this short are kept whole: per-layer hyper-parameters (a hybrid's head counts)
RECENT_HEADERS, FIRST_BYTES = 2, 64 << 10


def read_gguf_header(path: str | Path, max_bytes: int = 64 << 20, keep: frozenset[str] = frozenset()) -> GgufHeader:
    """The metadata and tensor table, read in growing prefixes (4 MiB covers a 49k-token vocabulary; a
    256k-token one needs more) up to `max_bytes`. Arrays are kept as their count, except those named in
    `keep` (e.g. "tokenizer.ggml.tokens"), which are read whole: a list of numbers, or a StringArray. The same file
    (path, inode, size and modification time unchanged) read again with the same arguments gives the header read
    before."""
    try:
        st = Path(path).stat()
        with Path(path).open("rb") as f:  # and its first bytes: a file rewritten within one clock tick is read again
            first = zlib.crc32(f.read(FIRST_BYTES))
        key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, first, max_bytes, keep)
    except OSError:
        key = None  # _read_header says what is wrong with the path
    if key in _RECENT:
        return _RECENT[key]
    header = _read_growing(path, max_bytes, keep)
    if key is not None:
        while len(_RECENT) >= RECENT_HEADERS:
            _RECENT.pop(next(iter(_RECENT)))
        _RECENT[key] = header
    return header


def _read_growing(path: str | Path, max_bytes: int, keep: frozenset[str]) -> GgufHeader:
    size = 4 << 20
    while True:
        try:
            return _read_header(path, min(size, max_bytes), final=size >= max_bytes, keep=keep)
        except EOFError:
            size *= 4


def _read_header(path: str | Path, max_bytes: int, final: bool, keep: frozenset[str] = frozenset()) -> GgufHeader:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read GGUF file {p}: {exc.strerror}") from None
    if not final and len(data) == max_bytes:
        return _parse(p, data, retry_on_eof=True, keep=keep)
    return _parse(p, data, retry_on_eof=False, keep=keep)


def _parse(p: Path, data: bytes, retry_on_eof: bool, keep: frozenset[str] = frozenset()) -> GgufHeader:
    r = _Reader(data)
    try:
        if data[:4] != b"GGUF":
            raise ValueError("missing GGUF magic")
        r.pos = 4
        version = r.take("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old (need 2 or 3)")
        n_tensors, n_kv = r.take("<Q"), r.take("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.take("<I"), keep=key in keep)
        tensors, end = [], 0
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.take("<I")
            if n_dims > 8:
                raise ValueError(f"tensor {name!r} claims {n_dims} dimensions")
            dims = tuple(r.take("<Q") for _ in range(n_dims))
            ttype = r.take("<I")
            offset = r.take("<Q")
            t = GgufTensor(name, dims, ttype, offset)
            tensors.append(t)
            end = max(end, offset + t.nbytes)
        alignment = metadata.get("general.alignment", 32)
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        data_start = -(-r.pos // alignment) * alignment
        tensors = [GgufTensor(t.name, t.shape, t.ggml_type, data_start + t.offset) for t in tensors]
        size = p.stat().st_size
        if data_start + end > size:
            raise ValueError(f"truncated: {size:,} bytes, its tensor table needs {data_start + end:,}")
    except EOFError:
        if retry_on_eof:  # the header is longer than this prefix: the caller reads a longer one
            raise
        raise UsageError(f"{p} is not a readable GGUF file (truncated); re-download it") from None
    except (ValueError, struct.error, RecursionError, OverflowError) as exc:
        raise UsageError(f"{p} is not a readable GGUF file ({exc or 'truncated'}); re-download it") from None
    return GgufHeader(str(p), version, metadata, tuple(tensors))
