"""``torch.save`` and ``torch.load`` with plaid holding the tensors (tensorizer's
``torch_compat``): inside ``tensorizer_saving()``, ``torch.save(obj, "model.pt")`` pickles
``obj`` as usual into ``model.pt`` but writes the bytes of every tensor storage into a
sidecar ``model.pt.tensors`` through `TensorSerializer` (tensorizer's format); inside
``tensorizer_loading()``, ``torch.load("model.pt")`` reads them back through
`TensorDeserializer` (verified, onto ``device``), storages shared between tensors staying
shared. Outside the contexts, and in threads or tasks that did not enter one, ``torch.save``
and ``torch.load`` are torch's own: the contexts live in context variables, and torch's
functions are wrapped only while some context is active anywhere.

``file_obj`` chooses the sidecar: a path, an open binary file, or a callable given the
file torch saves to (or loads from) that returns either; by default the file's name plus
``.tensors`` (a ``BytesIO`` has no name: torch's own storage is used then). Further keyword
arguments go to `TensorSerializer` (``encryption=``, ...) and `TensorDeserializer`
(``device=``, ``encryption=``, ``num_readers=``, ...)."""

import contextlib
import contextvars
import functools
import io
import logging
import os
import pickle
import threading
import types

import torch

from .serialization import TensorDeserializer, TensorSerializer

__all__ = ["tensorizer_loading", "tensorizer_saving"]

logger = logging.getLogger(__name__)

_ORIGINAL_SAVE = torch.save
_ORIGINAL_LOAD = torch.load

# The active contexts of this thread or task: (file_obj, keyword arguments, function), or
# None.
_saving = contextvars.ContextVar("plaid_tensorizer_saving", default=None)
_loading = contextvars.ContextVar("plaid_tensorizer_loading", default=None)
# The sidecar of the torch.save or torch.load call running in this context.
_sidecar_out = contextvars.ContextVar("plaid_tensorizer_sidecar_out", default=None)
_sidecar_in = contextvars.ContextVar("plaid_tensorizer_sidecar_in", default=None)

_installed = {"save": 0, "load": 0}
_install_lock = threading.Lock()

_PID = "plaid-tensors"  # the persistent ids of storages held in the sidecar


def _storage_bytes(obj):
    """The untyped storage of a storage object, or None where it has no data to keep."""
    untyped = obj if isinstance(obj, torch.UntypedStorage) else \
        getattr(obj, "_untyped_storage", None)
    if untyped is None or untyped.device.type == "meta" or untyped.data_ptr() == 0:
        return None
    return untyped


class _Pickler(pickle.Pickler):
    """A pickler that sends storages with data to the sidecar and gives the rest (and
    everything but storages) to torch's ``persistent_id``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plaid_target = _sidecar_out.get()
        self._plaid_tensors = []
        self._plaid_index = {}

    def _plaid_id(self, obj):
        if self._plaid_target is None or not torch.is_storage(obj):
            return None
        untyped = _storage_bytes(obj)
        if untyped is None:
            return None
        key = (untyped.device, untyped.data_ptr(), untyped.nbytes())
        index = self._plaid_index.get(key)
        if index is None:
            index = self._plaid_index[key] = len(self._plaid_tensors)
            view = torch.empty((0,), dtype=torch.uint8, device=untyped.device)
            view.set_(untyped)
            self._plaid_tensors.append(view)
        return (_PID, index, getattr(obj, "dtype", None))

    @staticmethod
    def _ours_first(persistent_id):
        @functools.wraps(persistent_id)
        def wrapped(self, obj):
            found = _Pickler._plaid_id(self, obj)
            return found if found is not None else persistent_id(self, obj)
        return wrapped

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "persistent_id" in cls.__dict__:  # torch's PyTorchPickler
            cls.persistent_id = _Pickler._ours_first(cls.persistent_id)

    def __setattr__(self, key, value):
        if key == "persistent_id" and callable(value):  # set on the instance
            inner = value
            value = types.MethodType(_Pickler._ours_first(lambda _self, obj: inner(obj)), self)
        super().__setattr__(key, value)

    def dump(self, obj):
        super().dump(obj)
        if self._plaid_tensors:
            tensors, self._plaid_tensors, self._plaid_index = self._plaid_tensors, [], {}
            _, kwargs, save_func = _saving.get()
            if save_func is not None:
                save_func(self._plaid_target, tensors, kwargs)
                return
            serializer = TensorSerializer(self._plaid_target, **kwargs)
            serializer.write_state_dict(tensors)
            serializer.close()


class _Unpickler(pickle.Unpickler):
    """An unpickler that answers the sidecar's storages and gives every other persistent
    id to torch's ``persistent_load``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plaid_source = _sidecar_in.get()
        self._plaid_storages = None

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == _PID:
            return self._plaid_storage(pid[1], pid[2])
        fallback = self.__dict__.get("_plaid_next")
        if fallback is None:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return fallback(pid)

    def __setattr__(self, key, value):
        if key == "persistent_load":  # torch's, set on the instance: consulted second
            key = "_plaid_next"
        super().__setattr__(key, value)

    def _plaid_storage(self, index, dtype):
        if self._plaid_storages is None:
            if self._plaid_source is None:
                raise pickle.UnpicklingError(
                    "this file's tensors are in a sidecar file, but no sidecar was given "
                    "(load it inside tensorizer_loading())")
            _, kwargs, load_func = _loading.get()
            if load_func is not None:
                tensors = list(load_func(self._plaid_source, kwargs))
            else:
                with TensorDeserializer(self._plaid_source, **kwargs) as deserializer:
                    tensors = deserializer.tree()
            self._plaid_storages = [t.untyped_storage() for t in tensors]
        # One untyped storage per sidecar tensor, typed as each reference was: tensors that
        # shared a storage (as whatever dtypes) share it again.
        return torch.TypedStorage(wrap_storage=self._plaid_storages[index],
                                  dtype=dtype if dtype is not None else torch.uint8,
                                  _internal=True)


