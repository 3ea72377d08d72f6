"""PyTorch: the safetensors-style ``save_file``/``load_file`` and a tensorizer-style
drop-in (``TensorSerializer``, ``TensorDeserializer``, ``no_init_or_tensor``), on plaid,
safetensors and tensorizer files alike. CUDA tensors are loaded straight into device memory
and serialized straight from it."""

import contextlib
from collections.abc import Mapping

import torch

from . import _core, _lib, _source
from ._lib import InvalidArgumentError, NotFoundError, UnsupportedError

_NAMES = {
    1: "bool", 2: "uint8", 3: "int8", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32",
    8: "int64", 9: "uint64", 10: "float16", 11: "bfloat16", 12: "float32", 13: "float64",
    14: "complex32", 15: "complex64", 16: "complex128", 17: "float8_e4m3fn",
    18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz", 21: "float8_e8m0fnu",
    22: "float4_e2m1fn_x2",
}
_TO_TORCH = {k: getattr(torch, v) for k, v in _NAMES.items() if hasattr(torch, v)}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}


def dtype_id(dtype):
    """plaid's dtype id for a torch dtype."""
    found = _FROM_TORCH.get(dtype)
    if found is None:
        raise UnsupportedError(f"torch dtype {dtype} has no plaid equivalent")
    return found


def torch_dtype(meta):
    """The torch dtype of a tensor, or `UnsupportedError` naming it."""
    found = _TO_TORCH.get(meta.dtype_id)
    if found is None:
        raise UnsupportedError(f"tensor {meta.name!r} has dtype {meta.dtype}, which this "
                               f"torch ({torch.__version__}) lacks")
    return found


def _device(device):
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _tensor_from(buffer, meta):
    """A CPU tensor over ``buffer`` (the arena's bytes of ``meta``), without a copy."""
    dtype = torch_dtype(meta)
    if meta.nbytes == 0:
        return torch.empty(meta.shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).view(meta.shape)


def _destination(tensor, meta):
    """The `plaid_destination` fields for loading ``meta`` into ``tensor``, after checking
    that it fits; `InvalidArgumentError` naming the tensor otherwise."""
    want = (torch_dtype(meta), tuple(meta.shape))
    have = (tensor.dtype, tuple(tensor.shape))
    if want != have:
        raise InvalidArgumentError(
            f"tensor {meta.name!r}: the file holds {meta.dtype} {list(meta.shape)}, "
            f"the destination is {tensor.dtype} {list(tensor.shape)}")
    if not tensor.is_contiguous():
        raise InvalidArgumentError(f"tensor {meta.name!r}: the destination is not contiguous")
    if tensor.device.type == "cuda":
        return (_lib.DEST_CUDA, tensor.device.index, tensor.data_ptr(), meta.nbytes)
    if tensor.device.type != "cpu":
        raise InvalidArgumentError(f"tensor {meta.name!r}: destinations on {tensor.device} "
                                   "are not supported (cpu and cuda are)")
    return (_lib.DEST_HOST, 0, tensor.data_ptr(), meta.nbytes)


def _load_into(reader, targets):
    """Load ``targets`` (dict of name to tensor) from an open reader."""
    destinations = {}
    for name, tensor in targets.items():
        meta = reader.find(name)
        destinations[meta.index] = _destination(tensor, meta)
    reader.load(destinations)


def _load_all(reader, device, wanted=None):
    """Every wanted tensor of ``reader`` as torch tensors on ``device``."""
    device = _device(device)
    metas = [m for m in reader.tensors if wanted is None or wanted(m)]
    chosen = {m.index for m in metas}
    for meta in metas:
        torch_dtype(meta)
    if device.type == "cpu":
        arena = reader.load_host(None if wanted is None else (lambda m: m.index in chosen))
        return {m.name: _tensor_from(arena.buffer(m.index), m) for m in metas}
    out = {m.name: torch.empty(m.shape, dtype=torch_dtype(m), device=device) for m in metas}
    _load_into(reader, out)
    return out


