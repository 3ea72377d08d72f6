//! The C shell: thin projections of the core onto the C ABI declared in `include/plaid.h`.
//!
//! Every exported function runs its body inside [`boundary`]: panics become
//! `PLAID_ERR_PANIC`, errors become a status plus a thread-local message. Pointers are
//! checked before any work. Nothing here holds business logic.

#![allow(non_camel_case_types)]

/// The body of an option setter: `$set(args)` applied in place to the options of the
/// handle `$options` (one field set, nothing cloned), inside [`ffi_boundary!`]; a setter
/// that cannot fail gives `PLAID_OK`.
macro_rules! set_option {
    ($options:ident, $set:ident($($arg:expr),*)) => {
        ffi_boundary! {
            let options = &mut handle_mut!($options, "options")?.inner;
            $crate::ffi::SetterResult::into_result(options.$set($($arg),*))
        }
    };
}

/// An out-pointer argument as `&mut`, or `PLAID_ERR_INVALID_ARGUMENT` naming it when NULL;
/// taken before any work, so that nothing is done for a call that cannot return its
/// result. Contract: NULL, or writable memory for one value that nothing else uses during
/// the call.
macro_rules! out_arg {
    ($ptr:expr, $what:literal) => {
        // SAFETY: every export's `# Safety` requires each out-pointer to be NULL (refused
        // here) or writable memory for one value, not used by anything else during the call.
        unsafe { $crate::ffi::out_arg($ptr, $what) }
    };
}

/// The body of a `_free` export: free the handle `$ptr` made by this library; NULL is a
/// no-op. Contract: NULL, or a live handle made by this library, freed at most once and
/// not while another call uses it.
macro_rules! free_handle {
    ($ptr:ident) => {
        ffi_boundary! {
            on_panic = ();
            // SAFETY: every `_free` export's `# Safety` requires `$ptr` to be NULL (a no-op)
            // or a live handle made by this library, freed once.
            unsafe { $crate::ffi::release($ptr) }
        }
    };
}

/// A copy of the options an options argument holds, or the defaults for NULL. Contract:
/// NULL, or a live handle made by this library; it is only read.
macro_rules! options_or_default {
    ($ptr:expr) => {
        // SAFETY: every export's `# Safety` requires each options argument to be NULL (the
        // defaults) or a live handle; it is only read.
        unsafe { $ptr.as_ref() }.map_or_else(Default::default, |o| o.inner.clone())
    };
}

/// A handle argument that may be NULL, as an `Option` (getters answer a default for NULL).
/// Contract: NULL, or a live handle made by this library; it is only read.
macro_rules! handle_opt {
    ($ptr:expr) => {
        // SAFETY: every export's `# Safety` requires each handle argument to be NULL or a
        // live handle made by this library; it is only read.
        unsafe { $ptr.as_ref() }
    };
}

// The argument helpers: each states the contract of one kind of pointer argument once,
// here; every export's `# Safety` section promises it for its arguments of that kind.

/// A shared reference to a handle argument, or `PLAID_ERR_INVALID_ARGUMENT` naming it
/// (`$what`) when NULL. Contract: NULL, or a live handle made by this library.
macro_rules! handle {
    ($ptr:expr, $what:literal) => {
        // SAFETY: every export's `# Safety` requires each handle argument to be NULL
        // (refused here) or a live handle made by this library.
        unsafe { $crate::ffi::handle($ptr, $what) }
    };
}

/// An exclusive reference to a handle argument, or `PLAID_ERR_INVALID_ARGUMENT` naming it
/// when NULL. Contract: NULL, or a live handle made by this library that no other thread
/// uses during the call.
macro_rules! handle_mut {
    ($ptr:expr, $what:literal) => {
        // SAFETY: every export's `# Safety` requires each handle it changes to be NULL
        // (refused here) or a live handle that no other thread uses during the call.
        unsafe { $crate::ffi::handle_mut($ptr, $what) }
    };
}

/// A `&str` from a C string argument, or `PLAID_ERR_INVALID_ARGUMENT` naming it when NULL
/// or not UTF-8. Contract: NULL, or a NUL-terminated string alive during the call.
macro_rules! c_str {
    ($ptr:expr, $what:literal) => {
        // SAFETY: every export's `# Safety` requires each string argument to be NULL
        // (refused here) or NUL-terminated and alive during the call.
        unsafe { $crate::ffi::c_str($ptr, $what) }
    };
}

#[macro_use]
pub mod boundary;
pub mod convert;
pub mod cuda_arena;
pub mod deserializer;
pub mod dtype;
pub mod filter;
pub mod host_arena;
pub mod placement;
pub mod progress;
pub mod read_options;
pub mod serializer;
pub mod source;
pub mod status;
pub mod version;
pub mod write_options;

use std::ffi::{c_char, CStr};

use crate::error::{Error, Result};

/// A `&str` from a C string, or `INVALID_ARGUMENT` for NULL or invalid UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes
        .to_str()
        .map_err(|e| Error::invalid(format!("{what} is not valid UTF-8 ({e})")))
}

/// A shared reference to a handle, or `INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `ptr` is NULL or a live handle created by this library.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// An exclusive reference to a handle, or `INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `ptr` is NULL or a live handle created by this library, not used concurrently.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: the caller passes NULL or a live handle it does not share during the call.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// What an in-place option setter returns, as a `Result`: nothing (it cannot fail) or
/// its `Result`.
pub(crate) trait SetterResult {
    fn into_result(self) -> Result<()>;
}

impl SetterResult for () {
    fn into_result(self) -> Result<()> {
        Ok(())
    }
}

impl SetterResult for Result<()> {
    fn into_result(self) -> Result<()> {
        self
    }
}

/// An out-pointer as `&mut`, or `INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to writable, aligned memory for one `T` that nothing else uses
/// during the call.
pub(crate) unsafe fn out_arg<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: the caller passes NULL or writable memory it does not share during the call.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// Move `value` into a new heap handle and store it in `*out`.
pub(crate) fn publish<T>(out: &mut *mut T, value: T) {
    *out = Box::into_raw(Box::new(value));
}

/// Free a handle made by [`publish`]; NULL is a no-op.
///
/// # Safety
/// `ptr` is NULL or a live handle from [`publish`], freed at most once.
pub(crate) unsafe fn release<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: created by Box::into_raw and freed at most once, as the caller promises.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// The error for a tensor an arena does not hold.
fn not_in_arena(index: usize) -> crate::error::Error {
    crate::error::Error::NotFound(format!("tensor #{index} is not in this arena"))
}
