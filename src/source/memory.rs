use std::sync::Arc;

use super::{past_end, slice_range, BytesFn, Mappable, Source};
use crate::error::Result;

/// Bytes held in memory: for tests, fuzzing and small embedded models.
#[derive(Clone, Debug)]
pub struct MemorySource {
    name: String,
    bytes: Arc<[u8]>,
}

impl MemorySource {
    /// A source over `bytes`, called `name` in messages.
    pub fn new(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> MemorySource {
        MemorySource {
            name: name.into(),
            bytes: bytes.into(),
        }
    }

    fn range(&self, offset: u64, len: u64) -> Result<&[u8]> {
        slice_range(&self.bytes, offset, len)
            .ok_or_else(|| past_end(&self.name, self.len(), offset, len as usize))
    }
}

impl Source for MemorySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let left = self.len().saturating_sub(offset);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(self.range(offset, n as u64)?);
        Ok(n)
    }

    fn mappable(&self) -> Option<&dyn Mappable> {
        Some(self)
    }
}

impl Mappable for MemorySource {
    fn with_bytes(&self, offset: u64, len: usize, f: &mut BytesFn<'_>) -> Option<Result<()>> {
        Some(self.range(offset, len as u64).and_then(f))
    }

    fn view(&self, offset: u64, len: u64) -> Result<&[u8]> {
        self.range(offset, len)
    }
}
