//! `plaid_source`: bytes the caller serves through a read callback (a custom store, a
//! decrypting layer, memory the caller holds), opened like a file with
//! `plaid_deserializer_open_source`. The callback is adapted here into a core
//! [`Source`](crate::source::Source); everything else is the core's.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use parking_lot::Mutex;

use super::deserializer::plaid_deserializer;
use super::publish;
use super::read_options::plaid_read_options;
use super::status::plaid_status;
use crate::deserializer::Deserializer;
use crate::error::{Error, Result};
use crate::options::{MAX_IN_FLIGHT, MAX_REQUEST_BYTES, MIN_REQUEST_BYTES};
use crate::source::{Source, SourceHints};

/// Read up to `len` bytes at `offset` into `buf`. Return the count read: 1..`len` (fewer
/// than `len` is a short read; plaid asks again for the rest), 0 only when `offset` >= the
/// source's length, or a negative value for an error, which fails the load with
/// `PLAID_ERR_IO` naming the source and offset. May be called from several threads at
/// once, for different ranges: plaid's I/O threads, up to the source's requests in flight
/// at once, apart from its CPU workers. `buf` is valid for `len` bytes during the call
/// only. A return greater than `len` is `PLAID_ERR_IO`; a 0 before the end is
/// `PLAID_ERR_FORMAT` (truncated). The callback must not unwind (no C++ exception may
/// leave it).
pub type plaid_read_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, offset: u64, buf: *mut c_void, len: u64) -> i64,
>;

/// A finalizer for `user_data`, called exactly once when plaid no longer uses it, on
/// whichever thread lets go last. For `plaid_source_new`: when the source handle and every
/// deserializer using it are gone (`plaid_source_free` or `plaid_deserializer_free`); never
/// when `plaid_source_new` fails. For `plaid_deserializer_set_progress_with_release`: see
/// there.
pub type plaid_release_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Default request size of a callback source: 8 MiB.
pub const PLAID_SOURCE_DEFAULT_REQUEST_BYTES: u64 = 8 << 20;
/// Default merge gap of a callback source: 1 MiB.
pub const PLAID_SOURCE_DEFAULT_MERGE_GAP: u64 = 1 << 20;
/// Default requests in flight of a callback source: 8.
pub const PLAID_SOURCE_DEFAULT_MAX_IN_FLIGHT: u32 = 8;

/// A source of bytes read through the caller's callback. Opaque; made by
/// `plaid_source_new`, given up with `plaid_source_free` (at most once). Deserializers
/// opened from it keep their own reference, so the handle may be freed right after
/// `plaid_deserializer_open_source`. `plaid_source_set_hints` takes it non-const: the
/// caller serializes that call with others on the handle.
pub struct plaid_source {
    inner: Arc<CallbackSource>,
}

/// The caller's `user_data`: plaid only hands it back to the caller's callbacks, which
/// are documented as callable from any thread.
struct UserData(*mut c_void);
// SAFETY: see above; plaid never dereferences it.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// The core's view of a C source.
struct CallbackSource {
    name: String,
    length: u64,
    read: unsafe extern "C" fn(*mut c_void, u64, *mut c_void, u64) -> i64,
    release: plaid_release_fn,
    user_data: UserData,
    hints: Mutex<SourceHints>,
}

impl Source for CallbackSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.length
    }

    fn hints(&self) -> SourceHints {
        *self.hints.lock()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() || offset >= self.length {
            return Ok(0);
        }
        let len = buf.len() as u64;
        // SAFETY: the caller's callback, given its own user_data and `len` writable bytes.
        let n = unsafe { (self.read)(self.user_data.0, offset, buf.as_mut_ptr().cast(), len) };
        let failed = |why: String| {
            Error::io(
                format!("reading {len} bytes at offset {offset} of {}", self.name),
                std::io::Error::other(why),
            )
        };
        match u64::try_from(n) {
            Err(_) => Err(failed(format!("the read callback returned {n}"))),
            Ok(n) if n > len => Err(failed(format!(
                "the read callback returned {n} for a read of {len} bytes"
            ))),
            Ok(n) => Ok(n as usize),
        }
    }
}

impl Drop for CallbackSource {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the caller's callback, called once: this is the last reference.
            unsafe { release(self.user_data.0) };
        }
    }
}

