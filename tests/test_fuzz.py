"""Corrupted, truncated, crafted and fuzzed ``.sinr`` bytes through the public decode path.

The only exception the decoder may raise on bad bytes is :class:`sciinr.FormatError`; every
test here goes through ``sciinr.open``/``sciinr.info``/``sciinr.decompress`` so that it
covers whatever sections the current encoder writes. The long campaign is
``benchmarks/fuzz.py``.
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import sciinr
from sciinr import FormatError, InputError
from sciinr.stages import container

from .conftest import micro, smooth_field

DETECTED = r"corrupted|truncated|not a \.sinr|version|empty file"
DECODE_LIMIT = 1 << 16  # values; a (crafted) larger field is only decoded in one corner
_PREFIX = struct.Struct("<8sHHI")


def _tiny_config() -> sciinr.Config:
    return micro()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_sinr() -> bytes:
    """A small valid file with fitted and trivial blocks."""
    field = smooth_field(t=2, z=4, y=8, x=8)
    field[:, :, :4, :4] = 5.0  # constant corner: trivial blocks
    return sciinr.compress(field, config=_tiny_config())


@pytest.fixture(scope="module")
def residual_sinr() -> bytes:
    """A small valid file with an error-bound residual layer and no networks."""
    field = smooth_field(t=2, z=4, y=8, x=8)
    cfg = _tiny_config().replace(**{"bound.max_error": 0.05, "bound.split": (0,)})
    return sciinr.compress(field, config=cfg)


@pytest.fixture(scope="module")
def samples(small_sinr, residual_sinr) -> dict[str, bytes]:
    return {"networks": small_sinr, "residual": residual_sinr}


@pytest.fixture(scope="module")
def constant_sinr() -> bytes:
    return sciinr.compress(np.full((3, 5, 7), 2.5, np.float32))


# ------------------------------------------------------------------ helpers


def _split(blob: bytes) -> tuple[dict, bytes]:
    head_len = _PREFIX.unpack_from(blob)[3]
    end = _PREFIX.size + head_len
    return json.loads(blob[_PREFIX.size : end]), blob[end + 4 :]


def _seal(header_text: bytes, payload: bytes, major: int = 1, minor: int = 0) -> bytes:
    prefix = _PREFIX.pack(container.MAGIC, major, minor, len(header_text)) + header_text
    return prefix + struct.pack("<I", zlib.crc32(prefix)) + payload


def _reseal(header: dict, payload: bytes, major: int = 1, minor: int = 0) -> bytes:
    """Re-pack with every CRC-32 recomputed, so that a mutation gets past the checksums."""
    table = header.get("sections") if isinstance(header, dict) else None
    for entry in table if isinstance(table, list) else []:
        if isinstance(entry, dict):
            off, length = entry.get("offset"), entry.get("length")
            if type(off) is int and type(length) is int and off >= 0 and length >= 0:
                entry["crc32"] = zlib.crc32(payload[off : off + length])
    return _seal(json.dumps(header).encode(), payload, major, minor)


def _sections(header: dict, payload: bytes) -> dict[str, bytes]:
    return {e["name"]: payload[e["offset"] : e["offset"] + e["length"]] for e in header["sections"]}


def _decode_or_format_error(blob: bytes) -> str:
    """Decode through the public API; only FormatError is allowed, and results must be sane."""
    try:
        arr = sciinr.open(blob, device="cpu")
        meta = sciinr.info(blob)
        n = math.prod(arr.shape)
        if n <= DECODE_LIMIT:
            out = sciinr.decompress(blob, device="cpu")
            expect = arr.shape
        else:
            key = tuple(slice(0, 2) for _ in arr.shape)
            out = arr[key]
            expect = tuple(min(2, s) for s in arr.shape)
    except FormatError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"message on more than one line: {exc!r}") from None
        return "format_error"
    assert out.shape == expect
    assert out.dtype == arr.dtype
    assert np.isfinite(out).all()
    assert meta["shape"] == list(arr.shape)
    return "decoded"


# ------------------------------------------------------------------ exhaustive corruption


@pytest.mark.parametrize("sample", ["networks", "residual"])
def test_every_single_byte_flip_is_detected(samples, sample):
    rng = np.random.default_rng(0)
    blob = samples[sample]
    assert len(blob) < 4000
    for i in range(len(blob)):
        for mask in (0xFF, int(rng.integers(1, 255))):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises(FormatError, match=DETECTED):
                sciinr.decompress(bytes(bad))


@pytest.mark.parametrize("sample", ["networks", "residual"])
def test_every_truncation_and_extension_is_detected(samples, sample):
    blob = samples[sample]
    for n in range(len(blob)):
        with pytest.raises(FormatError, match=DETECTED):
            sciinr.open(blob[:n])
    for extra in (b"\0", b"garbage", blob):
        with pytest.raises(FormatError, match="unexpected bytes"):
            sciinr.decompress(blob + extra)


def test_corruption_names_the_section(small_sinr):
    header, payload = _split(small_sinr)
    for entry in header["sections"]:
        if entry["length"] == 0:
            continue
        bad = bytearray(small_sinr)
        bad[len(small_sinr) - len(payload) + entry["offset"]] ^= 0x10
        with pytest.raises(FormatError, match=f"corrupted section '{entry['name']}'"):
            sciinr.decompress(bytes(bad))
    bad = bytearray(small_sinr)
    bad[_PREFIX.size + 3] ^= 0x10
    with pytest.raises(FormatError, match="corrupted header"):
        sciinr.info(bytes(bad))


def test_versions(small_sinr):
    _, payload = _split(small_sinr)
    text = small_sinr[_PREFIX.size : len(small_sinr) - len(payload) - 4]
    newer_minor = _seal(text, payload, container.MAJOR, container.MINOR + 1)
    np.testing.assert_array_equal(sciinr.decompress(newer_minor), sciinr.decompress(small_sinr))
    assert sciinr.info(newer_minor)["format_version"] == f"{container.MAJOR}.{container.MINOR + 1}"
    newer = rf"version {container.MAJOR + 1}\.0 is newer .* upgrade sciinr"
    with pytest.raises(FormatError, match=newer):
        sciinr.open(_seal(text, payload, container.MAJOR + 1, 0))
    with pytest.raises(FormatError, match=r"unknown \.sinr format version 0\.0"):
        sciinr.open(_seal(text, payload, 0, 0))


# ------------------------------------------------------------------ crafted headers


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 100_000,  # nesting deeper than the JSON reader's recursion limit
        b'{"sections": [], "a": NaN}',
        b'{"sections": [], "a": Infinity}',
        b'{"sections": [], "a": 1e999}',
        b'{"sections": [], "sections": []}',  # duplicate key
        b'{"sections": [], "a": ' + b"9" * 5000 + b"}",  # beyond int() digit limit
        b'{"sections": [], "a": 18446744073709551616}',  # 2**64: beyond 64 bits
        b'{"sections": [], "a": "\xff"}',  # not UTF-8
        b"[]",
        b'"sections"',
        b"",
    ],
)
def test_crafted_header_text_is_refused(text):
    with pytest.raises(FormatError, match="corrupted header"):
        sciinr.decompress(_seal(text, b""))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("shape", [2, 4, 8]),  # disagrees with the model shape
        ("shape", [2, 4, 8, 8, 1]),
        ("shape", [2, 4, 8, 8.0]),
        ("shape", [2, 4, 8, True]),
        ("dims", ["t", "z", "y"]),
        ("dims", ["t", "z", "y", ""]),
        ("has_time", 1),
        ("has_time", False),
        ("dtype", "int8"),
        ("dtype", "object"),
        ("variable", ""),
        ("variable", None),
        ("attrs", {"a": {"b": 1}}),
        ("attrs", []),
        ("value_range", [0, "x"]),
        ("psnr", "40"),
        ("config", [1]),
        ("model", None),
    ],
)
def test_crafted_field_header_is_refused(small_sinr, key, value):
    header, payload = _split(small_sinr)
    header[key] = value
    with pytest.raises(FormatError, match="corrupted header"):
        sciinr.info(_reseal(header, payload))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("model", "shape4"), [2, 4, 8, 2**31 + 1]),
        (("model", "block"), [2, 4, 4, 0]),
        (("model", "block"), [2, 4, 4, 16]),  # larger than the field
        (("model", "net", "n_nets"), 10**6),
        (("model", "net", "width"), 2**40),
        (("model", "net", "omega0"), 10**400),
        (("model", "net", "omega0"), -1.0),
        (("model", "net", "latent_dim"), -1),
        (("model", "params_dtype"), "float64"),
        (("model", "consts", "step"), 0.0),
        (("model", "consts", "base"), 10**400),
        (("model", "consts"), None),
    ],
)
def test_crafted_model_header_is_refused(small_sinr, path, value):
    header, payload = _split(small_sinr)
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(FormatError, match="corrupted header"):
        sciinr.decompress(_reseal(header, payload))


def test_section_sizes_are_checked_before_allocating(small_sinr):
    """Header claims ~70 MB of network parameters that ~1 kB of sections cannot hold."""
    header, payload = _split(small_sinr)
    header["model"]["net"].update(width=1024, depth=16)
    blob = _reseal(header, payload)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="corrupted"):
            sciinr.decompress(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_section_table_entries_are_checked(small_sinr):
    header, payload = _split(small_sinr)
    first = header["sections"][0]
    for change in (
        {"offset": 1},
        {"length": -1},
        {"length": 10**9},
        {"name": "Bad name"},
        {"name": header["sections"][1]["name"]},
        {"crc32": 2**32},
        {"extra": 1},
    ):
        bad = json.loads(json.dumps(header))
        bad["sections"][0] = {**first, **change}
        blob = _reseal(bad, payload) if "crc32" not in change else None
        if blob is None:
            text = json.dumps(bad).encode()
            blob = _seal(text, payload)
        with pytest.raises(FormatError, match=r"corrupted|truncated"):
            sciinr.open(blob)


def test_parameters_that_overflow_float32_are_refused(small_sinr):
    """Found by the fuzzer: a finite but huge latent scale overflowed float32 in decoding."""
    import zstandard

    header, payload = _split(small_sinr)
    sections = _sections(header, payload)
    if "latent_scale" not in sections:
        pytest.skip("this encoder writes no latent_scale section")
    scale = np.frombuffer(zstandard.ZstdDecompressor().decompress(sections["latent_scale"]), "<f4")
    scale = scale.copy()
    scale[len(scale) // 2 :] = 3e38  # every latent step
    sections["latent_scale"] = zstandard.ZstdCompressor().compress(scale.tobytes())
    rest = {k: v for k, v in header.items() if k != "sections"}
    with pytest.raises(FormatError, match="corrupted"):
        sciinr.decompress(container.pack(rest, sections))


def test_block_constants_that_overflow_float32_are_refused(small_sinr):
    """Found by the campaign: a huge ``consts.step`` overflowed the float32 cast of lo/hi."""
    header, payload = _split(small_sinr)
    if not isinstance(header["model"].get("consts"), dict):
        pytest.skip("this encoder writes no block-constant grid")
    header["model"]["consts"]["step"] = 1e299
    with pytest.raises(FormatError, match="corrupted"):
        sciinr.decompress(_reseal(header, payload))


@pytest.mark.parametrize("key", ["max_error", "step"])
def test_huge_integers_in_the_residual_header_are_refused(residual_sinr, key):
    """Found while fuzzing: ``residual._meta_float`` raised OverflowError on 10**400."""
    header, payload = _split(residual_sinr)
    header["residual"][key] = 10**400
    with pytest.raises(FormatError, match="corrupted header"):
        sciinr.decompress(_reseal(header, payload))


def test_huge_constant_field_is_refused_before_allocating(constant_sinr):
    header, payload = _split(constant_sinr)
    header["shape"] = [4096, 4096, 4096]  # 2**36 values, 256 GB of float32, one block
    header["model"]["shape4"] = [1, 4096, 4096, 4096]
    header["model"]["block"] = [1, 4096, 4096, 4096]
    blob = _reseal(header, payload)
    arr = sciinr.open(blob)
    assert sciinr.info(blob)["shape"] == [4096, 4096, 4096]
    np.testing.assert_array_equal(arr[5, 7, :3], np.full(3, 2.5, np.float32))  # lazy decode
    with pytest.raises(InputError, match="does not fit in memory"):
        sciinr.decompress(blob)


# ------------------------------------------------------------------ hypothesis fuzz

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


def _paths(obj: object, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*path, i))
    return out


_FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    # no "explain" phase: it imports libcst, whose DeprecationWarning is an error here
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_FUZZ
@given(data=st.data())
def test_fuzz_raw_bytes(samples, data):
    """Byte replacements, insertions, deletions; half of them resealed past the CRCs."""
    blob = bytearray(samples[data.draw(st.sampled_from(sorted(samples)))])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(blob) - 1))
        if op == "set":
            blob[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del blob[pos : pos + data.draw(st.integers(1, 16))]
    if data.draw(st.booleans()) and len(blob) > _PREFIX.size + 4:
        end = _PREFIX.size + _PREFIX.unpack_from(blob)[3]
        if end + 4 <= len(blob):
            blob[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(blob[:end])))
    _decode_or_format_error(bytes(blob))


@_FUZZ
@given(data=st.data())
def test_fuzz_header_values(samples, data):
    """One value of the JSON header replaced (or deleted), all checksums recomputed."""
    header, payload = _split(samples[data.draw(st.sampled_from(sorted(samples)))])
    path = data.draw(st.sampled_from(_paths(header)))
    node = header
    for key in path[:-1]:
        node = node[key]
    if isinstance(node, dict) and data.draw(st.booleans()):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(JSON_VALUES)
    _decode_or_format_error(_reseal(header, payload))


@_FUZZ
@given(data=st.data())
def test_fuzz_section_contents(samples, data):
    """The decompressed content of one section changed and recompressed, checksums fixed."""
    import zstandard

    header, payload = _split(samples[data.draw(st.sampled_from(sorted(samples)))])
    sections = _sections(header, payload)
    name = data.draw(st.sampled_from(sorted(sections)))
    try:
        raw = bytearray(zstandard.ZstdDecompressor().decompress(sections[name]))
        zipped = True
    except zstandard.ZstdError:  # a section that is not one zstd frame: mutate its bytes
        raw, zipped = bytearray(sections[name]), False
    if raw:
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            word = data.draw(
                st.sampled_from(
                    [b"\x00\x7c", b"\x00\xfe", b"\xff\x7b", b"\x00\x00\x80\x7f", b"\xff"]
                )
                | st.binary(min_size=1, max_size=4)
            )
            raw[pos : pos + len(word)] = word
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    sections[name] = zstandard.ZstdCompressor().compress(bytes(raw)) if zipped else bytes(raw)
    rest = {k: v for k, v in header.items() if k != "sections"}
    _decode_or_format_error(container.pack(rest, sections))
