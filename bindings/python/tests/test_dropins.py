"""plaid.safetensors and plaid.tensorizer as drop-ins: files byte for byte as safetensors
writes them, tensorizer files that tensorizer reads, the peers' names, structures and
exceptions, and programs written for the peers running with plaid's modules in
``sys.modules`` under the peers' names. Skipped where torch is missing; the comparisons
with the peers themselves where they are not installed."""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import plaid  # noqa: E402
import plaid.safetensors as pst  # noqa: E402
import plaid.safetensors.numpy as pstn  # noqa: E402
import plaid.safetensors.torch as pstt  # noqa: E402
import plaid.tensorizer as ptz  # noqa: E402
from plaid.tensorizer.torch_compat import tensorizer_loading, tensorizer_saving  # noqa: E402


def every_torch_dtype():
    g = torch.Generator().manual_seed(5)
    out = {}
    for name in ("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16",
                 "int32", "int64", "bool", "complex64", "float8_e4m3fn", "float8_e5m2",
                 "float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64"):
        dtype = getattr(torch, name, None)
        if dtype is None:
            continue
        raw = torch.randint(0, 256, (3, 8), dtype=torch.uint8, generator=g)
        size = torch.empty((), dtype=dtype).element_size()
        out[f"z.{name}"] = raw[:, : 8 - 8 % size].contiguous().view(dtype) \
            if dtype != torch.bool else raw.bool()
    out["a.scalar"] = torch.tensor(2.5)
    out["m.empty"] = torch.zeros((2, 0))
    return out


# ---- safetensors ---------------------------------------------------------------------


def test_safetensors_bytes_are_safetensors_own():
    real = pytest.importorskip("safetensors.torch")
    tensors = every_torch_dtype()
    for metadata in (None, {"format": "pt"}):
        mine = pstt.save(tensors, metadata=metadata)
        assert mine == real.save(tensors, metadata=metadata)
    # Order of the dict does not matter; numpy too.
    assert pstt.save(dict(reversed(list(tensors.items())))) == real.save(tensors)
    arrays = {"b": np.arange(6, dtype=np.int32).reshape(2, 3), "a": np.ones(3, np.float16),
              "big": np.arange(4, dtype=">i4"), "s": np.asarray(False)}
    import safetensors.numpy as real_np
    assert pstn.save(arrays) == real_np.save(arrays)


def test_safetensors_files_are_safetensors_own_and_read_back(tmp_path):
    real = pytest.importorskip("safetensors.torch")
    tensors = every_torch_dtype()
    pstt.save_file(tensors, tmp_path / "m.safetensors", metadata={"k": "v"})
    real.save_file(tensors, tmp_path / "r.safetensors", metadata={"k": "v"})
    assert (tmp_path / "m.safetensors").read_bytes() == (tmp_path / "r.safetensors").read_bytes()
    for loaded in (pstt.load_file(tmp_path / "m.safetensors"),
                   pstt.load((tmp_path / "m.safetensors").read_bytes()),
                   real.load_file(tmp_path / "m.safetensors")):
        for name, t in tensors.items():
            assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
            assert torch.equal(loaded[name].view(-1).view(torch.uint8),
                               t.view(-1).view(torch.uint8)) if t.numel() else True


def test_safe_open_answers_as_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    a = torch.arange(50, dtype=torch.float32).reshape(10, 5)
    pstt.save_file({"b": a, "a": torch.ones(3, dtype=torch.int64)}, path)
    for backend in ("mmap", "pread"):
        with pst.safe_open(path, framework="pt", device="cpu", backend=backend) as f:
            assert f.keys() == ["a", "b"]
            assert f.offset_keys() == ["a", "b"]  # int64 before float32: wider first
            assert f.metadata() is None
            got = f.get_tensors()
            assert list(got) == ["a", "b"] and torch.equal(got["b"], a)
            s = f.get_slice("b")
            assert s.get_dtype() == "F32" and s.get_shape() == [10, 5]
            assert torch.equal(s[2:, -1], a[2:, -1])
            assert s[[]].shape == (0, 5)
            assert torch.equal(s[()], a)
            with pytest.raises(pst.SafetensorError, match="Non empty lists"):
                s[[0, 1]]
            with pytest.raises(pst.SafetensorError,
                               match=r"slicing \[:20\] with shape \[10, 5\]: index 19 out of"):
                s[:20]
            with pytest.raises(pst.SafetensorError, match="Invalid index -6 for dimension 1"):
                s[2:, -6]
            with pytest.raises(pst.SafetensorError, match="does not contain tensor nope"):
                f.get_tensor("nope")
    with pytest.raises(pst.SafetensorError):
        f.keys()  # closed
    with pytest.raises(Exception):
        pst.safe_open(path, framework="pt", backend="nope")
    with open(path, "rb") as handle:
        with pst.safe_open(handle, framework="np") as f:
            assert np.array_equal(f.get_tensor("b"), a.numpy())
    with open(path, "r") as text:  # safetensors reads a text-mode handle's bytes too
        with pst._safe_open_handle(text, framework="np") as f:
            assert f.keys() == ["a", "b"]


