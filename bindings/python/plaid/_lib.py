"""The C library, through ctypes: loading it, checking its ABI, the structs and function
signatures of `plaid.h`, and turning status codes into exceptions. ctypes releases the GIL
for the duration of every call into the library."""

import ctypes
import os
from pathlib import Path

ABI_VERSION = 2

_vp = ctypes.c_void_p
_u32, _u64, _i32, _size = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32, ctypes.c_size_t


class TensorInfo(ctypes.Structure):
    """`plaid_tensor_info`, lent by the library."""

    _fields_ = [("name", ctypes.c_char_p), ("name_len", _size), ("dtype", _u32),
                ("ndim", _u32), ("shape", ctypes.POINTER(_u64)), ("nbytes", _u64),
                ("index", _size), ("role", _u32), ("module_index", _u32),
                ("path", ctypes.c_char_p), ("path_len", _size), ("zero_fill", _u32),
                ("encrypted", _u32), ("offset", _u64)]


class Destination(ctypes.Structure):
    """`plaid_destination`, filled in by the placement callback."""

    _fields_ = [("kind", _u32), ("device", _i32), ("address", _u64), ("capacity", _u64),
                ("slice_dim", _u32), ("slice_start", _u64), ("slice_stop", _u64),
                ("dtype", _u32)]


PLACE_FN = ctypes.CFUNCTYPE(_i32, _vp, ctypes.POINTER(TensorInfo), ctypes.POINTER(Destination))
FILTER_FN = ctypes.CFUNCTYPE(_i32, _vp, ctypes.POINTER(TensorInfo))
READ_FN = ctypes.CFUNCTYPE(ctypes.c_int64, _vp, _u64, _vp, _u64)
RELEASE_FN = ctypes.CFUNCTYPE(None, _vp)


DEST_SKIP, DEST_HOST, DEST_CUDA = 0, 1, 2
FORMATS = {1: "plaid", 2: "safetensors", 3: "tensorizer"}
ROLES = {0: None, 1: "param", 2: "buffer", 3: "state_dict"}
ROLE_IDS = {v: k for k, v in ROLES.items() if v}

