"""An independent reader of the plaid file format, version 1, written from
docs/FORMAT.md alone (standard library only), checked against the golden files.

For every ``*.plaid`` file in ``tests/golden/`` it parses the preamble, checks the
magic, the version, the flags and both CRC-32C values, decodes the protobuf header
with its own wire-format decoder, applies every validation rule of the reader, the
layout rules of the writer, and the block checksums of every tensor, and compares
names, dtypes, shapes, the SHA-256 of each tensor's bytes and the metadata with
``tests/golden/golden.json``. Damaged copies of a golden file must be refused.

``PLAID_GOLDEN_DIR`` points the test at another directory of files with its own
``golden.json``.
"""

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

GOLDEN_DIR = Path(
    os.environ.get("PLAID_GOLDEN_DIR")
    or Path(__file__).resolve().parents[1] / "golden"
)


def golden_files():
    return sorted(GOLDEN_DIR.glob("*.plaid"))


# ---------------------------------------------------------------------------
# Constants of the specification.

MAGIC = b"\x89PLAID\r\n\x1a\n"
VERSION = 1
PREAMBLE_LEN = 32
MAX_HEADER_LEN = 256 * 1024 * 1024
MAX_TENSORS = 1 << 20
MAX_METADATA_ENTRIES = 1 << 16
MAX_RANK = 64
MAX_NAME_LEN = 65535
MIN_ALIGNMENT, MAX_ALIGNMENT = 4096, 1 << 30
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 4096, 1 << 30
U64_MAX = (1 << 64) - 1

# id: (short name, bytes per element)
DTYPES = {
    1: ("bool", 1),
    2: ("u8", 1),
    3: ("i8", 1),
    4: ("i16", 2),
    5: ("u16", 2),
    6: ("i32", 4),
    7: ("u32", 4),
    8: ("i64", 8),
    9: ("u64", 8),
    10: ("f16", 2),
    11: ("bf16", 2),
    12: ("f32", 4),
    13: ("f64", 8),
    14: ("c32", 4),
    15: ("c64", 8),
    16: ("c128", 16),
    17: ("f8_e4m3fn", 1),
    18: ("f8_e4m3fnuz", 1),
    19: ("f8_e5m2", 1),
    20: ("f8_e5m2fnuz", 1),
    21: ("f8_e8m0fnu", 1),
    22: ("f4_e2m1fn_x2", 1),
}


class FormatError(Exception):
    """The file is malformed, truncated or not a plaid file."""


class UnsupportedError(Exception):
    """A valid file that uses something this reader does not know."""


class ChecksumError(Exception):
    """Tensor data does not match its block CRC-32C."""


# ---------------------------------------------------------------------------
# CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, init and xorout 0xFFFFFFFF.


def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def align_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


# ---------------------------------------------------------------------------
# Protobuf wire format: decoding.

WT_VARINT, WT_I64, WT_LEN, WT_SGROUP, WT_EGROUP, WT_I32 = 0, 1, 2, 3, 4, 5


def read_varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise FormatError("truncated varint")
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise FormatError("varint overflows 64 bits")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FormatError("varint longer than 10 bytes")