def _module(name, pickler, unpickler):
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: getattr(pickle, attr)
    module.Pickler = pickler
    module.Unpickler = unpickler
    return module


_PICKLE_MODULE = _module("plaid_tensorizer_pickle", _Pickler, _Unpickler)
# ``torch.load``'s ``pickle_module`` default while wrapped (None: plaid's inside a
# `tensorizer_loading` context, torch's own outside), as tensorizer's wrapper has it.
_LOAD_WRAPPER_DEFAULT_MODULE = None


def _sidecar_of(file_obj, f):
    """The sidecar for torch's file ``f``: ``file_obj`` (or what it returns for ``f``), or
    ``f``'s name plus ``.tensors``; None where there is none."""
    if file_obj is not None:
        return file_obj(f) if callable(file_obj) else file_obj
    if isinstance(f, (str, bytes, os.PathLike)):
        return os.fsdecode(f) + ".tensors"
    name = getattr(f, "name", None)
    if isinstance(name, (str, bytes, os.PathLike)) and not isinstance(f, io.BytesIO):
        return os.fsdecode(name) + ".tensors"
    logger.warning("cannot name a sidecar .tensors file for a %s: torch keeps the tensors "
                   "(give tensorizer_saving/tensorizer_loading a file_obj)", type(f).__name__)
    return None


@functools.wraps(_ORIGINAL_SAVE)
def _save(obj, f, pickle_module=pickle, *args, **kwargs):
    active = _saving.get()
    if active is None:
        return _ORIGINAL_SAVE(obj, f, pickle_module, *args, **kwargs)
    if pickle_module is not pickle and pickle_module is not None:
        raise ValueError("torch.save inside tensorizer_saving() pickles with plaid's pickler; "
                         "a pickle_module other than the default cannot be used")
    token = _sidecar_out.set(_sidecar_of(active[0], f))
    try:
        return _ORIGINAL_SAVE(obj, f, _PICKLE_MODULE, *args, **kwargs)
    finally:
        _sidecar_out.reset(token)


@functools.wraps(_ORIGINAL_LOAD)
def _load(f, map_location=None, pickle_module=_LOAD_WRAPPER_DEFAULT_MODULE, *args,
          weights_only=None, **kwargs):
    active = _loading.get()
    if active is None:
        return _ORIGINAL_LOAD(f, map_location, pickle_module, *args,
                              weights_only=weights_only, **kwargs)
    if pickle_module is not None:
        raise ValueError("torch.load inside tensorizer_loading() unpickles with plaid's "
                         "unpickler; a pickle_module cannot be given")
    file_obj = active[0]
    if weights_only and _suppress.get():
        weights_only = False
    token = _sidecar_in.set(_sidecar_of(file_obj, f))
    try:
        return _ORIGINAL_LOAD(f, map_location, _PICKLE_MODULE, *args,
                              weights_only=weights_only, **kwargs)
    finally:
        _sidecar_in.reset(token)


_suppress = contextvars.ContextVar("plaid_tensorizer_suppress_weights_only", default=False)


@contextlib.contextmanager
def _wrapped(which):
    """Keep torch's ``save`` or ``load`` wrapped while this block runs (counted over every
    thread: the last one out puts torch's back)."""
    with _install_lock:
        _installed[which] += 1
        if _installed[which] == 1:
            setattr(torch, which, _save if which == "save" else _load)
    try:
        yield
    finally:
        with _install_lock:
            _installed[which] -= 1
            if _installed[which] == 0:
                setattr(torch, which, _ORIGINAL_SAVE if which == "save" else _ORIGINAL_LOAD)


@contextlib.contextmanager
def tensorizer_saving(file_obj=None, *, save_func=None, **kwargs):
    """Inside this block, ``torch.save`` in this thread or task writes tensor storages into a
    sidecar file through `TensorSerializer` (``kwargs`` go to it). ``file_obj``: see the
    module. ``save_func(file_obj, tensors, kwargs)``, where given, writes the list of
    storages (as uint8 tensors) instead. The innermost context wins."""
    token = _saving.set((file_obj, kwargs, save_func))
    try:
        with _wrapped("save"):
            yield
    finally:
        _saving.reset(token)


@contextlib.contextmanager
def tensorizer_loading(file_obj=None, *, load_func=None, suppress_weights_only=False,
                       **kwargs):
    """Inside this block, ``torch.load`` in this thread or task reads the storages a
    `tensorizer_saving` ``torch.save`` sent to a sidecar file through `TensorDeserializer`
    (``kwargs`` go to it: ``device``, ``encryption``, ...). ``weights_only=True`` is
    refused by torch with a pickle module, as with tensorizer; ``suppress_weights_only``
    turns it off instead. ``load_func(file_obj, kwargs)``, where given, returns the list
    of storages (as tensors) instead. The innermost context wins."""
    token = _loading.set((file_obj, kwargs, load_func))
    suppress = _suppress.set(bool(suppress_weights_only))
    try:
        with _wrapped("load"):
            yield
    finally:
        _suppress.reset(suppress)
        _loading.reset(token)
