"""plaid on a real NVIDIA GPU, through its C API (ctypes) and PyTorch: the device tests,
then one benchmark table. Run by tests/gpu/check.sh with the binaries built beforehand.

Tests (every byte compared on the device with torch.equal):
  - a plaid file loaded into torch.empty(device="cuda") tensors through the placement
    callback (PLAID_DEST_CUDA), with 1 and N workers, small and large chunks, and on the
    caller's stream (plaid_read_options_set_cuda_stream);
  - plaid_deserializer_load_cuda (plaid allocates), read back with cuMemcpyDtoH;
  - plaid_serializer_add_tensor_cuda: a model serialized straight from GPU memory;
  - a damaged file gives PLAID_ERR_CHECKSUM, a wrong device PLAID_ERR_CUDA;
  - through the Python binding: every tensor-parallel rank's share (several dimensions,
    with and without dtype conversion) of a plain and of an encrypted file, against torch's
    own slicing and casts on the device; an encrypted file without its key or with a wrong
    one; load_file(device="cuda", key=...); TensorDeserializer shares on the device.

Benchmark (page-cached files, medians): the pinned host-to-device ceiling, plaid into
cudaMalloc'ed (torch) destinations with 1 and N workers, an encrypted file, one rank's
dimension-0 and dimension-1 shares, bf16 converted to f32 on the way, plaid allocating,
safetensors' load_file(device="cuda") and torch.load(map_location="cuda") on the same
weights, and plaid serializing from GPU memory (plain and encrypted). --sweep adds loads
under several thread, request-size, requests-in-flight and staging settings.
"""

import argparse
import ctypes
import os
import runpy
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
LIB = Path(os.environ.get("PLAID_LIB") or ROOT / "target" / "release" / "libplaid.so")


# plaid._abi, the one ctypes declaration of plaid.h, loaded by path (the package need not
# be installed).
abi = types.SimpleNamespace(**runpy.run_path(
    str(ROOT / "bindings" / "python" / "plaid" / "_abi.py")))
PLAID_OK = abi.STATUS["PLAID_OK"]
PLAID_ERR_CHECKSUM = abi.STATUS["PLAID_ERR_CHECKSUM"]
PLAID_ERR_CUDA = abi.STATUS["PLAID_ERR_CUDA"]
PLAID_DEST_CUDA = abi.DEST_CUDA
DTYPE_IDS = {torch.bfloat16: 11, torch.float32: 12, torch.float16: 10, torch.int64: 8,
             torch.uint8: 2}
PLACE = abi.PLACE_FN
NO_FILTER = abi.FILTER_FN()
vp = ctypes.c_void_p
lib = abi.bind(ctypes.CDLL(str(LIB)))


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


def open_plaid(path, threads=0, chunk=0, stream=None, key=None, verify=True, mmap=True,
               requests=0, lanes=0):
    o, d = vp(), vp()
    ok(lib.plaid_read_options_new(ctypes.byref(o)), "read options")
    ok(lib.plaid_read_options_set_verify(o, int(verify)), "verify")
    ok(lib.plaid_read_options_set_mmap(o, int(mmap)), "mmap")
    if requests:
        ok(lib.plaid_read_options_set_requests_in_flight(o, requests), "requests")
    if lanes:
        ok(lib.plaid_read_options_set_staging_lanes(o, lanes), "lanes")
    if key is not None:
        ok(lib.plaid_read_options_set_key(o, key, len(key)), "key")
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


def load_views(d, destinations, views, device=0):
    """Load each tensor ``i`` of ``views`` (index -> (dim, start, stop, dtype id)) into
    ``destinations[i]``, the others skipped."""
    @PLACE
    def place(_user, info_p, dest_p):
        i = info_p.contents.index
        if i not in views:
            return 0
        t = destinations[i]
        dim, start, stop, dtype = views[i]
        dest_p.contents.kind = PLAID_DEST_CUDA
        dest_p.contents.device = device
        dest_p.contents.address = t.data_ptr()
        dest_p.contents.capacity = t.numel() * t.element_size()
        dest_p.contents.slice_dim, dest_p.contents.slice_start = dim, start
        dest_p.contents.slice_stop, dest_p.contents.dtype = stop, dtype
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

