"""PyTorch: the safetensors-style ``save_file``/``load_file`` and a tensorizer-style
drop-in (``TensorSerializer``, ``TensorDeserializer``, ``no_init_or_tensor``), on plaid,
safetensors and tensorizer files alike. CUDA tensors are loaded straight into device memory
and serialized straight from it."""

import contextlib
import enum
import contextvars
import threading
from collections.abc import Mapping

import torch

from . import _core, _lib, _source
from ._lib import InvalidArgumentError, NotFoundError, PlaidError, UnsupportedError

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
              passphrase_limits=None):
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
    file's key derivation may cost (default 1 GiB, 16 passes)."""
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


def _load_mapped(path, verify):
    """Tensors over a private mapping of the file, or None for a file that is not one
    mapping (a sharded checkpoint's index)."""
    import mmap as _mmap
    import os
    with open(path, "rb") as f:
        if f.read(1) == b"{":
            return None  # an index.json: the tensors live in other files
        # plaid reads the very file that is mapped (not whatever the path names later);
        # its errors name the path the caller gave.
        opened = f"/proc/self/fd/{f.fileno()}"
        try:
            with _core.Reader(opened, verify=verify) as reader:
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


# ---- the tensorizer-style API ------------------------------------------------------------


class TensorSerializer:
    """Collects tensors, then writes one plaid file on ``close()``: tensorizer's
    ``TensorSerializer`` over plaid's format. Roles (parameter, buffer, state-dict entry),
    module indices and nested paths are kept, so ``TensorDeserializer.load_into_module``
    puts every tensor back where it came from."""

    def __init__(self, file_obj, compress_tensors=False, *, metadata=None,
                 storage_options=None, encryption=None, **_compatible):
        self._encryption = _encryption_of(encryption)
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
        _core.write(self._path, _items(self._tensors), self._metadata, self._storage_options,
                    self._encryption)
        self._tensors = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        self._closed = True


class EncryptionParams:
    """How to encrypt (tensorizer's ``EncryptionParams``): ``EncryptionParams(key)`` with a
    raw 32-byte key, ``EncryptionParams.random()`` (read the key back from ``.key`` and
    keep it), or ``EncryptionParams.from_string(passphrase, opslimit, memlimit)``: a key
    derived by Argon2id with a fresh salt for every file plaid writes (so ``.key`` is
    None; decrypt with ``DecryptionParams.from_string``). Pass it as
    ``TensorSerializer(encryption=...)``. plaid's files use AEGIS-256X4 per checksum block,
    or AES-256-GCM where ``cipher = "aes-256-gcm"`` is set on the params
    (``docs/FORMAT.md`` section 13)."""

    class OpsLimit(enum.IntEnum):
        """Argon2id passes: libsodium's presets (tensorizer's)."""
        MIN = 1
        INTERACTIVE = 2
        MODERATE = 3
        SENSITIVE = 4

    class MemLimit(enum.IntEnum):
        """Argon2id memory in bytes: libsodium's presets (tensorizer's)."""
        MIN = 8192
        INTERACTIVE = 64 << 20
        MODERATE = 256 << 20
        SENSITIVE = 1 << 30

    __slots__ = ("key", "passphrase", "opslimit", "memlimit", "cipher")

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError("EncryptionParams(key): a key is 32 bytes; for a passphrase use "
                            "EncryptionParams.from_string")
        if len(key) != 32:
            raise InvalidArgumentError(f"EncryptionParams: a key is 32 bytes, not {len(key)}")
        self.key = bytes(key)
        self.passphrase = None
        self.opslimit = self.memlimit = self.cipher = None

    @classmethod
    def random(cls):
        """A new random key from the operating system (``secrets``)."""
        import secrets
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_string(cls, source, opslimit=None, memlimit=None, salt=None, *,
                    encoding="utf-8"):
        """Derive the key from the passphrase ``source`` (str or bytes) with Argon2id,
        ``opslimit`` passes over ``memlimit`` bytes (default ``MODERATE``: 3 and 256 MiB).
        plaid draws a fresh salt for every file, so ``salt`` is refused."""
        if salt is not None:
            raise InvalidArgumentError(
                "EncryptionParams.from_string(salt=...): plaid draws a fresh salt for every "
                "file it writes; leave salt out")
        params = cls.__new__(cls)
        params.key = None
        params.passphrase = source.encode(encoding) if isinstance(source, str) else \
            bytes(source)
        params.opslimit = int(opslimit) if opslimit is not None else None
        params.memlimit = int(memlimit) if memlimit is not None else None
        params.cipher = None
        return params

    def __repr__(self):
        return "EncryptionParams(<key>)" if self.key is not None else \
            "EncryptionParams(<passphrase>)"


