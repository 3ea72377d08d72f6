//! The bytes a deserializer took from its source: what `plaid_deserializer_bytes_read`
//! reports (a load's "read from storage", as against the bytes it delivered).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{BytesFn, Mappable, Source};
use crate::error::Result;

/// A decorator that adds every byte read from `inner` (through [`Source::read_at`], or in
/// place through [`Mappable::with_bytes`]) to a shared counter. Forwards all of [`Source`]
/// and [`Mappable`]; zero-copy views are not counted (plaid does not read them).
pub struct Metered<S> {
    inner: S,
    bytes: Arc<AtomicU64>,
}

impl<S: Source> Metered<S> {
    /// Count the bytes read from `inner` into `bytes`.
    pub fn new(inner: S, bytes: Arc<AtomicU64>) -> Metered<S> {
        Metered { inner, bytes }
    }
}

impl<S: Source> Source for Metered<S> {
    pass_on!(inner: name, len, hints, begin);

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn mappable(&self) -> Option<&dyn Mappable> {
        self.inner.mappable().map(|_| self as &dyn Mappable)
    }
}

impl<S: Source> Mappable for Metered<S> {
    fn with_bytes(&self, offset: u64, len: usize, f: &mut BytesFn<'_>) -> Option<Result<()>> {
        let done = self.inner.mappable()?.with_bytes(offset, len, f);
        if matches!(done, Some(Ok(()))) {
            self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        done
    }

    fn view(&self, offset: u64, len: u64) -> Result<&[u8]> {
        match self.inner.mappable() {
            Some(map) => map.view(offset, len),
            None => Err(crate::error::Error::invalid(format!(
                "{}: this source cannot be viewed in place",
                self.inner.name()
            ))),
        }
    }

    fn check_mapped(&self) -> Result<()> {
        self.inner
            .mappable()
            .map_or(Ok(()), |map| map.check_mapped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{read_exact, MemorySource};

    #[test]
    fn counts_reads_and_in_place_bytes_but_not_views() {
        let bytes = Arc::new(AtomicU64::new(0));
        let source = Metered::new(MemorySource::new("m", vec![7u8; 1000]), Arc::clone(&bytes));
        let mut buf = [0u8; 300];
        read_exact(&source, 100, &mut buf).unwrap();
        assert_eq!(bytes.load(Ordering::Relaxed), 300);
        let map = source.mappable().expect("memory lends its bytes");
        let mut seen = 0;
        let done = map.with_bytes(0, 50, &mut |b| {
            seen = b.len();
            Ok(())
        });
        assert!(matches!(done, Some(Ok(()))));
        assert_eq!((seen, bytes.load(Ordering::Relaxed)), (50, 350));
        assert_eq!(map.view(10, 20).unwrap().len(), 20);
        assert_eq!(bytes.load(Ordering::Relaxed), 350);
    }
}
