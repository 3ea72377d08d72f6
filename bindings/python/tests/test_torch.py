"""The Python binding with PyTorch: every torch dtype (bf16 and float8 included), the
safetensors-style API, load_into, and the tensorizer-style drop-in (write_module ->
no_init_or_tensor -> load_into_module, TensorDeserializer on tensorizer's own files). Skipped,
with the reason printed, where torch is not installed."""

import hashlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch tests are skipped")

import plaid  # noqa: E402
import plaid.tensorizer  # noqa: E402
import plaid.torch as pt  # noqa: E402
from plaid.torch import TensorDeserializer, TensorSerializer, no_init_or_tensor  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "tensorizer"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def raw(t):
    t = t.detach().contiguous().cpu()
    return t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def every_dtype():
    g = torch.Generator().manual_seed(3)
    out = {}
    for name in ["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32",
                 "int64", "bool", "complex64", "complex128", "uint16", "uint32", "uint64",
                 "complex32", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                 "float8_e5m2fnuz", "float8_e8m0fnu"]:
        dtype = getattr(torch, name, None)
        if dtype is None:
            continue
        bytes_ = torch.randint(0, 256, (4 * 6 * dtype.itemsize,), dtype=torch.uint8, generator=g)
        if dtype == torch.bool:
            out[name] = (bytes_[:24] & 1).bool().view(4, 6)
        else:
            out[name] = bytes_.view(dtype).view(4, 6)
    out["scalar"] = torch.tensor(1.5, dtype=torch.bfloat16)
    out["empty"] = torch.empty(0, 3, dtype=torch.float8_e4m3fn)
    out["transposed"] = torch.arange(12.0).view(3, 4).t()
    return out


