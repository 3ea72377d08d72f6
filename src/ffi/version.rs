//! Release and ABI versions, at compile time (macros) and at run time (functions).

use std::ffi::c_char;

/// Major release version.
pub const PLAID_VERSION_MAJOR: u32 = 0;
/// Minor release version.
pub const PLAID_VERSION_MINOR: u32 = 1;
/// Patch release version.
pub const PLAID_VERSION_PATCH: u32 = 0;
/// The ABI this header describes. A library whose `plaid_abi_version()` differs is not
/// compatible; the shared library's SONAME is `libplaid.so.<PLAID_ABI_VERSION>`.
pub const PLAID_ABI_VERSION: u32 = 2;

/// The library's release version, e.g. `"0.1.0"`: a static string, never freed.
#[no_mangle]
pub extern "C" fn plaid_version() -> *const c_char {
    ffi_boundary! {
        on_panic = c"".as_ptr();
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    }
}

/// The library's ABI version. Compare it with `PLAID_ABI_VERSION` at start-up and refuse
/// to run on a mismatch.
#[no_mangle]
pub extern "C" fn plaid_abi_version() -> u32 {
    ffi_boundary! {
        on_panic = PLAID_ABI_VERSION;
        crate::ABI_VERSION
    }
}
