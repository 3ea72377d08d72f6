"""Framework-neutral core of the binding: an open file (`Reader`) and writing a file
(`write`). numpy and torch build on these."""

import contextlib
import ctypes
import json
import operator
import os
import weakref

from . import _lib, _source
from ._lib import check, lib

# PLAID_DTYPE_* ids by name (the library's names).
DTYPE_IDS = {
    "bool": 1, "u8": 2, "i8": 3, "i16": 4, "u16": 5, "i32": 6, "u32": 7, "i64": 8, "u64": 9,
    "f16": 10, "bf16": 11, "f32": 12, "f64": 13, "c32": 14, "c64": 15, "c128": 16,
    "f8_e4m3fn": 17, "f8_e4m3fnuz": 18, "f8_e5m2": 19, "f8_e5m2fnuz": 20, "f8_e8m0fnu": 21,
    "f4_e2m1fn_x2": 22,
}
DTYPE_NAMES = {v: k for k, v in DTYPE_IDS.items()}
DTYPE_SIZES = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 2, 11: 2, 12: 4,
               13: 8, 14: 4, 15: 8, 16: 16, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1}


class TensorMeta:
    """What the file says about one tensor: ``name``, ``dtype`` (plaid's name, e.g.
    ``"bf16"``), ``shape``, ``nbytes``, ``index``, ``role`` (``"param"``, ``"buffer"``,
    ``"state_dict"`` or None), ``module_index``, ``path`` (the list of components of a
    nested name, or None) and ``zero_fill`` (stored as nothing, loads as zeros)."""

    __slots__ = ("name", "dtype", "dtype_id", "shape", "nbytes", "index", "role",
                 "module_index", "path", "zero_fill", "offset", "view", "encrypted")

    def __init__(self, info):
        self.name = ctypes.string_at(info.name, info.name_len).decode("utf-8")
        self.dtype_id = info.dtype
        self.dtype = DTYPE_NAMES.get(info.dtype, str(info.dtype))
        self.shape = tuple(info.shape[k] for k in range(info.ndim))
        self.nbytes = info.nbytes
        self.index = info.index
        self.role = _lib.ROLES.get(info.role)
        self.module_index = info.module_index
        self.path = json.loads(ctypes.string_at(info.path, info.path_len)) if info.path else None
        self.zero_fill = bool(info.zero_fill)
        self.offset = info.offset
        self.encrypted = bool(info.encrypted)
        self.view = None

    def __repr__(self):
        return f"TensorMeta({self.name!r}, {self.dtype}, {list(self.shape)})"

    def viewed(self, dim=None, start=0, stop=0, dtype_id=0):
        """What a destination of a view of this tensor receives: indices ``start:stop``
        of dimension ``dim`` (None: all of it), converted to dtype ``dtype_id`` (0: as
        stored). Its ``view`` holds the `plaid_destination` fields ``(slice_dim,
        slice_start, slice_stop, dtype)``."""
        out = object.__new__(TensorMeta)
        for k in TensorMeta.__slots__:
            setattr(out, k, getattr(self, k))
        shape = list(self.shape)
        if dim is not None:
            if not 0 <= dim < len(shape):
                raise _lib.InvalidArgumentError(
                    f"tensor {self.name!r}: no dimension {dim} in shape {shape}")
            shape[dim] = max(0, stop - start)
        out.shape = tuple(shape)
        if dtype_id and dtype_id != self.dtype_id:
            out.dtype_id, out.dtype = dtype_id, DTYPE_NAMES.get(dtype_id, str(dtype_id))
        size = DTYPE_SIZES.get(out.dtype_id, 1)
        count = 1
        for n in shape:
            count *= n
        out.nbytes = count * size if self.shape != out.shape or out.dtype_id != self.dtype_id \
            else self.nbytes
        out.view = (0 if dim is None else dim, 0 if dim is None else start,
                    0 if dim is None else stop, 0 if out.dtype_id == self.dtype_id else dtype_id)
        return out


