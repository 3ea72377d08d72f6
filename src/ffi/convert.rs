//! `plaid_convert`: one file (or URL) to another format, as `plaid convert` does.

use std::ffi::c_char;

use super::read_options::plaid_read_options;
use super::status::plaid_status;
use super::write_options::plaid_write_options;
use crate::deserializer::Deserializer;

/// Convert the file at `input` (plaid, safetensors, a sharded checkpoint's index, or
/// tensorizer, detected from its bytes; a path or a URL) to `format` at `output`:
/// `"plaid"`, `"safetensors"` or `"tensorizer"`, or NULL to choose from `output`'s
/// extension (`.safetensors`, `.tensors`, else plaid). The metadata is carried over where
/// the output format holds it. Atomic: the result is written under a temporary name beside
/// `output` (a multipart upload for a URL), read back, verified and compared with the input,
/// and only then put in place; on failure `output` is as it was.
///
/// Returns `PLAID_ERR_INVALID_ARGUMENT` for NULL paths or an unknown format,
/// `PLAID_ERR_UNSUPPORTED` for a tensor the output format cannot hold, and the statuses of
/// `plaid_deserializer_open` and of writing.
///
/// # Safety
/// `input` and `output` are NULL (an error) or NUL-terminated; `format` is NULL or
/// NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plaid_convert(
    input: *const c_char,
    output: *const c_char,
    format: *const c_char,
) -> plaid_status {
    ffi_boundary! {
        // SAFETY: the pointers are as `convert` requires, by this function's `# Safety`;
        // NULL options are the defaults.
        unsafe { convert(input, output, format, std::ptr::null(), std::ptr::null()) }
    }
}

/// `plaid_convert` with options: `read` opens the input (NULL: the defaults), with the
/// key or passphrase of an encrypted input; `write` writes a plaid or tensorizer output
/// (NULL: the defaults), with the key or passphrase that encrypts it (plaid's
/// AEGIS-256X4 or AES-256-GCM; tensorizer's XSalsa20-Poly1305, which tensorizer reads with the same key
/// or passphrase). The written file is checked with that key. safetensors has no
/// encryption: asking for it with a key is `PLAID_ERR_INVALID_ARGUMENT`. An encrypted input
/// without its key is `PLAID_ERR_DECRYPT`, and nothing is written.
///
/// # Safety
/// `input` and `output` are NULL (an error) or NUL-terminated; `format` is NULL or
/// NUL-terminated; `read` and `write` are NULL or live handles.
#[no_mangle]
pub unsafe extern "C" fn plaid_convert_with(
    input: *const c_char,
    output: *const c_char,
    format: *const c_char,
    read: *const plaid_read_options,
    write: *const plaid_write_options,
) -> plaid_status {
    ffi_boundary! {
        // SAFETY: the pointers are as `convert` requires, by this function's `# Safety`.
        unsafe { convert(input, output, format, read, write) }
    }
}

/// Both conversions.
///
/// # Safety
/// As `plaid_convert_with`.
unsafe fn convert(
    input: *const c_char,
    output: *const c_char,
    format: *const c_char,
    read: *const plaid_read_options,
    write: *const plaid_write_options,
) -> crate::Result<()> {
    let (input, output) = (c_str!(input, "input")?, c_str!(output, "output")?);
    let format = if format.is_null() {
        None
    } else {
        Some(c_str!(format, "format")?)
    };
    let read = options_or_default!(read);
    let write = options_or_default!(write);
    let format = format.unwrap_or(if output.ends_with(".safetensors") {
        "safetensors"
    } else if output.ends_with(".tensors") {
        "tensorizer"
    } else {
        "plaid"
    });
    let source = Deserializer::open(input, read)?;
    let out = std::path::Path::new(output);
    crate::convert::to_format(&source, out, format, write, &mut |_, _| {})
}
