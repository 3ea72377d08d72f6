//! `plaid bench-slices`: tensor-parallel ranks, each loading its slice of every 2-D tensor
//! of one unsharded checkpoint, verified, through a source that counts the bytes read;
//! the slices are reassembled and compared with the checkpoint byte for byte, and each
//! rank's reads are checked against its share plus two checksum blocks per tensor.

use std::path::PathBuf;
use std::time::Instant;

use plaid::source::{CountingSource, FileSource};
use plaid::{Deserializer, Destination, ReadOptions, TensorInfo, View};

/// One rank's part of `n` indices: `n * rank / ranks .. n * (rank + 1) / ranks` (uneven
/// splits give the first ranks one fewer).
fn part(n: u64, rank: u64, ranks: u64) -> (u64, u64) {
    (n * rank / ranks, n * (rank + 1) / ranks)
}

pub(crate) fn bench_slices(size_mib: u64, ranks: u64, dir: Option<PathBuf>) -> plaid::Result<()> {
    let ranks = ranks.max(1);
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("plaid-bench-slices-{}.plaid", std::process::id()));
    let result = (|| {
        let tensors = super::synthetic_model(size_mib << 20);
        super::bench::write_synthetic(&path, &tensors)?;
        let whole = Deserializer::open(&path, ReadOptions::default())?;
        let file: Vec<u8> = std::fs::read(&path).map_err(|e| plaid::Error::Io {
            context: format!("reading {}", path.display()),
            source: e,
        })?;
        let two_d: Vec<&TensorInfo> = whole
            .tensors()
            .iter()
            .filter(|t| t.shape.len() == 2)
            .collect();
        let data: u64 = two_d.iter().map(|t| t.nbytes).sum();
        let block = plaid::format::plaid::DEFAULT_BLOCK_SIZE;
        println!(
            "plaid bench-slices: {} 2-D tensors, {:.2} GiB of them, {ranks} ranks, checksum blocks of {} MiB, verified",
            two_d.len(),
            data as f64 / (1u64 << 30) as f64,
            block >> 20
        );
        println!();
        println!("| dim | rank | bytes read | share + 2 blocks/tensor | read / share | time (s) | GB/s of slice |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        let mut failures = Vec::new();
        for dim in [0usize, 1] {
            // Each tensor reassembled from the ranks' slices.
            let mut assembled: Vec<Vec<u8>> =
                two_d.iter().map(|t| vec![0u8; t.nbytes as usize]).collect();
            for rank in 0..ranks {
                let source = CountingSource::new(FileSource::open(&path)?);
                let counts = source.counts();
                let d = Deserializer::from_source(Box::new(source), ReadOptions::default())?;
                let before = counts.bytes();
                let mut buffers: Vec<Vec<u8>> = two_d
                    .iter()
                    .map(|t| {
                        let (a, b) = part(t.shape[dim], rank, ranks);
                        vec![0u8; (t.nbytes / t.shape[dim] * (b - a)) as usize]
                    })
                    .collect();
                let started = Instant::now();
                {
                    let mut slots: Vec<Option<&mut [u8]>> =
                        buffers.iter_mut().map(|b| Some(&mut b[..])).collect();
                    let mut k = 0;
                    d.load(&mut |t: &TensorInfo| {
                        if t.shape.len() != 2 {
                            return Ok(Destination::Skip);
                        }
                        let (a, b) = part(t.shape[dim], rank, ranks);
                        let buffer = slots[k].take().expect("one destination per tensor");
                        k += 1;
                        let view = View::whole().slice(dim as u32, a, b);
                        Ok(Destination::View(view, Box::new(Destination::Host(buffer))))
                    })?;
                }
                let seconds = started.elapsed().as_secs_f64();
                let read = counts.bytes() - before;
                let share: u64 = buffers.iter().map(|b| b.len() as u64).sum();
                let bound = share + 2 * block * two_d.len() as u64;
                println!(
                    "| {dim} | {rank} | {read} | {bound} | {:.3} | {seconds:.3} | {:.2} |",
                    read as f64 / share.max(1) as f64,
                    share as f64 / seconds / 1e9
                );
                if dim == 0 && read > bound {
                    failures.push(format!("dim 0 rank {rank} read {read} bytes, over {bound}"));
                }
                for ((t, slice), out) in two_d.iter().zip(&buffers).zip(&mut assembled) {
                    let (a, b) = part(t.shape[dim], rank, ranks);
                    let row = (t.nbytes / t.shape[0]) as usize;
                    if dim == 0 {
                        out[a as usize * row..b as usize * row].copy_from_slice(slice);
                    } else {
                        let elem = t.dtype.size() as usize;
                        let width = (b - a) as usize * elem;
                        for (r, piece) in slice
                            .chunks(width.max(1))
                            .enumerate()
                            .take(t.shape[0] as usize)
                        {
                            let at = r * row + a as usize * elem;
                            out[at..at + width].copy_from_slice(piece);
                        }
                    }
                }
            }
            let exact = two_d.iter().zip(&assembled).all(|(t, out)| {
                let at = t.offset as usize;
                out[..] == file[at..at + t.nbytes as usize]
            });
            println!(
                "| {dim} | all | reassembled {} |  |  |  |  |",
                if exact { "exactly" } else { "WRONGLY" }
            );
            if !exact {
                failures.push(format!(
                    "dim {dim}: the slices do not reassemble the tensors"
                ));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(plaid::Error::InvalidArgument(failures.join("; ")))
        }
    })();
    let _ = std::fs::remove_file(&path);
    result
}