def iter_fields(buf, pos=0, end=None):
    """Yield (field number, wire type, value) of one message. A varint is an int,
    fixed32/fixed64 are ints, length-delimited is a memoryview."""
    if end is None:
        end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0 or field > 0x1FFFFFFF:
            raise FormatError(f"invalid field number {field}")
        if wire == WT_VARINT:
            value, pos = read_varint(buf, pos, end)
        elif wire == WT_I64:
            if pos + 8 > end:
                raise FormatError("truncated fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == WT_I32:
            if pos + 4 > end:
                raise FormatError("truncated fixed32")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == WT_LEN:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise FormatError("length-delimited field runs past its message")
            value = memoryview(buf)[pos : pos + length]
            pos += length
        elif wire == WT_SGROUP:
            pos = _skip_group(buf, pos, end, field)
            continue  # groups are never part of the header: skipped as unknown
        else:
            raise FormatError(f"unexpected wire type {wire}")
        yield field, wire, value


def _skip_group(buf, pos, end, field):
    while True:
        key, pos = read_varint(buf, pos, end)
        f, wire = key >> 3, key & 7
        if wire == WT_EGROUP:
            if f != field:
                raise FormatError("mismatched end group")
            return pos
        if wire == WT_VARINT:
            _, pos = read_varint(buf, pos, end)
        elif wire == WT_I64:
            pos += 8
        elif wire == WT_I32:
            pos += 4
        elif wire == WT_LEN:
            n, pos = read_varint(buf, pos, end)
            pos += n
        elif wire == WT_SGROUP:
            pos = _skip_group(buf, pos, end, f)
        else:
            raise FormatError(f"unexpected wire type {wire}")
        if pos > end:
            raise FormatError("truncated group")


def _expect(wire, wanted, what):
    if wire != wanted:
        raise FormatError(f"{what}: wire type {wire}, expected {wanted}")


def _string(value, what):
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid UTF-8") from None


def _repeated_varints(wire, value, out, what):
    if wire == WT_VARINT:
        out.append(value)
    elif wire == WT_LEN:  # packed
        pos, end = 0, len(value)
        while pos < end:
            v, pos = read_varint(value, pos, end)
            out.append(v)
    else:
        raise FormatError(f"{what}: wire type {wire}")


def _repeated_fixed32(wire, value, out, what):
    if wire == WT_I32:
        out.append(value)
    elif wire == WT_LEN:  # packed
        if len(value) % 4:
            raise FormatError(f"{what}: packed length {len(value)} not a multiple of 4")
        out.extend(struct.unpack(f"<{len(value) // 4}I", value))
    else:
        raise FormatError(f"{what}: wire type {wire}")


def _int32(v):
    """A varint read as a protobuf int32 (an enum): the low 32 bits, signed."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def decode_tensor(buf):
    t = {"name": "", "dtype": 0, "shape": [], "offset": 0, "length": 0, "block_crc32c": []}
    for field, wire, value in iter_fields(buf):
        if field == 1:
            _expect(wire, WT_LEN, "Tensor.name")
            t["name"] = _string(value, "tensor name")
        elif field == 2:
            _expect(wire, WT_VARINT, "Tensor.dtype")
            t["dtype"] = _int32(value)
        elif field == 3:
            _repeated_varints(wire, value, t["shape"], "Tensor.shape")
        elif field == 4:
            _expect(wire, WT_VARINT, "Tensor.offset")
            t["offset"] = value
        elif field == 5:
            _expect(wire, WT_VARINT, "Tensor.length")
            t["length"] = value
        elif field == 6:
            _repeated_fixed32(wire, value, t["block_crc32c"], "Tensor.block_crc32c")
        # unknown fields are ignored
    return t


def decode_map_entry(buf):
    key, value = "", ""
    for field, wire, v in iter_fields(buf):
        if field == 1:
            _expect(wire, WT_LEN, "metadata key")
            key = _string(v, "metadata key")
        elif field == 2:
            _expect(wire, WT_LEN, "metadata value")
            value = _string(v, "metadata value")
    return key, value


def decode_header(buf):
    h = {
        "alignment": 0,
        "checksum_block_size": 0,
        "data_offset": 0,
        "file_length": 0,
        "tensors": [],
        "metadata": {},
        "writer": "",
    }
    scalar = {1: "alignment", 2: "checksum_block_size", 3: "data_offset", 4: "file_length"}
    entries = 0
    for field, wire, value in iter_fields(buf):
        if field in scalar:
            _expect(wire, WT_VARINT, scalar[field])
            h[scalar[field]] = value
        elif field == 5:
            _expect(wire, WT_LEN, "Header.tensors")
            if len(h["tensors"]) >= MAX_TENSORS:
                raise FormatError("more than MAX_TENSORS tensors")
            h["tensors"].append(decode_tensor(value))
        elif field == 6:
            _expect(wire, WT_LEN, "Header.metadata")
            entries += 1
            if entries > MAX_METADATA_ENTRIES:
                raise FormatError("more than MAX_METADATA_ENTRIES metadata entries")
            k, v = decode_map_entry(value)
            h["metadata"][k] = v  # a repeated key: the last one wins
        elif field == 7:
            _expect(wire, WT_LEN, "Header.writer")
            h["writer"] = _string(value, "writer")
    return h


# ---------------------------------------------------------------------------
# Protobuf wire format: canonical encoding (the writer's choices in FORMAT.md).


def enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return enc_varint(field << 3 | wire)


def _len_field(field, payload):
    return _key(field, WT_LEN) + enc_varint(len(payload)) + payload


def _uint_field(field, v):
    return _key(field, WT_VARINT) + enc_varint(v) if v else b""


def encode_tensor(t):
    out = b""
    if t["name"]:
        out += _len_field(1, t["name"].encode())
    if t["dtype"]:
        out += _uint_field(2, t["dtype"] & U64_MAX)
    if t["shape"]:
        out += _len_field(3, b"".join(enc_varint(d) for d in t["shape"]))
    out += _uint_field(4, t["offset"])
    out += _uint_field(5, t["length"])
    if t["block_crc32c"]:
        out += _len_field(6, struct.pack(f"<{len(t['block_crc32c'])}I", *t["block_crc32c"]))
    return out


def encode_header(h):
    out = b""
    out += _uint_field(1, h["alignment"])
    out += _uint_field(2, h["checksum_block_size"])
    out += _uint_field(3, h["data_offset"])
    out += _uint_field(4, h["file_length"])
    for t in h["tensors"]:
        out += _len_field(5, encode_tensor(t))
    for k in sorted(h["metadata"], key=lambda s: s.encode()):
        v = h["metadata"][k]
        entry = (_len_field(1, k.encode()) if k else b"") + (
            _len_field(2, v.encode()) if v else b""
        )
        out += _len_field(6, entry)
    if h["writer"]:
        out += _len_field(7, h["writer"].encode())
    return out


def encode_preamble(header_bytes, version=VERSION, flags=0):
    head = MAGIC + struct.pack("<HIQI", version, crc32c(header_bytes), len(header_bytes), flags)
    return head + struct.pack("<I", crc32c(head))


# ---------------------------------------------------------------------------
# The reader: validation in the order of FORMAT.md, "Reading a file".


def check_text(text, what):
    raw = text.encode("utf-8")
    if not raw:
        raise FormatError(f"empty {what}")
    if len(raw) > MAX_NAME_LEN:
        raise FormatError(f"{what} of {len(raw)} bytes exceeds {MAX_NAME_LEN}")
    if b"\0" in raw:
        raise FormatError(f"{what} contains a NUL byte")


def read_index(data):
    """Validate the preamble and header of ``data`` (the whole file); return the
    decoded header. Data blocks are checked by ``verify_tensor``."""
    file_len = len(data)
    if file_len < PREAMBLE_LEN:
        raise FormatError("shorter than the preamble")
    if data[:10] != MAGIC:
        raise FormatError("bad magic")
    version, header_crc, header_len, flags, preamble_crc = struct.unpack_from("<HIQII", data, 10)
    if crc32c(data[:28]) != preamble_crc:
        raise FormatError("preamble checksum mismatch")
    if version != VERSION:
        raise UnsupportedError(f"version {version}")
    if flags != 0:
        raise UnsupportedError(f"flags {flags:#x}")
    if header_len > MAX_HEADER_LEN:
        raise FormatError("header too long")
    header_end = PREAMBLE_LEN + header_len
    if header_end > file_len:
        raise FormatError("truncated inside the header")
    header_bytes = data[PREAMBLE_LEN:header_end]
    if crc32c(header_bytes) != header_crc:
        raise FormatError("header checksum mismatch")
    h = decode_header(header_bytes)

    alignment = h["alignment"]
    if alignment & (alignment - 1) or not MIN_ALIGNMENT <= alignment <= MAX_ALIGNMENT:
        raise FormatError(f"alignment {alignment}")
    block = h["checksum_block_size"]
    if block & (block - 1) or not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE:
        raise FormatError(f"checksum block size {block}")
    if (
        h["data_offset"] < header_end
        or h["data_offset"] % alignment
        or h["data_offset"] > h["file_length"]
    ):
        raise FormatError(f"data offset {h['data_offset']}")
    if h["file_length"] > file_len:
        raise FormatError("truncated: file shorter than file_length")
    if h["file_length"] < file_len:
        raise FormatError("bytes after file_length")
    if len(h["tensors"]) > MAX_TENSORS:
        raise FormatError("too many tensors")
    for k, v in h["metadata"].items():
        check_text(k, "metadata key")
        if "\0" in v:
            raise FormatError("metadata value contains a NUL byte")

    names = set()
    previous_end = h["data_offset"]
    for t in h["tensors"]:
        check_text(t["name"], "tensor name")
        if t["name"] in names:
            raise FormatError(f"duplicate name {t['name']!r}")
        names.add(t["name"])
        if t["dtype"] not in DTYPES:
            raise UnsupportedError(f"dtype id {t['dtype']}")
        if len(t["shape"]) > MAX_RANK:
            raise FormatError("rank")
        nbytes = DTYPES[t["dtype"]][1]
        for dim in t["shape"]:  # every non-zero dimension counts, wherever a zero stands
            if dim:
                nbytes *= dim
        if nbytes > U64_MAX:
            raise FormatError("shape overflows 64 bits")
        if 0 in t["shape"]:
            nbytes = 0
        if nbytes != t["length"]:
            raise FormatError("length does not match shape")
        if t["offset"] % alignment or t["offset"] < previous_end:
            raise FormatError("offset unaligned, out of order or overlapping")
        end = t["offset"] + nbytes
        if end > U64_MAX or end > file_len:
            raise FormatError("data runs past the end of the file")
        if len(t["block_crc32c"]) != -(-nbytes // block):
            raise FormatError("wrong number of block checksums")
        previous_end = end
    return h


def verify_tensor(data, h, t):
    """Check every block of ``t`` against its CRC-32C; return the tensor's bytes."""
    block = h["checksum_block_size"]
    body = data[t["offset"] : t["offset"] + t["length"]]
    for i, expected in enumerate(t["block_crc32c"]):
        if crc32c(body[i * block : (i + 1) * block]) != expected:
            raise ChecksumError(f"tensor {t['name']!r} block {i}")
    return body


def read_file(data):
    """Validate everything, data included; return (header, {name: bytes})."""
    h = read_index(data)
    return h, {t["name"]: verify_tensor(data, h, t) for t in h["tensors"]}


def check_writer_layout(data, h):
    """The layout rules that the writer follows beyond what a reader must accept."""
    header_len = struct.unpack_from("<Q", data, 16)[0]
    alignment = h["alignment"]
    assert h["data_offset"] == align_up(PREAMBLE_LEN + header_len, alignment)
    cursor = h["data_offset"]
    zero_ranges = []
    for t in h["tensors"]:
        assert t["offset"] == align_up(cursor, alignment), t["name"]
        zero_ranges.append((cursor, t["offset"]))
        cursor = t["offset"] + t["length"]
    assert h["file_length"] == cursor
    zero_ranges.insert(0, (PREAMBLE_LEN + header_len, h["data_offset"]))
    for start, end in zero_ranges:
        assert data[start:end] == bytes(end - start), f"padding {start}..{end} is not zero"
    assert struct.unpack_from("<I", data, 24)[0] == 0
    # Canonical encoding: re-encoding the decoded header gives the same bytes.
    assert encode_header(h) == data[PREAMBLE_LEN : PREAMBLE_LEN + header_len]


# ---------------------------------------------------------------------------
# Tests.


def load_expectations():
    path = GOLDEN_DIR / "golden.json"
    assert path.is_file(), f"{path} is missing"
    return json.loads(path.read_text(encoding="utf-8"))["files"]


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_varint_round_trip():
    for v in (0, 1, 127, 128, 300, 4096, 1 << 32, U64_MAX):
        assert read_varint(enc_varint(v), 0, len(enc_varint(v))) == (v, len(enc_varint(v)))


def test_golden_files_exist_and_are_all_recorded():
    files = golden_files()
    assert files, f"no .plaid files in {GOLDEN_DIR}"
    expected = load_expectations()
    assert sorted(expected) == sorted(p.name for p in files)


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.name)
def test_golden_file(path):
    data = path.read_bytes()
    expected = load_expectations()[path.name]

    assert data[:10] == MAGIC
    assert struct.unpack_from("<H", data, 10)[0] == VERSION
    h, tensors = read_file(data)
    check_writer_layout(data, h)

    assert h["metadata"] == expected["metadata"]
    assert [t["name"] for t in h["tensors"]] == [t["name"] for t in expected["tensors"]]
    for t, want in zip(h["tensors"], expected["tensors"]):
        assert DTYPES[t["dtype"]][0] == want["dtype"], t["name"]
        assert t["shape"] == want["shape"], t["name"]
        assert hashlib.sha256(tensors[t["name"]]).hexdigest() == want["sha256"], t["name"]


