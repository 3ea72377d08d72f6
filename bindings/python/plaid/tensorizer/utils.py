"""tensorizer's ``tensorizer.utils`` on plaid: ``no_init_or_tensor``, which builds a model
without initialising its weights and without storage for them, for
`TensorDeserializer.load_into_module` to fill."""

import contextlib
import contextvars
import threading

import torch

__all__ = ["no_init_or_tensor"]


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
