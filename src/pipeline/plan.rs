//! The one planner of loads, verification and mapped verification: every tensor's stored
//! bytes become jobs (byte ranges) sized by the source's request size and rounded to the
//! tensor's checksum unit, so each job verifies exactly what it reads; a tensor whose hash
//! must see all of its bytes in order is one job; small tensors lying close together
//! (within the source's merge gap) are read as one range and spread into their
//! destinations.

use crate::format::{Checksum, TensorInfo};
use crate::sink::Place;

use super::select::Selection;
use super::whole_units;
use crate::format::verify::Verify;

/// A tensor, its whole destination, and the view of it the destination wants (`None`: its
/// stored bytes).
pub(crate) type Placed<'t, 'a> = (&'t TensorInfo, Out<'a>, Option<Selection>);

/// Tensors smaller than this are read together with their neighbours in the file.
pub(crate) const SMALL_TENSOR: u64 = 1 << 20;
/// Batched reads are at most this long, or longer where the source's merge gap is large
/// (8 gaps), and never longer than a request: small enough locally that the batches of a
/// model made of small tensors spread evenly over the I/O threads.
const MAX_BATCH: u64 = 2 << 20;

/// A destination, or a piece of one.
pub(crate) enum Out<'a> {
    /// The caller's host memory.
    Host(&'a mut [u8]),
    /// `len` bytes at `address` of memory reached through staging buffers (device
    /// memory), of the load's sink number `sink`.
    Staged {
        sink: usize,
        address: u64,
        len: usize,
    },
    /// Nowhere: the bytes are read only to be verified.
    Scratch(usize),
    /// Bytes already in memory (a mapping), only to be verified.
    Lent(&'a [u8]),
}

impl<'a> Out<'a> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Host(buffer) => buffer.len(),
            Out::Staged { len, .. } | Out::Scratch(len) => *len,
            Out::Lent(bytes) => bytes.len(),
        }
    }

    /// Where byte `at` of this destination lies, for a [`crate::sink::Writer`].
    pub(crate) fn place(&mut self, at: usize) -> Place<'_> {
        match self {
            Out::Host(buffer) => Place::Memory(&mut buffer[at..]),
            Out::Staged { address, .. } => Place::Address(*address + at as u64),
            // Never written: verification only.
            Out::Scratch(_) | Out::Lent(_) => Place::Address(0),
        }
    }

    /// The address of byte `at` of a staged destination (0 for the others).
    pub(crate) fn address(&self, at: usize) -> u64 {
        match self {
            Out::Staged { address, .. } => *address + at as u64,
            _ => 0,
        }
    }

    /// Which destinations may share a batch: host memory and verification alone, or one
    /// device sink (one staging buffer). Bytes already in memory are never batched.
    fn batch_kind(&self) -> Option<usize> {
        match self {
            Out::Host(_) | Out::Scratch(_) => Some(usize::MAX),
            Out::Staged { sink, .. } => Some(*sink),
            Out::Lent(_) => None,
        }
    }

    /// The first `n` bytes of this destination, which keeps the rest.
    pub(crate) fn take_front(&mut self, n: usize) -> Out<'a> {
        match self {
            Out::Host(buffer) => {
                let (front, rest) = std::mem::take(buffer).split_at_mut(n);
                *buffer = rest;
                Out::Host(front)
            }
            Out::Lent(bytes) => {
                let (front, rest) = bytes.split_at(n);
                *bytes = rest;
                Out::Lent(front)
            }
            Out::Scratch(len) => {
                *len -= n;
                Out::Scratch(n)
            }
            Out::Staged { sink, address, len } => {
                let front = Out::Staged {
                    sink: *sink,
                    address: *address,
                    len: n,
                };
                *address += n as u64;
                *len -= n;
                front
            }
        }
    }

    /// Consecutive pieces of at most `step` bytes.
    fn split(self, step: usize) -> Vec<Out<'a>> {
        let step = step.max(1);
        let ranges = |len: usize| {
            (0..len)
                .step_by(step)
                .map(move |at| (at, step.min(len - at)))
        };
        match self {
            Out::Host(buffer) => buffer.chunks_mut(step).map(Out::Host).collect(),
            Out::Lent(bytes) => bytes.chunks(step).map(Out::Lent).collect(),
            Out::Scratch(len) => ranges(len).map(|(_, n)| Out::Scratch(n)).collect(),
            Out::Staged { sink, address, len } => ranges(len)
                .map(|(at, n)| Out::Staged {
                    sink,
                    address: address + at as u64,
                    len: n,
                })
                .collect(),
        }
    }
}

