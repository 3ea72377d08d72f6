//! Options for reading and writing. Plain structs on the Rust side; opaque handles with
//! setters on the C side, so adding an option never breaks the ABI.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::plaid::{
    DEFAULT_BLOCK_SIZE, MAX_ALIGNMENT, MAX_BLOCK_SIZE, MIN_ALIGNMENT, MIN_BLOCK_SIZE,
};
pub use crate::remote::StorageOptions;

/// Default size of one read request of a local file (sources give their own in their
/// hints, which the request size option overrides).
pub const DEFAULT_REQUEST_BYTES: u64 = crate::source::LOCAL_REQUEST_BYTES;

/// The public builder setters (`options.threads(8)?.verify(false)`), each over the in-place
/// setter that does the work (`set_threads`), which the C API calls on its handle's options:
/// one field set, nothing cloned. `fallible fn name / set_name(args);` makes
/// `name(self, args) -> Result<Self>`; `fn name / set_name(args);` makes `name(self, args) ->
/// Self`; `fn name / set_name(arg) => field;` makes both, the in-place one setting `field`.
macro_rules! builders {
    () => {};
    ($(#[$doc:meta])* fn $name:ident / $set:ident ($arg:ident: $ty:ty) => $field:ident; $($rest:tt)*) => {
        $(#[$doc])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$set($arg);
            self
        }
        pub(crate) fn $set(&mut self, $arg: $ty) {
            self.$field = $arg;
        }
        builders! { $($rest)* }
    };
    ($(#[$doc:meta])* fallible fn $name:ident / $set:ident ($($arg:ident: $ty:ty),*); $($rest:tt)*) => {
        $(#[$doc])*
        pub fn $name(mut self, $($arg: $ty),*) -> Result<Self> {
            self.$set($($arg),*)?;
            Ok(self)
        }
        builders! { $($rest)* }
    };
    ($(#[$doc:meta])* fn $name:ident / $set:ident ($($arg:ident: $ty:ty),*); $($rest:tt)*) => {
        $(#[$doc])*
        pub fn $name(mut self, $($arg: $ty),*) -> Self {
            self.$set($($arg),*);
            self
        }
        builders! { $($rest)* }
    };
}

/// Smallest request size accepted.
pub const MIN_REQUEST_BYTES: u64 = 4096;
/// Largest request size accepted.
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// Default least time between two progress reports.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Most worker threads accepted.
pub const MAX_THREADS: usize = 1024;
/// Most requests in flight accepted.
pub const MAX_IN_FLIGHT: u32 = 1024;
/// Most staging lanes accepted.
pub const MAX_STAGING_LANES: usize = 1024;

/// How a file is read. Fields change only through the checking setters, so a value of
/// this type is always valid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Verify every byte against the file's checksums (default on).
    pub(crate) verify: bool,
    /// CPU workers (threads verifying or copying at once); 0 picks one per core.
    pub(crate) threads: usize,
    /// Bytes per read request, rounded to whole checksum blocks; 0: the source's hint.
    pub(crate) request_bytes: u64,
    /// Read requests kept in flight (I/O threads); 0: the source's hint.
    pub(crate) requests_in_flight: u32,
    /// Staging lanes (two pinned buffers each) per device; 0: one per request in flight.
    pub(crate) staging_lanes: usize,
    /// Least time between two progress reports.
    pub(crate) progress_interval: Duration,
    /// Read local files with `O_DIRECT`, bypassing the page cache.
    pub(crate) direct_io: bool,
    /// Copy local files out of a guarded memory map rather than with `pread`.
    pub(crate) mmap: bool,
    /// Verify every tensor when zero-copy views are first mapped, not on first access.
    pub(crate) verify_views_up_front: bool,
    /// Ask for transparent huge pages for host memory plaid allocates.
    pub(crate) huge_pages: bool,
    /// With verification on, check cryptographic hashes too where a file stores them
    /// (tensorizer's SHA-256, about 1.4 GB/s per core), not only its CRCs (default off).
    pub(crate) verify_sha256: bool,
    /// The caller's `CUstream` that copies to device memory go on (0: plaid's own streams).
    pub(crate) cuda_stream: usize,
    /// Remote storage configuration (URLs only).
    pub(crate) storage: StorageOptions,
    /// The folder a sharded checkpoint's shards may resolve inside (None: its own folder, or
    /// its Hugging Face cache model folder).
    pub(crate) shard_root: Option<std::path::PathBuf>,
    /// The key or passphrase that decrypts encrypted tensors.
    pub(crate) secret: crate::crypto::Secret,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            verify: true,
            threads: 0,
            request_bytes: 0,
            requests_in_flight: 0,
            staging_lanes: 0,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            direct_io: false,
            mmap: true,
            verify_views_up_front: false,
            huge_pages: false,
            verify_sha256: false,
            cuda_stream: 0,
            storage: StorageOptions::default(),
            shard_root: None,
            secret: Default::default(),
        }
    }
}

impl ReadOptions {
    builders! {
        /// Set a remote storage option ([`StorageOptions::set`]).
        fallible fn storage / set_storage(key: &str, value: &str);
        /// Let the shards of a sharded checkpoint resolve (symlinks followed) anywhere inside
        /// `root`, instead of only inside the index's folder (or, for a Hugging Face cache
        /// snapshot, that model's cache folder).
        fn shard_root / set_shard_root(root: impl Into<std::path::PathBuf>);
        /// Decrypt encrypted tensors with `key` (32 bytes); `None` clears the key material.
        /// A key of another length, or a key while a passphrase is set, is `InvalidArgument`.
        /// With a key, every tensor loaded must be encrypted: one stored in the clear (with
        /// stored bytes) is [`Error::Decrypt`], unless [`ReadOptions::allow_plaintext`]. The key
        /// is zeroed in memory when the options (and every copy of them) are dropped.
        fallible fn key / set_key(key: Option<&[u8]>);
        /// Decrypt encrypted tensors with a key derived from `passphrase` (its bytes, as given)
        /// with the salt and limits each tensor records (tensorizer's `from_string`: Argon2id);
        /// `None` clears the key material. A passphrase while a key is set is
        /// `InvalidArgument`. Derived keys are cached per salt and limits. As with a key, a
        /// tensor stored in the clear is refused unless [`ReadOptions::allow_plaintext`]; a
        /// derivation past [`ReadOptions::passphrase_limits`] is refused before it runs.
        fallible fn passphrase / set_passphrase(passphrase: Option<&[u8]>);
        /// With a key or a passphrase given, read tensors stored in the clear too (`true`)
        /// instead of refusing them (`false`, the default). A mixed fleet's explicit choice:
        /// a file in the clear is then protected by its CRCs only, against damage, not against
        /// whoever can replace it (`docs/THREAT-MODEL.md`).
        fn allow_plaintext / set_allow_plaintext(allow: bool);
        /// Say where the key or passphrase came from (the CLI: "the environment's PLAID_KEY"),
        /// so that the refusal of a file in the clear names it; `None` for the caller.
        fn key_origin / set_key_origin(origin: Option<&str>);
        /// The most a file's passphrase key derivation may cost this reader: `max_memory`
        /// bytes (8 KiB to 4 GiB) and `max_passes` passes (1 to 64); anything else is
        /// `InvalidArgument`. By default 1 GiB and 16 passes
        /// ([`DEFAULT_READ_KDF_MEMORY`](crate::crypto::DEFAULT_READ_KDF_MEMORY),
        /// [`DEFAULT_READ_KDF_PASSES`](crate::crypto::DEFAULT_READ_KDF_PASSES)): a file asking
        /// for more is [`Error::Decrypt`] before any memory is taken, so that a hostile file
        /// cannot cost minutes of CPU or gigabytes per open. Raise them for trusted files
        /// written with stronger limits.
        fallible fn passphrase_limits / set_passphrase_limits(max_memory: u64, max_passes: u64);
        /// Turn verification on or off.
        fn verify / set_verify(verify: bool) => verify;
        /// With verification on, whether to check SHA-256 hashes where a file stores them
        /// (tensorizer files store a CRC32 and a SHA-256 per tensor), not only its CRCs
        /// (default off). SHA-256 runs at about 1.4 GB/s per core against 10 GB/s or more
        /// for a CRC. Stored beside the data in the same file, it detects nothing the CRC
        /// misses but damage to the stored SHA-256 itself: it is no signature (whoever can
        /// change the data can change both); encryption is what authenticates.
        fn verify_sha256 / set_verify_sha256(on: bool) => verify_sha256;
        /// Put the copies to device memory on the caller's `CUstream` (given as its address;
        /// 0, the default, uses streams of plaid's own), so that the weights are ordered with
        /// the caller's work on that stream. The stream must belong to the primary context of
        /// the destinations' device and outlive the deserializer's loads.
        fn cuda_stream / set_cuda_stream(stream: usize) => cuda_stream;
        /// Set the number of CPU workers: how many threads verify or copy at once (0 = one
        /// per core). Requests in flight are set apart ([`ReadOptions::requests_in_flight`]).
        fallible fn threads / set_threads(threads: usize);
        /// Set the request size: bytes per read (rounded to whole checksum blocks). By
        /// default each source says (16 MiB for local files).
        fallible fn request_bytes / set_request_bytes(bytes: u64);
        /// Set how many read requests are kept in flight (each on an I/O thread of its own),
        /// apart from the CPU workers; 0 (the default) takes the source's hint (one per core
        /// for local files). Host memory read through is bounded by this times the request
        /// size.
        fallible fn requests_in_flight / set_requests_in_flight(requests: u32);
        /// Set how many staging lanes (two pinned buffers of one request each) each device
        /// gets; 0 (the default) gives one per request in flight.
        fallible fn staging_lanes / set_staging_lanes(lanes: usize);
        /// Set the least time between two progress reports (zero: after every chunk).
        fn progress_interval / set_progress_interval(interval: Duration) => progress_interval;
        /// Read local files with `O_DIRECT` (through per-thread aligned 8 MiB bounce buffers
        /// where a destination is not page-aligned), falling back to buffered reads where the
        /// file system refuses it. Off by default.
        fn direct_io / set_direct_io(direct: bool) => direct_io;
        /// Copy local files out of a memory map of the file (on by default) instead of
        /// reading them with `pread`. The map is guarded: a file truncated while it is read
        /// gives a [`crate::Error::Format`] error, never a `SIGBUS`. `O_DIRECT` reads, when
        /// on, take precedence.
        fn mmap / set_mmap(on: bool) => mmap;
        /// With verification on, verify every tensor when the file is mapped for zero-copy
        /// views ([`crate::Deserializer::map`]) rather than each tensor on its first view
        /// (the default, which makes mapping take milliseconds whatever the file's size).
        fn verify_views_up_front / set_verify_views_up_front(on: bool) => verify_views_up_front;
        /// Ask for transparent huge pages (`MADV_HUGEPAGE`) for host memory that plaid
        /// allocates ([`crate::Deserializer::load_to_host`]). Off by default: huge pages
        /// fill an arena 3x faster where the kernel has free ones at hand (memory a process
        /// just freed), but a fresh process that loads once gets blocks the kernel must
        /// first make (compaction) or a hypervisor must first back: a 1 GiB arena then took
        /// 0.85 s on huge pages against 0.31 s on 4 KiB pages faulted by the workers in
        /// parallel (`BENCHMARKS.md`). Turn it on for processes that load repeatedly.
        fn huge_pages / set_huge_pages(on: bool) => huge_pages;
    }

    pub(crate) fn set_storage(&mut self, key: &str, value: &str) -> Result<()> {
        self.storage.set(key, value)?;
        Ok(())
    }

    /// The remote storage options.
    pub fn get_storage(&self) -> &StorageOptions {
        &self.storage
    }

    pub(crate) fn set_shard_root(&mut self, root: impl Into<std::path::PathBuf>) {
        self.shard_root = Some(root.into());
    }

    pub(crate) fn set_key(&mut self, key: Option<&[u8]>) -> Result<()> {
        self.secret.set_key(key)?;
        Ok(())
    }

    pub(crate) fn set_passphrase(&mut self, passphrase: Option<&[u8]>) -> Result<()> {
        self.secret.set_passphrase(passphrase)?;
        Ok(())
    }

    pub(crate) fn set_allow_plaintext(&mut self, allow: bool) {
        self.secret.set_allow_plaintext(allow);
    }

    /// Whether tensors stored in the clear are read despite a key or passphrase.
    pub fn get_allow_plaintext(&self) -> bool {
        self.secret.allows_plaintext()
    }

    pub(crate) fn set_key_origin(&mut self, origin: Option<&str>) {
        self.secret.set_origin(origin);
    }

    pub(crate) fn set_passphrase_limits(&mut self, max_memory: u64, max_passes: u64) -> Result<()> {
        self.secret.set_kdf_limits(max_memory, max_passes)?;
        Ok(())
    }

    /// The most memory (bytes) and passes a file's key derivation may take.
    pub fn get_passphrase_limits(&self) -> (u64, u64) {
        self.secret.kdf_limits()
    }

    pub(crate) fn set_threads(&mut self, threads: usize) -> Result<()> {
        self.threads = check_threads(threads)?;
        Ok(())
    }

    pub(crate) fn set_request_bytes(&mut self, bytes: u64) -> Result<()> {
        self.request_bytes = within(bytes, MIN_REQUEST_BYTES, MAX_REQUEST_BYTES, "request size")?;
        Ok(())
    }

    pub(crate) fn set_requests_in_flight(&mut self, requests: u32) -> Result<()> {
        self.requests_in_flight = within(requests, 0, MAX_IN_FLIGHT, "requests in flight")?;
        Ok(())
    }

    pub(crate) fn set_staging_lanes(&mut self, lanes: usize) -> Result<()> {
        self.staging_lanes = within(lanes, 0, MAX_STAGING_LANES, "staging lanes")?;
        Ok(())
    }

    /// Requests kept in flight (0: the source's hint).
    pub fn get_requests_in_flight(&self) -> u32 {
        self.requests_in_flight
    }

    /// Staging lanes per device (0: one per request in flight).
    pub fn get_staging_lanes(&self) -> usize {
        self.staging_lanes
    }

    /// Whether local files are copied out of a memory map.
    pub fn get_mmap(&self) -> bool {
        self.mmap
    }

    /// Whether host memory plaid allocates asks for huge pages.
    pub fn get_huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Whether views are verified when the file is mapped.
    pub fn get_verify_views_up_front(&self) -> bool {
        self.verify_views_up_front
    }

    /// Whether local files are read with `O_DIRECT`.
    pub fn get_direct_io(&self) -> bool {
        self.direct_io
    }

    /// Whether data is verified.
    pub fn get_verify(&self) -> bool {
        self.verify
    }

    /// The configured worker threads (0 = one per core).
    pub fn get_threads(&self) -> usize {
        self.threads
    }

    /// Bytes per read request (0: each source's own request size).
    pub fn get_request_bytes(&self) -> u64 {
        self.request_bytes
    }

    /// The number of workers to run.
    pub(crate) fn worker_threads(&self) -> usize {
        resolve_threads(self.threads)
    }

    /// What the load pipeline takes from these options.
    pub(crate) fn load_settings(&self) -> crate::pipeline::Settings<'_> {
        crate::pipeline::Settings {
            verify: crate::pipeline::Verify {
                on: self.verify,
                sha256: self.verify_sha256,
            },
            cpu_workers: self.worker_threads(),
            request_bytes: self.request_bytes,
            requests_in_flight: self.requests_in_flight,
            staging_lanes: self.staging_lanes,
            progress_interval: self.progress_interval,
            cuda_stream: self.cuda_stream,
            secret: &self.secret,
        }
    }
}

/// How a file is written. Fields change only through the checking setters, so a value
/// of this type is always valid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteOptions {
    /// Alignment of every tensor's data in the file: a power of two, at least 4096.
    pub(crate) alignment: u64,
    /// Size of a checksum block: a power of two from 4 KiB to 1 GiB.
    pub(crate) checksum_block_size: u64,
    /// Threads computing checksums; 0 picks one per core.
    pub(crate) threads: usize,
    /// `fsync` the file and its directory before reporting success (default on).
    pub(crate) sync: bool,
    /// Remote storage configuration (URLs only).
    pub(crate) storage: StorageOptions,
    /// Key material: with it, the tensor data is encrypted (`docs/FORMAT.md` section 13).
    pub(crate) secret: crate::crypto::Secret,
    /// Argon2id passes for a passphrase.
    pub(crate) kdf_passes: u64,
    /// Argon2id memory for a passphrase, in bytes.
    pub(crate) kdf_memory: u64,
    /// The cipher of an encrypted file: `format::plaid::CIPHER_*`.
    pub(crate) cipher: u32,
    /// Whether passphrase limits above what readers take by default are allowed.
    pub(crate) kdf_above_read_limits: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            alignment: MIN_ALIGNMENT,
            checksum_block_size: DEFAULT_BLOCK_SIZE,
            threads: 0,
            sync: true,
            storage: StorageOptions::default(),
            secret: Default::default(),
            kdf_passes: crate::crypto::DEFAULT_KDF_PASSES,
            kdf_memory: crate::crypto::DEFAULT_KDF_MEMORY,
            cipher: crate::format::plaid::CIPHER_AEGIS_256X4,
            kdf_above_read_limits: false,
        }
    }
}

