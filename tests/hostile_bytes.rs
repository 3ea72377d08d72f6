//! Hostile inputs: hand-made malformed files for every field of every format plaid reads
//! (plaid, safetensors, sharded safetensors through `model.safetensors.index.json`, and
//! tensorizer), each asserting the documented error kind (docs/FORMAT.md section 9,
//! docs/TENSORIZER-FORMAT.md, docs/THREAT-MODEL.md) and bounding the peak heap that opening
//! the file (and, where it opens, verifying it and reading its small tensors) costs.
//!
//! The contract checked for every case:
//! - a malformed, truncated or hostile file is `Error::Format`; an intact file using a newer
//!   version, a feature flag or a dtype this build does not know is `Error::Unsupported`;
//!   data that fails its checksum is `Error::Checksum` / `Error::HashMismatch`, found when
//!   the data is read (verify, read), not when the file is opened; never a panic, never a
//!   hang, never `InvalidArgument` (which is for caller mistakes);
//! - the error message names the file;
//! - the peak heap above what was live before opening is at most
//!   `8 * (bytes of the input files) + SLACK`: a hostile file may cost a small multiple of
//!   what it really holds, never what it merely declares.
//!
//! A counting global allocator measures the heap. Its counters are process-wide, so every
//! test takes `LOCK` and runs its cases one after the other; each case runs on its own
//! thread, joined with a timeout, so that a hang fails the case instead of the whole run.
//! Every failing case is collected and reported at the end of its format's test.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use plaid::format::{checksum, proto};
use plaid::{DType, Deserializer, Error, ReadOptions, Serializer, WriteOptions};
use prost::Message;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Heap accounting
// ---------------------------------------------------------------------------------------

/// Bytes currently allocated through the global allocator.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Most bytes allocated at once since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting what is live and its peak (requested sizes; a realloc
/// counts its change in size).
struct Counting;

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::SeqCst);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller guarantees `layout` has a non-zero size, which is all
        // System.alloc requires.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller guarantees `layout` has a non-zero size, which is all
        // System.alloc_zeroed requires.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: our caller guarantees `ptr` came from this allocator with `layout`, and
        // every allocation here is System's.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: our caller guarantees `ptr` came from this allocator (so from System) with
        // `layout`, and that `new_size` is non-zero and valid for `layout`'s alignment.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Start a new measurement: the peak becomes what is live now, which is returned.
fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::SeqCst);
    PEAK.store(now, Ordering::SeqCst);
    now
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// What opening, verifying and reading a file costs whatever its contents: the worker
/// pool, the pipeline's per-load state, the case's own thread. Measured with this file's
/// valid control cases (`--nocapture` prints every case's peak): the small hand-made files
/// (plaid, safetensors, sharded, tensorizer) peak at 6 to 17 KiB above the baseline, the
/// tensorizer fixtures (263 to 865 KB) at 0.7 to 0.9 MiB, well under 8x their size. 4 MiB
/// leaves room for machines with many more cores (per-worker state) while still catching
/// any allocation sized by a declared, absent length (hundreds of MiB or more here).
const SLACK: u64 = 4 * MIB;
/// Bytes of heap allowed per byte of input.
const PER_INPUT_BYTE: u64 = 8;
/// A case that has not finished after this long hangs.
const HANG: Duration = Duration::from_secs(120);
/// Tensors at least this large are not read (their declared size may be hostile, and a
/// zero-filled tensor legitimately costs its declared size when read into memory).
const SMALL: u64 = MIB;

/// The counters are process-wide: one test measures at a time.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Cases and the runner
// ---------------------------------------------------------------------------------------

/// Which documented error a case expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Format,
    Unsupported,
    Checksum,
    HashMismatch,
    Io,
    Decrypt,
}

fn is(kind: Kind, e: &Error) -> bool {
    match kind {
        Kind::Format => matches!(e, Error::Format { .. }),
        Kind::Unsupported => matches!(e, Error::Unsupported(_)),
        Kind::Checksum => matches!(e, Error::Checksum { .. }),
        Kind::HashMismatch => matches!(e, Error::HashMismatch { .. }),
        Kind::Io => matches!(e, Error::Io { .. }),
        Kind::Decrypt => matches!(e, Error::Decrypt(_)),
    }
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::Io { .. } => "Io",
        Error::Format { .. } => "Format",
        Error::Unsupported(_) => "Unsupported",
        Error::Checksum { .. } => "Checksum",
        Error::HashMismatch { .. } => "HashMismatch",
        Error::Capacity { .. } => "Capacity",
        Error::Cancelled(_) => "Cancelled",
        Error::NotFound(_) => "NotFound",
        Error::NoCuda(_) => "NoCuda",
        Error::Cuda(_) => "Cuda",
        Error::Decrypt(_) => "Decrypt",
        _ => "another variant",
    }
}

/// What a case must do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Opening fails with this kind.
    Refused(Kind),
    /// Opens; verifying and reading every small tensor succeed.
    Loads,
    /// Opens; verifying fails with this kind, and every small read either succeeds or
    /// fails with it.
    DataFails(Kind),
}
use Expect::{DataFails, Loads, Refused};

/// One hostile input.
struct Case {
    name: String,
    /// The files written into the case's own folder: the first is opened.
    files: Vec<(String, Vec<u8>)>,
    /// Folders created beside them.
    dirs: Vec<String>,
    /// Names besides the files' that the error message may name (a missing shard).
    also_named: Vec<String>,
    expect: Expect,
}

impl Case {
    fn new(name: impl Into<String>, file: &str, bytes: Vec<u8>, expect: Expect) -> Case {
        Case {
            name: name.into(),
            files: vec![(file.to_owned(), bytes)],
            dirs: Vec::new(),
            also_named: Vec::new(),
            expect,
        }
    }

    fn with_file(mut self, name: &str, bytes: Vec<u8>) -> Case {
        self.files.push((name.to_owned(), bytes));
        self
    }

    fn with_dir(mut self, name: &str) -> Case {
        self.dirs.push(name.to_owned());
        self
    }

    fn naming(mut self, name: &str) -> Case {
        self.also_named.push(name.to_owned());
        self
    }
}

/// What happened to one file.
struct Outcome {
    /// The tensor count, or why it did not open.
    open: Result<usize, Error>,
    verify: Option<Result<(), Error>>,
    reads: Vec<(String, Result<(), Error>)>,
}

/// Open `path`, and if it opens, verify it and read each small tensor, checking every hash
/// the file stores (a tensorizer file's SHA-256s too, which loads skip by default).
fn exercise(path: &Path) -> Outcome {
    let d = match Deserializer::open(path, ReadOptions::default().verify_sha256(true)) {
        Ok(d) => d,
        Err(e) => {
            return Outcome {
                open: Err(e),
                verify: None,
                reads: Vec::new(),
            }
        }
    };
    let verify = Some(d.verify().map(drop));
    let reads = d
        .tensors()
        .iter()
        .filter(|t| t.nbytes < SMALL)
        .map(|t| (short(&t.name, 60), d.read_tensor(t.index).map(drop)))
        .collect();
    Outcome {
        open: Ok(d.tensors().len()),
        verify,
        reads,
    }
}

/// `text` cut to at most `most` characters (names and messages can be megabytes).
fn short(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

fn describe(e: &Error) -> String {
    format!("{} \"{}\"", variant(e), short(&e.to_string(), 240))
}

/// Run one case; `Ok` holds the peak and what happened, for the log; `Err` every way it
/// failed.
fn run_case(case: Case) -> Result<(u64, String), String> {
    let Case {
        name: _,
        files,
        dirs,
        also_named,
        expect,
    } = case;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    for d in &dirs {
        std::fs::create_dir(dir.path().join(d)).map_err(|e| format!("mkdir: {e}"))?;
    }
    let mut input_len = 0u64;
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).map_err(|e| format!("write: {e}"))?;
        input_len += bytes.len() as u64;
    }
    let opened: PathBuf = dir.path().join(&files[0].0);
    let names: Vec<String> = files
        .iter()
        .map(|(n, _)| n.clone())
        .chain(dirs)
        .chain(also_named)
        .collect();
    drop(files);

    let base = reset_peak();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(exercise(&opened));
    });
    let outcome = match rx.recv_timeout(HANG) {
        Ok(outcome) => {
            let _ = worker.join();
            outcome
        }
        Err(RecvTimeoutError::Timeout) => {
            // The worker still uses the folder: leave it.
            std::mem::forget(dir);
            return Err(format!("hang: no result after {HANG:?}"));
        }
        Err(RecvTimeoutError::Disconnected) => return Err("panicked".into()),
    };
    let peak = (PEAK.load(Ordering::SeqCst).saturating_sub(base)) as u64;

    let mut problems = Vec::new();
    let names_file = |e: &Error| {
        let message = e.to_string();
        names.iter().any(|n| message.contains(n.as_str()))
    };
    let check_error = |what: &str, e: &Error, kind: Kind| {
        if !is(kind, e) {
            Some(format!("{what}: expected {kind:?}, got {}", describe(e)))
        } else if !names_file(e) {
            Some(format!(
                "{what}: the message does not name the file: {}",
                describe(e)
            ))
        } else {
            None
        }
    };
    match (expect, &outcome.open) {
        (Refused(kind), Err(e)) => problems.extend(check_error("open", e, kind)),
        (Refused(kind), Ok(n)) => {
            let after = match &outcome.verify {
                Some(Err(e)) => format!("; verify then failed with {}", describe(e)),
                _ => String::new(),
            };
            problems.push(format!(
                "open: expected {kind:?}, but the file opened ({n} tensors){after}"
            ));
        }
        (Loads | DataFails(_), Err(e)) => {
            problems.push(format!("open: expected success, got {}", describe(e)))
        }
        (Loads, Ok(_)) => {
            if let Some(Err(e)) = &outcome.verify {
                problems.push(format!("verify: expected success, got {}", describe(e)));
            }
            for (tensor, read) in &outcome.reads {
                if let Err(e) = read {
                    problems.push(format!(
                        "read of '{tensor}': expected success, got {}",
                        describe(e)
                    ));
                }
            }
        }
        (DataFails(kind), Ok(_)) => {
            match &outcome.verify {
                Some(Err(e)) => problems.extend(check_error("verify", e, kind)),
                _ => problems.push(format!("verify: expected {kind:?}, but it succeeded")),
            }
            for (tensor, read) in &outcome.reads {
                if let Err(e) = read {
                    problems.extend(check_error(&format!("read of '{tensor}'"), e, kind));
                }
            }
        }
    }
    let limit = PER_INPUT_BYTE * input_len + SLACK;
    if peak > limit {
        problems.push(format!(
            "peak heap {} KiB above the baseline exceeds the limit of {} KiB \
             ({PER_INPUT_BYTE} x {input_len} input bytes + {} KiB)",
            peak / KIB,
            limit / KIB,
            SLACK / KIB
        ));
    }
    if problems.is_empty() {
        let what = match (&outcome.open, &outcome.verify) {
            (Err(e), _) => describe(e),
            (Ok(_), Some(Err(e))) => format!("opened; verify: {}", describe(e)),
            (Ok(n), _) => format!("opened, {n} tensors"),
        };
        Ok((peak, what))
    } else {
        Err(problems.join("; "))
    }
}

