//! The load pipeline: ask the placement for every tensor, plan the reads, then let a
//! pool of workers read chunks straight into their destinations and verify each
//! checksum block while it is hot in cache.

mod progress;

pub use progress::{Progress, ProgressFn};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::checksum::crc32c;
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

/// Where one chunk's bytes go.
enum Target<'a> {
    /// Straight into the caller's buffer.
    Host(&'a mut [u8]),
    /// Into the worker's scratch buffer, only to be verified.
    Scratch(usize),
}

/// One read: `target` receives the tensor's bytes from `start` on.
struct Job<'a> {
    tensor: usize,
    start: u64,
    target: Target<'a>,
}

impl Job<'_> {
    fn len(&self) -> usize {
        match &self.target {
            Target::Host(buffer) => buffer.len(),
            Target::Scratch(len) => *len,
        }
    }
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
    for (tensor, buffer) in planned {
        stats.tensors += 1;
        stats.bytes += tensor.nbytes;
        let step = chunk_len(tensor, options);
        for (k, piece) in buffer.chunks_mut(step).enumerate() {
            jobs.push(Job {
                tensor: tensor.index,
                start: (k * step) as u64,
                target: Target::Host(piece),
            });
        }
    }
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
    let mut stats = LoadStats::default();
    let mut jobs = Vec::new();
    for tensor in &index.tensors {
        stats.tensors += 1;
        stats.bytes += tensor.nbytes;
        let step = chunk_len(tensor, options) as u64;
        let mut start = 0;
        while start < tensor.nbytes {
            let len = step.min(tensor.nbytes - start);
            jobs.push(Job {
                tensor: tensor.index,
                start,
                target: Target::Scratch(len as usize),
            });
            start += len;
        }
    }
    let options = options.clone().verify(true);
    run(source, index, &options, jobs, stats.tensors, progress)?;
    Ok(stats)
}

/// Bytes per job for `tensor`: the chunk size rounded to whole checksum blocks, so that
/// every job verifies exactly the blocks it read.
fn chunk_len(tensor: &TensorInfo, options: &ReadOptions) -> usize {
    let chunk = match tensor.checksum.block_size() {
        Some(block) => (options.chunk_size / block).max(1) * block,
        None => options.chunk_size,
    };
    usize::try_from(chunk).unwrap_or(usize::MAX)
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
        jobs.iter().map(|job| (job.tensor, job.len() as u64)),
    );
    let threads = options.worker_threads().min(jobs.len()).max(1);
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        let mut scratch = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(job) = queue.lock().next() else {
                break;
            };
            let tensor = &index.tensors[job.tensor];
            let len = job.len() as u64;
            let done = run_job(source, tensor, job, options.verify, &mut scratch)
                .and_then(|()| tracker.chunk_done(tensor.index, len));
            if let Err(e) = done {
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
        // The calling thread is a worker too.
        work();
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => {
            tracker.finish();
            Ok(())
        }
    }
}

fn run_job(
    source: &dyn Source,
    tensor: &TensorInfo,
    job: Job<'_>,
    verify: bool,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let buffer: &mut [u8] = match job.target {
        Target::Host(buffer) => buffer,
        Target::Scratch(len) => {
            scratch.resize(len, 0);
            &mut scratch[..len]
        }
    };
    source
        .read_at(tensor.offset + job.start, buffer)
        .map_err(|e| e.in_tensor(&tensor.name))?;
    if verify {
        verify_range(source.name(), tensor, job.start, buffer)?;
    }
    Ok(())
}

/// Check `data`, the bytes of `tensor` from `start` on, against its block checksums.
/// `start` is a multiple of the block size.
pub(crate) fn verify_range(file: &str, tensor: &TensorInfo, start: u64, data: &[u8]) -> Result<()> {
    let Checksum::Crc32cBlocks { block_size, crcs } = &tensor.checksum else {
        return Ok(());
    };
    let first = start / block_size;
    let block_len = usize::try_from(*block_size).unwrap_or(usize::MAX);
    for (j, block) in data.chunks(block_len).enumerate() {
        let b = first + j as u64;
        let expected = crcs[b as usize];
        let actual = crc32c(block);
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
    }
    Ok(())
}
