//! Running the jobs of a plan. I/O threads (as many as requests are wanted in flight)
//! take jobs in file order and read their bytes straight into their destinations: host
//! memory, a staging buffer of a lane taken from a device's sink, or a
//! scratch buffer where bytes are only verified. Reads may come back short; each piece
//! goes through the job's stage chain as soon as it has arrived, under a CPU permit, so
//! that no more threads verify or copy at once than there are CPU workers, however many
//! requests are in flight. Where the source lends its bytes (a mapped file in the page
//! cache), the copy into the destination is the read, fused with verification.
//!
//! Host memory beyond the destinations: one scratch buffer per I/O thread, at most one
//! request (or one batch) long, allocated only for verification without a destination and
//! for batches of small tensors bound for host memory; and the staging lanes' pinned
//! buffers (lanes x 2 x the piece size).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::plan::{Job, Out, Policy, Target};
use super::progress::Tracker;
use super::select::Selection;
use super::stages::Chain;
use super::whole_units;
use crate::crypto::Decrypt;
use crate::error::{Error, Result};
use crate::format::verify::SplitCrcs;
use crate::format::{Index, TensorInfo};
use crate::pool::Permits;
use crate::sink::{HostSink, Place, Sink, Writer};
use crate::source::{read_exact, read_some, Source};

/// Everything the jobs of one load share.
pub(crate) struct Context<'r> {
    pub(crate) source: &'r dyn Source,
    pub(crate) index: &'r Index,
    pub(crate) policy: Policy,
    /// The sinks that `Out::Staged` destinations name by position.
    pub(crate) sinks: &'r [Arc<dyn Sink>],
    /// CPU workers: permits to verify or copy.
    pub(crate) cpu: Permits,
    pub(crate) split: SplitCrcs,
    /// The decrypt stage of each encrypted tensor loaded, by index.
    decrypt: Vec<Option<Decrypt>>,
    /// Scratch bytes allocated by all I/O threads now, and the most at any time.
    scratch_now: AtomicUsize,
    scratch_peak: AtomicUsize,
}

impl<'r> Context<'r> {
    pub(crate) fn new(
        source: &'r dyn Source,
        index: &'r Index,
        policy: Policy,
        sinks: &'r [Arc<dyn Sink>],
        cpu_workers: usize,
        decrypt: Vec<Option<Decrypt>>,
    ) -> Context<'r> {
        Context {
            source,
            index,
            policy,
            sinks,
            cpu: Permits::new(cpu_workers),
            split: SplitCrcs::default(),
            decrypt,
            scratch_now: AtomicUsize::new(0),
            scratch_peak: AtomicUsize::new(0),
        }
    }

    /// The most scratch memory the I/O threads held at once.
    pub(crate) fn scratch_peak(&self) -> usize {
        self.scratch_peak.load(Ordering::Relaxed)
    }

    /// A writer for the destination `out` (host memory or a sink's staging lane).
    fn writer(&self, out: &Out<'_>) -> Result<Box<dyn Writer + '_>> {
        match out {
            Out::Staged { sink, .. } => self.sinks[*sink].writer(),
            _ => HostSink.writer(),
        }
    }

    /// The chain of a job covering all of `tensor`.
    fn whole<'t>(&'t self, tensor: &'t TensorInfo) -> Chain<'t> {
        self.chain(tensor, 0, tensor.stored_len())
    }

    fn chain<'t>(&'t self, tensor: &'t TensorInfo, start: u64, len: u64) -> Chain<'t> {
        let decrypt = self.decrypt.get(tensor.index).and_then(Option::as_ref);
        let mut verify = self.policy.verify;
        if decrypt.is_some_and(|d| !d.before_verification()) {
            // plaid's CRCs cover the stored bytes, which the tag of each block
            // authenticates: checking both would read every byte twice for nothing.
            verify.on = false;
        }
        let chain = Chain::new(self.source.name(), tensor, verify, start, len, &self.split);
        // Decryption before verification where the file's checksums cover the plaintext
        // (tensorizer's hashes), after it where they cover the stored bytes (plaid's, whose
        // tags make the CRCs redundant for a reader with the key).
        match decrypt {
            Some(stage) if stage.before_verification() => chain.before(Box::new(stage.clone())),
            Some(stage) => chain.after(Box::new(stage.clone())),
            None => chain,
        }
    }

    /// The bytes tensor `tensor`'s stages must see whole (a cipher chunk), or 1.
    fn unit(&self, tensor: &TensorInfo) -> usize {
        self.decrypt
            .get(tensor.index)
            .and_then(Option::as_ref)
            .map_or(1, |d| crate::pipeline::Transform::unit(d) as usize)
    }
}

