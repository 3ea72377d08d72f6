"""Weights that read only what their consumer keeps: the tensors the vLLM load format hands
to a model's ``load_weights``.

A `LazyWeight` stands for one tensor of an open file. ``narrow`` (and slicing with step 1)
only records the range; ``dest.copy_(weight)`` reads that range straight into ``dest``
(converting between floating-point dtypes as it lands), and every other operation reads the
range recorded so far into a fresh tensor and runs on that. Copies into the model's own
parameters and buffers are gathered and read at the end (`Session.finish`), in one load per
file, so that plaid reads them in parallel; any other copy is read at once.
"""

import torch
from torch.utils import _pytree

from . import _lib
from .torch import _destination, _device, _tensor_from, dtype_id, torch_dtype

# Operations that only look at a tensor's description: answered without reading it.
_DESCRIBE = {
    torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.device.__get__,
    torch.Tensor.ndim.__get__, torch.Tensor.is_cuda.__get__, torch.Tensor.is_cpu.__get__,
    torch.Tensor.is_meta.__get__, torch.Tensor.layout.__get__,
    torch.Tensor.requires_grad.__get__, torch.Tensor.is_sparse.__get__,
    torch.Tensor.is_quantized.__get__, torch.Tensor.size, torch.Tensor.dim,
    torch.Tensor.numel, torch.Tensor.nelement, torch.Tensor.element_size,
    torch.Tensor.__len__, torch.Tensor.is_floating_point, torch.Tensor.is_complex,
    torch.Tensor.is_contiguous, torch.Tensor.stride,
}
_NARROW = {torch.Tensor.narrow, torch.narrow}
# The dtypes plaid converts among as it lands.
_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