FAILURES = []


def check(cond, what):
    """Print one check's outcome; a failed one is kept, and fails the run at its end."""
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def run_tests(tmp):
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
    status = lib.plaid_deserializer_load_cuda(d, 0, NO_FILTER, None, ctypes.byref(arena))
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
    status = lib.plaid_deserializer_load_cuda(d, 999, NO_FILTER, None, ctypes.byref(bad))
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


def binding():
    """The Python binding of this checkout (plaid, plaid.torch), on the library under test."""
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    os.environ.setdefault("PLAID_LIB", str(LIB))
    import plaid
    import plaid.torch
    return plaid, plaid.torch


def run_binding_tests(tmp):
    """Tensor-parallel shares, dtype conversion and encrypted files into CUDA memory,
    through the Python binding (plaid.load_into, plaid.torch), against torch's own slicing
    and casts of the same tensors on the device."""
    plaid, pt = binding()

    g = torch.Generator(device="cuda").manual_seed(5)
    model = {
        "w2": torch.randn(1000, 777, device="cuda", generator=g).to(torch.bfloat16),
        "w3": torch.randn(24, 33, 17, device="cuda", generator=g),
        "w4": torch.randn(6, 5, 9, 10, device="cuda", generator=g).to(torch.float16),
        "ids": torch.randint(-99, 99, (40, 6), device="cuda", generator=g),
    }
    key = bytes(range(32))
    plain, sealed = tmp / "tp.plaid", tmp / "tp-encrypted.plaid"
    pt.save_file(model, plain)  # written straight from device memory
    pt.save_file(model, sealed, key=key)
    splits = [{"*": 0}, {"w2": 1, "w3": 1, "w4": 1, "ids": 1}, {"w3": 2, "w4": 3, "*": 0}]
    for path, k in [(plain, None), (sealed, key)]:
        for world in (3, 8):
            for split in splits:
                for dtype in (None, torch.float32, torch.float16):
                    same = True
                    for rank in range(world):
                        targets, expect = {}, {}
                        for name, t in model.items():
                            d = split.get(name, split.get("*"))
                            n = t.shape[d]
                            a, b = n * rank // world, n * (rank + 1) // world
                            e = t.narrow(d, a, b - a)
                            if dtype is not None and t.is_floating_point():
                                e = e.to(dtype)
                            expect[name] = e
                            targets[name] = torch.full_like(e, 7)
                        plaid.load_into(path, targets, rank=rank, world_size=world,
                                        split=split, dtype=dtype, key=k)
                        torch.cuda.synchronize()
                        same = same and all(torch.equal(targets[n], expect[n]) for n in model)
                    check(same, f"{'encrypted' if k else 'plain'} file, {world} ranks, split "
                                f"{split}, dtype {dtype}: every rank's share on the device exact")
    for k, what in [(None, "no key"), (bytes(32), "a wrong key")]:
        try:
            plaid.load_into(sealed, {"w2": torch.empty(1000, 777, dtype=torch.bfloat16,
                                                       device="cuda")}, key=k)
            check(False, f"encrypted file with {what} into CUDA: DecryptError")
        except plaid.DecryptError as e:
            check("w2" in str(e), f"encrypted file with {what} into CUDA: DecryptError ({e})")
    loaded = pt.load_file(sealed, device="cuda", key=key)
    check(all(loaded[n].is_cuda and torch.equal(loaded[n], t) for n, t in model.items()),
          "plaid.torch.load_file(encrypted, device='cuda', key=...)")
    d = pt.TensorDeserializer(str(plain), device="cuda", rank=1, world_size=4,
                              split={"ids": None, "*": 0})
    check(torch.equal(d["w2"], model["w2"][250:500]) and torch.equal(d["ids"], model["ids"]),
          "TensorDeserializer(device='cuda', rank=1, world_size=4) shares")
    # load_shared over NCCL: one GPU allows a group of one member only (NCCL refuses two
    # ranks on one device), so this runs the NCCL calls (all_reduce, broadcast of the
    # share buffers) on device tensors, not the sharing itself (tested on gloo in CI).
    import socket
    import torch.distributed as dist
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, device_id=torch.device("cuda", 0))
    try:
        shared = pt.load_shared(str(plain), device="cuda")
        torch.cuda.synchronize()
        check(list(shared) == list(model) and
              all(shared[n].is_cuda and torch.equal(shared[n], t) for n, t in model.items()),
              "load_shared(device='cuda') over an NCCL group of one")
    finally:
        dist.destroy_process_group()


