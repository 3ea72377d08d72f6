//! Where bytes come from. A [`Source`] is a fixed-length byte range read with positional,
//! shareable reads that may return fewer bytes than asked (a network stream hands over what
//! has arrived), so many I/O threads can read one source at once and the pipeline can
//! consume bytes as they come. Mapping a source in memory is a separate, optional
//! capability ([`Mappable`]): decorators forward only the core, so a wrapped source always
//! takes the read path, never silently another one.

/// In a decorator's `impl Source`: pass the methods named (of `name`, `len`, `hints`,
/// `begin`) on to the source it wraps, `self.$inner`; the decorator writes the rest.
macro_rules! pass_on {
    ($inner:ident: $($method:ident),*) => { $(pass_on!(@ $inner $method);)* };
    (@ $inner:ident name) => {
        fn name(&self) -> &str {
            self.$inner.name()
        }
    };
    (@ $inner:ident len) => {
        fn len(&self) -> u64 {
            self.$inner.len()
        }
    };
    (@ $inner:ident hints) => {
        fn hints(&self) -> $crate::source::SourceHints {
            self.$inner.hints()
        }
    };
    (@ $inner:ident begin) => {
        fn begin(&self) {
            self.$inner.begin()
        }
    };
}

#[cfg(any(test, feature = "testing"))]
mod fault;
mod file;
mod map;
mod memory;
mod metered;
mod multi;
mod read_ahead;
#[cfg(any(test, feature = "testing"))]
mod testing;

#[cfg(any(test, feature = "testing"))]
pub use fault::FailingSource;
pub use file::FileSource;
pub use memory::MemorySource;
pub use metered::Metered;
pub use multi::MultiSource;
pub use read_ahead::{ReadAhead, READ_AHEAD};
// Test doubles: for this crate's tests, its integration tests and benchmarks (feature
// `testing`), not part of the API.
#[cfg(any(test, feature = "testing"))]
pub use testing::{CountingSource, ReadCounts, ShortReads};

use std::sync::Arc;

use crate::error::{Error, Result};

/// How a source is best read. The pipeline sizes its jobs, coalesces small tensors and
/// picks its I/O depth from these (read options may override the request size and depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceHints {
    /// Bytes per read request.
    pub request_bytes: u64,
    /// Bytes between two wanted ranges that are cheaper to read through than to skip
    /// with a second request.
    pub merge_gap: u64,
    /// Requests worth keeping in flight at once; 0: one per CPU worker (local storage,
    /// where reading is copying and costs a core).
    pub max_in_flight: u32,
}

/// Default request size of local files and memory.
pub const LOCAL_REQUEST_BYTES: u64 = 16 << 20;
/// Default merge gap of local files and memory.
pub const LOCAL_MERGE_GAP: u64 = 64 << 10;

impl SourceHints {
    /// Hints for the given request size (at least 1), merge gap and depth (0: one request
    /// per CPU worker).
    pub fn new(request_bytes: u64, merge_gap: u64, max_in_flight: u32) -> SourceHints {
        SourceHints {
            request_bytes: request_bytes.max(1),
            merge_gap,
            max_in_flight,
        }
    }

    /// Hints for local files and memory: 16 MiB requests, a 64 KiB merge gap, one request
    /// in flight per CPU worker.
    pub fn local() -> SourceHints {
        SourceHints::new(LOCAL_REQUEST_BYTES, LOCAL_MERGE_GAP, 0)
    }

    /// The requests to keep in flight when there are `cpu_workers` CPU workers.
    pub fn in_flight(&self, cpu_workers: usize) -> usize {
        match self.max_in_flight {
            0 => cpu_workers.max(1),
            n => n as usize,
        }
    }
}

impl Default for SourceHints {
    fn default() -> Self {
        SourceHints::local()
    }
}

/// A readable, fixed-length byte range.
pub trait Source: Send + Sync {
    /// A name for messages: the path or URL.
    fn name(&self) -> &str;
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Read up to `buf.len()` bytes at `offset` into the front of `buf` and return how
    /// many: between 1 and `buf.len()` (fewer is a short read; the caller asks again for
    /// the rest), and 0 only when `buf` is empty or `offset` is at or past the end. Use
    /// [`read_exact`] to fill a whole buffer.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// How this source is best read.
    fn hints(&self) -> SourceHints {
        SourceHints::local()
    }
    /// The source's bytes in memory, where it can lend them ([`Mappable`]).
    fn mappable(&self) -> Option<&dyn Mappable> {
        None
    }
    /// An operation (a load, a verification, a conversion) starts reading: a source that
    /// keeps state per operation starts it afresh (a remote source's retry budget: one per
    /// operation, shared by all its requests). Decorators pass it on.
    fn begin(&self) {}
}