class LazyWeight(torch.Tensor):
    """Tensor ``meta`` of ``reader`` (a `plaid.Reader`), or the range ``starts`` of it with
    shape ``shape``, read by ``session`` when it is used."""

    @staticmethod
    def __new__(cls, session, reader, meta, starts=None, shape=None):
        shape = tuple(meta.shape) if shape is None else tuple(shape)
        out = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch_dtype(meta),
                                                  device="cpu", requires_grad=False)
        out._plaid = (session, reader, meta,
                      tuple(starts) if starts is not None else (0,) * len(shape))
        return out

    def __init__(self, *_args, **_kwargs):
        super().__init__()

    def __repr__(self, **_kwargs):
        _session, reader, meta, starts = self._plaid
        return (f"LazyWeight({meta.name!r} of {reader.path}, {meta.dtype}, "
                f"{list(self.shape)} at {list(starts)})")

    @property
    def plaid_range(self):
        """``(name, starts, shape)``: which part of which tensor this stands for."""
        return self._plaid[2].name, self._plaid[3], tuple(self.shape)

    def _narrowed(self, dim, start, length):
        shape = tuple(self.shape)
        if not isinstance(dim, int) or not isinstance(start, int) \
                or not isinstance(length, int):
            return None
        ndim = len(shape)
        if not -ndim <= dim < ndim:
            raise IndexError(f"narrow: dimension {dim} out of range for shape {list(shape)}")
        dim %= ndim
        if start < 0:
            start += shape[dim]
        if start < 0 or length < 0 or start + length > shape[dim]:
            raise RuntimeError(f"narrow: start ({start}) + length ({length}) exceeds "
                               f"dimension size ({shape[dim]}) of {self._plaid[2].name!r}")
        session, reader, meta, starts = self._plaid
        starts = list(starts)
        starts[dim] += start
        shape = list(shape)
        shape[dim] = length
        return LazyWeight(session, reader, meta, starts, shape)

    def _sliced(self, key):
        """``self[key]`` for slices with step 1 (and a leading run of them in a tuple), or
        None for any other key."""
        keys = key if isinstance(key, tuple) else (key,)
        if len(keys) > self.dim() or not all(isinstance(k, slice) for k in keys):
            return None
        out = self
        for dim, k in enumerate(keys):
            if k.step not in (None, 1):
                return None
            start, stop, _ = k.indices(out.shape[dim])
            out = out._narrowed(dim, start, max(0, stop - start))
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DESCRIBE:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func in _NARROW and isinstance(args[0], LazyWeight) and not kwargs:
            out = args[0]._narrowed(*args[1:])
            if out is not None:
                return out
        if func is torch.Tensor.__getitem__ and isinstance(args[0], LazyWeight):
            out = args[0]._sliced(args[1])
            if out is not None:
                return out
        if func is torch.Tensor.detach and isinstance(args[0], LazyWeight):
            return args[0]
        if func is torch.Tensor.copy_ and len(args) == 2 and isinstance(args[1], LazyWeight) \
                and not isinstance(args[0], LazyWeight):
            session = args[1]._plaid[0]
            session.copy(args[0], args[1])
            return args[0]
        real_args, real_kwargs = _pytree.tree_map(
            lambda x: x.materialize() if isinstance(x, LazyWeight) else x, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*real_args, **real_kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # Reached only by what __torch_function__ let through (it reads every operation it
        # does not answer itself): the same rule, read first.
        real_args, real_kwargs = _pytree.tree_map(
            lambda x: x.materialize() if isinstance(x, LazyWeight) else x,
            (args, kwargs or {}))
        return func(*real_args, **real_kwargs)

    def materialize(self):
        """The range this stands for, read into a new CPU tensor."""
        return self._plaid[0].read(self)


class Session:
    """One load into ``model`` (its parameters and buffers are where gathered copies may
    go), reading through ``checkpoint`` (a `plaid.vllm.Checkpoint`)."""

    def __init__(self, checkpoint, model=None):
        self.checkpoint = checkpoint
        self.stats = checkpoint.stats
        self.owned = set()
        if model is not None:
            for t in list(model.parameters()) + list(model.buffers()):
                # Parameters without memory yet (online quantization builds them on the meta
                # device, or uninitialized) are no destination to gather copies into.
                if isinstance(t, torch.nn.parameter.UninitializedTensorMixin) \
                        or t.device.type == "meta" or not t.numel():
                    continue
                self.owned.add(t.untyped_storage().data_ptr())
        # Per reader: rounds of {tensor index: destination}, each tensor and each
        # destination address at most once per round; the tensors they keep alive.
        self._pending = {}
        self._keep = []

    def weights(self, skip=None):
        """``(name, LazyWeight)`` for every tensor of the checkpoint (except those ``skip``
        names), then the gathered copies read (`finish`) when the consumer asks for more."""
        for reader, meta in self.checkpoint.tensors():
            if skip is not None and skip(meta.name):
                continue
            yield meta.name, LazyWeight(self, reader, meta)
        self.finish()

    @staticmethod
    def _plan(weight):
        """``(view, rest)`` for reading ``weight``: the one-dimension slice plaid reads
        (``(dim, start, stop)``, or None for the whole tensor) and the narrows left to do
        afterwards (``[(dim, start, length)]``)."""
        _session, _reader, meta, starts = weight._plaid
        shape = tuple(weight.shape)
        cut = [d for d in range(len(shape)) if shape[d] != meta.shape[d]]
        if not cut:
            return None, []
        first = cut[0]
        view = (first, starts[first], starts[first] + shape[first])
        return view, [(d, starts[d], shape[d]) for d in cut[1:]]

    def _target(self, dest, meta, view, dtype):
        nbytes = dest.numel() * dest.element_size()
        kind = _lib.DEST_CUDA if dest.device.type == "cuda" else _lib.DEST_HOST
        device = dest.device.index or 0 if kind == _lib.DEST_CUDA else 0
        dim, start, stop = view if view is not None else (0, 0, 0)
        converted = 0 if dtype == torch_dtype(meta) else dtype_id(dtype)
        return (kind, device, dest.data_ptr(), nbytes, dim, start, stop, converted)

    def read(self, weight):
        """The range ``weight`` stands for, read now into a new CPU tensor."""
        _session, reader, meta, _starts = weight._plaid
        view, rest = self._plan(weight)
        shape = list(meta.shape)
        if view is not None:
            shape[view[0]] = view[2] - view[1]
        out = torch.empty(shape, dtype=torch_dtype(meta))
        if out.numel():
            reader.load({meta.index: self._target(out, meta, view,
                                                                   out.dtype)})
            self.stats.delivering(out.numel() * out.element_size(), view)
        self.stats.tensors += 1
        for dim, start, length in rest:
            out = out.narrow(dim, start, length)
        return out.contiguous() if rest else out

    def copy(self, dest, weight):
        """``dest.copy_(weight)``: a read straight into ``dest`` where its layout allows
        (gathered for `finish` when ``dest`` is the model's), else a read and a copy."""
        _session, reader, meta, _starts = weight._plaid
        view, rest = self._plan(weight)
        direct = (not rest and tuple(dest.shape) == tuple(weight.shape)
                  and dest.is_contiguous() and dest.device.type in ("cpu", "cuda")
                  and not dest.requires_grad
                  and (dest.dtype == weight.dtype
                       or (dest.dtype in _FLOATS and weight.dtype in _FLOATS)))
        if not direct:
            with torch._C.DisableTorchFunctionSubclass():
                dest.copy_(self.read(weight))
            return
        self.stats.tensors += 1
        if not dest.numel():
            return
        target = self._target(dest, meta, view, dest.dtype)
        self.stats.delivering(target[3], view)
        if dest.untyped_storage().data_ptr() not in self.owned:
            reader.load({meta.index: target})
            return
        rounds = self._pending.setdefault(id(reader), (reader, []))[1]
        if not rounds or meta.index in rounds[-1][0] or target[2] in rounds[-1][1]:
            rounds.append(({}, set()))
        rounds[-1][0][meta.index] = target
        rounds[-1][1].add(target[2])
        self._keep.append(dest)

    def finish(self):
        """Read every gathered copy: one load per file and round, in parallel inside."""
        pending, self._pending = self._pending, {}
        try:
            for reader, rounds in pending.values():
                for destinations, _addresses in rounds:
                    reader.load(destinations)
        finally:
            self._keep = []


def full_tensors(checkpoint, window=1 << 30, skip=None):
    """``(name, tensor)`` for every tensor of the checkpoint, read whole into host memory in
    windows of at most ``window`` bytes (a larger tensor is a window of its own; the
    consumer's weight loaders copy onto the device), each window freed once the consumer has
    taken it: the tensors of a window are views of one host allocation that plaid fills in
    parallel."""
    items = [(r, m) for r, m in checkpoint.tensors() if skip is None or not skip(m.name)]
    start = 0
    while start < len(items):
        reader = items[start][0]
        stop, size = start, 0
        while stop < len(items) and items[stop][0] is reader and \
                (stop == start or size + items[stop][1].nbytes <= window):
            size += items[stop][1].nbytes
            stop += 1
        chosen = {m.index for _r, m in items[start:stop]}
        for _r, m in items[start:stop]:
            torch_dtype(m)
        arena = reader.load_host(views=lambda m: m if m.index in chosen else None)
        for _r, meta in items[start:stop]:
            if meta.nbytes:
                tensor = _tensor_from(arena.buffer(meta.index), meta)
            else:
                tensor = torch.zeros(meta.shape, dtype=torch_dtype(meta))
            checkpoint.stats.tensors += 1
            checkpoint.stats.delivering(meta.nbytes, None)
            yield meta.name, tensor
        del tensor, arena
        start = stop


def shared_tensors(checkpoint, group, device, window=1 << 30, skip=None):
    """``(name, tensor)`` for every tensor of the checkpoint, read once by the members of
    ``group`` between them (a vLLM `GroupCoordinator`: ``rank_in_group``, ``world_size``,
    ``ranks``, ``cpu_group``, ``device_group``): in windows of at most ``window`` bytes,
    the tensors of a window are dealt to the members by size, each member reads its part,
    and the parts are broadcast; the tensors ``skip`` names are not handed out. Every member
    must iterate to the end."""
    import torch.distributed as dist
    device = _device(device)
    on_gpu = device.type == "cuda"
    backend = group.device_group if on_gpu else group.cpu_group
    where = device if on_gpu else torch.device("cpu")
    me, size = group.rank_in_group, group.world_size
    # Every member exchanges the same tensors (``skip`` differs between members under
    # expert parallelism: it is applied when handing them out).
    items = checkpoint.tensors()
    for _r, meta in items:
        torch_dtype(meta)
    start = 0
    while start < len(items):
        stop, total = start, 0
        while stop < len(items) and (stop == start or total + items[stop][1].nbytes <= window):
            total += items[stop][1].nbytes
            stop += 1
        window_items = items[start:stop]
        owner, loads = {}, [0] * size
        for k, (_r, meta) in sorted(enumerate(window_items),
                                    key=lambda e: (-e[1][1].nbytes, e[0])):
            member = min(range(size), key=lambda r: (loads[r], r))
            owner[k] = member
            loads[member] += -(-meta.nbytes // 64) * 64
        at, sizes = {}, [0] * size
        for k, (_r, meta) in enumerate(window_items):
            at[k] = sizes[owner[k]]
            sizes[owner[k]] += -(-meta.nbytes // 64) * 64
        buffers = [torch.empty(n, dtype=torch.uint8, device=where) for n in sizes]
        tensors = []
        for k, (_r, meta) in enumerate(window_items):
            piece = buffers[owner[k]][at[k]:at[k] + meta.nbytes]
            tensors.append(piece.view(torch_dtype(meta)).view(meta.shape) if meta.nbytes
                           else torch.zeros(meta.shape, dtype=torch_dtype(meta), device=where))
        failure = None
        try:
            by_reader = {}
            for k, (reader, meta) in enumerate(window_items):
                if owner[k] == me and meta.nbytes:
                    by_reader.setdefault(id(reader), (reader, {}))[1][meta.index] = \
                        _destination(tensors[k], meta)
            for reader, destinations in by_reader.values():
                reader.load(destinations)
        except BaseException as e:  # told to every member below, then raised here
            failure = e
        flag = torch.tensor([0 if failure is None else 1], dtype=torch.int64)
        dist.all_reduce(flag, group=group.cpu_group)
        if failure is not None:
            raise failure
        if flag.item():
            raise _lib.PlaidError(f"{checkpoint.path}: {flag.item()} other rank(s) of the "
                                  "tensor-parallel group could not read their part (each "
                                  "raised its own error)")
        for member, buffer in enumerate(buffers):
            if buffer.numel():
                dist.broadcast(buffer, src=group.ranks[member], group=backend)
        for k, (_r, meta) in enumerate(window_items):
            if skip is not None and skip(meta.name):
                continue
            checkpoint.stats.tensors += 1
            checkpoint.stats.delivering(meta.nbytes, None)
            yield meta.name, tensors[k]
        del buffers, tensors
        start = stop
