"""Container stage: header + named byte sections <-> ``.sinr`` bytes.

Layout (all integers little-endian; see ``docs/format.md``)::

    magic        8 bytes   b"\\x89SINR\\r\\n\\x1a"
    major        u16       format major version (a reader refuses a newer one)
    minor        u16       format minor version (additions a reader may ignore)
    header_len   u32       bytes of the JSON header
    header       UTF-8 JSON object; "sections" lists name, offset, length, crc32 of each section
    header_crc   u32       CRC-32 of every byte before it
    sections     the section bytes, back to back, offsets relative to the end of header_crc

Everything is checked against the file size and fixed caps before anything is allocated.
No pickle, no ``torch.load``, no ``eval``.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from typing import Any

from ..errors import FormatError

MAGIC = b"\x89SINR\r\n\x1a"
MAJOR = 1
MINOR = 0
_PREFIX = struct.Struct("<8sHHI")
MAX_HEADER = 16 << 20
MAX_SECTIONS = 256
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def pack(header: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    """Serialize a header (JSON types) and named sections into one ``.sinr`` byte string."""
    table, offset = [], 0
    for name, data in sections.items():
        if not _NAME.match(name):
            raise ValueError(f"bad section name {name!r}")
        table.append(
            {"name": name, "offset": offset, "length": len(data), "crc32": zlib.crc32(data)}
        )
        offset += len(data)
    head = json.dumps(
        {**header, "sections": table}, separators=(",", ":"), allow_nan=False
    ).encode()
    prefix = _PREFIX.pack(MAGIC, MAJOR, MINOR, len(head)) + head
    return b"".join([prefix, struct.pack("<I", zlib.crc32(prefix)), *sections.values()])


def is_sinr(data: bytes) -> bool:
    """True when the bytes start with the ``.sinr`` magic."""
    return data[: len(MAGIC)] == MAGIC


def unpack(data: bytes, source: str = "<bytes>") -> tuple[dict[str, Any], dict[str, bytes]]:
    """Parse and verify a ``.sinr`` byte string.

    Raises
    ------
    FormatError
        Not a .sinr file, truncated, newer major version, or any checksum mismatch.
    """
    mv = memoryview(data)
    if len(mv) == 0:
        raise FormatError(f"{source}: empty file, not a .sinr file")
    if len(mv) < _PREFIX.size or bytes(mv[:8]) != MAGIC:
        if bytes(mv[:8]) == MAGIC[: min(8, len(mv))]:
            raise FormatError(f"{source}: truncated .sinr file ({len(mv)} bytes)")
        raise FormatError(f"{source}: not a .sinr file (bad magic bytes)")
    _, major, minor, head_len = _PREFIX.unpack_from(mv)
    if major > MAJOR:
        raise FormatError(
            f"{source}: .sinr format version {major}.{minor} is newer than this "
            f"sciinr reads ({MAJOR}.{MINOR}); upgrade sciinr"
        )
    if major < 1:
        raise FormatError(f"{source}: unknown .sinr format version {major}.{minor}")
    end = _PREFIX.size + head_len
    if head_len > MAX_HEADER or end + 4 > len(mv):
        raise FormatError(
            f"{source}: truncated .sinr file (header of {head_len} bytes, file of {len(mv)})"
        )
    (crc,) = struct.unpack_from("<I", mv, end)
    if zlib.crc32(mv[:end]) != crc:
        raise FormatError(f"{source}: corrupted header (checksum mismatch)")
    try:
        header = json.loads(bytes(mv[_PREFIX.size : end]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{source}: corrupted header (not JSON)") from None
    if not isinstance(header, dict) or not isinstance(header.get("sections"), list):
        raise FormatError(f"{source}: corrupted header (no section table)")
    table = header.pop("sections")
    base = end + 4
    if len(table) > MAX_SECTIONS:
        raise FormatError(f"{source}: corrupted header ({len(table)} sections)")
    sections: dict[str, bytes] = {}
    expected = 0
    for entry in table:
        try:
            name, off, length, sum32 = (
                entry["name"],
                entry["offset"],
                entry["length"],
                entry["crc32"],
            )
        except (KeyError, TypeError):
            raise FormatError(f"{source}: corrupted header (bad section entry)") from None
        if not (
            isinstance(name, str)
            and _NAME.match(name)
            and name not in sections
            and all(type(x) is int for x in (off, length, sum32))
            and off == expected
            and length >= 0
        ):
            raise FormatError(f"{source}: corrupted header (bad section entry {name!r})")
        expected = off + length
        if base + expected > len(mv):
            raise FormatError(
                f"{source}: truncated .sinr file (section {name!r} ends at byte "
                f"{base + expected}, file has {len(mv)})"
            )
        chunk = bytes(mv[base + off : base + expected])
        if zlib.crc32(chunk) != sum32:
            raise FormatError(f"{source}: corrupted section {name!r} (checksum mismatch)")
        sections[name] = chunk
    if base + expected != len(mv):
        raise FormatError(
            f"{source}: {len(mv) - base - expected} unexpected bytes after the last section"
        )
    return header, sections
