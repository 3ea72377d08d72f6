//! Read-only memory maps of files, guarded against the `SIGBUS` of a file truncated
//! under its mapping.
//!
//! Touching a page of a shared file mapping that lies past the file's current end raises
//! `SIGBUS`, which kills the process by default. Another process truncating a model file
//! while plaid copies from it (or while a caller reads its zero-copy views) must not do
//! that, so every mapping plaid makes is registered with a process-wide `SIGBUS` handler.
//! When a fault's address lies inside a registered mapping, the handler maps a page of
//! zeros over the faulting page (`MAP_FIXED`), marks the mapping as damaged and returns:
//! the faulting instruction is retried and reads zeros. Whoever reads through the mapping
//! checks the mark afterwards and reports the truncation instead of trusting the bytes.
//! Faults anywhere else go to the handler that was installed before plaid's (or take the
//! default action), so plaid changes nothing for them.
//!
//! The guard cannot help if another handler for `SIGBUS` is installed after plaid's without
//! chaining to it; see `docs/LOADING.md`, "A file that shrinks under its mapping".

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use memmap2::{Advice, MmapOptions, MmapRaw, UncheckedAdvice};

/// Most mappings guarded at once; a file opened beyond that is read with `pread` instead.
const SLOTS: usize = 256;

/// The guarded-range slot and its protocol, written once and instantiated twice: here with
/// std's atomics (what the handler runs) and, in the tests, with loom's, which check it
/// under every interleaving.
macro_rules! slot_protocol {
    ($AtomicBool:ty, $AtomicUsize:ty) => {
        /// One guarded address range. `start == 0` marks a free slot.
        struct Slot {
            /// Set while the slot is claimed (between `claim` and `withdraw`).
            claimed: $AtomicBool,
            /// Odd while `start` and `end` change; a reader trusts a range only when it
            /// read the same even generation before and after it (a sequence lock).
            generation: $AtomicUsize,
            start: $AtomicUsize,
            end: $AtomicUsize,
            /// Set by the handler when it patched a page of this range.
            damaged: $AtomicBool,
        }

        impl Slot {
            /// Take the slot if it is free.
            fn claim(&self) -> bool {
                self.claimed
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            }

            /// Guard `start..end` (the slot claimed, `start` non-zero).
            fn publish(&self, start: usize, end: usize) {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.damaged.store(false, Ordering::Relaxed);
                self.end.store(end, Ordering::Release);
                self.start.store(start, Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
            }

            /// Stop guarding and free the slot.
            fn withdraw(&self) {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.start.store(0, Ordering::Release);
                self.end.store(0, Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.claimed.store(false, Ordering::Release);
            }

            /// The range guarded now, as one `publish` wrote it; `None` when the slot is
            /// free or changing. Never a start from one range with the end of another.
            fn range(&self) -> Option<(usize, usize)> {
                let before = self.generation.load(Ordering::Acquire);
                let start = self.start.load(Ordering::Acquire);
                let end = self.end.load(Ordering::Acquire);
                if before % 2 == 1 || self.generation.load(Ordering::Acquire) != before {
                    return None;
                }
                (start != 0).then_some((start, end))
            }
        }
    };
}

slot_protocol!(AtomicBool, AtomicUsize);

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    claimed: AtomicBool::new(false),
    generation: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
};
static GUARDED: [Slot; SLOTS] = [FREE; SLOTS];

/// The page size, read once before the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The action in place before plaid's handler, stored before plaid's is installed.
static mut PREVIOUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Install the handler once per process. Returns whether it is in place.
fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: plain libc calls on zeroed, then filled, `sigaction` structs; PREVIOUS is
        // written once here, before the handler that reads it can run.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return;
            }
            *std::ptr::addr_of_mut!(PREVIOUS) = Some(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    INSTALLED.load(Ordering::Acquire)
}

/// The `SIGBUS` handler. Async-signal-safe: atomics, `mmap` and `sigaction` only.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Only a fault raised by the kernel (si_code > 0) has an address; a SIGBUS sent with
    // kill() is never ours.
    for slot in GUARDED.iter().filter(|_| code > 0) {
        let Some((start, end)) = slot.range() else {
            continue;
        };
        if address < start || address >= end {
            continue;
        }
        let page = address & !(PAGE.load(Ordering::Relaxed) - 1);
        // SAFETY: the page lies inside a live mapping plaid owns; replacing it with an
        // anonymous read-only page of zeros keeps the range mapped and readable.
        let patched = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if patched != libc::MAP_FAILED {
            slot.damaged.store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not ours: behave as if plaid's handler were not there.
    // SAFETY: PREVIOUS was written before this handler was installed and never again.
    let previous = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    // SAFETY: calling the previously installed handler the way it asked to be called, or
    // restoring the default action so that the retried access terminates the process.
    unsafe {
        match previous {
            Some(p) if handler != libc::SIG_DFL && handler != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(handler);
                    f(signal, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    f(signal);
                }
            }
            _ => {
                // Take the default action now (a sent signal would not come back, and a
                // fault would only come back once the instruction is retried).
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
                libc::raise(signal);
            }
        }
    }
}

