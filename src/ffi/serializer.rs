//! `plaid_serializer`: writes a file atomically.

use std::ffi::{c_char, c_void};

use super::publish;
use super::status::plaid_status;
use super::write_options::plaid_write_options;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::plaid::MAX_RANK;
use crate::serializer::Serializer;

/// A file being written. Opaque; made by `plaid_serializer_new`, destroyed by
/// `plaid_serializer_free`.
///
/// Thread safety: every function but `plaid_serializer_free` may be called on one handle
/// from several threads at once; the calls take turns (tensors are laid out in the order
/// their `add` calls took their turn). A call that comes after `plaid_serializer_finish`
/// took its turn fails with `PLAID_ERR_INVALID_ARGUMENT`. `plaid_serializer_free` is called
/// once, after every other call on the handle returned.
pub struct plaid_serializer {
    /// `None` once finished. The `'static` is the C caller's promise that tensor data
    /// stays valid until `plaid_serializer_finish` returns.
    inner: parking_lot::Mutex<Option<Serializer<'static>>>,
}

impl plaid_serializer {
    /// Run `f` on the unfinished serializer, holding its lock.
    fn with<R>(&self, f: impl FnOnce(&mut Serializer<'static>) -> Result<R>) -> Result<R> {
        let mut inner = self.inner.lock();
        f(inner
            .as_mut()
            .ok_or_else(|| Error::invalid("the serializer has already finished"))?)
    }
}

/// Start writing a file at `path` (UTF-8). Nothing appears at `path` until
/// `plaid_serializer_finish` succeeds: data goes to a temporary file beside it, which is
/// removed if the serializer is freed unfinished. `path` may be a URL of object storage
/// (`s3://bucket/key`, `gs://...`, `az://...`, configured as in
/// `plaid_write_options_set_storage`): a multipart upload starts now (bad credentials or a
/// missing bucket fail here), its parts go out in parallel while `plaid_serializer_finish`
/// produces the file, and the object appears only when it succeeds; a failed finish or a
/// serializer freed unfinished aborts the upload and leaves no object. `options` may be
/// NULL for defaults and may be freed after this call. On success `*out` holds a handle to
/// free with `plaid_serializer_free`; on failure `*out` is untouched.
///
/// Returns `PLAID_ERR_INVALID_ARGUMENT` for NULL `path`/`out` or bad UTF-8,
/// `PLAID_ERR_IO` when the directory is not writable or the upload cannot start,
/// `PLAID_ERR_NOT_FOUND` for a missing bucket.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `options` is NULL or a live handle; `out`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_new(
    path: *const c_char,
    options: *const plaid_write_options,
    out: *mut *mut plaid_serializer,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let path = c_str!(path, "path")?;
        let options = options_or_default!(options);
        let inner = Serializer::create(path, options)?;
        publish(
            out,
            plaid_serializer {
                inner: parking_lot::Mutex::new(Some(inner)),
            },
        );
        Ok(())
    }
}

/// The name, dtype and shape arguments of the add-tensor calls, checked.
///
/// # Safety
/// `name` NULL or NUL-terminated; `shape` NULL or `ndim` readable values that outlive the
/// returned slice.
unsafe fn tensor_args<'a>(
    name: *const c_char,
    dtype: u32,
    shape: *const u64,
    ndim: usize,
) -> crate::Result<(&'a str, DType, &'a [u64])> {
    let name = c_str!(name, "name")?;
    let dtype = DType::from_id(dtype)
        .map_err(|_| Error::invalid(format!("tensor '{name}': unknown dtype {dtype}")))?;
    if ndim > MAX_RANK {
        return Err(Error::invalid(format!(
            "tensor '{name}': rank {ndim} exceeds the limit of {MAX_RANK}"
        )));
    }
    // SAFETY: `shape` is NULL or `ndim` readable values (`# Safety`); NULL is allowed only
    // for empty arrays.
    let shape = unsafe { borrowed(shape, ndim, "shape") }?;
    Ok((name, dtype, shape))
}

/// Add a tensor named `name` (UTF-8, unique, non-empty) of `dtype` (`PLAID_DTYPE_*`) and
/// `shape[0..ndim]` (row-major; `shape` may be NULL when `ndim` is 0). `data` holds
/// exactly `nbytes` = product(shape) * element size bytes (it may be NULL when `nbytes`
/// is 0).
///
/// `data` is borrowed, not copied: it must stay valid and unchanged until
/// `plaid_serializer_finish` returns. Returns `PLAID_ERR_INVALID_ARGUMENT` for an unknown
/// dtype, a duplicate name, a size mismatch or a NULL pointer.
///
/// # Safety
/// `s` is NULL or a live handle; `name` NULL or NUL-terminated; `shape` NULL or
/// `ndim` readable values; `data` NULL or `nbytes` readable bytes that outlive the
/// serializer's `finish`.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_add_tensor(
    s: *mut plaid_serializer,
    name: *const c_char,
    dtype: u32,
    shape: *const u64,
    ndim: usize,
    data: *const c_void,
    nbytes: u64,
) -> plaid_status {
    ffi_boundary! {
        let s = handle!(s, "serializer")?;
        // SAFETY: `name` is NULL (refused) or NUL-terminated and `shape` NULL (with `ndim` 0) or
        // `ndim` readable values, as this function's `# Safety` requires.
        let (name, dtype, shape) = unsafe { tensor_args(name, dtype, shape, ndim) }?;
        let nbytes = isize::try_from(nbytes)
        .map(|n| n as usize)
        .map_err(|_| Error::invalid("nbytes exceeds the address space"))?;
        // SAFETY: `data` is NULL (refused unless empty) or `nbytes` readable bytes that stay
        // valid until finish returns, as `# Safety` requires.
        let data = unsafe { borrowed(data.cast::<u8>(), nbytes, "data") }?;
        s.with(|s| s.add_tensor(name, dtype, shape, data))
    }
}