# The floating-point dtypes plaid converts among: f16, bf16, f32, f64.
FLOAT_IDS = (10, 11, 12, 13)


def name_filter(tensors):
    """A ``filter(name) -> bool`` from ``tensors``: None (every tensor), a glob pattern or a
    list of them (the library's patterns, as ``plaid inspect --tensors``: ``*`` and ``?``
    match dots too; a name is chosen when it matches any), or a callable taking the name."""
    if tensors is None or callable(tensors):
        return tensors
    patterns = [tensors] if isinstance(tensors, str) else list(tensors)
    encoded = [p.encode("utf-8") for p in patterns]
    matched = ctypes.c_int32()
    for p in encoded:  # a malformed pattern fails now, naming it
        check(lib.plaid_glob_match(p, b"", ctypes.byref(matched)))

    def chosen(name):
        n = name.encode("utf-8")
        for p in encoded:
            check(lib.plaid_glob_match(p, n, ctypes.byref(matched)))
            if matched.value:
                return True
        return False
    return chosen


def dtype_id_of(dtype):
    """plaid's dtype id of ``dtype`` (None: 0, as stored): a plaid name (``"bf16"``), or a
    numpy or torch dtype."""
    if dtype is None:
        return 0
    if isinstance(dtype, str) and dtype in DTYPE_IDS:
        return DTYPE_IDS[dtype]
    if type(dtype).__module__.startswith("torch"):
        from . import torch as plaid_torch
        return plaid_torch.dtype_id(dtype)
    from . import numpy as plaid_numpy
    return plaid_numpy.dtype_id(dtype)


