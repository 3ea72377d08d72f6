//! The load pipeline: ask the placement for every tensor, plan the reads, then let a
//! pool of workers read chunks straight into their destinations and verify each
//! checksum block while it is hot in cache. Host destinations receive the bytes directly;
//! device destinations go through the worker's pinned staging lane (`crate::cuda`), whose
//! copies are drained before the load returns. Whole-tensor hashes (tensorizer) make each
//! tensor one job, read in order.

mod progress;

pub use progress::{Progress, ProgressFn};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::cuda::{Lane, Ring};
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

/// A destination, or a piece of one.
enum Out<'a> {
    /// The caller's host memory.
    Host(&'a mut [u8]),
    /// `len` bytes of device memory at `address` on CUDA device `device`, reached through
    /// the worker's pinned staging lane.
    Device {
        device: i32,
        address: u64,
        len: usize,
    },
}

impl<'a> Out<'a> {
    fn len(&self) -> usize {
        match self {
            Out::Host(buffer) => buffer.len(),
            Out::Device { len, .. } => *len,
        }
    }

    /// The CUDA device, for device memory.
    fn device(&self) -> Option<i32> {
        match self {
            Out::Host(_) => None,
            Out::Device { device, .. } => Some(*device),
        }
    }

    /// Consecutive pieces of at most `step` bytes.
    fn split(self, step: usize) -> Vec<Out<'a>> {
        match self {
            Out::Host(buffer) => buffer.chunks_mut(step).map(Out::Host).collect(),
            Out::Device {
                device,
                address,
                len,
            } => (0..len)
                .step_by(step.max(1))
                .map(|at| Out::Device {
                    device,
                    address: address + at as u64,
                    len: step.min(len - at),
                })
                .collect(),
        }
    }
}

/// Where one chunk's bytes go.
enum Target<'a> {
    /// Straight into the destination (through a staging buffer for device memory).
    Out(Out<'a>),
    /// Into the worker's scratch buffer, only to be verified.
    Scratch(usize),
    /// A tensor the file stores no bytes for: filled with zeros (its hashes, which cover
    /// only its header, are checked).
    Zeros(Out<'a>),
    /// Several whole small tensors lying close together in the file, all bound for host
    /// memory or all for one device, read as one range of `len` bytes from the first one's
    /// offset and spread into their destinations.
    Batch {
        len: usize,
        members: Vec<(&'a TensorInfo, Out<'a>)>,
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
            Target::Out(out) | Target::Zeros(out) => vec![(self.tensor, out.len() as u64)],
            Target::Scratch(len) => vec![(self.tensor, *len as u64)],
            Target::Batch { members, .. } => members
                .iter()
                .map(|(t, out)| (t.index, out.len() as u64))
                .collect(),
        }
    }
}

