//! The load pipeline: ask the placement for every tensor and check each answer in the
//! placement room (`room.rs`), plan the reads (`plan.rs`), then
//! let I/O threads read each job's bytes straight into its destination, passing every
//! piece through the job's stages (`stages.rs`: verification, and the places of
//! decryption and conversion) as soon as it arrives (`execute.rs`). Host destinations
//! receive the bytes in place; device destinations go through the staging lanes of their
//! sink (`crate::sink`), whose copies are drained before the load returns.
//!
//! Three numbers are set apart: requests in flight (I/O threads; the source's hint unless
//! the options say), CPU workers (how many threads verify or copy at once), and staging
//! lanes (pinned buffers for device memory). Host memory beyond the destinations is
//! bounded by requests in flight x request size (see `execute.rs`).

mod execute;
mod plan;
mod progress;
mod room;
mod select;
mod stages;

pub use progress::{Progress, ProgressFn};

use std::sync::Arc;

use crate::crypto::Secret;
use crate::error::Result;
use crate::format::{Index, TensorInfo};
use crate::sink::{Placement, Sink, Sinks};
use crate::source::Source;
use execute::{execute, Context};
use plan::{plan, Out, Placed, Policy};

use progress::Tracker;
use room::Room;
pub(crate) use room::{host_memory, received, Claims};

pub(crate) use crate::format::verify::{Transform, Verify};

/// What a load did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadStats {
    /// Tensors written to a destination (or verified).
    pub tensors: usize,
    /// Bytes delivered: each tensor's `nbytes`, or for a view (a slice, a conversion) the
    /// bytes its destination received. (What was read from the source may differ: whole
    /// checksum blocks around a slice, gaps between small tensors read through.)
    pub bytes: u64,
    /// The most host memory the load allocated at once to read through (scratch buffers
    /// for verification and for batches of small tensors; not the destinations, not the
    /// pinned staging buffers, not mapped pages): at most requests in flight x the
    /// request size.
    pub scratch_peak: usize,
}

/// What a load runs with: the read options' load settings, made by the layer above
/// ([`crate::options::ReadOptions::load_settings`]) so that the pipeline names no option.
#[derive(Clone, Copy)]
pub(crate) struct Settings<'s> {
    /// What to verify.
    pub(crate) verify: Verify,
    /// CPU workers (threads verifying or copying at once), resolved.
    pub(crate) cpu_workers: usize,
    /// Bytes per read request; 0: the source's hint.
    pub(crate) request_bytes: u64,
    /// Read requests kept in flight (I/O threads); 0: the source's hint.
    pub(crate) requests_in_flight: u32,
    /// Staging lanes per device; 0: one per request in flight.
    pub(crate) staging_lanes: usize,
    /// Least time between two progress reports.
    pub(crate) progress_interval: std::time::Duration,
    /// The caller's `CUstream` for copies to device memory (0: the sink's own streams).
    pub(crate) cuda_stream: usize,
    /// The key or passphrase that decrypts encrypted tensors.
    pub(crate) secret: &'s Secret,
}

impl Settings<'_> {
    /// The same settings with every byte verified.
    fn verifying(self) -> Self {
        Settings {
            verify: Verify {
                on: true,
                ..self.verify
            },
            ..self
        }
    }
}

/// How many of what a load runs with.
struct Depth {
    io_threads: usize,
    cpu_workers: usize,
}

fn depth(source: &dyn Source, options: &Settings<'_>) -> Depth {
    let cpu_workers = options.cpu_workers;
    let io_threads = match options.requests_in_flight {
        0 => source.hints().in_flight(cpu_workers),
        n => n as usize,
    };
    Depth {
        io_threads,
        cpu_workers,
    }
}

fn policy(source: &dyn Source, options: &Settings<'_>) -> Policy {
    let hints = source.hints();
    Policy {
        request_bytes: match options.request_bytes {
            0 => hints.request_bytes,
            n => n,
        },
        merge_gap: hints.merge_gap,
        verify: options.verify,
    }
}