impl WriteOptions {
    builders! {
        /// Set the data alignment.
        fallible fn alignment / set_alignment(bytes: u64);
        /// Set the checksum block size.
        fallible fn checksum_block_size / set_checksum_block_size(bytes: u64);
        /// Set the checksum thread count (0 = one per core).
        fallible fn threads / set_threads(threads: usize);
        /// Set a remote storage option ([`StorageOptions::set`]).
        fallible fn storage / set_storage(key: &str, value: &str);
        /// Encrypt the tensor data with `key` (32 bytes): AEGIS-256X4 or AES-256-GCM
        /// ([`WriteOptions::cipher`]) under a key of the file's own (`docs/FORMAT.md` section
        /// 13); `None` clears the key material. A key of another
        /// length, or a key while a passphrase is set, is `InvalidArgument`. The key is zeroed
        /// in memory when the options (and every copy of them) are dropped.
        fallible fn key / set_key(key: Option<&[u8]>);
        /// Encrypt the tensor data with a key derived from `passphrase` (its bytes, as given)
        /// by Argon2id with a fresh salt and the limits of [`WriteOptions::passphrase_limits`]
        /// (by default 3 passes over 256 MiB, libsodium's and tensorizer's `MODERATE`);
        /// `None` clears the key material. A passphrase while a key is set is
        /// `InvalidArgument`.
        fallible fn passphrase / set_passphrase(passphrase: Option<&[u8]>);
        /// Derive the passphrase's key with `salt` (16 bytes) for every file written, instead
        /// of a fresh salt per file: what tensorizer's `EncryptionParams.from_string(salt=...)`
        /// does, so the key can be derived once and reused. A plaid file still draws its own
        /// per-file key salt (the file key differs per file); a tensorizer file records this
        /// salt. `None` goes back to fresh salts; another length is `InvalidArgument`.
        fallible fn passphrase_salt / set_passphrase_salt(salt: Option<&[u8]>);
        /// Set the cost of deriving a key from a passphrase: Argon2id `passes` (1 to 64) over
        /// `memory` bytes (a multiple of 1024, 8 KiB to 4 GiB). Below the defaults only for
        /// tests: the cost is what stands between a stolen file and a guessed passphrase.
        /// Above what readers take by default (1 GiB, 16 passes) a file cannot be read until
        /// its readers raise their limits, so a writer refuses such limits when it writes
        /// unless [`WriteOptions::kdf_above_read_limits`] says so.
        fallible fn passphrase_limits / set_passphrase_limits(passes: u64, memory: u64);
        /// Allow passphrase limits above what readers take by default (1 GiB, 16 passes):
        /// files that every reader must open with raised limits
        /// ([`ReadOptions::passphrase_limits`]).
        fn kdf_above_read_limits / set_kdf_above_read_limits(allow: bool) => kdf_above_read_limits;
        /// The cipher that encrypts the data when a key or a passphrase is set:
        /// [`CIPHER_AEGIS_256X4`](crate::format::plaid::CIPHER_AEGIS_256X4) (the default,
        /// about four times as fast to decrypt here) or
        /// [`CIPHER_AES_256_GCM`](crate::format::plaid::CIPHER_AES_256_GCM) (for deployments
        /// that must use a NIST cipher); any other value is `InvalidArgument`.
        fallible fn cipher / set_cipher(cipher: u32);
        /// Turn `fsync` on or off.
        fn sync / set_sync(sync: bool) => sync;
    }