/// Build the cases of `format` and run them in order (under [`LOCK`]: building them
/// allocates too), then fail with the whole list of failures.
fn run_all(format: &str, build: fn() -> Vec<Case>) {
    let _guard = lock();
    let cases = build();
    let total = cases.len();
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in cases {
        let name = case.name.clone();
        let at = Instant::now();
        match run_case(case) {
            Ok((peak, what)) => println!(
                "ok    {format}: {name} (peak {} KiB, {:.2}s): {}",
                peak / KIB,
                at.elapsed().as_secs_f64(),
                short(&what, 160)
            ),
            Err(why) => {
                println!("FAIL  {format}: {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    println!(
        "{format}: {total} cases, {} failed, {:.1}s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{format}: {} of {total} hostile-input cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// Byte helpers
// ---------------------------------------------------------------------------------------

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(buf[at..at + 2].try_into().unwrap())
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// A copy of `base` changed by `f`.
fn mutated(base: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = base.to_vec();
    f(&mut bytes);
    bytes
}

/// One change to a file at a known offset.
#[derive(Clone, Copy, Debug)]
enum Patch {
    /// Set a byte.
    Byte(usize, u8),
    /// XOR a byte with a mask.
    Flip(usize, u8),
    /// Set a little-endian u16, u32, u64.
    U16(usize, u16),
    U32(usize, u32),
    U64(usize, u64),
}
use Patch::{Byte, Flip, U16, U32, U64};

/// A copy of `base` with `patches` applied.
fn patched(base: &[u8], patches: &[Patch]) -> Vec<u8> {
    mutated(base, |b| {
        for &p in patches {
            match p {
                Byte(at, v) => b[at] = v,
                Flip(at, mask) => b[at] ^= mask,
                U16(at, v) => put_u16(b, at, v),
                U32(at, v) => put_u32(b, at, v),
                U64(at, v) => put_u64(b, at, v),
            }
        }
    })
}

/// Replace the only occurrence of `from` in `buf` with `to` (same length).
fn replace_once(buf: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = buf
        .windows(from.len())
        .position(|w| w == from)
        .expect("placeholder present");
    buf[at..at + to.len()].copy_from_slice(to);
}

/// JSON arrays nested `depth` deep, closed.
fn deep_array(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// JSON objects nested `depth` deep, closed.
fn deep_object(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

const DEEP: usize = 100_000;

// ---------------------------------------------------------------------------------------
// plaid
// ---------------------------------------------------------------------------------------

const PLAID_FILE: &str = "hostile_case.plaid";

/// A protobuf varint.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A protobuf field key.
fn key(field: u64, wire: u64) -> Vec<u8> {
    varint(field << 3 | wire)
}

/// A length-delimited protobuf field.
fn len_field(field: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = key(field, 2);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// The 32-byte preamble of section 3, with a correct preamble CRC.
fn preamble(version: u16, header_crc: u32, header_len: u64, flags: u32) -> Vec<u8> {
    let mut out = b"\x89PLAID\r\n\x1a\n".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    let crc = checksum::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Rewrite the preamble CRC of `file` after its bytes 0..28 were changed.
fn fix_preamble_crc(file: &mut [u8]) {
    let crc = checksum::crc32c(&file[..28]);
    put_u32(file, 28, crc);
}

/// A plaid file: preamble (checksums right), `header`, zeros up to `data_offset`, `body`.
fn plaid_assemble(header: &[u8], data_offset: u64, body: &[u8]) -> Vec<u8> {
    let mut file = preamble(1, checksum::crc32c(header), header.len() as u64, 0);
    file.extend_from_slice(header);
    if (file.len() as u64) < data_offset {
        file.resize(data_offset as usize, 0);
    }
    file.extend_from_slice(body);
    file
}

/// A file written by plaid's own writer, taken apart.
struct PlaidBase {
    bytes: Vec<u8>,
    header: proto::Header,
    /// Everything from `data_offset` on.
    body: Vec<u8>,
}

impl PlaidBase {
    /// Two tensors, `a` (u8 [16], at 4096) and `b` (f32 [4, 2], at 8192), and one
    /// metadata entry `k` = `v`.
    fn new() -> PlaidBase {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.plaid");
        let mut w = Serializer::create(&path, WriteOptions::default().sync(false)).unwrap();
        let a: Vec<u8> = (0..16).collect();
        w.add_tensor("a", DType::U8, &[16], &a).unwrap();
        w.add_tensor("b", DType::F32, &[4, 2], &[0x3f; 32]).unwrap();
        w.set_metadata("k", "v").unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = get_u64(&bytes, 16) as usize;
        let header = proto::Header::decode(&bytes[32..32 + header_len]).unwrap();
        assert_eq!(header.tensors.len(), 2);
        assert_eq!(header.tensors[0].offset, 4096);
        assert_eq!(header.tensors[1].offset, 8192);
        let body = bytes[header.data_offset as usize..].to_vec();
        PlaidBase {
            bytes,
            header,
            body,
        }
    }

    fn header_end(&self) -> usize {
        32 + get_u64(&self.bytes, 16) as usize
    }

    /// The base file with its header changed by `patch` (checksums recomputed).
    fn with(&self, patch: impl FnOnce(&mut proto::Header)) -> Vec<u8> {
        let mut h = self.header.clone();
        patch(&mut h);
        plaid_assemble(&h.encode_to_vec(), self.header.data_offset, &self.body)
    }

    /// The base file with its encoded header bytes changed by `patch` (checksums
    /// recomputed; a header grown past the data offset pushes the data back).
    fn with_raw(&self, patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut raw = self.header.encode_to_vec();
        patch(&mut raw);
        plaid_assemble(&raw, self.header.data_offset, &self.body)
    }

    /// The base file with `patch` applied to the header (a typed change), then `raw` to
    /// its encoding.
    fn with_both(
        &self,
        patch: impl FnOnce(&mut proto::Header),
        raw: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let mut h = self.header.clone();
        patch(&mut h);
        let mut bytes = h.encode_to_vec();
        raw(&mut bytes);
        plaid_assemble(&bytes, self.header.data_offset, &self.body)
    }

    /// The base file with its bytes changed by `f` (no checksum fixed).
    fn bytes_with(&self, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        mutated(&self.bytes, f)
    }
}

/// A plaid file laid out as the writer lays one out (section 10), whatever the size of
/// its header: alignment and block size 4096, each tensor's length and block CRCs from
/// its data. Names, dtypes, shapes and metadata are taken as given, valid or not.
fn plaid_laid_out(
    tensors: Vec<(proto::Tensor, Vec<u8>)>,
    metadata: BTreeMap<String, String>,
) -> Vec<u8> {
    let align = |v: u64| v.div_ceil(4096) * 4096;
    let mut h = proto::Header {
        alignment: 4096,
        checksum_block_size: 4096,
        data_offset: 4096,
        file_length: 4096,
        tensors: tensors
            .iter()
            .map(|(t, data)| proto::Tensor {
                length: data.len() as u64,
                block_crc32c: checksum::block_crcs(data, 4096),
                ..t.clone()
            })
            .collect(),
        metadata,
        writer: "hostile_bytes".into(),
        encryption: None,
    };
    loop {
        let mut cursor = h.data_offset;
        for (t, (_, data)) in h.tensors.iter_mut().zip(&tensors) {
            t.offset = align(cursor);
            cursor = t.offset + data.len() as u64;
        }
        h.file_length = cursor;
        let raw = h.encode_to_vec();
        let needed = align(32 + raw.len() as u64);
        if needed <= h.data_offset {
            let mut body = vec![0u8; (h.file_length - h.data_offset) as usize];
            for (t, (_, data)) in h.tensors.iter().zip(&tensors) {
                let at = (t.offset - h.data_offset) as usize;
                body[at..at + data.len()].copy_from_slice(data);
            }
            return plaid_assemble(&raw, h.data_offset, &body);
        }
        h.data_offset = needed;
    }
}

fn ptensor(name: &str, dtype: DType, shape: &[u64]) -> proto::Tensor {
    proto::Tensor {
        name: name.into(),
        dtype: dtype.id() as i32,
        shape: shape.to_vec(),
        ..Default::default()
    }
}

/// A metadata entry (Header field 6) on the wire.
fn wire_metadata_entry(k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut entry = Vec::new();
    if !k.is_empty() {
        entry.extend(len_field(1, k));
    }
    if !v.is_empty() {
        entry.extend(len_field(2, v));
    }
    len_field(6, &entry)
}

fn plaid_cases() -> Vec<Case> {
    let base = PlaidBase::new();
    let b = &base;
    let mut cases = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case::new(name, PLAID_FILE, bytes, expect))
    };
    let len = b.bytes.len();
    let header_end = b.header_end();

    add("valid base file (control)", b.bytes.clone(), Loads);

    // --- Truncation: every byte of the preamble and header, then every data boundary.
    add("empty file", Vec::new(), Refused(Kind::Format));
    let mut cuts: Vec<usize> = (1..=header_end + 1).collect();
    cuts.extend([
        4095,
        4096,
        4097,
        4096 + 15,
        4096 + 16,
        8191,
        8192,
        8193,
        len - 1,
    ]);
    for cut in cuts {
        let part = match cut {
            0..32 => "inside the preamble",
            c if c < header_end => "inside the header",
            c if c < 4096 => "inside the padding",
            c if c < 8192 => "inside or after tensor a",
            _ => "inside tensor b",
        };
        add(
            &format!("truncated to {cut} of {len} bytes ({part})"),
            b.bytes[..cut].to_vec(),
            Refused(Kind::Format),
        );
    }
    add(
        "one byte appended",
        b.bytes_with(|f| f.push(0)),
        Refused(Kind::Format),
    );

    // --- Magic.
    add(
        "magic: high bit of byte 0 stripped",
        b.bytes_with(|f| f[0] &= 0x7f),
        Refused(Kind::Format),
    );
    add(
        "magic: CRLF converted to LF",
        b.bytes_with(|f| {
            f.remove(6);
        }),
        Refused(Kind::Format),
    );
    add(
        "magic: another format's (PNG)",
        b.bytes_with(|f| f[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n")),
        Refused(Kind::Format),
    );

    // --- Preamble fields.
    add(
        "preamble CRC wrong",
        b.bytes_with(|f| f[28] ^= 1),
        Refused(Kind::Format),
    );
    for version in [0u16, 2, u16::MAX] {
        add(
            &format!("version {version} (intact preamble)"),
            b.bytes_with(|f| {
                put_u16(f, 10, version);
                fix_preamble_crc(f);
            }),
            Refused(Kind::Unsupported),
        );
    }
    add(
        "version 2 with a stale preamble CRC (damage, not a newer file)",
        b.bytes_with(|f| put_u16(f, 10, 2)),
        Refused(Kind::Format),
    );
    for flags in [2u32, 0x8000_0000, u32::MAX] {
        add(
            &format!("flags {flags:#x}"),
            b.bytes_with(|f| {
                put_u32(f, 24, flags);
                fix_preamble_crc(f);
            }),
            Refused(Kind::Unsupported),
        );
    }
    // The one flag defined (encrypted) without the header's encryption field: damage.
    add(
        "flags 0x1 (encrypted) without encryption in the header",
        b.bytes_with(|f| {
            put_u32(f, 24, 1);
            fix_preamble_crc(f);
        }),
        Refused(Kind::Format),
    );
    for (what, header_len) in [
        ("u64::MAX", u64::MAX),
        ("2^63", 1 << 63),
        ("256 MiB + 1 (over the limit)", (256 << 20) + 1),
        ("256 MiB (the limit, past the end of the file)", 256 << 20),
        ("the file's length (past its end)", len as u64),
        ("file length - 31 (one byte past the end)", len as u64 - 31),
    ] {
        add(
            &format!("header length {what}"),
            b.bytes_with(|f| {
                put_u64(f, 16, header_len);
                fix_preamble_crc(f);
            }),
            Refused(Kind::Format),
        );
    }
    add(
        "header length 0 (an empty header: every field at its default)",
        b.bytes_with(|f| {
            put_u64(f, 16, 0);
            put_u32(f, 12, checksum::crc32c(&[]));
            fix_preamble_crc(f);
        }),
        Refused(Kind::Format),
    );
    add(
        "header length one byte short (header CRC fixed to match)",
        b.bytes_with(|f| {
            let n = get_u64(f, 16) - 1;
            put_u64(f, 16, n);
            let crc = checksum::crc32c(&f[32..32 + n as usize]);
            put_u32(f, 12, crc);
            fix_preamble_crc(f);
        }),
        Refused(Kind::Format),
    );
    add(
        "header CRC wrong",
        b.bytes_with(|f| f[40] ^= 0x10),
        Refused(Kind::Format),
    );

    // --- The header's wire encoding.
    add(
        "header is not protobuf (0xff bytes, CRC right)",
        plaid_assemble(&[0xff; 40], 4096, &b.body),
        Refused(Kind::Format),
    );
    add(
        "header field number 0",
        b.with_raw(|r| r.extend([0x00, 0x01])),
        Refused(Kind::Format),
    );
    add(
        "header wire type 7",
        b.with_raw(|r| r.extend([0x0f, 0x01])),
        Refused(Kind::Format),
    );
    add(
        "varint of 11 bytes",
        b.with_raw(|r| {
            r.push(0x08);
            r.extend([0xff; 10]);
            r.push(0x01);
        }),
        Refused(Kind::Format),
    );
    add(
        "varint running past the end of the header",
        b.with_raw(|r| r.extend([0x08, 0xff, 0xff])),
        Refused(Kind::Format),
    );
    add(
        "known field with the wrong wire type (alignment as bytes)",
        b.with_raw(|r| r.extend(len_field(1, b"x"))),
        Refused(Kind::Format),
    );
    add(
        "length-delimited field longer than the header (count that lies)",
        b.with_raw(|r| {
            r.extend(key(5, 2));
            r.extend(varint(1 << 40));
            r.extend([0x0a, 0x01, b'z']);
        }),
        Refused(Kind::Format),
    );
    add(
        "packed block_crc32c run not a multiple of 4 bytes",
        b.with_raw(|r| {
            let mut t = Vec::new();
            t.extend(len_field(1, b"c"));
            t.extend(len_field(6, &[1, 2, 3]));
            r.extend(len_field(5, &t));
        }),
        Refused(Kind::Format),
    );
    add(
        "unknown fields of every wire type are skipped",
        b.with_raw(|r| {
            r.extend(key(100, 0));
            r.extend(varint(5));
            r.extend(len_field(101, b"future"));
            r.extend(key(102, 5));
            r.extend([1, 2, 3, 4]);
            r.extend(key(103, 1));
            r.extend([1, 2, 3, 4, 5, 6, 7, 8]);
            r.extend(key(104, 3));
            r.extend(key(1, 0));
            r.extend(varint(7));
            r.extend(key(104, 4));
        }),
        Loads,
    );
    add(
        "unknown groups nested 10 deep are skipped",
        b.with_raw(|r| {
            for _ in 0..10 {
                r.extend(key(15, 3));
            }
            for _ in 0..10 {
                r.extend(key(15, 4));
            }
        }),
        Loads,
    );
    add(
        "unknown groups nested 100,000 deep",
        b.with_raw(|r| {
            for _ in 0..DEEP {
                r.extend(key(15, 3));
            }
            for _ in 0..DEEP {
                r.extend(key(15, 4));
            }
        }),
        Refused(Kind::Format),
    );
    add(
        "unknown group never closed",
        b.with_raw(|r| r.extend(key(15, 3))),
        Refused(Kind::Format),
    );

    // --- Counts on the wire (check 8a) and the memory they cost.
    add(
        "1,048,577 tensors on the wire (2 bytes each)",
        b.with_raw(|r| {
            for _ in 0..(1 << 20) + 1 {
                r.extend([0x2a, 0x00]);
            }
        }),
        Refused(Kind::Format),
    );
    add(
        "1,048,576 tensors, all but the base's 2 empty (within the count limit; 2 bytes each)",
        b.with_raw(|r| {
            for _ in 0..(1 << 20) - 2 {
                r.extend([0x2a, 0x00]);
            }
        }),
        Refused(Kind::Format),
    );
    add(
        "65,537 metadata entries on the wire",
        b.with_raw(|r| {
            for _ in 0..(1 << 16) + 1 {
                r.extend([0x32, 0x00]);
            }
        }),
        Refused(Kind::Format),
    );
    add(
        "65,535 distinct metadata entries (with the base's, the limit) and a bad data offset",
        b.with_raw(|r| {
            const DIGITS: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            for i in 0..(1usize << 16) - 1 {
                let k = [DIGITS[i % 64], DIGITS[i / 64 % 64], DIGITS[i / 4096 % 64]];
                r.extend(wire_metadata_entry(&k, b""));
            }
        }),
        Refused(Kind::Format),
    );
    let tensor_with_shape = |shape_field: Vec<u8>| {
        let mut t = len_field(1, b"r");
        t.extend(key(2, 0));
        t.extend(varint(DType::U8.id() as u64));
        t.extend(shape_field);
        len_field(5, &t)
    };
    add(
        "rank 65 (packed)",
        b.with_raw(|r| r.extend(tensor_with_shape(len_field(3, &[1; 65])))),
        Refused(Kind::Format),
    );
    add(
        "rank 65 (unpacked)",
        b.with_raw(|r| {
            let mut dims = Vec::new();
            for _ in 0..65 {
                dims.extend(key(3, 0));
                dims.push(1);
            }
            r.extend(tensor_with_shape(dims))
        }),
        Refused(Kind::Format),
    );
    add(
        "rank 2,000,000 (packed, 2 MB)",
        b.with_raw(|r| r.extend(tensor_with_shape(len_field(3, &vec![1; 2_000_000])))),
        Refused(Kind::Format),
    );
    add(
        "rank 64 of ones (the limit; control)",
        plaid_laid_out(
            vec![(ptensor("r64", DType::U8, &[1; 64]), vec![7])],
            BTreeMap::new(),
        ),
        Loads,
    );

    // --- Header fields.
    for alignment in [0u64, 3, 2048, 4097, 1 << 31, u64::MAX] {
        add(
            &format!("alignment {alignment}"),
            b.with(|h| h.alignment = alignment),
            Refused(Kind::Format),
        );
    }
    for block in [0u64, 1000, 2048, 1 << 31, u64::MAX] {
        add(
            &format!("checksum block size {block}"),
            b.with(|h| h.checksum_block_size = block),
            Refused(Kind::Format),
        );
    }
    for (what, offset) in [
        ("0 (inside the preamble)", 0u64),
        ("4095 (unaligned)", 4095),
        ("12288 (past the file's end)", 12288),
        ("u64::MAX", u64::MAX),
        ("u64::MAX rounded down to the alignment", !4095u64),
    ] {
        add(
            &format!("data offset {what}"),
            b.with(|h| h.data_offset = offset),
            Refused(Kind::Format),
        );
    }
    for (what, file_length) in [
        ("one more than the file", len as u64 + 1),
        ("one less than the file", len as u64 - 1),
        ("0", 0),
        ("u64::MAX", u64::MAX),
    ] {
        add(
            &format!("file length {what}"),
            b.with(|h| h.file_length = file_length),
            Refused(Kind::Format),
        );
    }

    // --- Metadata.
    let meta = |k: &str, v: &str| {
        let (k, v) = (k.to_owned(), v.to_owned());
        b.with(move |h| {
            h.metadata.insert(k, v);
        })
    };
    add("metadata key empty", meta("", "v"), Refused(Kind::Format));
    add(
        "metadata key with a NUL",
        meta("k\0x", "v"),
        Refused(Kind::Format),
    );
    add(
        "metadata value with a NUL",
        meta("q", "v\0"),
        Refused(Kind::Format),
    );
    add(
        "metadata key of 65,536 bytes",
        plaid_laid_out(
            vec![(ptensor("a", DType::U8, &[1]), vec![1])],
            BTreeMap::from([("k".repeat(65_536), "v".into())]),
        ),
        Refused(Kind::Format),
    );
    add(
        "metadata key of 65,535 bytes (the limit; control)",
        plaid_laid_out(
            vec![(ptensor("a", DType::U8, &[1]), vec![1])],
            BTreeMap::from([("k".repeat(65_535), "v".into())]),
        ),
        Loads,
    );
    add(
        "metadata key not UTF-8",
        b.with_both(
            |h| {
                h.metadata.insert("@@UTF8@@".into(), "v".into());
            },
            |r| replace_once(r, b"@@UTF8@@", b"\xff\xfeUTF8\xc0\x80"),
        ),
        Refused(Kind::Format),
    );
    add(
        "metadata value not UTF-8",
        b.with_both(
            |h| {
                h.metadata.insert("q".into(), "@@UTF8@@".into());
            },
            |r| replace_once(r, b"@@UTF8@@", b"\xed\xa0\x80UTF8\x80"),
        ),
        Refused(Kind::Format),
    );
    add(
        "metadata key repeated on the wire (the last wins; control)",
        b.with_raw(|r| r.extend(wire_metadata_entry(b"k", b"w"))),
        Loads,
    );

    // --- Tensor names.
    let named = |name: &str| {
        let name = name.to_owned();
        b.with(move |h| h.tensors[1].name = name)
    };
    add("tensor name empty", named(""), Refused(Kind::Format));
    add(
        "tensor name with a NUL",
        named("b\0c"),
        Refused(Kind::Format),
    );
    add("tensor name only a NUL", named("\0"), Refused(Kind::Format));
    add("duplicate tensor names", named("a"), Refused(Kind::Format));
    add(
        "tensor name not UTF-8",
        b.with_both(
            |h| h.tensors[1].name = "@@UTF8@@".into(),
            |r| replace_once(r, b"@@UTF8@@", b"\xff\xfeUTF8\xc0\x80"),
        ),
        Refused(Kind::Format),
    );
    add(
        "tensor name of 65,536 bytes",
        plaid_laid_out(
            vec![(ptensor(&"n".repeat(65_536), DType::U8, &[1]), vec![1])],
            BTreeMap::new(),
        ),
        Refused(Kind::Format),
    );
    add(
        "tensor name of 4 MiB",
        plaid_laid_out(
            vec![(ptensor(&"n".repeat(4 << 20), DType::U8, &[1]), vec![1])],
            BTreeMap::new(),
        ),
        Refused(Kind::Format),
    );
    add(
        "tensor name of 65,535 bytes (the limit; control)",
        plaid_laid_out(
            vec![(ptensor(&"n".repeat(65_535), DType::U8, &[1]), vec![1])],
            BTreeMap::new(),
        ),
        Loads,
    );
    add(
        "tensor path with a NUL",
        b.with(|h| h.tensors[0].path = "[\"a\0\"]".into()),
        Refused(Kind::Format),
    );
    add(
        "tensor path not UTF-8",
        b.with_both(
            |h| h.tensors[0].path = "@@UTF8@@".into(),
            |r| replace_once(r, b"@@UTF8@@", b"\xff\xfeUTF8\xc0\x80"),
        ),
        Refused(Kind::Format),
    );
    add(
        "unknown role 99 (readers treat it as unspecified; control)",
        b.with(|h| h.tensors[0].role = 99),
        Loads,
    );

    // --- Dtypes.
    for dtype in [0i32, 23, 9999, -1, i32::MIN] {
        add(
            &format!("dtype id {dtype}"),
            b.with(|h| h.tensors[0].dtype = dtype),
            Refused(Kind::Unsupported),
        );
    }

    // --- Shapes and lengths.
    for (what, shape) in [
        ("[2^40, 2^40]", vec![1u64 << 40, 1 << 40]),
        ("[2^62, 2^62, 0]", vec![1 << 62, 1 << 62, 0]),
        ("[0, 2^62, 2^62]", vec![0, 1 << 62, 1 << 62]),
        ("[u64::MAX, 2]", vec![u64::MAX, 2]),
    ] {
        add(
            &format!("shape {what} overflows (length 0, no CRCs)"),
            b.with(|h| {
                let t = &mut h.tensors[0];
                t.shape = shape;
                t.length = 0;
                t.block_crc32c.clear();
            }),
            Refused(Kind::Format),
        );
    }
    add(
        "shape [2^61] f32 overflows (its length field says 0)",
        b.with(|h| {
            let t = &mut h.tensors[1];
            t.shape = vec![1 << 62];
            t.length = 0;
            t.block_crc32c.clear();
        }),
        Refused(Kind::Format),
    );
    add(
        "shape [0, 2^62] is a valid empty tensor (control)",
        b.with(|h| {
            let t = &mut h.tensors[0];
            t.shape = vec![0, 1 << 62];
            t.length = 0;
            t.block_crc32c.clear();
        }),
        Loads,
    );
    add(
        "shape [2^40] u8 with a matching length runs past the end of the file",
        b.with(|h| {
            let t = &mut h.tensors[1];
            t.dtype = DType::U8.id() as i32;
            t.shape = vec![1 << 40];
            t.length = 1 << 40;
            t.block_crc32c = vec![0; 1];
        }),
        Refused(Kind::Format),
    );
    for (what, length) in [
        ("15 (shape says 16)", 15u64),
        ("17 (shape says 16)", 17),
        ("u64::MAX", u64::MAX),
    ] {
        add(
            &format!("tensor length {what}"),
            b.with(|h| h.tensors[0].length = length),
            Refused(Kind::Format),
        );
    }

    // --- Offsets.
    for (what, a, bb) in [
        ("tensor a unaligned (4097)", 4097u64, 8192u64),
        ("tensor a inside the header (offset 0)", 0, 8192),
        ("tensor b at a's offset (overlapping ranges)", 4096, 4096),
        ("offsets reversed (b before a)", 8192, 4096),
        ("tensor b past the end of the file", 4096, 1 << 40),
        (
            "tensor b at the last aligned offset (end overflows)",
            4096,
            !4095u64,
        ),
    ] {
        add(
            &format!("offsets: {what}"),
            b.with(|h| {
                h.tensors[0].offset = a;
                h.tensors[1].offset = bb;
            }),
            Refused(Kind::Format),
        );
    }
    for (what, crcs) in [
        ("none for one block", vec![]),
        ("two for one block", vec![0u32, 0]),
        ("1,000,000 for one block (4 MB)", vec![0u32; 1_000_000]),
    ] {
        let crcs = crcs.clone();
        add(
            &format!("block CRCs: {what}"),
            b.with(move |h| h.tensors[0].block_crc32c = crcs),
            Refused(Kind::Format),
        );
    }

    // --- Data damage: found when the data is read, not when the file is opened.
    add(
        "a flipped bit in tensor b's data",
        b.bytes_with(|f| f[8192 + 5] ^= 0x20),
        DataFails(Kind::Checksum),
    );
    add(
        "a wrong stored block CRC (header CRC fixed)",
        b.with(|h| h.tensors[0].block_crc32c[0] ^= 1),
        DataFails(Kind::Checksum),
    );
    cases
}

// ---------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------

const ST_FILE: &str = "hostile_case.safetensors";

/// A safetensors file: the 8-byte header length, the header bytes, the data.
fn st(header: impl AsRef<[u8]>, data: &[u8]) -> Vec<u8> {
    let header = header.as_ref();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(data);
    file
}

/// One tensor entry.
fn ste(dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
}

/// A file with one tensor `t` whose entry is `entry`, followed by `data_len` bytes.
fn st_one(entry: &str, data_len: usize) -> Vec<u8> {
    st(format!(r#"{{"t":{entry}}}"#), &vec![9; data_len])
}

const ST_BASE_HEADER: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;

fn st_base() -> Vec<u8> {
    st(ST_BASE_HEADER, &[1, 2, 3, 4, 0, 0, 128, 63, 0, 0, 0, 64])
}

fn safetensors_cases() -> Vec<Case> {
    let base = st_base();
    let mut cases = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case::new(name, ST_FILE, bytes, expect))
    };
    let f = Refused(Kind::Format);
    let len = base.len();
    let header_len = ST_BASE_HEADER.len();

    add("valid base file (control)", base.clone(), Loads);
    add(
        "empty header object and no data (control)",
        st("{}", &[]),
        Loads,
    );
    add(
        "header padded with spaces (control)",
        st(format!("{ST_BASE_HEADER}        "), &base[8 + header_len..]),
        Loads,
    );
    add(
        "metadata only (control)",
        st(r#"{"__metadata__":{"a":"b"}}"#, &[]),
        Loads,
    );

    // --- Truncation at every byte.
    add("empty file", Vec::new(), f);
    for cut in 1..len {
        let part = match cut {
            0..8 => "inside the header length",
            c if c < 8 + header_len => "inside the header",
            _ => "inside the data",
        };
        add(
            &format!("truncated to {cut} of {len} bytes ({part})"),
            base[..cut].to_vec(),
            f,
        );
    }
    add("one byte appended", mutated(&base, |b| b.push(0)), f);

    // --- The header length.
    add(
        "header length 0, nothing else",
        0u64.to_le_bytes().to_vec(),
        f,
    );
    add(
        "header length 0, then data",
        mutated(&0u64.to_le_bytes(), |b| b.extend([0; 40])),
        f,
    );
    for (what, n) in [
        ("u64::MAX", u64::MAX),
        ("2^63", 1 << 63),
        ("100,000,001 (over the limit)", 100_000_001),
        ("100,000,000 (the limit, past the end)", 100_000_000),
        ("one past the end of the file", len as u64 - 7),
        ("the file's length", len as u64),
    ] {
        add(
            &format!("header length {what}"),
            mutated(&base, |b| put_u64(b, 0, n)),
            f,
        );
    }
    add(
        "header length cuts the JSON short",
        mutated(&base, |b| put_u64(b, 0, header_len as u64 - 1)),
        f,
    );
    add("header length 1 (\"{\")", st("{", &[]), f);

    // --- JSON syntax.
    add("header not JSON", st("{#}", &[]), f);
    add("header a JSON array", st("[]", &[]), f);
    add("header a JSON string", st("\"x\"", &[]), f);
    add("header null", st("null", &[]), f);
    add(
        "trailing garbage after the header object",
        st("{} x", &[]),
        f,
    );
    add(
        "header NUL bytes after the brace",
        st(b"{\0\0\0\0\0\0}", &[]),
        f,
    );
    add("a second object after the header", st("{}{}", &[]), f);

    // --- Bad text.
    add(
        "tensor name not UTF-8",
        st(
            [&b"{\"t\xff\":"[..], ste("U8", "[1]", 0, 1).as_bytes(), b"}"].concat(),
            &[1],
        ),
        f,
    );
    add(
        "tensor name with an unpaired surrogate escape",
        st(format!(r#"{{"t\ud800":{}}}"#, ste("U8", "[1]", 0, 1)), &[1]),
        f,
    );
    add(
        "tensor name with an escaped NUL",
        st(
            format!(r#"{{"t\u0000x":{}}}"#, ste("U8", "[1]", 0, 1)),
            &[1],
        ),
        f,
    );
    add(
        "tensor name with a raw NUL byte",
        st(format!("{{\"t\0x\":{}}}", ste("U8", "[1]", 0, 1)), &[1]),
        f,
    );
    add(
        "tensor name empty (control: safetensors allows it)",
        st(format!(r#"{{"":{}}}"#, ste("U8", "[1]", 0, 1)), &[1]),
        Loads,
    );
    add(
        "tensor name of 1 MiB (no limit documented for safetensors; control)",
        st(
            format!(
                r#"{{"{}":{}}}"#,
                "n".repeat(1 << 20),
                ste("U8", "[1]", 0, 1)
            ),
            &[1],
        ),
        Loads,
    );
    add(
        "metadata key not UTF-8",
        st(b"{\"__metadata__\":{\"k\xc0\x80\":\"v\"}}", &[]),
        f,
    );
    add(
        "metadata value not UTF-8",
        st(b"{\"__metadata__\":{\"k\":\"v\xed\xa0\x80\"}}", &[]),
        f,
    );
    add(
        "metadata key with an escaped NUL",
        st(r#"{"__metadata__":{"k\u0000":"v"}}"#, &[]),
        f,
    );
    add(
        "metadata value with an escaped NUL",
        st(r#"{"__metadata__":{"k":"v\u0000"}}"#, &[]),
        f,
    );

    // --- Duplicates.
    add(
        "duplicate tensor names",
        st(
            format!(
                r#"{{"t":{},"t":{}}}"#,
                ste("U8", "[1]", 0, 1),
                ste("U8", "[1]", 1, 2)
            ),
            &[1, 2],
        ),
        f,
    );
    add(
        "__metadata__ twice",
        st(
            r#"{"__metadata__":{"a":"b"},"__metadata__":{"c":"d"}}"#,
            &[],
        ),
        f,
    );
    add(
        "metadata key twice",
        st(r#"{"__metadata__":{"a":"b","a":"c"}}"#, &[]),
        f,
    );
    add(
        "dtype given twice in one entry (the safetensors library refuses duplicate fields)",
        st_one(
            r#"{"dtype":"F32","dtype":"U8","shape":[1],"data_offsets":[0,1]}"#,
            1,
        ),
        f,
    );
    add(
        "data_offsets given twice in one entry (the safetensors library refuses duplicate fields)",
        st_one(
            r#"{"dtype":"U8","shape":[1],"data_offsets":[5,6],"data_offsets":[0,1]}"#,
            1,
        ),
        f,
    );

    // --- Dtypes.
    add(
        "unknown dtype F6_E2M3",
        st_one(&ste("F6_E2M3", "[4]", 0, 3), 3),
        Refused(Kind::Unsupported),
    );
    add(
        "dtype not a string",
        st_one(r#"{"dtype":7,"shape":[1],"data_offsets":[0,1]}"#, 1),
        f,
    );
    add(
        "dtype missing",
        st_one(r#"{"shape":[1],"data_offsets":[0,1]}"#, 1),
        f,
    );
    add(
        "F4 with an odd last dimension",
        st_one(&ste("F4", "[3]", 0, 1), 1),
        f,
    );
    add(
        "F4 [4] (control)",
        st_one(&ste("F4", "[4]", 0, 2), 2),
        Loads,
    );

    // --- Shapes.
    for (what, shape) in [
        ("[2^40, 2^40]", format!("[{},{}]", 1u64 << 40, 1u64 << 40)),
        (
            "[2^32, 2^32, 0]",
            format!("[{},{},0]", 1u64 << 32, 1u64 << 32),
        ),
        ("[u64::MAX, 2]", format!("[{},2]", u64::MAX)),
    ] {
        add(
            &format!("shape {what} overflows"),
            st_one(&ste("U8", &shape, 0, 0), 0),
            f,
        );
    }
    add(
        "shape [2^62] F32: the byte count overflows",
        st_one(&ste("F32", &format!("[{}]", 1u64 << 62), 0, 0), 0),
        f,
    );
    for (what, shape) in [
        ("a negative dimension", "[-1]".to_owned()),
        ("a fractional dimension", "[1.5]".to_owned()),
        ("a dimension of 2^64", "[18446744073709551616]".to_owned()),
        ("a string", "\"4\"".to_owned()),
        ("null", "null".to_owned()),
        ("rank 65", format!("[{}1]", "1,".repeat(64))),
        ("rank 1,000,000", format!("[{}1]", "1,".repeat(999_999))),
        ("nested 100,000 deep", deep_array(DEEP)),
    ] {
        add(
            &format!("shape: {what}"),
            st_one(&ste("U8", &shape, 0, 1), 1),
            f,
        );
    }
    add(
        "shape missing",
        st_one(r#"{"dtype":"U8","data_offsets":[0,1]}"#, 1),
        f,
    );
    add(
        "rank 64 of ones (the limit; control)",
        st_one(&ste("U8", &format!("[{}1]", "1,".repeat(63)), 0, 1), 1),
        Loads,
    );

    // --- Data offsets.
    for (what, entry, data) in [
        ("reversed (end < begin)", ste("U8", "[4]", 4, 0), 4),
        ("beyond the data section", ste("U8", "[4]", 4, 8), 4),
        (
            "a 1 TiB tensor in a small file",
            ste("U8", &format!("[{}]", 1u64 << 40), 0, 1 << 40),
            4,
        ),
        (
            "at the top of the u64 range",
            ste("U8", "[3]", u64::MAX - 3, u64::MAX),
            3,
        ),
        ("not covering the shape", ste("F32", "[2]", 0, 7), 7),
        (
            "three values",
            r#"{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}"#.into(),
            1,
        ),
        (
            "one value",
            r#"{"dtype":"U8","shape":[1],"data_offsets":[1]}"#.into(),
            1,
        ),
        (
            "negative",
            r#"{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}"#.into(),
            1,
        ),
        (
            "strings",
            r#"{"dtype":"U8","shape":[1],"data_offsets":["0","1"]}"#.into(),
            1,
        ),
        ("missing", r#"{"dtype":"U8","shape":[1]}"#.into(), 1),
        (
            "nested 100,000 deep",
            format!(
                r#"{{"dtype":"U8","shape":[1],"data_offsets":{}}}"#,
                deep_array(DEEP)
            ),
            1,
        ),
        (
            "leaving bytes after the last tensor",
            ste("U8", "[4]", 0, 4),
            5,
        ),
        ("past the data (truncated file)", ste("U8", "[4]", 0, 4), 3),
    ] {
        add(&format!("data offsets: {what}"), st_one(&entry, data), f);
    }
    add(
        "overlapping tensors",
        st(
            format!(
                r#"{{"a":{},"b":{}}}"#,
                ste("U8", "[4]", 0, 4),
                ste("U8", "[4]", 2, 6)
            ),
            &[0; 6],
        ),
        f,
    );
    add(
        "two tensors at the same range",
        st(
            format!(
                r#"{{"a":{},"b":{}}}"#,
                ste("U8", "[4]", 0, 4),
                ste("U8", "[4]", 0, 4)
            ),
            &[0; 4],
        ),
        f,
    );
    add(
        "a gap between tensors",
        st(
            format!(
                r#"{{"a":{},"b":{}}}"#,
                ste("U8", "[4]", 0, 4),
                ste("U8", "[4]", 6, 10)
            ),
            &[0; 10],
        ),
        f,
    );

    // --- Entries that are not objects.
    for (what, entry) in [
        ("a string", "\"x\"".to_owned()),
        ("an array", "[1,2]".to_owned()),
        ("a number", "1".to_owned()),
        ("null", "null".to_owned()),
        ("an array nested 100,000 deep", deep_array(DEEP)),
        ("an object nested 100,000 deep", deep_object(DEEP)),
    ] {
        add(&format!("tensor entry: {what}"), st_one(&entry, 1), f);
    }

    // --- Deep nesting where the reader skips values.
    add(
        "an unknown field in a tensor entry nested 100,000 deep (arrays; ignored)",
        st_one(
            &format!(
                r#"{{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{}}}"#,
                deep_array(DEEP)
            ),
            1,
        ),
        Loads,
    );
    add(
        "an unknown field in a tensor entry nested 100,000 deep (objects; ignored)",
        st_one(
            &format!(
                r#"{{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{}}}"#,
                deep_object(DEEP)
            ),
            1,
        ),
        Loads,
    );
    add(
        "an unknown field in a tensor entry nested 100,000 deep, never closed",
        st_one(
            &format!(
                r#"{{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{}"#,
                "[".repeat(DEEP)
            ),
            1,
        ),
        f,
    );

    // --- __metadata__.
    for (what, meta) in [
        ("an array", "[]".to_owned()),
        ("a string", "\"x\"".to_owned()),
        ("null", "null".to_owned()),
        ("a value that is a number", r#"{"a":1}"#.to_owned()),
        ("a value that is null", r#"{"a":null}"#.to_owned()),
        (
            "a value nested 100,000 deep",
            format!(r#"{{"a":{}}}"#, deep_array(DEEP)),
        ),
        (
            "a value of objects nested 100,000 deep",
            format!(r#"{{"a":{}}}"#, deep_object(DEEP)),
        ),
        ("itself nested 100,000 deep", deep_array(DEEP)),
        ("never closed", format!(r#"{{"a":{}"#, "[".repeat(DEEP))),
    ] {
        add(
            &format!("__metadata__: {what}"),
            st(format!(r#"{{"__metadata__":{meta}}}"#), &[]),
            f,
        );
    }
    add(
        "__metadata__ with 65,537 entries",
        st(
            {
                let entries: Vec<String> = (0..(1 << 16) + 1)
                    .map(|i| format!("\"{i}\":\"\""))
                    .collect();
                format!(r#"{{"__metadata__":{{{}}}}}"#, entries.join(","))
            },
            &[],
        ),
        f,
    );
    add(
        "1,048,577 tensors (over the limit)",
        st(
            {
                let mut h = String::with_capacity(60 << 20);
                h.push('{');
                for i in 0..(1u64 << 20) + 1 {
                    if i > 0 {
                        h.push(',');
                    }
                    h.push_str(&format!(
                        r#""{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
                        i + 1
                    ));
                }
                h.push('}');
                h
            },
            &[],
        ),
        f,
    );
    cases
}

// ---------------------------------------------------------------------------------------
// Sharded safetensors
// ---------------------------------------------------------------------------------------

const INDEX_FILE: &str = "model.safetensors.index.json";
const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

fn shard1() -> Vec<u8> {
    st(
        format!(
            r#"{{"x":{},"y":{}}}"#,
            ste("U8", "[4]", 0, 4),
            ste("F32", "[1]", 4, 8)
        ),
        &[1, 2, 3, 4, 0, 0, 128, 63],
    )
}

fn shard2() -> Vec<u8> {
    st(format!(r#"{{"z":{}}}"#, ste("I8", "[3]", 0, 3)), &[5, 6, 7])
}

/// The base weight map's entries, as JSON object members.
fn base_map() -> String {
    format!(r#""x":"{SHARD1}","y":"{SHARD1}","z":"{SHARD2}""#)
}

/// An index with `map` as the body of its weight map and `extra` appended to the top-level
/// object (starting with a comma).
fn index(map: &str, extra: &str) -> Vec<u8> {
    format!(r#"{{"metadata":{{"total_size":11}},"weight_map":{{{map}}}{extra}}}"#).into_bytes()
}

/// A sharded case: the index bytes and both shards.
fn sharded(name: &str, index: Vec<u8>, expect: Expect) -> Case {
    Case::new(name, INDEX_FILE, index, expect)
        .with_file(SHARD1, shard1())
        .with_file(SHARD2, shard2())
}

fn sharded_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let f = Refused(Kind::Format);
    let map = base_map();
    let with_z = |shard: &str| format!(r#""x":"{SHARD1}","y":"{SHARD1}","z":{shard}"#);

    cases.push(sharded(
        "valid checkpoint (control)",
        index(&map, ""),
        Loads,
    ));

    // --- The index as JSON.
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("whitespace only", b"   \n ".to_vec()),
        ("an unclosed brace", b"{".to_vec()),
        ("not JSON", b"{weight_map}".to_vec()),
        ("a JSON array", b"[]".to_vec()),
        ("no weight_map", b"{\"metadata\":{}}".to_vec()),
        (
            "trailing garbage",
            [index(&map, ""), b" x".to_vec()].concat(),
        ),
        (
            "a second object",
            [index(&map, ""), b"{}".to_vec()].concat(),
        ),
        (
            "not UTF-8",
            mutated(&index(&map, r#","k@":1"#), |b| {
                let at = b.iter().position(|&c| c == b'@').unwrap();
                b[at] = 0xff;
            }),
        ),
        ("truncated", index(&map, "")[..40].to_vec()),
        (
            "64 MiB + 1 bytes (over the index limit; padded with spaces)",
            mutated(&index(&map, ""), |b| b.resize((64 << 20) + 1, b' ')),
        ),
    ] {
        cases.push(sharded(&format!("index: {what}"), bytes, f));
    }

    // --- The weight map and its values.
    for (what, wm) in [
        ("a string", "\"x\""),
        ("an array", "[]"),
        ("null", "null"),
        ("a number", "1"),
    ] {
        cases.push(sharded(
            &format!("weight_map: {what}"),
            format!(r#"{{"weight_map":{wm}}}"#).into_bytes(),
            f,
        ));
    }
    cases.push(sharded(
        "weight_map: nested 100,000 deep",
        format!(r#"{{"weight_map":{}}}"#, deep_array(DEEP)).into_bytes(),
        f,
    ));
    cases.push(sharded(
        "weight_map: objects nested 100,000 deep",
        format!(r#"{{"weight_map":{}}}"#, deep_object(DEEP)).into_bytes(),
        f,
    ));
    for (what, value) in [
        ("a number", "1".to_owned()),
        ("null", "null".to_owned()),
        ("true", "true".to_owned()),
        ("an object", format!(r#"{{"file":"{SHARD2}"}}"#)),
        ("an array", format!(r#"["{SHARD2}"]"#)),
        ("nested 100,000 deep", deep_array(DEEP)),
    ] {
        cases.push(sharded(
            &format!("weight_map value: {what}"),
            index(&with_z(&value), ""),
            f,
        ));
    }
    cases.push(sharded(
        "weight_map with 1,048,577 tensors (over the limit)",
        {
            let mut body = String::with_capacity(16 << 20);
            for i in 0..(1u64 << 20) + 1 {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!(r#""{i}":"s""#));
            }
            index(&body, "")
        },
        f,
    ));

    // --- Shard names.
    for (what, shard) in [
        ("empty", "\"\"".to_owned()),
        ("..", "\"..\"".to_owned()),
        (".", "\".\"".to_owned()),
        ("going up a folder", format!(r#""../{SHARD2}""#)),
        ("in a subfolder", format!(r#""sub/{SHARD2}""#)),
        ("an absolute path", "\"/etc/passwd\"".to_owned()),
        (
            "an absolute path to /proc",
            "\"/proc/self/environ\"".to_owned(),
        ),
        ("with a backslash", format!(r#""..\\{SHARD2}""#)),
        ("with an escaped NUL", format!(r#""{SHARD2}\u0000.txt""#)),
        ("only a NUL", r#""\u0000""#.to_owned()),
        (
            "with an unpaired surrogate escape",
            format!(r#""{SHARD2}\ud800""#),
        ),
        ("the index itself", format!("\"{INDEX_FILE}\"")),
    ] {
        cases.push(sharded(
            &format!("shard name: {what}"),
            index(&with_z(&shard), ""),
            f,
        ));
    }
    cases.push(
        sharded(
            "shard name: a file that does not exist",
            index(&with_z("\"missing.safetensors\""), ""),
            Refused(Kind::Io),
        )
        .naming("missing.safetensors"),
    );
    cases.push(
        sharded(
            "shard name: a folder",
            index(&with_z("\"folder.safetensors\""), ""),
            Refused(Kind::Io),
        )
        .with_dir("folder.safetensors"),
    );

    // --- Duplicate keys: the index is ambiguous.
    cases.push(sharded(
        "weight_map: a tensor named twice, the wrong shard last",
        index(&format!(r#"{map},"z":"{SHARD1}""#), ""),
        f,
    ));
    cases.push(sharded(
        "weight_map: a tensor named twice, the wrong shard first",
        index(
            &format!(r#""x":"{SHARD1}","y":"{SHARD1}","z":"{SHARD1}","z":"{SHARD2}""#),
            "",
        ),
        f,
    ));
    cases.push(sharded(
        "index: weight_map twice",
        index(&map, &format!(r#","weight_map":{{"z":"{SHARD2}"}}"#)),
        f,
    ));
    cases.push(sharded(
        "index: metadata key twice",
        format!(r#"{{"metadata":{{"a":"1","a":"2"}},"weight_map":{{{map}}}}}"#).into_bytes(),
        f,
    ));

    // --- The weight map against the shards.
    cases.push(sharded(
        "weight_map names a tensor no shard holds",
        index(&format!(r#"{map},"ghost":"{SHARD2}""#), ""),
        f,
    ));
    cases.push(sharded(
        "weight_map lacks a tensor a shard holds",
        index(&format!(r#""x":"{SHARD1}","z":"{SHARD2}""#), ""),
        f,
    ));
    cases.push(sharded(
        "weight_map puts a tensor in the wrong shard",
        index(&with_z(&format!("\"{SHARD1}\"")), ""),
        f,
    ));
    cases.push(sharded(
        "weight_map key with an escaped NUL",
        index(&format!(r#"{map},"g\u0000":"{SHARD2}""#), ""),
        f,
    ));
    cases.push(
        Case::new(
            "the same tensor in both shards",
            INDEX_FILE,
            index(&map, ""),
            f,
        )
        .with_file(SHARD1, shard1())
        .with_file(
            SHARD2,
            st(
                format!(
                    r#"{{"x":{},"z":{}}}"#,
                    ste("U8", "[1]", 0, 1),
                    ste("I8", "[3]", 1, 4)
                ),
                &[0, 5, 6, 7],
            ),
        ),
    );

    // --- Index metadata.
    for (what, meta, expect) in [
        ("an array", "[]".to_owned(), f),
        ("a string", "\"x\"".to_owned(), f),
        (
            "a value with an escaped NUL",
            r#"{"k":"v\u0000"}"#.to_owned(),
            f,
        ),
        (
            "a value nested 100,000 deep (kept as JSON text)",
            format!(r#"{{"k":{}}}"#, deep_array(DEEP)),
            Loads,
        ),
        (
            "a value of objects nested 100,000 deep (kept as JSON text)",
            format!(r#"{{"k":{}}}"#, deep_object(DEEP)),
            Loads,
        ),
        (
            "a value nested 100,000 deep, never closed",
            format!(r#"{{"k":{}"#, "[".repeat(DEEP)),
            f,
        ),
        (
            "65,537 entries",
            {
                let entries: Vec<String> =
                    (0..(1 << 16) + 1).map(|i| format!("\"{i}\":1")).collect();
                format!("{{{}}}", entries.join(","))
            },
            f,
        ),
    ] {
        cases.push(sharded(
            &format!("index metadata: {what}"),
            format!(r#"{{"metadata":{meta},"weight_map":{{{map}}}}}"#).into_bytes(),
            expect,
        ));
    }

    // --- Unknown top-level members, deeply nested.
    cases.push(sharded(
        "an unknown member nested 100,000 deep (arrays; ignored)",
        index(&map, &format!(r#","extra":{}"#, deep_array(DEEP))),
        Loads,
    ));
    cases.push(sharded(
        "an unknown member nested 100,000 deep (objects; ignored)",
        index(&map, &format!(r#","extra":{}"#, deep_object(DEEP))),
        Loads,
    ));
    cases.push(sharded(
        "an unknown member nested 100,000 deep, never closed",
        index(&map, &format!(r#","extra":{}"#, "[".repeat(DEEP))),
        f,
    ));

    // --- Broken shards.
    let with_shard2 = |name: &str, bytes: Vec<u8>, expect: Expect| {
        Case::new(name, INDEX_FILE, index(&map, ""), expect)
            .with_file(SHARD1, shard1())
            .with_file(SHARD2, bytes)
    };
    let good2 = shard2();
    cases.push(with_shard2("shard empty", Vec::new(), f));
    cases.push(with_shard2(
        "shard truncated inside its header",
        good2[..20].to_vec(),
        f,
    ));
    cases.push(with_shard2(
        "shard truncated inside its data",
        good2[..good2.len() - 1].to_vec(),
        f,
    ));
    cases.push(with_shard2(
        "shard header length u64::MAX",
        mutated(&good2, |b| put_u64(b, 0, u64::MAX)),
        f,
    ));
    cases.push(with_shard2(
        "shard header length 0",
        mutated(&good2, |b| put_u64(b, 0, 0)),
        f,
    ));
    cases.push(with_shard2(
        "shard is a plaid file",
        PlaidBase::new().bytes,
        f,
    ));
    cases.push(with_shard2(
        "shard with an unknown dtype",
        st(
            format!(r#"{{"z":{}}}"#, ste("F6_E2M3", "[4]", 0, 3)),
            &[5, 6, 7],
        ),
        Refused(Kind::Unsupported),
    ));
    cases
}

// ---------------------------------------------------------------------------------------
// tensorizer
// ---------------------------------------------------------------------------------------

const TZ_FILE: &str = "hostile_case.tensors";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tensorizer")
            .join(name),
    )
    .unwrap()
}

/// zlib's CRC-32 (IEEE), bit by bit: the data here is small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// One tensor of a hand-built tensorizer file.
#[derive(Clone)]
struct TzTensor {
    name: Vec<u8>,
    role: u8,
    dtype: Vec<u8>,
    shape: Vec<u64>,
    /// u64 dims, tagged entry version 5 (needs a versioned file).
    wide: bool,
    data: Vec<u8>,
    /// The data length recorded (entry and header); the data's length if `None`.
    stored: Option<u64>,
}

fn tz_tensor(name: &str, dtype: &str, shape: &[u64], data: Vec<u8>) -> TzTensor {
    TzTensor {
        name: name.as_bytes().to_vec(),
        role: 2,
        dtype: dtype.as_bytes().to_vec(),
        shape: shape.to_vec(),
        wide: false,
        data,
        stored: None,
    }
}

/// A hand-built tensorizer file, written as docs/TENSORIZER-FORMAT.md describes.
#[derive(Clone)]
struct Tz {
    version: u32,
    flags: u8,
    /// The tensor count recorded; the real count if `None`.
    count: Option<u64>,
    /// Zero bytes after the metadata entries, inside the metadata block.
    padding: usize,
    tensors: Vec<TzTensor>,
}

impl Tz {
    fn new(tensors: Vec<TzTensor>) -> Tz {
        Tz {
            version: 1,
            flags: 0,
            count: None,
            padding: 0,
            tensors,
        }
    }

    fn version(mut self, version: u32, flags: u8) -> Tz {
        self.version = version;
        self.flags = flags;
        self
    }

    fn versioned(&self) -> bool {
        self.version >= 5 && self.flags & 2 != 0
    }

    /// The tensor's header, with its hash values.
    fn header(t: &TzTensor) -> Vec<u8> {
        let mut h = vec![0u8; 8];
        h.extend_from_slice(&0u16.to_le_bytes());
        h.push(t.role);
        h.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&t.name);
        h.push(t.dtype.len() as u8);
        h.extend_from_slice(&t.dtype);
        h.push(t.shape.len() as u8);
        for &d in &t.shape {
            if t.wide {
                h.extend_from_slice(&d.to_le_bytes());
            } else {
                h.extend_from_slice(&(d as u32).to_le_bytes());
            }
        }
        h.extend_from_slice(&41u16.to_le_bytes());
        h.push(2);
        h.extend_from_slice(&[0, 4]);
        let crc_at = h.len();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&[1, 32]);
        let sha_at = h.len();
        h.extend_from_slice(&[0; 32]);
        h.extend_from_slice(&t.stored.unwrap_or(t.data.len() as u64).to_le_bytes());
        let len = h.len() as u64;
        put_u64(&mut h, 0, len);
        let covered = [h.as_slice(), &t.data].concat();
        let crc = crc32(&covered);
        let sha: [u8; 32] = Sha256::digest(&covered).into();
        put_u32(&mut h, crc_at, crc);
        h[sha_at..sha_at + 32].copy_from_slice(&sha);
        h
    }

    fn entry(&self, t: &TzTensor, header_offset: u64, header_len: u64) -> Vec<u8> {
        let mut e = Vec::new();
        if self.versioned() {
            e.extend_from_slice(&(if t.wide { 5u32 } else { 1 }).to_le_bytes());
        }
        e.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
        e.extend_from_slice(&t.name);
        e.push(t.role);
        e.push(t.dtype.len() as u8);
        e.extend_from_slice(&t.dtype);
        e.push(t.shape.len() as u8);
        for &d in &t.shape {
            if t.wide {
                e.extend_from_slice(&d.to_le_bytes());
            } else {
                e.extend_from_slice(&(d as u32).to_le_bytes());
            }
        }
        e.extend_from_slice(&header_offset.to_le_bytes());
        e.extend_from_slice(&(header_offset + header_len).to_le_bytes());
        e.extend_from_slice(&t.stored.unwrap_or(t.data.len() as u64).to_le_bytes());
        e
    }

    fn bytes(&self) -> Vec<u8> {
        let headers: Vec<Vec<u8>> = self.tensors.iter().map(Tz::header).collect();
        // Entries have the same length whatever the offsets in them.
        let entries_len: usize = self.tensors.iter().map(|t| self.entry(t, 0, 0).len()).sum();
        let metadata_len = entries_len + self.padding;
        let mut entries = Vec::new();
        let mut records = Vec::new();
        let mut cursor = 73 + metadata_len as u64;
        for (t, h) in self.tensors.iter().zip(&headers) {
            entries.extend(self.entry(t, cursor, h.len() as u64));
            records.extend_from_slice(h);
            records.extend_from_slice(&t.data);
            cursor += (h.len() + t.data.len()) as u64;
        }
        entries.resize(metadata_len, 0);
        let mut file = b"|TZR|".to_vec();
        file.extend_from_slice(&self.version.to_le_bytes());
        let mut flags = [0u8; 32];
        flags[0] = self.flags;
        file.extend_from_slice(&flags);
        let data_bytes: usize = self.tensors.iter().map(|t| t.data.len()).sum();
        file.extend_from_slice(&(data_bytes as u64).to_le_bytes());
        file.extend_from_slice(&0u64.to_le_bytes());
        let count = self.count.unwrap_or(self.tensors.len() as u64);
        file.extend_from_slice(&count.to_le_bytes());
        file.extend_from_slice(&(metadata_len as u64).to_le_bytes());
        file.extend(entries);
        file.extend(records);
        file.extend_from_slice(&[0; 8]);
        file
    }
}

/// Where the fields of one metadata entry are.
#[derive(Clone, Debug)]
struct EntryAt {
    at: usize,
    name_len: usize,
    role: usize,
    dtype_len: usize,
    ndim: usize,
    dims: usize,
    header_offset: usize,
    data_offset: usize,
    data_length: usize,
}

/// Where the fields of one tensor record are.
#[derive(Clone, Debug)]
struct RecordAt {
    at: usize,
    module: usize,
    role: usize,
    name: usize,
    dtype_len: usize,
    ndim: usize,
    dims: usize,
    hash_section: usize,
    hash_count: usize,
    /// (type, offset of the value, length of the value)
    hashes: Vec<(u8, usize, usize)>,
    data_length: usize,
    data: usize,
    data_len: usize,
}

/// The layout of an unencrypted tensorizer file, found by walking it as the doc says.
struct TzLayout {
    metadata_len: usize,
    entries_end: usize,
    entries: Vec<EntryAt>,
    records: Vec<RecordAt>,
    end_marker: usize,
}

fn tz_layout(f: &[u8]) -> TzLayout {
    let version = get_u32(f, 5);
    let versioned = version >= 5 && f[9] & 2 != 0;
    let count = get_u64(f, 57) as usize;
    let metadata_len = get_u64(f, 65) as usize;
    let mut p = 73;
    let mut entries = Vec::new();
    let mut wide = Vec::new();
    for _ in 0..count {
        let at = p;
        let is_wide = versioned && {
            let tag = get_u32(f, p);
            p += 4;
            tag == 5
        };
        let name_len = p;
        p += 2 + get_u16(f, p) as usize;
        let role = p;
        p += 1;
        let dtype_len = p;
        p += 1 + f[p] as usize;
        let ndim = p;
        p += 1;
        let dims = p;
        p += f[ndim] as usize * if is_wide { 8 } else { 4 };
        entries.push(EntryAt {
            at,
            name_len,
            role,
            dtype_len,
            ndim,
            dims,
            header_offset: p,
            data_offset: p + 8,
            data_length: p + 16,
        });
        wide.push(is_wide);
        p += 24;
    }
    let entries_end = p;
    let mut records = Vec::new();
    let mut p = 73 + metadata_len;
    for is_wide in wide {
        let at = p;
        let header_len = get_u64(f, p) as usize;
        let module = p + 8;
        let role = p + 10;
        let name = p + 11;
        let mut q = name + 2 + get_u16(f, name) as usize;
        let dtype_len = q;
        q += 1 + f[q] as usize;
        let ndim = q;
        q += 1;
        let dims = q;
        q += f[ndim] as usize * if is_wide { 8 } else { 4 };
        let hash_section = q;
        let hash_count = q + 2;
        let mut r = q + 3;
        let mut hashes = Vec::new();
        for _ in 0..f[hash_count] {
            let len = f[r + 1] as usize;
            hashes.push((f[r], r + 2, len));
            r += 2 + len;
        }
        let data_length = at + header_len - 8;
        let data = at + header_len;
        let data_len = get_u64(f, data_length) as usize;
        records.push(RecordAt {
            at,
            module,
            role,
            name,
            dtype_len,
            ndim,
            dims,
            hash_section,
            hash_count,
            hashes,
            data_length,
            data,
            data_len,
        });
        p = data + data_len;
    }
    TzLayout {
        metadata_len,
        entries_end,
        entries,
        records,
        end_marker: p,
    }
}

fn tensorizer_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case::new(name, TZ_FILE, bytes, expect))
    };
    let f = Refused(Kind::Format);
    let unsupported = Refused(Kind::Unsupported);

    // --- Real files (controls) and the damaged fixtures.
    for (name, expect) in [
        ("write_tensor_calls", Loads),
        ("v1_by_tensorizer_1.1.0", Loads),
        ("dtypes_opaque_v2", Loads),
        ("meta_tensors_v4", Loads),
        ("long_dims_v5", Loads),
        ("nested_structure", Loads),
        ("many_small_tensors", Loads),
        ("shapes_and_layouts", Loads),
        ("quirk_no_tensors", Loads),
        ("quirk_opaque_zero_length", Loads),
        ("damaged_bad_magic", f),
        ("damaged_truncated_in_file_header", f),
        ("damaged_truncated_in_tensor_data", f),
        (
            "damaged_bitflip_in_tensor_data",
            DataFails(Kind::HashMismatch),
        ),
        (
            "damaged_bitflip_in_stored_sha256",
            DataFails(Kind::HashMismatch),
        ),
        // Open (the index is in the clear); no key here, so the data cannot be decrypted.
        ("encrypted_key_v3", DataFails(Kind::Decrypt)),
        ("encrypted_meta_v4", DataFails(Kind::Decrypt)),
        (
            "damaged_encrypted_bitflip_in_ciphertext",
            DataFails(Kind::Decrypt),
        ),
    ] {
        add(
            &format!("fixture {name}"),
            fixture(&format!("{name}.tensors")),
            expect,
        );
    }

    // --- Mutations of a real file: write_tensor_calls (v1, 7 tensors, CRC32 + SHA256).
    let base = fixture("write_tensor_calls.tensors");
    let lay = tz_layout(&base);
    assert_eq!(lay.entries.len(), 7);
    assert_eq!(lay.metadata_len, 262_144);
    assert_eq!(lay.end_marker + 8, base.len());
    let b = &base;
    let len = base.len();
    let e0 = lay.entries[0].clone();
    let e1 = lay.entries[1].clone();
    let r0 = lay.records[0].clone();
    let r1 = lay.records[1].clone();
    let records_start = 73 + lay.metadata_len;

    add("empty file", Vec::new(), f);
    let mut cuts: Vec<usize> = (1..=lay.entries_end + 1).collect();
    cuts.extend([records_start - 1, records_start]);
    for r in &lay.records {
        cuts.extend([
            r.at + 1,
            r.at + 8,
            r.at + 9,
            r.name,
            r.dims,
            r.hash_section,
            r.data_length,
            r.data - 1,
            r.data,
            r.data + r.data_len / 2,
        ]);
    }
    cuts.extend([lay.end_marker, lay.end_marker + 4, len - 1]);
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|&c| c < len) {
        let part = match cut {
            0..73 => "inside the file header",
            c if c <= lay.entries_end => "inside the metadata entries",
            c if c < records_start => "inside the metadata padding",
            c if c < lay.end_marker => "inside the tensor records",
            _ => "inside the end marker",
        };
        add(
            &format!("truncated to {cut} of {len} bytes ({part})"),
            b[..cut].to_vec(),
            f,
        );
    }

    // --- The file header.
    add("magic damaged", mutated(b, |x| x[1] = b'X'), f);
    add("version 0", mutated(b, |x| put_u32(x, 5, 0)), f);
    for version in [6u32, 99, u32::MAX] {
        add(
            &format!("version {version}"),
            mutated(b, |x| put_u32(x, 5, version)),
            unsupported,
        );
    }
    add(
        "flags field filled in a v1 file (unused before v4; control)",
        mutated(b, |x| x[9..41].fill(0xff)),
        Loads,
    );
    add(
        "v4 with an unknown flag bit (4)",
        mutated(b, |x| {
            put_u32(x, 5, 4);
            x[9] = 4;
        }),
        unsupported,
    );
    add(
        "v4 with the top flag bit (byte 40)",
        mutated(b, |x| {
            put_u32(x, 5, 4);
            x[40] = 0x80;
        }),
        unsupported,
    );
    add(
        "v4 with versioned_headers (a v5 flag)",
        mutated(b, |x| {
            put_u32(x, 5, 4);
            x[9] = 2;
        }),
        f,
    );
    // Flagged encrypted, but the tensor headers hold no crypt info: malformed.
    add(
        "v4 with the encrypted flag",
        mutated(b, |x| {
            put_u32(x, 5, 4);
            x[9] = 1;
        }),
        f,
    );
    add(
        "version 3 (always encrypted)",
        mutated(b, |x| put_u32(x, 5, 3)),
        f,
    );
    add(
        "v4, no flags (control)",
        mutated(b, |x| put_u32(x, 5, 4)),
        Loads,
    );
    add(
        "data-bytes field u64::MAX (informational; control)",
        mutated(b, |x| put_u64(x, 41, u64::MAX)),
        Loads,
    );

    // --- Counts that lie.
    add(
        "tensor count 8 for 7 entries (the 8th is zero padding)",
        mutated(b, |x| put_u64(x, 57, 8)),
        f,
    );
    add(
        "tensor count 6 for 7 records (the 7th is not the end marker)",
        mutated(b, |x| put_u64(x, 57, 6)),
        f,
    );
    add(
        "tensor count 0 with 7 records",
        mutated(b, |x| put_u64(x, 57, 0)),
        f,
    );
    add(
        "tensor count u64::MAX",
        mutated(b, |x| put_u64(x, 57, u64::MAX)),
        f,
    );
    add(
        "tensor count as many as the metadata block could hold (zero entries)",
        mutated(b, |x| put_u64(x, 57, 262_144 / 31)),
        f,
    );
    for (what, m) in [
        ("u64::MAX", u64::MAX),
        ("u64::MAX - 72 (the end overflows)", u64::MAX - 72),
        ("the file's length", len as u64),
        ("0 for 7 entries", 0),
        (
            "one byte short of the entries",
            (lay.entries_end - 73 - 1) as u64,
        ),
        ("8 more than written (eats into the first record)", 262_152),
    ] {
        add(
            &format!("metadata length {what}"),
            mutated(b, |x| put_u64(x, 65, m)),
            f,
        );
    }

    // --- Metadata entry fields (entry 0, and entry 1 for overlaps).
    let u64_at = |at: usize| get_u64(b, at);
    let header0 = u64_at(e0.header_offset);
    for (what, patches) in [
        (
            "name length 65535 (runs over the entries)",
            vec![U16(e0.name_len, u16::MAX)],
        ),
        ("name length 0", vec![U16(e0.name_len, 0)]),
        (
            "one name byte changed (disagrees with the header)",
            vec![Flip(e0.name_len + 2, 0x01)],
        ),
        ("tensor type 3", vec![Byte(e0.role, 3)]),
        ("tensor type 255", vec![Byte(e0.role, 255)]),
        ("dtype length 255", vec![Byte(e0.dtype_len, 255)]),
        (
            "ndim 255 (dims run over the entries)",
            vec![Byte(e0.ndim, 255)],
        ),
        (
            "a dimension changed (disagrees with the header and data)",
            vec![U32(e0.dims, 5)],
        ),
        (
            "dimensions 2^32-1 x 2^32-1 (the size overflows)",
            vec![U32(e0.dims, u32::MAX), U32(e0.dims + 4, u32::MAX)],
        ),
        (
            "header offset one past the record",
            vec![U64(e0.header_offset, header0 + 1)],
        ),
        (
            "header offset u64::MAX",
            vec![U64(e0.header_offset, u64::MAX)],
        ),
        (
            "data offset before the header offset (reversed)",
            vec![U64(e0.data_offset, header0 - 8)],
        ),
        (
            "data offset equal to the header offset",
            vec![U64(e0.data_offset, header0)],
        ),
        (
            "data offset 2 MiB after the header offset",
            vec![U64(e0.data_offset, header0 + (2 << 20))],
        ),
        ("data offset u64::MAX", vec![U64(e0.data_offset, u64::MAX)]),
        ("data length u64::MAX", vec![U64(e0.data_length, u64::MAX)]),
        (
            "data length 2^40 (past the end of the file)",
            vec![U64(e0.data_length, 1 << 40)],
        ),
        (
            "data length one more than the shape",
            vec![U64(e0.data_length, u64_at(e0.data_length) + 1)],
        ),
        (
            "data length 0 in a v1 file (meta tensors need v4)",
            vec![U64(e0.data_length, 0)],
        ),
        (
            "entry 1 at entry 0's record (overlapping records)",
            vec![
                U64(e1.header_offset, header0),
                U64(
                    e1.data_offset,
                    header0 + u64_at(e1.data_offset) - u64_at(e1.header_offset),
                ),
            ],
        ),
    ] {
        add(&format!("metadata entry: {what}"), patched(b, &patches), f);
    }

    // --- Tensor header fields (record 0; record 1's data).
    let hash = |k: usize| r0.hashes[k].1;
    for (what, patches, expect) in [
        (
            "header length one more",
            vec![U64(r0.at, u64_at(r0.at) + 1)],
            f,
        ),
        ("header length 0", vec![U64(r0.at, 0)], f),
        ("header length u64::MAX", vec![U64(r0.at, u64::MAX)], f),
        (
            "tensor type differs from the entry",
            vec![Byte(r0.role, 1)],
            f,
        ),
        (
            "name length differs from the entry",
            vec![U16(r0.name, get_u16(b, r0.name) + 1)],
            f,
        ),
        (
            "name length 65535 (past the header)",
            vec![U16(r0.name, u16::MAX)],
            f,
        ),
        (
            "a name byte differs from the entry",
            vec![Flip(r0.name + 2, 0x01)],
            f,
        ),
        (
            "dtype differs from the entry ('<f8' for '<f4')",
            vec![Byte(r0.dtype_len + 3, b'8')],
            f,
        ),
        ("ndim differs from the entry", vec![Byte(r0.ndim, 3)], f),
        (
            "a dimension differs from the entry",
            vec![U32(r0.dims, 99)],
            f,
        ),
        (
            "hash section length wrong",
            vec![U16(r0.hash_section, 40)],
            f,
        ),
        (
            "hash section length 65535",
            vec![U16(r0.hash_section, u16::MAX)],
            f,
        ),
        (
            "hash count 255 (more than the header holds)",
            vec![Byte(r0.hash_count, 255)],
            f,
        ),
        (
            "hash count 0 (the hashes left as trailing bytes)",
            vec![Byte(r0.hash_count, 0)],
            f,
        ),
        ("unknown hash type 7", vec![Byte(hash(0) - 2, 7)], f),
        ("CRC32 with 5 bytes", vec![Byte(hash(0) - 1, 5)], f),
        (
            "data length differs from the entry",
            vec![U64(r0.data_length, u64_at(r0.data_length) - 1)],
            f,
        ),
        (
            "data length negative (i64 -1)",
            vec![U64(r0.data_length, u64::MAX)],
            f,
        ),
        (
            "module index changed (covered by the hashes only)",
            vec![U16(r0.module, 7)],
            DataFails(Kind::HashMismatch),
        ),
        (
            "stored CRC32 flipped",
            vec![Flip(hash(0), 0x01)],
            DataFails(Kind::HashMismatch),
        ),
        (
            "stored SHA256 flipped",
            vec![Flip(hash(1) + 31, 0x80)],
            DataFails(Kind::HashMismatch),
        ),
        (
            "a data byte flipped (record 1)",
            vec![Flip(r1.data, 0x10)],
            DataFails(Kind::HashMismatch),
        ),
    ] {
        add(
            &format!("tensor header: {what}"),
            patched(b, &patches),
            expect,
        );
    }

    // --- The end marker.
    add("end marker not zero", mutated(b, |x| x[len - 1] = 1), f);
    add("end marker missing", b[..len - 8].to_vec(), f);

    // --- v5: versioned metadata entries.
    let v5 = fixture("long_dims_v5.tensors");
    let v5lay = tz_layout(&v5);
    let v5e1 = v5lay.entries[1].clone();
    add(
        "v5 entry version 2",
        mutated(&v5, |x| put_u32(x, v5e1.at, 2)),
        f,
    );
    add(
        "v5 entry version 1 for u64 dims (widths disagree)",
        mutated(&v5, |x| put_u32(x, v5e1.at, 1)),
        f,
    );
    add(
        "v5 entry version u32::MAX",
        mutated(&v5, |x| put_u32(x, v5e1.at, u32::MAX)),
        f,
    );
    add(
        "v5 without versioned_headers (entry tags read as names)",
        mutated(&v5, |x| x[9] = 0),
        f,
    );

    // --- Hand-built files: every field under control, consistent in entry and header.
    let small = |name: &[u8]| {
        let mut t = tz_tensor("x", "|u1", &[4], vec![1, 2, 3, 4]);
        t.name = name.to_vec();
        t
    };
    let one = |t: TzTensor| Tz::new(vec![t]).bytes();
    add("built: one u8 tensor (control)", one(small(b"x")), Loads);
    add(
        "built: metadata block sized exactly (control)",
        Tz::new(vec![small(b"a"), small(b"b")]).bytes(),
        Loads,
    );
    add("built: name not UTF-8", one(small(b"x\xff\xfe")), f);
    add(
        "built: name an overlong UTF-8 NUL",
        one(small(b"x\xc0\x80")),
        f,
    );
    add("built: name with a NUL", one(small(b"x\0y")), f);
    add("built: name only a NUL", one(small(b"\0")), f);
    add("built: name empty", one(small(b"")), f);
    add(
        "built: duplicate names",
        Tz::new(vec![small(b"d"), small(b"d")]).bytes(),
        f,
    );
    add(
        "built: name of 65,535 bytes (the most a u16 holds; control)",
        one(small(&[b'n'; 65_535])),
        Loads,
    );
    add(
        "built: structured name (control)",
        one(small(b"\x1e[\"model\",\"layers\",0,\"w\"]")),
        Loads,
    );
    add(
        "built: structured name nested 65,000 deep",
        one(small(format!("\x1e{}", deep_array(32_500)).as_bytes())),
        f,
    );
    add(
        "built: structured name nested 65,000 deep, never closed",
        one(small(format!("\x1e{}", "[".repeat(65_000)).as_bytes())),
        f,
    );
    add(
        "built: structured name an empty array",
        one(small(b"\x1e[]")),
        f,
    );
    add(
        "built: structured name an object",
        one(small(b"\x1e{\"a\":1}")),
        f,
    );
    add(
        "built: structured name not JSON",
        one(small(b"\x1e[model")),
        f,
    );
    add(
        "built: structured name with a negative index",
        one(small(b"\x1e[\"a\",-1]")),
        f,
    );
    add(
        "built: structured name with an escaped NUL",
        one(small(b"\x1e[\"a\\u0000\"]")),
        f,
    );
    add(
        "built: structured name flattening to another tensor's name",
        Tz::new(vec![small(b"a.b"), small(b"\x1e[\"a\",\"b\"]")]).bytes(),
        f,
    );
    let typed = |dtype: &[u8], shape: &[u64], data: Vec<u8>| {
        let mut t = tz_tensor("t", "", shape, data);
        t.dtype = dtype.to_vec();
        one(t)
    };
    for (what, dtype, expect) in [
        ("'<f3' (no numpy type)", &b"<f3"[..], f),
        ("empty", b"", f),
        ("'x'", b"x", f),
        ("two NULs", b"<V2\0torch.bfloat16\0x", f),
        (
            "an opaque size that disagrees (<V4 bfloat16)",
            b"<V4\0torch.bfloat16",
            f,
        ),
        (
            "an opaque size that is not a number",
            b"<Vx\0torch.bfloat16",
            f,
        ),
        (
            "a torch type plaid lacks (uint4)",
            b"|V1\0torch.uint4",
            unsupported,
        ),
        (
            "a future torch type",
            b"<V2\0torch.float16_future",
            unsupported,
        ),
        ("big-endian f4", b">f4", unsupported),
        (
            "numpy float128 ('<f16', a valid numpy type plaid lacks)",
            b"<f16",
            unsupported,
        ),
    ] {
        add(
            &format!("built: dtype {what}"),
            typed(dtype, &[2], vec![0; 2]),
            expect,
        );
    }
    add(
        "built: tensor type 3",
        one(TzTensor {
            role: 3,
            ..small(b"x")
        }),
        f,
    );
    add(
        "built: shape 2^32-1 x 2^32-1 x 2^32-1 f32 (the size overflows)",
        typed(b"<f4", &[u32::MAX as u64; 3], vec![]),
        f,
    );
    add(
        "built: rank 255 of ones (control)",
        typed(b"|u1", &[1; 255], vec![9]),
        Loads,
    );
    add(
        "built: a 1 TiB tensor in a small file (entry and header agree)",
        one(TzTensor {
            stored: Some(1 << 40),
            ..tz_tensor("big", "|u1", &[1 << 20, 1 << 20], vec![1, 2, 3])
        }),
        f,
    );
    add(
        "built: a meta tensor in a v1 file",
        one(TzTensor {
            stored: Some(0),
            ..tz_tensor("m", "<f4", &[4], vec![])
        }),
        f,
    );
    add(
        "built: a v4 meta tensor declaring 4 EiB (opens; costs nothing until loaded)",
        Tz::new(vec![TzTensor {
            stored: Some(0),
            ..tz_tensor("m", "<f4", &[1 << 30, 1 << 30], vec![])
        }])
        .version(4, 0)
        .bytes(),
        Loads,
    );
    add(
        "built: a v4 meta tensor whose size overflows",
        Tz::new(vec![TzTensor {
            stored: Some(0),
            ..tz_tensor("m", "<f4", &[1 << 31, 1 << 31], vec![])
        }])
        .version(4, 0)
        .bytes(),
        f,
    );
    add(
        "built: v5 u64 dims [2^40, 2^40] f32 (the size overflows)",
        Tz::new(vec![TzTensor {
            wide: true,
            ..tz_tensor("w", "<f4", &[1 << 40, 1 << 40], vec![])
        }])
        .version(5, 2)
        .bytes(),
        f,
    );
    add(
        "built: v5 u64 dims [0, 2^40] (control)",
        Tz::new(vec![TzTensor {
            wide: true,
            ..tz_tensor("w", "<f4", &[0, 1 << 40], vec![])
        }])
        .version(5, 2)
        .bytes(),
        Loads,
    );
    add(
        "built: tensor count one more than the exact-size block holds",
        Tz {
            count: Some(2),
            ..Tz::new(vec![small(b"x")])
        }
        .bytes(),
        f,
    );
    add(
        "built: tensor count 2, one entry and 25 zero bytes (the block ends inside entry 1)",
        Tz {
            count: Some(2),
            padding: 25,
            ..Tz::new(vec![small(b"x")])
        }
        .bytes(),
        f,
    );
    add(
        "built: 200,000 zero entries in a 6.2 MB metadata block (count that lies)",
        Tz {
            count: Some(200_000),
            padding: 200_000 * 31,
            ..Tz::new(vec![])
        }
        .bytes(),
        f,
    );
    cases
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn hostile_plaid_files() {
    run_all("plaid", plaid_cases);
}

#[test]
fn hostile_safetensors_files() {
    run_all("safetensors", safetensors_cases);
}

#[test]
fn hostile_sharded_checkpoints() {
    run_all("sharded", sharded_cases);
}

#[test]
fn hostile_tensorizer_files() {
    run_all("tensorizer", tensorizer_cases);
}

// ---------------------------------------------------------------------------------------
// Indexes of many small entries
// ---------------------------------------------------------------------------------------

/// The heap peak, above what was live before, of opening `path` and dropping it again:
/// through the Rust API, and through the C API (whose handle adds its C view of every
/// tensor). The caller holds the measurement lock.
fn open_peaks(path: &Path) -> (u64, u64) {
    use plaid::ffi::deserializer::{
        plaid_deserializer, plaid_deserializer_free, plaid_deserializer_open,
    };
    let base = reset_peak();
    let d = Deserializer::open(path, ReadOptions::default()).unwrap();
    assert!(d.tensors().len() >= 1 << 18);
    drop(d);
    let rust = PEAK.load(Ordering::SeqCst).saturating_sub(base) as u64;
    let text = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let base = reset_peak();
    let mut d: *mut plaid_deserializer = std::ptr::null_mut();
    // SAFETY: `text` is a NUL-terminated path that outlives the call, NULL options mean
    // the defaults, and `d` is a valid place for the handle.
    let status = unsafe { plaid_deserializer_open(text.as_ptr(), std::ptr::null(), &mut d) };
    assert_eq!(status, 0);
    // SAFETY: `d` was returned by the open above and is freed once.
    unsafe { plaid_deserializer_free(d) };
    let c = PEAK.load(Ordering::SeqCst).saturating_sub(base) as u64;
    (rust, c)
}

/// Bytes of heap allowed per byte of header to open a file through the C API.
const C_PER_INPUT_BYTE: u64 = 12;

/// The smallest valid entries there are (an empty tensor with a short name, about 20 bytes
/// of plaid header or 50 of safetensors JSON each) decode into an index that costs a small,
/// fixed multiple of the header: names and shapes of small tensors are held inline in the
/// index, and the C handle keeps every name in one allocation.
#[test]
fn indexes_of_many_small_entries_cost_a_small_multiple_of_their_header() {
    // Held throughout: what other tests allocate meanwhile would count here.
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let count = 1u32 << 18;
    let plaid_file = dir.path().join("empty.plaid");
    let mut w = Serializer::create(&plaid_file, WriteOptions::default().sync(false)).unwrap();
    for i in 0..count {
        w.add_tensor(&format!("t{i}"), DType::F32, &[0], &[])
            .unwrap();
    }
    w.finish().unwrap();
    let mut json = String::from("{");
    for i in 0..count {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}"
        ));
    }
    json.push('}');
    let st_file = dir.path().join("empty.safetensors");
    std::fs::write(&st_file, st(json, &[])).unwrap();
    for (path, header) in [
        (&plaid_file, std::fs::metadata(&plaid_file).unwrap().len()),
        (&st_file, std::fs::metadata(&st_file).unwrap().len() - 8),
    ] {
        let (rust, c) = open_peaks(path);
        let ratio = |peak: u64| peak as f64 / header as f64;
        println!(
            "{}: {count} tensors, {header}-byte header; heap peak to open {rust} bytes ({:.1}x), through the C API {c} bytes ({:.1}x)",
            path.file_name().unwrap().to_string_lossy(),
            ratio(rust),
            ratio(c)
        );
        // The C handle adds its C view of each tensor (88 bytes and the NUL-terminated
        // name) to the core's index (about 130 bytes a tensor).
        assert!(
            rust < PER_INPUT_BYTE * header && c < C_PER_INPUT_BYTE * header,
            "{}: {:.1}x and {:.1}x the header",
            path.display(),
            ratio(rust),
            ratio(c)
        );
    }
}

/// JSON headers that decode into many times their size in a generic JSON tree (a rank of
/// 8 million, 250,000 tensors) cost a small multiple of their size: the parser is typed and
/// counts as it goes. (A generic tree peaked at 2.4 GB for a 98 MB header.)
#[test]
fn hostile_json_headers_cost_a_small_multiple_of_their_size() {
    // Held throughout: what other tests allocate meanwhile would count here.
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    // One tensor of rank 8 million (about 16 MB of header): refused, rank over 64.
    let mut rank = String::from("{\"a\":{\"dtype\":\"U8\",\"shape\":[");
    rank.push_str(&"1,".repeat(8_000_000));
    rank.push_str("1],\"data_offsets\":[0,1]}}");
    // 250,000 one-byte tensors (about 14 MB of header): opens.
    let mut many = String::from("{");
    for i in 0..250_000u64 {
        if i > 0 {
            many.push(',');
        }
        many.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[{i},{}]}}",
            i + 1
        ));
    }
    many.push('}');
    for (name, header, data, opens) in [("rank", rank, 1, false), ("many", many, 250_000, true)] {
        let header_len = header.len() as u64;
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, st(header, &vec![7; data])).unwrap();
        let base = reset_peak();
        let opened = Deserializer::open(&path, ReadOptions::default());
        assert_eq!(opened.is_ok(), opens, "{name}: {:?}", opened.err());
        if let Err(e) = opened {
            assert!(is(Kind::Format, &e), "{name}: {e}");
        }
        let peak = PEAK.load(Ordering::SeqCst).saturating_sub(base) as u64;
        println!(
            "{name}: {header_len}-byte header, heap peak {peak} bytes ({:.1}x)",
            peak as f64 / header_len as f64
        );
        assert!(
            peak < PER_INPUT_BYTE * header_len,
            "{name}: {peak} bytes for a {header_len}-byte header"
        );
    }
}
