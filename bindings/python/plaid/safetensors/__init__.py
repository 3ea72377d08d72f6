"""safetensors' Python API on plaid: ``safe_open``, ``serialize``, ``serialize_file``,
``deserialize``, ``TensorSpec`` and ``SafetensorError``, with ``plaid.safetensors.torch`` and
``plaid.safetensors.numpy`` as safetensors' ``torch`` and ``numpy`` modules. A program written
for safetensors 0.8 runs unchanged with ``sys.modules["safetensors"] = plaid.safetensors``
(and its submodules): the same answers, the same exceptions, and files written byte for byte
as safetensors writes them. Reads are plaid's (verified where the file has checksums, any
format plaid reads: safetensors, plaid, tensorizer; URLs and file objects too)."""

import io
import os

from .. import _core, _lib, _source
from .._lib import InvalidArgumentError, PlaidError

__all__ = ["SafetensorError", "TensorSpec", "deserialize", "safe_open", "serialize",
           "serialize_file"]


class SafetensorError(Exception):
    """safetensors' error: a malformed file or header, a name the file lacks, a bad index,
    an unknown dtype, a handle used after it was closed. Errors raised by plaid inside the
    safetensors API are subclasses of both this and plaid's own class (`plaid.FormatError`,
    `plaid.NotFoundError`, ...)."""


_translated = {}


def translated(error):
    """``error`` (a `PlaidError`) as an instance of a class that is both its own and
    `SafetensorError`, with the same message and status."""
    cls = type(error)
    if isinstance(error, SafetensorError):
        return error
    both = _translated.get(cls)
    if both is None:
        both = type(cls.__name__, (cls, SafetensorError), {"__module__": __name__})
        _translated[cls] = both
    out = both(error.message, error.status)
    out.__cause__ = error.__cause__
    return out


class FileMissingError(_lib.PlaidIOError, FileNotFoundError):
    """A file that does not exist (safetensors' ``FileNotFoundError``)."""


def refuse_missing(filename):
    """`FileMissingError` with safetensors' message where ``filename`` is a local path
    that does not exist (URLs, file objects and bytes pass)."""
    if _source.is_path(filename) and not _source.is_url(filename) and \
            not os.path.exists(filename):
        raise FileMissingError(f"No such file or directory: {os.fsdecode(filename)}",
                               _lib.PlaidIOError.status)


class _Closed(InvalidArgumentError, SafetensorError):
    """A `safe_open` used after it was closed."""


_FRAMEWORKS = {"pt": "pt", "torch": "pt", "pytorch": "pt", "np": "np", "numpy": "np"}
_BACKENDS = ("mmap", "pread")