def test_every_dtype_name_is_known():
    names = {DTYPES[i][0] for i in DTYPES}
    for f in load_expectations().values():
        for t in f["tensors"]:
            assert t["dtype"] in names


# Damaged copies of a golden file must be refused.


def _sample():
    """The golden file with the most tensor data (for data damage tests)."""
    files = golden_files()
    assert files, f"no .plaid files in {GOLDEN_DIR}"
    best = None
    for p in files:
        data = p.read_bytes()
        h = read_index(data)
        size = sum(t["length"] for t in h["tensors"])
        if best is None or size > best[0]:
            best = (size, p, data, h)
    assert best[0] > 0, "no golden file holds tensor data"
    return best[1], best[2], best[3]


def _damaged(tmp_path, data):
    path = tmp_path / "damaged.plaid"
    path.write_bytes(bytes(data))
    return path.read_bytes()


def rebuild(h, data, encoder=encode_header, version=VERSION, flags=0, size_change=0):
    """A copy of file ``data`` whose header is ``h`` (some field changed), with both
    checksums correct. The data region is moved by whole alignment units until the
    new header fits in front of it, so that only the change under test is wrong."""
    unit = max(h["alignment"], MIN_ALIGNMENT)
    shift = 0
    while True:
        g = json.loads(json.dumps(h))
        g["data_offset"] += shift
        g["file_length"] += shift
        for t in g["tensors"]:
            t["offset"] += shift
        header = encoder(g)
        if PREAMBLE_LEN + len(header) <= g["data_offset"] or g["data_offset"] < PREAMBLE_LEN:
            break
        shift += unit
    out = bytearray(max(g["file_length"] + size_change, 0))
    head = encode_preamble(header, version, flags) + header
    out[: len(head)] = head
    original = {t["name"]: t for t in read_index(data)["tensors"]}
    for t in g["tensors"]:
        o = original.get(t["name"])
        if o and len(head) <= t["offset"] and t["offset"] + o["length"] <= len(out):
            out[t["offset"] : t["offset"] + o["length"]] = data[o["offset"] : o["offset"] + o["length"]]
    return out