def _encryption_of(encryption):
    """The `_core.Encryption` of a ``TensorSerializer(encryption=...)`` argument: plaid's
    `EncryptionParams`, or tensorizer's own made from a raw key (``EncryptionParams(key)``,
    ``.random()``)."""
    if encryption is None:
        return None
    if isinstance(encryption, EncryptionParams):
        return _core.Encryption(key=encryption.key, passphrase=encryption.passphrase,
                                passes=encryption.opslimit, memory=encryption.memlimit,
                                cipher=encryption.cipher)
    if type(encryption).__name__ == "EncryptionParams" and hasattr(encryption, "key"):
        if getattr(encryption, "_algorithm", None) is not None:
            raise InvalidArgumentError(
                "tensorizer's EncryptionParams.from_string derives its key with its own "
                "salt, which plaid's format does not take; use "
                "plaid.torch.EncryptionParams.from_string (the same passphrase decrypts)")
        return _core.Encryption(key=encryption.key)  # tensorizer's, from a raw key
    raise TypeError("TensorSerializer(encryption=...) takes plaid.torch.EncryptionParams or "
                    f"tensorizer's EncryptionParams, not {type(encryption).__name__}")


class DecryptionParams:
    """How to decrypt an encrypted file, plaid's or tensorizer's (tensorizer's ``DecryptionParams``):
    ``from_key(key)`` with the raw 32-byte key, or ``from_string(passphrase)`` with the
    passphrase its ``EncryptionParams.from_string`` used (the key is derived with the salt
    and limits the file records). Pass it as ``TensorDeserializer(encryption=...)``."""

    __slots__ = ("key", "passphrase")

    def __init__(self, key=None, passphrase=None):
        if (key is None) == (passphrase is None):
            raise InvalidArgumentError("DecryptionParams: a key or a passphrase, one of them")
        if key is not None and len(bytes(key)) != 32:
            raise InvalidArgumentError(f"DecryptionParams: a key is 32 bytes, not {len(key)}")
        self.key = None if key is None else bytes(key)
        self.passphrase = passphrase

    @classmethod
    def from_key(cls, key):
        """Decrypt with the raw 32-byte ``key``."""
        return cls(key=key)

    @classmethod
    def from_string(cls, source, encoding="utf-8"):
        """Decrypt with a key derived from the passphrase ``source`` (str or bytes)."""
        return cls(passphrase=source.encode(encoding) if isinstance(source, str) else
                   bytes(source))

    def __repr__(self):
        return "DecryptionParams(<key>)" if self.key is not None else \
            "DecryptionParams(<passphrase>)"


