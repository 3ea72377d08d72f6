"""plaid: load model weights into memory you allocated (host or CUDA), verified, at the
speed of the hardware. Reads plaid, safetensors and tensorizer files (detected from their
bytes) and writes all three.

- `plaid.numpy` and `plaid.torch`: ``save_file`` / ``load_file`` in any of the formats;
- `plaid.load_into(path, {name: array_or_tensor})`: fill arrays and tensors you allocated;
- `plaid.safetensors` (``safe_open``, ``torch``, ``numpy``, ``serialize``, ...) and
  `plaid.tensorizer` (``TensorSerializer``, ``TensorDeserializer``, ``utils``,
  ``torch_compat``, ...): the peers' APIs, drop-ins under their names
  (``sys.modules["safetensors"] = plaid.safetensors``); `plaid.safe_open` is
  safetensors' and `plaid.torch` re-exports both.

Errors raise `PlaidError` subclasses carrying ``status`` and the library's ``message``.
"""

from . import _core
from ._lib import (ABI_VERSION, CancelledError, CapacityError, ChecksumError, CudaError,
                   DecryptError, FormatError, InvalidArgumentError, NoCudaError, NotFoundError,
                   PanicError, PlaidError, PlaidIOError, RefusedError, UnsupportedError,
                   lib as _clib)
from ._core import Reader, TensorMeta
from .safetensors import SafetensorError, safe_open

__version__ = _clib.plaid_version().decode()

__all__ = [
    "ABI_VERSION", "CancelledError", "CapacityError", "ChecksumError", "CudaError", "DecryptError",
    "FormatError", "InvalidArgumentError", "NoCudaError", "NotFoundError", "PanicError",
    "PlaidError", "PlaidIOError", "Reader", "RefusedError", "SafetensorError", "TensorMeta",
    "UnsupportedError", "load_into", "safe_open",
]


def load_into(path, targets, *, verify=True, storage_options=None, rank=None, world_size=None,
              split=None, dtype=None, key=None, passphrase=None, allow_plaintext=False,
              passphrase_limits=None):
    """Fill ``targets`` (a dict of tensor names to numpy arrays or torch tensors, CPU or
    CUDA, allocated by you) from the file at ``path`` (or a URL, configured by the
    environment and ``storage_options``; or a seekable binary file object, or bytes-like
    data) in one pass, verified: remote bytes go straight into the targets. Each target
    must have the tensor's dtype and shape, be contiguous and writable;
    `InvalidArgumentError` names the first that does not fit, `NotFoundError` a name the
    file lacks. Returns ``targets``.

    Tensor parallelism: with ``rank`` and ``world_size``, a tensor that ``split`` assigns a
    dimension (an int for every tensor; a dict of glob patterns to a dimension or None,
    first match wins; or a callable ``split(name, meta)``) is loaded as this rank's share
    of that dimension, ``n * rank // world_size`` to ``n * (rank + 1) // world_size``, and
    only the bytes it needs are read (whole checksum blocks when verifying); the target has
    the share's shape. ``dtype`` (``"f16"``, ``"bf16"``, ``"f32"``, ``"f64"``, or a numpy or
    torch dtype) converts floating-point tensors as they load (round to nearest even);
    integer, bool and complex tensors keep theirs. ``key`` (32 bytes) or ``passphrase``
    decrypt an encrypted file; with either, a file stored in the clear is refused
    (`DecryptError`) unless ``allow_plaintext=True``; ``passphrase_limits=(max_memory,
    max_passes)`` bounds a file's key derivation (default 1 GiB, 16 passes)."""
    dtype_id = _core.dtype_id_of(dtype)
    with _core.Reader(path, verify=verify, storage_options=storage_options, key=key,
                      passphrase=passphrase, allow_plaintext=allow_plaintext,
                      passphrase_limits=passphrase_limits) as reader:
        destinations = {}
        for name, target in targets.items():
            meta = _core.rank_view(reader.find(name), rank=rank, world_size=world_size,
                                   split=split, dtype_id=dtype_id)
            checked = _destination(target, meta)
            if meta.nbytes:  # an empty share (fewer indices than ranks) reads nothing
                destinations[meta.index] = checked
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
    return (DEST_HOST, 0, target.ctypes.data, meta.nbytes) + (meta.view or ())
