"""safetensors files written by the real ``safetensors`` package load through plaid's C
API (``plaid_deserializer_open`` + ``plaid_deserializer_load``) with identical bytes, and
files safetensors refuses, plaid refuses too."""

import numpy as np
import pytest

from plaid_ctypes import (PLAID_FORMAT_SAFETENSORS, PLAID_OK, Loaded, convert, load,
                          open_library)

safetensors_numpy = pytest.importorskip("safetensors.numpy")

# numpy dtype -> PLAID_DTYPE_* id
DTYPES = {
    np.dtype(np.bool_): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int16): 4,
    np.dtype(np.uint16): 5, np.dtype(np.int32): 6, np.dtype(np.uint32): 7,
    np.dtype(np.int64): 8, np.dtype(np.uint64): 9, np.dtype(np.float16): 10,
    np.dtype(np.float32): 12, np.dtype(np.float64): 13, np.dtype(np.complex64): 15,
}


@pytest.fixture(scope="module")
def lib():
    return open_library()


def test_every_numpy_dtype_written_by_safetensors_loads_identically(lib, tmp_path):
    rng = np.random.default_rng(7)
    tensors = {}
    for k, dtype in enumerate(DTYPES):
        raw = rng.integers(0, 256, size=4 * 6 * dtype.itemsize, dtype=np.uint8)
        array = raw.view(np.uint8).copy().view(dtype).reshape(4, 6) if dtype != np.bool_ \
            else (raw[:24] & 1).astype(np.bool_).reshape(4, 6)
        tensors[f"layer.{k}.{dtype.name}"] = array
    tensors["scalar"] = np.array(3.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 5), dtype=np.float16)
    tensors["odd"] = rng.integers(0, 255, size=7, dtype=np.uint8)
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={"origin": "safetensors ✓"})

    got = load(lib, path)
    assert got.format == PLAID_FORMAT_SAFETENSORS
    infos, data, meta = got.infos, got.data, got.meta
    assert meta == "safetensors ✓"
    assert set(infos) == set(tensors)
    for name, array in tensors.items():
        dtype_id, shape = infos[name]["dtype"], infos[name]["shape"]
        assert dtype_id == DTYPES[array.dtype], name
        assert shape == array.shape, name
        assert data[name] == np.ascontiguousarray(array).tobytes(), name


def test_empty_file_written_by_safetensors(lib, tmp_path):
    path = tmp_path / "empty.safetensors"
    safetensors_numpy.save_file({}, str(path))
    got = load(lib, path)
    assert got.infos == {} and got.data == {}


def test_what_safetensors_refuses_plaid_refuses(lib, tmp_path):
    path = tmp_path / "good.safetensors"
    safetensors_numpy.save_file({"a": np.arange(64, dtype=np.float32)}, str(path))
    good = path.read_bytes()
    cases = {
        "truncated": good[:-5],
        "trailing": good + b"\0" * 8,
        "huge_header": (10**9).to_bytes(8, "little") + good[8:],
    }
    for label, bytes_ in cases.items():
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(bytes_)
        with pytest.raises(Exception):
            safetensors_numpy.load_file(str(bad))
        result = load(lib, bad)
        assert not isinstance(result, Loaded) and result[0] != PLAID_OK and result[0] != PLAID_OK, label
        assert str(bad) in result[1], (label, result[1])


def test_plaid_convert_round_trips_files_written_by_safetensors(lib, tmp_path):
    """safetensors -> plaid -> safetensors with the CLI gives identical tensors and
    metadata, read back by the safetensors package itself."""
    rng = np.random.default_rng(3)
    tensors = {
        "embed": rng.standard_normal((64, 32)).astype(np.float16),
        "bias": rng.standard_normal(32).astype(np.float32),
        "ids": rng.integers(-5, 5, size=(3, 3), dtype=np.int64),
        "flag": np.array([True, False, True]),
    }
    source = tmp_path / "in.safetensors"
    safetensors_numpy.save_file(tensors, str(source), metadata={"format": "np"})
    middle = tmp_path / "mid.plaid"
    back = tmp_path / "out.safetensors"
    for a, b in ((source, middle), (middle, back)):
        convert(a, b)
    loaded = safetensors_numpy.load_file(str(back))
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name
    from safetensors import safe_open
    with safe_open(str(back), framework="np") as f:
        assert f.metadata() == {"format": "np"}


def test_sharded_checkpoint_written_by_safetensors_loads_through_its_index(lib, tmp_path):
    import json
    rng = np.random.default_rng(11)
    shards = {
        "model-00001-of-00002.safetensors": {
            "embed": rng.standard_normal((16, 8)).astype(np.float16),
            "norm": rng.standard_normal(8).astype(np.float32),
        },
        "model-00002-of-00002.safetensors": {
            "head": rng.standard_normal((8, 16)).astype(np.float32),
        },
    }
    weight_map = {}
    for file_name, tensors in shards.items():
        safetensors_numpy.save_file(tensors, str(tmp_path / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name in tensors})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1088}, "weight_map": weight_map}))
    got = load(lib, index)
    infos, data = got.infos, got.data
    expected = {n: a for tensors in shards.values() for n, a in tensors.items()}
    assert set(infos) == set(expected)
    for name, array in expected.items():
        assert (infos[name]["dtype"], infos[name]["shape"]) == (DTYPES[array.dtype], array.shape), name
        assert data[name] == array.tobytes(), name