def part(n, rank, world_size):
    """Rank ``rank``'s share of ``n`` indices split over ``world_size`` ranks:
    ``(n * rank // world_size, n * (rank + 1) // world_size)`` (uneven splits give the
    first ranks one fewer)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def split_dim(split, name, meta):
    """The dimension along which tensor ``name`` is split, or None (every rank loads all of
    it). ``split`` is an int (that dimension of every tensor that has it), a dict of glob
    patterns (``fnmatch``, matched against the name in order; the first match wins) to a
    dimension or None, or a callable ``split(name, meta)`` giving a dimension or None."""
    import fnmatch
    if split is None:
        return None
    if callable(split):
        dim = split(name, meta)
    elif isinstance(split, int):
        dim = split if split < len(meta.shape) else None
    else:
        dim = next((d for pattern, d in split.items() if fnmatch.fnmatchcase(name, pattern)),
                   None)
    if dim is not None and not 0 <= dim < len(meta.shape):
        raise _lib.InvalidArgumentError(
            f"tensor {name!r}: split along dimension {dim}, but its shape is {list(meta.shape)}")
    return dim


def rank_view(meta, *, rank=None, world_size=None, split=None, dtype_id=0):
    """``meta`` as this rank receives it: its share along the dimension ``split`` gives
    (see `split_dim`), converted to ``dtype_id`` if it is a floating-point tensor (integer,
    bool and complex tensors keep their dtype)."""
    if (rank is None) != (world_size is None):
        raise _lib.InvalidArgumentError("rank and world_size go together")
    if world_size is not None and not 0 <= rank < world_size:
        raise _lib.InvalidArgumentError(f"rank {rank} of a world of {world_size}")
    dim = split_dim(split, meta.name, meta) if world_size is not None else None
    # A floating-point tensor asked for in its own dtype is not converted: it stays `meta`
    # itself (view None), which a mapping can lend as it is.
    convert = dtype_id if dtype_id and dtype_id != meta.dtype_id and meta.dtype_id in FLOAT_IDS \
        else 0
    if dim is None and not convert:
        return meta
    if dim is None:
        return meta.viewed(dtype_id=convert)
    start, stop = part(meta.shape[dim], rank, world_size)
    return meta.viewed(dim, start, stop, convert)


def _free_reader(handle):
    lib.plaid_deserializer_free(handle)


def _limits(passphrase_limits):
    """``(max_memory, max_passes)``, checked to be two non-negative integers."""
    try:
        memory, passes = passphrase_limits
        memory, passes = operator.index(memory), operator.index(passes)
    except (TypeError, ValueError):
        raise _lib.InvalidArgumentError(
            "passphrase_limits is (max_memory, max_passes): two integers, bytes and passes, "
            f"not {passphrase_limits!r}") from None
    if memory < 0 or passes < 0 or memory >= 1 << 64 or passes >= 1 << 64:
        raise _lib.InvalidArgumentError(f"passphrase_limits {passphrase_limits!r}: out of range")
    return memory, passes


class Reader:
    """An open model file (plaid, safetensors or tensorizer, detected from its bytes):
    ``path`` is a path (str or os.PathLike), a URL (``http(s)://``, ``s3://bucket/key``,
    ``gs://``, ``az://``; configured from the environment and ``storage_options``, a dict
    of object_store-style keys such as ``aws_endpoint`` or ``aws_region``), a seekable
    binary file object, or bytes-like data (see `_source`). Reads are verified against the
    file's checksums unless ``verify=False``; ``verify_sha256=True`` checks a tensorizer
    file's stored SHA-256s too (off by default: the CRC-32s detect the same damage to the
    data, several times faster). ``close()`` frees it (twice is harmless); it is also a context
    manager, and a finalizer frees it if neither was used. ``key`` (32 bytes) or
    ``passphrase`` (str or bytes) decrypt encrypted tensors (tensorizer's and plaid's
    encrypted files); a file opens without them (names, dtypes and shapes are in the
    clear), and loading an encrypted tensor without them raises `DecryptError`. With a key
    or passphrase, loading a tensor stored in the clear raises `DecryptError` too (a file
    whose encryption was stripped would otherwise load as the weights) unless
    ``allow_plaintext=True``. ``passphrase_limits=(max_memory, max_passes)`` raises (or
    lowers) the most a file's key derivation may cost, by default 1 GiB and 16 passes."""

    def __init__(self, path, *, verify=True, verify_sha256=False, threads=0, cuda_stream=None,
                 requests_in_flight=0, storage_options=None, key=None, passphrase=None,
                 allow_plaintext=False, passphrase_limits=None):
        # A path, or the bytes themselves: a seekable binary file object or bytes-like data.
        source = None if _source.is_path(path) else _source.Source(path)
        self._check = check if source is None else source.check
        options = ctypes.c_void_p()
        check(lib.plaid_read_options_new(ctypes.byref(options)))
        try:
            check(lib.plaid_read_options_set_verify(options, int(bool(verify))))
            check(lib.plaid_read_options_set_verify_sha256(options, int(bool(verify_sha256))))
            check(lib.plaid_read_options_set_threads(options, int(threads or 0)))
            check(lib.plaid_read_options_set_requests_in_flight(options,
                                                                int(requests_in_flight or 0)))
            if cuda_stream:
                check(lib.plaid_read_options_set_cuda_stream(options, cuda_stream))
            set_storage(lib.plaid_read_options_set_storage, options, storage_options)
            if key is not None:
                key = bytes(key)
                check(lib.plaid_read_options_set_key(options, key, len(key)))
            if passphrase is not None:
                pw = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
                check(lib.plaid_read_options_set_passphrase(options, pw, len(pw)))
            check(lib.plaid_read_options_set_allow_plaintext(options, int(bool(allow_plaintext))))
            if passphrase_limits is not None:
                memory, passes = _limits(passphrase_limits)
                check(lib.plaid_read_options_set_passphrase_limits(options, memory, passes))
            handle = ctypes.c_void_p()
            if source is None:
                check(lib.plaid_deserializer_open(os.fsencode(path), options,
                                                  ctypes.byref(handle)))
            else:
                self._check(lib.plaid_deserializer_open_source(source.handle, options,
                                                               ctypes.byref(handle)))
        finally:
            lib.plaid_read_options_free(options)
            if source is not None:
                source.close()  # the deserializer holds its own reference
        self._handle = handle
        self._finalizer = weakref.finalize(self, _free_reader, handle)
        self.path = os.fsdecode(path) if source is None else source.name
        self.is_file = source is None
        self.format = _lib.FORMATS.get(lib.plaid_deserializer_format(handle), "unknown")
        count = lib.plaid_deserializer_tensor_count(handle)
        infos = lib.plaid_deserializer_tensors(handle)
        # One call for every description (a ctypes call per tensor adds up at 10,000+).
        self.tensors = [TensorMeta(infos[i]) for i in range(count)]
        self._by_name = {t.name: t for t in self.tensors}

    @property
    def handle(self):
        """The live handle; `PlaidError` once closed."""
        if not self._finalizer.alive:
            raise InvalidUse(f"{self.path}: the file was closed")
        return self._handle

    def close(self):
        """Free the handle. Safe to call more than once."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def find(self, name):
        """The `TensorMeta` of tensor ``name``; `NotFoundError` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise _lib.NotFoundError(f"{self.path}: no tensor named {name!r}") from None

    def metadata(self):
        """The file's metadata as a dict of str (empty when there is none)."""
        handle = self.handle
        out = {}
        for i in range(lib.plaid_deserializer_metadata_count(handle)):
            key, value = ctypes.c_char_p(), ctypes.c_char_p()
            check(lib.plaid_deserializer_metadata_entry(handle, i, ctypes.byref(key),
                                                        ctypes.byref(value)))
            out[key.value.decode()] = value.value.decode()
        return out

    def bytes_read(self):
        """The bytes loads and verifications of this file have read from storage since it
        was opened (its header excepted): checksum blocks and the gaps read through between
        wanted ranges included, so at least what they delivered from it."""
        return lib.plaid_deserializer_bytes_read(self.handle)

    def verify(self):
        """Read and check every checksum of the file (in place, in parallel, with memory
        bounded by one chunk per worker); `ChecksumError` names a damaged tensor."""
        self._check(lib.plaid_deserializer_verify(self.handle))

    def load(self, destinations):
        """Load into caller memory. ``destinations`` maps tensor indices to
        ``(kind, device, address, capacity)`` (`_lib.DEST_HOST` or `_lib.DEST_CUDA`), or
        ``(kind, device, address, capacity, slice_dim, slice_start, slice_stop, dtype)``
        for a slice and/or a dtype conversion (``plaid_destination``'s fields); the
        others are skipped. Returns when every byte has landed (and been verified)."""
        handle = self.handle
        error = []

        @_lib.PLACE_FN
        def place(_user, info, dest):
            try:
                target = destinations.get(info.contents.index)
                if target is not None:
                    d = dest.contents
                    d.kind, d.device, d.address, d.capacity = target[:4]
                    if len(target) > 4:
                        d.slice_dim, d.slice_start, d.slice_stop, d.dtype = target[4:]
                return 0
            except BaseException as e:  # re-raised after the call returns
                error.append(e)
                return 1

        status = lib.plaid_deserializer_load(handle, place, None)
        if error:
            raise error[0]
        self._check(status)

    def load_host(self, wanted=None, views=None):
        """Load the tensors ``wanted(meta)`` selects (all for None) into one allocation made
        by the library. Returns a `HostArena`. With ``views``, ``views(meta)`` gives instead
        each tensor's view (a `TensorMeta.viewed`, or None to skip it): the arena holds the
        slices, converted."""
        if views is not None:
            return self._load_host_views(views)
        handle = self.handle
        error = []
        callback = None
        if wanted is not None:
            @_lib.FILTER_FN
            def callback(_user, info):
                try:
                    return 1 if wanted(self.tensors[info.contents.index]) else 0
                except BaseException as e:  # re-raised after the call returns
                    error.append(e)
                    return -1  # cancels the load before anything is read
        arena = ctypes.c_void_p()
        status = lib.plaid_deserializer_load_host(handle, callback or _lib.FILTER_FN(), None,
                                                  ctypes.byref(arena))
        return self._arena(status, arena, error)

    def _arena(self, status, arena, error):
        """The arena a `load_host` call made, or the error of its callback or status."""
        if status == 0 and error:
            lib.plaid_host_arena_free(arena)
        if error:
            raise error[0]
        self._check(status)
        return HostArena(arena)

    def _load_host_views(self, views):
        handle = self.handle
        error = []

        @_lib.PLACE_FN
        def place(_user, info, dest):
            try:
                viewed = views(self.tensors[info.contents.index])
                # An empty view (a share of no indices) needs no load: the arena has no
                # buffer for it.
                if viewed is not None and viewed.nbytes:
                    d = dest.contents
                    d.kind = _lib.DEST_HOST
                    d.slice_dim, d.slice_start, d.slice_stop, d.dtype = \
                        viewed.view or (0, 0, 0, 0)
                return 0
            except BaseException as e:  # re-raised after the call returns
                error.append(e)
                return 1

        arena = ctypes.c_void_p()
        status = lib.plaid_deserializer_load_host_views(handle, place, None, ctypes.byref(arena))
        return self._arena(status, arena, error)


