//! CUDA through the driver API, loaded at run time (cudarc's dynamic loading): no CUDA
//! toolkit is needed to build plaid, and `libcuda` is opened on first use. cudarc panics on
//! any call when the library is missing, so every path goes through [`init`] first, which
//! checks that the library can be loaded and turns its absence into
//! [`Error::NoCuda`](crate::Error::NoCuda).
//!
//! plaid uses each device's primary context (the one the CUDA runtime and PyTorch use),
//! pushed onto the calling thread only for the duration of a call and popped afterwards, so
//! the caller's current context is never changed, created or destroyed.

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

use cudarc::driver::sys;

use crate::error::{Error, Result};

/// Why CUDA cannot be used, remembered from the first attempt.
#[derive(Clone)]
enum Unusable {
    NoDriver(String),
    Failed(String),
}

/// Load the driver library and initialise it, once per process.
pub(crate) fn init() -> Result<()> {
    static STATE: OnceLock<std::result::Result<(), Unusable>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Unusable::NoDriver(
                "no CUDA driver library (libcuda.so.1) could be loaded on this machine".into(),
            ));
        }
        // SAFETY: the library is present; cuInit takes no pointers.
        check(unsafe { sys::cuInit(0) }, || {
            "initialising the CUDA driver (cuInit)".into()
        })
        .map_err(|e| Unusable::Failed(e.to_string()))
    });
    match state {
        Ok(()) => Ok(()),
        Err(Unusable::NoDriver(why)) => Err(Error::NoCuda(why.clone())),
        Err(Unusable::Failed(why)) => Err(Error::Cuda(why.clone())),
    }
}

/// The driver's name for `code` (`CUDA_ERROR_OUT_OF_MEMORY`).
fn error_name(code: sys::CUresult) -> String {
    let mut name: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: `name` is writable; the driver returns a static string.
    let found = unsafe { sys::cuGetErrorName(code, &mut name) };
    if found == sys::CUresult::CUDA_SUCCESS && !name.is_null() {
        // SAFETY: a NUL-terminated static string from the driver.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    } else {
        format!("CUDA error {}", code as i32)
    }
}

/// `Ok` for `CUDA_SUCCESS`; otherwise [`Error::Cuda`] naming the driver's error and what
/// plaid was doing.
pub(crate) fn check(code: sys::CUresult, what: impl FnOnce() -> String) -> Result<()> {
    if code == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("{}: {}", what(), error_name(code))))
    }
}

/// A device and its retained primary context.
pub(crate) struct Device {
    ordinal: i32,
    ctx: sys::CUcontext,
}

// SAFETY: a primary context may be used from any thread; plaid pushes it onto a thread
// only for the duration of a call.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// Device `ordinal`, its primary context retained.
    pub(crate) fn open(ordinal: i32) -> Result<Arc<Device>> {
        init()?;
        let mut device: sys::CUdevice = 0;
        // SAFETY: `device` is writable.
        check(unsafe { sys::cuDeviceGet(&mut device, ordinal) }, || {
            format!("CUDA device {ordinal}")
        })?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        check(
            // SAFETY: `ctx` is writable; `device` is valid.
            unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, device) },
            || format!("retaining the primary context of CUDA device {ordinal}"),
        )?;
        Ok(Arc::new(Device {
            ordinal: device,
            ctx,
        }))
    }

    /// Make the primary context current on this thread until the guard is dropped.
    pub(crate) fn bind(&self) -> Result<Bound> {
        // SAFETY: a retained context.
        check(unsafe { sys::cuCtxPushCurrent_v2(self.ctx) }, || {
            format!("making CUDA device {}'s context current", self.ordinal)
        })?;
        Ok(Bound)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: retained in `open`.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.ordinal) };
    }
}

/// A context pushed onto this thread; popped on drop, restoring the caller's.
pub(crate) struct Bound;

