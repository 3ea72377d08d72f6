//! `plaid_deserializer`: an open file whose tensors are loaded through a callback.

use std::ffi::{c_char, c_void, CString};

use super::cuda_arena::plaid_cuda_arena;
use super::host_arena::plaid_host_arena;
use super::placement::{plaid_destination, plaid_place_fn, plaid_tensor_info, CallbackPlacement};
use super::progress::{plaid_progress_fn, CallbackProgress};
use super::publish;
use super::read_options::plaid_read_options;
use super::status::plaid_status;
use crate::deserializer::Deserializer;
use crate::error::{Error, Result};

/// An open model file. Opaque; made by `plaid_deserializer_open`, destroyed by
/// `plaid_deserializer_free`.
///
/// Thread safety: every function but `plaid_deserializer_free` may be called on one
/// handle from any number of threads at once, loads included. Two loads of one handle at
/// the same time (`plaid_deserializer_load`, `_load_host`, `_load_cuda`, `_verify`, in
/// any mix) are independent: each calls its own callbacks and fills its own destinations,
/// both share the open file (and its mapping), and each succeeds or fails on its own.
/// `plaid_deserializer_set_progress` called during a load takes effect from the next one.
/// `plaid_deserializer_free` is called once, after every other call on the handle returned.
pub struct plaid_deserializer {
    inner: Deserializer,
    /// Lent to C; they point into `_strings` and into the core's tensor list (shapes).
    infos: Vec<plaid_tensor_info>,
    /// Every tensor's NUL-terminated name and path, end to end.
    _strings: Vec<u8>,
    metadata: Vec<(CString, CString)>,
    /// Set by `plaid_deserializer_set_progress`; each operation holds it from its start to
    /// its end, so a finalizer runs only once nothing reports to it any more.
    progress: parking_lot::Mutex<Option<std::sync::Arc<CallbackProgress>>>,
}

// SAFETY: the raw pointers in `infos` point into data owned by this same struct, which
// is never mutated after construction.
unsafe impl Send for plaid_deserializer {}
// SAFETY: as above; all access through `&self` is read-only.
unsafe impl Sync for plaid_deserializer {}

impl plaid_deserializer {
    /// The progress callback in place now.
    fn progress(&self) -> Option<std::sync::Arc<CallbackProgress>> {
        self.progress.lock().clone()
    }