def test_flipped_data_bit_is_detected(tmp_path):
    _, data, h = _sample()
    t = max(h["tensors"], key=lambda t: t["length"])
    for where in (t["offset"], t["offset"] + t["length"] - 1):
        damaged = bytearray(data)
        damaged[where] ^= 0x10
        d = _damaged(tmp_path, damaged)
        read_index(d)  # the header is intact
        with pytest.raises(ChecksumError):
            read_file(d)


def test_flipped_header_bit_is_detected(tmp_path):
    _, data, _ = _sample()
    header_len = struct.unpack_from("<Q", data, 16)[0]
    for where in (PREAMBLE_LEN, PREAMBLE_LEN + header_len // 2, PREAMBLE_LEN + header_len - 1):
        damaged = bytearray(data)
        damaged[where] ^= 0x01
        with pytest.raises(FormatError, match="header checksum"):
            read_file(_damaged(tmp_path, damaged))


def test_flipped_preamble_bits_are_detected(tmp_path):
    _, data, _ = _sample()
    for where in range(PREAMBLE_LEN):
        damaged = bytearray(data)
        damaged[where] ^= 0x04
        with pytest.raises(FormatError):
            read_file(_damaged(tmp_path, damaged))


def test_text_mode_damage_is_detected(tmp_path):
    _, data, _ = _sample()
    for damaged in (
        data.replace(b"\r\n", b"\n", 1),
        data[:9] + b"\r\n" + data[10:],
        bytes([data[0] & 0x7F]) + data[1:],
    ):
        with pytest.raises(FormatError, match="magic"):
            read_file(_damaged(tmp_path, damaged))


def test_truncation_and_extension_are_detected(tmp_path):
    _, data, _ = _sample()
    header_len = struct.unpack_from("<Q", data, 16)[0]
    for length in (0, 31, PREAMBLE_LEN + header_len - 1, PREAMBLE_LEN + header_len, len(data) - 1):
        with pytest.raises(FormatError):
            read_file(_damaged(tmp_path, data[:length]))
    with pytest.raises(FormatError):
        read_file(_damaged(tmp_path, data + b"\0"))


def test_semantic_damage_with_valid_checksums_is_detected(tmp_path):
    _, data, h = _sample()
    # Unchanged, the rebuilt copy is the file itself.
    assert rebuild(h, data) == data

    def refused(mutate, error=FormatError, match=None, **kw):
        g = json.loads(json.dumps(h))
        mutate(g)
        with pytest.raises(error, match=match):
            read_index(_damaged(tmp_path, rebuild(g, data, **kw)))

    def setting(**changes):
        return lambda g: g.update(changes)

    refused(setting(), UnsupportedError, "version", version=2)
    refused(setting(), UnsupportedError, "version", version=0)
    refused(setting(), UnsupportedError, "flags", flags=1)
    refused(setting(alignment=2048), match="alignment")
    refused(setting(alignment=h["alignment"] * 3), match="alignment")
    refused(setting(alignment=MAX_ALIGNMENT * 2), match="alignment")
    refused(setting(checksum_block_size=2048), match="block size")
    refused(setting(checksum_block_size=MAX_BLOCK_SIZE * 2), match="block size")
    refused(setting(checksum_block_size=4096 + 512), match="block size")
    refused(setting(data_offset=h["data_offset"] + 1), match="data offset")
    refused(setting(data_offset=0), match="data offset")
    refused(setting(), match="truncated", size_change=-1)
    refused(setting(), match="after file_length", size_change=+1)
    refused(lambda g: g["metadata"].update({"": "x"}), match="empty metadata key")
    refused(lambda g: g["metadata"].update({"a\0b": "x"}), match="NUL")
    refused(lambda g: g["metadata"].update({"k": "a\0b"}), match="NUL")
    refused(lambda g: g["metadata"].update({"k" * (MAX_NAME_LEN + 1): "x"}), match="exceeds")
    # At the limit it is fine.
    g = json.loads(json.dumps(h))
    g["metadata"]["k" * MAX_NAME_LEN] = "x"
    assert read_index(rebuild(g, data))["metadata"]["k" * MAX_NAME_LEN] == "x"

    tensors = h["tensors"]
    big = max(range(len(tensors)), key=lambda i: tensors[i]["length"])
    last = len(tensors) - 1

    def on(i, **changes):
        return lambda g: g["tensors"][i].update(changes)

    refused(on(big, dtype=0), UnsupportedError, "dtype")
    refused(on(big, dtype=23), UnsupportedError, "dtype")
    refused(on(big, dtype=-1), UnsupportedError, "dtype")
    refused(on(big, name=""), match="empty tensor name")
    refused(on(big, name="a\0b"), match="NUL")
    refused(on(big, name="n" * (MAX_NAME_LEN + 1)), match="exceeds")
    refused(on(big, shape=[1] * (MAX_RANK + 1)), match="rank")
    refused(on(big, shape=[1 << 62, 1 << 62, 0], length=0), match="overflows")
    refused(on(big, shape=[0, 1 << 62, 1 << 62], length=0), match="overflows")
    refused(on(big, length=tensors[big]["length"] + 1), match="length")
    refused(on(big, offset=tensors[big]["offset"] + 1), match="offset")
    refused(on(big, offset=h["data_offset"] - h["alignment"]), match="offset")
    refused(on(big, block_crc32c=tensors[big]["block_crc32c"] + [0]), match="block checksums")
    refused(on(big, block_crc32c=tensors[big]["block_crc32c"][:-1]), match="block checksums")
    refused(on(last, offset=align_up(h["file_length"] + 1, h["alignment"])), match="past the end")
    if len(tensors) >= 2:
        refused(on(1, name=tensors[0]["name"]), match="duplicate")
        # Out of order: the first non-empty tensor moved after the last one.
        first = next(i for i in range(len(tensors)) if tensors[i]["length"] > 0)
        if first < last:
            refused(lambda g: g["tensors"].append(g["tensors"].pop(first)), match="order")
            # Overlap: the next tensor starts inside the first non-empty one.
            refused(on(first + 1, offset=tensors[first]["offset"]), match="overlap")


def test_other_encodings_of_the_same_header_are_accepted(tmp_path):
    """A reader must take any valid protobuf encoding: fields in another order,
    repeated scalars unpacked, unknown fields present."""
    _, data, h = _sample()

    def scrambled(g):
        out = b""
        if g["writer"]:
            out += _len_field(7, g["writer"].encode())
        for k, v in reversed(sorted(g["metadata"].items())):
            out += _len_field(6, _len_field(2, v.encode()) + _len_field(1, k.encode()))
        out += _key(4, WT_VARINT) + enc_varint(g["file_length"])
        out += _key(3, WT_VARINT) + enc_varint(g["data_offset"])
        out += _len_field(99, b"a field of a later version") + _uint_field(100, 7)
        for t in g["tensors"]:
            body = _key(5, WT_VARINT) + enc_varint(t["length"])
            body += _key(4, WT_VARINT) + enc_varint(t["offset"])
            body += b"".join(_key(3, WT_VARINT) + enc_varint(d) for d in t["shape"])
            body += b"".join(_key(6, WT_I32) + struct.pack("<I", c) for c in t["block_crc32c"])
            body += _key(2, WT_VARINT) + enc_varint(t["dtype"])
            body += _len_field(1, b"ignored") + _len_field(1, t["name"].encode())
            body += _key(98, WT_I64) + bytes(8) + _key(97, WT_I32) + bytes(4)
            out += _len_field(5, body)
        out += _key(2, WT_VARINT) + enc_varint(g["checksum_block_size"])
        out += _key(1, WT_VARINT) + enc_varint(1) + _key(1, WT_VARINT) + enc_varint(g["alignment"])
        return out

    rebuilt = rebuild(h, data, encoder=scrambled)
    h2, tensors = read_file(_damaged(tmp_path, rebuilt))
    shift = h2["data_offset"] - h["data_offset"]
    assert [t["offset"] - shift for t in h2["tensors"]] == [t["offset"] for t in h["tensors"]]
    for t in h2["tensors"]:
        t["offset"] -= shift
    h2.update(data_offset=h["data_offset"], file_length=h["file_length"])
    assert h2 == h
    assert tensors == read_file(data)[1]
