//! The load pipeline: ask the placement for every tensor, plan the reads, then let a
//! pool of workers read chunks straight into their destinations and verify each
//! checksum block while it is hot in cache.

mod progress;

pub use progress::{Progress, ProgressFn};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::checksum::{copy_crc32c, crc32c, WholeHasher};
use crate::format::{Checksum, Index, TensorInfo};
use crate::options::ReadOptions;
use crate::sink::{Destination, Placement};
use crate::source::Source;
use progress::Tracker;

/// What a load did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadStats {
    /// Tensors written to a destination (or verified).
    pub tensors: usize,
    /// Bytes read.
    pub bytes: u64,
}

/// Tensors smaller than this are read together with their neighbours in the file.
const SMALL_TENSOR: u64 = 1 << 20;
/// Most bytes between two tensors of one batched read (padding, or tensors skipped).
const MAX_BATCH_GAP: u64 = 64 << 10;
/// Most bytes of one batched read (or the chunk size, if smaller): small enough that the
/// batches of a model made of small tensors spread evenly over the workers.
const MAX_BATCH: u64 = 2 << 20;

/// Where one chunk's bytes go.
enum Target<'a> {
    /// Straight into the caller's buffer.
    Host(&'a mut [u8]),
    /// Into the worker's scratch buffer, only to be verified.
    Scratch(usize),
    /// A tensor the file stores no bytes for: filled with zeros (its hashes, which cover
    /// only its header, are checked).
    Zeros(&'a mut [u8]),
    /// Several whole small tensors lying close together in the file, read as one range
    /// of `len` bytes from the first one's offset and spread into their buffers.
    Batch {
        len: usize,
        members: Vec<(&'a TensorInfo, &'a mut [u8])>,
    },
}

/// One read: `target` receives the tensor's bytes from `start` on.
struct Job<'a> {
    tensor: usize,
    start: u64,
    target: Target<'a>,
}

impl Job<'_> {
    /// The tensors this job delivers and how many of each one's bytes.
    fn pieces(&self) -> Vec<(usize, u64)> {
        match &self.target {
            Target::Host(buffer) => vec![(self.tensor, buffer.len() as u64)],
            Target::Scratch(len) => vec![(self.tensor, *len as u64)],
            Target::Zeros(buffer) => vec![(self.tensor, buffer.len() as u64)],
            Target::Batch { members, .. } => members
                .iter()
                .map(|(t, buffer)| (t.index, buffer.len() as u64))
                .collect(),
        }
    }
}

/// Group whole small tensors that lie close together in the file into batched jobs, so a
/// model of many small tensors costs a few large reads rather than one read per tensor.
fn batch_small<'a>(
    planned: Vec<(&'a TensorInfo, &'a mut [u8])>,
    options: &ReadOptions,
    jobs: &mut Vec<Job<'a>>,
) {
    let mut batch: Vec<(&'a TensorInfo, &'a mut [u8])> = Vec::new();
    let flush = |batch: &mut Vec<(&'a TensorInfo, &'a mut [u8])>, jobs: &mut Vec<Job<'a>>| {
        match batch.len() {
            0 => {}
            1 => {
                let (tensor, buffer) = batch.pop().expect("one member");
                jobs.push(Job {
                    tensor: tensor.index,
                    start: 0,
                    target: Target::Host(buffer),
                });
            }
            _ => {
                let first = batch[0].0;
                let last = batch[batch.len() - 1].0;
                let len = (last.offset + last.nbytes - first.offset) as usize;
                jobs.push(Job {
                    tensor: first.index,
                    start: 0,
                    target: Target::Batch {
                        len,
                        members: std::mem::take(batch),
                    },
                });
            }
        }
    };
    for (tensor, buffer) in planned {
        let fits = batch
            .first()
            .zip(batch.last())
            .is_some_and(|(first, last)| {
                let end = last.0.offset + last.0.nbytes;
                tensor.offset >= end
                    && tensor.offset - end <= MAX_BATCH_GAP
                    && tensor.offset + tensor.nbytes - first.0.offset
                        <= options.chunk_size.min(MAX_BATCH)
            });
        if !fits {
            flush(&mut batch, jobs);
        }
        batch.push((tensor, buffer));
    }
    flush(&mut batch, jobs);
}

