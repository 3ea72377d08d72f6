//! `plaid_glob_match`: the tensor-name patterns of the CLI and the bindings, for C.

use std::ffi::c_char;

use super::status::plaid_status;
use crate::filter::NameFilter;

/// Store in `*matched` 1 if the tensor name `name` matches the glob `pattern`, else 0:
/// `*` and `?` match any characters (dots included), `[...]` a class, `{a,b}`
/// alternatives, `\` escapes; the whole name must match, case-sensitively. These are the
/// patterns of `plaid inspect --tensors` and of the bindings' filters; use it in a
/// `plaid_filter_fn` or `plaid_place_fn` to choose tensors. A malformed pattern, or one
/// longer than 1,024 bytes (which keeps matching linear in the name's length), is
/// `PLAID_ERR_INVALID_ARGUMENT`, and `*matched` is then untouched.
///
/// # Safety
/// `pattern` and `name` are NULL (an error) or NUL-terminated UTF-8; `matched` NULL (an
/// error) or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_glob_match(
    pattern: *const c_char,
    name: *const c_char,
    matched: *mut i32,
) -> plaid_status {
    ffi_boundary! {
        let matched = out_arg!(matched, "matched")?;
        let (pattern, name) = (c_str!(pattern, "pattern")?, c_str!(name, "name")?);
        let filter = NameFilter::new(&[pattern])?;
        *matched = i32::from(filter.matches(name));
        Ok(())
    }
}
