"""Peer comparison: load the same synthetic checkpoint with safetensors, tensorizer
and plaid into fresh host memory, and print a markdown table of median times.

The checkpoint is GPT-shaped (token and position embeddings; per block two layer
norms, the fused qkv projection, the attention output projection and the two MLP
matrices, each with its bias; a final layer norm), float16, filled with deterministic
random bytes. The same arrays are written three times:

- ``model.safetensors`` with ``safetensors.numpy.save_file``;
- ``model.tensors`` with tensorizer's ``TensorSerializer.write_state_dict`` (torch
  tensors sharing the numpy memory);
- ``model.plaid`` through the C API of ``libplaid.so`` (ctypes).

Each loader then reads its file into memory it allocates itself during the call, as
an application would (the benchmark pre-faults nothing):

- safetensors: ``safetensors.numpy.load_file`` (every tensor copied out of the file);
- tensorizer: ``TensorDeserializer(path, device="cpu")``, eager (``lazy_load=False``,
  the default: the constructor reads every tensor before it returns), then ``close``;
  once with its default ``verify_hash=False`` and once with ``verify_hash=True``
  (a CRC-32 and a SHA-256 of every tensor, checked against the file's);
- plaid: ``plaid_load_file`` below: ``plaid_deserializer_load_host`` allocates one
  arena for all tensors (64-byte aligned, transparent huge pages; a second verified row turns them off) and loads
  into it; the arrays are numpy views of the right dtype and shape that keep the arena
  alive; with block verification (the default) and without. A third row loads into one
  ``np.empty`` arena allocated by the caller through the placement callback.

The files were just written, so the page cache holds them; one warm-up round reads
every file once more before timing. Each round shuffles the order of the loaders, so no
loader always runs first or right after another. The warm-up round also checks that
every loader returns every tensor with the generated shape and bytes; a mismatch
makes the program exit with status 1.

With ``--fresh-process`` every timed load runs in a new Python process (after the
in-process warm-up round that validates), so no loader gets memory that an earlier load
touched and freed, as in a server's cold start.

Run it through ``bench/run``, which installs the peers into ``bench/.venv`` and builds
the library. A peer that cannot be imported or fails is listed as "could not run"
with the reason.
"""

import argparse
import ctypes
import gc
import random
import importlib.metadata
import os
import platform
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------
# Minimal ctypes declarations of include/plaid.h.

PLAID_OK = 0
PLAID_DEST_HOST = 1
PLAID_DTYPE_F16 = 10

# PLAID_DTYPE_* -> numpy dtype, for the views of a loaded file. Types numpy lacks
# (bf16, float8, packed float4) are viewed as unsigned integers of the same width.
PLAID_NUMPY_DTYPES = {
    1: np.bool_,
    2: np.uint8,
    3: np.int8,
    4: np.int16,
    5: np.uint16,
    6: np.int32,
    7: np.uint32,
    8: np.int64,
    9: np.uint64,
    10: np.float16,
    11: np.uint16,
    12: np.float32,
    13: np.float64,
    15: np.complex64,
    16: np.complex128,
    17: np.uint8,
    18: np.uint8,
    19: np.uint8,
    20: np.uint8,
    21: np.uint8,
    22: np.uint8,
}
NUMPY_PLAID_DTYPES = {np.dtype(np.float16): PLAID_DTYPE_F16}

# Host destinations start at multiples of this many bytes inside the arena.
ARENA_ALIGNMENT = 64


# plaid._abi, the one ctypes declaration of plaid.h, loaded by path: the library benchmarked
# is a build, not an installed package.
ABI = types.SimpleNamespace(**runpy.run_path(
    str(Path(__file__).resolve().parents[1] / "bindings" / "python" / "plaid" / "_abi.py")))
PLAID_ABI_VERSION = ABI.ABI_VERSION
PLAID_PLACE_FN = ABI.PLACE_FN


class PlaidError(Exception):
    """A plaid call returned a status other than PLAID_OK."""