/// Load the tensors of `index` into the destinations chosen by `placement`.
pub(crate) fn load<'a>(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    placement: &mut dyn Placement<'a>,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    // Every destination is known and checked before the first byte is read.
    let mut planned: Vec<(&TensorInfo, &'a mut [u8])> = Vec::new();
    for tensor in &index.tensors {
        match placement.place(tensor)? {
            Destination::Skip => {}
            Destination::Host(buffer) => {
                let capacity = buffer.len() as u64;
                if capacity < tensor.nbytes {
                    return Err(Error::Capacity {
                        tensor: tensor.name.clone(),
                        needed: tensor.nbytes,
                        capacity,
                    });
                }
                planned.push((tensor, &mut buffer[..tensor.nbytes as usize]));
            }
            Destination::Cuda { device, .. } => {
                return Err(Error::NoCuda(format!(
                    "tensor '{}' asks for CUDA device {device}, but this build of plaid has no CUDA support",
                    tensor.name
                )));
            }
        }
    }
    let mut stats = LoadStats::default();
    let mut jobs = Vec::new();
    let mut small = Vec::new();
    for (tensor, buffer) in planned {
        stats.tensors += 1;
        stats.bytes += tensor.nbytes;
        if tensor.zero_fill {
            jobs.push(Job {
                tensor: tensor.index,
                start: 0,
                target: Target::Zeros(buffer),
            });
            continue;
        }
        if tensor.nbytes > 0 && tensor.nbytes < SMALL_TENSOR {
            small.push((tensor, buffer));
            continue;
        }
        if tensor.nbytes == 0 {
            // Nothing to read, but a hash over the header may be checked.
            if options.verify && tensor.checksum.whole_tensor() {
                jobs.push(Job {
                    tensor: tensor.index,
                    start: 0,
                    target: Target::Host(buffer),
                });
            }
            continue;
        }
        let step = job_len(tensor, options);
        for (k, piece) in buffer.chunks_mut(step).enumerate() {
            jobs.push(Job {
                tensor: tensor.index,
                start: (k * step) as u64,
                target: Target::Host(piece),
            });
        }
    }
    batch_small(small, options, &mut jobs);
    run(source, index, options, jobs, stats.tensors, progress)?;
    Ok(stats)
}

/// Read and verify every byte of every tensor with bounded memory (one chunk per worker).
pub(crate) fn verify_all(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    let options = options.clone().verify(true);
    let mut stats = LoadStats::default();
    let mut jobs = Vec::new();
    for tensor in &index.tensors {
        stats.tensors += 1;
        stats.bytes += tensor.nbytes;
        let stored = tensor.stored_len();
        if stored == 0 {
            if tensor.checksum.whole_tensor() {
                jobs.push(Job {
                    tensor: tensor.index,
                    start: 0,
                    target: Target::Scratch(0),
                });
            }
            continue;
        }
        let step = job_len(tensor, &options) as u64;
        let mut start = 0;
        while start < stored {
            let len = step.min(stored - start);
            jobs.push(Job {
                tensor: tensor.index,
                start,
                target: Target::Scratch(usize::try_from(len).unwrap_or(usize::MAX)),
            });
            start += len;
        }
    }
    run(source, index, &options, jobs, stats.tensors, progress)?;
    Ok(stats)
}

/// Bytes per read for `tensor`: the chunk size rounded to whole checksum blocks, so that
/// every read verifies exactly the blocks it covers.
fn chunk_len(tensor: &TensorInfo, options: &ReadOptions) -> usize {
    let chunk = match tensor.checksum.block_size() {
        Some(block) => (options.chunk_size / block).max(1) * block,
        None => options.chunk_size,
    };
    usize::try_from(chunk).unwrap_or(usize::MAX)
}