class safe_open:
    """Open a file the way ``safetensors.safe_open`` does: ``keys()`` (sorted),
    ``offset_keys()`` (in file order), ``metadata()`` (None where the file has none),
    ``get_tensor(name)``, ``get_tensors()``, ``get_slice(name)`` (indexing reads only the
    rows it needs). ``framework`` is ``"pt"`` (torch) or ``"np"`` (numpy); ``device``
    (torch: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or an int) is where torch tensors go;
    ``backend`` is ``"mmap"`` or ``"pread"`` (both read through plaid, verified; there is no
    difference in the tensors). ``filename`` may also be a URL (http(s), s3, gs, az;
    ``storage_options`` configure it), a seekable binary file object or bytes-like data.
    ``key``/``passphrase`` decrypt an encrypted plaid or tensorizer file. Use as a context
    manager or call ``close()``; using it afterwards raises `SafetensorError`."""

    def __init__(self, filename, framework="np", device="cpu", *, backend="mmap",
                 storage_options=None, key=None, passphrase=None, allow_plaintext=False,
                 passphrase_limits=None):
        if framework not in _FRAMEWORKS:
            raise translated(InvalidArgumentError(
                f"framework {framework!r} is not supported by plaid: use 'pt' or 'np'"))
        if backend not in _BACKENDS:
            raise translated(InvalidArgumentError(
                f"backend {backend!r}: use 'mmap' or 'pread'"))
        self._torch = _FRAMEWORKS[framework] == "pt"
        self._device = device if not isinstance(device, int) else f"cuda:{device}"
        if isinstance(filename, io.TextIOWrapper):
            filename = filename.buffer  # the bytes under a text-mode file
        refuse_missing(filename)
        try:
            self._reader = _core.Reader(filename, storage_options=storage_options, key=key,
                                        passphrase=passphrase,
                                        allow_plaintext=allow_plaintext,
                                        passphrase_limits=passphrase_limits)
        except PlaidError as e:
            raise translated(e) from None

    @property
    def _open(self):
        if not self._reader._finalizer.alive:
            raise _Closed(f"{self._reader.path}: the file was closed", _Closed.status)
        return self._reader

    def keys(self):
        """Tensor names, sorted (safetensors' order)."""
        return sorted(m.name for m in self._open.tensors)

    def offset_keys(self):
        """Tensor names in the order of their data in the file."""
        return [m.name for m in sorted(self._open.tensors, key=lambda m: (m.offset, m.index))]

    def metadata(self):
        """The file's metadata (str to str), or None where the file has none."""
        return self._open.metadata() or None

    def _meta(self, name):
        reader = self._open
        try:
            return reader.find(name)
        except PlaidError as e:
            raise translated(_lib.NotFoundError(
                f"File does not contain tensor {name}", _lib.NotFoundError.status)) from e

    def get_tensor(self, name):
        """Tensor ``name``, loaded and verified now."""
        return self._load([self._meta(name)])[name]

    def get_tensors(self):
        """Every tensor of the file, in file order, read in one pass."""
        return self._load([self._open.find(n) for n in self.offset_keys()])

    def _load(self, metas):
        reader = self._open
        chosen = {m.index for m in metas}
        try:
            if self._torch:
                from .. import torch as plaid_torch
                return plaid_torch._load_all(reader, self._device, lambda m: m.index in chosen)
            from .. import numpy as plaid_numpy
            for meta in metas:
                plaid_numpy.numpy_dtype(meta)
            arena = reader.load_host(lambda m: m.index in chosen)
            return {m.name: plaid_numpy.array_from(arena.buffer(m.index), m) for m in metas}
        except PlaidError as e:
            raise translated(e) from None

    def get_slice(self, name):
        """A lazy view of tensor ``name``: ``get_shape()``, ``get_dtype()``, and indexing
        (``[a:b, :, c]``, ints, ``...``, an empty list) that reads only what the index
        needs: the most narrowly indexed dimension through the library (its range of the
        file, verified by whole checksum blocks), the others cut in memory. Indices out of
        range raise `SafetensorError`, as safetensors' do."""
        return _Slice(self, self._meta(name))

    def close(self):
        """Close the file. Safe to call twice."""
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def _safe_open_handle(f, framework, device="cpu", **kwargs):
    """`safe_open` on an open file object (binary or text mode: its bytes are read)."""
    return safe_open(f, framework, device, **kwargs)


_SAFETENSORS_DTYPES = {
    "bool": "BOOL", "u8": "U8", "i8": "I8", "i16": "I16", "u16": "U16", "i32": "I32",
    "u32": "U32", "i64": "I64", "u64": "U64", "f16": "F16", "bf16": "BF16", "f32": "F32",
    "f64": "F64", "c64": "C64", "f8_e4m3fn": "F8_E4M3", "f8_e5m2": "F8_E5M2",
    "f8_e8m0fnu": "F8_E8M0", "f8_e4m3fnuz": "F8_E4M3FNUZ", "f8_e5m2fnuz": "F8_E5M2FNUZ",
    "f4_e2m1fn_x2": "F4",
}