class InvalidUse(_lib.InvalidArgumentError):
    """A handle used after ``close()``."""


class HostArena:
    """Tensors in memory the library allocated; freed when the last view of it is gone."""

    def __init__(self, handle):
        self._handle = handle
        self._finalizer = weakref.finalize(self, lib.plaid_host_arena_free, handle)

    def buffer(self, index):
        """A ctypes byte array over tensor ``index``'s bytes that keeps the arena alive,
        or None when the tensor was not loaded."""
        data, nbytes = ctypes.c_void_p(), ctypes.c_uint64()
        status = lib.plaid_host_arena_tensor(self._handle, index, ctypes.byref(data),
                                             ctypes.byref(nbytes))
        if status != 0:
            return None
        array = (ctypes.c_uint8 * nbytes.value).from_address(data.value or 0) \
            if nbytes.value else (ctypes.c_uint8 * 0)()
        array._owner = self  # the memory lives as long as any array over it
        return array


FORMATS = ("plaid", "safetensors", "tensorizer")


def output_format(path, format=None):
    """The format to write ``path`` in: ``format`` where given, else from the name
    (``.safetensors``, ``.tensors``, else plaid)."""
    if format is not None:
        if format not in FORMATS:
            raise _lib.InvalidArgumentError(
                f"format {format!r}: use 'plaid', 'safetensors' or 'tensorizer'")
        return format
    name = os.fsdecode(path)
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".tensors"):
        return "tensorizer"
    return "plaid"


