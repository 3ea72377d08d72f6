"""The C library, through ctypes: loading it, checking its ABI, binding the signatures of
`plaid.h` (declared once, in `plaid._abi`), and turning status codes into exceptions. ctypes releases the GIL
for the duration of every call into the library."""

import ctypes
import os
from pathlib import Path

from ._abi import (ABI_VERSION, DEST_CUDA, DEST_HOST, DEST_SKIP, FILTER_FN, FORMATS,  # noqa: F401
                   PLACE_FN, READ_FN, RELEASE_FN, ROLE_IDS, ROLES, Destination, TensorInfo,
                   bind)

_u32 = ctypes.c_uint32


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
    return bind(lib)


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