    pub(crate) fn set_alignment(&mut self, bytes: u64) -> Result<()> {
        self.alignment = power_of_two_within(bytes, MIN_ALIGNMENT, MAX_ALIGNMENT, "alignment")?;
        Ok(())
    }

    pub(crate) fn set_checksum_block_size(&mut self, bytes: u64) -> Result<()> {
        self.checksum_block_size =
            power_of_two_within(bytes, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE, "checksum block size")?;
        Ok(())
    }

    pub(crate) fn set_threads(&mut self, threads: usize) -> Result<()> {
        self.threads = check_threads(threads)?;
        Ok(())
    }

    pub(crate) fn set_storage(&mut self, key: &str, value: &str) -> Result<()> {
        self.storage.set(key, value)?;
        Ok(())
    }

    /// The remote storage options.
    pub fn get_storage(&self) -> &StorageOptions {
        &self.storage
    }

    pub(crate) fn set_key(&mut self, key: Option<&[u8]>) -> Result<()> {
        self.secret.set_key(key)?;
        Ok(())
    }

    pub(crate) fn set_passphrase(&mut self, passphrase: Option<&[u8]>) -> Result<()> {
        self.secret.set_passphrase(passphrase)?;
        Ok(())
    }

    pub(crate) fn set_passphrase_salt(&mut self, salt: Option<&[u8]>) -> Result<()> {
        self.secret.set_salt(salt)?;
        Ok(())
    }

