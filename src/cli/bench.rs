//! `plaid bench`: plaid's load paths side by side with the machine's limits and a naive
//! loader, on the same data in one run, as a table of medians.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plaid::{DType, Deserializer, Destination, ReadOptions, Serializer, TensorInfo, WriteOptions};

use crate::{fill_random, gbps, human, synthetic_model};

/// One row of the table: a name, the bytes it moves and its round times.
struct Row {
    name: String,
    bytes: u64,
    times: Vec<Duration>,
}

impl Row {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
}

/// A model written to a file, with pre-faulted destination buffers of the same sizes.
struct Prepared {
    path: PathBuf,
    sizes: Vec<usize>,
    total: u64,
}

fn write_model(
    path: &Path,
    tensors: &[(String, Vec<u64>)],
) -> plaid::Result<(Prepared, Vec<Vec<u8>>)> {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, shape))| {
            let mut d = vec![0u8; DType::BF16.nbytes(shape).unwrap_or(0) as usize];
            fill_random(&mut d, i as u64 + 1);
            d
        })
        .collect();
    let mut writer = Serializer::create(path, WriteOptions::default().sync(false))?;
    for ((name, shape), bytes) in tensors.iter().zip(&data) {
        writer.add_tensor(name, DType::BF16, shape, bytes)?;
    }
    writer.finish()?;
    let sizes: Vec<usize> = data.iter().map(Vec::len).collect();
    let total = sizes.iter().map(|&s| s as u64).sum();
    Ok((
        Prepared {
            path: path.to_path_buf(),
            sizes,
            total,
        },
        data,
    ))
}

fn load(reader: &Deserializer, buffers: &mut [Vec<u8>]) -> plaid::Result<()> {
    let mut slots: Vec<Option<&mut [u8]>> =
        buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
    reader.load(&mut |t: &TensorInfo| {
        Ok(slots[t.index]
            .take()
            .map_or(Destination::Skip, Destination::Host))
    })?;
    Ok(())
}

fn time(rounds: usize, mut f: impl FnMut() -> plaid::Result<()>) -> plaid::Result<Vec<Duration>> {
    f()?; // warm-up: page cache, code, thread stacks
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            f()?;
            Ok(started.elapsed())
        })
        .collect()
}

/// Evict a (synced) file's pages from the page cache.
fn drop_from_cache(path: &Path) -> plaid::Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(path).map_err(io)?;
    // SAFETY: a valid descriptor; advice only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

fn io(e: std::io::Error) -> plaid::Error {
    plaid::Error::InvalidArgument(format!("benchmark I/O: {e}"))
}

