//! The load pipeline: ask the placement for every tensor, plan the reads (`plan.rs`), then
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
mod select;
mod stages;

pub use progress::{Progress, ProgressFn};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{Encryption, Index, TensorInfo};
use crate::options::ReadOptions;
use crate::sink::{Destination, Placement, Sink, Sinks};
use crate::source::Source;
use execute::{execute, Context};
use plan::{plan, Out, Placed, Policy};

use progress::Tracker;
pub(crate) use select::Selection;

pub(crate) use plan::coalesce;
pub(crate) use stages::{Transform, Verify};

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

/// How many of what a load runs with.
struct Depth {
    io_threads: usize,
    cpu_workers: usize,
}

fn depth(source: &dyn Source, options: &ReadOptions) -> Depth {
    let cpu_workers = options.worker_threads();
    let io_threads = match options.requests_in_flight {
        0 => source.hints().in_flight(cpu_workers),
        n => n as usize,
    };
    Depth {
        io_threads,
        cpu_workers,
    }
}

fn policy(source: &dyn Source, options: &ReadOptions) -> Policy {
    let hints = source.hints();
    Policy {
        request: match options.chunk_size {
            0 => hints.request_bytes,
            n => n,
        },
        merge_gap: hints.merge_gap,
        verify: Verify::from(options),
    }
}

/// Plan `placed` and run it: the one way every load, verification and mapped verification
/// goes.
fn run(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
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
    // The key of every encrypted tensor loaded, found (or derived) before anything is read:
    // a missing key fails the load here.
    // Verification only, without key material: plaid's CRCs cover the stored bytes, so
    // its encrypted tensors are checked as stored (tensorizer's hashes need the plaintext).
    let stored_only = placed
        .iter()
        .all(|(_, out, _)| matches!(out, Out::Scratch(_) | Out::Lent(_)))
        && !options.secret.is_set();
    // Key material also expects encrypted tensors: `Decrypt::of` refuses one stored in the
    // clear here, before anything is read (unless plaintext is allowed).
    let mut decrypt = Vec::new();
    for (t, _, _) in &placed {
        if stored_only && matches!(t.encryption.as_deref(), Some(Encryption::Plaid { .. })) {
            continue;
        }
        if let Some(stage) = crate::crypto::Decrypt::of(source.name(), t, &options.secret)? {
            if decrypt.is_empty() {
                decrypt.resize_with(index.tensors.len(), || None);
            }
            decrypt[t.index] = Some(stage);
        }
    }
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

/// Load the tensors of `index` into the destinations chosen by `placement`.
pub(crate) fn load<'a>(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    sinks: &Sinks,
    placement: &mut dyn Placement<'a>,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    // Every destination is known and checked before the first byte is read.
    let mut placed: Vec<Placed<'_, 'a>> = Vec::new();
    let mut staged: Vec<Arc<dyn Sink>> = Vec::new();
    let mut cuda_sinks: HashMap<i32, usize> = HashMap::new();
    let mut device_ranges: BTreeMap<(i32, u64), (u64, &str)> = BTreeMap::new();
    for tensor in &index.tensors {
        let (dest, selection) = match placement.place(tensor)? {
            // A view of nothing is nothing: not checked.
            Destination::View(_, to) if matches!(*to, Destination::Skip) => {
                (Destination::Skip, None)
            }
            Destination::View(view, to) => {
                if matches!(*to, Destination::View(..)) {
                    return Err(Error::invalid(format!(
                        "tensor '{}': a view of a view",
                        tensor.name
                    )));
                }
                let selection = Selection::resolve(tensor, &view)?;
                (*to, selection)
            }
            dest => (dest, None),
        };
        // Bytes the destination receives: the tensor's, or its view's.
        let needed = selection
            .as_ref()
            .map_or(tensor.nbytes, Selection::dest_len);
        let capacity_error = |capacity: u64| Error::Capacity {
            tensor: tensor.name.to_string(),
            needed,
            capacity,
        };
        match dest {
            Destination::Skip => {}
            Destination::View(..) => unreachable!("refused above"),
            Destination::Host(buffer) => {
                let capacity = buffer.len() as u64;
                if capacity < needed {
                    return Err(capacity_error(capacity));
                }
                placed.push((tensor, Out::Host(&mut buffer[..needed as usize]), selection));
            }
            Destination::Cuda {
                device,
                address,
                capacity,
            } => {
                if capacity < needed {
                    return Err(capacity_error(capacity));
                }
                if address == 0 && needed > 0 {
                    return Err(Error::invalid(format!(
                        "tensor '{}': CUDA destination address is NULL",
                        tensor.name
                    )));
                }
                let sink = match cuda_sinks.get(&device) {
                    Some(&k) => k,
                    None => {
                        let sink = sinks
                            .cuda(device, options.cuda_stream)
                            .map_err(|e| e.in_tensor(&tensor.name))?;
                        staged.push(sink);
                        cuda_sinks.insert(device, staged.len() - 1);
                        staged.len() - 1
                    }
                };
                let len = usize::try_from(needed).map_err(Error::invalid)?;
                if len > 0 {
                    if let Some((_, other)) =
                        device_ranges.insert((device, address), (needed, &tensor.name))
                    {
                        return Err(Error::invalid(format!(
                            "the CUDA destinations of tensors '{other}' and '{}' overlap on device {device}",
                            tensor.name
                        )));
                    }
                }
                placed.push((tensor, Out::Staged { sink, address, len }, selection));
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
    // Loads that stage take turns with the sinks; each gets its lanes ready, with buffers
    // of one request (which holds a batch too).
    let _turn = (!staged.is_empty()).then(|| sinks.turn());
    if !staged.is_empty() {
        // A request, or a whole cipher unit (an encrypted block is decrypted whole in the
        // lane before it is sent) where that is larger.
        let unit = placed
            .iter()
            .filter(|(_, out, _)| matches!(out, Out::Staged { .. }))
            .filter_map(|(t, _, _)| t.encryption.as_deref().map(|e| e.unit()))
            .max()
            .unwrap_or(1);
        let piece = policy(source, options)
            .read_len()
            .max(usize::try_from(unit).unwrap_or(usize::MAX));
        // One lane per request in flight by default: a lane is what a request reads into.
        let lanes = match options.staging_lanes {
            0 => depth(source, options).io_threads,
            n => n,
        };
        for sink in &staged {
            sink.prepare(lanes, piece)?;
        }
    }
    run(source, index, options, placed, &staged, None, progress)
}

/// Read and verify every byte of every tensor, keeping none of them (scratch buffers of at
/// most one request per I/O thread).
pub(crate) fn verify_all(
    source: &dyn Source,
    index: &Index,
    options: &ReadOptions,
    wanted: &dyn Fn(&TensorInfo) -> bool,
    progress: Option<&ProgressFn<'_>>,
) -> Result<LoadStats> {
    let options = options.clone().verify(true);
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
pub(crate) fn verify_lent(
    source: &dyn Source,
    index: &Index,
    tensors: &[(&TensorInfo, &[u8])],
    options: &ReadOptions,
) -> Result<()> {
    let options = options.clone().verify(true);
    let placed = tensors
        .iter()
        .map(|&(t, bytes)| (t, Out::Lent(bytes), None))
        .collect();
    let threads = options.worker_threads();
    run(source, index, &options, placed, &[], Some(threads), None).map(drop)
}
