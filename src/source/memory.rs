use std::sync::Arc;

use super::{past_end, Source};
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
}

impl MemorySource {
    fn range(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

impl Source for MemorySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self.range(offset, buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(past_end(&self.name, self.len(), offset, buf.len())),
        }
    }

    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Option<Result<()>> {
        Some(match self.range(offset, len) {
            Some(bytes) => f(bytes),
            None => Err(past_end(&self.name, self.len(), offset, len)),
        })
    }

    fn mapped(&self) -> Result<Option<&[u8]>> {
        Ok(Some(&self.bytes))
    }
}