/// What each I/O thread owns.
struct Worker<'c> {
    context: &'c Context<'c>,
    scratch: Vec<u8>,
}

impl Worker<'_> {
    /// `len` bytes of this thread's scratch buffer, grown (and counted) as needed.
    fn scratch(&mut self, len: usize) -> &mut [u8] {
        if self.scratch.len() < len {
            let grown = len - self.scratch.len();
            self.scratch.resize(len, 0);
            let now = self.context.scratch_now.fetch_add(grown, Ordering::Relaxed) + grown;
            self.context.scratch_peak.fetch_max(now, Ordering::Relaxed);
        }
        &mut self.scratch[..len]
    }
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        self.context
            .scratch_now
            .fetch_sub(self.scratch.len(), Ordering::Relaxed);
    }
}

/// Run `jobs` on `io_threads` threads (the calling thread is one), reporting finished
/// jobs to `tracker`; then wait for every staged copy, whatever happened.
pub(crate) fn execute(
    context: &Context<'_>,
    jobs: Vec<Job<'_>>,
    io_threads: usize,
    tracker: &Tracker<'_>,
) -> Result<()> {
    let workers = (0..io_threads.min(jobs.len()).max(1))
        .map(|_| Worker {
            context,
            scratch: Vec::new(),
        })
        .collect();
    let ran = crate::pool::run(
        jobs.into_iter(),
        workers,
        |worker, job| {
            let pieces = job.pieces();
            run_job(worker, job)?;
            pieces
                .into_iter()
                .try_for_each(|(tensor, len)| tracker.chunk_done(tensor, len))
        },
        |_| Ok(()),
    );
    let drained = context
        .sinks
        .iter()
        .map(|sink| sink.drain())
        .fold(Ok(()), Result::and);
    ran.and(drained)
}

fn run_job(worker: &mut Worker<'_>, job: Job<'_>) -> Result<()> {
    let context = worker.context;
    let tensor = &context.index.tensors[job.tensor];
    let unit = context.unit(tensor);
    let step = whole_units(context.policy.buffer_len(), unit);
    match job.target {
        Target::Batch {
            offset,
            len,
            members,
        } => run_batch(worker, offset, len, members),
        Target::Zeros(Out::Scratch(_) | Out::Lent(_)) => context.chain(tensor, 0, 0).finish(),
        Target::Zeros(mut out) => {
            write(context, tensor, &mut out, 1, &mut |_, buffer| {
                buffer.fill(0);
                Ok(())
            })?;
            // The stored hashes of a tensor without data cover its header.
            context.chain(tensor, 0, 0).finish()
        }
        Target::Select {
            len,
            dest_from,
            out,
            selection,
        } => run_select(worker, tensor, job.start, len, dest_from, out, &selection),
        Target::Range(out) => {
            let mut chain = context.chain(tensor, job.start, out.len() as u64);
            match out {
                Out::Scratch(len) => inspect(worker, tensor, job.start, len, step, &mut chain)?,
                Out::Lent(bytes) => {
                    let _cpu = context.cpu.acquire();
                    for piece in bytes.chunks(step) {
                        chain.inspect(piece)?;
                    }
                }
                mut out => write(context, tensor, &mut out, unit, &mut |at, buffer| {
                    fill(context, tensor, job.start + at as u64, buffer, &mut chain)
                })?,
            }
            chain.finish()
        }
    }
}

/// Produce `out`'s bytes piece by piece (`produce(offset in out, memory)`, each piece a
/// multiple of `unit` bytes) into the memory its sink's writer gives (host memory itself,
/// or one of a lane's two buffers: while the device copies one, the next piece is produced
/// into the other), each delivered when full.
fn write(
    context: &Context<'_>,
    tensor: &TensorInfo,
    out: &mut Out<'_>,
    unit: usize,
    produce: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>,
) -> Result<()> {
    let in_tensor = |e: Error| e.in_tensor(&tensor.name);
    let mut writer = context.writer(out).map_err(in_tensor)?;
    let step = whole_units(context.policy.buffer_len().min(writer.capacity()), unit);
    let mut at = 0;
    while at < out.len() {
        let n = step.min(out.len() - at);
        let address = out.address(at);
        produce(at, writer.buffer(out.place(at), n).map_err(in_tensor)?)?;
        writer.deliver_one(address, n).map_err(in_tensor)?;
        at += n;
    }
    Ok(())
}

