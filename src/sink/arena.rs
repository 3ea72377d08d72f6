//! Host memory allocated by plaid for a `load_file`-style load: one allocation for all
//! tensors, its pages faulted in by the workers as they write, optionally on transparent
//! huge pages.

use crate::error::{Error, Result};

/// Alignment of each tensor inside an arena.
pub const ARENA_ALIGN: usize = 64;

/// A buffer's start and length inside an allocation.
pub(crate) type Span = (usize, usize);

/// Lay buffers of the given sizes (`None`: no buffer at that position) end to end, each
/// starting at a multiple of `align`: their `(start, len)` and the total length, or an
/// error when they do not fit in the address space.
pub(crate) fn pack(sizes: &[Option<u64>], align: usize) -> Result<(Vec<Option<Span>>, usize)> {
    let too_big = || Error::invalid("the tensors do not fit in the address space");
    let mut ranges = Vec::with_capacity(sizes.len());
    let mut cursor = 0usize;
    for &size in sizes {
        let Some(size) = size else {
            ranges.push(None);
            continue;
        };
        let len = usize::try_from(size).map_err(|_| too_big())?;
        let start = cursor.checked_next_multiple_of(align).ok_or_else(too_big)?;
        cursor = start.checked_add(len).ok_or_else(too_big)?;
        ranges.push(Some((start, len)));
    }
    Ok((ranges, cursor))
}

/// Tensors loaded into one allocation made by plaid ([`crate::Deserializer::load_to_host`]).
/// Freed when dropped.
pub struct HostArena {
    ptr: *mut u8,
    len: usize,
    /// Per tensor of the file: its range in the arena, `None` where it was not loaded.
    ranges: Vec<Option<(usize, usize)>>,
}

// SAFETY: the arena owns its memory exclusively; `&self` gives only shared access.
unsafe impl Send for HostArena {}
// SAFETY: as above.
unsafe impl Sync for HostArena {}

impl std::fmt::Debug for HostArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostArena")
            .field("len", &self.len)
            .field("tensors", &self.ranges.iter().flatten().count())
            .finish()
    }
}

impl HostArena {
    /// One untouched allocation holding a buffer of each given size (`None`: no buffer at
    /// that position), each 64-byte aligned, on transparent huge pages if `huge_pages`.
    /// Buffer `i` is [`HostArena::tensor_mut`]`(i)`.
    pub fn allocate(sizes: &[Option<u64>], huge_pages: bool) -> Result<HostArena> {
        let (ranges, total) = pack(sizes, ARENA_ALIGN)?;
        let len = total.max(1);
        // SAFETY: an anonymous private mapping, checked for failure below. Its pages are
        // zero until written and are faulted in by whoever writes them first.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                format!("allocating {len} bytes of host memory for the tensors"),
                std::io::Error::last_os_error(),
            ));
        }
        if huge_pages {
            // Where the kernel refuses the advice, 4 KiB pages work the same, only slower.
            // SAFETY: advice on the mapping just made.
            unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        }
        Ok(HostArena {
            ptr: ptr.cast(),
            len,
            ranges,
        })
    }

    /// The bytes of tensor `index` (file order), if it was loaded.
    pub fn tensor(&self, index: usize) -> Option<&[u8]> {
        let (start, len) = (*self.ranges.get(index)?)?;
        // SAFETY: the range lies inside the allocation, which lives as long as `self`.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) })
    }

    /// The bytes of tensor `index`, writable, if it was loaded.
    pub fn tensor_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let (start, len) = (*self.ranges.get(index)?)?;
        // SAFETY: as in `tensor`, and `&mut self` makes the access exclusive.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) })
    }

    /// Address and length of tensor `index`, if it was loaded, without making a slice
    /// (for the C API, which hands out a writable pointer).
    pub(crate) fn tensor_ptr(&self, index: usize) -> Option<(*mut u8, usize)> {
        let (start, len) = (*self.ranges.get(index)?)?;
        // SAFETY: the range lies inside the allocation.
        Some((unsafe { self.ptr.add(start) }, len))
    }

    /// Every loaded tensor's buffer, by file index, for the pipeline to fill.
    pub(crate) fn buffers(&mut self) -> Vec<Option<&mut [u8]>> {
        self.ranges
            .iter()
            .map(|r| {
                // SAFETY: the ranges never overlap and lie inside the allocation; the
                // slices borrow `self` mutably, so nothing else reaches the memory meanwhile.
                r.map(|(start, len)| unsafe {
                    std::slice::from_raw_parts_mut(self.ptr.add(start), len)
                })
            })
            .collect()
    }

    /// Bytes allocated.
    pub fn allocated(&self) -> usize {
        self.len
    }
}

impl Drop for HostArena {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