/// A read-only shared map of a whole file, guarded while it lives.
pub(crate) struct Mapping {
    map: MmapRaw,
    slot: usize,
}

// SAFETY: the mapping is read-only and never remapped while it lives; the handler's
// patches are page-granular replacements that keep every address readable.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: every access is a read of memory that stays mapped and readable.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len()).finish()
    }
}

impl Mapping {
    /// Map the first `len` bytes of `file`. `None` where the file cannot be mapped or
    /// guarded (empty, too many mappings, the handler could not be installed).
    pub(crate) fn new(file: &File, len: u64) -> Option<Mapping> {
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        if !install() {
            return None;
        }
        let map = MmapOptions::new().len(len).map_raw_read_only(file).ok()?;
        let slot = GUARDED.iter().position(Slot::claim)?;
        let start = map.as_ptr() as usize;
        GUARDED[slot].publish(start, start + len);
        let _ = map.advise(Advice::Sequential);
        Some(Mapping { map, slot })
    }

    /// Length of the mapping.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The mapped bytes. They read as zeros wherever the file was truncated after the
    /// mapping was made; [`Mapping::damaged`] tells whether that happened.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable for its whole length while `self` lives, and
        // the handler keeps it so even where the file shrank.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    /// Whether any page of the mapping was found past the end of the file.
    pub(crate) fn damaged(&self) -> bool {
        GUARDED[self.slot].damaged.load(Ordering::Acquire)
    }

    /// Whether every page of a range is in the page cache, so that copying it out of the
    /// mapping costs no I/O. A cold range is better read with `pread`, which reads ahead
    /// in large requests where faulting on the mapping would wait page by page.
    pub(crate) fn resident(&self, offset: usize, len: usize) -> bool {
        thread_local! {
            static PAGES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let page = PAGE.load(Ordering::Relaxed);
        let start = offset / page * page;
        let end = (offset + len).min(self.len());
        if end <= start {
            return true;
        }
        let count = (end - start).div_ceil(page);
        PAGES.with(|pages| {
            let mut pages = pages.borrow_mut();
            pages.resize(count, 0);
            // SAFETY: the range lies inside this mapping, and `pages` holds one byte per
            // page of it, as mincore requires.
            let rc = unsafe {
                libc::mincore(
                    self.map.as_ptr().add(start) as *mut libc::c_void,
                    end - start,
                    pages.as_mut_ptr(),
                )
            };
            rc == 0 && pages.iter().all(|&p| p & 1 != 0)
        })
    }

    /// Drop the page-table entries of a range that has been consumed, so a streaming
    /// copy keeps no more than its chunks resident. The page cache keeps the data.
    pub(crate) fn release(&self, offset: usize, len: usize) {
        let page = PAGE.load(Ordering::Relaxed);
        let start = offset / page * page;
        let end = (offset + len).min(self.len());
        if end > start {
            // SAFETY: the range lies inside this mapping; DONTNEED on a shared file map
            // discards nothing but page-table entries, which later reads fault back in.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        GUARDED[self.slot].withdraw();
    }
}

#[cfg(test)]
mod loom_model {
    //! The slot protocol under loom: a reader (the `SIGBUS` handler) racing with a mapping
    //! being registered, dropped and its slot reused never sees a torn range, which would
    //! make the handler patch pages outside any mapping of plaid's.

    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;

    slot_protocol!(AtomicBool, AtomicUsize);

    fn free() -> Slot {
        Slot {
            claimed: AtomicBool::new(false),
            generation: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            damaged: AtomicBool::new(false),
        }
    }

    /// Every interleaving with up to three preemptions (loom's recommended bound: the
    /// unbounded model of this many atomic operations runs for hours).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    #[test]
    fn the_handler_never_reads_a_torn_range() {
        model(|| {
            let slot = Arc::new(free());
            let writer = {
                let slot = slot.clone();
                loom::thread::spawn(move || {
                    assert!(slot.claim());
                    slot.publish(0x1000, 0x3000);
                    slot.withdraw();
                    assert!(slot.claim());
                    slot.publish(0x8000, 0x9000);
                })
            };
            let seen = slot.range();
            assert!(
                matches!(seen, None | Some((0x1000, 0x3000)) | Some((0x8000, 0x9000))),
                "torn range {seen:x?}"
            );
            writer.join().unwrap();
            assert_eq!(slot.range(), Some((0x8000, 0x9000)));
            assert!(!slot.damaged.load(Ordering::Relaxed));
        });
    }

    #[test]
    fn a_slot_is_claimed_by_one_mapping_at_a_time() {
        model(|| {
            let slot = Arc::new(free());
            let claims = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (slot, claims) = (slot.clone(), claims.clone());
                    loom::thread::spawn(move || {
                        if slot.claim() {
                            claims.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(claims.load(Ordering::Relaxed), 1);
        });
    }
}
