//! `plaid bench`: plaid's load paths side by side with the machine's limits and a naive
//! loader, on the same data in one run, as a table of medians.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plaid::{
    DType, Deserializer, Destination, HostArena, ReadOptions, Serializer, TensorInfo, WriteOptions,
};

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

/// Write the synthetic model of `tensors` (bf16, random) at `path`.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(crate) fn write_synthetic(path: &Path, tensors: &[(String, Vec<u64>)]) -> plaid::Result<()> {
    write_model(path, tensors).map(drop)
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

pub(crate) fn load(reader: &Deserializer, buffers: &mut [Vec<u8>]) -> plaid::Result<()> {
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

/// Resident memory now and at its peak since the last reset, in bytes (Linux).
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib << 10)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Reset the peak resident memory to the current one (Linux 4.0+).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Write `tensors` (bf16) with the bytes of `data` as a safetensors file: the 8-byte
/// header length, the JSON header padded with spaces to 8 bytes, the data back to back.
fn write_safetensors(path: &Path, tensors: &[TensorInfo], data: &[Vec<u8>]) -> plaid::Result<()> {
    let mut header = String::from("{");
    let mut at = 0usize;
    for (i, (t, bytes)) in tensors.iter().zip(data).enumerate() {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        header.push_str(&format!(
            "{}\"{}\":{{\"dtype\":\"BF16\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            if i == 0 { "" } else { "," },
            t.name,
            shape.join(","),
            at,
            at + bytes.len()
        ));
        at += bytes.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = std::io::BufWriter::new(File::create(path).map_err(io)?);
    let mut write = |b: &[u8]| std::io::Write::write_all(&mut out, b).map_err(io);
    write(&(header.len() as u64).to_le_bytes())?;
    write(header.as_bytes())?;
    for bytes in data {
        write(bytes)?;
    }
    std::io::Write::flush(&mut out).map_err(io)
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

/// A verification from a source without a mapping: requests in flight, the request size,
/// the peak RSS it added, its scratch peak and its seconds.
type Streamed = (u32, u64, u64, usize, f64);
/// A load's peak RSS above its destinations: through the mapping or not, the peak, and the
/// bytes of requests in flight.
type Peak = (bool, u64, u64);

/// What every scenario shares: the model written once, its bytes, pre-faulted destination
/// buffers of its tensors' sizes, and the rows measured so far.
struct Bench {
    rounds: usize,
    cores: usize,
    model: Prepared,
    source: Vec<Vec<u8>>,
    buffers: Vec<Vec<u8>>,
    rows: Rows,
}

/// The rows of the table, in the order measured.
struct Rows(Vec<Row>);

impl Rows {
    fn add(&mut self, name: String, bytes: u64, times: Vec<Duration>) {
        self.0.push(Row { name, bytes, times });
    }
}

impl Bench {
    /// The limits.
    fn limits(&mut self) -> plaid::Result<()> {
        let cores = self.cores;
        let times = time(self.rounds, || {
            for (dst, src) in self.buffers.iter_mut().zip(&self.source) {
                dst.copy_from_slice(src);
            }
            Ok(())
        })?;
        self.rows.add(
            "limit: memcpy into pre-faulted buffers, 1 thread".into(),
            self.model.total,
            times,
        );
        let times = time(self.rounds, || {
            let pairs: Vec<(&mut Vec<u8>, &Vec<u8>)> =
                self.buffers.iter_mut().zip(&self.source).collect();
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
        self.rows.add(
            format!("limit: memcpy, {cores} threads"),
            self.model.total,
            times,
        );
        let mut staging = vec![0u8; 16 << 20];
        let times = time(self.rounds, || {
            let mut file = File::open(&self.model.path).map_err(io)?;
            while file.read(&mut staging).map_err(io)? > 0 {}
            Ok(())
        })?;
        let file_len = std::fs::metadata(&self.model.path).map_err(io)?.len();
        self.rows.add(
            "limit: read() of the file, 1 thread, 16 MiB buffer".into(),
            file_len,
            times,
        );
        Ok(())
    }

    /// The copy-and-CRC kernel alone, on 64 MiB buffers (pre-faulted, so that no row pays
    /// page faults): against memcpy and against copying, then checksumming the copy.
    fn kernels(&mut self) -> plaid::Result<()> {
        use plaid::format::crc_copy;
        let len = 64usize << 20;
        let src: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
            .collect();
        let mut dst = vec![0xA5u8; len];
        let times = time(self.rounds * 4, || {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            Ok(())
        })?;
        self.rows
            .add("kernel: memcpy, 64 MiB".into(), len as u64, times);
        let times = time(self.rounds * 4, || {
            dst.copy_from_slice(&src);
            std::hint::black_box(plaid::format::checksum::crc32c(&dst));
            Ok(())
        })?;
        self.rows.add(
            "kernel: memcpy, then crc-fast over the copy, 64 MiB".into(),
            len as u64,
            times,
        );
        for kernel in crc_copy::kernels() {
            let times = time(self.rounds * 4, || {
                std::hint::black_box((kernel.run)(&mut dst, &src, 0));
                Ok(())
            })?;
            self.rows.add(
                format!("kernel: copy_crc32c, {}, 64 MiB", kernel.name),
                len as u64,
                times,
            );
        }
        Ok(())
    }

    /// A naive loader: one pread per tensor straight into its destination.
    fn naive(&mut self) -> plaid::Result<()> {
        let reader = Deserializer::open(&self.model.path, ReadOptions::default())?;
        let offsets: Vec<u64> = reader.tensors().iter().map(|t| t.offset).collect();
        let times = time(self.rounds, || {
            let file = File::open(&self.model.path).map_err(io)?;
            for (buffer, &offset) in self.buffers.iter_mut().zip(&offsets) {
                file.read_exact_at(buffer, offset).map_err(io)?;
            }
            Ok(())
        })?;
        self.rows.add(
            "naive: pread per tensor into its destination".into(),
            self.model.total,
            times,
        );
        Ok(())
    }

    /// plaid: copying out of the guarded mapping (the default) and with pread. Verified
    /// copies out of the mapping also with the portable kernel (copy, then checksum the
    /// copy: how plaid verified before the fused kernel), for before and after.
    fn host_loads(&mut self) -> plaid::Result<()> {
        let fused = plaid::format::crc_copy::kernel_name();
        let portable = plaid::format::crc_copy::PORTABLE;
        let mut cases = vec![(true, true, fused)];
        if portable != fused {
            cases.push((true, true, portable));
        }
        cases.extend([(true, false, fused), (false, true, fused)]);
        for threads in [1, self.cores] {
            for &(mmap, verify, kernel) in &cases {
                plaid::format::crc_copy::use_kernel(kernel);
                let options = ReadOptions::default()
                    .threads(threads)?
                    .verify(verify)
                    .mmap(mmap);
                let reader = Deserializer::open(&self.model.path, options)?;
                let times = time(self.rounds, || load(&reader, &mut self.buffers))?;
                let check = match (verify, mmap) {
                    (false, _) => "unverified",
                    (true, true) if kernel != fused => "verified, copy then crc-fast",
                    (true, _) => "verified",
                };
                let how = if mmap { "mmap copy" } else { "pread" };
                self.rows.add(
                    format!("plaid: host buffers, {how}, {threads} thread(s), {check}"),
                    self.model.total,
                    times,
                );
            }
        }
        plaid::format::crc_copy::use_kernel(fused);
        Ok(())
    }

    /// A first load on a freshly opened handle against the second load on the same handle
    /// (each round opens a new one; the loads alone are timed).
    fn first_loads(&mut self) -> plaid::Result<()> {
        let cores = self.cores;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for _ in 0..self.rounds {
            let reader = Deserializer::open(&self.model.path, ReadOptions::default())?;
            for times in [&mut first, &mut second] {
                let started = Instant::now();
                load(&reader, &mut self.buffers)?;
                times.push(started.elapsed());
            }
        }
        self.rows.add(
            format!("plaid: first load on a fresh handle, {cores} thread(s), verified"),
            self.model.total,
            first,
        );
        self.rows.add(
            format!("plaid: second load on that handle, {cores} thread(s), verified"),
            self.model.total,
            second,
        );
        Ok(())
    }

    /// Peak memory of a load beyond the destinations (which are resident already).
    fn peak_memory(&mut self) -> plaid::Result<Vec<Peak>> {
        let mut peaks = Vec::new();
        for mmap in [true, false] {
            let options = ReadOptions::default().threads(self.cores)?.mmap(mmap);
            let request = match options.get_request_bytes() {
                0 => plaid::options::DEFAULT_REQUEST_BYTES,
                n => n,
            };
            let staging = request * self.cores as u64;
            let reader = Deserializer::open(&self.model.path, options)?;
            if let Some((before, _)) = rss().filter(|_| reset_peak_rss()) {
                load(&reader, &mut self.buffers)?;
                if let Some((_, peak)) = rss() {
                    peaks.push((mmap, peak.saturating_sub(before), staging));
                }
            }
        }
        Ok(peaks)
    }

    /// Memory read through from a source that cannot be mapped (the file through a
    /// decorator, which forwards only reads): verification keeps nothing, so what it
    /// allocates is its scratch, bounded by requests in flight x request size.
    fn unmappable(&mut self) -> plaid::Result<Vec<Streamed>> {
        let mut streamed = Vec::new();
        for (in_flight, request) in [
            (2u32, 1u64 << 20),
            (8, 4 << 20),
            (32, 4 << 20),
            (8, 16 << 20),
        ] {
            let source = plaid::source::CountingSource::new(plaid::source::FileSource::open(
                &self.model.path,
            )?);
            let options = ReadOptions::default()
                .threads(self.cores)?
                .requests_in_flight(in_flight)?
                .request_bytes(request)?;
            let reader = Deserializer::from_source(Box::new(source), options)?;
            if let Some((before, _)) = rss().filter(|_| reset_peak_rss()) {
                let started = Instant::now();
                let stats = reader.verify()?;
                let seconds = started.elapsed().as_secs_f64();
                if let Some((_, peak)) = rss() {
                    streamed.push((
                        in_flight,
                        request,
                        peak.saturating_sub(before),
                        stats.scratch_peak,
                        seconds,
                    ));
                }
            }
        }
        Ok(streamed)
    }

    /// Zero-copy: open and map, then every view (no verification: what opening costs);
    /// and with every view verified up front.
    fn zero_copy(&mut self) -> plaid::Result<()> {
        let cores = self.cores;
        let times = time(self.rounds, || {
            let reader =
                Deserializer::open(&self.model.path, ReadOptions::default().verify(false))?;
            reader.map()?;
            for i in 0..reader.tensors().len() {
                std::hint::black_box(reader.view(i)?.as_ptr());
            }
            Ok(())
        })?;
        self.rows.add(
            "plaid: zero-copy open + map + every view, unverified".into(),
            self.model.total,
            times,
        );
        let times = time(self.rounds, || {
            let options = ReadOptions::default()
                .threads(cores)?
                .verify_views_up_front(true);
            let reader = Deserializer::open(&self.model.path, options)?;
            reader.map()
        })?;
        self.rows.add(
            format!("plaid: zero-copy open + map, verified up front, {cores} thread(s)"),
            self.model.total,
            times,
        );
        Ok(())
    }

    /// Fresh allocations: what a load_file-style call sees, page faults included.
    fn fresh_allocations(&mut self) -> plaid::Result<()> {
        let cores = self.cores;
        let sizes: Vec<Option<u64>> = self.model.sizes.iter().map(|&n| Some(n as u64)).collect();
        for huge in [false, true] {
            let pages = if huge { "huge pages" } else { "4 KiB pages" };
            let times = time(self.rounds, || {
                let mut arena = HostArena::allocate(&sizes, huge)?;
                for (i, src) in self.source.iter().enumerate() {
                    if let Some(dst) = arena.tensor_mut(i) {
                        dst.copy_from_slice(src);
                    }
                }
                Ok(())
            })?;
            self.rows.add(
                format!("limit: memcpy into one fresh allocation, {pages}, 1 thread"),
                self.model.total,
                times,
            );
            let reader =
                Deserializer::open(&self.model.path, ReadOptions::default().huge_pages(huge))?;
            let times = time(self.rounds, || {
                reader.load_to_host(&mut |_| true, None).map(drop)
            })?;
            self.rows.add(
                format!("plaid: load_to_host (fresh), {pages}, {cores} thread(s), verified"),
                self.model.total,
                times,
            );
        }
        Ok(())
    }

    /// Cold file: dropped from the page cache before every round, buffered against
    /// O_DIRECT. (No warm-up: it would warm the cache.)
    fn cold_file(&mut self) -> plaid::Result<()> {
        let cores = self.cores;
        File::open(&self.model.path)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        for direct in [false, true] {
            let options = ReadOptions::default().threads(cores)?.direct_io(direct);
            let reader = Deserializer::open(&self.model.path, options)?;
            let mut times = Vec::new();
            for _ in 0..self.rounds {
                drop_from_cache(&self.model.path)?;
                let started = Instant::now();
                load(&reader, &mut self.buffers)?;
                times.push(started.elapsed());
            }
            let how = if direct { "O_DIRECT" } else { "buffered" };
            self.rows.add(
                format!("plaid: cold file, {how}, {cores} thread(s), verified"),
                self.model.total,
                times,
            );
        }
        self.loaded_intact("")
    }

    /// An error unless every destination buffer holds its tensor's source bytes (loaded
    /// `from` a format: "" for plaid's own).
    fn loaded_intact(&self, from: &str) -> plaid::Result<()> {
        if self.buffers.iter().zip(&self.source).any(|(b, s)| b != s) {
            let from = if from.is_empty() {
                String::new()
            } else {
                format!(" from {from}")
            };
            return Err(plaid::Error::InvalidArgument(format!(
                "a tensor loaded{from} differs from its source"
            )));
        }
        Ok(())
    }

    /// The same weights as a safetensors file, through the same pipeline. safetensors
    /// carries no checksums, so its like-for-like plaid row is the unverified one.
    fn safetensors(&mut self, st_path: &Path) -> plaid::Result<()> {
        let reader = Deserializer::open(&self.model.path, ReadOptions::default())?;
        write_safetensors(st_path, reader.tensors(), &self.source)?;
        for threads in [1, self.cores] {
            let options = ReadOptions::default().threads(threads)?;
            let st = Deserializer::open(st_path, options)?;
            let times = time(self.rounds, || load(&st, &mut self.buffers))?;
            self.rows.add(
                format!("plaid: safetensors file, host buffers, {threads} thread(s)"),
                self.model.total,
                times,
            );
        }
        self.loaded_intact("from safetensors")
    }

    /// The same weights as a tensorizer file (written by plaid's tensorizer writer,
    /// which matches tensorizer's byte for byte), through the same pipeline: unverified,
    /// and verified against its own per-tensor CRC32 and SHA-256.
    fn tensorizer(&mut self, tz_path: &Path) -> plaid::Result<()> {
        let reader = Deserializer::open(&self.model.path, ReadOptions::default())?;
        plaid::convert::to_tensorizer(&reader, tz_path, &mut |_, _| {})?;
        for (verify, sha256, how) in [
            (false, false, "unverified"),
            (true, false, "verified, CRC32"),
            (true, true, "verified, CRC32+SHA-256"),
        ] {
            for threads in [1, self.cores] {
                let options = ReadOptions::default()
                    .threads(threads)?
                    .verify(verify)
                    .verify_sha256(sha256);
                let tz = Deserializer::open(tz_path, options)?;
                let times = time(self.rounds, || load(&tz, &mut self.buffers))?;
                self.rows.add(
                    format!("plaid: tensorizer file, host buffers, {threads} thread(s), {how}"),
                    self.model.total,
                    times,
                );
            }
        }
        self.loaded_intact("from tensorizer")
    }

    /// Device memory, where a CUDA driver is present (a real one, or the stand-in of
    /// tests/cuda with LD_LIBRARY_PATH): the pinned copy ceiling, then plaid loading
    /// into caller-allocated device memory and into memory it allocates.
    fn device(&mut self) -> plaid::Result<usize> {
        let mut cuda_pinned = 0usize;
        match plaid::cuda::device_count() {
            Ok(n) if n > 0 => {
                let times =
                    plaid::cuda::pinned_htod_times(0, self.model.total, 64 << 20, self.rounds + 1)?;
                self.rows.add(
                    "limit: pinned host-to-device copies, 64 MiB, 1 stream".into(),
                    self.model.total,
                    times[1..].to_vec(),
                );
                for threads in [1, self.cores] {
                    let options = ReadOptions::default().threads(threads)?;
                    let d = Deserializer::open(&self.model.path, options)?;
                    // Caller-allocated: one allocation made once, tensors placed in it.
                    let arena = d.load_to_cuda(0, &mut |_| true, None)?;
                    let times = time(self.rounds, || {
                        d.load(&mut |t: &TensorInfo| {
                            let (address, capacity) = arena.tensor(t.index).expect("placed");
                            Ok(plaid::Destination::Cuda {
                                device: 0,
                                address,
                                capacity,
                            })
                        })
                        .map(drop)
                    })?;
                    self.rows.add(
                        format!("plaid: device memory, {threads} thread(s), verified"),
                        self.model.total,
                        times,
                    );
                    let times = time(self.rounds, || {
                        d.load_to_cuda(0, &mut |_| true, None).map(drop)
                    })?;
                    self.rows.add(
                        format!("plaid: load_to_cuda (allocates), {threads} thread(s), verified"),
                        self.model.total,
                        times,
                    );
                    cuda_pinned = d.pinned_staging_bytes();
                }
            }
            Ok(_) => println!("plaid bench: no CUDA device; device rows skipped"),
            Err(e) => println!("plaid bench: {e}; device rows skipped"),
        }
        Ok(cuda_pinned)
    }

    /// Many small tensors against the same bytes as one tensor.
    fn small_tensors(
        &mut self,
        small: usize,
        small_model: &Prepared,
        one_model: &Prepared,
    ) -> plaid::Result<()> {
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
            let times = time(self.rounds, || load(&reader, &mut buffers))?;
            self.rows.add(label, prepared.total, times);
        }
        Ok(())
    }

    /// Writing: plaid's serializer against a plain write() of the same bytes.
    fn writing(&mut self, out: &Path) -> plaid::Result<()> {
        let cores = self.cores;
        let reader = Deserializer::open(&self.model.path, ReadOptions::default())?;
        let times = time(self.rounds, || {
            let mut file = File::create(out).map_err(io)?;
            for src in &self.source {
                std::io::Write::write_all(&mut file, src).map_err(io)?;
            }
            drop(file);
            std::fs::remove_file(out).map_err(io)
        })?;
        self.rows.add(
            "limit: write() of the same bytes to a new file, 1 thread".into(),
            self.model.total,
            times,
        );
        let names = reader.tensors().to_vec();
        let times = time(self.rounds, || {
            let mut writer = Serializer::create(out, WriteOptions::default().sync(false))?;
            for (t, src) in names.iter().zip(&self.source) {
                writer.add_tensor(&t.name, t.dtype, &t.shape, src)?;
            }
            writer.finish()?;
            std::fs::remove_file(out).map_err(io)
        })?;
        self.rows.add(
            format!("plaid: serialize (CRC-32C on {cores} thread(s)), no fsync"),
            self.model.total,
            times,
        );
        Ok(())
    }
    /// The table of medians, then the ratios that matter under it.
    fn report(&self, small: usize, cuda_pinned: usize, streamed: Vec<Streamed>, peaks: Vec<Peak>) {
        let (rows, model, rounds, cores) = (&self.rows.0, &self.model, self.rounds, self.cores);
        let fused = plaid::format::crc_copy::kernel_name();
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
        for r in rows {
            let t = r.median();
            println!(
                "{:<56}  {:>10}  {:>9.4}  {:>8.2}",
                r.name,
                human(r.bytes),
                t.as_secs_f64(),
                gbps(r.bytes, t)
            );
        }
        let rate = |name: &str| {
            rows.iter()
                .find(|r| r.name == name)
                .map(|r| gbps(r.bytes, r.median()))
                .unwrap_or(f64::NAN)
        };
        let read = rows
            .iter()
            .find(|r| r.name.starts_with("limit: read()"))
            .map_or(f64::NAN, |r| gbps(r.bytes, r.median()));
        let memcpy = rate("limit: memcpy into pre-faulted buffers, 1 thread");
        let many = rate(&format!("plaid: {small} tensors of 8 KiB, verified"));
        let one = rate("plaid: the same bytes as 1 tensor, verified");
        println!();
        println!(
            "{small} small tensors take {:.2}x the time of the same bytes as one tensor",
            one / many
        );
        for threads in [1, cores] {
            for how in ["mmap copy", "pread"] {
                let p = rate(&format!(
                    "plaid: host buffers, {how}, {threads} thread(s), verified"
                ));
                println!(
                    "plaid verified, {how}, {threads} thread(s): {:.2}x read(), {:.2}x memcpy (1 thread)",
                    p / read,
                    p / memcpy
                );
            }
        }
        let kernel_memcpy = rate("kernel: memcpy, 64 MiB");
        let kernel_two_pass = rate("kernel: memcpy, then crc-fast over the copy, 64 MiB");
        let kernel_fused = rate(&format!("kernel: copy_crc32c, {fused}, 64 MiB"));
        println!(
            "copy_crc32c ({fused}) alone, 64 MiB: {:.2}x memcpy, {:.2}x memcpy then crc-fast",
            kernel_fused / kernel_memcpy,
            kernel_fused / kernel_two_pass
        );
        for threads in [1, cores] {
            let verified = rate(&format!(
                "plaid: host buffers, mmap copy, {threads} thread(s), verified"
            ));
            let before = rate(&format!(
                "plaid: host buffers, mmap copy, {threads} thread(s), verified, copy then crc-fast"
            ));
            let unverified = rate(&format!(
                "plaid: host buffers, mmap copy, {threads} thread(s), unverified"
            ));
            println!(
                "plaid verified (fused), mmap copy, {threads} thread(s): {:.2}x unverified, {:.2}x copy then crc-fast, {:.2}x memcpy (1 thread)",
                verified / unverified,
                verified / before,
                verified / memcpy
            );
        }
        for threads in [1, cores] {
            let st = rate(&format!(
                "plaid: safetensors file, host buffers, {threads} thread(s)"
            ));
            let own = rate(&format!(
                "plaid: host buffers, mmap copy, {threads} thread(s), unverified"
            ));
            println!(
                "safetensors file, {threads} thread(s): {:.2}x plaid's own format (unverified, as safetensors has no checksums)",
                st / own
            );
        }
        for threads in [1, cores] {
            for (how, own_how) in [
                ("unverified", "unverified"),
                ("verified, CRC32", "verified"),
                ("verified, CRC32+SHA-256", "verified"),
            ] {
                let tz = rate(&format!(
                    "plaid: tensorizer file, host buffers, {threads} thread(s), {how}"
                ));
                let own = rate(&format!(
                    "plaid: host buffers, mmap copy, {threads} thread(s), {own_how}"
                ));
                println!(
                    "tensorizer file, {threads} thread(s), {how}: {:.2}x plaid's own format, {own_how}",
                    tz / own
                );
            }
        }
        if cuda_pinned > 0 {
            let ceiling = rate("limit: pinned host-to-device copies, 64 MiB, 1 stream");
            for threads in [1, cores] {
                let p = rate(&format!(
                    "plaid: device memory, {threads} thread(s), verified"
                ));
                println!(
                    "device memory, {threads} thread(s): {:.2}x the pinned copy ceiling; pinned staging {}",
                    p / ceiling,
                    human(cuda_pinned as u64)
                );
            }
        }
        for (in_flight, request, peak, scratch, seconds) in streamed {
            println!(
                "verify from a source without a mapping, {in_flight} requests in flight x {}: {:.2} GB/s, peak RSS +{}, scratch {} (bound {})",
                human(request),
                model.total as f64 / seconds / 1e9,
                human(peak),
                human(scratch as u64),
                human(u64::from(in_flight) * request)
            );
        }
        for (mmap, peak, staging) in peaks {
            let how = if mmap { "mmap copy" } else { "pread" };
            println!(
                "peak RSS above the destinations during a {cores}-thread load ({how}): {} (chunks in flight: {})",
                human(peak),
                human(staging)
            );
        }
    }
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
    let st_path = dir.join(format!("plaid-bench-{id}-model.safetensors"));
    let tz_path = dir.join(format!("plaid-bench-{id}-model.tensors"));
    let write_path = dir.join(format!("plaid-bench-{id}-write.plaid"));
    let result = (|| {
        println!("plaid bench: writing the test files to {}", dir.display());
        let (model, source) = write_model(&big_path, &synthetic_model(size_mib << 20))?;
        // 10,000+ small tensors of 8 KiB, and the same bytes as one tensor.
        let small_tensors: Vec<(String, Vec<u64>)> = (0..small)
            .map(|i| (format!("small.{i}"), vec![4096]))
            .collect();
        let (small_model, _) = write_model(&small_path, &small_tensors)?;
        let (one_model, _) = write_model(&one_path, &[("one".into(), vec![4096 * small as u64])])?;
        let buffers = model.sizes.iter().map(|&n| vec![0xA5u8; n]).collect();
        let mut bench = Bench {
            rounds,
            cores,
            model,
            source,
            buffers,
            rows: Rows(Vec::new()),
        };
        bench.limits()?;
        bench.kernels()?;
        bench.naive()?;
        bench.host_loads()?;
        bench.first_loads()?;
        let peaks = bench.peak_memory()?;
        let streamed = bench.unmappable()?;
        bench.zero_copy()?;
        bench.fresh_allocations()?;
        bench.cold_file()?;
        bench.safetensors(&st_path)?;
        bench.tensorizer(&tz_path)?;
        let cuda_pinned = bench.device()?;
        bench.small_tensors(small, &small_model, &one_model)?;
        bench.writing(&write_path)?;
        bench.report(small, cuda_pinned, streamed, peaks);
        Ok(())
    })();
    for p in [
        &big_path,
        &small_path,
        &one_path,
        &write_path,
        &st_path,
        &tz_path,
    ] {
        let _ = std::fs::remove_file(p);
    }
    result
}
