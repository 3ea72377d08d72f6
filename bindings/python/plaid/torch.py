"""PyTorch: ``save_file``/``load_file`` (plaid, safetensors and tensorizer files alike),
``load_shared``, and, re-exported, safetensors' torch API (`plaid.safetensors.torch`:
``save``, ``load``, ``save_model``, ``load_model``, ``storage_ptr``, ``storage_size``) and
tensorizer's (`plaid.tensorizer`: ``TensorSerializer``, ``TensorDeserializer``,
``EncryptionParams``, ``DecryptionParams``, ``no_init_or_tensor``, ``tensorizer_saving``,
``tensorizer_loading``). CUDA tensors are loaded straight into device memory and serialized
straight from it."""

import torch

from . import _core, _lib, _source
from ._lib import InvalidArgumentError, PlaidError, UnsupportedError

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
    view = meta.view or ()
    if tensor.device.type == "cuda":
        return (_lib.DEST_CUDA, tensor.device.index, tensor.data_ptr(), meta.nbytes) + view
    if tensor.device.type != "cpu":
        raise InvalidArgumentError(f"tensor {meta.name!r}: destinations on {tensor.device} "
                                   "are not supported (cpu and cuda are)")
    return (_lib.DEST_HOST, 0, tensor.data_ptr(), meta.nbytes) + view


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


