use std::io;

use super::Source;
use crate::error::{Error, Result};

/// A decorator whose reads fail once they reach `fail_from`, the way a
/// network source behaves when its server dies mid-stream. Forwards only the core of
/// [`Source`] (no mapping), like every decorator. For tests.
#[derive(Debug)]
pub struct FailingSource<S> {
    inner: S,
    fail_from: u64,
}

impl<S: Source> FailingSource<S> {
    /// Wrap `inner`; reads reaching `fail_from` fail with an I/O error.
    pub fn new(inner: S, fail_from: u64) -> FailingSource<S> {
        FailingSource { inner, fail_from }
    }
}

impl<S: Source> Source for FailingSource<S> {
    pass_on!(inner: name, len, hints, begin);

    /// Bytes before `fail_from` arrive (a short read where the range reaches it); a read
    /// starting at or past it fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset < self.fail_from && !buf.is_empty() {
            let n =
                usize::try_from(self.fail_from - offset).map_or(buf.len(), |n| n.min(buf.len()));
            return self.inner.read_at(offset, &mut buf[..n]);
        }
        if !buf.is_empty() {
            return Err(Error::io(
                format!(
                    "reading {} bytes at offset {offset} of {}",
                    buf.len(),
                    self.name()
                ),
                io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset (injected fault)",
                ),
            ));
        }
        Ok(0)
    }
}
