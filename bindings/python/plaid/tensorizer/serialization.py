"""tensorizer's ``tensorizer.serialization`` on plaid: `TensorSerializer`,
`TensorDeserializer`, `EncryptionParams`, `DecryptionParams`, `TensorType`,
`CryptographyError` and `HashMismatchError`, with tensorizer's names, arguments, structure
(nested state dicts and lists come back as they went in) and exceptions. Files are written in
tensorizer's format (which tensorizer reads) unless the target's name ends ``.plaid``; reads
go through plaid (verified, straight into the module's own storage where it has some)."""

import contextlib
import enum
import importlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Mapping

import torch

from .. import _core, _lib, _source
from .._lib import ChecksumError, DecryptError, InvalidArgumentError, NotFoundError, PlaidError
from ..torch import (_FROM_TORCH, _destination, _device, _items, _load_all, _load_mapped,
                     _tensor_from, torch_dtype)

__all__ = ["CryptographyError", "DecryptionParams", "EncryptionParams", "HashMismatchError",
           "TensorDeserializer", "TensorSerializer", "TensorType"]


def _peer_class(name, kind=Exception):
    """``(tensorizer.serialization.<name>,)`` where the real tensorizer is importable (and
    ``tensorizer`` is not this package standing in for it), else ``()``: plaid's
    exceptions and parameters are then subclasses of tensorizer's, so code catching
    tensorizer's exceptions catches plaid's, and tensorizer's functions take plaid's
    parameters. Resolved here only: ``import plaid`` never imports tensorizer."""
    top = sys.modules.get("tensorizer")
    if top is not None and getattr(top, "__name__", "") != "tensorizer":
        return ()
    try:
        if top is None and importlib.util.find_spec("tensorizer") is None:
            return ()
        peer = importlib.import_module("tensorizer.serialization")
    except Exception:  # a broken or absent tensorizer: plaid's classes stand alone
        return ()
    if getattr(peer, "__name__", "") != "tensorizer.serialization":
        return ()
    found = getattr(peer, name, None)
    return (found,) if isinstance(found, type) and issubclass(found, kind) else ()


class CryptographyError(DecryptError, *_peer_class("CryptographyError")):
    """tensorizer's ``CryptographyError``: an encrypted file without a key, a wrong key or
    passphrase, damaged ciphertext, or a file stored in the clear opened with a key. Also a
    `plaid.DecryptError` (and tensorizer's own class where tensorizer is installed)."""


class HashMismatchError(ChecksumError, *_peer_class("HashMismatchError")):
    """tensorizer's ``HashMismatchError``: data that does not match its stored checksum.
    Also a `plaid.ChecksumError` (and tensorizer's own class where it is installed)."""


_AS_PEER = {DecryptError: CryptographyError, ChecksumError: HashMismatchError}


@contextlib.contextmanager
def _peer_errors():
    """Raise plaid's decryption and checksum errors as tensorizer's."""
    try:
        yield
    except (DecryptError, ChecksumError) as e:
        if isinstance(e, (CryptographyError, HashMismatchError)):
            raise
        cls = _AS_PEER[DecryptError if isinstance(e, DecryptError) else ChecksumError]
        raise cls(e.message, e.status) from e


class TensorType(enum.IntEnum):
    """What a tensor was in its module (tensorizer's ``TensorType``)."""
    PARAM = 0
    BUFFER = 1
    STATE_DICT = 2


_ROLE_TYPES = {"param": TensorType.PARAM, "buffer": TensorType.BUFFER,
               "state_dict": TensorType.STATE_DICT, None: TensorType.STATE_DICT}


def _output_format(target, format):
    if format is not None:
        return _core.output_format("x", format)
    name = target if _source.is_path(target) else getattr(target, "name", "")
    name = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else ""
    return "plaid" if name.endswith(".plaid") else "tensorizer"