class Plaid:
    """The few entry points of libplaid.so this benchmark uses."""

    def __init__(self, path: Path):
        lib = ABI.bind(ctypes.CDLL(str(path)))
        for name, _, _ in ABI.SIGNATURES:
            setattr(self, name[len("plaid_"):], getattr(lib, name))
        if self.abi_version() != PLAID_ABI_VERSION:
            raise PlaidError(
                f"{path}: ABI version {self.abi_version()}, expected {PLAID_ABI_VERSION}"
            )
        self.release = self.version().decode()

    def check(self, status: int, what: str) -> None:
        if status == PLAID_OK:
            return
        size = self.last_error_message(None, 0) + 1
        buf = ctypes.create_string_buffer(size)
        self.last_error_message(buf, size)
        raise PlaidError(
            f"{what}: {self.status_name(status).decode()}: {buf.value.decode(errors='replace')}"
        )


def plaid_save_file(plaid: Plaid, tensors: Dict[str, np.ndarray], path: Path) -> None:
    """Write ``tensors`` (C-contiguous arrays) with the default write options."""
    s = ctypes.c_void_p()
    plaid.check(plaid.serializer_new(str(path).encode(), None, ctypes.byref(s)), "serializer_new")
    try:
        for name, array in tensors.items():
            assert array.flags.c_contiguous
            shape = (ctypes.c_uint64 * array.ndim)(*array.shape)
            plaid.check(
                plaid.serializer_add_tensor(
                    s, name.encode(), NUMPY_PLAID_DTYPES[array.dtype], shape, array.ndim,
                    array.ctypes.data, array.nbytes,
                ),
                f"add_tensor {name}",
            )
        # The data is borrowed: `tensors` keeps every array alive until finish returns.
        plaid.check(plaid.serializer_finish(s), "serializer_finish")
    finally:
        plaid.serializer_free(s)


def _open(plaid: Plaid, path: Path, verify: bool, huge_pages: bool = True) -> ctypes.c_void_p:
    opts = ctypes.c_void_p()
    plaid.check(plaid.read_options_new(ctypes.byref(opts)), "read_options_new")
    d = ctypes.c_void_p()
    try:
        plaid.check(plaid.read_options_set_verify(opts, 1 if verify else 0), "set_verify")
        plaid.check(plaid.read_options_set_huge_pages(opts, 1 if huge_pages else 0),
                    "set_huge_pages")
        plaid.check(
            plaid.deserializer_open(str(path).encode(), opts, ctypes.byref(d)),
            "deserializer_open",
        )
    finally:
        plaid.read_options_free(opts)
    return d


class _HostArena:
    """Owns a ``plaid_host_arena``; freed when the last numpy view of it goes away."""

    def __init__(self, plaid: Plaid, handle: ctypes.c_void_p):
        self.plaid, self.handle = plaid, handle

    def __del__(self):
        self.plaid.host_arena_free(self.handle)


class _View:
    """``__array_interface__`` over bytes of an arena, keeping the arena alive."""

    def __init__(self, owner: _HostArena, address: int, nbytes: int):
        self.owner = owner
        self.__array_interface__ = {
            "data": (address, False), "shape": (nbytes,), "typestr": "|u1", "version": 3,
        }


def plaid_load_file(plaid: Plaid, path: Path, verify: bool = True,
                    huge_pages: bool = True) -> Dict[str, np.ndarray]:
    """safetensors' ``load_file`` shape of API over ``plaid_deserializer_load_host``:
    plaid allocates one arena for every tensor (faulted in by its workers as they write,
    on transparent huge pages if asked) and the arrays are numpy views into it,
    which free it when the last one goes away."""
    d = _open(plaid, path, verify, huge_pages)
    try:
        handle = ctypes.c_void_p()
        plaid.check(plaid.deserializer_load_host(d, ABI.FILTER_FN(), None, ctypes.byref(handle)),
                    f"load_host {path}")
        owner = _HostArena(plaid, handle)
        out = OrderedDict()
        data, nbytes = ctypes.c_void_p(), ctypes.c_uint64()
        for i in range(plaid.deserializer_tensor_count(d)):
            info = plaid.deserializer_tensor(d, i).contents
            name = ctypes.string_at(info.name, info.name_len).decode()
            shape = tuple(info.shape[k] for k in range(info.ndim))
            plaid.check(plaid.host_arena_tensor(handle, i, ctypes.byref(data),
                                                ctypes.byref(nbytes)), "host_arena_tensor")
            raw = np.asarray(_View(owner, data.value or 0, nbytes.value))
            out[name] = raw.view(PLAID_NUMPY_DTYPES[info.dtype]).reshape(shape)
        return out
    finally:
        plaid.deserializer_free(d)