    pub(crate) fn new(inner: Deserializer) -> Result<plaid_deserializer> {
        let text = |s: &str| CString::new(s).map_err(|_| Error::invalid("text holds a NUL byte"));
        let tensors = inner.tensors();
        let no_memory = |what: &str| {
            Error::io(
                format!(
                    "{}: allocating {what} of {} tensors",
                    inner.name(),
                    tensors.len()
                ),
                std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            )
        };
        // Every name and path, NUL-terminated, in one allocation (not one each: an index of
        // many small tensors stays a small multiple of the header that declares them).
        let mut len = 0usize;
        for t in tensors {
            if t.name.contains('\0') || t.path.as_deref().is_some_and(|p| p.contains('\0')) {
                return Err(Error::invalid("text holds a NUL byte"));
            }
            len += t.name.len() + 1 + t.path.as_ref().map_or(0, |p| p.len() + 1);
        }
        let mut strings: Vec<u8> = Vec::new();
        strings
            .try_reserve_exact(len)
            .map_err(|_| no_memory("the names"))?;
        let mut infos = Vec::new();
        infos
            .try_reserve_exact(tensors.len())
            .map_err(|_| no_memory("the tensor list"))?;
        for text in tensors
            .iter()
            .flat_map(|t| std::iter::once(t.name.as_str()).chain(t.path.as_deref()))
        {
            strings.extend_from_slice(text.as_bytes());
            strings.push(0);
        }
        // `strings` is complete and never written again, so pointers into it stay valid for
        // the handle's life (moving the Vec does not move its heap buffer).
        let base = strings.as_ptr().cast::<c_char>();
        let mut at = 0usize;
        let mut next = |len: usize| {
            let p = base.wrapping_add(at);
            at += len + 1;
            p
        };
        for t in tensors {
            let name = next(t.name.len());
            let path = t.path.as_ref().map_or(std::ptr::null(), |p| next(p.len()));
            infos.push(plaid_tensor_info {
                name,
                name_len: t.name.len(),
                dtype: t.dtype.id(),
                ndim: t.shape.len() as u32,
                // Points into the index's tensor list (inline for small ranks), a heap
                // buffer the core never changes after opening.
                shape: if t.shape.is_empty() {
                    std::ptr::null()
                } else {
                    t.shape.as_ptr()
                },
                nbytes: t.nbytes,
                index: t.index,
                role: t.role.id(),
                module_index: t.module_index,
                path,
                path_len: t.path.as_ref().map_or(0, |p| p.len()),
                zero_fill: u32::from(t.zero_fill),
                encrypted: u32::from(t.encryption.is_some()),
                offset: t.offset,
            });
        }
        let metadata = inner
            .metadata()
            .iter()
            .map(|(k, v)| Ok((text(k)?, text(v)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(plaid_deserializer {
            inner,
            infos,
            _strings: strings,
            metadata,
            progress: parking_lot::Mutex::new(None),
        })
    }
}

/// Open the file at `source` (a UTF-8 path, or a URL: `http://`, `https://`,
/// `s3://bucket/key`, `gs://bucket/key`, `az://container/key`) and read and validate its
/// header; no tensor data is read yet. The format (plaid, safetensors or tensorizer) is
/// detected from the first bytes, never from the name; `plaid_deserializer_format` tells
/// which. A sharded safetensors checkpoint opens through its `model.safetensors.index.json`
/// as one model (for a URL, its shards are resolved beside it). `options` may be NULL for
/// defaults and may be freed after this call. A URL is configured from the environment
/// (`AWS_*`, `AWS_PROFILE`, `GOOGLE_*`, `AZURE_*`) and `plaid_read_options_set_storage`;
/// its object's ETag is pinned now and every later range is asked `If-Match` it, so an
/// object replaced during a load fails the load instead of mixing versions; data goes
/// from the network into the destinations as it arrives.
/// On success `*out` holds a handle to free with `plaid_deserializer_free`; on failure
/// `*out` is untouched.
///
/// Returns `PLAID_ERR_IO` if the file cannot be opened or a remote request fails (after
/// retries; the message names the URL, the byte range, the HTTP status and the store's
/// error code), `PLAID_ERR_NOT_FOUND` for a missing object, `PLAID_ERR_FORMAT` for a bad
/// magic, a damaged header or a truncated file (the message gives the offset),
/// `PLAID_ERR_UNSUPPORTED` for a newer format version, an unknown dtype, an encrypted
/// tensorizer file or a URL in a build without remote storage.
///
/// # Safety
/// `source` is NULL or NUL-terminated; `options` NULL or a live handle; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_open(
    source: *const c_char,
    options: *const plaid_read_options,
    out: *mut *mut plaid_deserializer,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let source = c_str!(source, "source")?;
        let options = options_or_default!(options);
        let handle = plaid_deserializer::new(Deserializer::open(source, options)?)?;
        publish(out, handle);
        Ok(())
    }
}

/// File format: plaid's own.
pub const PLAID_FORMAT_PLAID: u32 = 1;
/// File format: Hugging Face safetensors.
pub const PLAID_FORMAT_SAFETENSORS: u32 = 2;
/// File format: CoreWeave tensorizer's `.tensors` (versions 1 to 5).
pub const PLAID_FORMAT_TENSORIZER: u32 = 3;

/// The format `plaid_deserializer_open` detected from the file's first bytes (never from
/// its name): a `PLAID_FORMAT_*` value, or 0 for a NULL handle.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_format(d: *const plaid_deserializer) -> u32 {
    ffi_boundary! {
        on_panic = 0;
        handle_opt!(d).map_or(0, |d| d.inner.format().id())
    }
}

/// The bytes loads, verifications and reads of `d` have read from its file, object or
/// shards since it was opened (its header excepted): what storage delivered, with checksum
/// block rounding and the gaps read through between wanted ranges, against the bytes a load
/// delivers (zero-copy views are not reads); 0 for a NULL handle. Other threads may be
/// loading meanwhile: the count is then a snapshot.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_bytes_read(d: *const plaid_deserializer) -> u64 {
    ffi_boundary! {
        on_panic = 0;
        handle_opt!(d).map_or(0, |d| d.inner.bytes_read())
    }
}