def test_every_torch_dtype_round_trips(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "m.plaid"
    pt.save_file(tensors, path, metadata={"framework": "pt"})
    loaded = pt.load_file(path)
    assert list(loaded) == list(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert raw(loaded[name]) == raw(t), name
    with plaid.safe_open(path, framework="pt") as f:
        assert f.metadata() == {"framework": "pt"}
        assert raw(f.get_tensor("bfloat16")) == raw(tensors["bfloat16"])


def test_load_into_existing_tensors(tmp_path):
    path = tmp_path / "m.plaid"
    tensors = {"w": torch.randn(16, 8).to(torch.bfloat16), "i": torch.arange(5)}
    pt.save_file(tensors, path)
    targets = {"w": torch.empty(16, 8, dtype=torch.bfloat16), "i": torch.zeros(5, dtype=torch.int64)}
    plaid.load_into(path, targets)
    assert torch.equal(targets["w"], tensors["w"]) and torch.equal(targets["i"], tensors["i"])
    with pytest.raises(plaid.InvalidArgumentError, match="'w'.*bf16 \\[16, 8\\]"):
        plaid.load_into(path, {"w": torch.empty(8, 16, dtype=torch.bfloat16)})
    with pytest.raises(plaid.InvalidArgumentError, match="not contiguous"):
        plaid.load_into(path, {"w": torch.empty(8, 16, dtype=torch.bfloat16).t()})


class TinyLM(torch.nn.Module):
    """A transformers-shaped toy: embeddings, a block with a norm, a tied head, and
    persistent and non-persistent buffers, one on the root module."""

    def __init__(self, vocab=50, hidden=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.block = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden),
                                         torch.nn.GELU(), torch.nn.Linear(4 * hidden, hidden))
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("positions", torch.arange(32))
        self.register_buffer("cache", torch.zeros(2, hidden), persistent=False)
        self.norm.register_buffer("steps", torch.tensor(7))


def test_module_round_trip_under_no_init_or_tensor(tmp_path):
    """The tensorizer example with only the import changed: serialize a module, build an
    empty one under no_init_or_tensor, load_into_module: every parameter and buffer exact."""
    torch.manual_seed(0)
    model = TinyLM()
    model.cache.normal_()
    path = tmp_path / "lm.plaid"
    serializer = TensorSerializer(str(path))
    serializer.write_module(model)
    serializer.close()

    empty = no_init_or_tensor(lambda: TinyLM())
    assert all(p.device.type == "meta" for p in empty.parameters())
    deserializer = TensorDeserializer(str(path), device="cpu")
    loaded = deserializer.load_into_module(empty)
    deserializer.close()
    # As tensorizer's: the count of tensors loaded (the tied head is one of them, stored
    # once); missing and unexpected keys are kept on the deserializer.
    assert loaded == len(list(TensorDeserializer(str(path), device="cpu")))
    assert deserializer.missing_keys == [] and deserializer.unexpected_keys == []
    assert not any(t.device.type == "meta" for t in empty.state_dict().values())
    assert empty.head.weight is empty.embed.weight  # the tie survives
    for (name, a), (_, b) in zip(model.named_parameters(), empty.named_parameters()):
        assert isinstance(b, torch.nn.Parameter) and torch.equal(a, b), name
    for (name, a), (_, b) in zip(model.named_buffers(), empty.named_buffers()):
        assert torch.equal(a, b), name
    # Roles come back from the file: parameters and buffers.
    assert TensorDeserializer(str(path), device="cpu").meta("positions").role == "buffer"

    # Into a module with storage, in place: the parameter objects stay the same.
    fresh = TinyLM()
    before = {n: id(p) for n, p in fresh.named_parameters()}
    TensorDeserializer(str(path), device="cpu").load_into_module(fresh)
    assert before == {n: id(p) for n, p in fresh.named_parameters()}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "partial.plaid"
    s = TensorSerializer(str(path))
    s.write_tensor(0, "embed.weight", "param", torch.randn(50, 16))
    s.write_tensor(0, "extra.weight", "param", torch.randn(3))
    s.close()
    d = TensorDeserializer(str(path), device="cpu")
    assert d.load_into_module(TinyLM()) == 1
    assert d.unexpected_keys == ["extra.weight"]
    assert "block.0.weight" in d.missing_keys and "cache" not in d.missing_keys
    # Into an empty module, what the file lacks would stay without storage: an error naming
    # each such tensor, and nothing replaced.
    empty = no_init_or_tensor(lambda: TinyLM())
    with pytest.raises(plaid.NotFoundError, match="block.0.weight") as e:
        TensorDeserializer(str(path), device="cpu").load_into_module(empty)
    assert "norm.weight" in str(e.value) and "embed.weight" not in str(e.value)
    assert empty.embed.weight.device.type == "meta"
    with pytest.raises(plaid.NotFoundError):
        TensorDeserializer(str(path), device="cpu").load_into_module(TinyLM(), strict=True)
    with pytest.raises(plaid.InvalidArgumentError, match="'embed.weight'"):
        s = TensorSerializer(str(tmp_path / "wrong.plaid"))
        s.write_tensor(0, "embed.weight", "param", torch.randn(5, 16))
        s.close()
        TensorDeserializer(str(tmp_path / "wrong.plaid"), device="cpu").load_into_module(TinyLM())


def test_nested_state_dict_keeps_paths(tmp_path):
    path = tmp_path / "nested.plaid"
    s = TensorSerializer(str(path))
    state = {"model": {"layers": [{"w": torch.randn(2, 2)}, {"w": torch.randn(3)}]},
             "top": torch.tensor(1)}
    s.write_state_dict(state)
    s.close()
    d = TensorDeserializer(str(path), device="cpu")
    # tensorizer's structure: the first level as keys, lists as int keys, tree() as written.
    assert list(d) == ["model", "top"]
    assert d.meta("model.layers.1.w").path == ["model", "layers", 1, "w"]
    assert d.meta("top").path is None
    assert list(d["model"]["layers"]) == [0, 1]
    assert torch.equal(d["model"]["layers"][1]["w"], state["model"]["layers"][1]["w"])
    tree = d.tree()
    assert isinstance(tree["model"]["layers"], list)
    assert torch.equal(tree["model"]["layers"][0]["w"], state["model"]["layers"][0]["w"])
    assert torch.equal(d.tree(("model", "layers", 1, "w")), state["model"]["layers"][1]["w"])
    assert d.tree(("nothing",), default=7) == 7
    assert [name for _, _, name, _ in d.read_tensors()] == \
        ["model.layers.0.w", "model.layers.1.w", "top"]


@pytest.mark.parametrize("fixture", ["module_tiny_lm_f32", "dtypes_opaque_v2",
                                     "meta_tensors_v4", "nested_structure",
                                     "v1_by_tensorizer_1.1.0"])
def test_tensorizer_files_through_tensor_deserializer(fixture):
    truth = json.loads((FIXTURES / f"{fixture}.json").read_text())
    d = TensorDeserializer(str(FIXTURES / f"{fixture}.tensors"), device="cpu", verify_hash=True)
    for t in truth["tensors"]:
        # Structured names come back in their structure, as tensorizer gives them.
        tensor = d.tree(t["path"]) if t.get("path") else d[t["name"]]
        assert str(tensor.dtype) == t["torch_dtype"], t["name"]
        assert hashlib.sha256(raw(tensor)).hexdigest() == t["sha256"], t["name"]


def test_a_module_written_by_tensorizer_loads_into_its_empty_twin():
    """tensorizer's write_module names root tensors with a leading dot; load_into_module
    takes them as they are."""
    truth = json.loads((FIXTURES / "module_tiny_lm_f32.json").read_text())
    d = TensorDeserializer(str(FIXTURES / "module_tiny_lm_f32.tensors"), device="cpu")
    params = {t["name"].lstrip("."): t for t in truth["tensors"] if t["tensor_type"] == "PARAM"}
    assert params and all(d.meta(t["name"]).role == "param" for t in params.values())


@cuda
def test_cuda_round_trip(tmp_path):
    tensors = {k: v.cuda() for k, v in every_dtype().items() if k != "complex32"}
    path = tmp_path / "gpu.plaid"
    pt.save_file(tensors, path)
    loaded = pt.load_file(path, device="cuda")
    for name, t in tensors.items():
        assert loaded[name].device.type == "cuda" and raw(loaded[name]) == raw(t), name
    # torch.empty, not empty_like: empty_like keeps a transposed tensor's strides, and a
    # destination must be contiguous.
    targets = {k: torch.empty(v.shape, dtype=v.dtype, device=v.device)
               for k, v in tensors.items()}
    plaid.load_into(path, targets)
    assert all(raw(targets[k]) == raw(v) for k, v in tensors.items())


def test_load_file_mapped_and_copied_agree_and_writes_stay_private(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "m.plaid"
    pt.save_file(tensors, path)
    before = path.read_bytes()
    mapped = pt.load_file(path)  # mmap=True: views of a private mapping, verified up front
    copied = pt.load_file(path, mmap=False)
    for name, t in tensors.items():
        assert raw(mapped[name]) == raw(t) == raw(copied[name]), name
    mapped["int32"].fill_(7)
    assert path.read_bytes() == before  # copy-on-write: the file is untouched
    # tensorizer's meta tensors come back as zeros in both modes.
    meta = FIXTURES / "meta_tensors_v4.tensors"
    a, b = pt.load_file(meta), pt.load_file(meta, mmap=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A damaged file fails verification up front.
    raw_bytes = bytearray(before)
    raw_bytes[-3] ^= 1
    damaged = tmp_path / "damaged.plaid"
    damaged.write_bytes(raw_bytes)
    with pytest.raises(plaid.ChecksumError) as e:
        pt.load_file(damaged)
    # The message names the file as the caller named it, not the descriptor it was mapped by.
    assert str(damaged) in str(e.value) and "/proc/self/fd" not in str(e.value)


def _all_fixtures():
    assert FIXTURES.is_dir(), f"the tensorizer fixtures are missing: {FIXTURES}"
    return sorted(p.stem for p in FIXTURES.glob("*.tensors"))


@pytest.mark.parametrize("fixture", _all_fixtures())
def test_every_tensorizer_fixture_through_tensor_deserializer(fixture):
    """Every fixture through TensorDeserializer: the intact ones load with the bytes their
    .json records (verify_hash=False for the quirk whose stored hashes tensorizer got
    wrong); damaged and encrypted ones fail the way the .json says a correct reader does."""
    truth = json.loads((FIXTURES / f"{fixture}.json").read_text())
    path = str(FIXTURES / f"{fixture}.tensors")
    expect = truth.get("expect", {})
    if truth.get("encryption") or "Poly1305" in expect.get("correct_reader", ""):
        enc = truth["encryption"]
        first = truth["tensors"][0]["name"]
        with pytest.raises(plaid.DecryptError, match=f"'{first}'"):
            TensorDeserializer(path, device="cpu")[first]
        ways = [pt.DecryptionParams.from_key(bytes.fromhex(enc["key_hex"]))]
        if enc.get("passphrase"):
            ways.append(pt.DecryptionParams.from_string(enc["passphrase"]))
        for params in ways:
            d = TensorDeserializer(path, device="cpu", encryption=params)
            for t in truth["tensors"]:
                if t["name"] == expect.get("corrupted_tensor"):
                    with pytest.raises(plaid.DecryptError, match="authentication"):
                        d[t["name"]]
                    continue
                assert hashlib.sha256(raw(d[t["name"]])).hexdigest() == t["sha256"], t["name"]
        return
    if expect.get("correct_reader", "").startswith("error"):
        with pytest.raises(plaid.FormatError):
            TensorDeserializer(path, device="cpu")
        return
    bad = expect.get("corrupted_tensor") or (truth.get("expected_hash_mismatch") or [None])[0]
    if bad:
        # verify_hash=True without lazy_load checks the whole file up front, as tensorizer
        # does; lazily, the damage shows when the tensor is read. Either way the error is
        # tensorizer's HashMismatchError and plaid's ChecksumError.
        with pytest.raises(plaid.ChecksumError, match=f"'{bad}'") as raised:
            TensorDeserializer(path, device="cpu", verify_hash=True)
        assert isinstance(raised.value, plaid.tensorizer.HashMismatchError)
        checked = TensorDeserializer(path, device="cpu", verify_hash=True, lazy_load=True)
        with pytest.raises(plaid.tensorizer.HashMismatchError, match=f"'{bad}'"):
            [checked[name] for name in checked]
    d = TensorDeserializer(path, device="cpu", verify_hash=not bad)
    by_name = {m: d.meta(m) for m in d._metas}
    assert len(by_name) == len(truth["tensors"])
    for t in truth["tensors"]:
        name = t["name"] if not t["name"].startswith("\x1e") else \
            ".".join(str(c) for c in t["path"])
        tensor = d.tree(t["path"]) if t.get("path") else d[name]
        assert str(tensor.dtype) == t["torch_dtype"], name
        assert list(tensor.shape) == t["shape"], name
        intact = hashlib.sha256(raw(tensor)).hexdigest() == t["sha256"]
        assert intact or name == bad, name


def test_file_objects_and_bytes_through_the_torch_api(tmp_path):
    import io
    tensors = {"a": torch.randn(300, 70), "b": torch.arange(10, dtype=torch.int64),
               "h": torch.randn(33).to(torch.bfloat16)}
    path = tmp_path / "m.plaid"
    pt.save_file(tensors, path)
    raw = path.read_bytes()
    for obj in (raw, io.BytesIO(raw), open(path, "rb")):
        got = pt.load_file(obj)
        assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    d = TensorDeserializer(io.BytesIO(raw), device="cpu")
    assert all(torch.equal(d[k], tensors[k]) for k in tensors)
    d.close()
    tensorizer = FIXTURES / "module_tiny_lm_f32.tensors"
    by_path = TensorDeserializer(str(tensorizer), device="cpu", verify_hash=True)
    with open(tensorizer, "rb") as f:
        d = TensorDeserializer(f, device="cpu", verify_hash=True)
    assert list(d) == list(by_path)
    assert all(torch.equal(d[k], by_path[k]) for k in d)


def test_decryption_params_refuse_a_file_in_the_clear_unless_plaintext_is_allowed(tmp_path):
    """tensorizer's drop-in with ``encryption=``: a file stored in the clear (or stripped of
    its encryption) raises DecryptError on every path, unless ``allow_plaintext=True``."""
    path = tmp_path / "plain.plaid"
    w = torch.arange(4096, dtype=torch.float32)
    pt.save_file({"w": w}, path)
    params = pt.DecryptionParams.from_key(bytes(range(32)))
    # Refused when opened, as tensorizer refuses it: tensorizer's CryptographyError too.
    with pytest.raises(plaid.DecryptError, match="stored in the clear") as raised:
        TensorDeserializer(str(path), device="cpu", encryption=params)
    assert isinstance(raised.value, plaid.tensorizer.CryptographyError)
    with pytest.raises(plaid.DecryptError, match="stored in the clear"):
        plaid.load_into(path, {"w": torch.empty(4096)}, key=bytes(range(32)))
    d = TensorDeserializer(str(path), device="cpu", encryption=params, allow_plaintext=True)
    assert torch.equal(d["w"], w)
    with pytest.raises(plaid.DecryptError, match="stored in the clear"):
        pt.load_file(path, key=bytes(range(32)))
    assert torch.equal(pt.load_file(path, key=bytes(range(32)), allow_plaintext=True)["w"], w)
