//! `plaid_cuda_arena`: tensors loaded into device memory that plaid allocated.

use super::not_in_arena;
use super::status::plaid_status;
use crate::cuda::CudaArena;

/// Tensors loaded by `plaid_deserializer_load_cuda` into one device allocation made by
/// plaid. Opaque; freed (with all its tensors) by `plaid_cuda_arena_free`. Independent of
/// the deserializer: it may outlive it.
pub struct plaid_cuda_arena {
    pub(crate) inner: CudaArena,
}

/// Store in `*address` the device address (`CUdeviceptr`) of tensor `index` (file order)
/// in `arena`, 256-byte aligned, valid until `plaid_cuda_arena_free`, and its size in
/// `*nbytes`. Returns `PLAID_ERR_NOT_FOUND` for a tensor that was not loaded (filtered out,
/// or no such index); on failure `*address` and `*nbytes` are untouched.
///
/// # Safety
/// `arena` is NULL or a live handle; `address` and `nbytes` NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_cuda_arena_tensor(
    arena: *const plaid_cuda_arena,
    index: usize,
    address: *mut u64,
    nbytes: *mut u64,
) -> plaid_status {
    ffi_boundary! {
        let (address, nbytes) = (out_arg!(address, "address")?, out_arg!(nbytes, "nbytes")?);
        let arena = handle!(arena, "arena")?;
        (*address, *nbytes) = arena.inner.tensor(index).ok_or_else(|| not_in_arena(index))?;
        Ok(())
    }
}

/// The CUDA device ordinal of `arena`'s memory; -1 for NULL.
///
/// # Safety
/// `arena` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_cuda_arena_device(arena: *const plaid_cuda_arena) -> i32 {
    ffi_boundary! {
        on_panic = -1;
        handle_opt!(arena).map_or(-1, |a| a.inner.device())
    }
}

/// Free an arena's device memory. NULL is a no-op; call at most once per handle, and only
/// when no work on the device still reads the tensors.
///
/// # Safety
/// `arena` is NULL or a live handle from `plaid_deserializer_load_cuda`.
#[no_mangle]
pub unsafe extern "C" fn plaid_cuda_arena_free(arena: *mut plaid_cuda_arena) {
    free_handle!(arena)
}