class TensorSerializer:
    """Collects tensors, then writes them on ``close()`` as tensorizer's
    ``TensorSerializer`` does: in tensorizer's format (which tensorizer reads), or in
    plaid's where the target's name ends ``.plaid``; ``format`` (``"tensorizer"``,
    ``"plaid"``, ``"safetensors"``) overrides. ``file_obj`` is a path, a URL
    (``s3://``, ``gs://``, ``az://``; ``storage_options`` configure plaid's format there)
    or an open binary file, written from its position and closed by ``close()``, as
    tensorizer closes it. Roles (parameter, buffer, state-dict entry), module indices and
    the structure of nested state dicts are kept. Tensors on the meta device are written
    as zeros of their shape and dtype, as tensorizer writes them. A path is written
    atomically: nothing appears there on failure. ``encryption`` is an `EncryptionParams`
    (or tensorizer's, from a raw key)."""

    def __init__(self, file_obj, compress_tensors=False, *, encryption=None, format=None,
                 metadata=None, storage_options=None, limit_cpu_concurrency=None,
                 **_compatible):
        if compress_tensors:
            raise _lib.UnsupportedError("TensorSerializer(compress_tensors=True): "
                                        "compression is not supported (nor by tensorizer)")
        self._encryption = _encryption_of(encryption)
        if isinstance(file_obj, int) and not isinstance(file_obj, bool):
            file_obj = open(file_obj, "wb", closefd=False)
        elif isinstance(file_obj, bytes):
            file_obj = os.fsdecode(file_obj)
        if not _source.is_path(file_obj):
            if not hasattr(file_obj, "write"):
                raise TypeError("TensorSerializer writes to a path, a URL or an open binary "
                                f"file, not a {type(file_obj).__name__}")
            if isinstance(file_obj, io.TextIOBase):
                raise InvalidArgumentError("TensorSerializer: the file is open in text mode; "
                                           "open it in binary mode ('wb')")
        self._target = file_obj
        self._format = _output_format(file_obj, format)
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
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r}: expected a torch.Tensor, got "
                            f"{type(tensor).__name__}")
        if tensor.device.type == "meta":
            tensor = torch.zeros(tensor.shape, dtype=tensor.dtype)
        self._names.add(name)
        origin = {"role": role, "module_index": module_index}
        if path is not None:
            origin["path"] = path
        self._tensors.append((name, tensor, origin))
        self.total_tensor_bytes += tensor.numel() * tensor.element_size()

    def write_tensor(self, idx, name, tensor_type, tensor):
        """Add one tensor (torch, or a numpy array). ``tensor_type`` is a `TensorType` (or
        tensorizer's) or ``"param"``/``"buffer"``/``"state_dict"``."""
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.from_numpy(tensor)
        role = getattr(tensor_type, "name", tensor_type)
        if isinstance(role, int):
            role = TensorType(role).name
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
        """Add a state dict: a flat dict of tensors, or nested dicts and lists (and tuples),
        whose structure `TensorDeserializer` gives back (``keys()``, ``tree()``)."""
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
                if not path:
                    raise TypeError("write_state_dict takes a dict, a list or a tuple of "
                                    f"tensors, not a {type(obj).__name__}")
                if not isinstance(obj, torch.Tensor):
                    obj = torch.as_tensor(obj)
                name = ".".join(str(p) for p in path)
                nested = len(path) > 1 or not isinstance(path[0], str)
                self._add(name, obj, "state_dict", 0, path if nested else None)
        walk(state_dict, [])

    def close(self):
        """Write the file (a path atomically: nothing appears there on failure), then close
        a file object given."""
        if self._closed:
            return
        self._closed = True
        tensors, self._tensors = self._tensors, []
        items = _items(tensors)
        if _source.is_path(self._target):
            _core.save(self._target, items, self._metadata, self._storage_options,
                       self._format, self._encryption)
            return
        with tempfile.TemporaryDirectory(prefix="plaid-serializer.") as folder:
            staged = os.path.join(folder, "out." + {"plaid": "plaid", "tensorizer": "tensors"}
                                  .get(self._format, "safetensors"))
            _core.save(staged, items, self._metadata, None, self._format, self._encryption)
            with open(staged, "rb") as f:
                shutil.copyfileobj(f, self._target, 8 << 20)
        self._target.flush()
        self._target.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        self._closed = True