/// Number of tensors in the file; 0 for a NULL handle.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_tensor_count(d: *const plaid_deserializer) -> usize {
    ffi_boundary! {
        on_panic = 0;
        handle_opt!(d).map_or(0, |d| d.infos.len())
    }
}

/// The tensor at `index` (file order), or NULL when `d` is NULL or `index` is out of
/// range. The struct and everything it points to are lent: valid until
/// `plaid_deserializer_free`, never to be freed or modified.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_tensor(
    d: *const plaid_deserializer,
    index: usize,
) -> *const plaid_tensor_info {
    ffi_boundary! {
        on_panic = std::ptr::null();
        handle_opt!(d)
            .and_then(|d| d.infos.get(index))
            .map_or(std::ptr::null(), |info| info as *const plaid_tensor_info)
    }
}

/// Every tensor's description at once: an array of `plaid_deserializer_tensor_count(d)` structs in
/// file order (NULL when `d` is NULL or the file has no tensors), lent like
/// `plaid_deserializer_tensor`'s. For bindings that read them all: one call instead of one
/// per tensor.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_tensors(
    d: *const plaid_deserializer,
) -> *const plaid_tensor_info {
    ffi_boundary! {
        on_panic = std::ptr::null();
        handle_opt!(d)
            .filter(|d| !d.infos.is_empty())
            .map_or(std::ptr::null(), |d| d.infos.as_ptr())
    }
}

/// Store the index of the tensor called `name` in `*index_out`. Returns
/// `PLAID_ERR_NOT_FOUND` (leaving `*index_out` untouched) if there is none.
///
/// # Safety
/// `d` is NULL or a live handle; `name` NULL or NUL-terminated; `index_out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_find(
    d: *const plaid_deserializer,
    name: *const c_char,
    index_out: *mut usize,
) -> plaid_status {
    ffi_boundary! {
        let index_out = out_arg!(index_out, "index_out")?;
        let (d, name) = (handle!(d, "deserializer")?, c_str!(name, "name")?);
        let index = d.inner.find(name)?;
        *index_out = index;
        Ok(())
    }
}

/// Load tensors. `place` is called once per tensor, in file order, on this thread, before
/// any data is read; it fills in each tensor's destination (zeroed: skip by default). It
/// may call the functions that take a `const plaid_deserializer *` on `d` (such as
/// `plaid_deserializer_find`), but must not load or free it.
/// Then worker threads read the data straight into the destinations and verify every
/// checksum block (unless verification is off). Returns when every byte has landed.
///
/// Destinations must stay valid, and must be neither read nor written by the caller,
/// until this call returns; they must not overlap (an
/// overlap of host destinations is refused with `PLAID_ERR_INVALID_ARGUMENT`). Returns
/// `PLAID_ERR_CANCELLED` when `place` returns non-zero, `PLAID_ERR_CAPACITY` when a
/// destination is smaller than its tensor (in both cases before any byte is written
/// anywhere), `PLAID_ERR_CHECKSUM` naming the damaged tensor, `PLAID_ERR_FORMAT` when
/// the file was truncated after it was opened. After an error, destinations may hold
/// partial data. `load` may be called again, e.g. into other buffers.
///
/// # Safety
/// `d` is NULL or a live handle (other threads may use it meanwhile); `place` is
/// NULL (an error) or a function honouring `plaid_place_fn`'s contract.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_load(
    d: *mut plaid_deserializer,
    place: plaid_place_fn,
    user_data: *mut c_void,
) -> plaid_status {
    ffi_boundary! {
        // `d` is NULL (refused) or a live handle, as this function's `# Safety`
        // requires; it is only read.
        // Shared access only, so that the callback may call the const functions on `d`.
        let d = handle!(d, "deserializer")?;
        let place = place.ok_or_else(|| Error::invalid("place callback is NULL"))?;
        let mut placement = CallbackPlacement {
            place,
            user_data,
            infos: &d.infos,
            claimed: Default::default(),
        };
        match d.progress() {
            Some(progress) => d
                .inner
                .load_with_progress(&mut placement, &|p| progress.call(p)),
            None => d.inner.load(&mut placement),
        }
        .map(drop)
    }
}