/// What one job does.
pub(crate) enum Target<'a> {
    /// The tensor's stored bytes from the job's start on, as many as the destination
    /// piece holds (none, for a tensor whose hash covers only its header).
    Range(Out<'a>),
    /// A tensor the file stores no bytes for: filled with zeros (a hash over its header is
    /// checked).
    Zeros(Out<'a>),
    /// `len` stored bytes of the tensor from the job's start on, read (and verified) to
    /// give `out` the part of a view they hold: the view's bytes from `dest_from` on.
    Select {
        len: u64,
        dest_from: u64,
        out: Out<'a>,
        selection: Selection,
    },
    /// Several whole small tensors read as one range of `len` bytes at `offset` and
    /// spread into their destinations.
    Batch {
        offset: u64,
        len: usize,
        members: Vec<(&'a TensorInfo, Out<'a>)>,
    },
}

/// One job: `target` receives tensor `tensor`'s bytes from `start` on.
pub(crate) struct Job<'a> {
    pub(crate) tensor: usize,
    pub(crate) start: u64,
    pub(crate) target: Target<'a>,
}

impl Job<'_> {
    /// The tensors this job delivers and how many of each one's bytes.
    pub(crate) fn pieces(&self) -> Vec<(usize, u64)> {
        match &self.target {
            Target::Range(out) | Target::Zeros(out) | Target::Select { out, .. } => {
                vec![(self.tensor, out.len() as u64)]
            }
            Target::Batch { members, .. } => members
                .iter()
                .map(|(t, out)| (t.index, out.len() as u64))
                .collect(),
        }
    }
}

/// How jobs are cut, from the source's hints and the read options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// Bytes per read request.
    pub(crate) request_bytes: u64,
    /// Bytes between two small tensors worth reading through.
    pub(crate) merge_gap: u64,
    /// What is verified.
    pub(crate) verify: Verify,
}

impl Policy {
    /// The longest batched read.
    pub(crate) fn batch_max(&self) -> u64 {
        self.request_bytes
            .min(MAX_BATCH.max(self.merge_gap.saturating_mul(8)))
    }

    /// Bytes per read, and so per scratch or staging buffer: one request. A job of more
    /// (a whole checksum block larger than a request, a tensor whose hash must see every
    /// byte in order) is read request by request; the stages carry partial blocks across.
    pub(crate) fn buffer_len(&self) -> usize {
        usize::try_from(self.request_bytes)
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// Bytes per job of `tensor`: the request size rounded to whole checksum blocks, so
    /// that every job verifies exactly the blocks it covers; or all of it where its hash
    /// must see every byte in order.
    fn job_len(&self, tensor: &TensorInfo) -> usize {
        if self.verify.sequential(tensor) {
            return usize::MAX;
        }
        let job = match tensor.checksum.block_size() {
            Some(block) => whole_units(self.request_bytes, block),
            None => self.request_bytes,
        };
        // Whole cipher chunks (a multiple of 64 bytes; checksum blocks are powers of two).
        let job = match tensor.encryption.as_deref().map(|e| e.unit()) {
            Some(unit) => whole_units(job, unit),
            None => job,
        };
        usize::try_from(job).unwrap_or(usize::MAX)
    }
}

/// Cut the tensors of `placed` (in file order, each with its whole destination) into jobs.
pub(crate) fn plan<'a>(placed: Vec<Placed<'a, 'a>>, policy: &Policy) -> Vec<Job<'a>> {
    let mut jobs = Vec::new();
    let mut batch: Vec<(&'a TensorInfo, Out<'a>)> = Vec::new();
    for (tensor, out, selection) in placed {
        let stored = tensor.stored_len();
        if let (Some(selection), false) = (selection, tensor.zero_fill) {
            plan_view(tensor, out, selection, policy, &mut jobs);
            continue;
        }
        if tensor.zero_fill {
            jobs.push(Job {
                tensor: tensor.index,
                start: 0,
                target: Target::Zeros(out),
            });
            continue;
        }
        if stored == 0 {
            // Nothing to read, but a hash over the header may be checked.
            if policy.verify.on && tensor.checksum.whole_tensor() {
                jobs.push(Job {
                    tensor: tensor.index,
                    start: 0,
                    target: Target::Range(out),
                });
            }
            continue;
        }
        if stored < SMALL_TENSOR && out.batch_kind().is_some() {
            let fits = batch
                .first()
                .zip(batch.last())
                .is_some_and(|(first, last)| {
                    let end = last.0.offset + last.0.nbytes;
                    first.1.batch_kind() == out.batch_kind()
                        && tensor.offset >= end
                        && tensor.offset - end <= policy.merge_gap
                        && tensor.offset + stored - first.0.offset <= policy.batch_max()
                });
            if !fits {
                flush(&mut batch, &mut jobs);
            }
            batch.push((tensor, out));
            continue;
        }
        let step = policy.job_len(tensor);
        for (k, piece) in out.split(step).into_iter().enumerate() {
            jobs.push(Job {
                tensor: tensor.index,
                start: k as u64 * step as u64,
                target: Target::Range(piece),
            });
        }
    }
    flush(&mut batch, &mut jobs);
    jobs
}

/// The jobs of a view of `tensor`: the stored bytes it needs (rounded out to whole checksum
/// blocks where verifying, or all of them where the tensor's hash must see every byte),
/// cut into jobs of about one request, each giving `out` the part of the view it holds.
fn plan_view<'a>(
    tensor: &'a TensorInfo,
    mut out: Out<'a>,
    selection: Selection,
    policy: &Policy,
    jobs: &mut Vec<Job<'a>>,
) {
    let stored = tensor.stored_len();
    let size = selection.src_size().max(1);
    let mut spans = selection.spans(policy.merge_gap);
    if spans.is_empty() {
        return;
    }
    let mut step = whole_units(policy.job_len(tensor) as u64, size);
    // Encrypted: whole cipher chunks are read (and authenticated, always).
    if let Some(unit) = tensor.encryption.as_deref().map(|e| e.unit()) {
        spans = round_out(spans, unit, stored);
        step = whole_units(policy.job_len(tensor) as u64, unit);
    }
    if policy.verify.on {
        let block = tensor.checksum.block_size();
        // A hash over all of the tensor that verification checks (tensorizer's CRC32, or
        // its SHA-256 when those are checked): it must see every byte.
        let whole_hash = matches!(
            &tensor.checksum,
            Checksum::WholeTensor { crc32, sha256, .. }
                if crc32.is_some() || (sha256.is_some() && policy.verify.sha256)
        );
        if policy.verify.sequential(tensor) || block.is_some_and(|b| b % size != 0) {
            // A hash of every byte in order, or blocks that elements straddle: all of it,
            // as one job (read a request at a time).
            spans = vec![(0, stored)];
            step = u64::MAX;
        } else if whole_hash {
            // A CRC-32 of every byte, combined from pieces read in parallel: all of them.
            spans = vec![(0, stored)];
        } else if let Some(block) = block {
            spans = round_out(spans, block, stored);
        }
    }
    for (start, end) in spans {
        let mut at = start;
        while at < end {
            let len = step.min(end - at);
            let (from, to) = (selection.dest_at(at), selection.dest_at(at + len));
            jobs.push(Job {
                tensor: tensor.index,
                start: at,
                target: Target::Select {
                    len,
                    dest_from: from,
                    out: out.take_front((to - from) as usize),
                    selection: selection.clone(),
                },
            });
            at += len;
        }
    }
}

