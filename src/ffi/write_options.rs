//! `plaid_write_options`: how a file is written. Pass NULL for the defaults.

use super::publish;
use super::status::plaid_status;
use crate::options::WriteOptions;

/// Options for `plaid_serializer_new`. Opaque; made by `plaid_write_options_new`,
/// destroyed by `plaid_write_options_free`.
pub struct plaid_write_options {
    pub(crate) inner: WriteOptions,
}

/// Create write options holding the defaults (4096-byte alignment, 4 MiB checksum
/// blocks, one checksum thread per core, fsync on) and store them in `*out`.
///
/// # Safety
/// `out` is NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_new(
    out: *mut *mut plaid_write_options,
) -> plaid_status {
    ffi_boundary! {
        let out = out_arg!(out, "out")?;
        let options = plaid_write_options {
            inner: WriteOptions::default(),
        };
        publish(out, options);
        Ok(())
    }
}

/// Free write options. NULL is a no-op; call at most once per handle. A serializer keeps
/// its own copy.
///
/// # Safety
/// `options` is NULL or a live handle from `plaid_write_options_new`.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_free(options: *mut plaid_write_options) {
    free_handle!(options)
}

/// Alignment of tensor data in the file: a power of two from 4096 to 1 GiB.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_alignment(
    options: *mut plaid_write_options,
    bytes: u64,
) -> plaid_status {
    set_option!(options, set_alignment(bytes))
}

/// Size of a checksum block: a power of two from 4 KiB to 1 GiB (default 4 MiB).
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_checksum_block_size(
    options: *mut plaid_write_options,
    bytes: u64,
) -> plaid_status {
    set_option!(options, set_checksum_block_size(bytes))
}

/// Threads computing checksums; 0 (the default) picks one per core. At most 1024.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_threads(
    options: *mut plaid_write_options,
    threads: u32,
) -> plaid_status {
    set_option!(options, set_threads(threads as usize))
}

/// `fsync` the file and its directory before `plaid_serializer_finish` returns
/// (`sync != 0`, the default). Turning it off trades durability for speed.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_sync(
    options: *mut plaid_write_options,
    sync: i32,
) -> plaid_status {
    set_option!(options, set_sync(sync != 0))
}

/// Set one option of remote storage, used when `plaid_serializer_new` is given a URL
/// (`s3://`, `gs://`, `az://`): the keys of `plaid_read_options_set_storage`, and for
/// uploads `upload_part_size` (bytes per part of the multipart upload, 5 MiB to 5 GiB;
/// default 16 MiB) and `upload_parts_in_flight` (parts sent at once, 1 to 256; default 8;
/// host memory held by an upload is about their product). Returns
/// `PLAID_ERR_INVALID_ARGUMENT` for an unknown key, `PLAID_ERR_UNSUPPORTED` in a build
/// without remote storage.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `key` and `value` NULL (an error) or
/// NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_storage(
    options: *mut plaid_write_options,
    key: *const std::ffi::c_char,
    value: *const std::ffi::c_char,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        let (key, value) = (c_str!(key, "key")?, c_str!(value, "value")?);
        o.inner.storage.set(key, value)
    }
}

/// Encrypt the tensor data with the raw 32-byte `key`: AEGIS-256X4 (or AES-256-GCM, see
/// `plaid_write_options_set_cipher`) per checksum block under a key of the file's own (`docs/FORMAT.md` section 13); names, shapes, dtypes and
/// metadata stay readable. `NULL, 0` clears the key material. A key of any other length,
/// or a key while a passphrase is set, is `PLAID_ERR_INVALID_ARGUMENT`. plaid keeps a
/// copy, zeroed when the options (and every serializer made with them) are freed; the
/// caller may wipe its own at once.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `key` is NULL or points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_key(
    options: *mut plaid_write_options,
    key: *const u8,
    len: usize,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        // SAFETY: NULL or `len` readable bytes, as this function's `# Safety` requires.
        let key = unsafe { super::read_options::secret_bytes(key, len, "key") }?;
        o.inner.set_key(key)?;
        Ok(())
    }
}

