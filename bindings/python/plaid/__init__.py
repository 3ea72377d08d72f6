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
                   DecryptError, FormatError, InvalidArgumentError, NoCudaError, NotFoundError,
                   PanicError, PlaidError, PlaidIOError, UnsupportedError, lib as _clib)
from ._core import Reader, TensorMeta

__version__ = _clib.plaid_version().decode()

__all__ = [
    "ABI_VERSION", "CancelledError", "CapacityError", "ChecksumError", "CudaError", "DecryptError",
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

    def __init__(self, path, framework="np", device="cpu", *, storage_options=None, key=None,
                 passphrase=None, allow_plaintext=False, passphrase_limits=None):
        if framework not in ("np", "numpy", "pt", "torch"):
            raise InvalidArgumentError(f"framework {framework!r}: use 'np' or 'pt'")
        self._torch = framework in ("pt", "torch")
        self._device = device
        self._reader = _core.Reader(path, storage_options=storage_options, key=key,
                                    passphrase=passphrase, allow_plaintext=allow_plaintext,
                                    passphrase_limits=passphrase_limits)

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

    def get_slice(self, name):
        """A lazy view of tensor ``name``, as safetensors' ``get_slice``: ``get_shape()``,
        ``get_dtype()``, and indexing (``[a:b, :, c]``, ints, ``...``) that reads only what
        the index needs: the most narrowly indexed dimension through the library (its
        range of the file, verified by whole checksum blocks), the others cut in memory."""
        return _Slice(self, self._reader.find(name))

    def close(self):
        """Close the file. Safe to call twice."""
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


class _Slice:
    """A tensor of a `safe_open` file, read when indexed."""

    def __init__(self, opened, meta):
        self._opened = opened
        self._meta = meta

    def get_shape(self):
        """The tensor's shape, a list."""
        return list(self._meta.shape)

    def get_dtype(self):
        """The tensor's dtype, in safetensors' spelling (``"F32"``, ``"BF16"``, ...)."""
        return _SAFETENSORS_DTYPES.get(self._meta.dtype, self._meta.dtype.upper())

    def __getitem__(self, key):
        meta = self._meta
        shape = meta.shape
        if not isinstance(key, tuple):
            key = (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1:]
        if len(key) > len(shape):
            raise IndexError(f"too many indices for tensor {meta.name!r} of shape {list(shape)}")
        key = key + (slice(None),) * (len(shape) - len(key))
        # Each dimension's indices (a range), and which one is read narrowest.
        picked = []
        for k, n in zip(key, shape):
            if isinstance(k, slice):
                if self._opened._torch and k.step is not None and k.step < 0:
                    raise ValueError("step must be greater than zero (torch has no negative "
                                     "steps)")
                picked.append(range(n)[k])
            elif isinstance(k, bool) or k is None:
                raise IndexError(f"index {k!r}: only integers, slices and ... index a slice")
            else:
                i = int(k)
                if not -n <= i < n:
                    raise IndexError(f"index {i} is out of bounds for dimension of size {n}")
                picked.append(range(n)[i:i + 1] if i >= 0 else range(n)[n + i:n + i + 1])
        spans = [(min(r), max(r) + 1) if len(r) else (0, 0) for r in picked]
        narrow = [(b - a) / n if n else 1.0 for (a, b), n in zip(spans, shape)]
        dim = min(range(len(shape)), key=lambda d: (narrow[d], d)) if shape else None
        if dim is not None and narrow[dim] < 1.0:
            start, stop = spans[dim]
        else:
            dim, start, stop = None, 0, 0
        viewed = meta.viewed(dim, start, stop) if dim is not None else meta
        # The rest of the index, relative to what is read.
        rest = list(key)
        if dim is not None:
            r = picked[dim]
            if isinstance(key[dim], slice):
                end = r.stop - start
                rest[dim] = slice(r.start - start, end if end >= 0 else None, r.step)
            else:
                rest[dim] = 0
        rest = tuple(rest)
        if self._opened._torch:
            import torch
            from . import torch as plaid_torch
            out = torch.empty(viewed.shape, dtype=plaid_torch.torch_dtype(meta))
            if out.numel():
                self._opened._reader.load({meta.index: plaid_torch._destination(out, viewed)})
            return out[rest].contiguous().to(self._opened._device)
        import numpy as np
        from . import numpy as plaid_numpy
        out = np.empty(viewed.shape, dtype=plaid_numpy.numpy_dtype(meta))
        if out.size:
            self._opened._reader.load({meta.index: _destination(out, viewed)})
        return np.ascontiguousarray(out[rest])


_SAFETENSORS_DTYPES = {
    "bool": "BOOL", "u8": "U8", "i8": "I8", "i16": "I16", "u16": "U16", "i32": "I32",
    "u32": "U32", "i64": "I64", "u64": "U64", "f16": "F16", "bf16": "BF16", "f32": "F32",
    "f64": "F64", "c64": "C64", "f8_e4m3fn": "F8_E4M3", "f8_e5m2": "F8_E5M2",
    "f8_e8m0fnu": "F8_E8M0", "f4_e2m1fn_x2": "F4",
}


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
