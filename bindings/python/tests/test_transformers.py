"""plaid.torch as a tensorizer drop-in for real transformers models (Llama, GPT-2, BERT), all
built from tiny configs (no network):

- `no_init_or_tensor` has tensorizer's exact semantics (meta `torch.empty`, no
  `reset_parameters` for Linear/Embedding/LayerNorm, everything else built as usual), nested
  and from several threads;
- checkpoints written by `save_pretrained` (sharded safetensors + index.json), by tensorizer's
  own `TensorSerializer` and by plaid's `TensorSerializer` load through
  `TensorDeserializer.load_into_module` into an empty (meta) model and into an allocated one
  (in place, parameter identity kept), with bit-identical logits, ties kept and no meta
  tensor left;
- loading in place makes no intermediate copy (peak RSS, in a subprocess);
- missing tensors are named in the error; the return value, `missing_keys` and
  `unexpected_keys`; lazy reading; `save_file`'s format choice; `safe_open(...).metadata()`
  is None without metadata; `encryption=` is refused by the serializer, and the deserializer
  decrypts with tensorizer's own DecryptionParams.

Skipped where torch, transformers or tensorizer is not installed."""

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
tensorizer = pytest.importorskip("tensorizer", reason="tensorizer is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch",
                                        reason="safetensors is not installed")

import safetensors  # noqa: E402
from tensorizer.utils import no_init_or_tensor as tensorizer_no_init  # noqa: E402
from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel,  # noqa: E402
                          LlamaConfig, LlamaForCausalLM)
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

import plaid  # noqa: E402
import plaid.torch as pt  # noqa: E402

transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except AttributeError:  # pragma: no cover - older transformers
    pass

PLAID_MAGIC = b"\x89PLAID\r\n\x1a\n"
TENSORIZER_MAGIC = b"|TZR|"


# ---- the three architectures --------------------------------------------------------------


def llama_config():
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                       max_position_embeddings=64)


def gpt2_config():
    return GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64,
                      bos_token_id=0, eos_token_id=0)


def bert_config():
    return BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, vocab_size=256, max_position_embeddings=64)


ARCHS = {
    "llama": lambda: LlamaForCausalLM(llama_config()),
    # lm_head.weight is transformer.wte.weight
    "gpt2": lambda: GPT2LMHeadModel(gpt2_config()),
    # cls.predictions.decoder.weight is bert.embeddings.word_embeddings.weight, and
    # cls.predictions.decoder.bias is cls.predictions.bias
    "bert": lambda: BertForMaskedLM(bert_config()),
}
KINDS = ["sharded_safetensors", "tensorizer_by_tensorizer", "plaid_by_plaid"]
INPUT_IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1234))


def build(arch, seed):
    """A normally built model whose every parameter was perturbed (so that no 0 bias or 1
    norm weight can match a fresh model by chance), in eval mode."""
    torch.manual_seed(seed)
    model = ARCHS[arch]()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():  # each tied parameter once
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model.eval()


def build_empty(arch):
    with pt.no_init_or_tensor():
        model = ARCHS[arch]()
    return model.eval()


def entries(model):
    """Every parameter and buffer under each of its names (aliases included)."""
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = p
    for name, b in model.named_buffers(remove_duplicate=False):
        out[name] = b
    return out


def tie_groups(model):
    """Names that share one parameter object, for every tied parameter."""
    groups = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def logits(model):
    with torch.no_grad():
        return model(INPUT_IDS).logits


def assert_no_meta(model):
    on_meta = [n for n, t in entries(model).items() if t.device.type == "meta"]
    assert on_meta == [], f"tensors left on the meta device: {on_meta}"
    assert all(t.device.type == "cpu" for t in entries(model).values())


def assert_same_tensors(loaded, original):
    want, have = entries(original), entries(loaded)
    assert sorted(have) == sorted(want)
    for name, t in want.items():
        assert have[name].dtype == t.dtype, name
        assert have[name].shape == t.shape, name
        assert torch.equal(have[name].detach(), t.detach()), f"{name} differs"


def assert_ties_kept(loaded, original):
    groups = tie_groups(original)
    have = entries(loaded)
    for names in groups:
        first = have[names[0]]
        for name in names[1:]:
            assert have[name] is first or have[name].data_ptr() == first.data_ptr(), \
                f"tie {names} broken in the loaded model"


