"""Test-only hook (``PLAID_VLLM_TEST_HOOK=hook:install``, run by plaid's vLLM plug-in in
every vLLM process): after each loader's ``load_weights``, before vLLM post-processes the
parameters (on the CPU it repacks each linear weight and leaves an empty parameter), write
the SHA-256 of every parameter's bytes, as loaded, to
``$PLAID_VLLM_TEST_HASH_DIR/<load format>-rank<N>.json``."""

import hashlib
import json
import os


def _hashes(model):
    import torch
    out = {}
    for name, param in model.named_parameters():
        data = param.detach().cpu().contiguous()
        out[name] = [list(data.shape), str(data.dtype),
                     hashlib.sha256(data.view(torch.uint8).numpy().tobytes()
                                    if data.numel() else b"").hexdigest()]
    return out


def _wrap(cls, label):
    original = cls.load_weights
    if getattr(original, "_hashed", False):
        return

    def load_weights(self, model, model_config):
        result = original(self, model, model_config)
        from vllm.distributed import get_tensor_model_parallel_rank
        folder = os.environ["PLAID_VLLM_TEST_HASH_DIR"]
        name = f"{label(self)}-rank{get_tensor_model_parallel_rank()}.json"
        with open(os.path.join(folder, name), "w") as f:
            json.dump(_hashes(model), f)
        return result

    load_weights._hashed = True
    cls.load_weights = load_weights


def install(plaid_loader):
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    _wrap(DefaultModelLoader, lambda self: "default")
    _wrap(plaid_loader, lambda self: "plaid")