def _shown(k):
    """One index as safetensors prints it in an error."""
    if isinstance(k, slice):
        text = ("" if k.start is None else str(k.start)) + ":" + \
            ("" if k.stop is None else str(k.stop))
        return text + (f":{k.step}" if k.step is not None else "")
    return "..." if k is Ellipsis else str(k)


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
        shape = list(meta.shape)
        given = key if isinstance(key, tuple) else (key,)
        for k in given:
            if isinstance(k, list) and k:
                raise translated(_lib.UnsupportedError("Non empty lists are not implemented",
                                                       _lib.UnsupportedError.status))
        # safetensors' bounds rules: a negative int counts from the end, out of range is
        # an error; a slice's stop past the end is an error too (nothing is clamped).
        dims = [k for k in given if k is not Ellipsis]
        if Ellipsis in given:
            at = given.index(Ellipsis)
            dims = list(given[:at]) + [slice(None)] * (len(shape) - len(given) + 1) + \
                list(given[at + 1:])
        shown = "[" + ", ".join(_shown(k) for k in given) + "]"
        for d, k in enumerate(dims[:len(shape)]):
            n = shape[d]
            if isinstance(k, slice):
                for bound in (k.start, k.stop):
                    if bound is not None and bound > n:
                        raise translated(InvalidArgumentError(
                            f"Error during slicing {shown} with shape {shape}: index "
                            f"{bound - 1} out of bounds for tensor dimension #{d} of size {n}"))
            elif isinstance(k, int) and not isinstance(k, bool):
                if k < -n:
                    raise translated(InvalidArgumentError(
                        f"Invalid index {k} for dimension {d} of size {n}"))
                if k >= n:
                    raise translated(InvalidArgumentError(
                        f"Error during slicing {shown} with shape {shape}: index {k} out of "
                        f"bounds for tensor dimension #{d} of size {n}"))
        if any(isinstance(k, list) for k in dims):
            # An empty list picks nothing along its dimension.
            dims = [slice(0, 0) if isinstance(k, list) else k for k in dims]
        try:
            out = _cut(self._opened, meta, tuple(dims))
        except PlaidError as e:
            raise translated(e) from None
        except IndexError as e:
            raise translated(InvalidArgumentError(str(e))) from None
        return out


def _cut(opened, meta, key):
    """Tensor ``meta`` indexed by ``key`` (a tuple of ints, slices and ``...``): the most
    narrowly indexed dimension read through the library, the rest cut in memory."""
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
            if opened._torch and k.step is not None and k.step < 0:
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
    if opened._torch:
        import torch
        from .. import torch as plaid_torch
        out = torch.empty(viewed.shape, dtype=plaid_torch.torch_dtype(meta))
        if out.numel():
            opened._open.load({meta.index: plaid_torch._destination(out, viewed)})
        return out[rest].contiguous().to(opened._device)
    import numpy as np
    from .. import _destination as plaid_destination
    from .. import numpy as plaid_numpy
    out = np.empty(viewed.shape, dtype=plaid_numpy.numpy_dtype(meta))
    if out.size:
        opened._open.load({meta.index: plaid_destination(out, viewed)})
    return np.ascontiguousarray(out[rest])


# ---- serialize: raw buffers ----------------------------------------------------------

_SPEC_DTYPES = {
    "bool": "bool", "int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16",
    "int32": "i32", "uint32": "u32", "int64": "i64", "uint64": "u64", "float16": "f16",
    "float32": "f32", "float64": "f64", "bfloat16": "bf16", "float8_e4m3fn": "f8_e4m3fn",
    "float8_e4m3fnuz": "f8_e4m3fnuz", "float8_e5m2": "f8_e5m2",
    "float8_e5m2fnuz": "f8_e5m2fnuz", "float8_e8m0fnu": "f8_e8m0fnu",
    "float4_e2m1fn_x2": "f4_e2m1fn_x2", "complex64": "c64",
}