def file_tensor_names(path):
    with plaid.Reader(str(path)) as reader:
        return [m.name for m in reader.tensors]


class Reference:
    def __init__(self, model, logits_, paths):
        self.model = model
        self.logits = logits_
        self.paths = paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """For each architecture: the original model, its logits on INPUT_IDS, and its weights
    as a sharded save_pretrained checkpoint, a tensorizer file written by tensorizer and a
    plaid file written by plaid."""
    cache = {}

    def get(arch):
        if arch in cache:
            return cache[arch]
        model = build(arch, seed=0)
        root = tmp_path_factory.mktemp(arch)
        sharded = root / "sharded"
        model.save_pretrained(sharded, max_shard_size="50KB", safe_serialization=True)
        index = sharded / "model.safetensors.index.json"
        assert index.is_file()
        assert len(list(sharded.glob("model-*.safetensors"))) > 1, "not sharded"

        by_tensorizer = root / "model.tensors"
        serializer = tensorizer.TensorSerializer(str(by_tensorizer))
        serializer.write_module(model)
        serializer.close()

        by_plaid = root / "model.plaid"
        serializer = pt.TensorSerializer(str(by_plaid))
        serializer.write_module(model)
        serializer.close()
        assert by_plaid.read_bytes()[:10] == PLAID_MAGIC

        cache[arch] = Reference(model, logits(model), {
            "sharded_safetensors": index, "tensorizer_by_tensorizer": by_tensorizer,
            "plaid_by_plaid": by_plaid})
        return cache[arch]

    return get


# ---- no_init_or_tensor ----------------------------------------------------------------------


def test_no_init_or_tensor_puts_only_torch_empty_on_meta():
    original_empty = torch.empty
    with pt.no_init_or_tensor():
        linear = torch.nn.Linear(8, 4)
        embedding = torch.nn.Embedding(16, 8)
        layer_norm = torch.nn.LayerNorm(8)
        assert linear.weight.is_meta and linear.bias.is_meta
        assert embedding.weight.is_meta
        assert layer_norm.weight.is_meta and layer_norm.bias.is_meta
        # torch.empty goes to meta whatever device it is asked for (tensorizer's semantics)
        assert torch.empty(3).is_meta
        assert torch.empty(3, device="cpu").is_meta
        # everything else is made as usual
        assert torch.ones(3).device.type == "cpu"
        assert torch.zeros(2, 2).device.type == "cpu"
        assert torch.arange(4).device.type == "cpu"
        assert torch.equal(torch.ones(3), torch.tensor([1.0, 1.0, 1.0]))
        norm = LlamaRMSNorm(8)
        assert norm.weight.device.type == "cpu"
        assert torch.equal(norm.weight.detach(), torch.ones(8))
    assert torch.empty is original_empty
    assert torch.empty(3).device.type == "cpu"
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_no_init_or_tensor_skips_reset_parameters():
    torch.manual_seed(0)
    modules = [torch.nn.Linear(8, 4), torch.nn.Embedding(16, 8), torch.nn.LayerNorm(8)]
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.fill_(7.0)
    with pt.no_init_or_tensor():
        for m in modules:
            m.reset_parameters()
            for p in m.parameters():
                assert p.device.type == "cpu"
                assert torch.all(p == 7.0), f"{type(m).__name__}.reset_parameters ran"
    # outside, reset_parameters works again
    for m in modules:
        m.reset_parameters()
        assert not all(torch.all(p == 7.0) for p in m.parameters()), type(m).__name__


def test_no_init_or_tensor_llama_keeps_computed_buffers_and_made_parameters():
    reference_model = LlamaForCausalLM(llama_config())
    with pt.no_init_or_tensor():
        model = LlamaForCausalLM(llama_config())
    assert model.model.layers[0].self_attn.q_proj.weight.is_meta
    assert model.model.embed_tokens.weight.is_meta
    assert model.lm_head.weight.is_meta
    for norm in [model.model.norm, model.model.layers[0].input_layernorm,
                 model.model.layers[1].post_attention_layernorm]:
        assert norm.weight.device.type == "cpu"
        assert torch.equal(norm.weight.detach(), torch.ones_like(norm.weight))
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cpu"
    assert torch.equal(inv_freq, reference_model.model.rotary_emb.inv_freq)


