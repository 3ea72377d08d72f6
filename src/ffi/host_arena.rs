//! `plaid_host_arena`: tensors loaded into host memory that plaid allocated.

use std::ffi::c_void;

use super::not_in_arena;
use super::status::plaid_status;
use crate::sink::HostArena;

/// Tensors loaded by `plaid_deserializer_load_host` into one allocation made by plaid.
/// Opaque; freed (with all its tensors) by `plaid_host_arena_free`. Independent of the
/// deserializer: it may outlive it.
pub struct plaid_host_arena {
    pub(crate) inner: HostArena,
}

/// Store in `*data` the address of tensor `index`'s bytes (file order) in `arena`, 64-byte
/// aligned and writable, valid until `plaid_host_arena_free`, and their count in
/// `*nbytes`. Returns `PLAID_ERR_NOT_FOUND` for a tensor that was not loaded (filtered
/// out, or no such index); on failure `*data` and `*nbytes` are untouched.
///
/// # Safety
/// `arena` is NULL or a live handle; `data` and `nbytes` NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_host_arena_tensor(
    arena: *const plaid_host_arena,
    index: usize,
    data: *mut *mut c_void,
    nbytes: *mut u64,
) -> plaid_status {
    ffi_boundary! {
        let (data, nbytes) = (out_arg!(data, "data")?, out_arg!(nbytes, "nbytes")?);
        let arena = handle!(arena, "arena")?;
        let (ptr, len) = arena.inner.tensor_ptr(index).ok_or_else(|| not_in_arena(index))?;
        (*data, *nbytes) = (ptr.cast(), len as u64);
        Ok(())
    }
}

/// Free an arena and every tensor in it. NULL is a no-op; call at most once per handle.
///
/// # Safety
/// `arena` is NULL or a live handle from `plaid_deserializer_load_host`.
#[no_mangle]
pub unsafe extern "C" fn plaid_host_arena_free(arena: *mut plaid_host_arena) {
    free_handle!(arena)
}