/// Chooses whether `plaid_deserializer_load_host` (or `_load_cuda`) loads a tensor: a
/// positive value loads it, 0 skips it, a negative value cancels the whole load with
/// `PLAID_ERR_CANCELLED` before anything is allocated or read. Called once per tensor, in
/// file order, on the loading thread, before any data is read; the same rules as
/// `plaid_place_fn` apply.
pub type plaid_filter_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, info: *const plaid_tensor_info) -> i32>;

/// Ask `filter` about every tensor up front (all of them when it is NULL); a negative
/// answer cancels.
///
/// # Safety
/// `filter` is NULL or honours `plaid_filter_fn`'s contract.
unsafe fn select(
    d: &plaid_deserializer,
    filter: plaid_filter_fn,
    user_data: *mut c_void,
) -> Result<Vec<bool>> {
    let Some(f) = filter else {
        return Ok(vec![true; d.infos.len()]);
    };
    let mut out = Vec::with_capacity(d.infos.len());
    for info in &d.infos {
        // SAFETY: `f` honours `plaid_filter_fn`'s contract (`# Safety`); `info` lives as long as `d`.
        match unsafe { f(user_data, info) } {
            answer if answer < 0 => {
                return Err(Error::Cancelled(format!(
                    "{}: the filter cancelled the load at tensor '{}'",
                    d.inner.name(),
                    d.inner.tensors()[info.index].name
                )))
            }
            answer => out.push(answer > 0),
        }
    }
    Ok(out)
}

/// Load tensors into device memory that plaid allocates on CUDA device `device`, the
/// way `load_file(device="cuda")` returns fresh tensors: one `cuMemAlloc` for all of them,
/// each tensor 256-byte aligned, filled through the pinned staging ring as
/// `plaid_deserializer_load` fills caller memory, verified as per the read options.
/// `filter` (NULL: every tensor) chooses the tensors. On success `*out` holds an arena to
/// read with `plaid_cuda_arena_tensor` and free with `plaid_cuda_arena_free`; every byte
/// is on the device when this returns. On failure nothing stays allocated and `*out` is
/// untouched. Returns `PLAID_ERR_NO_CUDA` where no CUDA driver can be loaded, and
/// `PLAID_ERR_CUDA` (naming the driver's error) for a device that does not exist or
/// memory the device does not have.
///
/// # Safety
/// `d` is NULL (an error) or a live handle (other threads may use it meanwhile);
/// `filter` is NULL or honours `plaid_filter_fn`'s contract; `out` NULL (an error) or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_load_cuda(
    d: *mut plaid_deserializer,
    device: i32,
    filter: plaid_filter_fn,
    user_data: *mut c_void,
    out: *mut *mut plaid_cuda_arena,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let d = handle!(d, "deserializer")?;
        // SAFETY: the infos live as long as `d`; the callback honours its contract.
        let selected = unsafe { select(d, filter, user_data) }?;
        let mut wanted = |t: &crate::format::TensorInfo| selected[t.index];
        let progress = d.progress().map(|p| move |x: &crate::Progress| p.call(x));
        let progress = progress.as_ref().map(|p| p as &crate::ProgressFn<'_>);
        let inner = d.inner.load_to_cuda(device, &mut wanted, progress)?;
        publish(out, plaid_cuda_arena { inner });
        Ok(())
    }
}

/// Load tensors into host memory that plaid allocates, the way a `load_file` call returns
/// fresh arrays: one allocation for all of them, each tensor 64-byte aligned, its pages
/// faulted in by the workers as they write (on transparent huge pages unless
/// `plaid_read_options_set_huge_pages` turned them off), verified as per the read options, with progress reported as
/// `plaid_deserializer_load` reports it. `filter` (NULL: every tensor) chooses the tensors.
/// On success `*out` holds an arena to read with `plaid_host_arena_tensor` and free with
/// `plaid_host_arena_free`; it may outlive `d`. On failure nothing is allocated and `*out`
/// is untouched. The arena holds every chosen tensor's `nbytes`, zero-filled ones included
/// (see `plaid_tensor_info.zero_fill`); memory the system refuses is `PLAID_ERR_IO`, never
/// an abort.
///
/// # Safety
/// `d` is NULL (an error) or a live handle (other threads may use it meanwhile);
/// `filter` is NULL or honours `plaid_filter_fn`'s contract; `out` NULL (an error) or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_load_host(
    d: *mut plaid_deserializer,
    filter: plaid_filter_fn,
    user_data: *mut c_void,
    out: *mut *mut plaid_host_arena,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let d = handle!(d, "deserializer")?;
        // SAFETY: the infos live as long as `d`; the callback honours its contract.
        let selected = unsafe { select(d, filter, user_data) }?;
        let mut wanted = |t: &crate::format::TensorInfo| selected[t.index];
        let progress = d.progress().map(|p| move |x: &crate::Progress| p.call(x));
        let progress = progress.as_ref().map(|p| p as &crate::ProgressFn<'_>);
        let inner = d.inner.load_to_host(&mut wanted, progress)?;
        publish(out, plaid_host_arena { inner });
        Ok(())
    }
}