def load_file(path, device="cpu", *, mmap=True, verify=True, storage_options=None,
              tensors=None, key=None, passphrase=None, allow_plaintext=False,
              passphrase_limits=None, backend="mmap"):
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
    network into the tensors' memory as they arrive (never mapped).

    ``tensors`` (a glob pattern, a list of them, or a callable taking the name) loads only
    the tensors it chooses; the others are not read (and the file is not mapped). ``key``
    (32 bytes) or ``passphrase`` decrypt an encrypted file (never mapped: decrypted as
    it loads); with either, a file stored in the clear raises `DecryptError` unless
    ``allow_plaintext=True``. ``passphrase_limits=(max_memory, max_passes)`` bounds what a
    file's key derivation may cost (default 1 GiB, 16 passes). ``backend`` is
    safetensors': ``"mmap"`` (the default) or ``"pread"`` (as ``mmap=False``); an int
    ``device`` is that CUDA device."""
    if backend not in ("mmap", "pread"):
        raise InvalidArgumentError(f"backend {backend!r}: use 'mmap' or 'pread'")
    mmap = mmap and backend == "mmap"
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    chosen = _core.name_filter(tensors)
    if chosen is not None or key is not None or passphrase is not None:
        with _core.Reader(path, verify=verify, storage_options=storage_options, key=key,
                          passphrase=passphrase, allow_plaintext=allow_plaintext,
                          passphrase_limits=passphrase_limits) as reader:
            return _load_all(reader, device, None if chosen is None else
                             (lambda m: chosen(m.name)))
    if _device(device).type == "cpu" and mmap and _source.is_path(path) \
            and not _source.is_url(path):
        mapped = _load_mapped(path, verify)
        if mapped is not None:
            return mapped
    with _core.Reader(path, verify=verify, storage_options=storage_options) as reader:
        return _load_all(reader, device)


def load_shared(path, device="cpu", *, group=None, verify=True, storage_options=None,
                tensors=None, key=None, passphrase=None, allow_plaintext=False,
                passphrase_limits=None):
    """Every tensor of the file at ``path`` (as `load_file` gives them) on every member of
    the ``torch.distributed`` process group ``group`` (default: the world; any group, a
    subgroup of the world too, and only its members call this), reading the file once per
    group instead of once per rank: the tensors are dealt to the members by size, each
    member reads only its own share (verified) into one buffer, and each buffer is
    broadcast from its member to the others over the group's backend (gloo for CPU
    tensors, NCCL for CUDA ones): as many collective calls as members. Every member must
    call it with the same file, ``tensors`` and ``device`` type. Returns ``{name: tensor}``,
    the tensors of each share being views of its buffer. ``key``, ``passphrase``,
    ``allow_plaintext`` and ``passphrase_limits`` are `load_file`'s."""
    import torch.distributed as dist
    if group is None:
        group = dist.group.WORLD
    me = dist.get_rank(group)
    if me < 0:
        raise InvalidArgumentError("load_shared: this process is not a member of the group")
    members = dist.get_process_group_ranks(group)
    device = _device(device)
    failure = None
    try:
        secret = dict(key=key, passphrase=passphrase, allow_plaintext=allow_plaintext,
                      passphrase_limits=passphrase_limits)
        buffers, out = _read_share(path, device, me, len(members), verify, storage_options,
                                   tensors, secret)
    except BaseException as e:  # told to every member below, then raised here
        failure = e
    # Every member learns whether any failed before anyone waits in a broadcast.
    flag = torch.tensor([0 if failure is None else 1], dtype=torch.int64,
                        device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(flag, group=group)
    if failure is not None:
        raise failure
    if flag.item():
        raise PlaidError(f"load_shared: {flag.item()} other member(s) of the group could not "
                         "read their share (each raised its own error); nothing was exchanged")
    for k, buffer in enumerate(buffers):
        if buffer.numel():
            dist.broadcast(buffer, src=members[k], group=group)
    return out


def _read_share(path, device, me, size, verify, storage_options, tensors, secret):
    """`load_shared`'s buffers (one per member) and tensors (views of them), with this
    member's share read."""
    members = range(size)
    chosen = _core.name_filter(tensors)
    with _core.Reader(path, verify=verify, storage_options=storage_options,
                      **secret) as reader:
        metas = [m for m in reader.tensors if chosen is None or chosen(m.name)]
        for meta in metas:
            torch_dtype(meta)  # refuse before reading anything
        # Deal the tensors, largest first, to the member with the fewest bytes so far:
        # the same answer on every member.
        owner, loads = {}, [0] * len(members)
        for meta in sorted(metas, key=lambda m: (-m.nbytes, m.index)):
            k = min(range(len(members)), key=lambda r: (loads[r], r))
            owner[meta.index] = k
            loads[k] += -(-meta.nbytes // 64) * 64
        # Each share laid out in one buffer, tensors 64-byte aligned, in file order.
        at, sizes = {}, [0] * len(members)
        for meta in metas:
            k = owner[meta.index]
            at[meta.index] = sizes[k]
            sizes[k] += -(-meta.nbytes // 64) * 64
        buffers = [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes]
        out = {}
        for meta in metas:
            if meta.nbytes == 0:
                out[meta.name] = torch.empty(meta.shape, dtype=torch_dtype(meta), device=device)
                continue
            start = at[meta.index]
            piece = buffers[owner[meta.index]][start:start + meta.nbytes]
            out[meta.name] = piece.view(torch_dtype(meta)).view(meta.shape)
        mine = {m.index: _destination(out[m.name], m) for m in metas
                if owner[m.index] == me and m.nbytes}
        if mine:
            reader.load(mine)
    return buffers, out


def _load_mapped(path, verify, verify_sha256=False):
    """Tensors over a private mapping of the file, or None for a file that is not one
    mapping (a sharded checkpoint's index). With ``verify``, the whole file is verified
    first (its stored SHA-256s too with ``verify_sha256``)."""
    import mmap as _mmap
    import os
    with open(path, "rb") as f:
        if f.read(1) == b"{":
            return None  # an index.json: the tensors live in other files
        # plaid reads the very file that is mapped (not whatever the path names later);
        # its errors name the path the caller gave.
        opened = f"/proc/self/fd/{f.fileno()}"
        try:
            with _core.Reader(opened, verify=verify, verify_sha256=verify_sha256) as reader:
                metas = reader.tensors
                if any(meta.encrypted for meta in metas):
                    return None  # a mapping would show ciphertext: decrypted by a load
                for meta in metas:
                    torch_dtype(meta)
                if verify:
                    reader.verify()
        except PlaidError as e:
            raise _lib.renamed(e, opened, os.fsdecode(path)) from None
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
            raise _lib.RefusedError(f"tensor {name!r}: Cannot copy out of meta tensor; no data! "
                                    "(it is on the meta device)")
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


def save_file(tensors, path, metadata=None, *, format=None, storage_options=None, key=None,
              passphrase=None, cipher=None):
    """Write ``tensors`` (a dict of str to torch tensors, on the CPU or on CUDA devices) and
    ``metadata`` (str to str) at ``path``, atomically, with checksums: in the format
    ``format`` names (``"plaid"``, ``"safetensors"``, ``"tensorizer"``) or else the name
    does (``.safetensors``, ``.tensors``, else plaid's).
    CUDA tensors are copied out of device memory by plaid while it writes. ``path`` may be
    an ``s3://``/``gs://``/``az://`` URL (a multipart upload that completes only on
    success), configured from the environment and ``storage_options``. ``key`` (32 bytes)
    or ``passphrase`` encrypts the tensor data (plaid's AEGIS-256X4, or AES-256-GCM with
    ``cipher="aes-256-gcm"``; tensorizer's encryption for a ``.tensors`` file)."""
    _core.save(path, _items((n, t, {}) for n, t in tensors.items()), metadata,
               storage_options, format, _core.encryption(key, passphrase, cipher))


# Names this module answers from plaid.tensorizer and plaid.safetensors.torch, imported
# when first used (those modules build on this one).
_REEXPORTED = {
    "TensorSerializer": "plaid.tensorizer.serialization",
    "TensorDeserializer": "plaid.tensorizer.serialization",
    "EncryptionParams": "plaid.tensorizer.serialization",
    "DecryptionParams": "plaid.tensorizer.serialization",
    "CryptographyError": "plaid.tensorizer.serialization",
    "TensorType": "plaid.tensorizer.serialization",
    "no_init_or_tensor": "plaid.tensorizer.utils",
    "tensorizer_saving": "plaid.tensorizer.torch_compat",
    "tensorizer_loading": "plaid.tensorizer.torch_compat",
    "save": "plaid.safetensors.torch",
    "load": "plaid.safetensors.torch",
    "save_model": "plaid.safetensors.torch",
    "load_model": "plaid.safetensors.torch",
    "storage_ptr": "plaid.safetensors.torch",
    "storage_size": "plaid.safetensors.torch",
}


def __getattr__(name):
    module = _REEXPORTED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_REEXPORTED))