def save(path, tensors, metadata=None, storage_options=None, format=None, encryption=None):
    """`write` in the format ``format`` or the name picks: plaid directly; safetensors and
    tensorizer by writing plaid beside the target, then converting (read back, verified and
    compared; atomic). ``encryption`` (an `Encryption`) encrypts a plaid or tensorizer
    output; the file staged for a tensorizer output is itself encrypted, under a random key
    that lives only in this process."""
    fmt = output_format(path, format)
    if fmt == "plaid":
        return write(path, tensors, metadata, storage_options, encryption)
    if encryption is not None and fmt == "safetensors":
        raise _lib.InvalidArgumentError(
            "safetensors files cannot be encrypted: write plaid or tensorizer with a key")
    if _source.is_url(os.fsdecode(path)) and storage_options:
        raise _lib.UnsupportedError(
            f"{os.fsdecode(path)}: writing {fmt} to a URL takes its configuration from the "
            "environment only; write plaid's format, or drop storage_options")
    import secrets
    import tempfile
    folder = None if _source.is_url(os.fsdecode(path)) else \
        (os.path.dirname(os.path.abspath(os.fsdecode(path))) or ".")
    handle, staged = tempfile.mkstemp(prefix=".plaid-save.", suffix=".plaid", dir=folder)
    os.close(handle)
    staging_key = Encryption(key=secrets.token_bytes(32)) if encryption is not None else None
    try:
        # The staged file is read once and deleted: no fsync for it (the output gets one).
        write(staged, tensors, metadata, encryption=staging_key, sync=False)
        if encryption is None:
            check(lib.plaid_convert(os.fsencode(staged), os.fsencode(path), fmt.encode()))
        else:
            with staging_key.read_options() as read, encryption.write_options() as out:
                check(lib.plaid_convert_with(os.fsencode(staged), os.fsencode(path),
                                             fmt.encode(), read, out))
    except _lib.PlaidError as e:
        # The staged file is plaid's business: the error names the target.
        raise _lib.renamed(e, staged, os.fsdecode(path)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)