def test_no_init_or_tensor_callable_form():
    original_empty = torch.empty
    model = pt.no_init_or_tensor(lambda: LlamaForCausalLM(llama_config()))
    assert isinstance(model, LlamaForCausalLM)
    assert model.model.layers[0].mlp.up_proj.weight.is_meta
    assert model.model.norm.weight.device.type == "cpu"
    assert torch.empty is original_empty
    assert pt.no_init_or_tensor(lambda: 42) == 42


def test_no_init_or_tensor_nested_and_after_an_exception():
    original_empty = torch.empty
    with pt.no_init_or_tensor():
        with pt.no_init_or_tensor():
            assert torch.nn.Linear(2, 2).weight.is_meta
        # leaving the inner one leaves the outer one active
        assert torch.nn.Linear(2, 2).weight.is_meta
        assert torch.empty(1).is_meta
    assert torch.empty is original_empty
    assert not torch.nn.Linear(2, 2).weight.is_meta

    with pytest.raises(RuntimeError, match="boom"):
        with pt.no_init_or_tensor():
            raise RuntimeError("boom")
    assert torch.empty is original_empty
    assert not torch.empty(1).is_meta
    assert not torch.nn.Linear(2, 2).weight.is_meta


def test_no_init_or_tensor_from_two_threads():
    original_empty = torch.empty
    both_built = threading.Barrier(3, timeout=60)
    main_checked = threading.Barrier(3, timeout=60)
    first_left = threading.Event()
    results = {}

    def worker(key):
        try:
            with pt.no_init_or_tensor():
                model = LlamaForCausalLM(llama_config())
                both_built.wait()
                main_checked.wait()
                if key == "second":
                    assert first_left.wait(60)
                    # the other thread left its context: this one's is still active
                    late = torch.nn.Linear(4, 4)
                    results["second_late"] = late.weight.device.type
                results[key] = {n: t.device.type for n, t in entries(model).items()}
            if key == "first":
                first_left.set()
        except BaseException as e:  # noqa: BLE001 - reported below
            results[key] = e
            first_left.set()
            both_built.abort()
            main_checked.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("first", "second")]
    for t in threads:
        t.start()
    try:
        both_built.wait()
        # this thread is not inside the context while both others are
        outside = torch.nn.Linear(4, 4)
        main_device = outside.weight.device.type
        main_empty = torch.empty(2).device.type
        main_checked.wait()
    finally:
        for t in threads:
            t.join(60)
    for key in ("first", "second"):
        if isinstance(results.get(key), BaseException):
            raise results[key]
    assert main_device == "cpu" and main_empty == "cpu"
    assert results["second_late"] == "meta"
    for key in ("first", "second"):
        devices = results[key]
        assert devices["model.layers.0.self_attn.q_proj.weight"] == "meta"
        assert devices["model.norm.weight"] == "cpu"
        assert devices["model.rotary_emb.inv_freq"] == "cpu"
    assert torch.empty is original_empty
    assert not torch.nn.Linear(2, 2).weight.is_meta


@pytest.mark.parametrize("arch", list(ARCHS))
def test_no_init_or_tensor_matches_tensorizers(arch):
    with tensorizer_no_init():
        theirs = ARCHS[arch]()
    with pt.no_init_or_tensor():
        ours = ARCHS[arch]()
    theirs_entries, ours_entries = entries(theirs), entries(ours)
    assert sorted(ours_entries) == sorted(theirs_entries)
    want = {n: t.device.type for n, t in theirs_entries.items()}
    have = {n: t.device.type for n, t in ours_entries.items()}
    assert have == want
    assert "meta" in want.values() and "cpu" in want.values()
    for name, t in theirs_entries.items():
        if t.device.type != "meta":
            assert torch.equal(ours_entries[name].detach(), t.detach()), name
    assert tie_groups(ours) == tie_groups(theirs)


# ---- loading real checkpoints ---------------------------------------------------------------