def test_safetensors_errors_are_the_peers_types(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file or directory: notafile") as e:
        pst.safe_open("notafile", framework="pt")
    assert isinstance(e.value, plaid.PlaidIOError)
    with pytest.raises(FileNotFoundError):
        pstt.load_file(tmp_path / "absent.safetensors")
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="non contiguous"):
        pstt.save_file({"t": torch.arange(6.0).reshape(2, 3).t()}, out)
    base = torch.arange(6.0).reshape(2, 3)
    with pytest.raises(RuntimeError, match="share memory"):
        pstt.save_file({"A": base, "B": base[:1]}, out)
    with pytest.raises(RuntimeError, match="Cannot copy out of meta tensor"):
        pstt.save_file({"m": torch.zeros(2, device="meta")}, out)
    with pytest.raises(ValueError, match="sparse"):
        pstt.save_file({"s": torch.sparse_coo_tensor(size=(2, 3))}, out)
    with pytest.raises(ValueError, match="expected torch.Tensor"):
        pstt.save_file({"d": {"x": 1}}, out)
    with pytest.raises(ValueError, match="Expected a dict"):
        pstt.save_file("notadict", out)
    assert not out.exists()
    with pytest.raises(pst.SafetensorError):
        pst.TensorSpec(dtype="nonsense", shape=[1], data_ptr=0, data_len=0)
    with pytest.raises(TypeError):
        pst.serialize({"t": {"dtype": "float32", "shape": [1], "data_ptr": 0, "data_len": 0}})
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(pstt.save({"w": torch.ones(100)})[:40])
    with pytest.raises(pst.SafetensorError) as e:
        pst.safe_open(truncated, framework="pt")
    assert isinstance(e.value, plaid.PlaidError)


def test_serialize_writes_raw_buffers(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    specs = {"a": pst.TensorSpec(dtype="float32", shape=a.shape, data_ptr=a.ctypes.data,
                                 data_len=a.nbytes)}
    assert specs["a"].dtype == "F32" and specs["a"].shape == [3, 4]
    data = pst.serialize(specs, metadata={"x": "y"})
    assert data == pstn.save({"a": a}, metadata={"x": "y"})
    pst.serialize_file(specs, tmp_path / "s.safetensors")
    assert np.array_equal(pstn.load_file(tmp_path / "s.safetensors")["a"], a)
    assert pst.deserialize(data) == [("a", {"shape": [3, 4], "dtype": "F32",
                                            "data": a.tobytes()})]


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = self.a


def test_save_model_and_load_model_store_tied_weights_once(tmp_path):
    path = tmp_path / "tied.safetensors"
    model = Tied()
    pstt.save_model(model, path)
    with pst.safe_open(path, framework="pt") as f:
        assert f.metadata() == {"b.bias": "a.bias", "b.weight": "a.weight"}
        assert f.keys() == ["a.bias", "a.weight"]
    other = Tied()
    assert pstt.load_model(other, path) == (set(), [])
    assert torch.equal(other.a.weight, model.a.weight)

    class Untied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "b.bias", '
                                           '"b.weight"'):
        pstt.load_model(Untied(), path)
    transposed = torch.nn.Linear(4, 4)
    transposed.weight = torch.nn.Parameter(torch.zeros(4, 4).t())
    with pytest.raises(ValueError, match="force_contiguous=True"):
        pstt.save_model(transposed, tmp_path / "t.safetensors")
    pstt.save_model(transposed, tmp_path / "t.safetensors", force_contiguous=True)
    assert pstt.storage_size(torch.zeros(10)) == 40
    assert pstt.storage_ptr(torch.zeros(3)[1:]) == pstt.storage_ptr(torch.zeros(3)) or True


def test_fnuz_float8_round_trips_and_reads_safetensors_files(tmp_path):
    if not hasattr(torch, "float8_e4m3fnuz"):
        pytest.skip("this torch has no fnuz float8")
    data = {"e4": torch.tensor([0.5], dtype=torch.float8_e4m3fnuz),
            "e5": torch.tensor([0.5], dtype=torch.float8_e5m2fnuz)}
    pstt.save_file(data, tmp_path / "f.safetensors")
    back = pstt.load_file(tmp_path / "f.safetensors")
    assert back["e4"].dtype == torch.float8_e4m3fnuz and back["e4"].item() == 0.5
    assert back["e5"].dtype == torch.float8_e5m2fnuz and back["e5"].item() == 0.5
    with pst.safe_open(tmp_path / "f.safetensors", framework="pt") as f:
        assert f.get_slice("e4").get_dtype() == "F8_E4M3FNUZ"