def load_file(path, device="cpu", *, mmap=True, verify=True, storage_options=None):
    """Every tensor of the file at ``path`` as torch tensors on ``device`` (``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``), verified (unless ``verify=False``). ``path`` may also be a
    seekable binary file object or bytes-like data: read through, never mapped.

    On the CPU with ``mmap=True`` (the default, as safetensors does it), the tensors are
    views of a private copy-on-write mapping of the file: nothing is copied, pages are read
    when first touched, and writes stay private; the whole file is verified up front, in
    place, in parallel. Like any mapping, a file truncated by another process while mapped
    raises SIGBUS on access. ``mmap=False`` copies every tensor into one allocation made by
    plaid instead. On a GPU, plaid streams the tensors straight into device memory.

    ``path`` may be a URL (``http(s)://``, ``s3://bucket/key``, ``gs://``, ``az://``),
    configured from the environment and ``storage_options`` (object_store-style keys such
    as ``aws_endpoint``, ``aws_region``, ``aws_profile``): the bytes stream from the
    network into the tensors' memory as they arrive (never mapped)."""
    if _device(device).type == "cpu" and mmap and _source.is_path(path) \
            and not _source.is_url(path):
        mapped = _load_mapped(path, verify)
        if mapped is not None:
            return mapped
    with _core.Reader(path, verify=verify, storage_options=storage_options) as reader:
        return _load_all(reader, device)


def _load_mapped(path, verify):
    """Tensors over a private mapping of the file, or None for a file that is not one
    mapping (a sharded checkpoint's index)."""
    import mmap as _mmap
    import os
    with open(path, "rb") as f:
        if f.read(1) == b"{":
            return None  # an index.json: the tensors live in other files
        # plaid reads the very file that is mapped (not whatever the path names later).
        with _core.Reader(f"/proc/self/fd/{f.fileno()}", verify=verify) as reader:
            metas = reader.tensors
            for meta in metas:
                torch_dtype(meta)
            if verify:
                reader.verify()
        size = os.fstat(f.fileno()).st_size
        mapping = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY) if size else None
    out = {}
    for meta in metas:
        dtype = torch_dtype(meta)
        if meta.zero_fill:
            out[meta.name] = torch.zeros(meta.shape, dtype=dtype)
        elif meta.nbytes == 0:
            out[meta.name] = torch.empty(meta.shape, dtype=dtype)
        else:
            flat = torch.frombuffer(mapping, dtype=torch.uint8, count=meta.nbytes,
                                    offset=meta.offset)
            out[meta.name] = flat.view(dtype).view(meta.shape)
    return out


def _items(tensors):
    """The writer's description of each (name, tensor, origin) triple."""
    items = []
    synced = False
    for name, tensor, origin in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r}: expected a torch.Tensor, got "
                            f"{type(tensor).__name__}")
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise InvalidArgumentError(f"tensor {name!r} is on the meta device: it has no data")
        item = {"name": name, "dtype_id": dtype_id(tensor.dtype), "shape": tuple(tensor.shape),
                "nbytes": tensor.numel() * tensor.element_size(), **origin}
        tensor = tensor.contiguous()
        if tensor.device.type == "cuda":
            if not synced:
                torch.cuda.synchronize()  # the bytes must be there when plaid copies them
                synced = True
            item["cuda"] = (tensor.device.index, tensor.data_ptr())
        elif tensor.device.type == "cpu":
            item["address"] = tensor.data_ptr()
        else:
            raise InvalidArgumentError(f"tensor {name!r} is on {tensor.device}")
        item["keep"] = tensor
        items.append(item)
    return items


def save_file(tensors, path, metadata=None, *, storage_options=None):
    """Write ``tensors`` (a dict of str to torch tensors, on the CPU or on CUDA devices) and
    ``metadata`` (str to str) as a plaid file at ``path``, atomically, with checksums.
    CUDA tensors are copied out of device memory by plaid while it writes. ``path`` may be
    an ``s3://``/``gs://``/``az://`` URL (a multipart upload that completes only on
    success), configured from the environment and ``storage_options``."""
    _core.write(path, _items((n, t, {}) for n, t in tensors.items()), metadata,
                storage_options)


# ---- the tensorizer-style API ------------------------------------------------------------


