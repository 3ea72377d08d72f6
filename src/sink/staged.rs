//! Destinations that bytes reach through staging buffers: device memory. The pipeline
//! fills a buffer of a lane (verifying as it goes) and hands the filled bytes to the sink,
//! which copies them on while the lane's other buffer is being filled. Staging lanes are
//! their own resource, apart from the I/O threads and the CPU workers: an I/O thread takes
//! a lane for one job and gives it back, so pinned memory is lanes x 2 x the piece size
//! however many requests are in flight.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// A kind of staged destination: its lanes, and waiting for what was handed over.
pub(crate) trait StagedSink: Send + Sync {
    /// Make `lanes` lanes of buffers holding at least `piece` bytes each ready for a load.
    /// Called with no lane taken.
    fn prepare(&self, lanes: usize, piece: usize) -> Result<()>;
    /// A lane for the calling thread, until the returned value is dropped (on the same
    /// thread); waits while every lane is taken.
    fn lane(&self) -> Result<Box<dyn StagingLane + '_>>;
    /// Wait until every copy handed over has landed. Called with no lane taken.
    fn drain(&self) -> Result<()>;
    /// Page-locked host memory held for staging.
    fn pinned_bytes(&self) -> usize;
}

/// Two staging buffers used in turn: while the destination receives one, the other is
/// filled.
pub(crate) trait StagingLane {
    /// Bytes per buffer.
    fn capacity(&self) -> usize;
    /// The next buffer, `len` bytes of it, once its previous contents have been copied out.
    fn buffer(&mut self, len: usize) -> Result<&mut [u8]>;
    /// Copy out of the buffer last returned by [`StagingLane::buffer`]: `(destination
    /// address, offset in the buffer, length)` each; then move on to the other buffer. A
    /// failed copy comes back with its position.
    fn send(&mut self, copies: &[(u64, usize, usize)]) -> std::result::Result<(), (usize, Error)>;
}

impl dyn StagingLane + '_ {
    /// [`StagingLane::send`] of one copy of `len` bytes to `address`.
    pub(crate) fn send_one(&mut self, address: u64, len: usize) -> Result<()> {
        self.send(&[(address, 0, len)]).map_err(|(_, e)| e)
    }
}

/// The staged sinks a deserializer has used, kept between its loads (pinned memory is slow
/// to allocate), made on first use. Loads that stage take turns.
#[derive(Default)]
pub(crate) struct Sinks {
    cuda: Mutex<HashMap<i32, Arc<dyn StagedSink>>>,
    turn: Mutex<()>,
}

impl Sinks {
    /// The sink of CUDA device `device`, copying on `stream` (0: streams of plaid's own).
    pub(crate) fn cuda(&self, device: i32, stream: usize) -> Result<Arc<dyn StagedSink>> {
        let mut cuda = self.cuda.lock();
        if let Some(sink) = cuda.get(&device) {
            return Ok(Arc::clone(sink));
        }
        let sink: Arc<dyn StagedSink> = Arc::new(crate::cuda::StagingPool::new(device, stream)?);
        cuda.insert(device, Arc::clone(&sink));
        Ok(sink)
    }

    /// Exclusive use of the staged sinks for one load.
    pub(crate) fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock()
    }

    /// Pinned host memory held by every sink.
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.cuda.lock().values().map(|s| s.pinned_bytes()).sum()
    }
}
