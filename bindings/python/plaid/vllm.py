"""plaid as a vLLM load format: ``--load-format plaid``.

The package registers it through the entry point ``plaid`` of the group
``vllm.general_plugins`` (`register`), which vLLM loads in every one of its processes (the
front end, the engine core and each worker). Its options come from
``--model-loader-extra-config`` (a JSON object), with these keys:

- ``path``: where the weights are: a file (plaid, safetensors or tensorizer), a directory, a
  ``model.safetensors.index.json``, or a URL (``s3://``, ``gs://``, ``az://``,
  ``http(s)://``) of a file or of an index. Default: the model directory (config and
  tokenizer always come from vLLM's ``--model``).
- ``slices`` (default true): each tensor-parallel rank reads only its share. The model's own
  ``load_weights`` and weight loaders decide what a rank takes: plaid hands them lazy
  tensors that record ``narrow``s and turn the final ``copy_`` into a read of exactly that
  range (rounded to the file's checksum blocks when verifying) straight into the
  parameter's memory. Any other operation reads the tensor (or the range narrowed so far).
- ``share`` (default false): the ranks of the tensor-parallel group read the checkpoint once
  between them: tensors are dealt to the ranks by size in windows of at most
  ``PLAID_VLLM_SHARE_WINDOW`` bytes (1 GiB by default), each rank reads its part of the
  window, and the parts are broadcast over vLLM's tensor-parallel group; each rank keeps
  only what its parameters take. Overrides ``slices``.
- ``verify`` (default true), ``threads``, ``requests_in_flight``, ``storage_options``
  (a dict of object_store-style keys), ``key_file`` (32 raw bytes, or 64 hexadecimal
  digits) and ``passphrase_file`` (its text, without a final newline) for encrypted
  checkpoints.

`load_model` is vLLM's own, so ``process_weights_after_loading`` runs as for any loader, and
tensors keep their stored dtypes (the parameters' weight loaders do what the default loader
does with them). Each rank logs one line at the end: tensors, bytes read from storage,
bytes delivered, seconds, GB/s.
"""

import json
import os
import time

from . import _core, _lib

ALLOWED_KEYS = ("path", "slices", "share", "verify", "threads", "requests_in_flight",
                "storage_options", "key_file", "passphrase_file")

_BOOLS = {"slices": True, "share": False, "verify": True}
_INTS = ("threads", "requests_in_flight")

# The window of `share`, in bytes (the environment's PLAID_VLLM_SHARE_WINDOW overrides it).
SHARE_WINDOW = 1 << 30

# The tensor vLLM's tensorizer writes into each of its per-rank files.
_VLLM_MARKER = ".vllm_tensorized_marker"

_URL_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://",
                "http://", "https://")


class Options:
    """The load format's options, checked: `Options.parse(extra_config)`."""

    __slots__ = ALLOWED_KEYS

    @classmethod
    def parse(cls, extra):
        """Options from ``--model-loader-extra-config`` (a dict, or None). An unknown key, or
        a value of the wrong type, is a `ValueError` naming it (and the allowed keys)."""
        extra = {} if extra is None else extra
        if not isinstance(extra, dict):
            raise ValueError("load format plaid: model_loader_extra_config must be a JSON "
                             f"object, got {type(extra).__name__}")
        unknown = sorted(set(extra) - set(ALLOWED_KEYS))
        if unknown:
            raise ValueError(f"load format plaid: unknown option(s) {', '.join(unknown)}; "
                             f"the allowed keys are: {', '.join(ALLOWED_KEYS)}")
        out = cls()
        for key, default in _BOOLS.items():
            value = extra.get(key, default)
            if not isinstance(value, bool):
                raise ValueError(f"load format plaid: {key} must be true or false, got "
                                 f"{value!r}")
            setattr(out, key, value)
        for key in _INTS:
            value = extra.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"load format plaid: {key} must be a non-negative integer, "
                                 f"got {value!r}")
            setattr(out, key, value)
        for key in ("path", "key_file", "passphrase_file"):
            value = extra.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"load format plaid: {key} must be a string, got {value!r}")
            setattr(out, key, value)
        storage = extra.get("storage_options")
        if storage is not None and (not isinstance(storage, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in storage.items())):
            raise ValueError("load format plaid: storage_options must be an object of "
                             f"strings, got {storage!r}")
        out.storage_options = storage
        if out.key_file is not None and out.passphrase_file is not None:
            raise ValueError("load format plaid: give key_file or passphrase_file, not both")
        return out

    def secret(self):
        """``{"key": ...}`` or ``{"passphrase": ...}`` read from their files, or ``{}``."""
        if self.key_file is not None:
            with open(self.key_file, "rb") as f:
                raw = f.read()
            text = raw.strip()
            if len(raw) == 32:
                return {"key": raw}
            if len(text) == 64:
                try:
                    return {"key": bytes.fromhex(text.decode("ascii"))}
                except (UnicodeDecodeError, ValueError):
                    pass
            raise ValueError(f"load format plaid: key_file {self.key_file} holds {len(raw)} "
                             "bytes; a key is 32 raw bytes or 64 hexadecimal digits")
        if self.passphrase_file is not None:
            with open(self.passphrase_file, "rb") as f:
                text = f.read()
            if text.endswith(b"\n"):
                text = text[:-1]
            if text.endswith(b"\r"):
                text = text[:-1]
            return {"passphrase": text}
        return {}


