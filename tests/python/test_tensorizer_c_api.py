"""tensorizer ``.tensors`` files through plaid's C API: every fixture written by the real
tensorizer package (several releases) loads with the bytes its ``.json`` records; and,
where the tensorizer package can be imported, files it writes now load through
``plaid_deserializer_open`` + ``plaid_deserializer_load`` with identical bytes, and files
``plaid convert`` writes load in tensorizer with its hash verification on."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from plaid_ctypes import (PLAID_ERR_CHECKSUM, PLAID_ERR_DECRYPT, PLAID_FORMAT_TENSORIZER, Loaded, convert,
                          load, open_library)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tensorizer"
ROLES = {"PARAM": 1, "BUFFER": 2, "STATE_DICT": 3}


@pytest.fixture(scope="module")
def lib():
    return open_library()


def fixtures():
    assert FIXTURES.is_dir(), f"the tensorizer fixtures are missing: {FIXTURES}"
    return sorted(p.stem for p in FIXTURES.glob("*.tensors"))


def flat_name(t):
    if not t["name"].startswith("\x1e"):
        return t["name"]
    return ".".join(str(c) for c in t["path"])


@pytest.mark.parametrize("fixture", fixtures())
def test_fixture_through_the_c_api(lib, fixture):
    truth = json.loads((FIXTURES / f"{fixture}.json").read_text())
    got = load(lib, FIXTURES / f"{fixture}.tensors")
    expect = truth.get("expect", {}).get("correct_reader", "")
    if truth.get("encryption") or "Poly1305" in expect:
        # Opens (the index is in the clear); loading without a key is PLAID_ERR_DECRYPT.
        assert not isinstance(got, Loaded) and got[0] == PLAID_ERR_DECRYPT
        assert "no key" in got[1] and fixture in got[1], got[1]
        return
    if expect.startswith("error"):
        assert not isinstance(got, Loaded), expect
        assert fixture in got[1], got[1]
        return
    # With verification (the default), a damaged tensor, or one whose stored hashes
    # tensorizer itself got wrong, fails the load, named. Damage to a stored SHA-256 alone
    # fails only where the SHA-256s are checked (not by default: the CRC-32 covers the data,
    # which is intact).
    bad = truth.get("expect", {}).get("corrupted_tensor") or \
        (truth.get("expected_hash_mismatch") or [None])[0]
    if bad and "stored_sha256" in fixture:
        checked = load(lib, FIXTURES / f"{fixture}.tensors", sha256=True)
        assert not isinstance(checked, Loaded) and checked[0] == PLAID_ERR_CHECKSUM
        assert f"'{bad}'" in checked[1] and "sha256" in checked[1], checked[1]
        bad = None
    if bad:
        assert not isinstance(got, Loaded) and got[0] == PLAID_ERR_CHECKSUM
        assert f"'{bad}'" in got[1] and fixture in got[1], got[1]
        return
    assert got.format == PLAID_FORMAT_TENSORIZER
    assert list(got.infos) == [flat_name(t) for t in truth["tensors"]]
    for t in truth["tensors"]:
        info = got.infos[flat_name(t)]
        assert info["shape"] == tuple(t["shape"])
        assert info["role"] == ROLES[t["tensor_type"]]
        assert info["module_index"] == t["module_idx"]
        assert info["zero_fill"] == t["is_meta"]
        if t["name"].startswith("\x1e"):
            assert json.loads(info["path"]) == t["path"]
        else:
            assert info["path"] is None
        assert hashlib.sha256(got.data[flat_name(t)]).hexdigest() == t["sha256"], t["name"]


def test_fixture_list_is_not_empty():
    assert len(fixtures()) >= 27, FIXTURES


# The real tensorizer package, where it can be installed (it needs torch).
torch = None
try:  # pragma: no cover - depends on the machine
    import torch
    from tensorizer import TensorDeserializer, TensorSerializer
except ImportError:
    TensorSerializer = None
needs_tensorizer = pytest.mark.skipif(TensorSerializer is None,
                                      reason="tensorizer (and torch) not installed")


def torch_bytes(tensor):
    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() \
        if tensor.numel() else b""


def sample_state_dict():
    g = torch.Generator().manual_seed(5)
    return {
        "embed.weight": torch.randn(64, 32, generator=g),
        "layers.0.attn.bf16": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "layers.0.f8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "layers.0.ids": torch.randint(-9, 9, (3, 5), generator=g),
        "half": torch.randn(7, generator=g).half(),
        "mask": torch.rand(5, generator=g) > 0.5,
        "scalar": torch.tensor(2.5),
        "transposed": torch.randn(6, 4, generator=g).t(),
    }


@needs_tensorizer
def test_file_written_by_tensorizer_loads_identically(lib, tmp_path):
    path = tmp_path / "model.tensors"
    tensors = sample_state_dict()
    nested = {"model": {"layers": [{"w": torch.randn(3, 3)}, {"w": torch.randn(2)}]}}
    s = TensorSerializer(str(path))
    s.write_state_dict(tensors)
    s.write_state_dict(nested)
    s.close()
    got = load(lib, path)
    assert got.format == PLAID_FORMAT_TENSORIZER
    for name, tensor in tensors.items():
        assert got.infos[name]["shape"] == tuple(tensor.shape)
        assert got.data[name] == torch_bytes(tensor), name
    for k, layer in enumerate(nested["model"]["layers"]):
        name = f"model.layers.{k}.w"
        assert json.loads(got.infos[name]["path"]) == ["model", "layers", k, "w"]
        assert got.data[name] == torch_bytes(layer["w"])


@needs_tensorizer
def test_plaid_convert_writes_files_tensorizer_loads_with_verification(lib, tmp_path):
    """tensorizer -> plaid -> tensorizer, and safetensors -> tensorizer: the real
    tensorizer loads plaid's files with ``verify_hash=True``, bf16 and float8 included."""
    tensors = sample_state_dict()
    source = tmp_path / "source.tensors"
    s = TensorSerializer(str(source))
    s.write_state_dict(tensors)
    s.close()
    middle, back = tmp_path / "mid.plaid", tmp_path / "back.tensors"
    convert(source, middle)
    convert(middle, back)
    d = TensorDeserializer(str(back), device="cpu", verify_hash=True)
    try:
        assert set(d.keys()) == set(tensors)
        for name, tensor in tensors.items():
            assert d[name].dtype == tensor.dtype, name
            assert torch_bytes(d[name]) == torch_bytes(tensor), name
    finally:
        d.close()
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.int16)}
    st = tmp_path / "x.safetensors"
    safetensors_numpy.save_file(arrays, str(st))
    out = tmp_path / "x.tensors"
    convert(st, out)
    d = TensorDeserializer(str(out), device="cpu", verify_hash=True)
    try:
        for name, array in arrays.items():
            assert np.array_equal(d[name].detach().numpy(), array), name
    finally:
        d.close()