class TensorSerializer:
    """Collects tensors, then writes one plaid file on ``close()``: tensorizer's
    ``TensorSerializer`` over plaid's format. Roles (parameter, buffer, state-dict entry),
    module indices and nested paths are kept, so ``TensorDeserializer.load_into_module``
    puts every tensor back where it came from."""

    def __init__(self, file_obj, compress_tensors=False, *, metadata=None,
                 storage_options=None, **_ignored):
        if not isinstance(file_obj, (str, bytes)) and not hasattr(file_obj, "__fspath__"):
            raise TypeError("TensorSerializer writes to a path")
        self._path = file_obj
        self._tensors = []
        self._names = set()
        self._metadata = dict(metadata or {})
        self._storage_options = storage_options
        self._closed = False
        self.total_tensor_bytes = 0

    def _add(self, name, tensor, role, module_index=0, path=None):
        if self._closed:
            raise InvalidArgumentError("the serializer is closed")
        if name in self._names:
            raise InvalidArgumentError(f"tensor {name!r} was already written")
        self._names.add(name)
        origin = {"role": role, "module_index": module_index}
        if path is not None:
            origin["path"] = path
        self._tensors.append((name, tensor, origin))
        self.total_tensor_bytes += tensor.numel() * tensor.element_size()

    def write_tensor(self, idx, name, tensor_type, tensor):
        """Add one tensor (torch, or a numpy array). ``tensor_type`` is tensorizer's
        ``TensorType`` or ``"param"``/``"buffer"``/``"state_dict"``."""
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.from_numpy(tensor)
        role = getattr(tensor_type, "name", tensor_type)
        role = {"PARAM": "param", "BUFFER": "buffer", "STATE_DICT": "state_dict"}.get(
            role, role)
        self._add(name, tensor, role, idx)

    def write_module(self, module, remove_tensors=False, *,
                     include_non_persistent_buffers=True):
        """Add every parameter and buffer of ``module``, module by module (its
        ``named_modules()`` order), under their state-dict names."""
        for index, (prefix, sub) in enumerate(module.named_modules()):
            for attr, param in sub._parameters.items():
                if param is not None:
                    self._add(f"{prefix}.{attr}" if prefix else attr, param, "param", index)
            persistent_only = not include_non_persistent_buffers
            for attr, buffer in sub._buffers.items():
                if buffer is None or (persistent_only and
                                      attr in sub._non_persistent_buffers_set):
                    continue
                self._add(f"{prefix}.{attr}" if prefix else attr, buffer, "buffer", index)

    def write_state_dict(self, state_dict):
        """Add a state dict: a flat dict of tensors, or nested dicts and lists, whose
        leaves keep their path."""
        def walk(obj, path):
            if isinstance(obj, Mapping):
                for key, value in obj.items():
                    if not isinstance(key, str):
                        raise InvalidArgumentError(f"state dict key {key!r} is not a str")
                    walk(value, path + [key])
            elif isinstance(obj, (list, tuple)):
                for i, value in enumerate(obj):
                    walk(value, path + [i])
            else:
                if not isinstance(obj, torch.Tensor):
                    obj = torch.as_tensor(obj)
                name = ".".join(str(p) for p in path)
                nested = len(path) > 1 or not isinstance(path[0], str)
                self._add(name, obj, "state_dict", 0, path if nested else None)
        walk(state_dict, [])

    def close(self):
        """Write the file (atomically: nothing appears at the path on failure)."""
        if self._closed:
            return
        self._closed = True
        _core.write(self._path, _items(self._tensors), self._metadata, self._storage_options)
        self._tensors = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        self._closed = True


