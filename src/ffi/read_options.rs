//! `plaid_read_options`: how a file is read. Pass NULL wherever options are taken to get
//! the defaults.

use std::ffi::c_char;

use super::publish;
use super::status::plaid_status;
use crate::options::ReadOptions;

/// Options for `plaid_deserializer_open`. Opaque; made by `plaid_read_options_new`,
/// destroyed by `plaid_read_options_free`. Not shared between threads while being set.
pub struct plaid_read_options {
    pub(crate) inner: ReadOptions,
}

/// Create read options holding the defaults (verification on, one CPU worker per core,
/// each source's own request size and requests in flight: 16 MiB and one per core for
/// local files) and store them in `*out`. Free with `plaid_read_options_free`.
///
/// # Safety
/// `out` is NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_new(out: *mut *mut plaid_read_options) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let options = plaid_read_options {
            inner: ReadOptions::default(),
        };
        publish(out, options);
        Ok(())
    }
}

/// Free read options. NULL is a no-op; call at most once per handle. A deserializer
/// keeps its own copy, so options may be freed right after `plaid_deserializer_open`.
///
/// # Safety
/// `options` is NULL or a live handle from `plaid_read_options_new`.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_free(options: *mut plaid_read_options) {
    free_handle!(options)
}

/// Verify every byte against the file's checksums (`verify != 0`, the default) or not.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_verify(
    options: *mut plaid_read_options,
    verify: i32,
) -> plaid_status {
    set_option!(options, set_verify(verify != 0))
}

/// Number of CPU workers: how many threads verify or copy at once; 0 (the default) picks
/// one per core. At most 1024. Requests in flight are set apart
/// (`plaid_read_options_set_requests_in_flight`).
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_threads(
    options: *mut plaid_read_options,
    threads: u32,
) -> plaid_status {
    set_option!(options, set_threads(threads as usize))
}

/// Least time between two progress reports, in milliseconds (default 100; 0 reports
/// after every chunk).
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_progress_interval_ms(
    options: *mut plaid_read_options,
    milliseconds: u32,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        let interval = std::time::Duration::from_millis(u64::from(milliseconds));
        o.inner.set_progress_interval(interval);
        Ok(())
    }
}

/// Read local files with `O_DIRECT`, bypassing the page cache (`direct != 0`), or not
/// (the default). Where the file system refuses direct I/O, reads fall back to buffered.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_direct_io(
    options: *mut plaid_read_options,
    direct: i32,
) -> plaid_status {
    set_option!(options, set_direct_io(direct != 0))
}

/// Copy local files out of a memory map of the file (`on != 0`, the default) or read them
/// with `pread` (`on == 0`). The map is guarded: a file truncated while it is read gives
/// `PLAID_ERR_FORMAT`, never a `SIGBUS`. `O_DIRECT`, when on, takes precedence.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_mmap(
    options: *mut plaid_read_options,
    on: i32,
) -> plaid_status {
    set_option!(options, set_mmap(on != 0))
}

/// With verification on, verify every tensor in `plaid_deserializer_map` (`on != 0`)
/// rather than each tensor on its first `plaid_deserializer_tensor_data` (`on == 0`, the
/// default, which makes mapping take milliseconds whatever the file's size).
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_verify_views_up_front(
    options: *mut plaid_read_options,
    on: i32,
) -> plaid_status {
    set_option!(options, set_verify_views_up_front(on != 0))
}

/// Ask for transparent huge pages (`MADV_HUGEPAGE`) for the host memory that
/// `plaid_deserializer_load_host` allocates (`on != 0`), or not (`on == 0`, the default).
/// Huge pages cut page faults where the kernel has free ones at hand (a process that loads
/// again into memory it freed); a fresh process gets blocks the kernel must first make
/// (compaction) or a hypervisor first back, which measured 2.7x slower than 4 KiB pages.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_huge_pages(
    options: *mut plaid_read_options,
    on: i32,
) -> plaid_status {
    set_option!(options, set_huge_pages(on != 0))
}

/// With verification on, check SHA-256 hashes too where a file stores them (`on != 0`), or
/// only its CRCs (`on == 0`, the default). tensorizer files store a CRC32 and a SHA-256 per
/// tensor; SHA-256 runs at about 1.4 GB/s per core against 10 GB/s or more for a CRC.
/// Either detects damaged data; only SHA-256 detects a damaged stored SHA-256. Stored
/// beside the data in the same file, a SHA-256 is no signature: whoever can change the
/// data can change it too (encryption is what authenticates).
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_verify_sha256(
    options: *mut plaid_read_options,
    on: i32,
) -> plaid_status {
    set_option!(options, set_verify_sha256(on != 0))
}

