//! Decorators for tests, benchmarks and diagnostics: one that counts reads, one that
//! behaves like a network stream (seeded random short reads, served out of order).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Source, SourceHints};
use crate::error::Result;

/// What a [`CountingSource`] saw, shared with whoever holds a handle to it.
#[derive(Debug, Default)]
pub struct ReadCounts {
    reads: AtomicU64,
    bytes: AtomicU64,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl ReadCounts {
    /// Read calls so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
    /// Bytes returned so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
    /// The most reads that were running at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }
}

/// A decorator that counts the reads and bytes of a source and the most reads running at
/// once. Forwards only the core of [`Source`].
#[derive(Debug)]
pub struct CountingSource<S> {
    inner: S,
    counts: Arc<ReadCounts>,
}

impl<S: Source> CountingSource<S> {
    /// Count the reads of `inner`.
    pub fn new(inner: S) -> CountingSource<S> {
        CountingSource {
            inner,
            counts: Arc::default(),
        }
    }

    /// The counts, which stay readable after the source is handed over.
    pub fn counts(&self) -> Arc<ReadCounts> {
        Arc::clone(&self.counts)
    }
}

impl<S: Source> Source for CountingSource<S> {
    pass_on!(inner: name, len, hints, begin);

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let now = self.counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.counts.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.counts.reads.fetch_add(1, Ordering::SeqCst);
        let result = self.inner.read_at(offset, buf);
        self.counts.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Ok(n) = result {
            self.counts.bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        result
    }
}

/// A stand-in for a network stream: every read returns a seeded random number of bytes
/// between 1 and `max_piece` (3 MiB by default), and waits a seeded random time up to
/// `jitter` first, so concurrent reads finish out of order. The piece sizes depend only on
/// the seed, the offset and the length asked for, so a run is reproducible whatever the
/// threads do. Forwards only the core of [`Source`].
#[derive(Debug)]
pub struct ShortReads<S> {
    inner: S,
    seed: u64,
    max_piece: usize,
    jitter: Duration,
    hints: SourceHints,
}

impl<S: Source> ShortReads<S> {
    /// Short reads of `inner` chosen by `seed`.
    pub fn new(inner: S, seed: u64) -> ShortReads<S> {
        ShortReads {
            hints: inner.hints(),
            inner,
            seed,
            max_piece: 3 << 20,
            jitter: Duration::from_micros(200),
        }
    }

    /// The largest piece one read returns (at least 1).
    pub fn max_piece(mut self, bytes: usize) -> Self {
        self.max_piece = bytes.max(1);
        self
    }

    /// The longest wait before a read returns.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The hints this source gives the pipeline.
    pub fn hints(mut self, hints: SourceHints) -> Self {
        self.hints = hints;
        self
    }
}

/// splitmix64: a well-mixed 64-bit value from any input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<S: Source> Source for ShortReads<S> {
    pass_on!(inner: name, len, begin);

    fn hints(&self) -> SourceHints {
        self.hints
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let r = mix(self.seed ^ mix(offset) ^ mix(buf.len() as u64).rotate_left(17));
        // Half the reads are tiny (1 to 64 bytes), the rest anything up to the maximum, so
        // pieces end at every kind of position.
        let cap = if r & 1 == 0 {
            self.max_piece.min(64)
        } else {
            self.max_piece
        };
        let n = 1 + ((r >> 8) % cap as u64) as usize;
        let jitter = self.jitter.as_nanos() as u64;
        if jitter > 0 {
            std::thread::sleep(Duration::from_nanos(mix(r) % jitter));
        }
        let n = n.min(buf.len());
        self.inner.read_at(offset, &mut buf[..n])
    }
}
