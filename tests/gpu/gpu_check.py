"""plaid on a real NVIDIA GPU, through its C API (ctypes) and PyTorch: the device tests,
then one benchmark table. Run by tests/gpu/check.sh with the binaries built beforehand.

Tests (every byte compared on the device with torch.equal):
  - a plaid file loaded into torch.empty(device="cuda") tensors through the placement
    callback (PLAID_DEST_CUDA), with 1 and N workers, small and large chunks, and on the
    caller's stream (plaid_read_options_set_cuda_stream);
  - plaid_deserializer_load_cuda (plaid allocates), read back with cuMemcpyDtoH;
  - plaid_serializer_add_tensor_cuda: a model serialized straight from GPU memory;
  - a damaged file gives PLAID_ERR_CHECKSUM, a wrong device PLAID_ERR_CUDA.

Benchmark (page-cached files, medians): the pinned host-to-device ceiling, plaid into
cudaMalloc'ed (torch) destinations with 1 and N workers, plaid allocating, safetensors'
load_file(device="cuda") and torch.load(map_location="cuda") on the same weights, and plaid
serializing from GPU memory.
"""

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
LIB = Path(os.environ.get("PLAID_LIB") or ROOT / "target" / "release" / "libplaid.so")

PLAID_OK, PLAID_ERR_CHECKSUM, PLAID_ERR_CUDA = 0, 5, 10
PLAID_DEST_CUDA = 2
DTYPE_IDS = {torch.bfloat16: 11, torch.float32: 12, torch.float16: 10, torch.int64: 8,
             torch.uint8: 2}


class Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("name_len", ctypes.c_size_t),
                ("dtype", ctypes.c_uint32), ("ndim", ctypes.c_uint32),
                ("shape", ctypes.POINTER(ctypes.c_uint64)), ("nbytes", ctypes.c_uint64),
                ("index", ctypes.c_size_t), ("role", ctypes.c_uint32),
                ("module_index", ctypes.c_uint32), ("path", ctypes.c_char_p),
                ("path_len", ctypes.c_size_t), ("zero_fill", ctypes.c_uint32), ("offset", ctypes.c_uint64)]


class Dest(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("device", ctypes.c_int32),
                ("address", ctypes.c_uint64), ("capacity", ctypes.c_uint64)]


PLACE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(Info),
                         ctypes.POINTER(Dest))
vp = ctypes.c_void_p
lib = ctypes.CDLL(str(LIB))
for name, args, res in [
    ("plaid_read_options_new", [ctypes.POINTER(vp)], ctypes.c_int),
    ("plaid_read_options_free", [vp], None),
    ("plaid_read_options_set_threads", [vp, ctypes.c_uint32], ctypes.c_int),
    ("plaid_read_options_set_chunk_size", [vp, ctypes.c_uint64], ctypes.c_int),
    ("plaid_read_options_set_cuda_stream", [vp, vp], ctypes.c_int),
    ("plaid_deserializer_open", [ctypes.c_char_p, vp, ctypes.POINTER(vp)], ctypes.c_int),
    ("plaid_deserializer_tensor_count", [vp], ctypes.c_size_t),
    ("plaid_deserializer_tensor", [vp, ctypes.c_size_t], ctypes.POINTER(Info)),
    ("plaid_deserializer_load", [vp, PLACE, vp], ctypes.c_int),
    ("plaid_deserializer_load_cuda", [vp, ctypes.c_int32, vp, vp, ctypes.POINTER(vp)],
     ctypes.c_int),
    ("plaid_deserializer_free", [vp], None),
    ("plaid_cuda_arena_tensor", [vp, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint64),
                                 ctypes.POINTER(ctypes.c_uint64)], ctypes.c_int),
    ("plaid_cuda_arena_free", [vp], None),
    ("plaid_write_options_new", [ctypes.POINTER(vp)], ctypes.c_int),
    ("plaid_write_options_set_sync", [vp, ctypes.c_int], ctypes.c_int),
    ("plaid_write_options_free", [vp], None),
    ("plaid_serializer_new", [ctypes.c_char_p, vp, ctypes.POINTER(vp)], ctypes.c_int),
    ("plaid_serializer_add_tensor", [vp, ctypes.c_char_p, ctypes.c_uint32,
                                     ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, vp,
                                     ctypes.c_uint64], ctypes.c_int),
    ("plaid_serializer_add_tensor_cuda", [vp, ctypes.c_char_p, ctypes.c_uint32,
                                          ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t,
                                          ctypes.c_int32, ctypes.c_uint64, ctypes.c_uint64],
     ctypes.c_int),
    ("plaid_serializer_finish", [vp], ctypes.c_int),
    ("plaid_serializer_free", [vp], None),
    ("plaid_last_error_message", [ctypes.c_char_p, ctypes.c_size_t], ctypes.c_size_t),
]:
    f = getattr(lib, name)
    f.argtypes, f.restype = args, res