class TensorDeserializer(Mapping):
    """A read-only mapping of names to tensors of a plaid, safetensors or tensorizer file
    (tensorizer's ``TensorDeserializer``), given by path (a sharded checkpoint's
    ``model.safetensors.index.json`` too), by URL (``http(s)://``, ``s3://``, ``gs://``,
    ``az://``, configured from the environment and ``storage_options``), as a seekable binary
    file object or as bytes-like data.

    Making it opens the file and reads its header only. Tensors are read on first access
    (``d[name]``, onto ``device``: default the current CUDA device if there is one, else the
    CPU) or by `load_into_module`, which streams them straight into the module's own storage,
    verified unless ``verify_hash=False``. ``filter_func(name)`` (or a glob pattern, or a list of
    them) selects tensors; ``dtype``
    casts floating-point tensors read through the mapping. ``encryption`` (a
    `DecryptionParams`) decrypts encrypted tensorizer files; without it, loading an
    encrypted tensor raises `DecryptError`; with it, so does a tensor stored in the clear
    unless ``allow_plaintext=True`` (``passphrase_limits=(max_memory, max_passes)`` bounds a
    file's key derivation, by default 1 GiB and 16 passes). ``plaid_mode``, ``lazy_load`` and ``num_readers``
    are accepted for compatibility (``num_readers`` sets the worker threads).

    Tensor parallelism: with ``rank`` and ``world_size``, every tensor that ``split`` assigns a
    dimension (an int; a dict of glob patterns to a dimension or None, first match wins; or
    a callable ``split(name, meta)``) is this rank's share of that dimension, ``n * rank //
    world_size`` to ``n * (rank + 1) // world_size``, in ``d[name]`` and in
    `load_into_module` (whose module holds the shares' shapes); only the bytes a share needs
    are read."""

    def __init__(self, file_obj, device=None, filter_func=None, dtype=None, *,
                 lazy_load=False, plaid_mode=None, plaid_mode_buffers=None, num_readers=None,
                 verify_hash=None, encryption=None, storage_options=None, mmap=True,
                 rank=None, world_size=None, split=None, allow_plaintext=False,
                 passphrase_limits=None):
        key = passphrase = None
        if encryption is not None:
            if isinstance(encryption, DecryptionParams):
                key, passphrase = encryption.key, encryption.passphrase
            elif type(encryption).__name__ == "DecryptionParams" and \
                    hasattr(encryption, "key") and hasattr(encryption, "source"):
                key, passphrase = encryption.key, encryption.source  # tensorizer's own
            else:
                raise InvalidArgumentError(
                    "TensorDeserializer(encryption=...) takes plaid.torch.DecryptionParams "
                    f"or tensorizer's (from_key, from_string), not a {type(encryption).__name__}")
            mmap = False  # the mapping would hold ciphertext
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = _device(device)
        self._dtype = dtype
        self._split = (rank, world_size, split)
        if (rank is None) != (world_size is None):
            raise InvalidArgumentError("rank and world_size go together")
        self._verify = True if verify_hash is None else bool(verify_hash)
        self._reader = _core.Reader(file_obj, verify=self._verify, threads=num_readers or 0,
                                    storage_options=storage_options, key=key,
                                    passphrase=passphrase, allow_plaintext=allow_plaintext,
                                    passphrase_limits=passphrase_limits)
        filter_func = _core.name_filter(filter_func)
        self._metas = {m.name: m for m in self._reader.tensors
                       if filter_func is None or filter_func(m.name)}
        for meta in self._metas.values():
            torch_dtype(meta)  # refuse a dtype torch lacks now, not halfway through a load
        self._tensors = {}
        # A local file can lend its pages: tensors without storage become views of one
        # private copy-on-write mapping of it (as `load_file` does) when ``mmap`` is on.
        self._mapped_path = file_obj if mmap and _source.is_path(file_obj) \
            and not _source.is_url(file_obj) else None
        self.total_tensor_bytes = sum(m.nbytes for m in self._metas.values())
        self.missing_keys = []
        self.unexpected_keys = []

    def __getitem__(self, name):
        tensor = self._tensors.get(name)
        if tensor is None:
            if name not in self._metas:
                raise KeyError(name)
            meta = self._metas[name]
            viewed = self._view(meta)
            if viewed is not meta:
                tensor = torch.empty(viewed.shape, dtype=torch_dtype(viewed),
                                     device=self._device)
                if tensor.numel():
                    self._reader.load({meta.index: _destination(tensor, viewed)})
            else:
                tensor = _load_all(self._reader, self._device,
                                   lambda m: m.index == meta.index)[name]
            if self._dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self._dtype)
            self._tensors[name] = tensor
        return tensor

    def __iter__(self):
        return iter(self._metas)

    def __len__(self):
        return len(self._metas)

    def meta(self, name):
        """What the file says about tensor ``name`` (role, module index, path, ...)."""
        return self._metas[name]

    def _view(self, meta, dtype=None):
        """``meta`` as this rank loads it (its share, where split), converted to the torch
        ``dtype`` where both are floating-point."""
        rank, world_size, split = self._split
        convert = 0
        if dtype is not None and _FROM_TORCH.get(dtype) in _core.FLOAT_IDS:
            convert = _FROM_TORCH[dtype]  # f16, bf16, f32, f64; others staged and cast
        return _core.rank_view(meta, rank=rank, world_size=world_size, split=split,
                               dtype_id=convert)

    def close(self):
        """Close the file and drop the tensors read through the mapping. Safe to call
        twice; tensors already handed out stay valid."""
        self._tensors = {}
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def load_into_module(self, module, filter_func=None, verify_hash=None, *, device=None,
                         strict=False):
        """Put the file's tensors into ``module``'s parameters and buffers of the same
        names, reading each byte once, straight into its final place:

        - a parameter or buffer that has storage (CPU or CUDA) receives its bytes in place,
          through the placement callback (the object stays the same, no intermediate tensor;
          a dtype other than the file's is loaded beside it and cast);
        - one without storage (the meta device: a module built under `no_init_or_tensor`)
          is replaced by a tensor on ``device`` (default: this deserializer's). On the CPU,
          for a local file opened with ``mmap=True`` (the default), it is a view of one
          private copy-on-write mapping of the file, verified in place up front, in
          parallel, as ``load_file`` and ``from_pretrained`` map safetensors files: no copy,
          and no fresh memory to fault in (writes stay private; like any mapping, a file
          truncated by another process while mapped raises SIGBUS on access). Otherwise
          (``mmap=False``, a URL, a file object, a sharded checkpoint) it is a view of one
          allocation plaid makes for all of them (huge pages where the system gives them),
          kept alive by the views;
        - every alias of a tied tensor (one object under several names, such as GPT-2's
          ``lm_head.weight`` and ``transformer.wte.weight``, of which checkpoints hold one)
          gets the same loaded tensor.

        Returns the number of the file's tensors loaded (as tensorizer's does: a tied
        tensor stored under two names counts twice, and is read once); the names the file holds
        that the module lacks, and the module's parameters and persistent buffers the file
        lacks, are left in ``self.unexpected_keys`` and ``self.missing_keys``
        (``strict=True`` raises `NotFoundError` when either is non-empty). Where the module
        would be left with a tensor without storage (nothing in the file for it), raises
        `NotFoundError` naming each one; nothing is replaced then. ``verify_hash`` overrides
        the constructor's choice for this load."""
        if verify_hash is not None and bool(verify_hash) != self._verify:
            raise InvalidArgumentError(
                "load_into_module(verify_hash=...) differs from the constructor's; "
                "open another TensorDeserializer to change it")
        target_device = _device(device) if device is not None else self._device
        entries = _module_entries(module)
        # Names under which each tensor object appears (ties), in module order.
        aliases = {}
        for key, (owner, attr, _kind, _persistent) in entries.items():
            aliases.setdefault(id(getattr(owner, attr)), []).append(key)
        filter_func = _core.name_filter(filter_func)
        chosen = {}    # id of the module's tensor -> meta of the file tensor it receives
        matched = 0    # file tensors that name a parameter or buffer of the module
        unexpected = []
        for name, meta in self._metas.items():
            if filter_func is not None and not filter_func(name):
                continue
            key = name.lstrip(".")
            if key not in entries:
                unexpected.append(name)
                continue
            owner, attr, _, _ = entries[key]
            chosen.setdefault(id(getattr(owner, attr)), meta)
            matched += 1
        # What would stay without storage: refuse before changing anything.
        left = [key for key, (owner, attr, _, _) in entries.items()
                if getattr(owner, attr).device.type == "meta"
                and id(getattr(owner, attr)) not in chosen]
        if left:
            raise NotFoundError(
                f"{self._reader.path}: the file holds no tensor for {', '.join(left)}, which "
                "the module has without storage (built under no_init_or_tensor); the model "
                "could not run")
        in_place = {}   # meta index -> destination tuple
        cast_later = []  # (current tensor, file tensor on its device) to copy after the load
        fresh_cpu = []   # (id, meta, current) to allocate in the arena
        fresh_device = {}  # id -> new tensor on a device
        for tid, meta in chosen.items():
            key = aliases[tid][0]
            owner, attr, kind, _ = entries[key]
            current = getattr(owner, attr)
            # Converted by plaid on the way where both dtypes are floating-point.
            viewed = self._view(meta, current.dtype)
            if tuple(current.shape) != tuple(viewed.shape):
                share = "" if viewed.shape == meta.shape else \
                    f" (this rank's share of {list(meta.shape)})"
                raise InvalidArgumentError(
                    f"tensor {meta.name!r}: the file holds {list(viewed.shape)}{share}, the "
                    f"module's {kind} {key!r} is {list(current.shape)}")
            file_dtype = torch_dtype(viewed)
            if current.device.type != "meta":
                if viewed.nbytes == 0:
                    continue  # an empty share: nothing to read
                if current.dtype == file_dtype and current.is_contiguous():
                    in_place[meta.index] = _destination(current, viewed)
                else:
                    staged = torch.empty(viewed.shape, dtype=file_dtype, device=current.device)
                    in_place[meta.index] = _destination(staged, viewed)
                    cast_later.append((current, staged))
            elif target_device.type == "cpu":
                fresh_cpu.append((tid, viewed, current))
            else:
                new = torch.empty(viewed.shape, dtype=file_dtype, device=target_device)
                if viewed.nbytes:
                    in_place[meta.index] = _destination(new, viewed)
                fresh_device[tid] = new
        if in_place:
            self._reader.load(in_place)
        with torch.no_grad():
            for current, staged in cast_later:
                current.copy_(staged)
        # A mapping lends the stored bytes: whole tensors come from it; shares and
        # conversions go into an arena plaid allocates.
        whole = [(tid, m) for tid, m, _ in fresh_cpu if m.view is None]
        mapped = _load_mapped(self._mapped_path, self._verify) \
            if whole and self._mapped_path is not None else None
        if mapped is not None:
            for tid, meta in whole:
                fresh_device[tid] = mapped[meta.name]
        rest = [(tid, m) for tid, m, _ in fresh_cpu if mapped is None or m.view is not None]
        if rest:
            wanted = {viewed.index: viewed for _, viewed in rest}
            arena = self._reader.load_host(views=lambda m: wanted.get(m.index))
            for tid, viewed in rest:
                fresh_device[tid] = _tensor_from(arena.buffer(viewed.index), viewed)
        for tid, new in fresh_device.items():
            meta = chosen[tid]
            first = entries[aliases[tid][0]]
            current = getattr(first[0], first[1])
            if new.dtype != current.dtype:
                new = new.to(current.dtype)
            value = new
            if first[2] == "param":
                value = torch.nn.Parameter(new, requires_grad=current.requires_grad)
            for key in aliases[tid]:
                owner, attr, kind, _ = entries[key]
                if kind == "param":
                    owner._parameters[attr] = value
                else:
                    owner._buffers[attr] = value if first[2] == "buffer" else value.data
        covered = set()
        for tid in chosen:
            covered.update(aliases[tid])
        missing = [k for k, (_, _, kind, persistent) in entries.items()
                   if k not in covered and (kind == "param" or persistent)]
        self.missing_keys, self.unexpected_keys = missing, unexpected
        if strict and (missing or unexpected):
            raise NotFoundError(f"missing keys {missing}, unexpected keys {unexpected}")
        return matched


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