/// `spans` rounded out to multiples of `unit` (the last ending at `stored`), overlapping
/// ones merged.
fn round_out(spans: Vec<(u64, u64)>, unit: u64, stored: u64) -> Vec<(u64, u64)> {
    let mut rounded: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        let start = start / unit * unit;
        let end = end.div_ceil(unit).saturating_mul(unit).min(stored);
        match rounded.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => rounded.push((start, end)),
        }
    }
    rounded
}

/// A batch of one is a plain job.
fn flush<'a>(batch: &mut Vec<(&'a TensorInfo, Out<'a>)>, jobs: &mut Vec<Job<'a>>) {
    match batch.len() {
        0 => {}
        1 => {
            let (tensor, out) = batch.pop().expect("one member");
            jobs.push(Job {
                tensor: tensor.index,
                start: 0,
                target: Target::Range(out),
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
                    offset: first.offset,
                    len,
                    members: std::mem::take(batch),
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TensorRole;
    use crate::DType;

    fn tensor(index: usize, offset: u64, nbytes: u64, checksum: Checksum) -> TensorInfo {
        TensorInfo {
            name: format!("t{index}").into(),
            dtype: DType::U8,
            shape: smallvec::smallvec![nbytes],
            nbytes,
            index,
            offset,
            checksum,
            zero_fill: false,
            role: TensorRole::Unspecified,
            module_index: 0,
            path: None,
            encryption: None,
        }
    }

    const POLICY: Policy = Policy {
        request_bytes: 10 << 20,
        merge_gap: 64 << 10,
        verify: Verify {
            on: true,
            sha256: true,
        },
    };

    #[test]
    fn jobs_are_rounded_to_blocks_and_small_tensors_batched() {
        let blocks = |n: u64| Checksum::Crc32cBlocks {
            block_size: 4 << 20,
            crcs: vec![0; n.div_ceil(4 << 20) as usize].into(),
        };
        let big = tensor(0, 0, 20 << 20, blocks(20 << 20));
        let small_a = tensor(1, (20 << 20) + 4096, 1000, blocks(1000));
        let small_b = tensor(2, (20 << 20) + 8192, 1000, blocks(1000));
        let far = tensor(3, 40 << 20, 1000, blocks(1000));
        let placed = vec![
            (&big, Out::Scratch(20 << 20), None),
            (&small_a, Out::Scratch(1000), None),
            (&small_b, Out::Scratch(1000), None),
            (&far, Out::Scratch(1000), None),
        ];
        let jobs = plan(placed, &POLICY);
        // 10 MiB requests round down to 8 MiB (two 4 MiB blocks): 8 + 8 + 4.
        let starts: Vec<(usize, u64, usize)> = jobs
            .iter()
            .map(|j| {
                (
                    j.tensor,
                    j.start,
                    j.pieces().iter().map(|p| p.1 as usize).sum(),
                )
            })
            .collect();
        assert_eq!(
            starts,
            vec![
                (0, 0, 8 << 20),
                (0, 8 << 20, 8 << 20),
                (0, 16 << 20, 4 << 20),
                (1, 0, 2000),
                (3, 0, 1000)
            ]
        );
        assert!(matches!(jobs[3].target, Target::Batch { len: 5096, .. }));
    }
}