/// Put the copies to CUDA destinations on the caller's stream `stream` (a `CUstream`),
/// so that the weights are ordered with the caller's work on it; NULL (the default) uses
/// streams of plaid's own. The stream must belong to the primary context of the
/// destinations' device (the context the CUDA runtime and PyTorch use) and stay valid
/// while the deserializer loads. Loads still return only when every byte is on the device.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_cuda_stream(
    options: *mut plaid_read_options,
    stream: *mut std::ffi::c_void,
) -> plaid_status {
    set_option!(options, set_cuda_stream(stream as usize))
}

/// Bytes per read request, 4 KiB to 1 GiB, rounded to whole checksum blocks. By default
/// each source says (16 MiB for local files, its hints for a `plaid_source`).
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_chunk_size(
    options: *mut plaid_read_options,
    bytes: u64,
) -> plaid_status {
    set_option!(options, set_request_bytes(bytes))
}

/// Read requests kept in flight, each on an I/O thread of plaid's, apart from the CPU
/// workers; 0 (the default) takes the source's hint (one per core for local files; the
/// hints of a `plaid_source`). At most 1024. Host memory that a load reads through (for
/// verification alone and for batches of small tensors) is at most this times the
/// request size.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_requests_in_flight(
    options: *mut plaid_read_options,
    requests: u32,
) -> plaid_status {
    set_option!(options, set_requests_in_flight(requests))
}

/// Staging lanes per CUDA device: each holds two pinned buffers of one request, and an
/// I/O thread takes one for each job bound for device memory; 0 (the default) gives one
/// per request in flight. At most 1024. Pinned memory is lanes x 2 x the request size per device,
/// however many requests are in flight.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_staging_lanes(
    options: *mut plaid_read_options,
    lanes: u32,
) -> plaid_status {
    set_option!(options, set_staging_lanes(lanes as usize))
}

/// Set one option of remote storage, used when `plaid_deserializer_open` is given a URL:
/// `key` is an `object_store` configuration key (`aws_access_key_id`,
/// `aws_secret_access_key`, `aws_session_token`, `aws_region`, `aws_endpoint` (an
/// `http://` endpoint is used as given), `aws_virtual_hosted_style_request`,
/// `aws_skip_signature` (unsigned requests, for public buckets), `timeout`,
/// `connect_timeout`, `allow_http`, `google_service_account`, `google_base_url`,
/// `azure_storage_account_name`, `azure_storage_access_key`, `azure_storage_endpoint`, ...)
/// or one of plaid's: `aws_profile` (a profile of `~/.aws/config` and `credentials`),
/// `aws_ca_bundle`, `max_retries` (default 10), `retry_timeout` (`30s`, `2m`; default 3
/// minutes). Values set here take precedence over the environment (`AWS_*` and the
/// others). Keys are case-insensitive; setting a key again replaces its value. Returns
/// `PLAID_ERR_INVALID_ARGUMENT` for an unknown key (values are checked when a URL is
/// opened), `PLAID_ERR_UNSUPPORTED` in a build without remote storage.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `key` and `value` NULL (an error) or
/// NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_storage(
    options: *mut plaid_read_options,
    key: *const std::ffi::c_char,
    value: *const std::ffi::c_char,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        let (key, value) = (c_str!(key, "key")?, c_str!(value, "value")?);
        o.inner.storage.set(key, value)
    }
}

/// Let the shards of a sharded safetensors checkpoint resolve (symlinks followed) anywhere
/// inside the folder `root` (a UTF-8 path). By default they must resolve inside the index's
/// own folder or, for a Hugging Face cache snapshot (`models--NAME/snapshots/REV/`, whose
/// files are symlinks into the model's `blobs` folder), inside that model's cache folder: a shard that
/// resolves elsewhere fails `plaid_deserializer_open` with `PLAID_ERR_IO`, so a downloaded
/// checkpoint cannot make the loader read other files of the machine.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `root` NULL (an error) or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_shard_root(
    options: *mut plaid_read_options,
    root: *const std::ffi::c_char,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        let root = c_str!(root, "root")?;
        o.inner.set_shard_root(root);
        Ok(())
    }
}