class Encryption:
    """Key material for writing (or reading) an encrypted file: a raw 32-byte ``key``, or a
    ``passphrase`` (str, UTF-8, or bytes) with the Argon2id cost ``passes`` over ``memory``
    bytes (by default 3 and 256 MiB, tensorizer's defaults) and an optional fixed ``salt``
    (16 bytes; by default each file gets a fresh one), and the ``cipher`` of a plaid
    file: ``"aegis-256x4"`` (the default) or ``"aes-256-gcm"``. A cost above what readers
    take by default (1 GiB, 16 passes) is refused unless ``above_read_limits=True`` (its
    readers must then raise their ``passphrase_limits``). plaid copies the material into
    option handles that it zeroes when they are freed; Python's own copies are Python's."""

    __slots__ = ("key", "passphrase", "passes", "memory", "cipher", "above_read_limits",
                 "salt")

    CIPHERS = {"aes-256-gcm": 1, "aegis-256x4": 2}

    def __init__(self, key=None, passphrase=None, passes=None, memory=None, cipher=None,
                 above_read_limits=False, salt=None):
        if cipher is not None and cipher not in self.CIPHERS:
            raise _lib.InvalidArgumentError(
                f"cipher {cipher!r}: 'aegis-256x4' or 'aes-256-gcm'")
        self.cipher = cipher
        if (key is None) == (passphrase is None):
            raise _lib.InvalidArgumentError("encryption: give a key or a passphrase, one of them")
        if key is not None:
            key = bytes(key)
            if len(key) != 32:
                raise _lib.InvalidArgumentError(f"a key is 32 bytes, not {len(key)}")
        if passphrase is not None and isinstance(passphrase, str):
            passphrase = passphrase.encode("utf-8")
        self.key = key
        self.passphrase = None if passphrase is None else bytes(passphrase)
        self.passes = passes
        self.memory = memory
        self.above_read_limits = bool(above_read_limits)
        self.salt = None if salt is None else bytes(salt)

    def apply(self, options):
        """Set this material (and cipher) on a ``plaid_write_options`` handle."""
        if self.cipher is not None:
            check(lib.plaid_write_options_set_cipher(options, self.CIPHERS[self.cipher]))
        if self.key is not None:
            check(lib.plaid_write_options_set_key(options, self.key, len(self.key)))
        else:
            check(lib.plaid_write_options_set_passphrase(options, self.passphrase,
                                                         len(self.passphrase)))
            if self.salt is not None:
                check(lib.plaid_write_options_set_passphrase_salt(options, self.salt,
                                                                  len(self.salt)))
        if self.above_read_limits:
            check(lib.plaid_write_options_set_kdf_above_read_limits(options, 1))
        if self.passes is not None or self.memory is not None:
            check(lib.plaid_write_options_set_passphrase_limits(
                options, int(self.passes if self.passes is not None else 3),
                int(self.memory if self.memory is not None else 256 << 20)))

    @contextlib.contextmanager
    def write_options(self):
        """A ``plaid_write_options`` handle carrying this material, freed on exit."""
        options = ctypes.c_void_p()
        check(lib.plaid_write_options_new(ctypes.byref(options)))
        try:
            self.apply(options)
            yield options
        finally:
            lib.plaid_write_options_free(options)

    @contextlib.contextmanager
    def read_options(self):
        """A ``plaid_read_options`` handle carrying this material, freed on exit."""
        options = ctypes.c_void_p()
        check(lib.plaid_read_options_new(ctypes.byref(options)))
        try:
            if self.key is not None:
                check(lib.plaid_read_options_set_key(options, self.key, len(self.key)))
            else:
                check(lib.plaid_read_options_set_passphrase(options, self.passphrase,
                                                            len(self.passphrase)))
            if self.above_read_limits:
                check(lib.plaid_read_options_set_passphrase_limits(
                    options, max(int(self.memory or 0), 1 << 30), max(int(self.passes or 0), 16)))
            yield options
        finally:
            lib.plaid_read_options_free(options)

    def __repr__(self):
        return "Encryption(<key>)" if self.key is not None else "Encryption(<passphrase>)"


