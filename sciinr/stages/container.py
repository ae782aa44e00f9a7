"""Container stage: header + named byte sections <-> ``.sinr`` bytes.

Layout (all integers little-endian; the normative text is ``docs/format.md``)::

    magic        8 bytes   b"\\x89SINR\\r\\n\\x1a"
    major        u16       format major version (a reader refuses a newer one)
    minor        u16       format minor version (additions a reader may ignore)
    header_len   u32       bytes of the JSON header
    header       UTF-8 JSON object; "sections" lists name, offset, length, crc32 of each section
    header_crc   u32       CRC-32 of every byte before it
    sections     the section bytes, back to back, offsets relative to the end of header_crc

Every length is checked against the file size and fixed caps before anything is allocated,
every byte is covered by a CRC-32, and the header is parsed by a strict JSON reader (no
NaN/Infinity, no duplicate keys). No pickle, no ``torch.load``, no ``eval``.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from typing import Any

from ..errors import FormatError

MAGIC = b"\x89SINR\r\n\x1a"
MAJOR = 2  # the newest version this reader reads; a file is written with the oldest that holds it
MINOR = 0
BASE_VERSION = (1, 0)  # a field without a mask
_PREFIX = struct.Struct("<8sHHI")
PREFIX_SIZE = _PREFIX.size  # 16
MAX_HEADER = 16 << 20  # bytes of JSON header
MAX_SECTIONS = 256
MAX_NAME = 1024  # characters of a variable or dimension name
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_OTHER_MAGICS = {
    b"\x89HDF\r\n\x1a\n": "an HDF5/NetCDF-4 file",
    b"CDF\x01": "a NetCDF-3 file",
    b"CDF\x02": "a NetCDF-3 file",
    b"CDF\x05": "a NetCDF-3 file",
    b"\x93NUMPY": "a .npy file",
    b"\x28\xb5\x2f\xfd": "a zstd stream",
}


def _head(
    header: dict[str, Any], sections: dict[str, bytes], version: tuple[int, int] = BASE_VERSION
) -> bytes:
    """The prefix and JSON header (with its section table) of a file of these sections."""
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"{len(sections)} sections exceed {MAX_SECTIONS}")
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
    if len(head) > MAX_HEADER:
        raise ValueError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    return _PREFIX.pack(MAGIC, *version, len(head)) + head


def pack(
    header: dict[str, Any],
    sections: dict[str, bytes],
    version: tuple[int, int] = BASE_VERSION,
) -> bytes:
    """Serialize a header (JSON types) and named sections into one ``.sinr`` byte string.

    ``version`` is the format version written: the oldest whose readers decode the file as
    intended (``docs/format.md``, part 6).
    """
    prefix = _head(header, sections, version)
    return b"".join([prefix, struct.pack("<I", zlib.crc32(prefix)), *sections.values()])


def packed_size(header: dict[str, Any], sections: dict[str, bytes]) -> int:
    """``len(pack(header, sections))``, computed without building the file."""
    return len(_head(header, sections)) + 4 + sum(len(v) for v in sections.values())


def is_sinr(data: bytes) -> bool:
    """True when the bytes start with the ``.sinr`` magic."""
    return data[: len(MAGIC)] == MAGIC


def version_of(data: bytes) -> tuple[int, int]:
    """(major, minor) of a ``.sinr`` byte string whose prefix :func:`unpack` accepted."""
    _, major, minor, _ = _PREFIX.unpack_from(data)
    return major, minor


def unpack(data: bytes, source: str = "<bytes>") -> tuple[dict[str, Any], dict[str, bytes]]:
    """Parse and verify a ``.sinr`` byte string.

    Returns
    -------
    header : dict
        The JSON header without its ``"sections"`` table.
    sections : dict of str to bytes
        Every section, in file order, each verified against its CRC-32.

    Raises
    ------
    FormatError
        Not a .sinr file, truncated, newer major version, or any checksum mismatch.
    """
    mv = memoryview(data)
    n = len(mv)
    if n == 0:
        raise FormatError(f"{source}: empty file (0 bytes), not a .sinr file")
    head8 = bytes(mv[:8])
    if head8 != MAGIC:
        if head8 == MAGIC[:n]:
            raise FormatError(f"{source}: truncated .sinr file ({n} bytes)")
        what = next((w for m, w in _OTHER_MAGICS.items() if head8.startswith(m)), None)
        raise FormatError(
            f"{source}: not a .sinr file (" + (f"it is {what})" if what else "bad magic bytes)")
        )
    if n < PREFIX_SIZE + 4:
        raise FormatError(f"{source}: truncated .sinr file ({n} bytes)")
    _, major, minor, head_len = _PREFIX.unpack_from(mv)
    if major > MAJOR:
        raise FormatError(
            f"{source}: .sinr format version {major}.{minor} is newer than this "
            f"sciinr reads ({MAJOR}.{MINOR}); upgrade sciinr"
        )
    if major < 1:
        raise FormatError(f"{source}: unknown .sinr format version {major}.{minor}")
    end = PREFIX_SIZE + head_len
    if head_len > MAX_HEADER:
        raise FormatError(
            f"{source}: corrupted .sinr file (header of {head_len} bytes is larger than the "
            f"{MAX_HEADER >> 20} MiB limit)"
        )
    if end + 4 > n:
        raise FormatError(
            f"{source}: truncated or corrupted .sinr file (header of {head_len} bytes, file of {n})"
        )
    (crc,) = struct.unpack_from("<I", mv, end)
    if zlib.crc32(mv[:end]) != crc:
        raise FormatError(f"{source}: corrupted header (checksum mismatch)")
    header = _strict_json(bytes(mv[PREFIX_SIZE:end]), source)
    if not isinstance(header, dict) or not isinstance(header.get("sections"), list):
        raise FormatError(f"{source}: corrupted header (no section table)")
    table = header.pop("sections")
    base = end + 4
    if len(table) > MAX_SECTIONS:
        raise FormatError(f"{source}: corrupted header ({len(table)} sections)")
    entries: list[tuple[str, int, int, int]] = []
    expected = 0
    for entry in table:
        if not isinstance(entry, dict) or set(entry) != {"name", "offset", "length", "crc32"}:
            raise FormatError(f"{source}: corrupted header (bad section entry)")
        name, off, length, sum32 = entry["name"], entry["offset"], entry["length"], entry["crc32"]
        if not (
            isinstance(name, str)
            and _NAME.match(name)
            and all(name != e[0] for e in entries)
            and all(type(x) is int for x in (off, length, sum32))
            and off == expected
            and length >= 0
            and 0 <= sum32 <= 0xFFFFFFFF
        ):
            raise FormatError(f"{source}: corrupted header (bad section entry {_short(name)})")
        expected = off + length
        if base + expected > n:
            raise FormatError(
                f"{source}: truncated .sinr file (section {name!r} ends at byte "
                f"{base + expected}, file has {n})"
            )
        entries.append((name, off, length, sum32))
    if base + expected != n:
        raise FormatError(
            f"{source}: corrupted .sinr file ({n - base - expected} unexpected bytes "
            "after the last section)"
        )
    sections: dict[str, bytes] = {}
    for name, off, length, sum32 in entries:
        chunk = mv[base + off : base + off + length]
        if zlib.crc32(chunk) != sum32:
            raise FormatError(f"{source}: corrupted section {name!r} (checksum mismatch)")
        sections[name] = bytes(chunk)
    return header, sections


def _strict_json(raw: bytes, source: str) -> Any:
    """RFC 8259 JSON only: no NaN/Infinity, no non-finite numbers, integers within 64 bits
    (so no reader of a header value can overflow converting it to float), no duplicate keys.
    """

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is not a finite number")
        return value

    def int64(text: str) -> int:
        value = int(text)
        if not -(1 << 63) <= value < 1 << 64:  # int64 or uint64 (e.g. an attribute)
            raise ValueError(f"integer {text[:20]}... outside 64 bits")
        return value

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("duplicate key")
        return out

    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=no_constant,
            parse_float=finite,
            parse_int=int64,
            object_pairs_hook=unique,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise FormatError(f"{source}: corrupted header (not valid JSON)") from None


def check_field_header(header: dict[str, Any], source: str = "<bytes>") -> None:
    """Check the field description of a header (``docs/format.md``, "Header keys").

    Only types and ranges are checked here; the ``model`` object is checked by the encode
    stage, and the agreement of ``shape`` with the model's ``shape4`` by the caller.

    Raises
    ------
    FormatError
        A required key is missing or holds a value of the wrong type or range.
    """

    def bad(key: str) -> FormatError:
        return FormatError(f"{source}: corrupted header (bad {key!r}: {_short(header.get(key))})")

    def name_ok(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= MAX_NAME and "\x00" not in v

    def number(v: Any) -> bool:
        return type(v) in (int, float) and math.isfinite(v)

    shape = header.get("shape")
    if not (
        isinstance(shape, list)
        and 2 <= len(shape) <= 4
        and all(type(s) is int and 1 <= s <= 1 << 31 for s in shape)
    ):
        raise bad("shape")
    dims = header.get("dims")
    if not (isinstance(dims, list) and len(dims) == len(shape) and all(map(name_ok, dims))):
        raise bad("dims")
    if not isinstance(header.get("has_time"), bool) or (len(shape) == 4 and not header["has_time"]):
        raise bad("has_time")
    if header.get("dtype") not in ("float32", "float64"):
        raise bad("dtype")
    if not name_ok(header.get("variable")):
        raise bad("variable")
    attrs = header.get("attrs")
    if not isinstance(attrs, dict) or not all(
        name_ok(k) and _attr_value_ok(v, 0) for k, v in attrs.items()
    ):
        raise bad("attrs")
    vr = header.get("value_range")
    if not (isinstance(vr, list) and len(vr) == 2 and all(map(number, vr))):
        raise bad("value_range")
    if header.get("psnr") is not None and not number(header.get("psnr")):
        raise bad("psnr")
    for key in ("sciinr", "source"):
        if not isinstance(header.get(key, ""), str):
            raise bad(key)
    if not isinstance(header.get("config"), dict):
        raise bad("config")
    if "model" in header and not isinstance(header["model"], dict):
        raise bad("model")
    if "base" in header and not isinstance(header["base"], dict):
        raise bad("base")
    if "model" not in header and "base" not in header:
        raise FormatError(f"{source}: corrupted header (neither 'model' nor 'base')")


def header_int(meta: dict[str, Any], key: str, lo: int, hi: int, what: str = "") -> int:
    """``meta[key]``, an integer (not a bool) in ``lo..hi``, or :class:`FormatError`.

    The one check of every integer a header entry holds (``what`` names the entry in the
    message, e.g. ``"residual "``).
    """
    v = meta.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise FormatError(f"corrupted header ({what}{key} = {v!r} not in {lo}..{hi})")
    return v


def header_float(
    meta: dict[str, Any], key: str, lo: float = -1e300, hi: float = 1e300, what: str = ""
) -> float:
    """``meta[key]``, a number (not a bool) in ``[lo, hi]``, as a float, or :class:`FormatError`.

    The default range keeps ``float(v)`` of a JSON integer such as ``10**400`` from
    overflowing.
    """
    v = meta.get(key)
    if type(v) not in (int, float) or not lo <= v <= hi:
        raise FormatError(f"corrupted header ({what}{key} = {v!r})")
    return float(v)


def _attr_value_ok(v: Any, depth: int) -> bool:
    """A string, number or bool, or a (nested, at most 8 deep) list of them."""
    if isinstance(v, str | int | float):  # bool is an int
        return True
    return isinstance(v, list) and depth < 8 and all(_attr_value_ok(x, depth + 1) for x in v)


def _short(value: Any) -> str:
    """``repr`` cut to 60 characters, for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
