//! Status codes and the thread-local error message.

use std::ffi::c_char;

use crate::error::Error;

/// The result of every fallible call. `PLAID_OK` (0) is success; every other value is
/// one of the `PLAID_ERR_*` constants, whose numbers never change.
pub type plaid_status = i32;

/// Success.
pub const PLAID_OK: plaid_status = 0;
/// A NULL handle or pointer, an unknown dtype or destination kind, invalid UTF-8, an
/// option out of range, or a call in the wrong state.
pub const PLAID_ERR_INVALID_ARGUMENT: plaid_status = 1;
/// The operating system refused a read or a write.
pub const PLAID_ERR_IO: plaid_status = 2;
/// The file is malformed, truncated or not in a known format (bad magic).
pub const PLAID_ERR_FORMAT: plaid_status = 3;
/// A valid file using an unknown format version, dtype or feature.
pub const PLAID_ERR_UNSUPPORTED: plaid_status = 4;
/// Data does not match its stored checksum.
pub const PLAID_ERR_CHECKSUM: plaid_status = 5;
/// A destination is smaller than its tensor; nothing was written to it.
pub const PLAID_ERR_CAPACITY: plaid_status = 6;
/// A callback returned non-zero.
pub const PLAID_ERR_CANCELLED: plaid_status = 7;
/// No tensor by that name, no metadata key, or no such file or object (a remote object
/// that does not exist: HTTP 404, `NoSuchKey`).
pub const PLAID_ERR_NOT_FOUND: plaid_status = 8;
/// A CUDA destination was requested but no usable CUDA driver exists.
pub const PLAID_ERR_NO_CUDA: plaid_status = 9;
/// The CUDA driver reported an error.
pub const PLAID_ERR_CUDA: plaid_status = 10;
/// An internal error (a bug in plaid) was caught at the boundary.
pub const PLAID_ERR_PANIC: plaid_status = 11;
/// encrypted and no key given, or authentication failed (wrong key or damaged
/// ciphertext); the message says which and names the tensor
pub const PLAID_ERR_DECRYPT: plaid_status = 12;

pub(crate) fn status_of(error: &Error) -> plaid_status {
    match error {
        Error::InvalidArgument(_) => PLAID_ERR_INVALID_ARGUMENT,
        Error::Io { .. } => PLAID_ERR_IO,
        Error::Format { .. } => PLAID_ERR_FORMAT,
        Error::Unsupported(_) => PLAID_ERR_UNSUPPORTED,
        Error::Checksum { .. } | Error::HashMismatch { .. } => PLAID_ERR_CHECKSUM,
        Error::Capacity { .. } => PLAID_ERR_CAPACITY,
        Error::Cancelled(_) => PLAID_ERR_CANCELLED,
        Error::NotFound(_) => PLAID_ERR_NOT_FOUND,
        Error::NoCuda(_) => PLAID_ERR_NO_CUDA,
        Error::Cuda(_) => PLAID_ERR_CUDA,
        Error::Decrypt(_) => PLAID_ERR_DECRYPT,
    }
}

/// The name of a status as a static NUL-terminated string (`"PLAID_ERR_IO"`), or
/// `"PLAID_ERR_UNKNOWN"` for a number that is not a status. Never NULL; never free it.
#[no_mangle]
pub extern "C" fn plaid_status_name(status: plaid_status) -> *const c_char {
    ffi_boundary! {
        on_panic = c"PLAID_ERR_UNKNOWN".as_ptr();
        let name = match status {
            PLAID_OK => c"PLAID_OK",
            PLAID_ERR_INVALID_ARGUMENT => c"PLAID_ERR_INVALID_ARGUMENT",
            PLAID_ERR_IO => c"PLAID_ERR_IO",
            PLAID_ERR_FORMAT => c"PLAID_ERR_FORMAT",
            PLAID_ERR_UNSUPPORTED => c"PLAID_ERR_UNSUPPORTED",
            PLAID_ERR_CHECKSUM => c"PLAID_ERR_CHECKSUM",
            PLAID_ERR_CAPACITY => c"PLAID_ERR_CAPACITY",
            PLAID_ERR_CANCELLED => c"PLAID_ERR_CANCELLED",
            PLAID_ERR_NOT_FOUND => c"PLAID_ERR_NOT_FOUND",
            PLAID_ERR_NO_CUDA => c"PLAID_ERR_NO_CUDA",
            PLAID_ERR_CUDA => c"PLAID_ERR_CUDA",
            PLAID_ERR_PANIC => c"PLAID_ERR_PANIC",
            PLAID_ERR_DECRYPT => c"PLAID_ERR_DECRYPT",
            _ => c"PLAID_ERR_UNKNOWN",
        };
        name.as_ptr()
    }
}

/// Copy the message of the last failed call on this thread into `buf`, with `snprintf`
/// semantics: at most `len - 1` bytes and always a terminating NUL (when `len > 0`).
///
/// Returns the full length of the message in bytes, without the NUL, so a return value
/// `>= len` means it was cut short. `buf` may be NULL when `len` is 0, to ask for the
/// length. The message is UTF-8 and names the file, tensor and offset where known. It is
/// cleared by the next fallible call on this thread that succeeds.
///
/// # Safety
/// `buf` is NULL or points to at least `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn plaid_last_error_message(buf: *mut c_char, len: usize) -> usize {
    ffi_boundary! {
        on_panic = 0;
        super::boundary::with_message(|message| {
            if !buf.is_null() && len > 0 {
                let n = message.len().min(len - 1);
                // SAFETY: buf holds len >= n + 1 writable bytes, as `# Safety` requires.
                unsafe {
                    std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            message.len()
        })
    }
}