def assert_keys_reported(d, model, path):
    missing, unexpected = d.missing_keys, d.unexpected_keys
    assert isinstance(missing, list) and isinstance(unexpected, list)
    assert all(isinstance(k, str) for k in missing + unexpected)
    assert unexpected == []
    # only tied aliases absent from the file (GPT-2's lm_head.weight, BERT's decoder) may be
    # reported missing: they were filled through the parameter they are tied to
    in_file = set(file_tensor_names(path))
    aliases = set()
    for names in tie_groups(model):
        if any(n in in_file for n in names):
            aliases.update(n for n in names if n not in in_file)
    assert set(missing) <= aliases, f"missing {missing}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_checkpoint_loads_into_an_empty_model(reference, arch, kind):
    ref = reference(arch)
    path = ref.paths[kind]
    model = build_empty(arch)
    assert any(t.is_meta for t in entries(model).values())
    d = pt.TensorDeserializer(str(path), device="cpu")
    count = d.load_into_module(model)
    assert_no_meta(model)
    assert_same_tensors(model, ref.model)
    assert_ties_kept(model, ref.model)
    assert torch.equal(logits(model), ref.logits)
    assert type(count) is int
    assert count == len(file_tensor_names(path))
    assert_keys_reported(d, model, path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_checkpoint_loads_in_place_into_an_allocated_model(reference, arch, kind):
    ref = reference(arch)
    path = ref.paths[kind]
    model = build(arch, seed=1)
    assert not torch.equal(logits(model), ref.logits)
    before = {n: (t, t.data_ptr()) for n, t in entries(model).items()}
    d = pt.TensorDeserializer(str(path), device="cpu")
    count = d.load_into_module(model)
    after = entries(model)
    assert sorted(after) == sorted(before)
    for name, (obj, ptr) in before.items():
        assert after[name] is obj, f"{name} was replaced, not loaded in place"
        assert after[name].data_ptr() == ptr, f"{name} moved"
    assert_same_tensors(model, ref.model)
    assert_ties_kept(model, ref.model)
    assert torch.equal(logits(model), ref.logits)
    assert type(count) is int
    assert count == len(file_tensor_names(path))
    assert_keys_reported(d, model, path)


def test_gpt2_tie_survives_the_sharded_checkpoint_without_lm_head(reference):
    ref = reference("gpt2")
    index = json.loads(ref.paths["sharded_safetensors"].read_text())
    assert "lm_head.weight" not in index["weight_map"]
    model = build_empty("gpt2")
    pt.TensorDeserializer(str(ref.paths["sharded_safetensors"]),
                          device="cpu").load_into_module(model)
    assert not model.lm_head.weight.is_meta
    assert model.lm_head.weight is model.transformer.wte.weight or \
        model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert torch.equal(model.lm_head.weight.detach(), ref.model.lm_head.weight.detach())


# ---- no intermediate copies ----------------------------------------------------------------

BIG_LLAMA = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8, vocab_size=8192,
                 max_position_embeddings=64)  # 112 MiB of float32


def digests(model):
    return {n: hashlib.sha256(t.detach().contiguous().view(-1).view(torch.uint8).numpy())
            .hexdigest() for n, t in model.state_dict().items()}


# Builds the model normally (allocated), then loads the checkpoint into it in place,
# recording the peak RSS before and after the load.
_MEMORY_LOAD = f"""
import gc, hashlib, json, resource, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
import plaid.torch as pt

torch.manual_seed(1)
model = LlamaForCausalLM(LlamaConfig(**{BIG_LLAMA!r}))
nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
ptrs = {{n: t.data_ptr() for n, t in model.state_dict().items()}}
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
d = pt.TensorDeserializer(sys.argv[1], device="cpu")
count = d.load_into_module(model)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
moved = [n for n, t in model.state_dict().items() if t.data_ptr() != ptrs[n]]
digests = {{n: hashlib.sha256(t.detach().contiguous().view(-1).view(torch.uint8).numpy())
           .hexdigest() for n, t in model.state_dict().items()}}
print(json.dumps({{"before": before, "after": after, "nbytes": nbytes, "count": count,
                  "moved": moved, "digests": digests}}))
"""