    pub(crate) fn set_passphrase_limits(&mut self, passes: u64, memory: u64) -> Result<()> {
        if !(1..=crate::format::plaid::MAX_KDF_PASSES).contains(&passes)
            || !memory.is_multiple_of(1024)
            || !(crate::format::plaid::MIN_KDF_MEMORY..=crate::format::plaid::MAX_KDF_MEMORY)
                .contains(&memory)
        {
            return Err(Error::invalid(format!(
                "{passes} passes over {memory} bytes: passes are 1 to {}, memory a multiple of 1024 from {} to {} bytes",
                crate::format::plaid::MAX_KDF_PASSES,
                crate::format::plaid::MIN_KDF_MEMORY,
                crate::format::plaid::MAX_KDF_MEMORY
            )));
        }
        self.kdf_passes = passes;
        self.kdf_memory = memory;
        Ok(())
    }

    /// The passes and memory of a passphrase's key derivation, checked against what
    /// readers take by default unless allowed above it.
    pub(crate) fn kdf(&self) -> Result<(u64, u64)> {
        use crate::crypto::{DEFAULT_READ_KDF_MEMORY, DEFAULT_READ_KDF_PASSES};
        let above =
            self.kdf_passes > DEFAULT_READ_KDF_PASSES || self.kdf_memory > DEFAULT_READ_KDF_MEMORY;
        if above && !self.kdf_above_read_limits && self.secret.is_passphrase() {
            return Err(Error::invalid(format!(
                "passphrase limits of {} passes over {} bytes are above what readers take by \
                 default ({DEFAULT_READ_KDF_PASSES} passes over {DEFAULT_READ_KDF_MEMORY} \
                 bytes): every reader would have to raise its limits to open the file; allow \
                 it explicitly (WriteOptions::kdf_above_read_limits, \
                 plaid_write_options_set_kdf_above_read_limits, --kdf-above-read-limits)",
                self.kdf_passes, self.kdf_memory
            )));
        }
        Ok((self.kdf_passes, self.kdf_memory))
    }