/// Group whole small tensors that lie close together in the file, bound for the same kind
/// of memory (host, or one device), into batched jobs, so a model of many small tensors
/// costs a few large reads rather than one read per tensor.
fn batch_small<'a>(
    planned: Vec<(&'a TensorInfo, Out<'a>)>,
    options: &ReadOptions,
    jobs: &mut Vec<Job<'a>>,
) {
    let mut batch: Vec<(&'a TensorInfo, Out<'a>)> = Vec::new();
    let flush =
        |batch: &mut Vec<(&'a TensorInfo, Out<'a>)>, jobs: &mut Vec<Job<'a>>| match batch.len() {
            0 => {}
            1 => {
                let (tensor, out) = batch.pop().expect("one member");
                jobs.push(Job {
                    tensor: tensor.index,
                    start: 0,
                    target: Target::Out(out),
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
        };
    for (tensor, out) in planned {
        let fits = batch
            .first()
            .zip(batch.last())
            .is_some_and(|(first, last)| {
                let end = last.0.offset + last.0.nbytes;
                first.1.device() == out.device()
                    && tensor.offset >= end
                    && tensor.offset - end <= MAX_BATCH_GAP
                    && tensor.offset + tensor.nbytes - first.0.offset
                        <= options.chunk_size.min(MAX_BATCH)
            });
        if !fits {
            flush(&mut batch, jobs);
        }
        batch.push((tensor, out));
    }
    flush(&mut batch, jobs);
}

/// Load the tensors of `index` into the destinations chosen by `placement`.
pub(crate) fn load<'a>(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    ring: &Mutex<Ring>,
    placement: &mut dyn Placement<'a>,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    // Every destination is known and checked before the first byte is read.
    let mut planned: Vec<(&TensorInfo, Out<'a>)> = Vec::new();
    let mut device_ranges: BTreeMap<(i32, u64), (u64, &str)> = BTreeMap::new();
    for tensor in &index.tensors {
        let capacity_error = |capacity: u64| Error::Capacity {
            tensor: tensor.name.clone(),
            needed: tensor.nbytes,
            capacity,
        };
        match placement.place(tensor)? {
            Destination::Skip => {}
            Destination::Host(buffer) => {
                let capacity = buffer.len() as u64;
                if capacity < tensor.nbytes {
                    return Err(capacity_error(capacity));
                }
                planned.push((tensor, Out::Host(&mut buffer[..tensor.nbytes as usize])));
            }
            Destination::Cuda {
                device,
                address,
                capacity,
            } => {
                if capacity < tensor.nbytes {
                    return Err(capacity_error(capacity));
                }
                if address == 0 && tensor.nbytes > 0 {
                    return Err(Error::invalid(format!(
                        "tensor '{}': CUDA destination address is NULL",
                        tensor.name
                    )));
                }
                crate::cuda::init().map_err(|e| e.in_tensor(&tensor.name))?;
                let len = usize::try_from(tensor.nbytes).map_err(Error::invalid)?;
                if len > 0 {
                    if let Some((_, other)) =
                        device_ranges.insert((device, address), (tensor.nbytes, &tensor.name))
                    {
                        return Err(Error::invalid(format!(
                            "the CUDA destinations of tensors '{other}' and '{}' overlap on device {device}",
                            tensor.name
                        )));
                    }
                }
                planned.push((
                    tensor,
                    Out::Device {
                        device,
                        address,
                        len,
                    },
                ));
            }
        }
    }
    // Device destinations must not overlap either (host ones cannot: they are borrowed).
    let mut previous: Option<(i32, u64, &str)> = None;
    for (&(device, address), &(len, name)) in &device_ranges {
        if let Some((d, end, other)) = previous {
            if d == device && address < end {
                return Err(Error::invalid(format!(
                    "the CUDA destinations of tensors '{other}' and '{name}' overlap on device {device}"
                )));
            }
        }
        previous = Some((device, address.saturating_add(len), name));
    }
    let mut stats = LoadStats::default();
    let mut jobs = Vec::new();
    let mut small = Vec::new();
    // Staging for device memory: at least one chunk (whole checksum blocks), and a batch.
    let mut staging = usize::try_from(options.chunk_size.min(MAX_BATCH)).unwrap_or(usize::MAX);
    let mut devices = Vec::new();
    for (tensor, out) in planned {
        stats.tensors += 1;
        stats.bytes += tensor.nbytes;
        if let Some(device) = out.device() {
            staging = staging.max(chunk_len(tensor, options));
            if !devices.contains(&device) {
                devices.push(device);
            }
        }
        if tensor.zero_fill {
            jobs.push(Job {
                tensor: tensor.index,
                start: 0,
                target: Target::Zeros(out),
            });
            continue;
        }
        if tensor.nbytes > 0 && tensor.nbytes < SMALL_TENSOR {
            small.push((tensor, out));
            continue;
        }
        if tensor.nbytes == 0 {
            // Nothing to read, but a hash over the header may be checked.
            if options.verify && tensor.checksum.whole_tensor() {
                jobs.push(Job {
                    tensor: tensor.index,
                    start: 0,
                    target: Target::Out(out),
                });
            }
            continue;
        }
        let step = job_len(tensor, options);
        for (k, piece) in out.split(step).into_iter().enumerate() {
            jobs.push(Job {
                tensor: tensor.index,
                start: k as u64 * step as u64,
                target: Target::Out(piece),
            });
        }
    }
    batch_small(small, options, &mut jobs);
    let threads = options.worker_threads().min(jobs.len()).max(1);
    // Loads into device memory on one deserializer take turns with its staging ring.
    let mut ring = (!devices.is_empty()).then(|| ring.lock());
    let workers = match ring.as_deref_mut() {
        None => (0..threads).map(|_| Worker::default()).collect(),
        Some(ring) => {
            for &device in &devices {
                ring.reserve(device, threads, staging, options.cuda_stream)?;
            }
            ring.split(threads)
                .into_iter()
                .map(|lanes| Worker {
                    scratch: Vec::new(),
                    lanes,
                })
                .collect()
        }
    };
    run(
        source,
        index,
        options,
        jobs,
        workers,
        stats.tensors,
        progress,
    )?;
    Ok(stats)
}

/// What each worker owns: a scratch buffer, and its staging lane to each device.
#[derive(Default)]
struct Worker<'r> {
    scratch: Vec<u8>,
    lanes: HashMap<i32, &'r mut Lane>,
}

impl Worker<'_> {
    fn lane(&mut self, device: i32) -> Result<&mut Lane> {
        self.lanes
            .get_mut(&device)
            .map(|lane| &mut **lane)
            .ok_or_else(|| Error::Cuda(format!("no staging lane for CUDA device {device}")))
    }

    /// The lane to `device`, with its context made current until the guard is dropped.
    fn bound_lane(&mut self, device: i32) -> Result<(&mut Lane, crate::cuda::Bound)> {
        let lane = self.lane(device)?;
        let bound = lane.device().bind()?;
        Ok((lane, bound))
    }

    /// Wait for every copy still in flight to the devices.
    fn drain(&mut self) -> Result<()> {
        self.lanes
            .values_mut()
            .map(|lane| lane.drain())
            .fold(Ok(()), Result::and)
    }
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
    let threads = options.worker_threads().min(jobs.len()).max(1);
    let workers = (0..threads).map(|_| Worker::default()).collect();
    run(
        source,
        index,
        &options,
        jobs,
        workers,
        stats.tensors,
        progress,
    )?;
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
/// of its bytes in order (a SHA-256 over the whole tensor); such a job still reads chunk
/// by chunk. A whole-tensor CRC-32 alone does not: it is combined from the pieces' CRCs.
fn job_len(tensor: &TensorInfo, options: &ReadOptions) -> usize {
    if options.verify && sequential_hash(tensor, options.verify_sha256) {
        usize::MAX
    } else {
        chunk_len(tensor, options)
    }
}

/// Whether verifying `tensor` takes a hash that must see its bytes in order, in one piece
/// of work.
fn sequential_hash(tensor: &TensorInfo, sha256: bool) -> bool {
    matches!(&tensor.checksum, Checksum::WholeTensor { sha256: Some(_), .. } if sha256)
}

fn run(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    jobs: Vec<Job<'_>>,
    workers: Vec<Worker<'_>>,
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
    let split = SplitCrcs::default();
    pool(
        jobs,
        workers,
        |worker, job: Job<'_>| {
            let tensor = &index.tensors[job.tensor];
            let pieces = job.pieces();
            let step = chunk_len(tensor, options);
            let verify = Verify::from(options);
            run_job(source, tensor, job, verify, step, &split, worker)?;
            pieces
                .into_iter()
                .try_for_each(|(tensor, len)| tracker.chunk_done(tensor, len))
        },
        Worker::drain,
    )?;
    tracker.finish();
    Ok(())
}