def _run_python(script, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        # the subprocess imports the very plaid package this process imported
        [str(Path(plaid.__file__).resolve().parents[1])]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_in_place_makes_no_intermediate_copy(tmp_path):
    path = tmp_path / "big.plaid"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**BIG_LLAMA))
    serializer = pt.TensorSerializer(str(path))
    serializer.write_module(model)
    serializer.close()
    want = digests(model)
    del model, serializer
    loaded = _run_python(_MEMORY_LOAD, path)
    nbytes = loaded["nbytes"]
    assert 64 * 2**20 <= nbytes <= 128 * 2**20
    assert loaded["moved"] == []
    assert loaded["digests"] == want
    grew = loaded["after"] - loaded["before"]
    bound = nbytes // 4 + 48 * 2**20  # an extra copy of the weights is nbytes
    assert grew < bound, (f"peak RSS grew by {grew / 2**20:.1f} MiB loading a "
                          f"{nbytes / 2**20:.1f} MiB model (bound {bound / 2**20:.1f} MiB)")
    # the state dict and the (non-persistent) rotary buffers write_module wrote
    assert loaded["count"] == len(file_tensor_names(path))


# ---- errors, keys, laziness -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".plaid", ".safetensors"])
def test_missing_tensors_are_named(tmp_path, suffix):
    state = dict(build("llama", seed=0).state_dict())
    gone = ["model.layers.1.mlp.up_proj.weight", "lm_head.weight"]
    for name in gone:
        del state[name]
    path = tmp_path / f"partial{suffix}"
    pt.save_file(state, path)
    model = build_empty("llama")
    d = pt.TensorDeserializer(str(path), device="cpu")
    with pytest.raises(plaid.PlaidError) as raised:
        d.load_into_module(model)
    for name in gone:
        assert name in str(raised.value), f"{name} is not named in: {raised.value}"


def test_missing_tensors_of_an_allocated_model_are_reported_not_raised(tmp_path):
    state = dict(build("llama", seed=0).state_dict())
    gone = "model.layers.0.self_attn.q_proj.weight"
    del state[gone]
    state["extra.weight"] = torch.ones(3)
    path = tmp_path / "partial.plaid"
    pt.save_file(state, path)
    model = build("llama", seed=1)
    kept = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    d = pt.TensorDeserializer(str(path), device="cpu")
    count = d.load_into_module(model)
    assert type(count) is int and count == len(state) - 1  # extra.weight is not loaded
    assert d.missing_keys == [gone]
    assert d.unexpected_keys == ["extra.weight"]
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight.detach(), kept)
    for name, t in state.items():
        if name != "extra.weight":
            assert torch.equal(model.state_dict()[name], t), name


def test_load_into_module_filter_func(tmp_path):
    original = build("llama", seed=0)
    path = tmp_path / "model.plaid"
    pt.save_file(dict(original.state_dict()), path)
    model = build("llama", seed=1)
    kept = model.lm_head.weight.detach().clone()
    d = pt.TensorDeserializer(str(path), device="cpu")
    count = d.load_into_module(model, filter_func=lambda name: name != "lm_head.weight")
    assert type(count) is int and count == len(original.state_dict()) - 1
    assert torch.equal(model.lm_head.weight.detach(), kept)
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)