# ---- tuning sweep --------------------------------------------------------------------------

def run_sweep(tmp, size_gib, rounds):
    """Loads into CUDA tensors under several read settings, against the pinned ceiling in
    the same run: which threads, request sizes and requests in flight reach the card."""
    hidden, total, model, g = 4096, 0, {}, torch.Generator(device="cuda").manual_seed(3)
    while total < size_gib * (1 << 30):
        t = torch.randn(4 * hidden, hidden, device="cuda", generator=g).to(torch.bfloat16)
        model[f"w{len(model)}"] = t
        total += t.numel() * 2
    path = tmp / "sweep.plaid"
    write_plaid(path, model, from_gpu=True)
    warm(path)
    limit = total / pinned_copy_time(total, rounds)
    d = open_plaid(path)
    dest = empty_like_file(d)
    lib.plaid_deserializer_free(d)
    del model
    torch.cuda.empty_cache()
    cores = os.cpu_count()
    print(f"\nsweep: {total / (1 << 30):.2f} GiB, pinned ceiling {limit / 1e9:.2f} GB/s")
    print(f"{'threads':>7} {'requests':>8} {'lanes':>5} {'chunk MiB':>9} {'verify':>6} "
          f"{'mmap':>4} {'GB/s':>7} {'x ceiling':>9}")
    configs = [(cores, 0, 0, 0, True, True), (cores, 0, 0, 0, False, True),
               (cores, 0, 0, 0, True, False)]
    for threads in (cores // 2, cores, 2 * cores):
        for requests in (0, 2 * cores):
            for chunk in (4, 16, 64):
                configs.append((threads, requests, 0, chunk, True, True))
    configs += [(cores, 2 * cores, 4 * cores, 16, True, True), (cores, 0, 8, 16, True, True)]
    for threads, requests, lanes, chunk, verify, mmap in configs:
        d = open_plaid(path, threads=threads, chunk=chunk << 20, verify=verify, mmap=mmap,
                       requests=requests, lanes=lanes)
        rate = total / median_time(lambda: ok(load_into(d, dest), "sweep load"), rounds)
        lib.plaid_deserializer_free(d)
        print(f"{threads:>7} {requests or 'auto':>8} {lanes or 'auto':>5} "
              f"{chunk or 'auto':>9} {'yes' if verify else 'no':>6} "
              f"{'yes' if mmap else 'no':>4} {rate / 1e9:>7.2f} {rate / limit:>9.2f}",
              flush=True)


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


def pinned_copy_time(total, rounds):
    """Median seconds to copy ``total`` bytes host to device from pinned memory, 1 GiB at a
    time: the ceiling a loader into device memory is measured against."""
    pinned = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
    target = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")

    def copy():
        done = 0
        while done < total:
            n = min(1 << 30, total - done)
            target[:n].copy_(pinned[:n], non_blocking=True)
            done += n
    return median_time(copy, rounds)


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
    _, pt = binding()
    key = bytes(range(32))
    sealed_path = tmp / "bench-encrypted.plaid"
    start = time.perf_counter()
    pt.save_file(model, sealed_path, key=key)
    rows.append(("plaid: serialize encrypted (AEGIS-256X4) from GPU (binding)", total,
                 time.perf_counter() - start))
    warm(sealed_path)

    rows.append(("limit: pinned host-to-device copies (1 GiB buffer)", total,
                 pinned_copy_time(total, rounds)))

    d = open_plaid(plaid_path, threads=1)
    dest = empty_like_file(d)
    del model
    torch.cuda.empty_cache()
    for threads in [1, os.cpu_count()]:
        d2 = open_plaid(plaid_path, threads=threads)
        rows.append((f"plaid: into torch CUDA tensors, {threads} thread(s), verified", total,
                     median_time(lambda: ok(load_into(d2, dest), "load"), rounds)))
        lib.plaid_deserializer_free(d2)
    threads = os.cpu_count()
    d2 = open_plaid(sealed_path, threads=threads, key=key)
    rows.append((f"plaid: encrypted (AEGIS-256X4) into CUDA tensors, {threads} thr, verified",
                 total, median_time(lambda: ok(load_into(d2, dest), "encrypted load"), rounds)))
    lib.plaid_deserializer_free(d2)
    sealed_path.unlink()

    # Rank 0 of 8: a dimension-0 share (rows), then a dimension-1 share (columns), of every
    # matrix; then every tensor converted to f32 on the way (bytes counted as read).
    d2 = open_plaid(plaid_path, threads=threads)
    shapes = {}
    for i in range(lib.plaid_deserializer_tensor_count(d2)):
        info = lib.plaid_deserializer_tensor(d2, i).contents
        shapes[i] = [info.shape[k] for k in range(info.ndim)]
    for dim in (0, 1):
        views, outs, moved = {}, {}, 0
        for i, shape in shapes.items():
            if len(shape) == 2:
                stop = shape[dim] // 8
                views[i] = (dim, 0, stop, 0)
                share = list(shape)
                share[dim] = stop
                outs[i] = torch.empty(share, dtype=torch.bfloat16, device="cuda")
                moved += outs[i].numel() * 2
        rows.append((f"plaid: rank 0 of 8, dimension-{dim} share of every matrix, verified",
                     moved, median_time(lambda: ok(load_views(d2, outs, views), "slices"),
                                        rounds)))
        del outs
    views = {i: (0, 0, 0, 12) for i in shapes}  # PLAID_DTYPE_F32, whole tensors
    outs = {i: torch.empty(shape, dtype=torch.float32, device="cuda")
            for i, shape in shapes.items()}
    rows.append((f"plaid: bf16 -> f32 on the way, {threads} thr, verified (bf16 bytes)", total,
                 median_time(lambda: ok(load_views(d2, outs, views), "convert"), rounds)))
    probe = next(i for i, shape in shapes.items() if len(shape) == 2)
    check(torch.equal(outs[probe], dest[probe].view(torch.bfloat16).view(shapes[probe]).float()),
          "bf16 -> f32 on load equals torch's cast")
    del outs
    lib.plaid_deserializer_free(d2)
    torch.cuda.empty_cache()

    def allocate():
        arena = vp()
        ok(lib.plaid_deserializer_load_cuda(d, 0, NO_FILTER, None, ctypes.byref(arena)), "load_cuda")
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
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--sweep", action="store_true",
                        help="also load under several read settings (threads, requests, sizes)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    print(f"device: {torch.cuda.get_device_name(0)}; library: {LIB}", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("PLAID_GPU_TMP")) as tmp:
        if not args.skip_tests:
            run_tests(Path(tmp))
            run_binding_tests(Path(tmp))
            if FAILURES:
                sys.exit(f"{len(FAILURES)} device test(s) failed")
        if args.sweep:
            run_sweep(Path(tmp), args.size_gib, args.rounds)
        if not args.skip_bench:
            run_bench(Path(tmp), args.size_gib, args.rounds)
    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed: {FAILURES}")


if __name__ == "__main__":
    main()
