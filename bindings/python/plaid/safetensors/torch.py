"""safetensors' ``safetensors.torch`` on plaid: ``save_file``, ``load_file``, ``save``,
``load``, ``save_model``, ``load_model``, ``storage_ptr``, ``storage_size``, with
safetensors' checks (no sparse, non-contiguous or storage-sharing tensors; tied weights
through `save_model`) and its exceptions. Files are written byte for byte as safetensors
writes them; loads are plaid's (verified, CUDA destinations filled directly)."""

import collections

import torch

from .. import _core, _lib
from .. import torch as plaid_torch
from .._lib import InvalidArgumentError, PlaidError
from . import refuse_missing, to_bytes, translated, write

# safetensors' helpers for shared tensors are listed too: code written for safetensors
# imports them (``from safetensors.torch import _find_shared_tensors``).
__all__ = ["_end_ptr", "_find_shared_tensors", "_is_complete", "_remove_duplicate_names",
           "load", "load_file", "load_model", "save", "save_file", "save_model",
           "storage_ptr", "storage_size"]


_Refused = _lib.RefusedError


def storage_ptr(tensor):
    """The address of the start of ``tensor``'s storage (0 where it has none)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (NotImplementedError, RuntimeError):
        return 0


def storage_size(tensor):
    """The bytes of ``tensor``'s storage."""
    try:
        return tensor.untyped_storage().nbytes()
    except (NotImplementedError, RuntimeError):
        return tensor.nelement() * tensor.element_size()


def _end_ptr(tensor):
    """One past the last byte ``tensor`` uses (its start for an empty tensor)."""
    if not tensor.nelement():
        return tensor.data_ptr()
    last = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
    return tensor.data_ptr() + (last + 1) * tensor.element_size()


def _is_complete(tensor):
    """Whether ``tensor`` covers its whole storage, contiguously."""
    return tensor.data_ptr() == storage_ptr(tensor) and \
        tensor.nelement() * tensor.element_size() == storage_size(tensor)


def _find_shared_tensors(state_dict):
    """Groups of names whose tensors overlap in memory (a set per group; a tensor alone
    is a group of one); tensors without memory (meta) belong to none."""
    by_storage = collections.OrderedDict()
    for name, tensor in state_dict.items():
        if tensor.device.type == "meta" or storage_ptr(tensor) == 0 or \
                storage_size(tensor) == 0:
            continue
        key = (tensor.device, storage_ptr(tensor), storage_size(tensor))
        by_storage.setdefault(key, []).append(name)
    groups = []
    for names in by_storage.values():
        spans = sorted((state_dict[n].data_ptr(), _end_ptr(state_dict[n]), n) for n in names)
        current, reach = None, None
        for start, stop, name in spans:
            if current is None or start >= reach:
                current = set()
                groups.append(current)
                reach = stop
            current.add(name)
            reach = max(reach, stop)
    return groups


def _remove_duplicate_names(state_dict, *, preferred_names=None, discard_names=None):
    """For each group of names sharing memory, the one name to keep (a tensor covering
    its whole storage: among ``preferred_names`` first, then not in ``discard_names``,
    then the first in sorted order) mapped to the others, sorted. A group none of whose
    tensors covers its storage (a lone view of part of a storage too) raises
    `RuntimeError`: saving one would store more than it holds."""
    preferred_names = set(preferred_names or ())
    discard_names = set(discard_names or ())
    out = collections.defaultdict(list)
    for shared in _find_shared_tensors(state_dict):
        complete = {n for n in shared if _is_complete(state_dict[n])}
        if not complete:
            raise _Refused(
                f"tensors {sorted(shared)}: none of them covers its whole storage, so saving "
                "one would store more than the tensors hold; save copies (`.clone()`)",
                _Refused.status)
        keep = sorted(complete)[0]
        kept = complete - discard_names
        if kept:
            keep = sorted(kept)[0]
        preferred = preferred_names & complete
        if preferred:
            keep = sorted(preferred)[0]
        dropped = [n for n in sorted(shared) if n != keep]
        if dropped:
            out[keep].extend(dropped)
    return dict(out)