impl Drop for Bound {
    fn drop(&mut self) {
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pushed by `Device::bind` on this thread.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// Page-locked host memory (not write-combined: plaid reads it back to verify checksums).
pub(crate) struct Pinned {
    device: Arc<Device>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory, owned.
unsafe impl Send for Pinned {}

impl Pinned {
    pub(crate) fn new(device: &Arc<Device>, len: usize) -> Result<Pinned> {
        let _bound = device.bind()?;
        let mut ptr: *mut std::ffi::c_void = std::ptr::null_mut();
        check(
            // SAFETY: `ptr` is writable. PORTABLE: usable from every context.
            unsafe { sys::cuMemHostAlloc(&mut ptr, len.max(1), sys::CU_MEMHOSTALLOC_PORTABLE) },
            || format!("allocating {len} bytes of pinned host memory"),
        )?;
        Ok(Pinned {
            device: Arc::clone(device),
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len);
        // SAFETY: `len` bytes of an allocation this value owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.len);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Ok(_bound) = self.device.bind() {
            // SAFETY: allocated by cuMemHostAlloc; no copy from it is pending (lanes drain
            // before they drop their buffers).
            let _ = unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
        }
    }
}

/// A stream plaid created.
struct Stream {
    device: Arc<Device>,
    raw: sys::CUstream,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(_bound) = self.device.bind() {
            // SAFETY: created by cuStreamCreate; drained before.
            let _ = unsafe { sys::cuStreamDestroy_v2(self.raw) };
        }
    }
}

impl Stream {
    /// A non-blocking stream on `device`, whose context must be current.
    fn new(device: &Arc<Device>) -> Result<Stream> {
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        // SAFETY: `raw` is writable; the caller made a context current.
        let raw = created("a CUDA stream", |raw| unsafe {
            sys::cuStreamCreate(raw, flags)
        })?;
        let device = Arc::clone(device);
        Ok(Stream { device, raw })
    }
}

/// An event plaid created.
struct Event {
    device: Arc<Device>,
    raw: sys::CUevent,
}

impl Event {
    /// An event without timing on `device`, whose context must be current.
    fn new(device: &Arc<Device>) -> Result<Event> {
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        Ok(Event {
            device: Arc::clone(device),
            // SAFETY: `raw` is writable; the caller made a context current.
            raw: created("a CUDA event", |raw| unsafe {
                sys::cuEventCreate(raw, flags)
            })?,
        })
    }
}

/// A driver object `make` creates (writing its handle), or an error naming `what`.
fn created<P>(what: &str, make: impl FnOnce(&mut *mut P) -> sys::CUresult) -> Result<*mut P> {
    let mut raw = std::ptr::null_mut();
    check(make(&mut raw), || format!("creating {what}"))?;
    Ok(raw)
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(_bound) = self.device.bind() {
            // SAFETY: created by cuEventCreate.
            let _ = unsafe { sys::cuEventDestroy_v2(self.raw) };
        }
    }
}

/// One worker's path to one device: two pinned staging buffers used in turn, an event per
/// buffer that says when its last copy finished, and the stream the copies go on (plaid's
/// own, or the caller's). While the device copies one buffer, the worker fills the other.
pub(crate) struct Lane {
    device: Arc<Device>,
    stream: sys::CUstream,
    _own_stream: Option<Stream>,
    buffers: [Pinned; 2],
    events: [Event; 2],
    busy: [bool; 2],
    current: usize,
}

// SAFETY: the raw stream and events belong to this lane (or the caller's stream is
// documented as usable from plaid's threads); a lane is used by one thread at a time.
unsafe impl Send for Lane {}

impl Lane {
    /// A lane to `device` with staging buffers of `chunk` bytes, copying on `stream`
    /// (the caller's) or, for a null `stream`, on a stream of its own.
    pub(crate) fn new(device: &Arc<Device>, chunk: usize, stream: usize) -> Result<Lane> {
        let buffers = [Pinned::new(device, chunk)?, Pinned::new(device, chunk)?];
        let _bound = device.bind()?;
        let events = [Event::new(device)?, Event::new(device)?];
        let (raw, own) = if stream != 0 {
            (stream as sys::CUstream, None)
        } else {
            let own = Stream::new(device)?;
            (own.raw, Some(own))
        };
        Ok(Lane {
            device: Arc::clone(device),
            stream: raw,
            _own_stream: own,
            buffers,
            events,
            busy: [false; 2],
            current: 0,
        })
    }

    /// Bytes per staging buffer.
    pub(crate) fn capacity(&self) -> usize {
        self.buffers[0].len
    }