/// Plan `placed` and run it: the one way every load, verification and mapped verification
/// goes.
fn run(
    source: &dyn Source,
    index: &Index,
    options: &Settings<'_>,
    placed: Vec<Placed<'_, '_>>,
    sinks: &[Arc<dyn Sink>],
    io_threads: Option<usize>,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    let mut stats = LoadStats {
        tensors: placed.len(),
        bytes: placed
            .iter()
            .map(|(t, out, view)| match view {
                Some(_) => out.len() as u64,
                None => t.nbytes,
            })
            .sum(),
        scratch_peak: 0,
    };
    // One operation: one retry budget for all its remote requests.
    source.begin();
    let policy = policy(source, options);
    let depth = depth(source, options);
    // Verification only, without key material: encrypted tensors checked as stored where
    // the format allows (crypto::Decrypt::for_load).
    let stored_only = placed
        .iter()
        .all(|(_, out, _)| matches!(out, Out::Scratch(_) | Out::Lent(_)))
        && !options.secret.is_set();
    let decrypt = crate::crypto::Decrypt::for_load(
        source.name(),
        placed.iter().map(|(t, _, _)| *t),
        index.tensors.len(),
        options.secret,
        stored_only,
    )?;
    let jobs = plan(placed, &policy);
    let tracker = Tracker::new(
        progress,
        options.progress_interval,
        index.tensors.len(),
        stats.tensors,
        jobs.iter().flat_map(|job| job.pieces()),
    );
    let context = Context::new(source, index, policy, sinks, depth.cpu_workers, decrypt);
    execute(
        &context,
        jobs,
        io_threads.unwrap_or(depth.io_threads),
        &tracker,
    )?;
    tracker.finish();
    stats.scratch_peak = context.scratch_peak();
    Ok(stats)
}

/// `len` rounded down to whole `unit`s (checksum blocks, cipher chunks, elements), never
/// below one unit: the size of every request, job and piece that stages see whole.
pub(crate) fn whole_units<T>(len: T, unit: T) -> T
where
    T: Copy + Ord + From<u8> + std::ops::Div<Output = T> + std::ops::Mul<Output = T>,
{
    (len / unit).max(T::from(1)) * unit
}

/// What a load or a verification reads: a file's (or a checkpoint's) source and index,
/// with the settings of the read options.
pub(crate) struct Input<'i> {
    pub(crate) source: &'i dyn Source,
    pub(crate) index: &'i Index,
    pub(crate) settings: Settings<'i>,
}

/// Load the tensors of the input into the destinations chosen by `placement`.
pub(crate) fn load<'a>(
    input: &Input<'_>,
    sinks: &Sinks,
    placement: &mut dyn Placement<'a>,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    let Input {
        source,
        index,
        settings: ref options,
    } = *input;
    // Every destination is known and checked before the first byte is read.
    let mut room = Room::new(sinks, options.cuda_stream);
    let mut placed: Vec<Placed<'_, 'a>> = Vec::with_capacity(index.tensors.len());
    for tensor in &index.tensors {
        placed.extend(room.admit(tensor, placement.place(tensor)?)?);
    }
    // Loads that stage take turns with the sinks.
    let _turn = (!room.staged.is_empty()).then(|| sinks.turn());
    // One lane per request in flight by default: a lane is what a request reads into.
    let lanes = match options.staging_lanes {
        0 => depth(source, options).io_threads,
        n => n,
    };
    let staged = room.prepare_staging(&placed, lanes, policy(source, options).buffer_len())?;
    run(source, index, options, placed, &staged, None, progress)
}

/// Read and verify every byte of every tensor, keeping none of them (scratch buffers of at
/// most one request per I/O thread).
pub(crate) fn verify_all(
    input: &Input<'_>,
    wanted: &dyn Fn(&TensorInfo) -> bool,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    let (source, index, options) = (input.source, input.index, input.settings.verifying());
    let placed = index
        .tensors
        .iter()
        .filter(|t| wanted(t))
        .map(|t| (t, Out::Scratch(t.stored_len() as usize), None))
        .collect();
    run(source, index, &options, placed, &[], None, progress)
}

/// Verify `tensors`, each given with its stored bytes in place (a mapping), in parallel
/// pieces on the CPU workers.
pub(crate) fn verify_lent(input: &Input<'_>, tensors: &[(&TensorInfo, &[u8])]) -> Result<()> {
    let (source, index, options) = (input.source, input.index, input.settings.verifying());
    let placed = tensors
        .iter()
        .map(|&(t, bytes)| (t, Out::Lent(bytes), None))
        .collect();
    let threads = options.cpu_workers;
    run(source, index, &options, placed, &[], Some(threads), None).map(drop)
}