class EncryptionParams(*_peer_class("EncryptionParams", object)):
    """How to encrypt (tensorizer's ``EncryptionParams``): ``EncryptionParams(key)`` with a
    raw 32-byte key, ``EncryptionParams.random()`` (read the key back from ``.key`` and
    keep it), or ``EncryptionParams.from_string(passphrase, opslimit, memlimit, salt)``: a
    key derived by Argon2id, with ``salt`` or a fresh salt for every file plaid writes
    (decrypt with ``DecryptionParams.from_string``). Pass it as
    ``TensorSerializer(encryption=...)``. tensorizer files are encrypted as tensorizer
    encrypts them (XSalsa20-Poly1305); plaid's files use AEGIS-256X4 per checksum block, or
    AES-256-GCM where ``cipher = "aes-256-gcm"`` is set on the params (``docs/FORMAT.md``
    section 13). Where tensorizer is installed this is a subclass of its
    ``EncryptionParams``, which its own ``TensorSerializer`` takes (a passphrase's key is
    then derived by tensorizer, once, when tensorizer asks for it)."""

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

    __slots__ = ("_raw_key", "passphrase", "opslimit", "memlimit", "cipher", "_salt", "_peer")

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError("EncryptionParams(key): a key is 32 bytes; for a passphrase use "
                            "EncryptionParams.from_string")
        if len(key) != 32:
            raise InvalidArgumentError(f"EncryptionParams: a key is 32 bytes, not {len(key)}")
        self._raw_key = bytes(key)
        self.passphrase = None
        self.opslimit = self.memlimit = self.cipher = self._salt = self._peer = None

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
        ``salt`` (16 bytes, or a str encoded with ``encoding``) fixes the salt, as
        tensorizer's does; by default every file gets a fresh one. The file records the
        salt and limits, so ``DecryptionParams.from_string`` needs only the passphrase."""
        if not source:
            raise ValueError("Source cannot be empty")
        for name, value, kind in (("opslimit", opslimit, cls.OpsLimit),
                                  ("memlimit", memlimit, cls.MemLimit)):
            other = cls.MemLimit if kind is cls.OpsLimit else cls.OpsLimit
            if isinstance(value, other) or not isinstance(value, (kind, int, type(None))):
                raise TypeError(f"{name} parameter: expected EncryptionParams.{kind.__name__}, "
                                f"int, or None; {type(value).__name__} found")
        if isinstance(salt, str):
            salt = salt.encode(encoding)
        if salt is not None:
            salt = bytes(salt)
            if len(salt) != 16:
                raise InvalidArgumentError(f"EncryptionParams.from_string: a salt is 16 bytes, "
                                           f"not {len(salt)}")
        params = cls.__new__(cls)
        params._raw_key = None
        params.passphrase = source.encode(encoding) if isinstance(source, str) else \
            bytes(source)
        params.opslimit = int(opslimit) if opslimit is not None else None
        params.memlimit = int(memlimit) if memlimit is not None else None
        params.cipher = None
        params._salt = salt
        params._peer = None
        return params

    @property
    def key(self):
        """The raw key; for a passphrase, the key tensorizer derives from it (asked by
        tensorizer's own serializer; plaid derives per file and never needs it)."""
        if self._raw_key is not None:
            return self._raw_key
        return self._peer_derivation()[0]

    def _crypt_info_chunk(self):
        # tensorizer's serializer asks for how the key was derived (None: a raw key).
        if self._raw_key is not None:
            return None
        return self._peer_derivation()[1].chunk()

    def _peer_derivation(self):
        """``(key, algorithm)`` as tensorizer's ``from_string`` makes them, derived once."""
        if self._peer is None:
            peer = sys.modules.get("tensorizer.serialization")
            if peer is None or not hasattr(peer, "_crypt"):
                raise TypeError("a passphrase's key is derived by plaid per file; its raw key "
                                "exists only for tensorizer's own serializer (install "
                                "tensorizer)")
            pwhash = peer._crypt.PWHash(
                salt=self._salt,
                opslimit=self.opslimit if self.opslimit is not None else
                peer._crypt.PWHash.OPSLIMIT_MODERATE,
                memlimit=self.memlimit if self.memlimit is not None else
                peer._crypt.PWHash.MEMLIMIT_MODERATE)
            self._peer = (pwhash.hash(self.passphrase),
                          peer.EncryptionParams._FromStringPWHashAlgorithm(pwhash_params=pwhash))
        return self._peer

    @property
    def salt(self):
        """The salt given to `from_string`; `ValueError` for a raw key (no derivation) or a
        salt drawn afresh for each file."""
        if self._salt is None:
            raise ValueError("no fixed salt: a raw key has none, and a passphrase without "
                             "salt= gets a fresh salt in every file")
        return self._salt

    def __repr__(self):
        return "EncryptionParams(<key>)" if self._raw_key is not None else \
            "EncryptionParams(<passphrase>)"


def _encryption_of(encryption):
    """The `_core.Encryption` of a ``TensorSerializer(encryption=...)`` argument: plaid's
    `EncryptionParams`, or tensorizer's own made from a raw key (``EncryptionParams(key)``,
    ``.random()``)."""
    if encryption is None:
        return None
    if isinstance(encryption, EncryptionParams):
        return _core.Encryption(key=encryption._raw_key, passphrase=encryption.passphrase,
                                passes=encryption.opslimit, memory=encryption.memlimit,
                                cipher=encryption.cipher, salt=encryption._salt)
    if type(encryption).__name__ == "EncryptionParams" and hasattr(encryption, "key"):
        if getattr(encryption, "_algorithm", None) is not None:
            raise InvalidArgumentError(
                "tensorizer's EncryptionParams.from_string holds only the derived key, not "
                "the passphrase plaid derives it from; use "
                "plaid.tensorizer.EncryptionParams.from_string (the same passphrase decrypts)")
        return _core.Encryption(key=encryption.key)  # tensorizer's, from a raw key
    raise TypeError("TensorSerializer(encryption=...) takes plaid.tensorizer.EncryptionParams "
                    f"or tensorizer's EncryptionParams, not {type(encryption).__name__}")


class DecryptionParams(*_peer_class("DecryptionParams", object)):
    """How to decrypt an encrypted file, plaid's or tensorizer's (tensorizer's
    ``DecryptionParams``): ``from_key(key)`` with the raw 32-byte key, or
    ``from_string(passphrase)`` with the passphrase its ``EncryptionParams.from_string``
    used (the key is derived with the salt and limits the file records). Pass it as
    ``TensorDeserializer(encryption=...)``; where tensorizer is installed it is a
    subclass of its ``DecryptionParams``, which its own deserializer takes."""

    def __init__(self, key=None, passphrase=None):
        if (key is None) == (passphrase is None):
            raise InvalidArgumentError("DecryptionParams: a key or a passphrase, one of them")
        if key is not None and len(bytes(key)) != 32:
            raise InvalidArgumentError(f"DecryptionParams: a key is 32 bytes, not {len(key)}")
        self.key = None if key is None else bytes(key)
        self.passphrase = passphrase

    @property
    def source(self):
        """The passphrase, as bytes (tensorizer's name for it)."""
        return self.passphrase

    @source.setter
    def source(self, value):
        self.passphrase = value

    @classmethod
    def from_key(cls, key):
        """Decrypt with the raw 32-byte ``key``."""
        return cls(key=key)

    @classmethod
    def from_string(cls, source, encoding="utf-8"):
        """Decrypt with a key derived from the passphrase ``source`` (str or bytes)."""
        if not source:
            raise ValueError("Source cannot be empty")
        return cls(passphrase=source.encode(encoding) if isinstance(source, str) else
                   bytes(source))

    def __repr__(self):
        return "DecryptionParams(<key>)" if self.key is not None else \
            "DecryptionParams(<passphrase>)"


class TensorDeserializer(Mapping):
    """A read-only mapping of a file's tensors (tensorizer's ``TensorDeserializer``): a
    plaid, safetensors or tensorizer file given by path (a sharded checkpoint's
    ``model.safetensors.index.json`` too), by URL (``http(s)://``, ``s3://``, ``gs://``,
    ``az://``, configured from the environment and ``storage_options``), as a seekable
    binary file object or as bytes-like data.

    Its keys are tensorizer's: the names of a flat file; for a file written from nested
    state dicts and lists (`TensorSerializer.write_state_dict`), the first level of that
    structure (str keys for dicts, int keys for lists), ``d[key]`` giving a tensor or a
    read-only mapping of the level below, and `tree` the structure itself (lists as lists).

    Making it opens the file and reads its header only. Tensors are read on first access
    (``d[key]``, onto ``device``: default the current CUDA device if there is one, else the
    CPU), by `read_tensors` and `read_numpy_arrays`, or by `load_into_module`, which streams
    them straight into the module's own storage; every read is verified against the file's
    CRCs unless ``verify_hash=False``, and ``verify_hash=True`` checks every stored hash
    (a tensorizer file's SHA-256s too) and, without ``lazy_load``, the whole file up front,
    as tensorizer does. ``filter_func(name)`` (or a glob pattern, or a
    list of them) selects tensors; ``dtype`` casts floating-point tensors. ``encryption`` (a
    `DecryptionParams`, plaid's or tensorizer's) decrypts encrypted files; a wrong or missing
    key raises `CryptographyError` when a tensor is read, and a key given for a file stored
    in the clear raises it at once, unless ``allow_plaintext=True``
    (``passphrase_limits=(max_memory, max_passes)`` bounds a file's key derivation, by
    default 1 GiB and 16 passes). ``plaid_mode``, ``plaid_mode_buffers`` and ``lazy_load``
    are accepted for compatibility; ``num_readers`` sets the worker threads.

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
                    "TensorDeserializer(encryption=...) takes DecryptionParams (plaid's or "
                    f"tensorizer's: from_key, from_string), not a {type(encryption).__name__}")
            mmap = False  # the mapping would hold ciphertext
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = _device(device)
        self._dtype = dtype
        self._split = (rank, world_size, split)
        if (rank is None) != (world_size is None):
            raise InvalidArgumentError("rank and world_size go together")
        self._verify = True if verify_hash is None else bool(verify_hash)
        if isinstance(file_obj, io.TextIOWrapper):
            file_obj = file_obj.buffer
        # tensorizer's verify_hash=True checks every stored hash: the SHA-256s too. By
        # default reads check the CRC-32s alone, which detect the same damage to the data.
        self._verify_sha256 = bool(verify_hash)
        self._reader = _core.Reader(file_obj, verify=self._verify,
                                    verify_sha256=self._verify_sha256,
                                    threads=num_readers or 0,
                                    storage_options=storage_options, key=key,
                                    passphrase=passphrase, allow_plaintext=allow_plaintext,
                                    passphrase_limits=passphrase_limits)
        if (key is not None or passphrase is not None) and not allow_plaintext and \
                any(m.nbytes for m in self._reader.tensors) and \
                not any(m.encrypted for m in self._reader.tensors):
            self._reader.close()
            raise CryptographyError(
                f"{self._reader.path}: decryption was requested, but the file is stored in "
                "the clear (pass allow_plaintext=True to read it anyway)",
                CryptographyError.status)
        chosen = _core.name_filter(filter_func)
        self._metas = {}
        for m in self._reader.tensors:
            if chosen is None or chosen(_filter_name(m)):
                self._metas[m.name] = m
        for meta in self._metas.values():
            torch_dtype(meta)  # refuse a dtype torch lacks now, not halfway through a load
        self._structure = _structure(self._metas.values())
        self._tensors = {}
        # A local file can lend its pages: tensors without storage become views of one
        # private copy-on-write mapping of it (as `load_file` does) when ``mmap`` is on.
        self._mapped_path = file_obj if mmap and _source.is_path(file_obj) \
            and not _source.is_url(file_obj) else None
        self.total_tensor_bytes = sum(m.nbytes for m in self._metas.values())
        self.missing_keys = []
        self.unexpected_keys = []
        if verify_hash and not lazy_load:
            with _peer_errors():
                self._reader.verify()

    # ---- the mapping -------------------------------------------------------------------

    def __getitem__(self, key):
        node = self._structure.get(key, _MISSING) if _hashable(key) else _MISSING
        if node is _MISSING:
            raise KeyError(key)
        if isinstance(node, _core.TensorMeta):
            return self._tensor(node)
        return self._subtree(node, as_lists=False)

    def __iter__(self):
        return iter(self._structure)

    def __len__(self):
        return len(self._structure)

    def __contains__(self, key):
        return _hashable(key) and key in self._structure

    def keys(self):
        return self._structure.keys()

    def tree(self, prefix=None, *, default=None, filter_func=None):
        """The (sub)tree at ``prefix`` (a sequence of keys; None or empty: everything) as it
        was written: dicts as dicts, lists as lists, leaves as tensors;
        ``default`` where nothing matches. ``filter_func(path)`` (the full path of each
        tensor, a list) skips the tensors it refuses."""
        if isinstance(prefix, (str, int)):
            raise TypeError(f"Invalid prefix: expected sequence, got {type(prefix).__name__!r}"
                            " (for a single-element prefix, use a single-element sequence)")
        node = self._structure
        for component in prefix or ():
            if not isinstance(node, dict) or not _hashable(component) or component not in node:
                return default
            node = node[component]
        if isinstance(node, _core.TensorMeta):
            if filter_func is not None and not filter_func(_path_of(node)):
                return default
            return self._tensor(node)
        out = self._subtree(node, as_lists=True, filter_func=filter_func)
        return default if out is None else out

    def _subtree(self, node, as_lists, filter_func=None):
        leaves = [m for m in _leaves(node)
                  if filter_func is None or filter_func(_path_of(m))]
        if not leaves:
            return None
        self._load([m for m in leaves if m.name not in self._tensors])

        def build(level):
            items = []
            for k, v in level.items():
                if isinstance(v, _core.TensorMeta):
                    if v.name in self._tensors:
                        items.append((k, self._tensors[v.name]))
                else:
                    sub = build(v)
                    if sub is not None:
                        items.append((k, sub))
            if not items:
                return None
            if not as_lists:
                return types.MappingProxyType(dict(items))
            if all(isinstance(k, int) for k, _ in items):
                return [v for _, v in items]
            return dict(items)
        return build(node)

    # ---- reading -----------------------------------------------------------------------

    def _tensor(self, meta):
        tensor = self._tensors.get(meta.name)
        if tensor is None:
            self._load([meta])
            tensor = self._tensors[meta.name]
        return tensor

    def _load(self, metas):
        """Read ``metas`` (not read yet) in one pass into ``self._tensors``."""
        if not metas:
            return
        plain = []
        with _peer_errors():
            for meta in metas:
                viewed = self._view(meta)
                if viewed is not meta:
                    tensor = torch.empty(viewed.shape, dtype=torch_dtype(viewed),
                                         device=self._device)
                    if tensor.numel():
                        self._reader.load({meta.index: _destination(tensor, viewed)})
                    self._tensors[meta.name] = self._cast(tensor)
                else:
                    plain.append(meta)
            if plain:
                wanted = {m.index for m in plain}
                loaded = _load_all(self._reader, self._device, lambda m: m.index in wanted)
                for meta in plain:
                    self._tensors[meta.name] = self._cast(loaded[meta.name])

    def _cast(self, tensor):
        if self._dtype is not None and tensor.is_floating_point():
            return tensor.to(self._dtype)
        return tensor

    def _chosen(self, filter_func, num_tensors):
        chosen = _core.name_filter(filter_func)
        metas = [m for m in self._metas.values()
                 if chosen is None or chosen(_filter_name(m))]
        return metas if num_tensors is None or num_tensors < 0 else metas[:num_tensors]

    def read_tensors(self, filter_func=None, num_tensors=-1, verify_hash=None):
        """Yield ``(module_idx, tensor_type, name, tensor)`` for the file's tensors in file
        order (those ``filter_func`` selects; the first ``num_tensors`` when it is not
        -1), read in one pass. ``verify_hash`` may only repeat the constructor's choice."""
        self._same_verify(verify_hash)
        metas = self._chosen(filter_func, num_tensors)
        self._load([m for m in metas if m.name not in self._tensors])
        for meta in metas:
            yield meta.module_index, _ROLE_TYPES.get(meta.role, TensorType.STATE_DICT), \
                meta.name, self._tensors[meta.name]

    def read_numpy_arrays(self, filter_func=None, num_tensors=-1, allow_raw_data=False,
                          verify_hash=None):
        """Yield ``(module_idx, tensor_type, name, array, is_opaque, torch_dtype)`` for the
        file's tensors as numpy arrays (on the CPU only). A dtype numpy lacks (bfloat16,
        float8) raises `ValueError` unless ``allow_raw_data``: then the array holds the
        raw bytes (``V`` items of the element size), ``is_opaque`` is True and
        ``torch_dtype`` names the real dtype (``"torch.bfloat16"``)."""
        import numpy as np
        from .. import numpy as plaid_numpy
        if self._device.type != "cpu":
            raise RuntimeError("read_numpy_arrays is only valid when deserializing to the CPU")
        self._same_verify(verify_hash)
        metas = self._chosen(filter_func, num_tensors)
        for meta in metas:
            if plaid_numpy._TO_NUMPY.get(meta.dtype_id) is None and not allow_raw_data:
                raise ValueError(
                    f"tensor {meta.name!r} has dtype {torch_dtype(meta)}, which numpy lacks: "
                    "read it with read_tensors(), or pass allow_raw_data=True")
        self._load([m for m in metas if m.name not in self._tensors])
        for meta in metas:
            tensor = self._tensors[meta.name].detach().cpu()
            role = _ROLE_TYPES.get(meta.role, TensorType.STATE_DICT)
            if plaid_numpy._TO_NUMPY.get(meta.dtype_id) is not None:
                yield meta.module_index, role, meta.name, tensor.numpy(), False, None
                continue
            size = tensor.element_size()
            raw = tensor.contiguous().view(torch.uint8).numpy() if tensor.numel() else \
                np.empty(0, dtype=np.uint8)
            array = raw.view(np.dtype(f"V{size}")).reshape(tuple(tensor.shape))
            yield meta.module_index, role, meta.name, array, True, str(tensor.dtype)

    def _same_verify(self, verify_hash):
        if verify_hash is not None and bool(verify_hash) != self._verify:
            raise InvalidArgumentError(
                "verify_hash differs from the constructor's; open another TensorDeserializer "
                "to change it")

    def verify_module(self, m):
        """Whether ``m``'s tensors (its state dict and buffers) hold what the file holds:
        ``(passed, [(name, ok), ...])`` for every tensor of the file (verified by plaid as
        it is read) and every one the module lacks."""
        module_tensors = dict(m.state_dict())
        module_tensors.update(m.named_buffers())
        results = []
        self._load([meta for meta in self._metas.values() if meta.name not in self._tensors])
        for name, meta in self._metas.items():
            mine = module_tensors.get(name)
            if mine is None:
                results.append((name, False))
                continue
            stored = self._tensors[name]
            results.append((name, _same_bytes(mine, stored)))
        return all(ok for _, ok in results), results

    @property
    def total_bytes_read(self):
        """The bytes read from the file so far (its header excepted; checksum blocks and
        the gaps read through between wanted ranges included)."""
        return self._reader.bytes_read()

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
          allocation plaid makes for all of them (faulted in by its workers as they write),
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
        with _peer_errors():
            return self._load_into_module(module, filter_func, verify_hash, device, strict)

    def _load_into_module(self, module, filter_func, verify_hash, device, strict):
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
        mapped = _load_mapped(self._mapped_path, self._verify, self._verify_sha256) \
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


_MISSING = object()


def _hashable(key):
    try:
        hash(key)
        return True
    except TypeError:
        return False


def _path_of(meta):
    """A tensor's place in the written structure: its path, or ``[name]``."""
    return list(meta.path) if meta.path else [meta.name]


def _filter_name(meta):
    """What a ``filter_func`` is given for a tensor: its name, or its path (a list) where
    the tensor sits inside nested state dicts or lists."""
    path = meta.path
    if not path or (len(path) == 1 and isinstance(path[0], str)):
        return meta.name
    return list(path)


def _structure(metas):
    """The nested dict of a file's tensors by path (leaves: `TensorMeta`), in file order."""
    root = {}
    for meta in metas:
        path = _path_of(meta)
        level = root
        for component in path[:-1]:
            nxt = level.setdefault(component, {})
            if not isinstance(nxt, dict):  # a leaf and a branch of one name: keep by name
                level = None
                break
            level = nxt
        if level is None or path[-1] in level:
            root.setdefault(meta.name, meta)
        else:
            level[path[-1]] = meta
    return root


def _leaves(node):
    if isinstance(node, _core.TensorMeta):
        yield node
        return
    for v in node.values():
        yield from _leaves(v)


def _same_bytes(a, b):
    """Whether two tensors hold the same dtype, shape and bytes."""
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if a.device.type == "meta" or b.device.type == "meta":
        return False
    a = a.detach().contiguous().cpu()
    b = b.detach().contiguous().cpu()
    if not a.numel():
        return True
    return bool(torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)))


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

