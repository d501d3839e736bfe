"""Cache keys from content: the same checkpoint in two clones shares one conversion."""

import os
import shutil

from kernelfit.paths import SAMPLE_BYTES, files_key


def test_same_content_elsewhere_shares_the_key_and_changes_do_not(tmp_path):
    a = tmp_path / "a" / "model.gguf"
    a.parent.mkdir()
    a.write_bytes(os.urandom(3 * SAMPLE_BYTES))
    b = tmp_path / "b" / "model.gguf"
    b.parent.mkdir()
    shutil.copyfile(a, b)  # another path, another mtime
    os.utime(b, (1, 1))
    assert files_key([a], 1) == files_key([b], 1)
    assert files_key([a], 1) != files_key([a], 2)  # a new cache format invalidates
    data = bytearray(b.read_bytes())
    data[-1] ^= 0xFF  # a change in the tail (GGUF tensors, safetensors' last tensors)
    b.write_bytes(bytes(data))
    assert files_key([a], 1) != files_key([b], 1)
    c = tmp_path / "a" / "other.gguf"
    shutil.copyfile(a, c)
    assert files_key([a], 1) != files_key([c], 1)  # the name is part of it