def encryption(key=None, passphrase=None, cipher=None):
    """An `Encryption` from the ``key=``/``passphrase=``/``cipher=`` arguments of the save
    functions, or None when there is neither a key nor a passphrase."""
    if key is None and passphrase is None:
        if cipher is not None:
            raise _lib.InvalidArgumentError("cipher= without a key or a passphrase")
        return None
    return Encryption(key=key, passphrase=passphrase, cipher=cipher)


def set_storage(setter, options, storage_options):
    """Apply a dict of remote storage options (object_store-style keys) to ``options``."""
    for key, value in (storage_options or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"storage option keys are str, got {key!r}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        check(setter(options, key.encode(), str(value).encode()))


def write(path, tensors, metadata=None, storage_options=None, encryption=None, sync=True):
    """Write a plaid file. ``tensors`` is a list of dicts with ``name``, ``dtype_id``,
    ``shape``, and either ``address`` (host) or ``cuda`` ((device, address)), ``nbytes``,
    optionally ``role``/``module_index``/``path`` and ``keep`` (an object that owns the
    memory until the file is written). Atomic: nothing appears at ``path`` on failure.
    ``path`` may be an object storage URL (``s3://``, ``gs://``, ``az://``), written with a
    multipart upload that completes only on success (``storage_options`` configure it).
    ``encryption`` (an `Encryption`) encrypts the tensor data. ``sync=False`` skips the
    fsync (for a file read once and deleted)."""
    options = ctypes.c_void_p()
    check(lib.plaid_write_options_new(ctypes.byref(options)))
    serializer = ctypes.c_void_p()
    try:
        check(lib.plaid_write_options_set_sync(options, 1 if sync else 0))
        set_storage(lib.plaid_write_options_set_storage, options, storage_options)
        if encryption is not None:
            encryption.apply(options)
        check(lib.plaid_serializer_new(os.fsencode(path), options, ctypes.byref(serializer)))
    finally:
        lib.plaid_write_options_free(options)
    try:
        for t in tensors:
            shape = (ctypes.c_uint64 * max(len(t["shape"]), 1))(*t["shape"])
            name = t["name"].encode("utf-8")
            if "cuda" in t:
                device, address = t["cuda"]
                check(lib.plaid_serializer_add_tensor_cuda(
                    serializer, name, t["dtype_id"], shape, len(t["shape"]), device, address,
                    t["nbytes"]))
            else:
                check(lib.plaid_serializer_add_tensor(
                    serializer, name, t["dtype_id"], shape, len(t["shape"]),
                    t["address"] or None, t["nbytes"]))
            if t.get("role") or t.get("module_index") or t.get("path"):
                path_json = json.dumps(t["path"], separators=(",", ":"), ensure_ascii=True) \
                    if t.get("path") else None
                check(lib.plaid_serializer_set_tensor_origin(
                    serializer, name, _lib.ROLE_IDS.get(t.get("role"), 0),
                    int(t.get("module_index") or 0),
                    path_json.encode() if path_json else None))
        for key, value in (metadata or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise _lib.InvalidArgumentError(
                    f"metadata must map str to str, got {key!r}: {type(value).__name__}")
            check(lib.plaid_serializer_set_metadata(serializer, key.encode(), value.encode()))
        check(lib.plaid_serializer_finish(serializer))
    finally:
        lib.plaid_serializer_free(serializer)
