//! Progress reports from the workers, throttled so that they cost nothing measurable, and
//! cancellation through them.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Result;

/// How far a load or a verification has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes read (and verified, when verification is on) so far.
    pub bytes_done: u64,
    /// Bytes the operation reads in all.
    pub bytes_total: u64,
    /// Tensors whose every byte has landed.
    pub tensors_done: usize,
    /// Tensors the operation handles (those not skipped).
    pub tensors_total: usize,
}

/// Receives progress reports, from worker threads but never two at once. Returning an
/// error stops the operation with that error (use [`crate::Error::Cancelled`]).
pub type ProgressFn<'p> = dyn Fn(&Progress) -> Result<()> + Sync + 'p;

/// Counts finished chunks and reports at most once per interval, plus once at the end.
pub(crate) struct Tracker<'p> {
    report: Option<&'p ProgressFn<'p>>,
    interval_ns: u64,
    started: Instant,
    bytes_total: u64,
    tensors_total: usize,
    bytes_done: AtomicU64,
    tensors_done: AtomicUsize,
    /// Chunks still to finish, per tensor of the file.
    chunks_left: Vec<AtomicU32>,
    next_report_ns: AtomicU64,
    reporting: Mutex<()>,
}

impl<'p> Tracker<'p> {
    /// A tracker for `tensors_total` tensors whose chunks are `(tensor, bytes)`.
    pub(crate) fn new(
        report: Option<&'p ProgressFn<'p>>,
        interval: Duration,
        file_tensors: usize,
        tensors_total: usize,
        chunks: impl Iterator<Item = (usize, u64)>,
    ) -> Self {
        let chunks_left: Vec<AtomicU32> = (0..file_tensors).map(|_| AtomicU32::new(0)).collect();
        let mut bytes_total = 0;
        for (tensor, bytes) in chunks {
            chunks_left[tensor].fetch_add(1, Ordering::Relaxed);
            bytes_total += bytes;
        }
        let with_data = chunks_left
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) > 0)
            .count();
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        Tracker {
            report,
            interval_ns,
            started: Instant::now(),
            bytes_total,
            tensors_total,
            bytes_done: AtomicU64::new(0),
            // Empty tensors have no chunk: they are done from the start.
            tensors_done: AtomicUsize::new(tensors_total.saturating_sub(with_data)),
            chunks_left,
            next_report_ns: AtomicU64::new(interval_ns),
            reporting: Mutex::new(()),
        }
    }

    /// Record a finished chunk; report if the interval has passed and nobody else is.
    pub(crate) fn chunk_done(&self, tensor: usize, bytes: u64) -> Result<()> {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if self.chunks_left[tensor].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tensors_done.fetch_add(1, Ordering::Relaxed);
        }
        let Some(report) = self.report else {
            return Ok(());
        };
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now < self.next_report_ns.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(_one_at_a_time) = self.reporting.try_lock() else {
            return Ok(());
        };
        self.next_report_ns
            .store(now.saturating_add(self.interval_ns), Ordering::Relaxed);
        report(&self.snapshot())
    }

    /// The last report, once every chunk is done. Its return value is ignored: nothing
    /// is left to cancel.
    pub(crate) fn finish(&self) {
        if let Some(report) = self.report {
            let _guard = self.reporting.lock();
            let _ = report(&self.snapshot());
        }
    }

    fn snapshot(&self) -> Progress {
        Progress {
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
            tensors_done: self.tensors_done.load(Ordering::Relaxed),
            tensors_total: self.tensors_total,
        }
    }
}