def test_an_empty_model_on_the_cpu_is_a_view_of_the_private_mapping(tmp_path):
    # tensorizer's example flow: an empty model, a local plaid file, load_into_module. Every
    # tensor the file holds in the model's dtype is a view of one mapping of the file (so
    # each lies as far from the others in memory as in the file), not a copy in an arena;
    # the mapping is private (writing a weight leaves the file alone); a conversion
    # (float32 stored, bfloat16 in the model) still lands, in memory of its own.
    original = build("llama", seed=0)
    path = tmp_path / "model.plaid"
    serializer = pt.TensorSerializer(str(path))
    serializer.write_module(original)
    serializer.close()
    with plaid.Reader(str(path)) as reader:
        offsets = {m.name: m.offset for m in reader.tensors}
    model = build_empty("llama")
    # What no_init_or_tensor left without storage (torch.empty's tensors; RMSNorm's
    # torch.ones weights have storage and are loaded in place).
    empty = {n for n, p in model.named_parameters() if p.device.type == "meta"}
    pt.TensorDeserializer(str(path), device="cpu", plaid_mode=True).load_into_module(model)
    assert_no_meta(model)
    assert torch.equal(logits(model), logits(original))
    loaded = {n: p for n, p in model.named_parameters() if n in empty}
    assert len(loaded) > 5 and set(loaded) <= set(offsets)
    first = min(loaded, key=offsets.get)
    for name, p in loaded.items():
        assert p.data_ptr() - loaded[first].data_ptr() == offsets[name] - offsets[first], name
    before = path.read_bytes()
    with torch.no_grad():
        loaded[first].add_(1.0)
    assert path.read_bytes() == before

    with pt.no_init_or_tensor():
        converted = LlamaForCausalLM(llama_config()).to(torch.bfloat16)
    pt.TensorDeserializer(str(path), device="cpu").load_into_module(converted)
    for name, p in converted.named_parameters():
        assert p.dtype == torch.bfloat16, name
        assert torch.equal(p, original.state_dict()[name].to(torch.bfloat16)), name


def test_opening_reads_only_the_header(tmp_path):
    good = torch.arange(4096, dtype=torch.float32)
    bad = torch.full((4096,), 3.0)
    path = tmp_path / "damaged.plaid"
    pt.save_file({"good": good, "bad": bad}, path)
    with plaid.Reader(str(path)) as reader:
        offset = reader.find("bad").offset
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    # the damage is in the data of "bad": opening (header only) succeeds
    d = pt.TensorDeserializer(str(path), device="cpu")
    assert torch.equal(d["good"], good)
    with pytest.raises(plaid.PlaidError):
        d["bad"]


# ---- save_file, safe_open, encryption -------------------------------------------------------


def sample_tensors():
    g = torch.Generator().manual_seed(5)
    return {"w": torch.randn(8, 4, generator=g),
            "half": torch.randn(3, 5, generator=g).half(),
            "ids": torch.arange(10, dtype=torch.int64),
            "bf": torch.randn(6, generator=g).bfloat16()}


def detected_format(path):
    data = Path(path).read_bytes()
    if data[:10] == PLAID_MAGIC:
        return "plaid"
    if data[:5] == TENSORIZER_MAGIC:
        return "tensorizer"
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n <= len(data) and data[8:9] == b"{":
        json.loads(data[8:8 + n])
        return "safetensors"
    return "unknown"


def read_with_its_own_library(path, fmt):
    if fmt == "safetensors":
        return safetensors_torch.load_file(str(path))
    if fmt == "tensorizer":
        d = tensorizer.TensorDeserializer(str(path), device="cpu")
        out = {k: v.clone() for k, v in d.items()}
        d.close()
        return out
    return pt.load_file(path)


def assert_same_dict(have, want):
    assert sorted(have) == sorted(want)
    for name, t in want.items():
        assert have[name].dtype == t.dtype and have[name].shape == t.shape, name
        assert torch.equal(have[name], t), name


@pytest.mark.parametrize("name, fmt", [
    ("w.safetensors", "safetensors"), ("w.tensors", "tensorizer"), ("w.plaid", "plaid"),
    ("w.bin", "plaid"), ("w", "plaid")])
def test_save_file_format_follows_the_name(tmp_path, name, fmt):
    tensors = sample_tensors()
    path = tmp_path / name
    pt.save_file(tensors, path)
    assert detected_format(path) == fmt
    assert_same_dict(read_with_its_own_library(path, fmt), tensors)
    assert_same_dict(pt.load_file(path), tensors)


@pytest.mark.parametrize("name, fmt", [
    ("w.bin", "safetensors"), ("w.safetensors", "plaid"), ("w.plaid", "tensorizer"),
    ("w.tensors", "safetensors"), ("w.data", "tensorizer"), ("w.tensors", "plaid")])
def test_save_file_explicit_format(tmp_path, name, fmt):
    tensors = sample_tensors()
    path = tmp_path / name
    pt.save_file(tensors, path, format=fmt)
    assert detected_format(path) == fmt
    assert_same_dict(read_with_its_own_library(path, fmt), tensors)
    assert_same_dict(pt.load_file(path), tensors)


