"""Tensor-parallel loads through the binding (runs in CI): safetensors-style ``get_slice``,
``load_into`` and ``TensorDeserializer`` with a rank's share of each tensor and a dtype,
against numpy and torch slicing of the same data."""

import numpy as np
import pytest

import plaid
import plaid.numpy as pn

torch = pytest.importorskip("torch")
import plaid.torch as pt  # noqa: E402


def sample(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.plaid"
    tensors = {"a": sample((7, 9), 1), "b": sample((4, 5, 6), 2),
               "ids": np.arange(24, dtype=np.int64).reshape(4, 6), "v": sample((13,), 3)}
    pn.save_file(tensors, path)
    return path, tensors


INDICES = [
    np.s_[2:5], np.s_[:, 3:7], np.s_[1:3, 2:8], np.s_[...], np.s_[..., 1:4], np.s_[-3:],
    np.s_[::2], np.s_[6:1:-2], np.s_[1], np.s_[2, 3:5], np.s_[:, -1], np.s_[5:2], np.s_[0:0, :],
]


def in_bounds(index, shape):
    """safetensors' rule: no index and no slice bound past a dimension's end (nothing is
    clamped), negative ints from the end."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - len(index) + 1) + index[at + 1:]
    for k, n in zip(index, shape):
        if isinstance(k, slice) and any(b is not None and b > n for b in (k.start, k.stop)):
            return False
        if isinstance(k, int) and not -n <= k < n:
            return False
    return True


@pytest.mark.parametrize("index", INDICES, ids=str)
def test_get_slice_indexes_as_numpy_does(model, index):
    path, tensors = model
    with plaid.safe_open(path) as f:
        for name in ("a", "b"):
            s = f.get_slice(name)
            assert s.get_shape() == list(tensors[name].shape)
            assert s.get_dtype() == "F32"
            if not in_bounds(index, tensors[name].shape):
                with pytest.raises(plaid.SafetensorError, match="out of bounds"):
                    s[index]
                continue
            want = tensors[name][index]
            got = s[index]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want), (name, index)
    if index == np.s_[6:1:-2] or not in_bounds(index, tensors["a"].shape):
        return  # torch has no negative steps
    with plaid.safe_open(path, framework="pt") as f:
        got = f.get_slice("a")[index]
        assert isinstance(got, torch.Tensor)
        want = tensors["a"][index]
        assert np.array_equal(got.numpy(), want) and tuple(got.shape) == want.shape


def test_load_into_takes_a_rank_share_and_a_dtype(model):
    path, tensors = model
    world = 3
    split = {"a": 1, "b": 0, "v": 0, "ids": None}
    parts = {name: [] for name in tensors}
    for rank in range(world):
        targets = {}
        for name, full in tensors.items():
            dim = split[name]
            shape = list(full.shape)
            if dim is not None:
                n = shape[dim]
                shape[dim] = n * (rank + 1) // world - n * rank // world
            dtype = np.float16 if full.dtype == np.float32 else full.dtype
            targets[name] = np.empty(shape, dtype)
        plaid.load_into(path, targets, rank=rank, world_size=world, split=split, dtype="f16")
        for name, got in targets.items():
            parts[name].append(got)
    for name, full in tensors.items():
        dim = split[name]
        got = parts[name][0] if dim is None else np.concatenate(parts[name], axis=dim)
        # Floating-point tensors converted (round to nearest even, as numpy does); integers kept.
        want = full.astype(np.float16) if full.dtype == np.float32 else full
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    # Glob patterns and a callable choose the dimension too.
    out = {"b": np.empty((4, 5, 3), np.float32)}
    plaid.load_into(path, out, rank=1, world_size=2, split={"x*": 0, "b*": 2})
    assert np.array_equal(out["b"], tensors["b"][:, :, 3:])
    out = {"a": np.empty((4, 9), np.float32)}
    plaid.load_into(path, out, rank=1, world_size=2, split=lambda name, meta: 0)
    assert np.array_equal(out["a"], tensors["a"][3:])
    # A target of the whole tensor's shape does not fit a share.
    with pytest.raises(plaid.InvalidArgumentError, match="'a'"):
        plaid.load_into(path, {"a": np.empty((7, 9), np.float32)}, rank=0, world_size=2, split=0)
    # More ranks than indices: the first shares are empty, and read nothing.
    out = {"v": np.empty((0,), np.float32), "a": np.empty((0, 9), np.float32)}
    plaid.load_into(path, out, rank=0, world_size=20, split=0)
    out = {"a": np.empty((7, 0), np.float32)}
    plaid.load_into(path, out, rank=0, world_size=20, split=1)
    with pytest.raises(plaid.InvalidArgumentError, match="world_size"):
        plaid.load_into(path, {"a": np.empty((7, 9), np.float32)}, rank=0)


class Tiny(torch.nn.Module):
    def __init__(self, world=1):
        super().__init__()
        self.up = torch.nn.Linear(8, 12 // world, bias=False)    # split along rows (dim 0)
        self.down = torch.nn.Linear(12 // world, 8, bias=False)  # split along columns (dim 1)
        self.norm = torch.nn.LayerNorm(8)                        # whole on every rank


def test_tensor_deserializer_loads_each_rank_its_share_into_an_empty_module(tmp_path):
    torch.manual_seed(0)
    full = Tiny()
    path = tmp_path / "tiny.plaid"
    pt.save_file(full.state_dict(), path)
    world = 4
    split = {"up.*": 0, "down.*": 1}
    ups, downs = [], []
    for rank in range(world):
        with pt.no_init_or_tensor():
            shard = Tiny(world)
        with pt.TensorDeserializer(path, device="cpu", rank=rank, world_size=world,
                                   split=split) as d:
            assert d.load_into_module(shard) == 4
            assert tuple(d["up.weight"].shape) == (3, 8)
        ups.append(shard.up.weight.detach())
        downs.append(shard.down.weight.detach())
        assert torch.equal(shard.norm.weight, full.norm.weight)
    assert torch.equal(torch.cat(ups, 0), full.up.weight)
    assert torch.equal(torch.cat(downs, 1), full.down.weight)
    # Into a module that has storage, in bf16: converted by plaid on the way, in place.
    shard = Tiny(world).to(torch.bfloat16)
    before = shard.up.weight.data_ptr()
    with pt.TensorDeserializer(path, device="cpu", rank=2, world_size=world, split=split) as d:
        d.load_into_module(shard)
    assert shard.up.weight.data_ptr() == before
    assert torch.equal(shard.up.weight, full.up.weight[6:9].to(torch.bfloat16))
    assert torch.equal(shard.down.weight, full.down.weight[:, 6:9].to(torch.bfloat16))
    # float8 parameters: not a conversion plaid makes; loaded as stored, then cast by torch.
    if hasattr(torch, "float8_e4m3fn"):
        shard = Tiny(world).to(torch.float8_e4m3fn)
        with pt.TensorDeserializer(path, device="cpu", rank=1, world_size=world,
                                   split=split) as d:
            d.load_into_module(shard)
        assert torch.equal(shard.up.weight.view(torch.uint8),
                           full.up.weight[3:6].to(torch.float8_e4m3fn).view(torch.uint8))
    # More ranks than rows: the first ranks' shares are empty.
    with pt.no_init_or_tensor():
        empty = Tiny(world)
    empty.up = torch.nn.Linear(8, 0, bias=False, device="meta")
    empty.down = torch.nn.Linear(0, 8, bias=False, device="meta")
    with pt.TensorDeserializer(path, device="cpu", rank=0, world_size=13, split=split) as d:
        d.load_into_module(empty)
    assert tuple(empty.up.weight.shape) == (0, 8) and empty.up.weight.device.type == "cpu"
    assert torch.equal(empty.norm.weight, full.norm.weight)


def test_glob_filters_choose_tensors_everywhere(model, tmp_path):
    path, tensors = model
    got = pn.load_file(path, tensors="[ab]")
    assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], tensors["a"])
    got = pt.load_file(path, tensors=["v", "i*"])
    assert sorted(got) == ["ids", "v"]
    assert np.array_equal(got["v"].numpy(), tensors["v"])
    with pt.TensorDeserializer(path, device="cpu", filter_func="?") as d:
        assert sorted(d) == ["a", "b", "v"]
    with pytest.raises(plaid.InvalidArgumentError, match="'\\[x'"):
        pn.load_file(path, tensors="[x")