/// Make a source of `length` bytes read through `read`, called `name` in messages (UTF-8,
/// copied). `user_data` is passed to `read` and `release` untouched. Fails only on invalid
/// arguments (NULL `name`, `read` or `out`; `name` not UTF-8), and then does not call
/// `release`. On success `*out` holds a handle to give up with `plaid_source_free`; on
/// failure `*out` is untouched.
///
/// The source gets default hints (8 MiB requests, a 1 MiB merge gap, 8 requests in
/// flight); `plaid_source_set_hints` changes them.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `read` and `release` are NULL or callable as
/// documented; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_source_new(
    name: *const c_char,
    length: u64,
    read: plaid_read_fn,
    user_data: *mut c_void,
    release: plaid_release_fn,
    out: *mut *mut plaid_source,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let name = c_str!(name, "name")?;
        let read = read.ok_or_else(|| Error::invalid("read is NULL"))?;
        let source = plaid_source {
            inner: Arc::new(CallbackSource {
                name: name.to_owned(),
                length,
                read,
                release,
                user_data: UserData(user_data),
                hints: Mutex::new(SourceHints::new(
                    PLAID_SOURCE_DEFAULT_REQUEST_BYTES,
                    PLAID_SOURCE_DEFAULT_MERGE_GAP,
                    PLAID_SOURCE_DEFAULT_MAX_IN_FLIGHT,
                )),
            }),
        };
        publish(out, source);
        Ok(())
    }
}

/// Set how plaid reads the source: `request_bytes` per read (4 KiB to 1 GiB), reading
/// through gaps of up to `merge_gap` bytes (at most 1 GiB) between wanted ranges rather
/// than issuing another request, and keeping up to `max_in_flight` requests (1 to 1024)
/// in flight. Read options can override the request size and the depth per deserializer.
/// Set them before opening: a deserializer reads its header with the hints of the time,
/// and each load with those of its start. Returns `PLAID_ERR_INVALID_ARGUMENT` (changing
/// nothing) for a NULL handle or a value out of range.
///
/// # Safety
/// `source` is NULL (an error) or a live handle not used concurrently by this call's
/// caller elsewhere.
#[no_mangle]
pub unsafe extern "C" fn plaid_source_set_hints(
    source: *mut plaid_source,
    request_bytes: u64,
    merge_gap: u64,
    max_in_flight: u32,
) -> plaid_status {
    ffi_boundary! {
        let source = handle_mut!(source, "source")?;
        if !(MIN_REQUEST_BYTES..=MAX_REQUEST_BYTES).contains(&request_bytes) {
            return Err(Error::invalid(format!(
                "request size {request_bytes} is outside {MIN_REQUEST_BYTES}..={MAX_REQUEST_BYTES}"
            )));
        }
        if merge_gap > MAX_REQUEST_BYTES {
            return Err(Error::invalid(format!(
                "merge gap {merge_gap} exceeds {MAX_REQUEST_BYTES}"
            )));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(Error::invalid(format!(
                "{max_in_flight} requests in flight is outside 1..={MAX_IN_FLIGHT}"
            )));
        }
        *source.inner.hints.lock() = SourceHints::new(request_bytes, merge_gap, max_in_flight);
        Ok(())
    }
}

/// Give up the caller's reference to a source. NULL is a no-op; call at most once per
/// handle. `release` runs now if no deserializer uses the source, else when the last one
/// is freed.
///
/// # Safety
/// `source` is NULL or a live handle from `plaid_source_new`.
#[no_mangle]
pub unsafe extern "C" fn plaid_source_free(source: *mut plaid_source) {
    free_handle!(source)
}

/// Open a source like a file: detect its format (plaid, safetensors or tensorizer) from
/// its first bytes and read and validate its header, reading ahead so that a header that
/// fits the read-ahead window costs one read. The deserializer keeps its own reference:
/// the caller may free its handle right after. `options` may be NULL for defaults; the
/// file-only options (`mmap`, `direct_io`) are ignored. A sharded checkpoint's index names
/// other files and cannot be opened as a source (`PLAID_ERR_UNSUPPORTED`), nor can a
/// source be viewed in place (`plaid_deserializer_tensor_data` and
/// `plaid_deserializer_map` give `PLAID_ERR_UNSUPPORTED`). On success `*out` holds a
/// handle to free with `plaid_deserializer_free`; on failure `*out` is untouched (and the
/// source keeps only the caller's reference).
///
/// Returns the statuses of `plaid_deserializer_open`, with `PLAID_ERR_IO` naming the source
/// and offset for a failed read.
///
/// # Safety
/// `source` is NULL or a live handle; `options` NULL or a live handle; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_deserializer_open_source(
    source: *const plaid_source,
    options: *const plaid_read_options,
    out: *mut *mut plaid_deserializer,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let source = handle!(source, "source")?;
        let options = options_or_default!(options);
        let inner = Arc::clone(&source.inner) as Arc<dyn Source>;
        let handle = plaid_deserializer::new(Deserializer::from_source(Box::new(inner), options)?)?;
        publish(out, handle);
        Ok(())
    }
}