/// Read `len` stored bytes of `tensor` from `start` on, a request at a time into the
/// thread's scratch buffer, pass them through the chain (verification), and give `out` the
/// part of the view that each piece holds (gathered, and converted where the view asks),
/// the view's bytes from `dest_from` on.
fn run_select(
    worker: &mut Worker<'_>,
    tensor: &TensorInfo,
    start: u64,
    len: u64,
    dest_from: u64,
    mut out: Out<'_>,
    selection: &Selection,
) -> Result<()> {
    let context = worker.context;
    let in_tensor = |e: Error| e.in_tensor(&tensor.name);
    let mut chain = context.chain(tensor, start, len);
    let size = selection.src_size().max(1);
    let piece = whole_units(context.policy.buffer_len() as u64, size);
    let piece = whole_units(piece, chain.unit() as u64);
    let unit = selection.dest_unit();
    let scratch = worker.scratch(piece.min(len) as usize);
    let mut at = start;
    while at < start + len {
        let n = piece.min(start + len - at);
        let bytes = &mut scratch[..n as usize];
        read_exact(context.source, tensor.offset + at, bytes).map_err(in_tensor)?;
        {
            let _cpu = context.cpu.acquire();
            chain.feed(bytes)?;
        }
        let (from, to) = (selection.dest_at(at), selection.dest_at(at + n));
        if to > from {
            let mut part = out.take_front((to - from) as usize);
            let bytes = &*bytes;
            write(context, tensor, &mut part, unit, &mut |k, buffer| {
                let _cpu = context.cpu.acquire();
                selection.gather(bytes, at, from + k as u64, buffer);
                Ok(())
            })?;
        }
        at += n;
    }
    debug_assert_eq!(
        out.len(),
        0,
        "a view job fills its destination: from {dest_from}"
    );
    chain.finish()
}