/// Bytes per job for `tensor`: one chunk, or the whole tensor where verifying needs all
/// of its bytes in order (tensorizer's hashes); such a job still reads chunk by chunk.
fn job_len(tensor: &TensorInfo, options: &ReadOptions) -> usize {
    if options.verify && tensor.checksum.whole_tensor() {
        usize::MAX
    } else {
        chunk_len(tensor, options)
    }
}

fn run(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    jobs: Vec<Job<'_>>,
    tensors_total: usize,
    progress: Option<&ProgressFn<'_>>,
) -> Result<()> {
    let tracker = Tracker::new(
        progress,
        options.progress_interval,
        index.tensors.len(),
        tensors_total,
        jobs.iter().flat_map(Job::pieces),
    );
    let threads = options.worker_threads();
    pool(jobs, threads, |scratch, job: Job<'_>| {
        let tensor = &index.tensors[job.tensor];
        let pieces = job.pieces();
        let step = chunk_len(tensor, options);
        run_job(source, tensor, job, Verify::from(options), step, scratch)?;
        pieces
            .into_iter()
            .try_for_each(|(tensor, len)| tracker.chunk_done(tensor, len))
    })?;
    tracker.finish();
    Ok(())
}

/// Run `jobs` on up to `threads` workers (the calling thread is one of them), each with
/// its own scratch buffer. The first error stops the others after their current job and
/// is returned.
fn pool<J: Send>(
    jobs: Vec<J>,
    threads: usize,
    f: impl Fn(&mut Vec<u8>, J) -> Result<()> + Sync,
) -> Result<()> {
    let threads = threads.min(jobs.len()).max(1);
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        let mut scratch = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(job) = queue.lock().next() else {
                break;
            };
            if let Err(e) = f(&mut scratch, job) {
                failed.store(true, Ordering::Relaxed);
                first_error.lock().get_or_insert(e);
                break;
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
    first_error.into_inner().map_or(Ok(()), Err)
}

fn run_job(
    source: &dyn Source,
    tensor: &TensorInfo,
    job: Job<'_>,
    verify: Verify,
    step: usize,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let file = source.name();
    let in_tensor = |e: Error| e.in_tensor(&tensor.name);
    let mut check = Check::new(tensor, verify);
    match job.target {
        Target::Batch { len, mut members } => {
            let offset = tensor.offset + job.start;
            return run_batch(source, offset, len, &mut members, verify, scratch);
        }
        Target::Zeros(buffer) => buffer.fill(0),
        Target::Host(buffer) => {
            let mut start = job.start;
            for piece in buffer.chunks_mut(step) {
                // Copied and checked in one pass where the source can lend its bytes.
                let offset = tensor.offset + start;
                let before = check.clone();
                let len = piece.len();
                let mut copy = |bytes: &[u8]| check.copy(file, start, bytes, piece);
                match source.with_bytes(offset, len, &mut copy) {
                    Some(done) => done.map_err(in_tensor)?,
                    None => {
                        check = before;
                        source.read_at(offset, piece).map_err(in_tensor)?;
                        check.check(file, start, piece)?;
                    }
                }
                start += len as u64;
            }
        }
        Target::Scratch(len) => {
            let mut start = job.start;
            let end = job.start + len as u64;
            while start < end {
                let n = usize::try_from(end - start).map_or(step, |left| left.min(step));
                let offset = tensor.offset + start;
                // Checked in place where the source can lend its bytes (a mapping).
                let before = check.clone();
                let mut look = |bytes: &[u8]| check.check(file, start, bytes);
                match source.with_bytes(offset, n, &mut look) {
                    Some(done) => done.map_err(in_tensor)?,
                    None => {
                        check = before;
                        scratch.resize(n, 0);
                        source
                            .read_at(offset, &mut scratch[..n])
                            .map_err(in_tensor)?;
                        check.check(file, start, &scratch[..n])?;
                    }
                }
                start += n as u64;
            }
        }
    }
    check.finish(file)
}

/// Read the `len` bytes at `offset` holding every member of a batch and spread them into
/// the members' buffers, verifying each. Where reading the whole range fails, each member
/// is read on its own so that the error names the tensor it hit.
fn run_batch(
    source: &dyn Source,
    offset: u64,
    len: usize,
    members: &mut [(&TensorInfo, &mut [u8])],
    verify: Verify,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let file = source.name();
    let mut spread = |bytes: &[u8]| -> Result<()> {
        for (tensor, buffer) in members.iter_mut() {
            let at = (tensor.offset - offset) as usize;
            let src = &bytes[at..at + buffer.len()];
            let mut check = Check::new(tensor, verify);
            check
                .copy(file, 0, src, buffer)
                .map_err(|e| e.in_tensor(&tensor.name))?;
            check.finish(file)?;
        }
        Ok(())
    };
    if let Some(done) = source.with_bytes(offset, len, &mut spread) {
        return done;
    }
    scratch.resize(len, 0);
    if source.read_at(offset, &mut scratch[..len]).is_ok() {
        return spread(&scratch[..len]);
    }
    for (tensor, buffer) in members.iter_mut() {
        source
            .read_at(tensor.offset, buffer)
            .map_err(|e| e.in_tensor(&tensor.name))?;
        let mut check = Check::new(tensor, verify);
        check.check(file, 0, buffer)?;
        check.finish(file)?;
    }
    Ok(())
}

/// What to verify.
#[derive(Clone, Copy)]
struct Verify {
    /// Anything at all.
    on: bool,
    /// SHA-256 hashes too, where the file has them.
    sha256: bool,
}

impl From<&ReadOptions> for Verify {
    fn from(options: &ReadOptions) -> Self {
        Verify {
            on: options.verify,
            sha256: options.verify_sha256,
        }
    }
}

/// Checking a job's bytes as they go by: against block checksums (each block on its
/// own), or feeding whole-tensor hashes that are compared once the last byte is in.
#[derive(Clone)]
enum Check<'t> {
    Off,
    Blocks(&'t TensorInfo),
    Whole(&'t TensorInfo, Box<WholeHasher>),
}

impl<'t> Check<'t> {
    fn new(tensor: &'t TensorInfo, verify: Verify) -> Self {
        match &tensor.checksum {
            _ if !verify.on => Check::Off,
            Checksum::None => Check::Off,
            Checksum::Crc32cBlocks { .. } => Check::Blocks(tensor),
            Checksum::WholeTensor {
                prefix,
                crc32,
                sha256,
            } => {
                let sha256 = sha256.is_some() && verify.sha256;
                if crc32.is_none() && !sha256 {
                    return Check::Off;
                }
                let mut hasher = Box::new(WholeHasher::with(crc32.is_some(), sha256));
                hasher.update(prefix);
                Check::Whole(tensor, hasher)
            }
        }
    }

    /// Copy `src`, the tensor's bytes from `start` on, into `dst`, checking them.
    fn copy(&mut self, file: &str, start: u64, src: &[u8], dst: &mut [u8]) -> Result<()> {
        match self {
            Check::Off => dst.copy_from_slice(src),
            Check::Blocks(tensor) => {
                check_blocks(file, tensor, start, src.len(), |r| {
                    copy_crc32c(&mut dst[r.clone()], &src[r])
                })?;
            }
            Check::Whole(_, hasher) => {
                // Hashed piece by piece while each is still in cache.
                for (d, s) in dst.chunks_mut(1 << 20).zip(src.chunks(1 << 20)) {
                    d.copy_from_slice(s);
                    hasher.update(d);
                }
            }
        }
        Ok(())
    }

    /// Check `data`, the tensor's bytes from `start` on.
    fn check(&mut self, file: &str, start: u64, data: &[u8]) -> Result<()> {
        match self {
            Check::Off => Ok(()),
            Check::Blocks(tensor) => {
                check_blocks(file, tensor, start, data.len(), |r| crc32c(&data[r]))
            }
            Check::Whole(_, hasher) => {
                hasher.update(data);
                Ok(())
            }
        }
    }

    /// Compare whole-tensor hashes, once every byte went through.
    fn finish(self, file: &str) -> Result<()> {
        match self {
            Check::Whole(tensor, hasher) => compare_whole(file, tensor, *hasher),
            _ => Ok(()),
        }
    }
}

/// Compare the hashes of a whole tensor with the stored ones.
fn compare_whole(file: &str, tensor: &TensorInfo, hasher: WholeHasher) -> Result<()> {
    let Checksum::WholeTensor { crc32, sha256, .. } = &tensor.checksum else {
        return Ok(());
    };
    let (crc, sha) = hasher.finish();
    let mismatch = |detail: String| Error::HashMismatch {
        file: file.to_owned(),
        tensor: tensor.name.clone(),
        offset: tensor.offset,
        detail,
    };
    if let (Some(stored), Some(actual)) = (crc32, crc) {
        if *stored != actual {
            return Err(mismatch(format!(
                "stored crc32 {stored:#010x}, computed {actual:#010x}"
            )));
        }
    }
    if let (Some(stored), Some(actual)) = (sha256, sha) {
        if *stored != actual {
            return Err(mismatch(format!(
                "stored sha256 {}, computed {}",
                hex(stored),
                hex(&actual)
            )));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verify `tensors`, each given with its stored bytes in place (a mapping), in parallel
/// chunks.
pub(crate) fn verify_mapped(
    file: &str,
    tensors: &[(&TensorInfo, &[u8])],
    options: &ReadOptions,
) -> Result<()> {
    let mut jobs: Vec<(&TensorInfo, u64, &[u8])> = Vec::new();
    for &(tensor, data) in tensors {
        if data.is_empty() {
            jobs.push((tensor, 0, data)); // a hash may cover the header
        }
        let step = job_len(tensor, options);
        for (k, piece) in data.chunks(step).enumerate() {
            jobs.push((tensor, (k * step) as u64, piece));
        }
    }
    pool(
        jobs,
        options.worker_threads(),
        |_, (tensor, start, piece)| verify_range(file, tensor, start, piece, options),
    )
}

/// Check `data`, the bytes of `tensor` from `start` on, against its block checksums.
/// `start` is a multiple of the block size.
pub(crate) fn verify_range(
    file: &str,
    tensor: &TensorInfo,
    start: u64,
    data: &[u8],
    options: &ReadOptions,
) -> Result<()> {
    if tensor.checksum.whole_tensor() {
        // `data` is the whole tensor.
        let mut check = Check::new(
            tensor,
            Verify {
                on: true,
                sha256: options.verify_sha256,
            },
        );
        check.check(file, 0, &data[..tensor.stored_len() as usize])?;
        return check.finish(file);
    }
    check_blocks(file, tensor, start, data.len(), |r| crc32c(&data[r]))
}

/// Compare the CRC that `crc_of` computes for each checksum block of the `len` bytes of
/// `tensor` from `start` on (given as a range relative to `start`) with the stored one.
fn check_blocks(
    file: &str,
    tensor: &TensorInfo,
    start: u64,
    len: usize,
    mut crc_of: impl FnMut(std::ops::Range<usize>) -> u32,
) -> Result<()> {
    let Checksum::Crc32cBlocks { block_size, crcs } = &tensor.checksum else {
        return Ok(());
    };
    let first = start / block_size;
    let block_len = usize::try_from(*block_size).unwrap_or(usize::MAX);
    let mut at = 0;
    let mut b = first;
    while at < len {
        let end = at.saturating_add(block_len).min(len);
        let expected = crcs[b as usize];
        let actual = crc_of(at..end);
        if actual != expected {
            return Err(Error::Checksum {
                file: file.to_owned(),
                tensor: tensor.name.clone(),
                offset: tensor.offset + b * block_size,
                block: b,
                expected,
                actual,
            });
        }
        at = end;
        b += 1;
    }
    Ok(())
}