    /// The next staging buffer, `len` bytes of it, once the device has finished copying
    /// out of it. The lane's context must be current.
    pub(crate) fn buffer(&mut self, len: usize) -> Result<&mut [u8]> {
        let k = self.current;
        if self.busy[k] {
            check(
                // SAFETY: a recorded event.
                unsafe { sys::cuEventSynchronize(self.events[k].raw) },
                || "waiting for a host-to-device copy".into(),
            )?;
            self.busy[k] = false;
        }
        Ok(self.buffers[k].bytes_mut(len))
    }

    /// Queue copies out of the current staging buffer (`(device address, offset in the
    /// buffer, length)`), record its event, and move on to the other buffer. When a copy
    /// fails, the event is recorded all the same (the copies queued before it still read
    /// the buffer) and the error comes back with the position of the failed copy.
    pub(crate) fn send(
        &mut self,
        copies: &[(u64, usize, usize)],
    ) -> std::result::Result<(), (usize, Error)> {
        let k = self.current;
        let base = self.buffers[k].bytes(self.buffers[k].len).as_ptr();
        let mut failed = None;
        for (i, &(dst, at, len)) in copies.iter().enumerate() {
            if len == 0 {
                continue;
            }
            assert!(at + len <= self.buffers[k].len);
            // SAFETY: `len` bytes at `at` of a pinned buffer that stays untouched until
            // its event has completed; `dst` is the caller's device memory.
            let queued = check(
                unsafe { sys::cuMemcpyHtoDAsync_v2(dst, base.add(at).cast(), len, self.stream) },
                || format!("copying {len} bytes to device address {dst:#x}"),
            );
            if let Err(e) = queued {
                failed = Some((i, e));
                break;
            }
        }
        // SAFETY: this lane's event and stream.
        let recorded = check(
            unsafe { sys::cuEventRecord(self.events[k].raw, self.stream) },
            || "recording a CUDA event".into(),
        );
        match recorded {
            Ok(()) => self.busy[k] = true,
            Err(e) => {
                // Without an event, wait for the whole stream before the buffer is reused.
                // SAFETY: the lane's stream.
                let _ = unsafe { sys::cuStreamSynchronize(self.stream) };
                failed.get_or_insert((copies.len().saturating_sub(1), e));
            }
        }
        self.current = 1 - k;
        failed.map_or(Ok(()), Err)
    }

    /// Wait until every copy queued on this lane has finished.
    pub(crate) fn drain(&mut self) -> Result<()> {
        let _bound = self.device.bind()?;
        let mut result = Ok(());
        for k in 0..2 {
            if self.busy[k] {
                // SAFETY: a recorded event.
                let r = check(
                    unsafe { sys::cuEventSynchronize(self.events[k].raw) },
                    || "waiting for host-to-device copies".into(),
                );
                self.busy[k] = false;
                result = result.and(r);
            }
        }
        result
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let _ = self.drain();
    }
}

/// The sink of CUDA device `ordinal`, copying on `stream` (0: streams of its own): what a
/// deserializer's [`crate::sink::Sinks`] makes on a load's first tensor for that device.
pub(crate) fn staging_sink(ordinal: i32, stream: usize) -> Result<Arc<dyn crate::sink::Sink>> {
    Ok(Arc::new(StagingPool::new(ordinal, stream)?))
}

/// The sink of one device ([`crate::sink::Sink`]): staging lanes of two pinned buffers
/// each, taken by an I/O thread for one job (as its writer) and given back, kept between
/// loads.
pub(crate) struct StagingPool {
    ordinal: i32,
    device: Arc<Device>,
    stream: usize,
    idle: Mutex<Vec<Lane>>,
    returned: Condvar,
    /// Lanes made, taken or not.
    made: AtomicUsize,
    /// Bytes per buffer of every lane.
    capacity: AtomicUsize,
}

impl StagingPool {
    /// The pool of CUDA device `ordinal` (its primary context retained), copying on the
    /// caller's `stream`, or on streams of its own for 0. No lane is made yet.
    pub(crate) fn new(ordinal: i32, stream: usize) -> Result<StagingPool> {
        Ok(StagingPool {
            ordinal,
            device: Device::open(ordinal)?,
            stream,
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            made: AtomicUsize::new(0),
            capacity: AtomicUsize::new(0),
        })
    }
}

impl crate::sink::Sink for StagingPool {
    fn prepare(&self, lanes: usize, piece: usize) -> Result<()> {
        let mut idle = self.idle.lock();
        if self.capacity.load(Ordering::Relaxed) < piece {
            idle.clear(); // too small for this load's pieces (each drains when dropped)
            self.made.store(0, Ordering::Relaxed);
            self.capacity.store(piece, Ordering::Relaxed);
        }
        let capacity = self.capacity.load(Ordering::Relaxed);
        while idle.len() < lanes {
            idle.push(Lane::new(&self.device, capacity, self.stream)?);
            self.made.store(idle.len(), Ordering::Relaxed);
        }
        Ok(())
    }