class TensorDeserializer(Mapping):
    """A read-only mapping of names to tensors, loaded from a plaid, safetensors or
    tensorizer file (tensorizer's ``TensorDeserializer``), given by path, by URL
    (``http(s)://``, ``s3://``, ``gs://``, ``az://``, configured from the environment and
    ``storage_options``), as a seekable binary file object or as bytes-like data. All selected tensors are loaded
    when it is made, onto ``device`` (default: the current CUDA device if there is one,
    else the CPU), verified unless ``verify_hash=False``. ``filter_func(name)`` selects
    tensors; ``dtype`` casts floating-point tensors. ``plaid_mode`` and ``num_readers`` are
    accepted for compatibility (``num_readers`` sets the worker threads)."""

    def __init__(self, file_obj, device=None, filter_func=None, dtype=None, *,
                 lazy_load=False, plaid_mode=None, plaid_mode_buffers=None, num_readers=None,
                 verify_hash=None, encryption=None, storage_options=None):
        if encryption is not None:
            raise UnsupportedError("plaid cannot decrypt tensorizer files yet")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = _device(device)
        verify = True if verify_hash is None else bool(verify_hash)
        self._reader = _core.Reader(file_obj, verify=verify, threads=num_readers or 0,
                                    storage_options=storage_options)
        try:
            self._metas = {m.name: m for m in self._reader.tensors
                           if filter_func is None or filter_func(m.name)}
            tensors = _load_all(self._reader, self._device,
                                lambda m: m.name in self._metas)
        finally:
            self._reader.close()
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v
                       for k, v in tensors.items()}
        self._tensors = tensors
        self.total_tensor_bytes = sum(m.nbytes for m in self._metas.values())

    def __getitem__(self, name):
        return self._tensors[name]

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)

    def meta(self, name):
        """What the file says about tensor ``name`` (role, module index, path, ...)."""
        return self._metas[name]

    def close(self):
        """Drop the loaded tensors. Safe to call twice."""
        self._tensors = {}

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def load_into_module(self, module, filter_func=None, verify_hash=None, *, device=None,
                         strict=False):
        """Put every tensor into ``module``'s parameters and buffers of the same name,
        in place where they have storage (parameter identity is kept), or as new tensors on
        ``device`` (default: the module's own, or this deserializer's for a module built
        under `no_init_or_tensor`). Returns ``(missing_keys, unexpected_keys)`` the way
        ``load_state_dict`` does; ``strict=True`` raises instead when either is non-empty."""
        state = _module_entries(module)
        replaced = {}  # id of a storage-less tensor -> what replaced it (keeps ties)
        unexpected = []
        for name, tensor in self._tensors.items():
            if filter_func is not None and not filter_func(name):
                continue
            key = name.lstrip(".")
            if key not in state:
                unexpected.append(name)
                continue
            _assign(state.pop(key), name, tensor, device, replaced)
        missing = [k for k, (_, _, kind, persistent) in state.items()
                   if kind == "param" or persistent]
        if strict and (missing or unexpected):
            raise NotFoundError(f"missing keys {missing}, unexpected keys {unexpected}")
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)


def _module_entries(module):
    """Every parameter and buffer slot of ``module``: name -> (owner, attr, kind,
    persistent)."""
    out = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for attr, param in sub._parameters.items():
            if param is not None:
                out[f"{prefix}.{attr}" if prefix else attr] = (sub, attr, "param", True)
        for attr, buffer in sub._buffers.items():
            if buffer is not None:
                persistent = attr not in sub._non_persistent_buffers_set
                out[f"{prefix}.{attr}" if prefix else attr] = (sub, attr, "buffer", persistent)
    return out


def _assign(slot, name, tensor, device, replaced):
    owner, attr, kind, _ = slot
    current = getattr(owner, attr)
    if id(current) in replaced:
        # A tied tensor (one object under several names) replaced once already: share it.
        if kind == "param":
            setattr(owner, attr, replaced[id(current)])
        else:
            owner._buffers[attr] = replaced[id(current)]
        return
    if tuple(current.shape) != tuple(tensor.shape):
        raise InvalidArgumentError(f"tensor {name!r}: the file holds {list(tensor.shape)}, "
                                   f"the module's {kind} is {list(current.shape)}")
    with torch.no_grad():
        if current.device.type != "meta" and device is None:
            current.copy_(tensor)  # in place: the parameter object stays the same
            return
        target = device or (tensor.device if current.device.type == "meta" else current.device)
        value = tensor.to(device=target, dtype=current.dtype)
        if kind == "param":
            value = torch.nn.Parameter(value, requires_grad=current.requires_grad)
            setattr(owner, attr, value)
        else:
            owner._buffers[attr] = value
        replaced[id(current)] = value


@contextlib.contextmanager
def _meta_device():
    with torch.device("meta"):
        yield


def no_init_or_tensor(loading_code=None):
    """Build modules with no weight initialisation and no storage (on the meta device),
    ready for ``load_into_module``. Use as a context manager (``with no_init_or_tensor():
    model = Model(config)``) or call it with a function that builds the model."""
    if loading_code is not None:
        with _meta_device():
            return loading_code()
    return _meta_device()
