"""plaid: load model weights into memory you allocated (host or CUDA), verified, at the
speed of the hardware. Reads plaid, safetensors and tensorizer files (detected from their
bytes) and writes plaid files.

- `plaid.numpy` and `plaid.torch`: ``save_file`` / ``load_file`` the way safetensors has them;
- `plaid.safe_open(path, framework="np" | "pt", device=...)`: ``keys()``, ``metadata()``,
  ``get_tensor(name)``;
- `plaid.load_into(path, {name: array_or_tensor})`: fill arrays and tensors you allocated;
- `plaid.torch.TensorSerializer` / ``TensorDeserializer`` / ``no_init_or_tensor``: a
  tensorizer-style drop-in.

Errors raise `PlaidError` subclasses carrying ``status`` and the library's ``message``.
"""

from . import _core
from ._lib import (ABI_VERSION, CancelledError, CapacityError, ChecksumError, CudaError,
                   FormatError, InvalidArgumentError, NoCudaError, NotFoundError, PanicError,
                   PlaidError, PlaidIOError, UnsupportedError, lib as _clib)
from ._core import Reader, TensorMeta

__version__ = _clib.plaid_version().decode()

__all__ = [
    "ABI_VERSION", "CancelledError", "CapacityError", "ChecksumError", "CudaError",
    "FormatError", "InvalidArgumentError", "NoCudaError", "NotFoundError", "PanicError",
    "PlaidError", "PlaidIOError", "Reader", "TensorMeta", "UnsupportedError", "load_into",
    "safe_open",
]


class safe_open:
    """Open a file the way ``safetensors.safe_open`` does: ``keys()``, ``metadata()``,
    ``get_tensor(name)`` (a new array or tensor, verified). ``framework`` is ``"np"``
    (numpy) or ``"pt"`` (torch); ``device`` applies to torch. ``path`` may also be a URL
    (http(s), s3, gs, az; ``storage_options`` configure it), a seekable binary file object
    or bytes-like data. Use as a context manager or call ``close()``."""

    def __init__(self, path, framework="np", device="cpu", *, storage_options=None):
        if framework not in ("np", "numpy", "pt", "torch"):
            raise InvalidArgumentError(f"framework {framework!r}: use 'np' or 'pt'")
        self._torch = framework in ("pt", "torch")
        self._device = device
        self._reader = _core.Reader(path, storage_options=storage_options)

    def keys(self):
        """Tensor names, in file order."""
        return [m.name for m in self._reader.tensors]

    def metadata(self):
        """The file's metadata (str to str), or None where the file has none (as
        safetensors' ``safe_open`` answers)."""
        return self._reader.metadata() or None

    def get_tensor(self, name):
        """Tensor ``name``, loaded and verified now."""
        meta = self._reader.find(name)
        if self._torch:
            from . import torch as plaid_torch
            return plaid_torch._load_all(self._reader, self._device,
                                         lambda m: m.index == meta.index)[name]
        from . import numpy as plaid_numpy
        plaid_numpy.numpy_dtype(meta)
        arena = self._reader.load_host(lambda m: m.index == meta.index)
        return plaid_numpy.array_from(arena.buffer(meta.index), meta)

    def close(self):
        """Close the file. Safe to call twice."""
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def load_into(path, targets, *, verify=True, storage_options=None):
    """Fill ``targets`` (a dict of tensor names to numpy arrays or torch tensors, CPU or
    CUDA, allocated by you) from the file at ``path`` (or a URL, configured by the
    environment and ``storage_options``; or a seekable binary file object, or bytes-like
    data) in one pass, verified: remote bytes go straight into the targets. Each target
    must have the tensor's dtype and shape, be contiguous and writable;
    `InvalidArgumentError` names the first that does not fit, `NotFoundError` a name the
    file lacks. Returns ``targets``."""
    with _core.Reader(path, verify=verify, storage_options=storage_options) as reader:
        destinations = {}
        for name, target in targets.items():
            meta = reader.find(name)
            destinations[meta.index] = _destination(target, meta)
        reader.load(destinations)
    return targets


def _destination(target, meta):
    module = type(target).__module__
    if module.startswith("torch"):
        from . import torch as plaid_torch
        return plaid_torch._destination(target, meta)
    import numpy as np
    from . import numpy as plaid_numpy
    from ._lib import DEST_HOST
    if not isinstance(target, np.ndarray):
        raise InvalidArgumentError(f"tensor {meta.name!r}: the destination is a "
                                   f"{type(target).__name__}, not a numpy array or torch tensor")
    want = (plaid_numpy.numpy_dtype(meta), tuple(meta.shape))
    if (target.dtype.newbyteorder("<") if target.dtype.byteorder == "=" else target.dtype,
            target.shape) != want:
        raise InvalidArgumentError(
            f"tensor {meta.name!r}: the file holds {meta.dtype} {list(meta.shape)}, "
            f"the destination is {target.dtype} {list(target.shape)}")
    if not target.flags.c_contiguous or not target.flags.writeable:
        raise InvalidArgumentError(f"tensor {meta.name!r}: the destination is not a "
                                   "contiguous, writable array")
    return (DEST_HOST, 0, target.ctypes.data, meta.nbytes)