def message():
    buf = ctypes.create_string_buffer(4096)
    lib.plaid_last_error_message(buf, len(buf))
    return buf.value.decode()


def ok(status, what):
    if status != PLAID_OK:
        raise RuntimeError(f"{what}: status {status}: {message()}")


def write_plaid(path, tensors, from_gpu=False):
    """Write ``tensors`` (name -> tensor) with plaid's serializer; CUDA tensors through
    plaid_serializer_add_tensor_cuda when ``from_gpu``."""
    wo, s = vp(), vp()
    ok(lib.plaid_write_options_new(ctypes.byref(wo)), "write options")
    ok(lib.plaid_write_options_set_sync(wo, 0), "sync off")
    ok(lib.plaid_serializer_new(str(path).encode(), wo, ctypes.byref(s)), "serializer")
    lib.plaid_write_options_free(wo)
    keep = []
    for name, t in tensors.items():
        shape = (ctypes.c_uint64 * max(t.dim(), 1))(*t.shape)
        nbytes = t.numel() * t.element_size()
        if from_gpu:
            status = lib.plaid_serializer_add_tensor_cuda(
                s, name.encode(), DTYPE_IDS[t.dtype], shape, t.dim(), t.device.index or 0,
                t.data_ptr(), nbytes)
        else:
            t = t.contiguous()
            keep.append(t)
            status = lib.plaid_serializer_add_tensor(
                s, name.encode(), DTYPE_IDS[t.dtype], shape, t.dim(), t.data_ptr(), nbytes)
        ok(status, f"adding {name}")
    ok(lib.plaid_serializer_finish(s), "finish")
    lib.plaid_serializer_free(s)


def open_plaid(path, threads=0, chunk=0, stream=None):
    o, d = vp(), vp()
    ok(lib.plaid_read_options_new(ctypes.byref(o)), "read options")
    if threads:
        ok(lib.plaid_read_options_set_threads(o, threads), "threads")
    if chunk:
        ok(lib.plaid_read_options_set_chunk_size(o, chunk), "chunk")
    if stream is not None:
        ok(lib.plaid_read_options_set_cuda_stream(o, stream.cuda_stream), "stream")
    ok(lib.plaid_deserializer_open(str(path).encode(), o, ctypes.byref(d)), f"open {path}")
    lib.plaid_read_options_free(o)
    return d


def load_into(d, destinations, device=0):
    """Load every tensor of ``d`` into ``destinations`` (index -> CUDA tensor)."""
    @PLACE
    def place(_user, info_p, dest_p):
        t = destinations[info_p.contents.index]
        dest_p.contents.kind = PLAID_DEST_CUDA
        dest_p.contents.device = device
        dest_p.contents.address = t.data_ptr()
        dest_p.contents.capacity = t.numel() * t.element_size()
        return 0
    return lib.plaid_deserializer_load(d, place, None)


def empty_like_file(d, device="cuda:0"):
    out = {}
    for i in range(lib.plaid_deserializer_tensor_count(d)):
        info = lib.plaid_deserializer_tensor(d, i).contents
        out[i] = torch.empty(info.nbytes, dtype=torch.uint8, device=device)
    return out


def as_bytes(t):
    return t.contiguous().view(-1).view(torch.uint8)


# ---- tests ---------------------------------------------------------------------------------