/// Add a tensor that lives in device memory: `nbytes` = product(shape) * element size
/// bytes at `address` (a `CUdeviceptr`) on CUDA device `device`, which must stay valid and
/// unchanged until `plaid_serializer_finish` returns. `finish` copies it to the host
/// through two pinned buffers while it writes, so a model on the GPU is written without
/// the caller staging it. Otherwise as `plaid_serializer_add_tensor`; returns
/// `PLAID_ERR_NO_CUDA` where no CUDA driver can be loaded.
///
/// # Safety
/// `s` is NULL or a live handle; `name` NULL or NUL-terminated; `shape` NULL or `ndim`
/// readable values.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_add_tensor_cuda(
    s: *mut plaid_serializer,
    name: *const c_char,
    dtype: u32,
    shape: *const u64,
    ndim: usize,
    device: i32,
    address: u64,
    nbytes: u64,
) -> plaid_status {
    ffi_boundary! {
        let s = handle!(s, "serializer")?;
        // SAFETY: `name` is NULL (refused) or NUL-terminated and `shape` NULL (with `ndim` 0) or
        // `ndim` readable values, as this function's `# Safety` requires.
        let (name, dtype, shape) = unsafe { tensor_args(name, dtype, shape, ndim) }?;
        let needed = dtype.nbytes(shape);
        if needed != Some(nbytes) {
            return Err(Error::invalid(format!(
                "tensor '{name}': shape {shape:?} of {dtype} needs {} bytes but {nbytes} were given",
                needed.map_or("more than 2^64".into(), |n| n.to_string())
            )));
        }
        s.with(|s| s.add_tensor_cuda(name, dtype, shape, device, address))
    }
}

/// Record where the tensor called `name` (already added) came from, as tensorizer files
/// do: `role` (a `PLAID_ROLE_*` value), `module_index`, and `path` (NULL for a plain name,
/// or a JSON array of strings and non-negative integers whose components joined by dots
/// are `name`). Returns `PLAID_ERR_NOT_FOUND` for a tensor not added,
/// `PLAID_ERR_INVALID_ARGUMENT` for an unknown role or a bad path.
///
/// # Safety
/// `s` is NULL or a live handle; `name` and `path` NULL (for `path`: none) or
/// NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_set_tensor_origin(
    s: *mut plaid_serializer,
    name: *const c_char,
    role: u32,
    module_index: u32,
    path: *const c_char,
) -> plaid_status {
    ffi_boundary! {
        let s = handle!(s, "serializer")?;
        let name = c_str!(name, "name")?;
        let role = crate::format::TensorRole::from_id(role)
            .ok_or_else(|| Error::invalid(format!("tensor '{name}': unknown role {role}")))?;
        let path = if path.is_null() {
            None
        } else {
            Some(c_str!(path, "path")?.to_owned())
        };
        s.with(|s| {
            s.set_origin(
                name,
                crate::format::TensorOrigin::new(role, module_index, path),
            )
        })
    }
}

/// Set a metadata entry (`key` non-empty; both UTF-8), replacing an earlier value.
/// Both strings are copied.
///
/// # Safety
/// `s` is NULL or a live handle; `key` and `value` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_set_metadata(
    s: *mut plaid_serializer,
    key: *const c_char,
    value: *const c_char,
) -> plaid_status {
    ffi_boundary! {
        let s = handle!(s, "serializer")?;
        let (key, value) = (c_str!(key, "key")?, c_str!(value, "value")?);
        s.with(|s| s.set_metadata(key, value))
    }
}

/// Checksum and write every tensor, sync, and rename the file into place. After this
/// call (successful or not) the serializer accepts nothing more; free it with
/// `plaid_serializer_free`. On failure the target path is untouched, with one exception:
/// if only the final fsync of the directory fails (`PLAID_ERR_IO` naming it), the complete
/// new file is already in place but may not survive a crash.
///
/// # Safety
/// `s` is NULL or a live handle, and the data of every added tensor is still valid.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_finish(s: *mut plaid_serializer) -> plaid_status {
    ffi_boundary! {
        let s = handle!(s, "serializer")?;
        // Taken out under the lock, written without it: calls racing with this one fail
        // as "already finished" instead of waiting for the whole write.
        let inner = s
            .inner
            .lock()
            .take()
            .ok_or_else(|| Error::invalid("the serializer has already finished"))?;
        inner.finish().map(drop)
    }
}

/// Free a serializer. Unfinished, it writes nothing and removes its temporary file. NULL
/// is a no-op; call at most once per handle.
///
/// # Safety
/// `s` is NULL or a live handle from `plaid_serializer_new`.
#[no_mangle]
pub unsafe extern "C" fn plaid_serializer_free(s: *mut plaid_serializer) {
    free_handle!(s)
}

/// A slice from a C array, allowing NULL only when it is empty.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable values that outlive `'a`.
unsafe fn borrowed<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::invalid(format!(
            "{what} is NULL but {len} elements were declared"
        )));
    }
    // SAFETY: non-NULL, with `len` readable values as the caller promises (`# Safety`).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}