def test_save_file_safetensors_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    pt.save_file(sample_tensors(), path, metadata={"format": "pt", "k": "v"})
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
    with plaid.safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}


def test_save_file_unknown_format_is_refused(tmp_path):
    with pytest.raises((plaid.PlaidError, ValueError)):
        pt.save_file(sample_tensors(), tmp_path / "w.bin", format="pickle")
    assert not (tmp_path / "w.bin").exists()


def test_safe_open_metadata_is_none_without_metadata(tmp_path):
    tensors = sample_tensors()
    bare = tmp_path / "bare.safetensors"
    safetensors_torch.save_file(tensors, str(bare))
    with safetensors.safe_open(str(bare), framework="pt") as f:
        assert f.metadata() is None
    with plaid.safe_open(bare, framework="pt") as f:
        assert f.metadata() is None
        assert torch.equal(f.get_tensor("w"), tensors["w"])

    with_metadata = tmp_path / "meta.safetensors"
    safetensors_torch.save_file(tensors, str(with_metadata), metadata={"a": "b"})
    with plaid.safe_open(with_metadata, framework="pt") as f:
        assert f.metadata() == {"a": "b"}

    # a safetensors file written by plaid without metadata reads the same through both
    by_plaid = tmp_path / "by_plaid.safetensors"
    pt.save_file(tensors, by_plaid)
    with safetensors.safe_open(str(by_plaid), framework="pt") as f:
        theirs = f.metadata()
    with plaid.safe_open(by_plaid, framework="pt") as f:
        assert f.metadata() == theirs


def _decryption_params():
    try:
        return tensorizer.DecryptionParams.from_string("hunter2")
    except Exception:  # noqa: BLE001
        return object()


