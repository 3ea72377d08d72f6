//! Several sources seen as one: the shards of a sharded checkpoint, laid end to end.

use super::{past_end, Source};
use crate::error::Result;

/// Sources laid end to end in one address space: part `k` starts where part `k - 1` ends.
pub struct MultiSource {
    name: String,
    /// Each part with the offset of its first byte.
    parts: Vec<(u64, Box<dyn Source>)>,
    len: u64,
}

impl std::fmt::Debug for MultiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiSource")
            .field("name", &self.name)
            .field("parts", &self.parts.len())
            .finish()
    }
}

impl MultiSource {
    /// `parts` end to end, called `name` in messages.
    pub fn new(name: impl Into<String>, parts: Vec<Box<dyn Source>>) -> MultiSource {
        let mut base = 0;
        let parts = parts
            .into_iter()
            .map(|p| {
                let at = base;
                base += p.len();
                (at, p)
            })
            .collect();
        MultiSource {
            name: name.into(),
            parts,
            len: base,
        }
    }

    /// Where part `k` starts.
    pub fn base(&self, k: usize) -> u64 {
        self.parts[k].0
    }

    /// The part holding byte `offset`, and the offset inside it.
    fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let k = self
            .parts
            .partition_point(|(base, _)| *base <= offset)
            .checked_sub(1)?;
        let (base, part) = &self.parts[k];
        (offset - base < part.len()).then(|| (k, offset - base))
    }
}

impl Source for MultiSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let Some((k, inner)) = self.locate(at) else {
                return Err(past_end(&self.name, self.len, offset, buf.len()));
            };
            let part = &self.parts[k].1;
            let n = ((part.len() - inner) as usize).min(buf.len() - done);
            part.read_at(inner, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Option<Result<()>> {
        let (k, inner) = self.locate(offset)?;
        let part = &self.parts[k].1;
        if inner + len as u64 > part.len() {
            return None; // spans two parts: read it instead
        }
        part.with_bytes(inner, len, f)
    }

    fn view(&self, offset: u64, len: u64) -> Result<Option<&[u8]>> {
        if len == 0 {
            return Ok(Some(&[]));
        }
        let Some((k, inner)) = self.locate(offset) else {
            return Err(past_end(&self.name, self.len, offset, len as usize));
        };
        let part = &self.parts[k].1;
        if inner.checked_add(len).is_none_or(|end| end > part.len()) {
            return Err(crate::Error::format(
                &self.name,
                offset,
                format!(
                    "{len} bytes at offset {offset} span two parts and cannot be viewed in place"
                ),
            ));
        }
        part.view(inner, len)
    }

    fn check_mapped(&self) -> Result<()> {
        self.parts.iter().try_for_each(|(_, p)| p.check_mapped())
    }
}
