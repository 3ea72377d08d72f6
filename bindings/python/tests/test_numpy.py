"""The Python binding with numpy (runs in CI): round trips of every dtype numpy holds, 0-d
and empty arrays, metadata, safe_open, load_into, the tensorizer fixtures, and errors."""

import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import plaid
import plaid.numpy as pn

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "tensorizer"
DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
          np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128]


def sample(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    raw = rng.integers(0, 256, size=n * np.dtype(dtype).itemsize, dtype=np.uint8)
    if dtype == np.bool_:
        return (raw[:n] & 1).astype(np.bool_).reshape(shape)
    return raw.view(dtype).reshape(shape)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_library_version_and_abi():
    assert plaid.__version__
    assert plaid.ABI_VERSION == 2


def test_every_numpy_dtype_round_trips(tmp_path):
    tensors = {f"t.{np.dtype(d).name}": sample(d, (3, 5), k) for k, d in enumerate(DTYPES)}
    tensors["scalar"] = np.array(2.5, dtype=np.float64)
    tensors["empty"] = np.zeros((0, 7), dtype=np.float32)
    tensors["fortran"] = np.asfortranarray(sample(np.int32, (4, 6), 99))
    tensors["strided"] = sample(np.float32, (8, 8), 98)[::2, 1::3]
    tensors["big_endian"] = sample(np.float32, (5,), 97).astype(">f4")
    path = tmp_path / "m.plaid"
    pn.save_file(tensors, path, metadata={"format": "np", "note": "é ✓"})
    loaded = pn.load_file(path)
    assert list(loaded) == list(tensors)
    for name, array in tensors.items():
        want = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")) \
            if array.dtype.byteorder == ">" else array
        assert np.array_equal(loaded[name], want, equal_nan=False) or \
            loaded[name].tobytes() == np.ascontiguousarray(want).tobytes(), name
        assert loaded[name].shape == array.shape, name
    assert loaded["scalar"].shape == () and loaded["scalar"] == 2.5
    with plaid.safe_open(path, framework="np") as f:
        assert f.keys() == sorted(tensors)  # safetensors: sorted
        assert f.offset_keys() == list(tensors)
        assert f.metadata() == {"format": "np", "note": "é ✓"}
        assert same(f.get_tensor("t.int32"), tensors["t.int32"])


def test_arrays_outlive_the_file_and_each_other(tmp_path):
    path = tmp_path / "m.plaid"
    a = sample(np.float32, (1000,), 1)
    pn.save_file({"a": a, "b": a[:10].copy()}, path)
    loaded = pn.load_file(path)
    keep = loaded["a"]
    del loaded
    gc.collect()
    assert same(keep, a)  # the arena stays alive as long as one array of it does
    keep[0] = 7  # and it is writable memory of the caller's
    assert keep[0] == 7


def test_load_into_fills_arrays_you_allocated(tmp_path):
    path = tmp_path / "m.plaid"
    tensors = {"w": sample(np.float32, (64, 32), 3), "b": sample(np.int64, (32,), 4)}
    pn.save_file(tensors, path)
    targets = {"w": np.empty((64, 32), np.float32), "b": np.full(32, -1, np.int64)}
    assert plaid.load_into(path, targets) is targets
    assert same(targets["w"], tensors["w"]) and same(targets["b"], tensors["b"])
    with pytest.raises(plaid.InvalidArgumentError, match="'w'.*f32 \\[64, 32\\]"):
        plaid.load_into(path, {"w": np.empty((32, 64), np.float32)})
    with pytest.raises(plaid.InvalidArgumentError, match="'w'"):
        plaid.load_into(path, {"w": np.empty((64, 32), np.float64)})
    with pytest.raises(plaid.InvalidArgumentError, match="contiguous"):
        plaid.load_into(path, {"w": np.empty((32, 64), np.float32).T})
    with pytest.raises(plaid.NotFoundError, match="'nope'"):
        plaid.load_into(path, {"nope": np.empty(1)})


def test_errors_carry_status_and_message(tmp_path):
    with pytest.raises(plaid.PlaidIOError) as missing:
        pn.load_file(tmp_path / "missing.plaid")
    assert missing.value.status == 2 and "missing.plaid" in missing.value.message
    assert isinstance(missing.value, OSError)

    path = tmp_path / "m.plaid"
    pn.save_file({"w": sample(np.uint8, (100_000,), 5)}, path)
    raw = bytearray(path.read_bytes())
    raw[-50_000] ^= 1
    damaged = tmp_path / "damaged.plaid"
    damaged.write_bytes(raw)
    with pytest.raises(plaid.ChecksumError, match="'w'"):
        pn.load_file(damaged)
    (tmp_path / "junk.plaid").write_bytes(b"not a model file at all")
    with pytest.raises(plaid.FormatError):
        pn.load_file(tmp_path / "junk.plaid")
    with pytest.raises(plaid.UnsupportedError, match="bf16"):
        pn.load_file(FIXTURES / "dtypes_opaque_v2.tensors")
    with pytest.raises(TypeError):
        pn.save_file({"x": [1, 2, 3]}, tmp_path / "x.plaid")
    assert not (tmp_path / "x.plaid").exists()


def test_an_exception_in_a_callback_stops_the_load_and_is_reraised(tmp_path):
    path = tmp_path / "m.plaid"
    pn.save_file({f"t{i}": np.full(10, i, np.int32) for i in range(5)}, path)

    class Boom(Exception):
        pass

    def wanted(meta):
        if meta.name == "t3":
            raise Boom("from the filter")
        return True

    with plaid.Reader(path) as reader:
        with pytest.raises(Boom, match="from the filter"):
            reader.load_host(wanted)
        # The handle still works afterwards.
        arena = reader.load_host()
        assert np.frombuffer(arena.buffer(4), dtype=np.int32)[0] == 4


def test_handles_close_twice_and_refuse_use_after_close(tmp_path):
    path = tmp_path / "m.plaid"
    pn.save_file({"a": np.arange(3)}, path)
    f = plaid.safe_open(path)
    f.close()
    f.close()
    with pytest.raises(plaid.PlaidError, match="closed"):
        f.get_tensor("a")
    reader = plaid.Reader(path)
    reader.close()
    reader.close()
    with pytest.raises(plaid.PlaidError, match="closed"):
        reader.metadata()


def fixture_names():
    assert FIXTURES.is_dir(), f"the tensorizer fixtures are missing: {FIXTURES}"
    return sorted(p.stem for p in FIXTURES.glob("*.tensors"))


@pytest.mark.parametrize("fixture", fixture_names())
def test_tensorizer_fixtures_through_safe_open(fixture):
    """Every fixture numpy can hold loads with the bytes its .json records; the others
    fail the way the .json says a correct reader fails."""
    truth = json.loads((FIXTURES / f"{fixture}.json").read_text())
    path = FIXTURES / f"{fixture}.tensors"
    expect = truth.get("expect", {}).get("correct_reader", "")
    bad = truth.get("expect", {}).get("corrupted_tensor") or \
        (truth.get("expected_hash_mismatch") or [None])[0]
    if truth.get("encryption") or "Poly1305" in expect:
        first = truth["tensors"][0]["name"]
        with plaid.safe_open(path) as f:  # opens without a key: the index is in the clear
            with pytest.raises(plaid.DecryptError, match=f"'{first}'.*no key"):
                f.get_tensor(first)
        key = bytes.fromhex(truth["encryption"]["key_hex"])
        with plaid.safe_open(path, key=key) as f:
            for t in truth["tensors"]:
                if "Poly1305" in expect and t["name"] == bad:
                    with pytest.raises(plaid.DecryptError, match="authentication"):
                        f.get_tensor(t["name"])
                    continue
                got = f.get_tensor(t["name"])
                assert hashlib.sha256(got.tobytes()).hexdigest() == t["sha256"], t["name"]
        return
    if expect.startswith("error"):
        with pytest.raises(plaid.FormatError):
            plaid.safe_open(path)
        return
    if "stored_sha256" in fixture:
        # Only a stored SHA-256 is damaged: the data (and its CRC-32) are intact, so a
        # default read (CRC-32s) loads it; checking the SHA-256s finds the damage.
        with plaid.Reader(str(path), verify_sha256=True) as reader:
            with pytest.raises(plaid.ChecksumError, match=f"'{bad}'"):
                reader.verify()
    with plaid.safe_open(path) as f:
        for t in truth["tensors"]:
            name = t["name"] if not t["name"].startswith("\x1e") else \
                ".".join(str(c) for c in t["path"])
            if t["torch_dtype"].split(".")[1] in ("bfloat16", "complex32") or \
                    "float8" in t["torch_dtype"] or "float4" in t["torch_dtype"]:
                with pytest.raises(plaid.UnsupportedError):
                    f.get_tensor(name)
                continue
            if name == bad and "stored_sha256" not in fixture:
                with pytest.raises(plaid.ChecksumError, match=repr(name).strip('"')):
                    f.get_tensor(name)
                continue
            array = f.get_tensor(name)
            assert list(array.shape) == t["shape"], name
            assert hashlib.sha256(array.tobytes()).hexdigest() == t["sha256"], name


def test_the_gil_is_released_during_a_load(tmp_path):
    """While one thread is inside the library loading a file, another runs Python. With a
    long switch interval a thread gives the GIL up only where it releases it itself, so the
    other thread can run during the load only if the library call released it: a single
    step of it inside the load's window shows that. (The file is large enough that the
    load spans many of the other thread's half-millisecond steps on a fast machine; how
    many land inside depends on the scheduler, so only one is required.)"""
    import sys
    import threading
    import time

    path = tmp_path / "big.plaid"
    pn.save_file({"w": np.ones(256 << 20, dtype=np.uint8)}, path)
    inside = []
    ticks = []
    done = threading.Event()

    def load():
        with plaid.Reader(path) as reader:
            start = time.perf_counter()
            reader.load_host()  # one C call: read, verify, copy 256 MiB
            inside.append((start, time.perf_counter()))
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        worker = threading.Thread(target=load)
        worker.start()
        while not done.wait(0.0005):
            ticks.append(time.perf_counter())
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    start, end = inside[0]
    during = [t for t in ticks if start < t < end]
    assert during, f"no Python step ran during the {end - start:.3f} s load"


# Sources that are not paths: file objects and bytes, read through plaid's callbacks.

def _kinds(path):
    """The same file as every kind of object plaid reads besides a path."""
    raw = Path(path).read_bytes()
    import io

    class Unbuffered(io.RawIOBase):  # seekable, readinto only, no descriptor
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return True

        def seek(self, offset, whence=0):
            return self._data.seek(offset, whence)

        def tell(self):
            return self._data.tell()

        def readinto(self, b):
            return self._data.readinto(b)

    return {"bytes": raw, "bytearray": bytearray(raw), "memoryview": memoryview(raw),
            "numpy": np.frombuffer(raw, dtype=np.uint8), "BytesIO": io.BytesIO(raw),
            "raw": Unbuffered(raw), "file": open(path, "rb"),
            "unbuffered file": open(path, "rb", buffering=0)}


@pytest.mark.parametrize("fixture", ["module_tiny_lm_f32", "many_small_tensors",
                                     "shapes_and_layouts"])
def test_file_objects_and_bytes_load_every_format(tmp_path, fixture):
    from plaid import _source
    tensorizer = FIXTURES / f"{fixture}.tensors"
    expected = pn.load_file(tensorizer)
    plaid_file = tmp_path / "m.plaid"
    pn.save_file(expected, plaid_file, metadata={"k": "v"})
    for path in (tensorizer, plaid_file):
        for kind, obj in _kinds(path).items():
            got = pn.load_file(obj)
            assert list(got) == list(expected), kind
            assert all(same(got[k], expected[k]) for k in expected), (path.name, kind)
            if hasattr(obj, "close"):
                obj.close()
    gc.collect()
    assert not _source._live  # every source was released
    with plaid.safe_open(plaid_file.read_bytes()) as f:
        assert f.metadata() == {"k": "v"}
        name = f.keys()[0]
        assert same(f.get_tensor(name), expected[name])
    targets = {k: np.zeros_like(v) for k, v in expected.items()}
    with open(plaid_file, "rb") as f:
        plaid.load_into(f, targets)
    assert all(same(targets[k], expected[k]) for k in expected)


def test_streams_that_cannot_be_read_are_refused_clearly(tmp_path):
    import io
    path = tmp_path / "m.plaid"
    pn.save_file({"w": np.arange(300_000, dtype=np.float32)}, path)
    raw = path.read_bytes()

    class Pipe(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False

    with pytest.raises(plaid.InvalidArgumentError, match="not seekable"):
        pn.load_file(Pipe())
    with pytest.raises(plaid.InvalidArgumentError, match="binary mode"):
        pn.load_file(io.StringIO("text"))
    with pytest.raises(TypeError, match="cannot read from a int"):
        pn.load_file(42)

    class Failing(io.BytesIO):
        def readinto(self, b):
            if self.tell() >= 4096:
                raise RuntimeError("the disk went away")
            return super().readinto(b)

    with pytest.raises(plaid.PlaidIOError) as caught:
        pn.load_file(Failing(raw))
    assert "tensor 'w'" in str(caught.value) and "offset" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)
    # Cut short: the file is truncated.
    with pytest.raises(plaid.FormatError, match="truncated|shorter|end"):
        pn.load_file(raw[:len(raw) - 1000])


def test_reader_load_takes_slices_and_dtypes_in_the_destination(tmp_path):
    # plaid_destination's slice and dtype fields through the binding's ctypes struct (ABI 2).
    path = tmp_path / "m.plaid"
    w = np.random.default_rng(21).standard_normal((12, 10)).astype(np.float32)
    pn.save_file({"w": w}, path)
    with plaid.Reader(path) as r:
        index = r.find("w").index
        rows = np.empty((4, 10), np.float32)
        cols = np.empty((12, 3), np.float16)
        r.load({index: (plaid._lib.DEST_HOST, 0, rows.ctypes.data, rows.nbytes, 0, 2, 6, 0)})
        assert same(rows, w[2:6])
        f16 = 10  # PLAID_DTYPE_F16
        r.load({index: (plaid._lib.DEST_HOST, 0, cols.ctypes.data, cols.nbytes, 1, 7, 10, f16)})
        assert same(cols, w[:, 7:10].astype(np.float16))
        with pytest.raises(plaid.InvalidArgumentError, match="'w'"):
            r.load({index: (plaid._lib.DEST_HOST, 0, rows.ctypes.data, rows.nbytes, 0, 5, 2, 0)})


def test_encrypted_files_round_trip_through_save_file_and_load_file(tmp_path):
    """save_file(key=/passphrase=) encrypts (plaid's format, or tensorizer's for .tensors);
    names, shapes and metadata read without the key, the data only with it."""
    rng = np.random.default_rng(5)
    tensors = {"w": rng.standard_normal((300, 40), dtype=np.float32),
               "ids": np.arange(9, dtype=np.int64), "s": np.array(1.5, dtype=np.float64)}
    key = bytes(range(32))
    for name, kwargs, read in (("k.plaid", {"key": key}, {"key": key}),
                               ("g.plaid", {"key": key, "cipher": "aes-256-gcm"}, {"key": key}),
                               ("p.plaid", {"passphrase": "pw"}, {"passphrase": b"pw"}),
                               ("k.tensors", {"key": key}, {"key": key})):
        path = tmp_path / name
        pn.save_file(tensors, path, metadata={"m": "1"} if name.endswith(".plaid") else None,
                  **kwargs)
        assert tensors["w"].tobytes()[:64] not in path.read_bytes()
        with plaid.safe_open(path, framework="np") as f:
            assert sorted(f.keys()) == sorted(tensors)
            with pytest.raises(plaid.DecryptError, match="no key"):
                f.get_tensor("w")
        loaded = pn.load_file(path, **read)
        for k, v in tensors.items():
            np.testing.assert_array_equal(loaded[k], v)
        wrong = {"key": bytes(32)} if "key" in read else {"passphrase": "nope"}
        with pytest.raises(plaid.DecryptError):
            pn.load_file(path, **wrong)
    with pytest.raises(plaid.InvalidArgumentError):
        pn.save_file(tensors, tmp_path / "short.plaid", key=b"short")
    with pytest.raises(plaid.InvalidArgumentError):
        pn.save_file(tensors, tmp_path / "short.plaid", key=key, cipher="rot13")
    with pytest.raises(plaid.InvalidArgumentError):
        pn.save_file(tensors, tmp_path / "x.safetensors", key=key)
    assert not (tmp_path / "short.plaid").exists()


def test_a_key_refuses_a_file_in_the_clear_unless_plaintext_is_allowed(tmp_path):
    """A key or passphrase means the file must be encrypted: a file in the clear (or one
    whose encryption was stripped) is DecryptError through every loading function, unless
    ``allow_plaintext=True``; tensors with no stored bytes are exempt."""
    tensors = {"w": np.arange(1000, dtype=np.float32), "e": np.zeros((0, 4), np.float32)}
    path = tmp_path / "plain.plaid"
    pn.save_file(tensors, path)
    key = bytes(range(32))

    def safe_open_get(**kwargs):
        with plaid.safe_open(path, **kwargs) as f:
            return f.get_tensor("w")

    loaders = (lambda **kw: pn.load_file(path, **kw),
               lambda **kw: plaid.load_into(path, {"w": np.empty(1000, np.float32)}, **kw),
               safe_open_get,
               lambda **kw: pn.load_file(path.read_bytes(), **kw))
    for load in loaders:
        for secret in ({"key": key}, {"passphrase": "pw"}):
            with pytest.raises(plaid.DecryptError, match="stored in the clear"):
                load(**secret)
            load(**secret, allow_plaintext=True)
    got = pn.load_file(path, key=key, allow_plaintext=True)
    np.testing.assert_array_equal(got["w"], tensors["w"])
    assert pn.load_file(path, key=key, tensors="e")["e"].shape == (0, 4)


def test_passphrase_limits_bound_what_a_files_key_derivation_may_cost(tmp_path):
    from plaid import _core
    path = tmp_path / "p.plaid"
    w = np.arange(5000, dtype=np.float32)
    items = [{"name": "w", "dtype_id": pn.dtype_id(w.dtype), "shape": w.shape,
              "address": w.ctypes.data, "nbytes": w.nbytes, "keep": w}]
    _core.save(path, items, encryption=_core.Encryption(passphrase="pw", passes=2,
                                                        memory=64 << 10))
    np.testing.assert_array_equal(pn.load_file(path, passphrase="pw")["w"], w)
    np.testing.assert_array_equal(
        pn.load_file(path, passphrase="pw", passphrase_limits=(64 << 10, 2))["w"], w)
    for limits in ((32 << 10, 16), (1 << 30, 1)):
        with pytest.raises(plaid.DecryptError, match="past this reader's limits"):
            pn.load_file(path, passphrase="pw", passphrase_limits=limits)
    for bad in ((0, 1), (1 << 20, 65), (1, 2, 3), "big", (-1, 1)):
        with pytest.raises(plaid.InvalidArgumentError):
            pn.load_file(path, passphrase="pw", passphrase_limits=bad)
    # A writer refuses limits readers would refuse, unless told.
    with pytest.raises(plaid.InvalidArgumentError, match="above what readers take"):
        _core.save(tmp_path / "strong.plaid", items,
                   encryption=_core.Encryption(passphrase="pw", passes=17, memory=64 << 10))
    _core.save(tmp_path / "strong.plaid", items,
               encryption=_core.Encryption(passphrase="pw", passes=17, memory=64 << 10,
                                           above_read_limits=True))
    with pytest.raises(plaid.DecryptError, match="limits"):
        pn.load_file(tmp_path / "strong.plaid", passphrase="pw")
    np.testing.assert_array_equal(
        pn.load_file(tmp_path / "strong.plaid", passphrase="pw",
                     passphrase_limits=(1 << 30, 17))["w"], w)


@pytest.mark.parametrize("answer", [3.5, "12", None.__class__, -5, 10 ** 30, 1 << 64])
def test_read_callbacks_whose_count_is_not_a_valid_integer_fail_the_load_once(tmp_path, capfd,
                                                                              answer):
    """A ``readinto`` returning a float, a str, a type, a negative count or one past the
    buffer: the load fails with PlaidIOError naming the offset, the exception chained, and
    nothing printed (an exception escaping a ctypes callback is printed and its return
    value undefined)."""
    import io
    path = tmp_path / "m.plaid"
    pn.save_file({"w": np.arange(300_000, dtype=np.float32)}, path)
    raw = path.read_bytes()
    calls = []

    class Lying(io.BytesIO):
        def fileno(self):
            raise io.UnsupportedOperation("no descriptor")

        def readinto(self, b):
            n = super().readinto(b)
            if self.tell() > 8192:
                calls.append(n)
                return answer
            return n

    with pytest.raises(plaid.PlaidIOError) as caught:
        pn.load_file(Lying(raw))
    assert "offset" in str(caught.value)
    assert isinstance(caught.value.__cause__, (TypeError, ValueError)), caught.value.__cause__
    out, err = capfd.readouterr()
    assert "Exception ignored" not in err and "Traceback" not in err, err
    assert len(calls) <= 64, "the load stopped at the first bad answer"