/// Ask `place` for the view of every tensor of `d` (as `plaid_deserializer_load` asks):
/// `None` where it leaves the kind `PLAID_DEST_SKIP`, else the slice and dtype it set.
///
/// # Safety
/// `place` honours `plaid_place_fn`'s contract.
unsafe fn views_of(
    d: &plaid_deserializer,
    place: plaid_place_fn,
    user_data: *mut c_void,
) -> Result<Vec<Option<crate::View>>> {
    let place = place.ok_or_else(|| Error::invalid("place is NULL"))?;
    let mut out = Vec::with_capacity(d.infos.len());
    for (t, info) in d.inner.tensors().iter().zip(&d.infos) {
        let mut dest = plaid_destination::default();
        // SAFETY: the caller's callback, given a lent info and a zeroed destination.
        let rc = unsafe { place(user_data, info, &mut dest) };
        if rc != 0 {
            return Err(Error::Cancelled(format!(
                "{}: the placement callback returned {rc} for tensor '{}'",
                d.inner.name(),
                t.name
            )));
        }
        out.push(match dest.kind {
            0 => None,
            _ => Some(super::placement::view(t, &dest)?),
        });
    }
    Ok(out)
}

/// `plaid_deserializer_load_host` for slices and dtypes: `place` is called for every
/// tensor, in file order, before anything is allocated or read, as for
/// `plaid_deserializer_load`; a tensor whose destination kind it leaves at
/// `PLAID_DEST_SKIP` is skipped, any other kind loads it into the arena (the address,
/// capacity and device it sets are ignored: plaid allocates), as the slice and dtype it
/// sets ask. `plaid_host_arena_tensor` then gives each tensor's slice, converted, and its
/// size. A bad slice or dtype fails as in `plaid_deserializer_load`, before anything is
/// allocated.
///
/// # Safety
/// As `plaid_deserializer_load_host`, with `place` NULL (an error) or honouring
/// `plaid_place_fn`'s contract.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_load_host_views(
    d: *mut plaid_deserializer,
    place: plaid_place_fn,
    user_data: *mut c_void,
    out: *mut *mut plaid_host_arena,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let d = handle!(d, "deserializer")?;
        // SAFETY: the infos live as long as `d`; the callback honours its contract.
        let views = unsafe { views_of(d, place, user_data) }?;
        let progress = d.progress().map(|p| move |x: &crate::Progress| p.call(x));
        let progress = progress.as_ref().map(|p| p as &crate::ProgressFn<'_>);
        let inner = d
            .inner
            .load_views_to_host(&mut |t| Ok(views[t.index]), progress)?;
        publish(out, plaid_host_arena { inner });
        Ok(())
    }
}

/// `plaid_deserializer_load_cuda` for slices and dtypes, as
/// `plaid_deserializer_load_host_views`: every tensor whose kind `place` sets to anything
/// but `PLAID_DEST_SKIP` is loaded onto device `device` as its slice and dtype ask.
///
/// # Safety
/// As `plaid_deserializer_load_cuda`, with `place` NULL (an error) or honouring
/// `plaid_place_fn`'s contract.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_load_cuda_views(
    d: *mut plaid_deserializer,
    device: i32,
    place: plaid_place_fn,
    user_data: *mut c_void,
    out: *mut *mut plaid_cuda_arena,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let d = handle!(d, "deserializer")?;
        // SAFETY: the infos live as long as `d`; the callback honours its contract.
        let views = unsafe { views_of(d, place, user_data) }?;
        let progress = d.progress().map(|p| move |x: &crate::Progress| p.call(x));
        let progress = progress.as_ref().map(|p| p as &crate::ProgressFn<'_>);
        let inner = d
            .inner
            .load_views_to_cuda(device, &mut |t| Ok(views[t.index]), progress)?;
        publish(out, plaid_cuda_arena { inner });
        Ok(())
    }
}