_SIGNATURES = [
    ("plaid_abi_version", [], _u32),
    ("plaid_version", [], ctypes.c_char_p),
    ("plaid_last_error_message", [ctypes.c_char_p, _size], _size),
    ("plaid_read_options_new", [ctypes.POINTER(_vp)], _i32),
    ("plaid_read_options_free", [_vp], None),
    ("plaid_read_options_set_verify", [_vp, _i32], _i32),
    ("plaid_read_options_set_verify_sha256", [_vp, _i32], _i32),
    ("plaid_read_options_set_threads", [_vp, _u32], _i32),
    ("plaid_read_options_set_cuda_stream", [_vp, _vp], _i32),
    ("plaid_read_options_set_requests_in_flight", [_vp, _u32], _i32),
    ("plaid_read_options_set_storage", [_vp, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_read_options_set_key", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_read_options_set_passphrase", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_read_options_set_allow_plaintext", [_vp, _i32], _i32),
    ("plaid_read_options_set_passphrase_limits", [_vp, _u64, _u64], _i32),
    ("plaid_deserializer_open", [ctypes.c_char_p, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_source_new", [ctypes.c_char_p, _u64, READ_FN, _vp, RELEASE_FN, ctypes.POINTER(_vp)],
     _i32),
    ("plaid_source_set_hints", [_vp, _u64, _u64, _u32], _i32),
    ("plaid_source_free", [_vp], None),
    ("plaid_deserializer_open_source", [_vp, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_deserializer_format", [_vp], _u32),
    ("plaid_deserializer_tensor_count", [_vp], _size),
    ("plaid_deserializer_tensors", [_vp], ctypes.POINTER(TensorInfo)),
    ("plaid_deserializer_load", [_vp, PLACE_FN, _vp], _i32),
    ("plaid_deserializer_bytes_read", [_vp], _u64),
    ("plaid_deserializer_load_host", [_vp, FILTER_FN, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_deserializer_load_host_views", [_vp, PLACE_FN, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_deserializer_metadata_count", [_vp], _size),
    ("plaid_glob_match", [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_i32)], _i32),
    ("plaid_deserializer_metadata_entry",
     [_vp, _size, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)], _i32),
    ("plaid_deserializer_verify", [_vp], _i32),
    ("plaid_deserializer_free", [_vp], None),
    ("plaid_host_arena_tensor", [_vp, _size, ctypes.POINTER(_vp), ctypes.POINTER(_u64)], _i32),
    ("plaid_host_arena_free", [_vp], None),
    ("plaid_write_options_new", [ctypes.POINTER(_vp)], _i32),
    ("plaid_write_options_set_sync", [_vp, _i32], _i32),
    ("plaid_write_options_set_storage", [_vp, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_convert", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_convert_with", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, _vp, _vp], _i32),
    ("plaid_write_options_set_key", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_write_options_set_passphrase", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_write_options_set_passphrase_limits", [_vp, _u64, _u64], _i32),
    ("plaid_write_options_set_passphrase_salt", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_write_options_set_kdf_above_read_limits", [_vp, _i32], _i32),
    ("plaid_write_options_set_cipher", [_vp, _u32], _i32),
    ("plaid_write_options_free", [_vp], None),
    ("plaid_serializer_new", [ctypes.c_char_p, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_serializer_add_tensor",
     [_vp, ctypes.c_char_p, _u32, ctypes.POINTER(_u64), _size, _vp, _u64], _i32),
    ("plaid_serializer_add_tensor_cuda",
     [_vp, ctypes.c_char_p, _u32, ctypes.POINTER(_u64), _size, _i32, _u64, _u64], _i32),
    ("plaid_serializer_set_tensor_origin", [_vp, ctypes.c_char_p, _u32, _u32, ctypes.c_char_p],
     _i32),
    ("plaid_serializer_set_metadata", [_vp, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_serializer_finish", [_vp], _i32),
    ("plaid_serializer_free", [_vp], None),
]


class PlaidError(Exception):
    """An error from libplaid: ``status`` is the `PLAID_ERR_*` code, ``message`` the
    library's text (naming the file, the tensor and the offset where it knows them)."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgumentError(PlaidError, ValueError):
    """A bad argument: a wrong dtype, shape or buffer, a NULL, an option out of range."""
    status = 1


class RefusedError(InvalidArgumentError, RuntimeError):
    """Something refused where safetensors raises ``RuntimeError``: a tensor without data
    (on the meta device), tensors sharing memory, a state dict that does not fit."""
    status = 1


class PlaidIOError(PlaidError, OSError):
    """The operating system refused a read or a write (a missing file, a full disk)."""
    status = 2


class FormatError(PlaidError):
    """A malformed, truncated or unrecognised file."""
    status = 3


class UnsupportedError(PlaidError):
    """A valid file using something this build does not handle (a newer version, an
    encrypted tensorizer file, a dtype the framework lacks)."""
    status = 4


class ChecksumError(PlaidError):
    """Data that does not match its stored checksum; the message names the tensor."""
    status = 5


class CapacityError(PlaidError, ValueError):
    """A destination smaller than its tensor."""
    status = 6


class CancelledError(PlaidError):
    """A callback stopped the operation."""
    status = 7


class NotFoundError(PlaidError, KeyError):
    """No tensor (or metadata key) of that name."""
    status = 8

    def __str__(self):
        return self.message


class NoCudaError(PlaidError):
    """A CUDA destination, but no CUDA driver could be loaded."""
    status = 9


class CudaError(PlaidError):
    """The CUDA driver reported an error (named in the message)."""
    status = 10


class PanicError(PlaidError):
    """A bug inside libplaid, caught at its boundary."""
    status = 11


class DecryptError(PlaidError):
    """An encrypted tensor and no key, or a failed authentication (a wrong key or
    passphrase, or damaged ciphertext); the message says which and names the tensor."""
    status = 12


ERRORS = {cls.status: cls for cls in (
    InvalidArgumentError, PlaidIOError, FormatError, UnsupportedError, ChecksumError,
    CapacityError, CancelledError, NotFoundError, NoCudaError, CudaError, PanicError,
    DecryptError)}


def _load():
    path = os.environ.get("PLAID_LIB") or str(Path(__file__).with_name("libplaid.so"))
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"plaid: cannot load the C library {path}: {e}") from e
    lib.plaid_abi_version.restype = _u32
    abi = lib.plaid_abi_version()
    if abi != ABI_VERSION:
        raise ImportError(f"plaid: {path} has ABI version {abi}, this package needs "
                          f"{ABI_VERSION}; reinstall the package or point PLAID_LIB elsewhere")
    for name, args, result in _SIGNATURES:
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result
    return lib


lib = _load()


def last_message():
    """The library's message for the last error on this thread."""
    size = lib.plaid_last_error_message(None, 0)
    buf = ctypes.create_string_buffer(size + 1)
    lib.plaid_last_error_message(buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def renamed(error, old, new):
    """``error`` (a `PlaidError`) with every ``old`` in its message replaced by ``new``:
    the same class and status."""
    return type(error)(error.message.replace(old, new), error.status)


def check(status):
    """Raise the exception for a non-zero status."""
    if status != 0:
        cls = ERRORS.get(status, PlaidError)
        raise cls(last_message(), status)