def _items(tensors):
    """Checks ``tensors`` as safetensors does and describes them for the writer."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    invalid = {k: v for k, v in tensors.items() if not isinstance(v, torch.Tensor)}
    for name, value in invalid.items():
        raise ValueError(f"Key `{name}` is invalid, expected torch.Tensor but received "
                         f"{type(value)}")
    sparse = [k for k, v in tensors.items() if v.layout != torch.strided]
    if sparse:
        raise ValueError(
            f"You are trying to save a sparse tensors: `{sparse}` which this library does "
            "not support. You can make it a dense tensor before saving with `.to_dense()` but "
            "be aware this might make a much larger file than needed.")
    shared = [names for names in _find_shared_tensors(tensors) if len(names) > 1]
    if shared:
        raise _Refused(
            f"Some tensors share memory, this will lead to duplicate memory on disk and "
            f"potential differences when loading them again: {shared}. A potential way to "
            "correctly save your model is to use `save_model`.", _Refused.status)
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise InvalidArgumentError(
                f"You are trying to save a non contiguous tensor: `{name}` which is not "
                "allowed. It either means you are trying to save tensors which are reference "
                "of each other in which case it's recommended to save only the full tensors, "
                "and reslice at load time, or simply call `.contiguous()` on your tensor to "
                "pack it before saving.")
    return plaid_torch._items((n, t, {}) for n, t in tensors.items())


def save_file(tensors, filename, metadata=None):
    """Write ``tensors`` (str to torch tensors, CPU or CUDA) and ``metadata`` (str to
    str) at ``filename`` as safetensors writes it, atomically."""
    write(filename, _items(tensors), metadata)


def save(tensors, metadata=None):
    """The bytes of the safetensors file `save_file` would write."""
    return to_bytes(_items(tensors), metadata)


def _device(device):
    return f"cuda:{device}" if isinstance(device, int) else device


def load_file(filename, device="cpu", *, backend="mmap", **kwargs):
    """Every tensor of ``filename`` on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or an
    int), verified; on the CPU, views of a private mapping of the file (nothing copied).
    ``backend`` (``"mmap"``/``"pread"``) is accepted for safetensors' callers. Further
    keywords are `plaid.torch.load_file`'s."""
    if backend not in ("mmap", "pread"):
        raise translated(InvalidArgumentError(f"backend {backend!r}: use 'mmap' or 'pread'"))
    refuse_missing(filename)
    try:
        return plaid_torch.load_file(filename, _device(device), **kwargs)
    except PlaidError as e:
        raise translated(e) from None


def load(data):
    """The tensors of a safetensors file given as bytes, on the CPU."""
    try:
        with _core.Reader(bytes(data)) as reader:
            return plaid_torch._load_all(reader, "cpu")
    except PlaidError as e:
        raise translated(e) from None


def save_model(model, filename, metadata=None, force_contiguous=False):
    """Save ``model``'s state dict with tied weights stored once: each group of names
    sharing memory keeps one name (see `_remove_duplicate_names`); the others are recorded
    in the metadata as ``{dropped: kept}`` so that `load_model` restores them.
    ``force_contiguous`` packs non-contiguous tensors first."""
    state_dict = model.state_dict()
    metadata = dict(metadata or {})
    for kept, dropped in _remove_duplicate_names(state_dict).items():
        for name in dropped:
            metadata.setdefault(name, kept)
            del state_dict[name]
    if force_contiguous:
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        save_file(state_dict, filename, metadata=metadata)
    except ValueError as e:
        raise type(e)(f"{e} Or use save_model(..., force_contiguous=True), read the docs for "
                      "potential caveats.") from None


def load_model(model, filename, strict=True, device="cpu", *, backend="mmap"):
    """Load a file written by `save_model` (or any state dict) into ``model``: tied
    weights are filled once. Returns ``(missing, unexpected)`` names; with ``strict``, a
    non-empty one raises `RuntimeError` naming them, as ``load_state_dict`` does."""
    state_dict = load_file(filename, device, backend=backend)
    model_state_dict = model.state_dict()
    to_removes = _remove_duplicate_names(model_state_dict, preferred_names=state_dict.keys())
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing, unexpected = set(missing), list(unexpected)
    for group in to_removes.values():
        for name in group:
            if name not in missing:
                unexpected.append(name)
            else:
                missing.remove(name)
    if strict and (missing or unexpected):
        text = f"Error(s) in loading state_dict for {model.__class__.__name__}:"
        if missing:
            text += "\n    Missing key(s) in state_dict: " + \
                ", ".join(f'"{k}"' for k in sorted(missing))
        if unexpected:
            text += "\n    Unexpected key(s) in state_dict: " + \
                ", ".join(f'"{k}"' for k in sorted(unexpected))
        raise _Refused(text, _Refused.status)
    return missing, unexpected
