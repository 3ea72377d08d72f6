//! Headers through read-ahead: the first bytes of a source are fetched in one request and
//! kept, so that format detection and header parsing, which read small pieces one after
//! another, cost one round trip instead of one per piece.

use parking_lot::Mutex;

use super::{read_some, Source};
use crate::error::Result;

/// The most bytes fetched by the first read of a [`ReadAhead`] made for a source: enough
/// for the header of a plaid or safetensors file of thousands of tensors. A source whose
/// merge gap is smaller gets that (at least 64 KiB): where skipping bytes is cheap (a local
/// file), so is a second read.
pub const READ_AHEAD: u64 = 1 << 20;
/// The least read-ahead of [`ReadAhead::for_source`].
const MIN_READ_AHEAD: u64 = 64 << 10;
/// The window grows (doubling) up to this while reads continue where it ends; beyond, reads
/// go straight to the source.
const MAX_WINDOW: u64 = 256 << 20;

/// A decorator that serves reads at the start of a source from one window fetched on the
/// first read (`size` bytes), growing it, doubled, while reads continue right where it
/// ends. Reads elsewhere go straight to the source, concurrently. Forwards only the core of
/// [`Source`].
pub struct ReadAhead<S> {
    inner: S,
    size: u64,
    /// The bytes from offset 0 fetched so far.
    window: Mutex<Vec<u8>>,
}

impl<S: Source> ReadAhead<S> {
    /// Read `inner` ahead by `size` bytes.
    pub fn new(inner: S, size: u64) -> ReadAhead<S> {
        ReadAhead {
            inner,
            size: size.max(1),
            window: Mutex::new(Vec::new()),
        }
    }

    /// Read `inner` ahead by as much as its hints make worth it: its merge gap, between
    /// 64 KiB and [`READ_AHEAD`].
    pub fn for_source(inner: S) -> ReadAhead<S> {
        let size = inner.hints().merge_gap.clamp(MIN_READ_AHEAD, READ_AHEAD);
        ReadAhead::new(inner, size)
    }

    /// Fetch `want` more bytes (fewer at the end of the source) onto the window. The
    /// bytes past `needed` are a guess: a read of them that fails (a source that dies
    /// further on) leaves the window shorter, and only a failure before `needed` is an
    /// error.
    fn grow(&self, window: &mut Vec<u8>, want: u64, needed: u64) -> Result<()> {
        let start = window.len() as u64;
        let end = start.saturating_add(want).min(self.inner.len());
        // Bounded by MAX_WINDOW; still, memory the system refuses means no read-ahead (the
        // read goes to the source directly), never an abort.
        let mut more = Vec::new();
        let want = usize::try_from(end - start).unwrap_or(usize::MAX);
        if more.try_reserve_exact(want).is_err() || window.try_reserve(want).is_err() {
            return Ok(());
        }
        more.resize(want, 0);
        let mut filled = 0;
        let mut failed = None;
        while filled < more.len() {
            match read_some(&self.inner, start + filled as u64, &mut more[filled..]) {
                Ok(n) => filled += n,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        window.extend_from_slice(&more[..filled]);
        match failed {
            Some(e) if window.len() as u64 <= needed.saturating_sub(1) => Err(e),
            _ => Ok(()),
        }
    }
}

impl<S: Source> Source for ReadAhead<S> {
    pass_on!(inner: name, len, hints, begin);

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() || offset >= self.inner.len() {
            return Ok(0);
        }
        {
            let mut window = self.window.lock();
            let have = window.len() as u64;
            // Small reads grow the window; a read larger than the read-ahead is one request
            // anyway, and goes straight into `buf` (a copy kept in the window too would
            // double what a large header costs).
            let small = buf.len() as u64 <= self.size;
            if have == 0 && offset < self.size && small {
                let want = self.size.max(offset + buf.len() as u64);
                self.grow(&mut window, want, offset + 1)?;
            } else if offset == have && have < MAX_WINDOW && small {
                self.grow(&mut window, have.max(buf.len() as u64), offset + 1)?;
            }
            if offset < window.len() as u64 {
                let at = offset as usize;
                let n = buf.len().min(window.len() - at);
                buf[..n].copy_from_slice(&window[at..at + n]);
                return Ok(n);
            }
        }
        self.inner.read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{read_exact, CountingSource, MemorySource};

    #[test]
    fn small_reads_at_the_start_cost_one_request_and_the_window_grows() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let counted = CountingSource::new(MemorySource::new("m", bytes.clone()));
        let counts = counted.counts();
        let ahead = ReadAhead::new(counted, 1000);
        let mut piece = [0u8; 10];
        for at in (0..900).step_by(10) {
            read_exact(&ahead, at, &mut piece).unwrap();
            assert_eq!(piece, bytes[at as usize..at as usize + 10]);
        }
        assert_eq!(counts.reads(), 1);
        // Reading on from the end of the window grows it: 1000 more, then 2000 more.
        let mut rest = vec![0u8; 2500];
        read_exact(&ahead, 500, &mut rest).unwrap();
        assert_eq!(rest, bytes[500..3000]);
        assert_eq!(counts.reads(), 2);
        // Elsewhere: straight to the source.
        read_exact(&ahead, 9000, &mut piece).unwrap();
        assert_eq!(piece, bytes[9000..9010]);
        assert_eq!(counts.reads(), 3);
        assert_eq!(ahead.read_at(10_000, &mut piece).unwrap(), 0);
    }
}
