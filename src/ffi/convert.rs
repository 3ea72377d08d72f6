//! `plaid_convert`: one file (or URL) to another format, as `plaid convert` does.

use std::ffi::c_char;

use super::status::plaid_status;
use super::{boundary, c_str};
use crate::deserializer::Deserializer;
use crate::error::Error;
use crate::options::{ReadOptions, WriteOptions};

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
    boundary::status(|| {
        // SAFETY: `input` and `output` are NULL (refused) or NUL-terminated strings, as this
        // function's `# Safety` requires.
        let (input, output) = unsafe { (c_str(input, "input")?, c_str(output, "output")?) };
        let format = if format.is_null() {
            None
        } else {
            // SAFETY: `format` is NULL (refused) or a NUL-terminated string, as this function's
            // `# Safety` requires.
            Some(unsafe { c_str(format, "format") }?)
        };
        let format = format.unwrap_or(if output.ends_with(".safetensors") {
            "safetensors"
        } else if output.ends_with(".tensors") {
            "tensorizer"
        } else {
            "plaid"
        });
        let source = Deserializer::open(input, ReadOptions::default())?;
        let out = std::path::Path::new(output);
        let mut quiet = |_: u64, _: u64| {};
        match format {
            "plaid" => crate::convert::to_plaid(&source, out, WriteOptions::default(), &mut quiet),
            "safetensors" => crate::convert::to_safetensors(&source, out, &mut quiet),
            "tensorizer" => crate::convert::to_tensorizer(&source, out, &mut quiet),
            other => Err(Error::invalid(format!(
                "unknown output format '{other}' (plaid, safetensors or tensorizer)"
            ))),
        }
    })
}