/// Encrypt the tensor data with a key derived from the passphrase `pw` (its `len` bytes
/// exactly, NUL bytes included) by Argon2id with a fresh salt and the limits of
/// `plaid_write_options_set_passphrase_limits` (by default 3 passes over 256 MiB, as
/// tensorizer's `EncryptionParams.from_string`), recorded in the file. `NULL, 0` clears
/// the key material. A passphrase while a key is set is `PLAID_ERR_INVALID_ARGUMENT`. The
/// copy is zeroed when the options are freed.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `pw` is NULL or points to `len` readable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_passphrase(
    options: *mut plaid_write_options,
    pw: *const std::ffi::c_char,
    len: usize,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        // SAFETY: NULL or `len` readable bytes, as this function's `# Safety` requires.
        let pw = unsafe { super::read_options::secret_bytes(pw.cast(), len, "pw") }?;
        o.inner.set_passphrase(pw)?;
        Ok(())
    }
}

/// Derive the passphrase's key with `salt` (`len` = 16 bytes) instead of a fresh salt per
/// file, as tensorizer's `EncryptionParams.from_string(salt=...)` does. A plaid file still
/// draws its own per-file key salt; a tensorizer file records this one. `NULL, 0` goes
/// back to fresh salts; another length is `PLAID_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `options` is NULL (an error) or a live handle; `salt` is NULL or points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_passphrase_salt(
    options: *mut plaid_write_options,
    salt: *const u8,
    len: usize,
) -> plaid_status {
    ffi_boundary! {
        let o = handle_mut!(options, "options")?;
        // SAFETY: NULL or `len` readable bytes, as this function's `# Safety` requires.
        let salt = unsafe { super::read_options::secret_bytes(salt, len, "salt") }?;
        o.inner.set_passphrase_salt(salt)?;
        Ok(())
    }
}

/// The cost of deriving a key from a passphrase: Argon2id `passes` (1 to 64) over
/// `memory` bytes (a multiple of 1024, 8 KiB to 4 GiB); anything else is
/// `PLAID_ERR_INVALID_ARGUMENT`. The defaults, 3 passes over 256 MiB (libsodium's
/// `MODERATE`, tensorizer's default), are the least a real passphrase should get; lower
/// limits are for tests. Readers take at most 1 GiB and 16 passes unless they raise their
/// limits (`plaid_read_options_set_passphrase_limits`), so creating a serializer (or
/// converting) with more is `PLAID_ERR_INVALID_ARGUMENT` unless
/// `plaid_write_options_set_kdf_above_read_limits` allows it.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_passphrase_limits(
    options: *mut plaid_write_options,
    passes: u64,
    memory: u64,
) -> plaid_status {
    set_option!(options, set_passphrase_limits(passes, memory))
}

/// Allow passphrase limits above what readers take by default, 1 GiB and 16 passes
/// (`allow != 0`): the files written can only be read with raised read limits
/// (`plaid_read_options_set_passphrase_limits`). Off by default.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_kdf_above_read_limits(
    options: *mut plaid_write_options,
    allow: i32,
) -> plaid_status {
    set_option!(options, set_kdf_above_read_limits(allow != 0))
}

/// Cipher 1 of encrypted plaid files: AES-256-GCM (for deployments that must use a NIST
/// cipher).
pub const PLAID_CIPHER_AES_256_GCM: u32 = 1;
/// Cipher 2 of encrypted plaid files: AEGIS-256X4, the default (about four times as fast to
/// decrypt as AES-256-GCM on the machines measured; `BENCHMARKS.md`).
pub const PLAID_CIPHER_AEGIS_256X4: u32 = 2;

/// The cipher that encrypts the data when a key or a passphrase is set:
/// `PLAID_CIPHER_AEGIS_256X4` (the default) or `PLAID_CIPHER_AES_256_GCM`; any other value
/// is `PLAID_ERR_INVALID_ARGUMENT`. Readers need not be told: the file records it.
///
/// # Safety
/// `options` is NULL (an error) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn plaid_write_options_set_cipher(
    options: *mut plaid_write_options,
    cipher: u32,
) -> plaid_status {
    set_option!(options, set_cipher(cipher))
}
