//! Several sources seen as one: the shards of a sharded checkpoint, laid end to end.

use super::{past_end, BytesFn, Mappable, Source, SourceHints};
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

    fn hints(&self) -> SourceHints {
        self.parts
            .first()
            .map_or_else(SourceHints::local, |(_, p)| p.hints())
    }

    /// A read never crosses a part: it is short where the range reaches the next one.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let Some((k, inner)) = self.locate(offset) else {
            return Ok(0);
        };
        let part = &self.parts[k].1;
        let n = usize::try_from(part.len() - inner).map_or(buf.len(), |left| left.min(buf.len()));
        part.read_at(inner, &mut buf[..n])
    }

    fn mappable(&self) -> Option<&dyn Mappable> {
        self.parts
            .iter()
            .all(|(_, p)| p.mappable().is_some())
            .then_some(self as &dyn Mappable)
    }

    fn begin(&self) {
        for (_, part) in &self.parts {
            part.begin();
        }
    }
}

impl Mappable for MultiSource {
    fn with_bytes(&self, offset: u64, len: usize, f: &mut BytesFn<'_>) -> Option<Result<()>> {
        let (k, inner) = self.locate(offset)?;
        let part = &self.parts[k].1;
        if inner + len as u64 > part.len() {
            return None; // spans two parts: read it instead
        }
        part.mappable()?.with_bytes(inner, len, f)
    }

    fn view(&self, offset: u64, len: u64) -> Result<&[u8]> {
        if len == 0 {
            return Ok(&[]);
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
        match part.mappable() {
            Some(map) => map.view(inner, len),
            None => Err(crate::Error::Unsupported(format!(
                "{}: this source cannot be memory-mapped",
                part.name()
            ))),
        }
    }

    fn check_mapped(&self) -> Result<()> {
        self.parts
            .iter()
            .filter_map(|(_, p)| p.mappable())
            .try_for_each(|m| m.check_mapped())
    }
}