/// Run `jobs` on one thread per worker state in `workers` (the calling thread is one of
/// them). The first error stops the others after their current job and is returned;
/// `finish` runs on every worker at the end, whatever happened (its error is returned
/// when nothing failed before).
fn pool<J: Send, W: Send>(
    jobs: Vec<J>,
    workers: Vec<W>,
    f: impl Fn(&mut W, J) -> Result<()> + Sync,
    finish: impl Fn(&mut W) -> Result<()> + Sync,
) -> Result<()> {
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        first_error.lock().get_or_insert(e);
    };
    let work = |mut worker: W| {
        while !failed.load(Ordering::Relaxed) {
            let Some(job) = queue.lock().next() else {
                break;
            };
            if let Err(e) = f(&mut worker, job) {
                fail(e);
                break;
            }
        }
        if let Err(e) = finish(&mut worker) {
            fail(e);
        }
    };
    let work = &work;
    let mut workers = workers.into_iter();
    let first = workers.next();
    std::thread::scope(|scope| {
        for worker in workers {
            scope.spawn(move || work(worker));
        }
        if let Some(worker) = first {
            work(worker);
        }
    });
    first_error.into_inner().map_or(Ok(()), Err)
}

fn run_job<'t>(
    source: &dyn Source,
    tensor: &'t TensorInfo,
    job: Job<'_>,
    verify: Verify,
    step: usize,
    split: &'t SplitCrcs,
    worker: &mut Worker<'_>,
) -> Result<()> {
    let file = source.name();
    let in_tensor = |e: Error| e.in_tensor(&tensor.name);
    let len = match &job.target {
        Target::Out(out) => out.len() as u64,
        Target::Scratch(len) => *len as u64,
        _ => tensor.stored_len(),
    };
    let mut check = Check::for_job(tensor, verify, job.start, len, split);
    match job.target {
        Target::Batch { len, members } => {
            let offset = tensor.offset + job.start;
            return run_batch(source, offset, len, members, verify, worker);
        }
        Target::Zeros(Out::Host(buffer)) => buffer.fill(0),
        Target::Zeros(Out::Device {
            device,
            address,
            len,
        }) => {
            let (lane, _bound) = worker.bound_lane(device).map_err(in_tensor)?;
            let mut at = 0;
            while at < len {
                let n = (len - at).min(lane.capacity());
                lane.buffer(n).map_err(in_tensor)?.fill(0);
                lane.send_one(address + at as u64, n).map_err(in_tensor)?;
                at += n;
            }
        }
        Target::Out(Out::Host(buffer)) => {
            let mut start = job.start;
            for piece in buffer.chunks_mut(step) {
                fill(source, tensor, start, piece, &mut check)?;
                start += piece.len() as u64;
            }
        }
        Target::Out(Out::Device {
            device,
            address,
            len,
        }) => {
            // Through the worker's two pinned buffers: while the device copies one, the
            // next piece is read (and checked) into the other.
            let (lane, _bound) = worker.bound_lane(device).map_err(in_tensor)?;
            let step = step.min(lane.capacity());
            let mut at = 0;
            while at < len {
                let n = step.min(len - at);
                let staging = lane.buffer(n).map_err(in_tensor)?;
                fill(source, tensor, job.start + at as u64, staging, &mut check)?;
                lane.send_one(address + at as u64, n).map_err(in_tensor)?;
                at += n;
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
                        let scratch = &mut worker.scratch;
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

/// Fill `dst` with the bytes of `tensor` from `start` on, checking them as they go by:
/// copied out of the source in place where it can lend them, read otherwise.
fn fill(
    source: &dyn Source,
    tensor: &TensorInfo,
    start: u64,
    dst: &mut [u8],
    check: &mut Check<'_>,
) -> Result<()> {
    let file = source.name();
    let offset = tensor.offset + start;
    let len = dst.len();
    let before = check.clone();
    let mut copy = |bytes: &[u8]| check.copy(file, start, bytes, dst);
    match source.with_bytes(offset, len, &mut copy) {
        Some(done) => done.map_err(|e| e.in_tensor(&tensor.name)),
        None => {
            *check = before;
            source
                .read_at(offset, dst)
                .map_err(|e| e.in_tensor(&tensor.name))?;
            check.check(file, start, dst)
        }
    }
}

/// Read the `len` bytes at `offset` holding every member of a batch and spread them into
/// the members' destinations (host buffers, or one device's memory through a staging
/// buffer), verifying each. Where reading the whole range fails, each member is read on
/// its own so that the error names the tensor it hit.
fn run_batch(
    source: &dyn Source,
    offset: u64,
    len: usize,
    members: Vec<(&TensorInfo, Out<'_>)>,
    verify: Verify,
    worker: &mut Worker<'_>,
) -> Result<()> {
    let file = source.name();
    let checked = |tensor: &TensorInfo, src: Option<&[u8]>, dst: &mut [u8]| -> Result<()> {
        let mut check = Check::new(tensor, verify);
        match src {
            Some(src) => check.copy(file, 0, src, dst),
            None => check.check(file, 0, dst),
        }
        .map_err(|e| e.in_tensor(&tensor.name))?;
        check.finish(file)
    };
    let at = |tensor: &TensorInfo| (tensor.offset - offset) as usize;
    if let Some(device) = members.first().and_then(|(_, out)| out.device()) {
        let (lane, _bound) = worker.bound_lane(device)?;
        let staging = lane.buffer(len)?;
        let mut spread = |bytes: &[u8]| -> Result<()> {
            for (tensor, out) in &members {
                let r = at(tensor)..at(tensor) + out.len();
                checked(tensor, Some(&bytes[r.clone()]), &mut staging[r])?;
            }
            Ok(())
        };
        match source.with_bytes(offset, len, &mut spread) {
            Some(done) => done?,
            None if source.read_at(offset, staging).is_ok() => {
                for (tensor, out) in &members {
                    checked(
                        tensor,
                        None,
                        &mut staging[at(tensor)..at(tensor) + out.len()],
                    )?;
                }
            }
            None => {
                for (tensor, out) in &members {
                    let dst = &mut staging[at(tensor)..at(tensor) + out.len()];
                    source
                        .read_at(tensor.offset, dst)
                        .map_err(|e| e.in_tensor(&tensor.name))?;
                    checked(tensor, None, dst)?;
                }
            }
        }
        let copies: Vec<(u64, usize, usize)> = members
            .iter()
            .map(|(tensor, out)| match out {
                Out::Device { address, len, .. } => (*address, at(tensor), *len),
                Out::Host(_) => (0, 0, 0),
            })
            .collect();
        return lane
            .send(&copies)
            .map_err(|(i, e)| e.in_tensor(&members[i].0.name));
    }
    let mut members: Vec<(&TensorInfo, &mut [u8])> = members
        .into_iter()
        .filter_map(|(tensor, out)| match out {
            Out::Host(buffer) => Some((tensor, buffer)),
            Out::Device { .. } => None,
        })
        .collect();
    let mut spread = |bytes: &[u8]| -> Result<()> {
        for (tensor, buffer) in members.iter_mut() {
            let src = &bytes[at(tensor)..at(tensor) + buffer.len()];
            checked(tensor, Some(src), buffer)?;
        }
        Ok(())
    };
    if let Some(done) = source.with_bytes(offset, len, &mut spread) {
        return done;
    }
    let scratch = &mut worker.scratch;
    scratch.resize(len, 0);
    if source.read_at(offset, &mut scratch[..len]).is_ok() {
        return spread(&scratch[..len]);
    }
    for (tensor, buffer) in members.iter_mut() {
        source
            .read_at(tensor.offset, buffer)
            .map_err(|e| e.in_tensor(&tensor.name))?;
        checked(tensor, None, buffer)?;
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
    /// Part of a tensor whose CRC-32 covers all of it: this piece's CRC, combined with the
    /// others' once every piece is in.
    Piece {
        tensor: &'t TensorInfo,
        start: u64,
        len: u64,
        crc: Box<crc_fast::Digest>,
        split: &'t SplitCrcs,
    },
}

impl<'t> Check<'t> {
    /// The check of a job covering `len` stored bytes of `tensor` from `start` on.
    fn for_job(
        tensor: &'t TensorInfo,
        verify: Verify,
        start: u64,
        len: u64,
        split: &'t SplitCrcs,
    ) -> Self {
        let partial = start != 0 || len != tensor.stored_len();
        match &tensor.checksum {
            Checksum::WholeTensor { crc32: Some(_), .. }
                if verify.on && partial && !sequential_hash(tensor, verify.sha256) =>
            {
                Check::Piece {
                    tensor,
                    start,
                    len,
                    crc: Box::new(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc)),
                    split,
                }
            }
            _ => Check::new(tensor, verify),
        }
    }

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
            Check::Piece { crc, .. } => {
                for (d, s) in dst.chunks_mut(1 << 20).zip(src.chunks(1 << 20)) {
                    d.copy_from_slice(s);
                    crc.update(d);
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
            Check::Piece { crc, .. } => {
                crc.update(data);
                Ok(())
            }
        }
    }

    /// Compare whole-tensor hashes, once every byte went through.
    fn finish(self, file: &str) -> Result<()> {
        match self {
            Check::Whole(tensor, hasher) => compare_whole(file, tensor, *hasher),
            Check::Piece {
                tensor,
                start,
                len,
                crc,
                split,
            } => split.add(file, tensor, start, len, crc.finalize() as u32),
            _ => Ok(()),
        }
    }
}

/// The CRC-32s of the pieces of tensors read in several jobs, by tensor, until every piece
/// is in and they can be combined into the tensor's CRC.
#[derive(Default)]
struct SplitCrcs {
    pieces: Mutex<HashMap<usize, Vec<PieceCrc>>>,
}

/// A piece of a tensor: its start, its length and its CRC-32.
type PieceCrc = (u64, u64, u32);

impl SplitCrcs {
    /// Record the CRC of `len` bytes from `start`; with the last piece of the tensor,
    /// combine them (after the CRC of its header) and compare with the stored CRC-32.
    fn add(&self, file: &str, tensor: &TensorInfo, start: u64, len: u64, crc: u32) -> Result<()> {
        let mut pieces = {
            let mut all = self.pieces.lock();
            let mine = all.entry(tensor.index).or_default();
            mine.push((start, len, crc));
            if mine.iter().map(|p| p.1).sum::<u64>() < tensor.stored_len() {
                return Ok(());
            }
            all.remove(&tensor.index).unwrap_or_default()
        };
        pieces.sort_unstable();
        let Checksum::WholeTensor { prefix, crc32, .. } = &tensor.checksum else {
            return Ok(());
        };
        let algorithm = crc_fast::CrcAlgorithm::Crc32IsoHdlc;
        let mut whole = crc_fast::checksum(algorithm, prefix);
        for (_, len, crc) in pieces {
            whole = crc_fast::checksum_combine(algorithm, whole, u64::from(crc), len);
        }
        match crc32 {
            Some(stored) if *stored != whole as u32 => Err(Error::HashMismatch {
                file: file.to_owned(),
                tensor: tensor.name.clone(),
                offset: tensor.offset,
                detail: format!(
                    "stored crc32 {stored:#010x}, computed {:#010x}",
                    whole as u32
                ),
            }),
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
        // Whole-tensor hashes are checked by one job here (no combining of pieces).
        let step = if tensor.checksum.whole_tensor() {
            usize::MAX
        } else {
            chunk_len(tensor, options)
        };
        for (k, piece) in data.chunks(step).enumerate() {
            jobs.push((tensor, (k * step) as u64, piece));
        }
    }
    let workers = vec![(); options.worker_threads().min(jobs.len()).max(1)];
    pool(
        jobs,
        workers,
        |_, (tensor, start, piece)| verify_range(file, tensor, start, piece, options),
        |_| Ok(()),
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