pub(crate) fn bench(
    size_mib: u64,
    dir: Option<PathBuf>,
    rounds: usize,
    small: usize,
) -> plaid::Result<()> {
    let rounds = rounds.max(1);
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let id = std::process::id();
    let big_path = dir.join(format!("plaid-bench-{id}-model.plaid"));
    let small_path = dir.join(format!("plaid-bench-{id}-small.plaid"));
    let one_path = dir.join(format!("plaid-bench-{id}-one.plaid"));
    let result = (|| {
        println!("plaid bench: writing the test files to {}", dir.display());
        let (model, source) = write_model(&big_path, &synthetic_model(size_mib << 20))?;
        // 10,000+ small tensors of 8 KiB, and the same bytes as one tensor.
        let small_tensors: Vec<(String, Vec<u64>)> = (0..small)
            .map(|i| (format!("small.{i}"), vec![4096]))
            .collect();
        let (small_model, _) = write_model(&small_path, &small_tensors)?;
        let (one_model, _) = write_model(&one_path, &[("one".into(), vec![4096 * small as u64])])?;

        let mut buffers: Vec<Vec<u8>> = model.sizes.iter().map(|&n| vec![0xA5u8; n]).collect();
        let mut rows: Vec<Row> = Vec::new();
        let mut row =
            |name: String, bytes: u64, times: Vec<Duration>| rows.push(Row { name, bytes, times });

        // The limits.
        let times = time(rounds, || {
            for (dst, src) in buffers.iter_mut().zip(&source) {
                dst.copy_from_slice(src);
            }
            Ok(())
        })?;
        row(
            "limit: memcpy into pre-faulted buffers, 1 thread".into(),
            model.total,
            times,
        );
        let times = time(rounds, || {
            let pairs: Vec<(&mut Vec<u8>, &Vec<u8>)> = buffers.iter_mut().zip(&source).collect();
            let per = pairs.len().div_ceil(cores);
            std::thread::scope(|s| {
                let mut pairs = pairs;
                while !pairs.is_empty() {
                    let rest = pairs.split_off(per.min(pairs.len()));
                    let mine = std::mem::replace(&mut pairs, rest);
                    s.spawn(move || mine.into_iter().for_each(|(d, s)| d.copy_from_slice(s)));
                }
            });
            Ok(())
        })?;
        row(
            format!("limit: memcpy, {cores} threads"),
            model.total,
            times,
        );
        let mut staging = vec![0u8; 16 << 20];
        let times = time(rounds, || {
            let mut file = File::open(&model.path).map_err(io)?;
            while file.read(&mut staging).map_err(io)? > 0 {}
            Ok(())
        })?;
        let file_len = std::fs::metadata(&model.path).map_err(io)?.len();
        row(
            "limit: read() of the file, 1 thread, 16 MiB buffer".into(),
            file_len,
            times,
        );

        // A naive loader: one pread per tensor straight into its destination.
        let reader = Deserializer::open(&model.path, ReadOptions::default())?;
        let offsets: Vec<u64> = reader.tensors().iter().map(|t| t.offset).collect();
        let times = time(rounds, || {
            let file = File::open(&model.path).map_err(io)?;
            for (buffer, &offset) in buffers.iter_mut().zip(&offsets) {
                file.read_exact_at(buffer, offset).map_err(io)?;
            }
            Ok(())
        })?;
        row(
            "naive: pread per tensor into its destination".into(),
            model.total,
            times,
        );

        // plaid.
        for threads in [1, cores] {
            for verify in [true, false] {
                let options = ReadOptions::default().threads(threads)?.verify(verify);
                let reader = Deserializer::open(&model.path, options)?;
                let times = time(rounds, || load(&reader, &mut buffers))?;
                let check = if verify { "verified" } else { "unverified" };
                row(
                    format!("plaid: host buffers, {threads} thread(s), {check}"),
                    model.total,
                    times,
                );
            }
        }
        // Cold file: dropped from the page cache before every round, buffered against
        // O_DIRECT. (No warm-up: it would warm the cache.)
        File::open(&model.path)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        for direct in [false, true] {
            let options = ReadOptions::default().threads(cores)?.direct_io(direct);
            let reader = Deserializer::open(&model.path, options)?;
            let mut times = Vec::new();
            for _ in 0..rounds {
                drop_from_cache(&model.path)?;
                let started = Instant::now();
                load(&reader, &mut buffers)?;
                times.push(started.elapsed());
            }
            let how = if direct { "O_DIRECT" } else { "buffered" };
            row(
                format!("plaid: cold file, {how}, {cores} thread(s), verified"),
                model.total,
                times,
            );
        }
        if buffers.iter().zip(&source).any(|(b, s)| b != s) {
            return Err(plaid::Error::InvalidArgument(
                "a loaded tensor differs from its source".into(),
            ));
        }

        // Many small tensors against the same bytes as one tensor.
        for (label, prepared) in [
            (
                format!("plaid: {small} tensors of 8 KiB, verified"),
                &small_model,
            ),
            (
                "plaid: the same bytes as 1 tensor, verified".to_string(),
                &one_model,
            ),
        ] {
            let reader = Deserializer::open(&prepared.path, ReadOptions::default())?;
            let mut buffers: Vec<Vec<u8>> =
                prepared.sizes.iter().map(|&n| vec![0xA5u8; n]).collect();
            let times = time(rounds, || load(&reader, &mut buffers))?;
            row(label, prepared.total, times);
        }

        println!();
        println!(
            "{} of bf16 weights in {} tensors; {} rounds after a warm-up, medians; file in the page cache; {} cores",
            human(model.total),
            model.sizes.len(),
            rounds,
            cores
        );
        println!();
        println!(
            "{:<56}  {:>10}  {:>9}  {:>8}",
            "loader", "bytes", "seconds", "GB/s"
        );
        println!("{}", "-".repeat(90));
        for r in &rows {
            let t = r.median();
            println!(
                "{:<56}  {:>10}  {:>9.4}  {:>8.2}",
                r.name,
                human(r.bytes),
                t.as_secs_f64(),
                gbps(r.bytes, t)
            );
        }
        let n = rows.len();
        let ratio =
            rows[n - 2].median().as_secs_f64() / rows[n - 1].median().as_secs_f64().max(1e-9);
        println!();
        println!("{small} small tensors take {ratio:.2}x the time of the same bytes as one tensor");
        let read_row = rows
            .iter()
            .find(|r| r.name.starts_with("limit: read()"))
            .map(|r| gbps(r.bytes, r.median()));
        let memcpy_row = gbps(rows[0].bytes, rows[0].median());
        let plaid_1 = rows
            .iter()
            .find(|r| r.name == "plaid: host buffers, 1 thread(s), verified")
            .map(|r| gbps(r.bytes, r.median()));
        if let (Some(read), Some(p1)) = (read_row, plaid_1) {
            println!(
                "plaid verified, 1 thread: {:.2}x read(), {:.2}x memcpy (1 thread)",
                p1 / read,
                p1 / memcpy_row
            );
        }
        Ok(())
    })();
    for p in [&big_path, &small_path, &one_path] {
        let _ = std::fs::remove_file(p);
    }
    result
}