/// Read every block of every tensor and check it against its checksum, holding only one
/// chunk per worker in memory (a chunk is the read options' chunk size rounded up to
/// whole checksum blocks, so at least one block of the file). Returns `PLAID_ERR_CHECKSUM` naming the first damaged
/// tensor found.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_verify(d: *const plaid_deserializer) -> plaid_status {
    ffi_boundary! {
        let d = handle!(d, "deserializer")?;
        match d.progress() {
            Some(progress) => d.inner.verify_with_progress(&|p| progress.call(p)),
            None => d.inner.verify(),
        }
        .map(drop)
    }
}

/// Map the file read-only for zero-copy views (`plaid_deserializer_tensor_data`). With
/// verification on and `plaid_read_options_set_verify_views_up_front`, every tensor is
/// verified now (in parallel); otherwise this reads nothing and takes milliseconds
/// whatever the file's size. Optional: the first view maps the file too. Calling it again
/// is cheap.
///
/// A file truncated by another process while it is mapped does not crash the process:
/// the bytes past its new end read as zeros, and later calls return `PLAID_ERR_FORMAT`
/// saying the file shrank.
///
/// Returns `PLAID_ERR_UNSUPPORTED` for a source that cannot be mapped (a URL, a callback
/// source), or when 256 files are mapped already: at most 256 mappings are guarded in one
/// process (each open handle that mapped its file, each shard of a sharded checkpoint
/// holds one until freed). `PLAID_ERR_CHECKSUM` names the first damaged tensor found.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_map(d: *const plaid_deserializer) -> plaid_status {
    ffi_boundary! {
        let d = handle!(d, "deserializer")?;
        d.inner.map()
    }
}

/// Store in `*data` a read-only pointer to tensor `index`'s bytes inside a memory map of
/// the file, and their count in `*nbytes`: no copy at all. The pointer is aligned as the
/// file aligns tensor data (4096 bytes for files plaid writes) and stays valid until
/// `plaid_deserializer_free`; the bytes must not be written. With verification on, a
/// tensor is verified on its first view unless `plaid_deserializer_map` verified it; a
/// damaged tensor gives `PLAID_ERR_CHECKSUM` and no pointer. On failure `*data` and
/// `*nbytes` are untouched.
///
/// # Safety
/// `d` is NULL or a live handle; `data` and `nbytes` NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_tensor_data(
    d: *const plaid_deserializer,
    index: usize,
    data: *mut *const c_void,
    nbytes: *mut u64,
) -> plaid_status {
    ffi_boundary! {
        let data = out_arg!(data, "data")?;
        let nbytes = out_arg!(nbytes, "nbytes")?;
        let d = handle!(d, "deserializer")?;
        let view = d.inner.view(index)?;
        *data = view.as_ptr().cast();
        *nbytes = view.len() as u64;
        Ok(())
    }
}

/// Report progress of later `plaid_deserializer_load` and `plaid_deserializer_verify`
/// calls on `d` to `progress` (see `plaid_progress_fn` for when and on which thread), or
/// stop reporting when `progress` is NULL. `user_data` is passed to every report.
///
/// # Safety
/// `d` is NULL (an error) or a live handle (other threads may use it meanwhile);
/// `progress` is NULL or honours `plaid_progress_fn`'s contract.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_set_progress(
    d: *mut plaid_deserializer,
    progress: plaid_progress_fn,
    user_data: *mut c_void,
) -> plaid_status {
    ffi_boundary! {
        // `d` is NULL (refused) or a live handle, as `# Safety` requires. Shared access:
        // loads running on other threads read
        // the handle meanwhile, and the progress slot is behind a lock.
        let d = handle!(d, "deserializer")?;
        set_progress(d, progress, user_data, None);
        Ok(())
    }
}