/// The `len` bytes at `bytes`, or `None` for `NULL, 0`; `NULL` with a length is an error.
///
/// # Safety
/// `bytes` is NULL or points to `len` readable bytes.
pub(crate) unsafe fn secret_bytes<'a>(
    bytes: *const u8,
    len: usize,
    what: &str,
) -> crate::Result<Option<&'a [u8]>> {
    if bytes.is_null() {
        return match len {
            0 => Ok(None),
            _ => Err(crate::Error::InvalidArgument(format!(
                "{what} is NULL but its length is {len}"
            ))),
        };
    }
    // SAFETY: non-NULL, and `len` readable bytes as this function's `# Safety` requires.
    Ok(Some(unsafe { std::slice::from_raw_parts(bytes, len) }))
}

/// Decrypt encrypted tensors (tensorizer's and plaid's encrypted files) with the raw 32-byte `key`;
/// `NULL, 0` clears the key material. A key of any other length, or a key while a
/// passphrase is set, is `PLAID_ERR_INVALID_ARGUMENT`.
///
/// A key means the file must be encrypted: loading, verifying, viewing or converting a
/// tensor stored in the clear (one with stored bytes; empty and zero-filled tensors are
/// exempt) is `PLAID_ERR_DECRYPT` ("expected an encrypted file; it is stored in the clear"),
/// before anything is read, unless `plaid_read_options_set_allow_plaintext` allows it.
/// Without this rule, whoever can replace the file could strip its encryption (the CRCs
/// of the ciphertext still match) or put any plaintext model in its place, and a reader
/// holding the key would load it as the weights. plaid keeps a copy of the key, zeroed
/// when the options (and every deserializer opened with them) are freed; the caller may
/// wipe its own at once.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `key` is NULL or points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_key(
    options: *mut plaid_read_options,
    key: *const u8,
    len: usize,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        // SAFETY: NULL or `len` readable bytes, as this function's `# Safety` requires.
        let key = unsafe { secret_bytes(key, len, "key") }?;
        o.inner.set_key(key)?;
        Ok(())
    }
}

/// Decrypt encrypted tensors with a key derived from the passphrase `pw` (its `len` bytes
/// exactly, NUL bytes included) with the salt and limits each tensor records (tensorizer's
/// `EncryptionParams.from_string`: Argon2id); `NULL, 0` clears the key material. A
/// passphrase while a key is set is `PLAID_ERR_INVALID_ARGUMENT`. Derived keys are cached
/// per salt and limits. A file whose derivation asks for more than this reader's limits
/// (by default 1 GiB and 16 passes; `plaid_read_options_set_passphrase_limits`) is
/// `PLAID_ERR_DECRYPT` before any memory is taken; memory the system refuses is
/// `PLAID_ERR_IO`, never an abort. As with a key, a tensor stored in the clear is
/// `PLAID_ERR_DECRYPT` unless `plaid_read_options_set_allow_plaintext` allows it. The copy
/// is zeroed when the options are freed.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `pw` is NULL or points to `len` readable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_passphrase(
    options: *mut plaid_read_options,
    pw: *const c_char,
    len: usize,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        // SAFETY: NULL or `len` readable bytes, as this function's `# Safety` requires.
        let pw = unsafe { secret_bytes(pw.cast(), len, "pw") }?;
        o.inner.set_passphrase(pw)?;
        Ok(())
    }
}

/// With a key or a passphrase set, read tensors stored in the clear too (`allow != 0`)
/// instead of refusing them with `PLAID_ERR_DECRYPT` (`allow == 0`, the default): the
/// explicit choice of a fleet that holds both encrypted files and files in the clear. A
/// file read in the clear is protected by its CRCs against damage only, not against
/// whoever can replace it. Without key material it changes nothing.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_allow_plaintext(
    options: *mut plaid_read_options,
    allow: i32,
) -> plaid_status {
    set_option!(options, set_allow_plaintext(allow != 0))
}

/// The most a file's passphrase key derivation (Argon2id) may cost this reader:
/// `max_memory` bytes (8 KiB to 4 GiB) and `max_passes` passes (1 to 64); anything else
/// is `PLAID_ERR_INVALID_ARGUMENT`. By default 1 GiB and 16 passes (tensorizer's
/// strongest preset is 1 GiB and 4 passes): a file asking for more is `PLAID_ERR_DECRYPT`,
/// naming the tensor and its limits, before any memory is taken, so that a hostile file
/// cannot cost minutes of CPU per open. Raise them for trusted files written with
/// stronger limits.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_read_options_set_passphrase_limits(
    options: *mut plaid_read_options,
    max_memory: u64,
    max_passes: u64,
) -> plaid_status {
    set_option!(options, set_passphrase_limits(max_memory, max_passes))
}