class _NoInit:
    """The state behind `no_init_or_tensor`: tensorizer's semantics, thread- and
    async-safe and re-entrant. While any context is active, ``torch.empty`` and the
    ``reset_parameters`` of ``Linear``, ``Embedding`` and ``LayerNorm`` are patched, and the
    patches act only where a context is active (a context variable), so other threads are
    unaffected."""

    modules = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
    originals = tuple((m, m.reset_parameters) for m in modules)
    original_empty = torch.empty
    active = contextvars.ContextVar("plaid_no_init_or_tensor", default=False)
    users = 0
    lock = threading.Lock()

    @staticmethod
    def empty(*args, **kwargs):
        if _NoInit.active.get():
            kwargs["device"] = "meta"
        return _NoInit.original_empty(*args, **kwargs)

    @staticmethod
    def skip(original):
        def reset_parameters(*args, **kwargs):
            if not _NoInit.active.get():
                return original(*args, **kwargs)
            return None
        return reset_parameters

    @classmethod
    @contextlib.contextmanager
    def context(cls):
        if cls.active.get():
            yield
            return
        with cls.lock:
            cls.users += 1
            if cls.users == 1:
                for module, original in cls.originals:
                    module.reset_parameters = cls.skip(original)
                torch.empty = cls.empty
        token = cls.active.set(True)
        try:
            yield
        finally:
            cls.active.reset(token)
            with cls.lock:
                cls.users -= 1
                if cls.users == 0:
                    torch.empty = cls.original_empty
                    for module, original in cls.originals:
                        module.reset_parameters = original


def no_init_or_tensor(loading_code=None):
    """Build modules without initialising their weights and without storage for them, as
    tensorizer's ``no_init_or_tensor`` does: inside it ``torch.empty`` makes tensors on the
    meta device and the ``reset_parameters`` of ``Linear``, ``Embedding`` and ``LayerNorm``
    do nothing; everything else is built as usual (buffers computed at construction, such as
    rotary embeddings' ``inv_freq``, and parameters made otherwise, such as ``torch.ones``
    norm weights, keep their storage). `TensorDeserializer.load_into_module` then gives the
    storage-less tensors theirs. Use as a context manager (``with no_init_or_tensor():
    model = Model(config)``) or call it with a function that builds the model."""
    if loading_code is None:
        return _NoInit.context()
    if not callable(loading_code):
        raise TypeError("no_init_or_tensor() takes a callable that builds the model, or "
                        f"nothing (as a context manager); got {type(loading_code).__name__}")
    with _NoInit.context():
        return loading_code()