TRANSFORMERS_PROGRAM = textwrap.dedent("""
    import sys, json
    import plaid.safetensors, plaid.safetensors.torch, plaid.safetensors.numpy
    sys.modules["safetensors"] = plaid.safetensors
    sys.modules["safetensors.torch"] = plaid.safetensors.torch
    sys.modules["safetensors.numpy"] = plaid.safetensors.numpy
    import torch, transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(sys.argv[1])
    loaded = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        same = torch.equal(model(ids).logits, loaded(ids).logits)
    import transformers.modeling_utils as mu
    used = getattr(mu, "safe_open", None)
    print(json.dumps({"same": same, "plaid": getattr(used, "__module__", "") ==
                      "plaid.safetensors"}))
""")


def test_transformers_saves_and_loads_through_plaid_safetensors(tmp_path):
    pytest.importorskip("transformers")
    done = subprocess.run([sys.executable, "-c", TRANSFORMERS_PROGRAM, str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"same": True, "plaid": True}
    # What transformers wrote through plaid is what safetensors writes: its own reader
    # takes it.
    real = pytest.importorskip("safetensors")
    files = list((tmp_path / "m").glob("*.safetensors"))
    assert files
    with real.safe_open(str(files[0]), framework="pt") as f:
        assert f.keys() and f.metadata().get("format") == "pt"


# ---- tensorizer ----------------------------------------------------------------------


def small_module():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                            torch.nn.Linear(16, 4))
    m.register_buffer("steps", torch.arange(3), persistent=False)
    return m


def test_tensor_serializer_writes_tensorizer_files_tensorizer_reads(tmp_path):
    real = pytest.importorskip("tensorizer")
    module = small_module()
    # A path, and an open binary file (closed by close(), as tensorizer closes it).
    s = ptz.TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_module(module)
    s.close()
    handle = open(tmp_path / "f.bin", "wb+")
    s = ptz.TensorSerializer(handle)
    s.write_module(module)
    s.close()
    assert handle.closed
    for name in ("m.tensors", "f.bin"):
        assert (tmp_path / name).read_bytes()[:5] == b"|TZR|"
        with real.TensorDeserializer(str(tmp_path / name), device="cpu",
                                     verify_hash=True) as d:
            for key, value in list(module.state_dict().items()) + [("steps", module.steps)]:
                assert torch.equal(d[key], value), key
    # .plaid gets plaid's format; format= overrides the name.
    s = ptz.TensorSerializer(str(tmp_path / "m.plaid"))
    s.write_module(module)
    s.close()
    assert (tmp_path / "m.plaid").read_bytes()[:5] != b"|TZR|"
    s = ptz.TensorSerializer(str(tmp_path / "x.bin"), format="plaid")
    s.write_state_dict({"w": torch.ones(2)})
    s.close()
    assert (tmp_path / "x.bin").read_bytes()[:5] != b"|TZR|"


def test_tensor_deserializer_gives_back_the_structure(tmp_path):
    tensors = [torch.tensor((i,), dtype=torch.uint8) for i in range(4)]
    for structure, keys in (
            (tensors, [0, 1, 2, 3]),
            ({str(i): t for i, t in enumerate(tensors)}, ["0", "1", "2", "3"]),
            ([{str(i): t, "x": t} for i, t in enumerate(tensors)], [0, 1, 2, 3]),
            ({str(i): [t, tensors[-i]] for i, t in enumerate(tensors)}, ["0", "1", "2", "3"])):
        s = ptz.TensorSerializer(str(tmp_path / "s.tensors"))
        s.write_state_dict(structure)
        s.close()
        with ptz.TensorDeserializer(str(tmp_path / "s.tensors"), device="cpu") as d:
            assert list(d.keys()) == keys
            assert (5 in d) is False and ("5" in d) is False
            assert (keys[1] in d) and (str(keys[1]) in d) == isinstance(keys[1], str)
            tree = d.tree()
            if isinstance(structure, list):
                assert isinstance(tree, list) and len(tree) == 4
            else:
                assert list(tree) == keys
            if isinstance(structure, dict) and isinstance(structure["1"], list):
                assert isinstance(tree["1"], list)
                assert list(d["1"].keys()) == [0, 1]
                assert torch.equal(d.tree(("1", 1)), tensors[-1])
            assert d.tree(("absent",), default="none") == "none"
            with pytest.raises(TypeError):
                d.tree("0")


