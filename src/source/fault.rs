use std::io;

use super::Source;
use crate::error::{Error, Result};

/// A decorator that fails every read touching bytes at or past `fail_from`, the way a
/// network source behaves when its server dies mid-stream. For tests.
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
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.fail_from {
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
        self.inner.read_at(offset, buf)
    }
}
