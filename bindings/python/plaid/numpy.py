"""numpy arrays, the safetensors way: ``save_file(tensors, path, metadata=None)`` and
``load_file(path)``. Works on plaid, safetensors and tensorizer files alike (for dtypes numpy
has; bfloat16, float8 and friends need `plaid.torch`)."""

import numpy as np

from . import _core
from ._lib import UnsupportedError

_TO_NUMPY = {
    1: np.bool_, 2: np.uint8, 3: np.int8, 4: np.int16, 5: np.uint16, 6: np.int32,
    7: np.uint32, 8: np.int64, 9: np.uint64, 10: np.float16, 12: np.float32, 13: np.float64,
    15: np.complex64, 16: np.complex128,
}
_FROM_NUMPY = {np.dtype(v).newbyteorder("<"): k for k, v in _TO_NUMPY.items()}


def dtype_id(array_dtype):
    """plaid's dtype id for a numpy dtype (little-endian or native)."""
    dt = np.dtype(array_dtype)
    found = _FROM_NUMPY.get(dt.newbyteorder("<") if dt.byteorder in "=<|" else dt)
    if found is None:
        raise UnsupportedError(f"numpy dtype {dt} has no plaid equivalent (little-endian "
                               "bool, integers, float16/32/64 and complex64/128 do)")
    return found


def numpy_dtype(meta):
    """The numpy dtype of a tensor, or `UnsupportedError` naming it."""
    found = _TO_NUMPY.get(meta.dtype_id)
    if found is None:
        raise UnsupportedError(f"tensor {meta.name!r} has dtype {meta.dtype}, which numpy "
                               "lacks; load it with plaid.torch")
    return np.dtype(found)


def array_from(buffer, meta, dtype=None):
    """An array of ``meta``'s dtype and shape over ``buffer`` (bytes of the tensor), or a
    new empty array for a tensor of no bytes."""
    dtype = dtype if dtype is not None else numpy_dtype(meta)
    if meta.nbytes == 0:
        return np.empty(meta.shape, dtype=dtype)
    return np.frombuffer(buffer, dtype=np.uint8).view(dtype).reshape(meta.shape)


def save_file(tensors, path, metadata=None, *, format=None, storage_options=None, key=None,
              passphrase=None, cipher=None):
    """Write ``tensors`` (a dict of str to numpy arrays) and ``metadata`` (a dict of str to
    str) at ``path`` (or an ``s3://``/``gs://``/``az://`` URL, configured by the environment
    and ``storage_options``), atomically, with checksums, in the format ``format`` names
    (``"plaid"``, ``"safetensors"``, ``"tensorizer"``) or else the name does
    (``.safetensors``, ``.tensors``, else plaid's). ``key`` (32 bytes) or ``passphrase``
    encrypts the tensor data (plaid's AEGIS-256X4, or AES-256-GCM with
    ``cipher="aes-256-gcm"``; tensorizer's encryption for a ``.tensors`` file); names,
    shapes and metadata stay readable."""
    items = []
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensor {name!r}: expected a numpy array, got {type(array).__name__}")
        contiguous = array if array.flags.c_contiguous else np.array(array, order="C")
        if contiguous.dtype.byteorder == ">":
            contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
        items.append({"name": name, "dtype_id": dtype_id(contiguous.dtype),
                      "shape": contiguous.shape, "address": contiguous.ctypes.data,
                      "nbytes": contiguous.nbytes, "keep": contiguous})
    _core.save(path, items, metadata, storage_options, format,
               _core.encryption(key, passphrase, cipher))


def load_file(path, *, storage_options=None, tensors=None, key=None, passphrase=None,
              allow_plaintext=False, passphrase_limits=None):
    """Every tensor of the file at ``path`` (or at a URL: http(s), s3, gs, az; or of a
    seekable binary file object, or of bytes-like data) as numpy arrays (in one allocation
    the arrays keep alive), verified. ``tensors`` (a glob pattern, a list of them, or a
    callable taking the name) loads only the tensors it chooses; the others are not read.
    ``key`` (32 bytes) or ``passphrase`` decrypt an encrypted file."""
    chosen = _core.name_filter(tensors)
    with _core.Reader(path, storage_options=storage_options, key=key,
                      passphrase=passphrase, allow_plaintext=allow_plaintext,
                      passphrase_limits=passphrase_limits) as reader:
        metas = [m for m in reader.tensors if chosen is None or chosen(m.name)]
        for meta in metas:
            numpy_dtype(meta)  # refuse before reading anything
        wanted = {m.index for m in metas}
        arena = reader.load_host(None if chosen is None else (lambda m: m.index in wanted))
        return {meta.name: array_from(arena.buffer(meta.index), meta) for meta in metas}