    fn writer(&self) -> Result<Box<dyn crate::sink::Writer + '_>> {
        let lane = {
            let mut idle = self.idle.lock();
            loop {
                if let Some(lane) = idle.pop() {
                    break lane;
                }
                if self.made.load(Ordering::Relaxed) == 0 {
                    return Err(Error::Cuda(format!(
                        "no staging lane was prepared for CUDA device {}",
                        self.ordinal
                    )));
                }
                self.returned.wait(&mut idle);
            }
        };
        let bound = match self.device.bind() {
            Ok(bound) => bound,
            Err(e) => {
                self.idle.lock().push(lane);
                self.returned.notify_one();
                return Err(e);
            }
        };
        Ok(Box::new(TakenLane {
            pool: self,
            lane: Some(lane),
            _bound: bound,
        }))
    }

    fn drain(&self) -> Result<()> {
        self.idle
            .lock()
            .iter_mut()
            .map(Lane::drain)
            .fold(Ok(()), Result::and)
    }

    fn pinned_bytes(&self) -> usize {
        2 * self.capacity.load(Ordering::Relaxed) * self.made.load(Ordering::Relaxed)
    }
}

/// A lane taken by one thread, with the device's context current on it; given back (and
/// the context popped) when dropped.
struct TakenLane<'p> {
    pool: &'p StagingPool,
    lane: Option<Lane>,
    _bound: Bound,
}

impl TakenLane<'_> {
    fn lane(&mut self) -> &mut Lane {
        self.lane
            .as_mut()
            .expect("a taken lane is held until dropped")
    }
}

impl crate::sink::Writer for TakenLane<'_> {
    fn capacity(&self) -> usize {
        self.lane.as_ref().map_or(0, Lane::capacity)
    }

    fn buffer<'s>(&'s mut self, place: crate::sink::Place<'s>, len: usize) -> Result<&'s mut [u8]> {
        match place {
            crate::sink::Place::Address(_) => self.lane().buffer(len),
            crate::sink::Place::Memory(_) => Err(Error::invalid(
                "internal error: host memory given to a CUDA staging lane",
            )),
        }
    }

    fn deliver(
        &mut self,
        copies: &[(u64, usize, usize)],
    ) -> std::result::Result<(), (usize, Error)> {
        self.lane().send(copies)
    }
}

impl Drop for TakenLane<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            self.pool.idle.lock().push(lane);
            self.pool.returned.notify_one();
        }
    }
}

/// Device memory plaid allocated for a load (`Deserializer::load_to_cuda`): one
/// allocation holding every selected tensor, 256-byte aligned. Freed on drop.
pub struct CudaArena {
    device: Arc<Device>,
    base: sys::CUdeviceptr,
    spans: Vec<Option<(u64, u64)>>,
}

// SAFETY: device memory is not tied to a thread.
unsafe impl Send for CudaArena {}
// SAFETY: read-only access to addresses.
unsafe impl Sync for CudaArena {}

impl std::fmt::Debug for CudaArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaArena")
            .field("device", &self.device.ordinal)
            .field("base", &format_args!("{:#x}", self.base))
            .finish()
    }
}

impl CudaArena {
    /// Allocate room on `device` for the tensors of `sizes` that are `Some`.
    pub(crate) fn allocate(device: i32, sizes: &[Option<u64>]) -> Result<CudaArena> {
        let device = Device::open(device)?;
        let (ranges, total) = crate::sink::pack(sizes, 256)?;
        let spans = ranges
            .into_iter()
            .map(|r| r.map(|(at, n)| (at as u64, n as u64)))
            .collect();
        let mut base: sys::CUdeviceptr = 0;
        if total > 0 {
            let _bound = device.bind()?;
            // SAFETY: `base` is writable; a context is current.
            check(unsafe { sys::cuMemAlloc_v2(&mut base, total) }, || {
                format!("allocating {total} bytes on CUDA device {}", device.ordinal)
            })?;
        }
        Ok(CudaArena {
            device,
            base,
            spans,
        })
    }