/// What [`Mappable::with_bytes`] runs over the bytes it lends.
pub type BytesFn<'f> = dyn FnMut(&[u8]) -> Result<()> + 'f;

/// The optional capability of a source whose bytes lie in memory (a mapped file, bytes
/// held in memory): copies without a read, and zero-copy views.
pub trait Mappable: Send + Sync {
    /// Run `f` over the `len` bytes at `offset` in place, without copying them, where they
    /// can be lent now, and return what `f` returned. `None`: these bytes cannot be lent
    /// (not in the page cache, copying from the mapping turned off), or turned out after
    /// `f` ran to have changed under it (the file shrank under its mapping); the caller
    /// reads them with [`Source::read_at`] instead, which reports what the file holds now.
    fn with_bytes(&self, offset: u64, len: usize, f: &mut BytesFn<'_>) -> Option<Result<()>>;

    /// The `len` bytes at `offset` in place, inside a mapping that lives as long as the
    /// source (mapped on first use), for zero-copy views. A range past the end is an
    /// error.
    fn view(&self, offset: u64, len: u64) -> Result<&[u8]>;

    /// An error if bytes handed out by [`Mappable::view`] can no longer be trusted because
    /// the file shrank under its mapping.
    fn check_mapped(&self) -> Result<()> {
        Ok(())
    }
}

/// A source behind a pointer is the source.
macro_rules! forward_source {
    ($($pointer:ty),*) => {$(
        impl<S: Source + ?Sized> Source for $pointer {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn len(&self) -> u64 {
                (**self).len()
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
                (**self).read_at(offset, buf)
            }
            fn hints(&self) -> SourceHints {
                (**self).hints()
            }
            fn mappable(&self) -> Option<&dyn Mappable> {
                (**self).mappable()
            }
            fn begin(&self) {
                (**self).begin()
            }
        }
    )*};
}

forward_source!(Box<S>, Arc<S>, &S);

/// One read of up to `buf.len()` bytes at `offset`, at least one byte where `buf` is not
/// empty: a source that returns 0 before its end is truncated ([`Error::Format`]), one
/// that claims more than it was asked for is broken ([`Error::Io`]).
pub fn read_some(source: &dyn Source, offset: u64, buf: &mut [u8]) -> Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let n = source.read_at(offset, buf)?;
    if n == 0 {
        return Err(past_end(source.name(), offset, offset, buf.len()));
    }
    if n > buf.len() {
        return Err(Error::io(
            format!(
                "reading {} bytes at offset {offset} of {}",
                buf.len(),
                source.name()
            ),
            std::io::Error::other(format!(
                "the source returned {n} bytes for a read of {}",
                buf.len()
            )),
        ));
    }
    Ok(n)
}

/// Fill all of `buf` with the bytes at `offset`, asking again after short reads. Reading
/// past the end is a [`Error::Format`] naming the offset where the data ends.
pub fn read_exact(source: &dyn Source, offset: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        if source.len() <= at {
            return Err(past_end(source.name(), at, offset, buf.len()));
        }
        done += read_some(source, at, &mut buf[done..])?;
    }
    Ok(())
}

/// The error for a read of `want` bytes at `offset` that found the data ending at `end`.
pub(crate) fn past_end(name: &str, end: u64, offset: u64, want: usize) -> Error {
    Error::format(
        name,
        end,
        format!("truncated: reading {want} bytes at offset {offset} ran into the end of the data"),
    )
}

/// The byte range `offset..offset + len` of a slice, if it lies inside.
pub(crate) fn slice_range(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// The byte ranges `(offset, len)` that cover `wanted` (sorted by offset, not
/// overlapping), merging two neighbours where the gap between them is at most `merge_gap`
/// and the merged range is at most `max_len` long (a longer single range stays whole).
pub(crate) fn coalesce(wanted: &[(u64, u64)], merge_gap: u64, max_len: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &(offset, len) in wanted {
        if let Some(last) = ranges.last_mut() {
            let end = last.0 + last.1;
            if offset >= end && offset - end <= merge_gap && offset + len - last.0 <= max_len {
                last.1 = offset + len - last.0;
                continue;
            }
        }
        ranges.push((offset, len));
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_within_the_gap_and_the_length() {
        let wanted = [(0, 10), (15, 10), (100, 10), (111, 1000), (2000, 5)];
        assert_eq!(
            coalesce(&wanted, 5, 100),
            vec![(0, 25), (100, 10), (111, 1000), (2000, 5)]
        );
        assert_eq!(coalesce(&wanted, 10_000, 1 << 20), vec![(0, 2005)]);
        assert!(coalesce(&[], 1, 1).is_empty());
    }
}
