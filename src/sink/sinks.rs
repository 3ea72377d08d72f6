//! How bytes reach a destination, behind one trait for every kind of memory: a [`Sink`]
//! hands out a [`Writer`] for a job, the pipeline fills the memory the writer gives it
//! (verifying as it goes) and the writer delivers it. Host memory is written in place and
//! delivered as it is; device memory is reached through staging lanes (two pinned buffers
//! used in turn: while the device receives one, the other is filled; CUDA's in
//! `crate::cuda`). Staging lanes are their own resource, apart from the I/O threads and the
//! CPU workers: an I/O thread takes one for a job and gives it back, so pinned memory is
//! lanes x 2 x the request size however many requests are in flight.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Where a piece of a destination lies.
pub(crate) enum Place<'d> {
    /// Host memory, written in place.
    Memory(&'d mut [u8]),
    /// An address in memory reached through staging (device memory).
    Address(u64),
}

/// A kind of destination memory.
pub(crate) trait Sink: Send + Sync {
    /// Make `lanes` writers of buffers holding at least `piece` bytes each ready for a load.
    /// Called with no writer out.
    fn prepare(&self, lanes: usize, piece: usize) -> Result<()> {
        let _ = (lanes, piece);
        Ok(())
    }
    /// A writer for the calling thread, until it is dropped (on the same thread); may wait
    /// while the sink's every writer is out.
    fn writer(&self) -> Result<Box<dyn Writer + '_>>;
    /// Wait until everything delivered has landed. Called with no writer out.
    fn drain(&self) -> Result<()> {
        Ok(())
    }
    /// Page-locked host memory held for staging.
    fn pinned_bytes(&self) -> usize {
        0
    }
}

/// Fills and deliveries for one job.
pub(crate) trait Writer {
    /// The most bytes one buffer holds.
    fn capacity(&self) -> usize;
    /// Memory to fill with the `len` bytes bound for `place`: the place itself in host
    /// memory, the next staging buffer otherwise (once its previous contents were copied
    /// out).
    fn buffer<'s>(&'s mut self, place: Place<'s>, len: usize) -> Result<&'s mut [u8]>;
    /// Deliver what the buffer last returned holds: `(destination address, offset in the
    /// buffer, length)` each. A failed copy comes back with its position.
    fn deliver(
        &mut self,
        copies: &[(u64, usize, usize)],
    ) -> std::result::Result<(), (usize, Error)>;
}

impl dyn Writer + '_ {
    /// [`Writer::deliver`] of one piece of `len` bytes for `address`.
    pub(crate) fn deliver_one(&mut self, address: u64, len: usize) -> Result<()> {
        self.deliver(&[(address, 0, len)]).map_err(|(_, e)| e)
    }
}

/// Host memory: filled in place, nothing to deliver.
pub(crate) struct HostSink;

impl Sink for HostSink {
    fn writer(&self) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(HostSink))
    }
}

impl Writer for HostSink {
    fn capacity(&self) -> usize {
        usize::MAX
    }

    fn buffer<'s>(&'s mut self, place: Place<'s>, len: usize) -> Result<&'s mut [u8]> {
        match place {
            Place::Memory(memory) => Ok(&mut memory[..len]),
            Place::Address(address) => Err(Error::invalid(format!(
                "internal error: host memory given as an address ({address:#x})"
            ))),
        }
    }

    fn deliver(
        &mut self,
        _copies: &[(u64, usize, usize)],
    ) -> std::result::Result<(), (usize, Error)> {
        Ok(())
    }
}

/// Makes the sink of a device: `(device, stream)` to the sink copying to that device on that
/// stream (0: streams of the sink's own). The layer that provides device memory (CUDA)
/// gives it; this layer names no device API.
pub(crate) type DeviceSinkFn = fn(i32, usize) -> Result<Arc<dyn Sink>>;

/// The device sinks a deserializer has used, kept between its loads (pinned memory is slow
/// to allocate), made on first use. Loads into device memory take turns.
pub(crate) struct Sinks {
    make: DeviceSinkFn,
    cuda: Mutex<HashMap<i32, Arc<dyn Sink>>>,
    turn: Mutex<()>,
}

impl Sinks {
    /// No sink yet; device sinks made by `make` when first needed.
    pub(crate) fn new(make: DeviceSinkFn) -> Sinks {
        Sinks {
            make,
            cuda: Mutex::default(),
            turn: Mutex::default(),
        }
    }

    /// The sink of CUDA device `device`, copying on `stream` (0: streams of plaid's own).
    pub(crate) fn cuda(&self, device: i32, stream: usize) -> Result<Arc<dyn Sink>> {
        let mut cuda = self.cuda.lock();
        if let Some(sink) = cuda.get(&device) {
            return Ok(Arc::clone(sink));
        }
        let sink = (self.make)(device, stream)?;
        cuda.insert(device, Arc::clone(&sink));
        Ok(sink)
    }

    /// Exclusive use of the device sinks for one load.
    pub(crate) fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock()
    }

    /// Pinned host memory held by every sink.
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.cuda.lock().values().map(|s| s.pinned_bytes()).sum()
    }
}
