//! Where bytes come from. A source is a fixed-length byte range read with positional,
//! shareable reads, so many workers can read one source at once.

mod fault;
mod file;
mod map;
mod memory;
mod multi;

pub use fault::FailingSource;
pub use file::FileSource;
pub use memory::MemorySource;
pub use multi::MultiSource;

use crate::error::Result;

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
    /// Fill all of `buf` with the bytes at `offset`. Reading past the end is a
    /// [`crate::Error::Format`] naming the offset (the file is truncated).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Run `f` over the `len` bytes at `offset` in place, without copying them, where the
    /// source can (a memory map, bytes in memory), and return what `f` returned. `None`:
    /// the source cannot lend these bytes, or found after `f` ran that they changed under
    /// it (the file shrank under its mapping); the caller reads them with
    /// [`Source::read_at`] instead, which reports what the file holds now.
    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Option<Result<()>> {
        let _ = (offset, len, f);
        None
    }

    /// The whole source as one byte slice that lives as long as the source (mapping the
    /// file on first use), for zero-copy views; `Ok(None)` where the source cannot.
    fn mapped(&self) -> Result<Option<&[u8]>> {
        Ok(None)
    }

    /// The `len` bytes at `offset` in place, inside a mapping that lives as long as the
    /// source (mapped on first use), for zero-copy views; `Ok(None)` where the source
    /// cannot map them. A range past the end of the mapping is an error.
    fn view(&self, offset: u64, len: u64) -> Result<Option<&[u8]>> {
        let Some(bytes) = self.mapped()? else {
            return Ok(None);
        };
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(usize::try_from(len).ok()?)?));
        match range.and_then(|r| bytes.get(r)) {
            Some(view) => Ok(Some(view)),
            None => Err(past_end(
                self.name(),
                bytes.len() as u64,
                offset,
                len as usize,
            )),
        }
    }

    /// An error if bytes handed out by [`Source::mapped`] can no longer be trusted
    /// because the file shrank under its mapping.
    fn check_mapped(&self) -> Result<()> {
        Ok(())
    }
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Option<Result<()>> {
        (**self).with_bytes(offset, len, f)
    }
    fn mapped(&self) -> Result<Option<&[u8]>> {
        (**self).mapped()
    }
    fn view(&self, offset: u64, len: u64) -> Result<Option<&[u8]>> {
        (**self).view(offset, len)
    }
    fn check_mapped(&self) -> Result<()> {
        (**self).check_mapped()
    }
}

/// The error for a read of `want` bytes at `offset` that found the data ending at `end`.
pub(crate) fn past_end(name: &str, end: u64, offset: u64, want: usize) -> crate::Error {
    crate::Error::format(
        name,
        end,
        format!("truncated: reading {want} bytes at offset {offset} ran into the end of the data"),
    )
}
