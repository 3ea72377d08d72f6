"""Python objects as libplaid sources (`plaid_source`): a seekable binary file object, read
with ``os.preadv`` on its descriptor where it has one (no lock, no copy) and with
``seek``/``readinto`` under a lock otherwise, or bytes-like data (``bytes``, ``bytearray``,
``memoryview``, anything with the buffer protocol), copied straight from its memory.

The library calls ``read`` from its own I/O threads, several at once; each call takes the
GIL only around Python code (``os.preadv`` releases it while the kernel reads). An exception
inside a callback, or a ``readinto``/``read`` whose count is not an integer in ``0..len``,
becomes a failed read (`PlaidIOError` naming the source and offset); the first exception is
chained to it, once, and later reads of the same call fail at once. The callbacks stay alive until the library calls
``release``, which it does exactly once, when the last deserializer using the source is
gone."""

import contextlib
import ctypes
import io
import operator
import os
import threading

from . import _lib
from ._lib import check, lib


# Sources the library still holds, by key: what keeps their callbacks and data alive.
_live = {}
_live_lock = threading.Lock()
_next_key = [1]


def is_path(obj):
    """Whether ``obj`` names a file (a str or an os.PathLike, a URL among them) rather than
    holding bytes."""
    return isinstance(obj, (str, os.PathLike))


_URL_SCHEMES = ("http://", "https://", "s3://", "s3a://", "gs://", "az://", "azure://")


def is_url(obj):
    """Whether ``obj`` is the URL of remote storage (http(s), s3, gs, az) rather than a
    local path."""
    return isinstance(obj, str) and obj[:8].lower().startswith(_URL_SCHEMES)


class _Reader:
    """Serves reads of one object; remembers the first exception a read raised."""

    def __init__(self, obj):
        self.errors = []
        self.fd = None
        self.lock = threading.Lock()
        if isinstance(obj, (bytes, bytearray, memoryview)) or _has_buffer(obj):
            view = memoryview(obj)
            if not view.contiguous:
                raise _lib.InvalidArgumentError("plaid: the bytes given are not contiguous")
            import numpy
            # numpy finds the address of read-only buffers too (bytes), which ctypes cannot.
            self.array = numpy.frombuffer(view.cast("B") if view.ndim != 1 or view.format != "B"
                                          else view, dtype=numpy.uint8)
            self.address = self.array.ctypes.data
            self.length = self.array.nbytes
            self.name = f"<{type(obj).__name__} of {self.length} bytes>"
            self.obj = obj
            self.read = self._read_memory
            return
        if not hasattr(obj, "read") and not hasattr(obj, "readinto"):
            raise TypeError(f"plaid: cannot read from a {type(obj).__name__}: give a path, a "
                            "seekable binary file object, or bytes")
        seekable = getattr(obj, "seekable", None)
        if seekable is None or not seekable():
            raise _lib.InvalidArgumentError(
                f"plaid: {_name_of(obj)} is not seekable: plaid reads sources at any offset, "
                "from several threads; read the stream into bytes first, or save it to a file")
        self.obj = obj
        self.name = _name_of(obj)
        try:
            fd = obj.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            fd = None
        if fd is not None and not isinstance(obj, io.TextIOBase):
            # A descriptor of its own: reads made later (tensors read on first access)
            # work after the caller closed the file; closed when the library releases it.
            self.fd = os.dup(fd)
            self.length = os.fstat(self.fd).st_size
            self.read = self._read_fd
        else:
            if isinstance(obj, io.TextIOBase):
                raise _lib.InvalidArgumentError(f"plaid: {self.name} is a text file; open it "
                                                "in binary mode ('rb')")
            with self.lock:
                here = obj.tell()
                self.length = obj.seek(0, io.SEEK_END)
                obj.seek(here)
            self.read = self._read_locked

    def _read_memory(self, offset, buf, length):
        n = max(0, min(length, self.length - offset))
        if n:
            ctypes.memmove(buf, self.address + offset, n)
        return n

    def _read_fd(self, offset, buf, length):
        target = (ctypes.c_char * length).from_address(buf)
        return os.preadv(self.fd, [target], offset)

    def _read_locked(self, offset, buf, length):
        target = memoryview((ctypes.c_char * length).from_address(buf)).cast("B")
        with self.lock:
            self.obj.seek(offset)
            readinto = getattr(self.obj, "readinto", None)
            if readinto is not None:
                n = readinto(target)
                return 0 if n is None else n
            data = self.obj.read(length)
            target[:len(data)] = data
            return len(data)


def _has_buffer(obj):
    try:
        memoryview(obj)
        return True
    except TypeError:
        return False


def _name_of(obj):
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(obj).__name__}>"


@_lib.READ_FN
def _read(user_data, offset, buf, length):
    # Everything, the conversion of the count included, happens inside the ``try``: an
    # exception escaping a ctypes callback is printed and its return value is undefined,
    # which the library would take as a byte count.
    with _live_lock:
        reader = _live.get(user_data)
    if reader is None:
        return -1
    try:
        if reader.errors:
            return -1  # this call already failed: its first exception is its error
        n = operator.index(reader.read(offset, buf, length))
        if not 0 <= n <= length:
            raise ValueError(f"{reader.name}: a read of {length} bytes at offset {offset} "
                             f"returned {n}, outside 0..{length}")
        return n
    except BaseException as e:  # raised again, chained, after the library call
        reader.errors.append(e)
        return -1


@_lib.RELEASE_FN
def _release(user_data):
    with _live_lock:
        reader = _live.pop(user_data, None)
    fd = getattr(reader, "fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class Source:
    """A `plaid_source` over a Python object. ``handle`` is the caller's reference, given up
    by ``close()`` once a deserializer holds its own."""

    def __init__(self, obj):
        self.reader = _Reader(obj)
        with _live_lock:
            key = _next_key[0]
            _next_key[0] += 1
            _live[key] = self.reader
        handle = ctypes.c_void_p()
        status = lib.plaid_source_new(self.reader.name.encode("utf-8", "replace"),
                                      self.reader.length, _read, key, _release,
                                      ctypes.byref(handle))
        if status != 0:
            with _live_lock:
                _live.pop(key, None)  # release is not called when creation fails
            if self.reader.fd is not None:
                os.close(self.reader.fd)
            check(status)
        self.handle = handle
        self.name = self.reader.name

    def close(self):
        """Give up this reference (the library releases the object once nothing uses it)."""
        if self.handle:
            lib.plaid_source_free(self.handle)
            self.handle = None

    def check(self, status):
        """`_lib.check`, with the exception a read callback raised chained to the error."""
        if status != 0 and self.reader.errors:
            cause = self.reader.errors[0]
            self.reader.errors.clear()
            cls = _lib.ERRORS.get(status, _lib.PlaidError)
            raise cls(_lib.last_message(), status) from cause
        self.reader.errors.clear()
        check(status)
