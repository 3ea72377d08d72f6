"""Tiny models for the vLLM tests, built from configs (nothing downloaded): a transformers
model with random weights from a fixed seed, saved with `save_pretrained`, and a word-level
tokenizer built locally."""

import json
import os

import torch

WORDS = [f"w{i}" for i in range(1000)]


def tokenizer(directory, vocab_size):
    """A word-level tokenizer of ``vocab_size`` entries saved into ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        if len(vocab) >= vocab_size:
            break
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(directory)


def llama(directory, *, vocab=512, hidden=128, intermediate=256, layers=2, heads=4,
          kv_heads=2, tied=False, seed=0, dtype=torch.float32, shard_size=None):
    """A Llama (grouped-query attention when ``kv_heads < heads``) saved as safetensors in
    ``directory`` (sharded when ``shard_size`` is given, e.g. "200KB")."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=256,
                         tie_word_embeddings=tied, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, torch_dtype=dtype)
    return _save(LlamaForCausalLM, config, directory, seed, dtype, shard_size, vocab)


def mixtral(directory, *, vocab=512, hidden=128, intermediate=128, layers=2, heads=4,
            kv_heads=2, experts=4, seed=0, dtype=torch.float32):
    """A small mixture of experts (Mixtral: 2 of ``experts`` per token)."""
    from transformers import MixtralConfig, MixtralForCausalLM
    config = MixtralConfig(vocab_size=vocab, hidden_size=hidden,
                           intermediate_size=intermediate, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=kv_heads,
                           num_local_experts=experts, num_experts_per_tok=2,
                           max_position_embeddings=256, initializer_range=0.2,
                           bos_token_id=1, eos_token_id=2, torch_dtype=dtype)
    return _save(MixtralForCausalLM, config, directory, seed, dtype, None, vocab)


def _save(cls, config, directory, seed, dtype, shard_size, vocab):
    torch.manual_seed(seed)
    model = cls(config).to(dtype)
    os.makedirs(directory, exist_ok=True)
    kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    model.save_pretrained(directory, **kwargs)
    tokenizer(directory, vocab)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def config_only(source, directory):
    """``directory`` with ``source``'s config and tokenizer but no weights."""
    import shutil
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(source):
        if name.endswith(".json") and "index" not in name or name.startswith("tokenizer"):
            shutil.copy(os.path.join(source, name), directory)
    return directory


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def awq(directory, *, vocab=512, hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2,
        group=32, seed=0):
    """A 4-bit AWQ checkpoint (GEMM layout) of a Llama: every linear layer of the decoder as
    int32-packed ``qweight`` [in, out/8] and ``qzeros`` [in/group, out/8] with float16
    ``scales`` [in/group, out], random from a fixed seed; the rest float16. Returns the state
    as saved."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    state = llama(directory, vocab=vocab, hidden=hidden, intermediate=intermediate,
                  layers=layers, heads=heads, kv_heads=kv_heads, seed=seed,
                  dtype=torch.float16)
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, tensor in state.items():
        linear = name.endswith("_proj.weight")
        if not linear:
            out[name] = tensor
            continue
        base = name[:-len(".weight")]
        rows, cols = tensor.shape  # [out, in]
        out[base + ".qweight"] = torch.randint(-2**31, 2**31 - 1, (cols, rows // 8),
                                               generator=gen, dtype=torch.int32)
        out[base + ".qzeros"] = torch.randint(-2**31, 2**31 - 1, (cols // group, rows // 8),
                                              generator=gen, dtype=torch.int32)
        out[base + ".scales"] = (torch.rand((cols // group, rows), generator=gen) * 0.02
                                 + 0.001).to(torch.float16)
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            os.unlink(os.path.join(directory, name))
    save_file(out, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = LlamaConfig.from_pretrained(directory)
    config.quantization_config = {"quant_method": "awq", "bits": 4, "group_size": group,
                                  "zero_point": True, "version": "gemm"}
    config.save_pretrained(directory)
    return out