def test_meta_tensors_are_written_as_zeros(tmp_path):
    module = torch.nn.Module()
    module.register_parameter("real", torch.nn.Parameter(torch.ones(3, 3)))
    module.register_parameter("meta", torch.nn.Parameter(torch.empty(3, 3, device="meta")))
    s = ptz.TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_module(module)
    s.close()
    with ptz.TensorDeserializer(str(tmp_path / "m.tensors"), device="cpu") as d:
        assert torch.equal(d["meta"], torch.zeros(3, 3))
        assert torch.equal(d["real"], torch.ones(3, 3))


def test_read_tensors_numpy_verify_module_and_bytes_read(tmp_path):
    module = small_module()
    module[0].weight.data = module[0].weight.data.to(torch.bfloat16)
    s = ptz.TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_module(module)
    s.close()
    d = ptz.TensorDeserializer(str(tmp_path / "m.tensors"), device="cpu", lazy_load=True)
    read = list(d.read_tensors(filter_func=lambda n: n.startswith("0."), num_tensors=2))
    assert [r[2] for r in read] == ["0.weight", "0.bias"]
    assert read[0][1] == ptz.TensorType.PARAM and torch.equal(read[0][3], module[0].weight)
    with pytest.raises(ValueError, match="numpy lacks"):
        list(d.read_numpy_arrays())
    arrays = {r[2]: r for r in d.read_numpy_arrays(allow_raw_data=True)}
    assert arrays["0.weight"][4] is True and arrays["0.weight"][5] == "torch.bfloat16"
    assert arrays["0.bias"][4] is False and np.array_equal(arrays["0.bias"][3],
                                                            module[0].bias.detach().numpy())
    ok, results = d.verify_module(module)
    assert ok and all(r for _, r in results)
    with torch.no_grad():
        module[2].bias.add_(1)
    ok, results = d.verify_module(module)
    assert not ok and [n for n, r in results if not r] == ["2.bias"]
    assert d.total_bytes_read >= sum(t.numel() * t.element_size()
                                     for t in module.state_dict().values())


def test_encryption_errors_are_tensorizers_and_a_fixed_salt_is_kept(tmp_path):
    real = pytest.importorskip("tensorizer")
    module = small_module()
    params = ptz.EncryptionParams.from_string("test", opslimit=ptz.EncryptionParams.OpsLimit.MIN,
                                              memlimit=ptz.EncryptionParams.MemLimit.MIN,
                                              salt=bytes(16))
    assert params.salt == bytes(16)
    s = ptz.TensorSerializer(str(tmp_path / "e.tensors"), encryption=params)
    s.write_module(module)
    s.close()
    # tensorizer itself decrypts it with the passphrase alone.
    with real.TensorDeserializer(str(tmp_path / "e.tensors"), device="cpu",
                                 encryption=real.DecryptionParams.from_string("test")) as d:
        assert torch.equal(d["0.weight"], module[0].weight)
    with ptz.TensorDeserializer(str(tmp_path / "e.tensors"), device="cpu",
                                encryption=ptz.DecryptionParams.from_string("test")) as d:
        assert torch.equal(d["0.weight"], module[0].weight)
    for wrong in (None, ptz.DecryptionParams.from_string("tset")):
        d = ptz.TensorDeserializer(str(tmp_path / "e.tensors"), device="cpu", lazy_load=True,
                                   encryption=wrong)
        with pytest.raises(real.CryptographyError) as e:
            d["0.weight"]
        assert isinstance(e.value, (ptz.CryptographyError, plaid.DecryptError))
    s = ptz.TensorSerializer(str(tmp_path / "p.tensors"))
    s.write_module(module)
    s.close()
    with pytest.raises(real.serialization.CryptographyError):
        ptz.TensorDeserializer(str(tmp_path / "p.tensors"), device="cpu",
                               encryption=ptz.DecryptionParams.from_string("test"))
    damaged = bytearray((tmp_path / "p.tensors").read_bytes())
    damaged[-200] ^= 0xFF
    (tmp_path / "d.tensors").write_bytes(bytes(damaged))
    with pytest.raises(real.serialization.HashMismatchError):
        ptz.TensorDeserializer(str(tmp_path / "d.tensors"), device="cpu", verify_hash=True)


