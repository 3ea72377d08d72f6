//! The progress callback: C's `plaid_progress_fn` adapted into the core's [`ProgressFn`].

use std::ffi::c_void;

use crate::error::{Error, Result};
use crate::pipeline::Progress;

/// How far a load or verification has come; lent to the progress callback for the
/// duration of the call. This struct may grow at the end in later versions.
#[repr(C)]
#[derive(Debug, Default)]
pub struct plaid_progress {
    /// Bytes read (and verified, when verification is on) so far.
    pub bytes_done: u64,
    /// Bytes the operation reads in all.
    pub bytes_total: u64,
    /// Tensors whose every byte has landed.
    pub tensors_done: usize,
    /// Tensors the operation handles (those not skipped).
    pub tensors_total: usize,
}

/// Receives progress reports during `plaid_deserializer_load` and
/// `plaid_deserializer_verify`. It is called from plaid's worker threads (so `user_data`
/// must be usable from any thread), never by two threads at once for one operation (two
/// operations running at once on one handle report to it independently), at most once per the
/// read options' progress interval (100 ms by default), and always once more when every
/// byte has landed. Return 0 to go on; any other value stops the operation with
/// `PLAID_ERR_CANCELLED` (ignored in the last report, when nothing is left to stop).
/// It must return normally: no C++ exception or `longjmp` may leave it.
pub type plaid_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, progress: *const plaid_progress) -> i32>;

/// A C progress callback, its user data and the user data's finalizer, which runs when the
/// last holder (the deserializer's slot, or an operation that started with it) lets go.
#[derive(Debug)]
pub(crate) struct CallbackProgress {
    pub(crate) report: unsafe extern "C" fn(*mut c_void, *const plaid_progress) -> i32,
    pub(crate) user_data: *mut c_void,
    pub(crate) release: Option<unsafe extern "C" fn(*mut c_void)>,
}

impl Drop for CallbackProgress {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the caller's finalizer, called once: this is the last holder.
            unsafe { release(self.user_data) };
        }
    }
}

// SAFETY: the C contract above makes `user_data` usable from any thread; the callback is
// only called, never mutated, through shared references.
unsafe impl Send for CallbackProgress {}
// SAFETY: as above.
unsafe impl Sync for CallbackProgress {}

impl CallbackProgress {
    /// Pass one report to C.
    pub(crate) fn call(&self, progress: &Progress) -> Result<()> {
        let report = plaid_progress {
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            tensors_done: progress.tensors_done,
            tensors_total: progress.tensors_total,
        };
        // SAFETY: the caller's callback, given a struct that lives through the call.
        let rc = unsafe { (self.report)(self.user_data, &report) };
        if rc != 0 {
            return Err(Error::Cancelled(format!(
                "the progress callback returned {rc} after {} of {} bytes",
                progress.bytes_done, progress.bytes_total
            )));
        }
        Ok(())
    }
}