def test_the_serializer_encrypts_and_the_deserializer_decrypts(tmp_path):
    """TensorSerializer(encryption=...) writes plaid's encrypted format (AES-256-GCM) with
    plaid's EncryptionParams or tensorizer's own (from a raw key); it loads back with the
    key or the passphrase, and not without it or with another."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.LayerNorm(48))
    want = {k: v.clone() for k, v in model.state_dict().items()}
    weight = want["0.weight"].numpy().tobytes()

    def write(path, params):
        with pt.TensorSerializer(str(path), encryption=params) as s:
            s.write_module(model)
        assert weight[:64] not in path.read_bytes(), "the weights are stored in the clear"

    def load(path, params):
        twin = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.LayerNorm(48))
        with pt.TensorDeserializer(str(path), device="cpu", encryption=params) as d:
            d.load_into_module(twin)
        for k, v in twin.state_dict().items():
            assert torch.equal(v, want[k]), k

    mine = pt.EncryptionParams.random()
    path = tmp_path / "by_key.plaid"
    write(path, mine)
    load(path, pt.DecryptionParams.from_key(mine.key))
    load(path, tensorizer.DecryptionParams.from_key(mine.key))
    theirs = tensorizer.EncryptionParams.random()
    path = tmp_path / "by_tensorizer_key.plaid"
    write(path, theirs)
    load(path, pt.DecryptionParams.from_key(theirs.key))

    # A passphrase, with limits (the defaults are tensorizer's MODERATE); both the binding's
    # and tensorizer's DecryptionParams.from_string take the same passphrase.
    weak = pt.EncryptionParams.from_string("hunter2", opslimit=pt.EncryptionParams.OpsLimit.MIN,
                                           memlimit=pt.EncryptionParams.MemLimit.MIN)
    assert weak.passphrase == b"hunter2"  # plaid derives its files' keys from it
    path = tmp_path / "by_passphrase.plaid"
    write(path, weak)
    load(path, pt.DecryptionParams.from_string("hunter2"))
    load(path, tensorizer.DecryptionParams.from_string("hunter2"))

    # Without the key, or with another: the index opens, loading is a DecryptionError.
    with pt.TensorDeserializer(str(path), device="cpu", lazy_load=True) as d:
        assert set(d.keys()) == set(want)
        with pytest.raises(plaid.DecryptError, match="no key"):
            d["0.weight"]
    with pytest.raises(plaid.DecryptError, match="wrong passphrase"):
        load(path, pt.DecryptionParams.from_string("hunter3"))
    with pytest.raises(plaid.DecryptError, match="wrong key"):
        load(tmp_path / "by_key.plaid", pt.DecryptionParams.from_key(bytes(32)))

    # tensorizer's from_string params hold the derived key but not the passphrase plaid
    # derives its files' keys from: refused, and nothing is written in the clear instead.
    path = tmp_path / "refused.plaid"
    with pytest.raises(plaid.InvalidArgumentError, match="from_string"):
        pt.TensorSerializer(str(path), encryption=tensorizer.EncryptionParams.from_string(
            "x", opslimit=1, memlimit=8192))
    with pytest.raises(TypeError):
        pt.TensorSerializer(str(path), encryption=object())
    with pytest.raises(plaid.InvalidArgumentError, match="salt"):
        pt.EncryptionParams.from_string("x", salt=b"0" * 15)
    assert not path.exists()


def test_encrypted_tensorizer_files_plaid_writes_load_in_tensorizer(tmp_path):
    """save_file(..., "x.tensors", key=/passphrase=) writes tensorizer's own encryption, which
    the real tensorizer decrypts (and verifies) with the same key or passphrase; the plaid
    file staged for the conversion is encrypted too."""
    torch.manual_seed(1)
    tensors = {"w": torch.randn(700, 300), "b": torch.randn(7).to(torch.bfloat16),
               "ids": torch.arange(11), "s": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    key = os.urandom(32)
    by_key = tmp_path / "key.tensors"
    pt.save_file(tensors, by_key, key=key)
    raw = by_key.read_bytes()
    assert tensors["w"].numpy().tobytes()[:64] not in raw
    by_pw = tmp_path / "pw.tensors"
    pt.save_file(tensors, by_pw, passphrase="correct horse")  # tensorizer's default limits
    for path, params in ((by_key, tensorizer.DecryptionParams.from_key(key)),
                         (by_pw, tensorizer.DecryptionParams.from_string("correct horse"))):
        d = tensorizer.TensorDeserializer(str(path), device="cpu", encryption=params,
                                          verify_hash=True)
        for name, t in tensors.items():
            assert torch.equal(d[name], t), (path.name, name)
        d.close()
        # and plaid reads them back too
        with plaid.safe_open(path, framework="pt", key=key if path == by_key else None,
                             passphrase=None if path == by_key else "correct horse") as f:
            assert torch.equal(f.get_tensor("w"), tensors["w"])
    assert not list(tmp_path.glob(".plaid-*")), "a staged file was left behind"
    with pytest.raises(plaid.InvalidArgumentError, match="safetensors"):
        pt.save_file(tensors, tmp_path / "x.safetensors", key=key)


def test_tensorizers_own_decryption_params_decrypt_its_files(tmp_path):
    """tensorizer's DecryptionParams work unchanged (the import-line-only switch); a key
    for a plain file refuses it unless plaintext is allowed; anything else is refused,
    never ignored."""
    fixtures = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "tensorizer"
    truth = json.loads((fixtures / "encrypted_passphrase_4k_chunks_v3.json").read_text())
    path = str(fixtures / "encrypted_passphrase_4k_chunks_v3.tensors")
    for params in (tensorizer.DecryptionParams.from_key(
                       bytes.fromhex(truth["encryption"]["key_hex"])),
                   tensorizer.DecryptionParams.from_string(truth["encryption"]["passphrase"])):
        d = pt.TensorDeserializer(path, device="cpu", encryption=params)
        for t in truth["tensors"]:
            got = d[t["name"]].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            assert hashlib.sha256(got).hexdigest() == t["sha256"], t["name"]
    plain = tmp_path / "plain.plaid"
    pt.save_file({"w": torch.ones(4)}, plain)
    with pytest.raises(plaid.DecryptError, match="stored in the clear"):
        pt.TensorDeserializer(str(plain), device="cpu", encryption=_decryption_params())
    d = pt.TensorDeserializer(str(plain), device="cpu", encryption=_decryption_params(),
                              allow_plaintext=True)
    assert torch.equal(d["w"], torch.ones(4))
    with pytest.raises(plaid.InvalidArgumentError):
        pt.TensorDeserializer(str(plain), device="cpu", encryption=object())
