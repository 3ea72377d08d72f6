"""safetensors' ``safetensors.numpy`` on plaid: ``save_file``, ``load_file``, ``save``,
``load``, written byte for byte as safetensors writes them and read through plaid."""

import numpy as np

from .. import numpy as plaid_numpy
from .._lib import PlaidError
from . import refuse_missing, to_bytes, translated, write

__all__ = ["load", "load_file", "save", "save_file"]


def _items(tensors):
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, np.ndarray] but received {type(tensors)}")
    items = []
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise ValueError(f"Key `{name}` is invalid, expected np.ndarray but received "
                             f"{type(array)}")
        packed = array if array.flags.c_contiguous else np.array(array, order="C")
        if packed.dtype.byteorder == ">":
            packed = packed.astype(packed.dtype.newbyteorder("<"))
        items.append({"name": name, "dtype_id": plaid_numpy.dtype_id(packed.dtype),
                      "shape": packed.shape, "address": packed.ctypes.data,
                      "nbytes": packed.nbytes, "keep": packed})
    return items


def save_file(tensors, filename, metadata=None):
    """Write ``tensors`` (str to numpy arrays) and ``metadata`` at ``filename`` as
    safetensors writes it, atomically."""
    write(filename, _items(tensors), metadata)


def save(tensors, metadata=None):
    """The bytes of the safetensors file `save_file` would write."""
    return to_bytes(_items(tensors), metadata)


def load_file(filename):
    """Every tensor of ``filename`` as numpy arrays, verified."""
    refuse_missing(filename)
    try:
        return plaid_numpy.load_file(filename)
    except PlaidError as e:
        raise translated(e) from None


def load(data):
    """The tensors of a safetensors file given as bytes, as numpy arrays."""
    try:
        return plaid_numpy.load_file(bytes(data))
    except PlaidError as e:
        raise translated(e) from None
