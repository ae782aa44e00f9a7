import struct
import zlib

import pytest

from sciinr import FormatError
from sciinr.stages import container


def _blob():
    return container.pack({"hello": "world", "n": 3}, {"a": b"abc" * 10, "b": b"", "c": b"xyz"})


def test_roundtrip():
    header, sections = container.unpack(_blob())
    assert header == {"hello": "world", "n": 3}
    assert sections == {"a": b"abc" * 10, "b": b"", "c": b"xyz"}


def test_every_byte_flip_is_detected():
    blob = _blob()
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(FormatError):
            container.unpack(bytes(bad))


def test_every_truncation_is_detected():
    blob = _blob()
    for n in range(len(blob)):
        with pytest.raises(FormatError):
            container.unpack(blob[:n])


def test_newer_major_version_refused():
    blob = bytearray(_blob())
    struct.pack_into("<H", blob, 8, container.MAJOR + 1)
    end = container._PREFIX.size + struct.unpack_from("<I", blob, 12)[0]
    struct.pack_into("<I", blob, end, zlib.crc32(bytes(blob[:end])))
    with pytest.raises(FormatError, match="newer"):
        container.unpack(bytes(blob))