/// Run `f` on the `len` bytes at `offset` where the source lends them (a mapping), holding
/// a CPU permit. `None` where it does not, or where they changed under `f` (the file
/// shrank): the caller reads instead, which reports what the file holds now.
fn lent(
    context: &Context<'_>,
    offset: u64,
    len: usize,
    f: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Option<Result<()>> {
    let map = context.source.mappable()?;
    let _cpu = context.cpu.acquire();
    map.with_bytes(offset, len, f)
}

/// [`lent`] for bytes that pass through `chain`: where `None` comes back, the chain is as
/// it was before, for the caller's read.
fn through_lent(
    context: &Context<'_>,
    chain: &mut Chain<'_>,
    offset: u64,
    len: usize,
    f: &mut dyn FnMut(&mut Chain<'_>, &[u8]) -> Result<()>,
) -> Option<Result<()>> {
    context.source.mappable()?;
    let before = chain.clone();
    let done = lent(context, offset, len, &mut |src| f(chain, src));
    if done.is_none() {
        *chain = before;
    }
    done
}

/// Put the stored bytes of `tensor` from `start` on into `dst`, through `chain`: copied
/// where the source lends them, else read (in as many pieces as the source returns), each
/// piece passed through the chain as soon as it is in.
fn fill(
    context: &Context<'_>,
    tensor: &TensorInfo,
    start: u64,
    dst: &mut [u8],
    chain: &mut Chain<'_>,
) -> Result<()> {
    let source = context.source;
    let offset = tensor.offset + start;
    let len = dst.len();
    if let Some(done) = through_lent(context, chain, offset, len, &mut |c, src| c.copy(src, dst)) {
        return done.map_err(|e| e.in_tensor(&tensor.name));
    }
    // Pieces go through the chain in whole units of its stages (a cipher's chunks): a
    // short read's tail waits, in place, for the rest of its unit.
    let unit = chain.unit();
    let (mut done, mut fed) = (0, 0);
    while done < dst.len() {
        let n = read_some(source, offset + done as u64, &mut dst[done..])
            .map_err(|e| e.in_tensor(&tensor.name))?;
        done += n;
        let upto = if done == dst.len() {
            done
        } else {
            done / unit * unit
        };
        if upto > fed {
            let _cpu = context.cpu.acquire();
            chain.feed(&mut dst[fed..upto])?;
            fed = upto;
        }
    }
    Ok(())
}

/// Verify `len` stored bytes of `tensor` from `start` on without keeping them: in place
/// where the source lends them, else read into the thread's scratch buffer `step` bytes at
/// a time.
fn inspect(
    worker: &mut Worker<'_>,
    tensor: &TensorInfo,
    start: u64,
    len: usize,
    step: usize,
    chain: &mut Chain<'_>,
) -> Result<()> {
    let context = worker.context;
    let source = context.source;
    let offset = tensor.offset + start;
    if let Some(done) = through_lent(context, chain, offset, len, &mut |c, src| c.inspect(src)) {
        return done.map_err(|e| e.in_tensor(&tensor.name));
    }
    let unit = chain.unit();
    let step = whole_units(step, unit);
    let scratch = worker.scratch(len.min(step).max(1));
    let mut done = 0;
    while done < len {
        let want = (len - done).min(scratch.len());
        let n = if unit == 1 {
            read_some(source, offset + done as u64, &mut scratch[..want])
        } else {
            // Whole units for the stages: the piece in full.
            read_exact(source, offset + done as u64, &mut scratch[..want]).map(|()| want)
        }
        .map_err(|e| e.in_tensor(&tensor.name))?;
        let _cpu = context.cpu.acquire();
        chain.feed(&mut scratch[..n])?;
        done += n;
    }
    Ok(())
}

/// Read the `len` bytes at `offset` holding every member of a batch and spread them into
/// the members' destinations (host memory, or one device's sink through one staging buffer),
/// verifying each. Where reading the whole range fails, each member is read on its own so
/// that the error names the tensor it hit.
fn run_batch(
    worker: &mut Worker<'_>,
    offset: u64,
    len: usize,
    mut members: Vec<(&TensorInfo, Out<'_>)>,
) -> Result<()> {
    let context = worker.context;
    let source = context.source;
    let at = |tensor: &TensorInfo| (tensor.offset - offset) as usize;
    let staged = members.iter().find_map(|(_, out)| match out {
        Out::Staged { sink, .. } => Some(*sink),
        _ => None,
    });
    if let Some(sink) = staged {
        // One staging buffer for the whole range, one copy per member.
        let name = &members[0].0.name;
        let mut writer = context.sinks[sink]
            .writer()
            .map_err(|e| e.in_tensor(name))?;
        let staging = writer
            .buffer(Place::Address(0), len)
            .map_err(|e| e.in_tensor(name))?;
        let mut spread = |bytes: &[u8]| -> Result<()> {
            for (tensor, out) in &members {
                let r = at(tensor)..at(tensor) + out.len();
                let mut chain = context.whole(tensor);
                chain.copy(&bytes[r.clone()], &mut staging[r])?;
                chain.finish()?;
            }
            Ok(())
        };
        match lent(context, offset, len, &mut spread) {
            Some(done) => done?,
            None if read_exact(source, offset, staging).is_ok() => {
                let _cpu = context.cpu.acquire();
                for (tensor, out) in &members {
                    let mut chain = context.whole(tensor);
                    chain.feed(&mut staging[at(tensor)..at(tensor) + out.len()])?;
                    chain.finish()?;
                }
            }
            None => {
                for (tensor, out) in &members {
                    let mut chain = context.whole(tensor);
                    let dst = &mut staging[at(tensor)..at(tensor) + out.len()];
                    fill(context, tensor, 0, dst, &mut chain)?;
                    chain.finish()?;
                }
            }
        }
        let copies: Vec<(u64, usize, usize)> = members
            .iter()
            .map(|(tensor, out)| (out.address(0), at(tensor), out.len()))
            .collect();
        return writer
            .deliver(&copies)
            .map_err(|(i, e)| e.in_tensor(&members[i].0.name));
    }
    let mut spread = |bytes: &[u8]| -> Result<()> {
        for (tensor, out) in members.iter_mut() {
            let src = &bytes[at(tensor)..at(tensor) + out.len()];
            let mut chain = context.whole(tensor);
            match out {
                Out::Host(dst) => chain.copy(src, dst)?,
                _ => chain.inspect(src)?,
            }
            chain.finish()?;
        }
        Ok(())
    };
    if let Some(done) = lent(context, offset, len, &mut spread) {
        return done;
    }
    let scratch = worker.scratch(len);
    if read_exact(source, offset, scratch).is_ok() {
        let _cpu = context.cpu.acquire();
        return spread(scratch);
    }
    for (tensor, out) in members.iter_mut() {
        let mut chain = context.whole(tensor);
        match out {
            Out::Host(dst) => fill(context, tensor, 0, dst, &mut chain)?,
            _ => inspect(worker, tensor, 0, out.len(), out.len(), &mut chain)?,
        }
        chain.finish()?;
    }
    Ok(())
}