    /// The device the memory is on.
    pub fn device(&self) -> i32 {
        self.device.ordinal
    }

    /// The device address and length of tensor `index`, if it was loaded.
    pub fn tensor(&self, index: usize) -> Option<(u64, u64)> {
        self.spans
            .get(index)
            .copied()
            .flatten()
            .map(|(at, n)| (self.base + at, n))
    }
}

impl Drop for CudaArena {
    fn drop(&mut self) {
        if self.base != 0 {
            if let Ok(_bound) = self.device.bind() {
                // SAFETY: allocated by cuMemAlloc; every copy into it was waited for.
                let _ = unsafe { sys::cuMemFree_v2(self.base) };
            }
        }
    }
}

/// Copy `len` bytes of device memory at `src` to the host through two pinned buffers of
/// `chunk` bytes, calling `sink(offset, bytes)` on each piece while the next one is being
/// copied.
pub(crate) fn copy_from_device(
    device: i32,
    src: u64,
    len: u64,
    chunk: usize,
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let device = Device::open(device)?;
    let mut buffers = [Pinned::new(&device, chunk)?, Pinned::new(&device, chunk)?];
    let _bound = device.bind()?;
    let stream = Stream::new(&device)?;
    let piece = |at: u64| (len - at).min(chunk as u64) as usize;
    let start = |buffer: &mut Pinned, at: u64| -> Result<()> {
        let n = piece(at);
        check(
            // SAFETY: `n` bytes into an owned pinned buffer, synchronized before it is read.
            unsafe { sys::cuMemcpyDtoHAsync_v2(buffer.ptr.cast(), src + at, n, stream.raw) },
            || format!("copying {n} bytes from device address {:#x}", src + at),
        )
    };
    let wait = || {
        // SAFETY: plaid's stream.
        check(unsafe { sys::cuStreamSynchronize(stream.raw) }, || {
            "waiting for a device-to-host copy".into()
        })
    };
    let mut at = 0u64;
    let mut k = 0;
    if len > 0 {
        start(&mut buffers[0], 0)?;
    }
    let result = (|| {
        while at < len {
            wait()?;
            let n = piece(at);
            let next = at + n as u64;
            if next < len {
                // The stream is idle: the next copy runs while this piece is consumed.
                start(&mut buffers[1 - k], next)?;
            }
            sink(at, buffers[k].bytes(n))?;
            at = next;
            k = 1 - k;
        }
        Ok(())
    })();
    // Nothing may still be copying into the buffers when they are freed.
    let drained = wait();
    result.and(drained)
}

/// The number of CUDA devices, or why CUDA cannot be used ([`Error::NoCuda`] without a
/// driver library).
pub fn device_count() -> Result<usize> {
    init()?;
    let mut count = 0;
    // SAFETY: `count` is writable.
    check(unsafe { sys::cuDeviceGetCount(&mut count) }, || {
        "counting CUDA devices".into()
    })?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// The ceiling for loads into device memory, measured: copy `total` bytes from one pinned
/// buffer of `piece` bytes to device memory on `device` with `cuMemcpyHtoDAsync` on one
/// stream, `rounds` times, and return each round's duration. For `plaid bench` and the GPU
/// check.
pub fn pinned_htod_times(
    device: i32,
    total: u64,
    piece: usize,
    rounds: usize,
) -> Result<Vec<std::time::Duration>> {
    let handle = Device::open(device)?;
    let staging = Pinned::new(&handle, piece)?;
    let arena = CudaArena::allocate(device, &[Some(piece as u64)])?;
    let (dst, _) = arena.tensor(0).expect("allocated");
    let _bound = handle.bind()?;
    let stream = Stream::new(&handle)?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(piece as u64) as usize;
            check(
                // SAFETY: `n` bytes of an owned pinned buffer to owned device memory.
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(dst, staging.bytes(n).as_ptr().cast(), n, stream.raw)
                },
                || "copying to the device".into(),
            )?;
            done += n as u64;
        }
        // SAFETY: plaid's stream.
        check(unsafe { sys::cuStreamSynchronize(stream.raw) }, || {
            "waiting for the copies".into()
        })?;
        times.push(started.elapsed());
    }
    Ok(times)
}
