//! The C shell: thin projections of the core onto the C ABI declared in `include/plaid.h`.
//!
//! Every exported function runs its body inside [`boundary`]: panics become
//! `PLAID_ERR_PANIC`, errors become a status plus a thread-local message. Pointers are
//! checked before any work. Nothing here holds business logic.

#![allow(non_camel_case_types)]

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

/// Check that an out-pointer is non-NULL.
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    Ok(())
}

/// Move `value` into a new heap handle and store it in `*out`.
///
/// # Safety
/// `out` is non-NULL and writable.
pub(crate) unsafe fn publish<T>(out: *mut *mut T, value: T) {
    // SAFETY: checked non-NULL by the caller before any work.
    unsafe { *out = Box::into_raw(Box::new(value)) };
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