def test_tensorizers_own_serializer_and_deserializer_take_plaids_params(tmp_path):
    real = pytest.importorskip("tensorizer")
    module = torch.nn.Sequential(torch.nn.Linear(4, 4))
    for params in (ptz.EncryptionParams.random(),
                   ptz.EncryptionParams.from_string("pw", opslimit=1, memlimit=8192,
                                                    salt=bytes(16))):
        assert isinstance(params, real.EncryptionParams)
        path = tmp_path / "r.tensors"
        s = real.TensorSerializer(str(path), encryption=params)
        s.write_module(module)
        s.close()
        decrypt = ptz.DecryptionParams.from_key(params.key) if params.passphrase is None \
            else ptz.DecryptionParams.from_string("pw")
        assert isinstance(decrypt, real.DecryptionParams)
        for reader in (ptz.TensorDeserializer, real.TensorDeserializer):
            with reader(str(path), device="cpu", encryption=decrypt) as d:
                assert torch.equal(d["0.weight"], module[0].weight)


def test_torch_save_and_load_through_plaid(tmp_path):
    module = small_module()
    pt_path = tmp_path / "m.pt"
    a = torch.tensor((1, 2, 3), dtype=torch.long)
    c = torch.tensor((), dtype=torch.long)
    c.set_(a)
    with tensorizer_saving():
        torch.save({"module": module, "a": a, "c": c, "meta": torch.ones(2, device="meta")},
                   pt_path)
    assert (tmp_path / "m.pt.tensors").read_bytes()[:5] == b"|TZR|"
    assert pt_path.stat().st_size < (tmp_path / "m.pt.tensors").stat().st_size
    assert torch.save is torch.serialization.save  # torch's own outside the context
    with tensorizer_loading(device="cpu"):
        back = torch.load(pt_path, weights_only=False)
    for key, value in module.state_dict().items():
        assert torch.equal(back["module"].state_dict()[key], value)
    assert back["c"].is_set_to(back["a"]) and back["meta"].is_meta
    with tensorizer_loading(device="cpu"), pytest.raises(RuntimeError, match="weights"):
        torch.load(pt_path, weights_only=True)
    with tensorizer_loading(tmp_path / "absent.tensors", device="cpu"), \
            pytest.raises(OSError):
        torch.load(pt_path, weights_only=False)
    # Through plaid.torch, too.
    import plaid.torch as pt
    assert pt.tensorizer_saving is tensorizer_saving
    assert pt.TensorSerializer is ptz.TensorSerializer and pt.save_model is pstt.save_model


def test_tensorizers_own_torch_compat_runs_on_plaids_classes(tmp_path, monkeypatch):
    compat = pytest.importorskip("tensorizer.torch_compat")
    monkeypatch.setattr(compat, "TensorSerializer", ptz.TensorSerializer)
    monkeypatch.setattr(compat, "TensorDeserializer", ptz.TensorDeserializer)
    module = small_module()
    with compat.tensorizer_saving():
        torch.save(module, tmp_path / "m.pt")
    with compat.tensorizer_loading(device="cpu"):
        back = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(back[0].weight, module[0].weight)


TENSORIZER_PROGRAM = textwrap.dedent("""
    import sys
    import plaid.tensorizer
    sys.modules["tensorizer"] = plaid.tensorizer
    sys.modules["tensorizer.serialization"] = plaid.tensorizer.serialization
    sys.modules["tensorizer.utils"] = plaid.tensorizer.utils
    import torch
    from tensorizer import TensorSerializer, TensorDeserializer, CryptographyError
    from tensorizer.utils import no_init_or_tensor
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    model = make()
    s = TensorSerializer(sys.argv[1])
    s.write_module(model)
    s.close()
    with no_init_or_tensor():
        empty = make()
    TensorDeserializer(sys.argv[1], device="cpu").load_into_module(empty)
    x = torch.randn(2, 8)
    assert torch.equal(model(x), empty(x))
    assert TensorDeserializer.__module__ == "plaid.tensorizer.serialization"
    print("ok")
""")


def test_a_tensorizer_program_runs_with_plaid_in_its_place(tmp_path):
    done = subprocess.run([sys.executable, "-c", TENSORIZER_PROGRAM, str(tmp_path / "m.tensors")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
    assert (tmp_path / "m.tensors").read_bytes()[:5] == b"|TZR|"


def test_a_refused_write_names_its_target_and_leaves_nothing(tmp_path):
    target = tmp_path / "m.safetensors"
    with pytest.raises(plaid.PlaidError) as e:  # safetensors holds no complex128
        import plaid.torch as pt
        pt.save_file({"c": torch.zeros(2, dtype=torch.complex128)}, target)
    assert str(target) in str(e.value) and ".plaid-save" not in str(e.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        pstn.load_file(tmp_path / "absent.safetensors")