def plaid_load_numpy_arena(plaid: Plaid, path: Path, verify: bool = True) -> Dict[str, np.ndarray]:
    """Load every tensor of a plaid file into one numpy arena allocated here (``np.empty``,
    4 KiB pages as the allocator gives them) through the placement callback, and return
    numpy views into it, by name, in file order."""
    d = _open(plaid, path, verify)
    try:
        # Copy what the views need out of the lent infos, and lay the tensors out.
        tensors = []
        offsets = []
        total = 0
        for i in range(plaid.deserializer_tensor_count(d)):
            info = plaid.deserializer_tensor(d, i).contents
            name = ctypes.string_at(info.name, info.name_len).decode()
            shape = tuple(info.shape[k] for k in range(info.ndim))
            tensors.append((name, info.dtype, shape, info.nbytes))
            offsets.append(total)
            total += -(-info.nbytes // ARENA_ALIGNMENT) * ARENA_ALIGNMENT

        # numpy's allocator only promises 16-byte alignment: over-allocate and slice.
        raw = np.empty(total + ARENA_ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % ARENA_ALIGNMENT
        arena = raw[start:start + total]
        base = arena.ctypes.data

        @PLAID_PLACE_FN
        def place(_user_data, info_p, dest_p):
            try:
                info, dest = info_p.contents, dest_p.contents
                dest.kind = PLAID_DEST_HOST
                dest.address = base + offsets[info.index]
                dest.capacity = info.nbytes
                return 0
            except Exception:  # an exception must not cross the C boundary
                return 1

        plaid.check(plaid.deserializer_load(d, place, None), f"load {path}")
    finally:
        plaid.deserializer_free(d)

    out = OrderedDict()
    for (name, dtype, shape, nbytes), offset in zip(tensors, offsets):
        out[name] = arena[offset:offset + nbytes].view(PLAID_NUMPY_DTYPES[dtype]).reshape(shape)
    return out


# ---------------------------------------------------------------------------
# The synthetic checkpoints.

DTYPE = np.float16


def gpt_shapes(size_bytes: int) -> "OrderedDict[str, tuple]":
    """Tensor shapes of a GPT-style decoder of about ``size_bytes`` bytes of float16.

    The hidden size is the largest power of two (64 to 8192) that leaves room for at
    least four blocks; the vocabulary is GPT-2's padded 50304 rows unless that would
    take more than a quarter of the model; the block count makes up the rest.
    """
    item = np.dtype(DTYPE).itemsize
    hidden = 64
    while hidden < 8192 and 4 * 12 * (2 * hidden) ** 2 * item <= size_bytes:
        hidden *= 2
    context = 2048
    vocab = min(50304, max(64, size_bytes // (4 * hidden * item) // 64 * 64))
    embed_bytes = (vocab + context) * hidden * item
    block_bytes = (12 * hidden * hidden + 13 * hidden) * item
    blocks = max(1, round((size_bytes - embed_bytes) / block_bytes))

    h = hidden
    shapes = OrderedDict()
    shapes["transformer.wte.weight"] = (vocab, h)
    shapes["transformer.wpe.weight"] = (context, h)
    for b in range(blocks):
        p = f"transformer.h.{b}."
        shapes[p + "ln_1.weight"] = (h,)
        shapes[p + "ln_1.bias"] = (h,)
        shapes[p + "attn.c_attn.weight"] = (3 * h, h)
        shapes[p + "attn.c_attn.bias"] = (3 * h,)
        shapes[p + "attn.c_proj.weight"] = (h, h)
        shapes[p + "attn.c_proj.bias"] = (h,)
        shapes[p + "ln_2.weight"] = (h,)
        shapes[p + "ln_2.bias"] = (h,)
        shapes[p + "mlp.c_fc.weight"] = (4 * h, h)
        shapes[p + "mlp.c_fc.bias"] = (4 * h,)
        shapes[p + "mlp.c_proj.weight"] = (h, 4 * h)
        shapes[p + "mlp.c_proj.bias"] = (h,)
    shapes["transformer.ln_f.weight"] = (h,)
    shapes["transformer.ln_f.bias"] = (h,)
    return shapes


def small_shapes(count: int) -> "OrderedDict[str, tuple]":
    """``count`` tiny tensors of 32x32 float16 (2 KiB each)."""
    return OrderedDict((f"small.{i}.weight", (32, 32)) for i in range(count))


def generate(shapes: "OrderedDict[str, tuple]", seed: int) -> "OrderedDict[str, np.ndarray]":
    """Deterministic random bytes for every tensor (any 16-bit pattern, NaNs included:
    the loaders move bytes, and results are compared as bytes)."""
    rng = np.random.default_rng(seed)
    return OrderedDict(
        (name, rng.integers(0, 1 << 16, size=shape, dtype=np.uint16).view(DTYPE))
        for name, shape in shapes.items()
    )


# ---------------------------------------------------------------------------
# Loaders.


# The row every other row is compared with.
PLAID_REFERENCE = "plaid `plaid_load_file`, verified"


@dataclass
class Loader:
    name: str
    load: Optional[Callable[[], dict]] = None
    unavailable: Optional[str] = None  # why it could not run
    fatal: bool = False  # a failure stops the benchmark instead of becoming a row
    times: List[float] = field(default_factory=list)


def as_numpy(value) -> np.ndarray:
    """A loaded tensor (numpy array or torch tensor) as a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


def mismatches(loaded: dict, expected: "OrderedDict[str, np.ndarray]") -> List[str]:
    """Differences between a loader's result and the generated tensors (empty if none)."""
    problems = []
    if set(loaded) != set(expected):
        missing = sorted(set(expected) - set(loaded))[:3]
        extra = sorted(set(loaded) - set(expected))[:3]
        problems.append(f"names differ (missing {missing}, unexpected {extra})")
    for name, want in expected.items():
        if name not in loaded:
            continue
        got = as_numpy(loaded[name])
        if got.dtype != want.dtype or got.shape != want.shape:
            problems.append(f"{name}: {got.dtype}{list(got.shape)}, expected "
                            f"{want.dtype}{list(want.shape)}")
        elif not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
            problems.append(f"{name}: bytes differ")
    return problems


def describe(exc: BaseException, limit: int = 160) -> str:
    """One short line naming an exception."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def import_peers(install_failures: Dict[str, str]) -> dict:
    """Import the peers once (torch cannot be imported again after a failure). Maps
    "safetensors", "torch" and "tensorizer" to the module, or to the reason it is
    missing: the install failure bench/run recorded, else the import error."""
    peers = {}
    for key, module in (("safetensors", "safetensors.numpy"), ("torch", "torch"),
                        ("tensorizer", "tensorizer")):
        if key == "tensorizer" and isinstance(peers["torch"], str):
            peers[key] = f"needs torch: {peers['torch']}"
            continue
        try:
            peers[key] = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure means "could not run"
            peers[key] = install_failures.get(key) or describe(exc)
    return peers


def make_loaders(
    expected: "OrderedDict[str, np.ndarray]",
    directory: Path,
    plaid: Plaid,
    peers: dict,
    log: Callable[[str], None],
    write: bool = True,
) -> List[Loader]:
    """Write ``expected`` in every format (unless ``write`` is false: the files exist)
    and return one loader per row of the table, always in the same order."""
    loaders = []

    def timed_write(what: str, write_file: Callable[[], None], path: Path) -> None:
        if not write:
            return
        t0 = time.perf_counter()
        write_file()
        log(f"wrote {path.name}: {path.stat().st_size / 1e9:.3f} GB in "
            f"{time.perf_counter() - t0:.2f} s ({what})")

    # safetensors
    st_numpy = peers["safetensors"]
    if isinstance(st_numpy, str):
        loaders.append(Loader("safetensors", unavailable=st_numpy))
    else:
        st_path = directory / "model.safetensors"
        try:
            timed_write("safetensors.numpy.save_file",
                        lambda: st_numpy.save_file(expected, str(st_path)), st_path)
        except Exception as exc:  # noqa: BLE001 - any failure means "could not run"
            loaders.append(Loader("safetensors", unavailable=f"writing failed: {describe(exc)}"))
        else:
            loaders.append(Loader("safetensors `load_file`",
                                  load=lambda: st_numpy.load_file(str(st_path))))
            loaders.append(Loader("plaid `plaid_load_file` of the same safetensors file",
                                  load=lambda: plaid_load_file(plaid, st_path)))

    # tensorizer
    tensorizer = peers["tensorizer"]
    if isinstance(tensorizer, str):
        loaders.append(Loader("tensorizer", unavailable=tensorizer))
    else:
        torch = peers["torch"]
        tz_path = directory / "model.tensors"

        def write_tensorizer():
            serializer = tensorizer.TensorSerializer(str(tz_path))
            serializer.write_state_dict(
                OrderedDict((n, torch.from_numpy(a)) for n, a in expected.items()))
            serializer.close()

        def load_tensorizer(verify_hash: bool) -> dict:
            # lazy_load=False (the default): the constructor reads every tensor before
            # it returns; items() then hands out the cached tensors.
            with tensorizer.TensorDeserializer(str(tz_path), device="cpu",
                                               verify_hash=verify_hash) as deserializer:
                return dict(deserializer.items())

        try:
            timed_write("tensorizer TensorSerializer.write_state_dict", write_tensorizer,
                        tz_path)
        except Exception as exc:  # noqa: BLE001
            loaders.append(Loader("tensorizer", unavailable=f"writing failed: {describe(exc)}"))
        else:
            loaders.append(Loader("tensorizer `TensorDeserializer`, eager",
                                  load=lambda: load_tensorizer(False)))
            loaders.append(Loader("tensorizer `TensorDeserializer`, eager, verify_hash",
                                  load=lambda: load_tensorizer(True)))

    # plaid: the subject, so a failure here is fatal.
    pl_path = directory / "model.plaid"
    timed_write("plaid C API, default options: CRC-32C blocks, fsync",
                lambda: plaid_save_file(plaid, expected, pl_path), pl_path)
    loaders.append(Loader(PLAID_REFERENCE, fatal=True,
                          load=lambda: plaid_load_file(plaid, pl_path, verify=True)))
    loaders.append(Loader("plaid `plaid_load_file`, unverified", fatal=True,
                          load=lambda: plaid_load_file(plaid, pl_path, verify=False)))
    loaders.append(Loader("plaid `plaid_load_file`, verified, 4 KiB pages", fatal=True,
                          load=lambda: plaid_load_file(plaid, pl_path, True, False)))
    loaders.append(Loader("plaid into an `np.empty` arena via the placement callback, verified",
                          fatal=True,
                          load=lambda: plaid_load_numpy_arena(plaid, pl_path, verify=True)))
    return loaders


def time_in_child(name: str, directory: Path, args) -> float:
    """Time the loader called ``name`` once in a new Python process (``--child``): memory that no
    earlier load has touched, as in a server's cold start."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name,
               "--child-dir", str(directory), "--lib", str(args.lib)]
    if args.install_report:
        command += ["--install-report", args.install_report]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child process failed: {done.stderr.strip()[-300:]}")
    return float(done.stdout.strip().splitlines()[-1])


def child_main(args) -> int:
    """``--child NAME``: build the loaders over the files in ``--child-dir`` and print the
    seconds the loader called NAME takes once."""
    plaid = Plaid(args.lib)
    peers = import_peers(read_install_failures(args.install_report))
    loaders = make_loaders(OrderedDict(), Path(args.child_dir), plaid, peers,
                           lambda _: None, write=False)
    loader = next(l for l in loaders if l.name == args.child and l.load is not None)
    t0 = time.perf_counter()
    result = loader.load()
    elapsed = time.perf_counter() - t0
    del result
    print(f"{elapsed:.6f}")
    return 0


def run_rounds(loaders: List[Loader], expected, warmup: int, rounds: int,
               log: Callable[[str], None], fresh_process=None) -> List[str]:
    """Time every runnable loader in a new shuffled order each round (seeded, so runs
    repeat), so that no loader always follows the same one: what the previous loader
    freed (huge pages, fragmented memory) changes what the next one's allocation costs.
    The first round (always a warm-up) validates every result. Returns the validation
    failures."""
    failures = []
    active = [loader for loader in loaders if loader.load is not None]
    shuffle = random.Random(12345)
    for r in range(warmup + rounds):
        order = list(active)
        if r > 0:
            shuffle.shuffle(order)
        for loader in order:
            if loader.load is None:  # failed in an earlier round
                continue
            gc.collect()
            try:
                if fresh_process is not None and r >= warmup:
                    loader.times.append(fresh_process(loader.name))
                    continue
                t0 = time.perf_counter()
                result = loader.load()
                elapsed = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001
                if loader.fatal:
                    raise
                loader.unavailable = f"loading failed: {describe(exc)}"
                loader.load = None
                loader.times.clear()
                continue
            if r == 0:
                problems = mismatches(result, expected)
                if problems:
                    failures.append(f"{loader.name}: " + "; ".join(problems[:5]))
                log(f"validated {loader.name}: "
                    + ("OK" if not problems else f"{len(problems)} mismatches"))
            if r >= warmup:
                loader.times.append(elapsed)
            del result
        if r >= warmup:
            log(f"round {r - warmup + 1}/{rounds}: " + "; ".join(
                f"{l.name} {l.times[-1]:.3f} s" for l in order if l.times))
    return failures


def table(loaders: List[Loader], nbytes: int) -> str:
    ref = next((l for l in loaders if l.name == PLAID_REFERENCE and l.times), None)
    ref_median = statistics.median(ref.times) if ref else None
    rows = [
        "| loader | median s | min–max s | GB/s | plaid (verified) speedup |",
        "|---|---:|---:|---:|---:|",
    ]
    for loader in loaders:
        if not loader.times:
            reason = loader.unavailable.replace("|", "/")  # keep the table's columns
            rows.append(f"| {loader.name} | could not run: {reason} | | | |")
            continue
        median = statistics.median(loader.times)
        speedup = f"{median / ref_median:.2f}x" if ref_median else "—"
        spread = f"{min(loader.times):.4f}–{max(loader.times):.4f}"
        rows.append(f"| {loader.name} | {median:.4f} | {spread} | {nbytes / median / 1e9:.2f} "
                    f"| {speedup} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------
# Report.


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines() -> List[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- CPUs: {usable} usable of {os.cpu_count()} (nproc), {cpu}",
        f"- memory: {mem}",
        f"- kernel: {platform.system()} {platform.release()} {platform.machine()}",
        f"- load average at start: {load_average()}",
        f"- Python {platform.python_version()}",
    ]


def version_lines(plaid: Plaid) -> List[str]:
    lines = [f"- plaid {plaid.release} (ABI {plaid.abi_version()})"]
    for package in ("numpy", "safetensors", "torch", "tensorizer"):
        try:
            lines.append(f"- {package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"- {package}: not installed")
    return lines


def read_install_failures(path: Optional[str]) -> Dict[str, str]:
    """bench/run's record of failed installs: one ``package<TAB>reason`` per line."""
    failures = {}
    if path and os.path.exists(path):
        for line in Path(path).read_text().splitlines():
            if "\t" in line:
                package, reason = line.split("\t", 1)
                failures[package] = reason
    return failures


def benchmark(title: str, shapes, args, plaid: Plaid, directory: Path,
              peers: dict) -> bool:
    """Generate, write, time and print one table. Returns True if every check passed."""
    def log(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    expected = generate(shapes, args.seed)
    nbytes = sum(a.nbytes for a in expected.values())
    log(f"{title}: generated {len(expected)} tensors, {nbytes / 1e9:.3f} GB in "
        f"{time.perf_counter() - t0:.2f} s")
    loaders = make_loaders(expected, directory, plaid, peers, log)
    fresh = None
    if args.fresh_process:
        fresh = lambda name: time_in_child(name, directory, args)  # noqa: E731
    failures = run_rounds(loaders, expected, args.warmup, args.rounds, log, fresh)

    print(f"\n### {title}\n")
    print(f"{len(expected)} float16 tensors, {nbytes:,} bytes ({nbytes / 2**30:.2f} GiB); "
          f"page cache warm; median of {args.rounds} timed round(s) after {args.warmup} warm-up"
          f"{', each load timed in a new process' if args.fresh_process else ''}; "
          f"GB/s = 10^9 bytes/s; speedup = loader's median / plaid verified median.\n")
    print(table(loaders, nbytes))
    for failure in failures:
        print(f"\nWRONG BYTES: {failure}")
    sys.stdout.flush()
    if not args.dir:  # free the disk and the page cache before the next checkpoint
        shutil.rmtree(directory, ignore_errors=True)
    return not failures


def default_lib() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO_ROOT / "target") / "release" / "libplaid.so"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0,
                        help="size of the GPT-style checkpoint in GiB (default 1)")
    parser.add_argument("--small", type=int, default=0, metavar="N",
                        help="also time a checkpoint of N tensors of 2 KiB (default: skip)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="warm-up rounds, at least 1; the first validates (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random bytes")
    parser.add_argument("--dir", help="write the files here and keep them, e.g. bench/data "
                                      "(ignored by git; default: a temporary directory, "
                                      "removed at the end)")
    parser.add_argument("--lib", type=Path, default=default_lib(),
                        help="libplaid.so to load (default: target/release/libplaid.so)")
    parser.add_argument("--fresh-process", action="store_true",
                        help="time every load in a new Python process (memory no earlier "
                             "load touched, as in a cold start) instead of in this one")
    parser.add_argument("--install-report", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child_main(args)
    if args.warmup < 1 or args.rounds < 1:
        parser.error("--warmup and --rounds must be at least 1")
    if args.size_gib <= 0:
        parser.error("--size-gib must be positive")

    try:
        plaid = Plaid(args.lib)
    except (OSError, PlaidError) as exc:
        print(f"cannot use {args.lib}: {exc}", file=sys.stderr)
        return 2
    peers = import_peers(read_install_failures(args.install_report))

    print("## plaid vs peers: loading a checkpoint into fresh host memory\n")
    print("\n".join(machine_lines() + version_lines(plaid)))
    sys.stdout.flush()

    started = time.perf_counter()
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="plaid-peers-"))
    ok = True
    try:
        ok &= benchmark(f"GPT-style checkpoint, {args.size_gib:g} GiB",
                        gpt_shapes(int(args.size_gib * 2**30)), args, plaid,
                        directory / "gpt", peers)
        if args.small > 0:
            ok &= benchmark(f"{args.small:,} tiny tensors", small_shapes(args.small), args,
                            plaid, directory / "small", peers)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(f"\nPeak RSS of the benchmark process: {peak / 2**30:.2f} GiB "
          f"(the generated tensors stay in memory throughout). "
          f"Wall time: {time.perf_counter() - started:.1f} s. "
          f"Load average at the end: {load_average()}.")
    if not ok:
        print("\nFAILED: a loader returned bytes that differ from the generated ones.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
