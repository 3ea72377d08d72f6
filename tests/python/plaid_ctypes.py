"""The slice of plaid's C API these tests call, through ctypes, exactly as a C program
calls it."""

import ctypes
import os
import runpy
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
_TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
_BUILT = [p for p in (_TARGET / "debug" / "libplaid.so", _TARGET / "release" / "libplaid.so")
          if p.exists()]
# PLAID_LIB, else the newer of the debug and release builds.
LIB = Path(os.environ.get("PLAID_LIB") or
           (max(_BUILT, key=lambda p: p.stat().st_mtime) if _BUILT
            else _TARGET / "debug" / "libplaid.so"))
CLI = LIB.parent / "plaid"


# plaid._abi, the one ctypes declaration of plaid.h, loaded by path (the package need not
# be installed).
abi = types.SimpleNamespace(**runpy.run_path(
    str(ROOT / "bindings" / "python" / "plaid" / "_abi.py")))
PLAID_OK = abi.STATUS["PLAID_OK"]
PLAID_ERR_UNSUPPORTED = abi.STATUS["PLAID_ERR_UNSUPPORTED"]
PLAID_ERR_CHECKSUM = abi.STATUS["PLAID_ERR_CHECKSUM"]
PLAID_ERR_DECRYPT = abi.STATUS["PLAID_ERR_DECRYPT"]
PLAID_DEST_HOST = abi.DEST_HOST
PLAID_FORMAT_PLAID, PLAID_FORMAT_SAFETENSORS, PLAID_FORMAT_TENSORIZER = 1, 2, 3
assert abi.FORMATS == {PLAID_FORMAT_PLAID: "plaid", PLAID_FORMAT_SAFETENSORS: "safetensors",
                       PLAID_FORMAT_TENSORIZER: "tensorizer"}
Info, Dest, PLACE = abi.TensorInfo, abi.Destination, abi.PLACE_FN


def open_library():
    if not LIB.exists():
        pytest.skip(f"{LIB} not built (cargo build)")
    return abi.bind(ctypes.CDLL(str(LIB)))


def message(lib):
    buf = ctypes.create_string_buffer(4096)
    lib.plaid_last_error_message(buf, len(buf))
    return buf.value.decode()


class Loaded:
    """What ``load`` found: the format, each tensor's description and bytes, and one
    metadata value."""

    def __init__(self, fmt, infos, data, meta):
        self.format, self.infos, self.data, self.meta = fmt, infos, data, meta


def load(lib, path, meta_key=b"origin", sha256=False):
    """Open ``path`` with plaid (the default options; with ``sha256``, checking stored
    SHA-256s too) and load every tensor into fresh buffers, poisoned first. Returns a
    ``Loaded``, or ``(status, message)`` when opening or loading fails."""
    d = ctypes.c_void_p()
    options = None
    if sha256:
        options = ctypes.c_void_p()
        assert lib.plaid_read_options_new(ctypes.byref(options)) == PLAID_OK
        assert lib.plaid_read_options_set_verify_sha256(options, 1) == PLAID_OK
    status = lib.plaid_deserializer_open(str(path).encode(), options, ctypes.byref(d))
    if options is not None:
        lib.plaid_read_options_free(options)
    if status != PLAID_OK:
        return status, message(lib)
    try:
        infos = {}
        buffers = {}
        for i in range(lib.plaid_deserializer_tensor_count(d)):
            info = lib.plaid_deserializer_tensor(d, i).contents
            name = ctypes.string_at(info.name, info.name_len).decode()
            path_json = ctypes.string_at(info.path, info.path_len).decode() \
                if info.path else None
            infos[name] = {"dtype": info.dtype,
                           "shape": tuple(info.shape[k] for k in range(info.ndim)),
                           "role": info.role, "module_index": info.module_index,
                           "path": path_json, "zero_fill": bool(info.zero_fill)}
            buffers[i] = (name, np.full(max(info.nbytes, 1), 0xA5, dtype=np.uint8), info.nbytes)

        @PLACE
        def place(_user, info_p, dest_p):
            _, buf, nbytes = buffers[info_p.contents.index]
            dest_p.contents.kind = PLAID_DEST_HOST
            dest_p.contents.address = buf.ctypes.data
            dest_p.contents.capacity = nbytes
            return 0

        status = lib.plaid_deserializer_load(d, place, None)
        if status != PLAID_OK:
            return status, message(lib)
        value = ctypes.c_char_p()
        meta = None
        if lib.plaid_deserializer_metadata_get(d, meta_key, ctypes.byref(value)) == PLAID_OK:
            meta = value.value.decode()
        data = {name: buf[:nbytes].tobytes() for name, buf, nbytes in buffers.values()}
        return Loaded(lib.plaid_deserializer_format(d), infos, data, meta)
    finally:
        lib.plaid_deserializer_free(d)


def convert(src, dst, *extra):
    """Run ``plaid convert`` and return its output, failing the test on an error."""
    import subprocess
    if not CLI.exists():
        pytest.skip(f"{CLI} not built")
    done = subprocess.run([str(CLI), "convert", str(src), str(dst), *extra],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "read back and compared" in done.stdout
    return done.stdout