def is_url(path):
    return isinstance(path, str) and path.lower().startswith(_URL_SCHEMES)


def weight_files(path):
    """The files that hold a checkpoint's tensors: ``path`` itself for a file or a URL (an
    index too: plaid opens a sharded checkpoint through it), and for a directory its
    ``model.safetensors.index.json``, else its ``*.plaid``, else its ``*.safetensors``,
    else its ``*.tensors`` files. `FileNotFoundError` names what was looked for."""
    if is_url(path) or not os.path.isdir(path):
        if not is_url(path) and not os.path.exists(path):
            raise FileNotFoundError(f"load format plaid: no weights at {path}")
        return [path]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        return [index]
    names = sorted(os.listdir(path))
    for suffix in (".plaid", ".safetensors", ".tensors"):
        found = [os.path.join(path, n) for n in names if n.endswith(suffix)
                 and os.path.isfile(os.path.join(path, n))]
        if found:
            return found
    raise FileNotFoundError(f"load format plaid: no weights in directory {path} (looked for "
                            "model.safetensors.index.json, *.plaid, *.safetensors, *.tensors)")


class Stats:
    """What one rank's load did: tensors and bytes delivered, bytes read from storage."""

    def __init__(self):
        self.tensors = 0
        self.read = 0
        # Bytes delivered by how the tensor was cut: "dim0" (column-parallel and
        # vocabulary-parallel shares), "dim1" (row-parallel shares), "whole" (replicated).
        self.cuts = {"dim0": 0, "dim1": 0, "whole": 0}
        self.started = time.perf_counter()

    def delivering(self, nbytes, view):
        """Count ``nbytes`` delivered of a tensor cut as ``view`` (``(dim, start, stop)``,
        or None for the whole tensor)."""
        key = "whole" if view is None else ("dim0" if view[0] == 0 else "dim1")
        self.cuts[key] += nbytes

    @property
    def delivered(self):
        """Bytes handed to the model's weight loaders."""
        return sum(self.cuts.values())

    def line(self, rank):
        seconds = time.perf_counter() - self.started
        rate = self.read / seconds / 1e9 if seconds > 0 else 0.0
        cuts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in self.cuts.items())
        return (f"plaid: rank {rank} loaded {self.tensors} tensors: {self.read / 1e6:.1f} MB "
                f"read from storage, {self.delivered / 1e6:.1f} MB delivered ({cuts}), in "
                f"{seconds:.2f} s ({rate:.2f} GB/s)")


class Checkpoint:
    """The open files of a checkpoint (each a `plaid.Reader`); `close` counts the bytes they
    read from storage into the stats."""

    def __init__(self, path, options, stats):
        self.stats = stats
        self.path = path
        secret = options.secret()
        self.readers = []
        try:
            for name in weight_files(path):
                reader = _core.Reader(name, verify=options.verify, threads=options.threads,
                                      requests_in_flight=options.requests_in_flight,
                                      storage_options=options.storage_options, **secret)
                self.readers.append(reader)
                if any(m.name == _VLLM_MARKER for m in reader.tensors):
                    raise _lib.UnsupportedError(
                        f"{reader.path}: a file written by vLLM's tensorizer for one "
                        "tensor-parallel rank (it holds the tensor "
                        f"{_VLLM_MARKER}); load it with --load-format tensorizer, or give "
                        "load format plaid the model's own checkpoint")
        except BaseException:
            self.close()
            raise
    def tensors(self):
        """Every ``(reader, meta)`` in file order."""
        return [(r, m) for r in self.readers for m in r.tensors]

    def count(self):
        """Add what every file read from storage (`Reader.bytes_read`) to the stats."""
        self.stats.read = sum(r.bytes_read() for r in self.readers)

    def close(self):
        if self.readers:
            self.count()
        for reader in self.readers:
            reader.close()
        self.readers = []


def register():
    """Register the load format ``plaid`` with vLLM (the entry point of the group
    ``vllm.general_plugins``). Idempotent; does nothing where vLLM is not installed."""
    try:
        from vllm.model_executor.model_loader import register_model_loader  # noqa: F401
    except ImportError:
        return None
    try:
        from . import _vllm
    except Exception as e:  # a vLLM whose loader API moved: warn, never break vLLM itself
        import warnings
        warnings.warn(f"plaid: the load format plaid is not available in this vLLM: {e}")
        return None
    return _vllm.register()