    pub(crate) fn set_cipher(&mut self, cipher: u32) -> Result<()> {
        use crate::format::plaid::{CIPHER_AEGIS_256X4, CIPHER_AES_256_GCM};
        if cipher != CIPHER_AES_256_GCM && cipher != CIPHER_AEGIS_256X4 {
            return Err(Error::invalid(format!(
                "cipher {cipher}: {CIPHER_AES_256_GCM} is AES-256-GCM, {CIPHER_AEGIS_256X4} AEGIS-256X4"
            )));
        }
        self.cipher = cipher;
        Ok(())
    }

    /// Whether the data will be encrypted (a key or a passphrase is set).
    pub fn encrypts(&self) -> bool {
        self.secret.is_set()
    }

    /// The data alignment.
    pub fn get_alignment(&self) -> u64 {
        self.alignment
    }

    /// The checksum block size.
    pub fn get_checksum_block_size(&self) -> u64 {
        self.checksum_block_size
    }

    /// Whether the file and its directory are synced.
    pub fn get_sync(&self) -> bool {
        self.sync
    }

    pub(crate) fn worker_threads(&self) -> usize {
        resolve_threads(self.threads)
    }
}

/// `value` when it lies in `min..=max`, else an `InvalidArgument` naming the setting.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    value: T,
    min: T,
    max: T,
    what: &str,
) -> Result<T> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid(format!(
            "{what} {value} is outside {min}..={max}"
        )))
    }
}

fn check_threads(threads: usize) -> Result<usize> {
    within(threads, 0, MAX_THREADS, "threads")
}

/// `bytes` when it is a power of two in `min..=max`, else an `InvalidArgument`.
fn power_of_two_within(bytes: u64, min: u64, max: u64, what: &str) -> Result<u64> {
    if bytes.is_power_of_two() && (min..=max).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(Error::invalid(format!(
            "{what} {bytes} is not a power of two between {min} and {max}"
        )))
    }
}

fn resolve_threads(threads: usize) -> usize {
    crate::pool::threads_or_cores(threads)
}