class TensorSpec:
    """One tensor for `serialize` / `serialize_file`: ``dtype`` (a constructor-style name,
    ``"float32"``, ``"bfloat16"``, ...; an unknown one raises `SafetensorError` now),
    ``shape``, and ``data_len`` bytes at the address ``data_ptr``, which must stay valid
    while a serialize call runs. ``dtype`` reads back in safetensors' spelling (``"F32"``);
    ``shape`` is the header's (a packed ``float4_e2m1fn_x2`` doubles its last dimension)."""

    __slots__ = ("_plaid_dtype", "_storage_shape", "data_ptr", "data_len")

    def __init__(self, *, dtype, shape, data_ptr, data_len):
        plaid_dtype = _SPEC_DTYPES.get(dtype) if isinstance(dtype, str) else None
        if plaid_dtype is None:
            raise translated(InvalidArgumentError(f"dtype {dtype!r} is not supported"))
        self._plaid_dtype = plaid_dtype
        self._storage_shape = tuple(int(n) for n in shape)
        self.data_ptr = int(data_ptr)
        self.data_len = int(data_len)

    @property
    def dtype(self):
        return _SAFETENSORS_DTYPES[self._plaid_dtype]

    @property
    def shape(self):
        shape = list(self._storage_shape)
        if self._plaid_dtype == "f4_e2m1fn_x2" and shape:
            shape[-1] *= 2
        return shape

    def __repr__(self):
        return f"TensorSpec(dtype={self.dtype!r}, shape={self.shape}, data_len={self.data_len})"


def _spec_items(tensor_dict):
    if not isinstance(tensor_dict, dict):
        raise TypeError(f"expected a dict of str to TensorSpec, got {type(tensor_dict).__name__}")
    items = []
    for name, spec in tensor_dict.items():
        if not isinstance(spec, TensorSpec):
            raise TypeError(f"tensor {name!r}: expected a TensorSpec, got "
                            f"{type(spec).__name__}")
        items.append({"name": name, "dtype_id": _core.DTYPE_IDS[spec._plaid_dtype],
                      "shape": spec._storage_shape, "address": spec.data_ptr,
                      "nbytes": spec.data_len})
    return items


def write(path, items, metadata):
    """Write ``items`` (`_core.write`'s tensor descriptions) as a safetensors file at
    ``path``: atomic, laid out as safetensors lays it out; errors as `SafetensorError`."""
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of str to str, got {type(metadata).__name__}")
    try:
        _core.save(path, items, metadata, format="safetensors")
    except PlaidError as e:
        raise translated(e) from None


def to_bytes(items, metadata):
    """The bytes of the safetensors file ``items`` and ``metadata`` make."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="plaid-serialize.") as folder:
        path = os.path.join(folder, "out.safetensors")
        write(path, items, metadata)
        with open(path, "rb") as f:
            return f.read()


def serialize(tensor_dict, metadata=None):
    """The bytes of a safetensors file holding ``tensor_dict`` (str to `TensorSpec`) and
    ``metadata`` (str to str)."""
    return to_bytes(_spec_items(tensor_dict), metadata)


def serialize_file(tensor_dict, filename, metadata=None):
    """Write a safetensors file holding ``tensor_dict`` (str to `TensorSpec`) and
    ``metadata`` at ``filename``, atomically. The GIL is released while plaid writes."""
    write(filename, _spec_items(tensor_dict), metadata)


def deserialize(data):
    """The tensors of a safetensors file given as bytes: a list of ``(name, {"shape",
    "dtype", "data"})`` in file order, ``data`` being the tensor's bytes."""
    try:
        with _core.Reader(bytes(data)) as reader:
            arena = reader.load_host()
            return [(m.name, {"shape": list(m.shape), "dtype": _SAFETENSORS_DTYPES.get(
                m.dtype, m.dtype.upper()), "data": bytes(arena.buffer(m.index) or b"")})
                for m in reader.tensors]
    except PlaidError as e:
        raise translated(e) from None