/// Put `progress` in `d`'s slot; what it replaces is dropped outside the lock (its
/// finalizer may run there, unless an operation still holds it).
fn set_progress(
    d: &plaid_deserializer,
    progress: plaid_progress_fn,
    user_data: *mut c_void,
    release: super::source::plaid_release_fn,
) {
    let new = match progress {
        Some(report) => Some(std::sync::Arc::new(CallbackProgress {
            report,
            user_data,
            release,
        })),
        None => {
            if let Some(release) = release {
                // SAFETY: the caller's finalizer, called once: nothing will use `user_data`.
                unsafe { release(user_data) };
            }
            None
        }
    };
    let old = std::mem::replace(&mut *d.progress.lock(), new);
    drop(old);
}

/// `plaid_deserializer_set_progress` with a finalizer: `release(user_data)` (when not NULL)
/// is called exactly once, when plaid no longer uses `user_data`: after the callback is
/// replaced (by either function) or the deserializer is freed, and after every load or
/// verification that started with it has returned; on whichever thread lets go last. With
/// `progress` NULL, `release` is called before this returns. Never called when this
/// function fails (a NULL `d`).
///
/// # Safety
/// `d` is NULL (an error) or a live handle (other threads may use it meanwhile);
/// `progress` is NULL or honours `plaid_progress_fn`'s contract; `release` is NULL or
/// callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_set_progress_with_release(
    d: *mut plaid_deserializer,
    progress: plaid_progress_fn,
    user_data: *mut c_void,
    release: super::source::plaid_release_fn,
) -> plaid_status {
    ffi_boundary! {
        // `d` is NULL (refused) or a live handle, as `# Safety` requires. Shared access:
        // loads running on other threads read the handle meanwhile, and the progress slot is
        // behind a lock.
        let d = handle!(d, "deserializer")?;
        set_progress(d, progress, user_data, release);
        Ok(())
    }
}

/// Number of metadata entries; 0 for a NULL handle.
///
/// # Safety
/// `d` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_metadata_count(d: *const plaid_deserializer) -> usize {
    ffi_boundary! {
        on_panic = 0;
        handle_opt!(d).map_or(0, |d| d.metadata.len())
    }
}

/// The metadata entry at `index` (sorted by key): stores lent NUL-terminated UTF-8
/// strings, valid while the deserializer lives, in `*key_out` and `*value_out`. Returns
/// `PLAID_ERR_NOT_FOUND` when `index` is out of range.
///
/// # Safety
/// `d` is NULL or a live handle; `key_out` and `value_out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_metadata_entry(
    d: *const plaid_deserializer,
    index: usize,
    key_out: *mut *const c_char,
    value_out: *mut *const c_char,
) -> plaid_status {
    ffi_boundary! {
        let key_out = out_arg!(key_out, "key_out")?;
        let value_out = out_arg!(value_out, "value_out")?;
        let d = handle!(d, "deserializer")?;
        let (k, v) = d
            .metadata
            .get(index)
            .ok_or_else(|| Error::NotFound(format!("no metadata entry #{index}")))?;
        (*key_out, *value_out) = (k.as_ptr(), v.as_ptr());
        Ok(())
    }
}

/// Store in `*value_out` the metadata value of `key`, a lent NUL-terminated UTF-8 string
/// valid while the deserializer lives. Returns `PLAID_ERR_NOT_FOUND` if the key is absent.
///
/// # Safety
/// `d` is NULL or a live handle; `key` NULL or NUL-terminated; `value_out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_metadata_get(
    d: *const plaid_deserializer,
    key: *const c_char,
    value_out: *mut *const c_char,
) -> plaid_status {
    ffi_boundary! {
        let value_out = out_arg!(value_out, "value_out")?;
        let (d, key) = (handle!(d, "deserializer")?, c_str!(key, "key")?);
        let index = d.inner.metadata().keys().position(|k| k == key);
        let (_, v) = index.map(|i| &d.metadata[i]).ok_or_else(|| {
            Error::NotFound(format!("{}: no metadata key '{key}'", d.inner.name()))
        })?;
        *value_out = v.as_ptr();
        Ok(())
    }
}

/// Free a deserializer and everything it lent. NULL is a no-op; call at most once per
/// handle, and not while another call on it is running.
///
/// # Safety
/// `d` is NULL or a live handle from `plaid_deserializer_open`.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_free(d: *mut plaid_deserializer) {
    free_handle!(d)
}