def run_tests(tmp):
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    g = torch.Generator(device="cuda").manual_seed(1)
    model = {
        "embed": torch.randn(4096, 1024, device="cuda", generator=g).to(torch.bfloat16),
        "big": torch.randn(9_000_001, device="cuda", generator=g),
        "ids": torch.randint(-9, 9, (333, 7), device="cuda", generator=g),
        "scalar": torch.tensor(2.5, device="cuda"),
        "empty": torch.empty(0, 5, device="cuda", dtype=torch.float16),
    }
    for k in range(200):
        model[f"small.{k}"] = torch.randn(1 + 37 * k, device="cuda", generator=g).half()
    names = list(model)
    path = tmp / "model.plaid"
    write_plaid(path, {n: t.cpu() for n, t in model.items()})
    for threads, chunk, stream in [(1, 0, None), (0, 0, None), (0, 64 << 10, None),
                                   (0, 0, torch.cuda.Stream())]:
        d = open_plaid(path, threads, chunk, stream)
        dest = empty_like_file(d)
        for t in dest.values():
            t.fill_(0xA5)
        status = load_into(d, dest)
        torch.cuda.synchronize()
        same = status == PLAID_OK and all(
            torch.equal(dest[i], as_bytes(model[n])) for i, n in enumerate(names))
        check(same, f"load into CUDA tensors: threads {threads or 'auto'}, chunk "
                    f"{chunk or 'default'}, {'caller stream' if stream else 'plaid streams'}")
        lib.plaid_deserializer_free(d)

    d = open_plaid(path)
    arena = vp()
    status = lib.plaid_deserializer_load_cuda(d, 0, None, None, ctypes.byref(arena))
    same = status == PLAID_OK
    if same:
        for i, n in enumerate(names):
            address, nbytes = ctypes.c_uint64(), ctypes.c_uint64()
            ok(lib.plaid_cuda_arena_tensor(arena, i, ctypes.byref(address),
                                           ctypes.byref(nbytes)), "arena tensor")
            host = torch.empty(nbytes.value, dtype=torch.uint8)
            if nbytes.value:
                cuda = ctypes.CDLL("libcuda.so.1")
                rc = cuda.cuMemcpyDtoH_v2(ctypes.c_void_p(host.data_ptr()),
                                          ctypes.c_uint64(address.value),
                                          ctypes.c_size_t(nbytes.value))
                same = same and rc == 0
            same = same and torch.equal(host, as_bytes(model[n].cpu()))
        lib.plaid_cuda_arena_free(arena)
    check(same, "plaid_deserializer_load_cuda: plaid allocates, every tensor right")
    bad = vp()
    status = lib.plaid_deserializer_load_cuda(d, 999, None, None, ctypes.byref(bad))
    check(status == PLAID_ERR_CUDA and "CUDA" in message(), "a device that does not exist")
    lib.plaid_deserializer_free(d)

    out = tmp / "from_gpu.plaid"
    write_plaid(out, model, from_gpu=True)
    d = open_plaid(out)
    dest = empty_like_file(d)
    status = load_into(d, dest)
    torch.cuda.synchronize()
    check(status == PLAID_OK and all(torch.equal(dest[i], as_bytes(model[n]))
                                     for i, n in enumerate(names)),
          "serialized from GPU memory, loaded back")
    lib.plaid_deserializer_free(d)

    raw = bytearray(path.read_bytes())
    damaged = tmp / "damaged.plaid"
    raw[len(raw) - 1000] ^= 1  # inside the last tensor
    damaged.write_bytes(raw)
    d = open_plaid(damaged)
    status = load_into(d, empty_like_file(d))
    check(status == PLAID_ERR_CHECKSUM, f"a flipped bit is PLAID_ERR_CHECKSUM ({message()})")
    lib.plaid_deserializer_free(d)
    return failures


# ---- benchmark -----------------------------------------------------------------------------

