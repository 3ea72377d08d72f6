"""The vLLM model loader behind ``--load-format plaid`` (see `plaid.vllm`); imported only
where vLLM is installed."""

import os

import torch
from vllm.logger import init_logger
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.model_loader.ep_weight_filter import should_skip_weight

from . import _lazy, vllm as _options

logger = init_logger("vllm.model_executor.model_loader.plaid")

_CLASS = None


def register():
    """Register `PlaidModelLoader` as load format ``plaid`` (once per process)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = register_model_loader("plaid")(PlaidModelLoader)
    hook = os.environ.get("PLAID_VLLM_TEST_HOOK")
    if hook:
        # Tests only: "module:function", called once per process with the loader class
        # (for example to look at the parameters as loaded, before post-processing).
        module, _, function = hook.partition(":")
        import importlib
        getattr(importlib.import_module(module), function)(PlaidModelLoader)
    return _CLASS


class PlaidModelLoader(BaseModelLoader):
    """Loads a model's weights with plaid; `plaid.vllm` describes the options."""

    def __init__(self, load_config):
        super().__init__(load_config)
        self.options = _options.Options.parse(load_config.model_loader_extra_config)
        self.local_expert_ids = None

    def _weights_path(self, model_config):
        if self.options.path is not None:
            return self.options.path
        model = model_config.model
        if os.path.isdir(model):
            return model
        from vllm.model_executor.model_loader.weight_utils import download_weights_from_hf
        return download_weights_from_hf(
            model, self.load_config.download_dir,
            ["*.safetensors", "*.safetensors.index.json", "*.plaid", "*.tensors"],
            model_config.revision)

    def download_model(self, model_config):
        self._weights_path(model_config)

    def load_weights(self, model, model_config):
        from vllm.distributed import get_tensor_model_parallel_rank, get_tp_group
        options = self.options
        DefaultModelLoader._init_ep_weight_filter(self, model_config)
        local = self.local_expert_ids
        skip = None if local is None else (lambda name: should_skip_weight(name, local))
        rank = get_tensor_model_parallel_rank()
        group = get_tp_group()
        stats = _options.Stats()
        checkpoint = _options.Checkpoint(self._weights_path(model_config), options, stats)
        session = None
        try:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            if options.share and group.world_size > 1:
                window = int(os.environ.get("PLAID_VLLM_SHARE_WINDOW", _options.SHARE_WINDOW))
                weights = _lazy.shared_tensors(checkpoint, group, device, window, skip)
            elif options.slices:
                session = _lazy.Session(checkpoint, model)
                weights = session.weights(skip)
            else:
                weights = _lazy.full_tensors(checkpoint, skip=skip)
            loaded = model.load_weights(weights)
            if session is not None:
                session.finish()  # in case load_weights stopped before the end
        finally:
            checkpoint.close()
        logger.info(stats.line(rank))
        if model_config.quantization is None and loaded is not None:
            try:
                DefaultModelLoader.track_weights_loading(self, model, loaded, quantized=False)
            except ValueError as e:
                raise ValueError(f"load format plaid: {checkpoint.path} lacks tensors the "
                                 f"model needs: {e}") from None
