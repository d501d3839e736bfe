"""Images for vision-language models: read from a local path, a file:// URL or a data: URL, checked before
anything heavy is loaded. kernelfit never downloads: an http(s) URL is refused with what to do."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import UsageError

MAX_IMAGE_BYTES = 64 << 20


def _bytes(ref: str) -> tuple[bytes, str]:
    if not isinstance(ref, str) or not ref.strip():
        raise UsageError("--image needs a path to an image file")
    ref = ref.strip()
    if ref.startswith("data:"):
        head, _, data = ref.partition(",")
        if ";base64" not in head or not data:
            raise UsageError("an image data: URL must be base64 (data:image/png;base64,...)")
        try:
            return base64.b64decode(data, validate=True), "the data: URL"
        except (binascii.Error, ValueError):
            raise UsageError("the image data: URL is not valid base64") from None
    if ref.startswith(("http://", "https://")):
        raise UsageError(f"kernelfit reads images from local files and never downloads: fetch {ref} first and pass "
                         "its path")
    path = Path(unquote(urlparse(ref).path)) if ref.startswith("file://") else Path(ref).expanduser()
    if not path.exists():
        raise UsageError(f"no image at {path}")
    if not path.is_file():
        raise UsageError(f"{path} is not a file; --image takes an image file (PNG, JPEG, WebP, ...)")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise UsageError(f"{path} is larger than {MAX_IMAGE_BYTES >> 20} MiB; pass a smaller image")
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def load_image(ref: str):
    """A PIL RGB image from `ref`; a UsageError naming the file when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    data, where = _bytes(ref)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UsageError(f"{where} is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP, ...)") from None
    return img.convert("RGB")
