"""tensorizer's Python API on plaid: ``TensorSerializer``, ``TensorDeserializer``,
``EncryptionParams``, ``DecryptionParams``, ``CryptographyError``, ``TensorType``,
``utils.no_init_or_tensor`` and ``torch_compat`` (``tensorizer_saving``,
``tensorizer_loading``). A program written for tensorizer 2.x runs unchanged with
``sys.modules["tensorizer"] = plaid.tensorizer`` (and its submodules ``serialization``,
``utils``, ``torch_compat``): files written in tensorizer's format (unless the name ends
``.plaid``), read through plaid (plaid, safetensors and tensorizer files alike, verified,
straight into the module's own memory). Where tensorizer is installed, plaid's
``CryptographyError`` and ``HashMismatchError`` are subclasses of tensorizer's."""

from . import serialization, utils
from .serialization import (CryptographyError, DecryptionParams, EncryptionParams,
                            HashMismatchError, TensorDeserializer, TensorSerializer, TensorType)

__all__ = ["CryptographyError", "DecryptionParams", "EncryptionParams", "HashMismatchError",
           "TensorDeserializer", "TensorSerializer", "TensorType", "serialization",
           "torch_compat", "utils"]


def __getattr__(name):
    # torch_compat patches torch.save/torch.load only while its contexts are active, but
    # it is imported on first use all the same.
    if name == "torch_compat":
        import importlib
        return importlib.import_module(__name__ + ".torch_compat")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