def median_time(fn, rounds):
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def warm(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def run_bench(tmp, size_gib, rounds):
    rows = []
    layers, hidden = 0, 4096
    model = {}
    g = torch.Generator(device="cuda").manual_seed(2)
    total = 0
    while total < size_gib * (1 << 30):
        for name, shape in [(f"layers.{layers}.attn.qkv", (3 * hidden, hidden)),
                            (f"layers.{layers}.attn.out", (hidden, hidden)),
                            (f"layers.{layers}.mlp.up", (4 * hidden, hidden)),
                            (f"layers.{layers}.mlp.down", (hidden, 4 * hidden)),
                            (f"layers.{layers}.norm", (hidden,))]:
            model[name] = torch.randn(shape, device="cuda", generator=g).to(torch.bfloat16)
            total += model[name].numel() * 2
        layers += 1
    gib = total / (1 << 30)
    print(f"\nbenchmark model: {len(model)} bf16 tensors, {gib:.2f} GiB", flush=True)

    plaid_path = tmp / "bench.plaid"
    t = median_time(lambda: write_plaid(plaid_path, model, from_gpu=True), 1)
    rows.append(("plaid: serialize from GPU memory (no fsync)", total, t))
    warm(plaid_path)

    pinned = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
    target = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")

    def ceiling():
        done = 0
        while done < total:
            n = min(1 << 30, total - done)
            target[:n].copy_(pinned[:n], non_blocking=True)
            done += n
    rows.append(("limit: pinned host-to-device copies (1 GiB buffer)", total,
                 median_time(ceiling, rounds)))
    del pinned, target

    d = open_plaid(plaid_path, threads=1)
    dest = empty_like_file(d)
    del model
    torch.cuda.empty_cache()
    for threads in [1, os.cpu_count()]:
        d2 = open_plaid(plaid_path, threads=threads)
        rows.append((f"plaid: into torch CUDA tensors, {threads} thread(s), verified", total,
                     median_time(lambda: ok(load_into(d2, dest), "load"), rounds)))
        lib.plaid_deserializer_free(d2)

    def allocate():
        arena = vp()
        ok(lib.plaid_deserializer_load_cuda(d, 0, None, None, ctypes.byref(arena)), "load_cuda")
        lib.plaid_cuda_arena_free(arena)
    lib.plaid_deserializer_free(d)
    d = open_plaid(plaid_path)
    rows.append((f"plaid: load_cuda (allocates), {os.cpu_count()} thread(s), verified", total,
                 median_time(allocate, rounds)))
    # The same weights as torch tensors, for the peers.
    weights = {}
    for i in range(lib.plaid_deserializer_tensor_count(d)):
        info = lib.plaid_deserializer_tensor(d, i).contents
        name = ctypes.string_at(info.name, info.name_len).decode()
        shape = [info.shape[k] for k in range(info.ndim)]
        weights[name] = dest[i].view(torch.bfloat16).view(shape).cpu()
    lib.plaid_deserializer_free(d)
    del dest
    torch.cuda.empty_cache()

    try:
        from safetensors.torch import load_file, save_file
        st_path = tmp / "bench.safetensors"
        save_file(weights, str(st_path))
        warm(st_path)
        rows.append(('safetensors: load_file(device="cuda")', total,
                     median_time(lambda: load_file(str(st_path), device="cuda"), rounds)))
        st_path.unlink()
    except ImportError:
        rows.append(("safetensors: not installed on this machine", total, float("nan")))
    pt_path = tmp / "bench.pt"
    torch.save(weights, pt_path)
    warm(pt_path)
    rows.append(('torch.load(map_location="cuda")', total,
                 median_time(lambda: torch.load(pt_path, map_location="cuda"), rounds)))
    pt_path.unlink()

    print(f"\n{torch.cuda.get_device_name(0)}; {gib:.2f} GiB of bf16 weights in page-cached "
          f"files; {rounds} rounds after a warm-up, medians; {os.cpu_count()} cores\n")
    print(f"{'loader':<62} {'GB/s':>8} {'seconds':>9}")
    print("-" * 81)
    for name, nbytes, seconds in rows:
        print(f"{name:<62} {nbytes / seconds / 1e9:>8.2f} {seconds:>9.3f}")
    rate = {name: nbytes / seconds for name, nbytes, seconds in rows}
    ceiling_rate = rate["limit: pinned host-to-device copies (1 GiB buffer)"]
    best = max(v for k, v in rate.items() if k.startswith("plaid: into torch"))
    print(f"\nplaid into device memory: {best / ceiling_rate:.2f}x the pinned copy ceiling")
    st = rate.get('safetensors: load_file(device="cuda")')
    if st:
        print(f"plaid vs safetensors load_file(device='cuda'): {best / st:.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    print(f"device: {torch.cuda.get_device_name(0)}; library: {LIB}", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("PLAID_GPU_TMP")) as tmp:
        failures = run_tests(Path(tmp))
        if failures:
            sys.exit(f"{len(failures)} device test(s) failed")
        if not args.skip_bench:
            run_bench(Path(tmp), args.size_gib, args.rounds)


if __name__ == "__main__":
    main()
