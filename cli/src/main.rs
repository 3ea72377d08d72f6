//! `plaid`: inspect, verify and demonstrate plaid files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plaid::{DType, Deserializer, Destination, ReadOptions, Serializer, TensorInfo, WriteOptions};

#[derive(Parser)]
#[command(
    name = "plaid",
    version,
    about = "Stream model weights into memory, verified."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a table of a file's tensors and metadata.
    Inspect {
        /// The file.
        file: PathBuf,
        /// Only the tensors whose names match a glob pattern (`*` and `?` match dots
        /// too; repeat for several): `--tensors 'model.layers.*.mlp.*'`.
        #[arg(long = "tensors", value_name = "PATTERN")]
        tensors: Vec<String>,
    },
    /// Convert a model file (plaid, safetensors or tensorizer, detected from its bytes) to
    /// plaid, safetensors or tensorizer, carrying the metadata over where the output
    /// format holds it; the result is read back, verified and compared.
    Convert {
        /// The file to read.
        input: PathBuf,
        /// The file to write (replaced atomically).
        output: PathBuf,
        /// Output format: plaid, safetensors or tensorizer (default: from OUTPUT's
        /// extension, `.safetensors` or `.tensors`, else plaid).
        #[arg(long)]
        to: Option<String>,
        /// Only the tensors whose names match a glob pattern (repeat for several); the
        /// others are neither read nor written.
        #[arg(long = "tensors", value_name = "PATTERN")]
        tensors: Vec<String>,
        #[command(flatten)]
        keys: Keys,
        #[command(flatten)]
        encrypt: EncryptKeys,
    },
    /// Check every checksum block of a file, and every hash it stores (a tensorizer file's
    /// SHA-256s too, which loads skip by default); exits non-zero naming the first bad
    /// tensor.
    Verify {
        /// The file.
        file: PathBuf,
        /// Worker threads (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Only the tensors whose names match a glob pattern (repeat for several); the
        /// others are not read.
        #[arg(long = "tensors", value_name = "PATTERN")]
        tensors: Vec<String>,
        #[command(flatten)]
        keys: Keys,
    },
    /// Measure plaid's load paths against the machine's limits and a naive loader, on the
    /// same data in one run, and print a table of medians.
    Bench {
        /// Approximate size of the synthetic checkpoint in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Directory for the test files (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Timed rounds per row (after one warm-up).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Number of small (8 KiB) tensors in the many-tensor case.
        #[arg(long, default_value_t = 10_000)]
        small_tensors: usize,
        /// Measure remote loads instead: HTTP (nginx) and S3 (s3s-fs) on loopback against
        /// curl and boto3, with peak RSS. Needs the test servers: `scripts/servers start
        /// DIR` and `. DIR/env`.
        #[arg(long)]
        remote: bool,
        /// Requests in flight of the remote rows' "N in flight" case.
        #[arg(long, default_value_t = 32)]
        in_flight: u32,
    },
    /// Tensor-parallel ranks each load their slice (along dimension 0, then 1) of every
    /// 2-D tensor of a synthetic checkpoint, verified, through a source that counts the
    /// bytes read; prints a table, and fails unless the slices reassemble the checkpoint
    /// exactly and each dimension-0 rank read at most its share plus two checksum blocks
    /// per tensor.
    BenchSlices {
        /// Approximate size of the synthetic checkpoint in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Ranks.
        #[arg(long, default_value_t = 8)]
        ranks: u64,
        /// Directory for the test file (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The synthetic checkpoint written plain and encrypted (AES-256-GCM), each loaded
    /// verified into the same buffers, alternately; prints the medians and the ratio of
    /// their speeds, and fails unless both load the written bytes.
    BenchEncryption {
        /// Approximate size of the synthetic checkpoint in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Timed rounds of each (after one warm-up of each).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Worker threads of each load.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Directory for the test files (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the synthetic model at FILE and upload it to URL (the setup of `bench
    /// --remote`).
    #[command(hide = true)]
    BenchPrepare {
        /// The local file.
        file: PathBuf,
        /// The URL to upload to.
        url: String,
        /// Approximate size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// A storage option, KEY=VALUE (repeatable).
        #[arg(long)]
        storage: Vec<String>,
    },
    /// Load a file or URL into pre-faulted host buffers, verified, and print the load's
    /// seconds (a child process of `bench --remote`).
    #[command(hide = true)]
    BenchLoad {
        /// The file or URL.
        url: String,
        /// Requests in flight.
        #[arg(long, default_value_t = 0)]
        in_flight: u32,
        /// Bytes per request (0: the source's default).
        #[arg(long, default_value_t = 0)]
        chunk: u64,
        /// Skip verification.
        #[arg(long)]
        no_verify: bool,
        /// A storage option, KEY=VALUE (repeatable).
        #[arg(long)]
        storage: Vec<String>,
    },
    /// Write a synthetic transformer-shaped checkpoint, load it back into host buffers,
    /// verify it, and print sizes, times and throughput.
    Demo {
        /// Approximate checkpoint size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Directory for the checkpoint (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the checkpoint instead of deleting it.
        #[arg(long)]
        keep: bool,
        /// Worker threads (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

mod bench;
mod bench_encryption;
#[cfg(feature = "remote")]
mod bench_remote;
mod bench_slices;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`plaid inspect big.plaid | head`), as command-line
    // tools do, instead of panicking on the failed print.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file, tensors } => inspect(&file, &tensors),
        Command::Verify {
            file,
            threads,
            tensors,
            keys,
        } => keys
            .options()
            .and_then(|options| verify(&file, threads, &tensors, options)),
        Command::Convert {
            input,
            output,
            to,
            tensors,
            keys,
            encrypt,
        } => keys.options().and_then(|options| {
            let write = encrypt.options()?;
            convert(&input, &output, to.as_deref(), &tensors, options, write)
        }),
        #[cfg(feature = "remote")]
        Command::Bench {
            size_mib,
            rounds,
            remote: true,
            in_flight,
            ..
        } => bench_remote::bench_remote(size_mib, rounds, in_flight),
        #[cfg(feature = "remote")]
        Command::BenchPrepare {
            file,
            url,
            size_mib,
            storage,
        } => bench_remote::bench_prepare(&file, &url, size_mib, &storage),
        #[cfg(not(feature = "remote"))]
        Command::Bench { remote: true, .. }
        | Command::BenchLoad { .. }
        | Command::BenchPrepare { .. } => Err(plaid::Error::Unsupported(
            "this build of plaid reads no URLs (the `remote` feature is off)".into(),
        )),
        Command::Bench {
            size_mib,
            dir,
            rounds,
            small_tensors,
            ..
        } => bench::bench(size_mib, dir, rounds, small_tensors),
        Command::BenchSlices {
            size_mib,
            ranks,
            dir,
        } => bench_slices::bench_slices(size_mib, ranks, dir),
        Command::BenchEncryption {
            size_mib,
            rounds,
            threads,
            dir,
        } => bench_encryption::bench_encryption(size_mib, rounds, threads, dir),
        #[cfg(feature = "remote")]
        Command::BenchLoad {
            url,
            in_flight,
            chunk,
            no_verify,
            storage,
        } => bench_remote::bench_load(&url, in_flight, chunk, !no_verify, &storage),
        Command::Demo {
            size_mib,
            dir,
            keep,
            threads,
        } => demo(size_mib, dir, keep, threads),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plaid: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(file: &Path, patterns: &[String]) -> plaid::Result<()> {
    let filter = plaid::NameFilter::new(patterns)?;
    let d = Deserializer::open(file, ReadOptions::default())?;
    let data: u64 = d.tensors().iter().map(|t| t.nbytes).sum();
    println!("file:       {}", d.name());
    match d.format() {
        plaid::Format::Safetensors => println!("format:     safetensors"),
        other => println!(
            "format:     {} version {}",
            other.name(),
            d.format_version()
        ),
    }
    println!(
        "size:       {} ({} of tensor data)",
        human(d.file_length()),
        human(data)
    );
    println!("alignment:  {}", d.alignment());
    if let Some(encryption) = d.tensors().iter().find_map(|t| t.encryption.as_deref()) {
        println!("encryption: {}", describe_encryption(encryption));
    }
    let shown = d
        .tensors()
        .iter()
        .filter(|t| filter.matches(&t.name))
        .count();
    if patterns.is_empty() {
        println!("tensors:    {}", d.tensors().len());
    } else {
        println!(
            "tensors:    {} ({shown} matching {})",
            d.tensors().len(),
            patterns.join(", ")
        );
    }
    println!();
    let name_width = d
        .tensors()
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    println!(
        "{:>6}  {:<name_width$}  {:<12}  {:<24}  {:>12}  {:>14}",
        "#", "name", "dtype", "shape", "bytes", "offset"
    );
    for t in d.tensors().iter().filter(|t| filter.matches(&t.name)) {
        let mut notes = Vec::new();
        if t.role != plaid::TensorRole::Unspecified {
            notes.push(format!("{} (module {})", t.role.name(), t.module_index));
        }
        if let Some(path) = &t.path {
            notes.push(format!("path {path}"));
        }
        if t.zero_fill {
            notes.push("not stored: loads as zeros".into());
        }
        println!(
            "{:>6}  {:<name_width$}  {:<12}  {:<24}  {:>12}  {:>14}  {}",
            t.index,
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.nbytes,
            t.offset,
            notes.join("; ")
        );
    }
    if !d.metadata().is_empty() {
        println!();
        println!("metadata:");
        for (k, v) in d.metadata() {
            println!("  {k} = {v}");
        }
    }
    Ok(())
}

fn convert(
    input: &Path,
    output: &Path,
    to: Option<&str>,
    patterns: &[String],
    options: ReadOptions,
    write: WriteOptions,
) -> plaid::Result<()> {
    let filter = plaid::NameFilter::new(patterns)?;
    let to = to.unwrap_or(match output.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => "safetensors",
        Some("tensors") => "tensorizer",
        _ => "plaid",
    });
    let mut source = Deserializer::open(input, options)?;
    if !patterns.is_empty() {
        source = source.retain(&|t: &TensorInfo| filter.matches(&t.name));
    }
    let total: u64 = source.tensors().iter().map(|t| t.nbytes).sum();
    let started = Instant::now();
    let progress = bar(total, "convert");
    let mut report = |done: u64, _: u64| progress.set_position(done.min(total));
    if to == "tensorizer" && !source.metadata().is_empty() {
        eprintln!(
            "plaid: note: tensorizer files hold no metadata; {} entries are not carried over",
            source.metadata().len()
        );
    }
    plaid::convert::to_format(&source, output, to, write, &mut report)?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    println!(
        "{} ({}, {} tensors, {}) -> {} ({to}) in {:.2} s, {:.2} GB/s; read back and compared",
        input.display(),
        source.format().name(),
        source.tensors().len(),
        human(total),
        output.display(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9) / 1e9
    );
    Ok(())
}

fn verify(
    file: &Path,
    threads: usize,
    patterns: &[String],
    options: ReadOptions,
) -> plaid::Result<()> {
    let filter = plaid::NameFilter::new(patterns)?;
    let d = Deserializer::open(file, options.threads(threads)?.verify_sha256(true))?;
    let wanted = |t: &TensorInfo| filter.matches(&t.name);
    let total: u64 = d
        .tensors()
        .iter()
        .filter(|t| wanted(t))
        .map(|t| t.nbytes)
        .sum();
    let progress = bar(total, "verify");
    let started = Instant::now();
    let report = |p: &plaid::Progress| {
        progress.set_position(p.bytes_done);
        Ok(())
    };
    let stats = d.verify_tensors(&wanted, Some(&report))?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    println!(
        "{}: OK, {} tensors, {} verified in {:.3} s ({:.2} GB/s)",
        d.name(),
        stats.tensors,
        human(stats.bytes),
        elapsed.as_secs_f64(),
        gbps(stats.bytes, elapsed)
    );
    Ok(())
}

/// A tensor of the synthetic model.
struct Synthetic {
    name: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// A llama-like decoder in bf16 (embeddings, decoder blocks, final norm and head), with
/// the largest width whose embeddings plus four blocks fit `target_bytes`, and as many
/// blocks as bring it closest to that size.
fn synthetic_model(target_bytes: u64) -> Vec<(String, Vec<u64>)> {
    // (hidden, intermediate, vocabulary, key/value width), from wide to narrow.
    const WIDTHS: [(u64, u64, u64, u64); 5] = [
        (4096, 11008, 32000, 1024),
        (2048, 5632, 32000, 512),
        (1024, 2816, 32000, 256),
        (512, 1408, 8000, 128),
        (256, 704, 4000, 64),
    ];
    let size = |&(hidden, inter, vocab, kv): &(u64, u64, u64, u64)| {
        let per_layer =
            2 * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden);
        let fixed = 2 * (2 * vocab * hidden + hidden);
        (per_layer, fixed)
    };
    let width = WIDTHS
        .iter()
        .find(|w| {
            let (per_layer, fixed) = size(w);
            fixed + 4 * per_layer <= target_bytes
        })
        .unwrap_or(&WIDTHS[WIDTHS.len() - 1]);
    let (per_layer, fixed) = size(width);
    let (hidden, inter, vocab, kv) = *width;
    let layers = ((target_bytes.saturating_sub(fixed) + per_layer / 2) / per_layer).max(1);
    let mut tensors = vec![("model.embed_tokens.weight".to_owned(), vec![vocab, hidden])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("self_attn.q_proj.weight", vec![hidden, hidden]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, hidden]),
            ("mlp.gate_proj.weight", vec![inter, hidden]),
            ("mlp.up_proj.weight", vec![inter, hidden]),
            ("mlp.down_proj.weight", vec![hidden, inter]),
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
        ] {
            tensors.push((format!("{p}.{n}"), shape));
        }
    }
    tensors.push(("model.norm.weight".to_owned(), vec![hidden]));
    tensors.push(("lm_head.weight".to_owned(), vec![vocab, hidden]));
    tensors
}

fn fill_random(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        // xorshift64*: fast, and different bytes in every block, so checksums mean something.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let v = seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn bar(total: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

fn demo(size_mib: u64, dir: Option<PathBuf>, keep: bool, threads: usize) -> plaid::Result<()> {
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("plaid-demo-{}.plaid", std::process::id()));
    let plan = synthetic_model(size_mib << 20);
    let total: u64 = plan
        .iter()
        .map(|(_, s)| DType::BF16.nbytes(s).unwrap_or(0))
        .sum();
    println!(
        "plaid demo: a {}-tensor bf16 decoder, {} of weights -> {}",
        plan.len(),
        human(total),
        path.display()
    );
    let mut rows: Vec<(&str, u64, Duration)> = Vec::new();

    let started = Instant::now();
    let progress = bar(total, "generate");
    let model: Vec<Synthetic> = plan
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let mut data = vec![0u8; DType::BF16.nbytes(&shape).unwrap_or(0) as usize];
            fill_random(&mut data, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            progress.inc(data.len() as u64);
            Synthetic { name, shape, data }
        })
        .collect();
    progress.finish_and_clear();
    rows.push(("generate in memory", total, started.elapsed()));

    let result = (|| {
        let options = WriteOptions::default().threads(threads)?;
        let mut writer = Serializer::create(&path, options)?;
        writer.set_metadata("architecture", "LlamaForCausalLM (synthetic)")?;
        writer.set_metadata("torch_dtype", "bfloat16")?;
        for t in &model {
            writer.add_tensor(&t.name, DType::BF16, &t.shape, &t.data)?;
        }
        let started = Instant::now();
        let progress = bar(total, "write");
        let stats =
            writer.finish_with_progress(&mut |done, _| progress.set_position(done.min(total)))?;
        progress.finish_and_clear();
        rows.push((
            "serialize (checksum, write, fsync)",
            stats.data_bytes,
            started.elapsed(),
        ));
        rows.push((
            "  checksums, overlapped with writing",
            stats.data_bytes,
            stats.checksum_time,
        ));

        // Destinations the way an engine has them: allocated and touched before the load.
        let mut buffers: Vec<Vec<u8>> = model.iter().map(|t| vec![0xA5u8; t.data.len()]).collect();
        for (label, verify) in [
            ("load into host buffers, verified", true),
            ("load into host buffers, unverified", false),
        ] {
            let reader = Deserializer::open(
                &path,
                ReadOptions::default().threads(threads)?.verify(verify),
            )?;
            let mut slots: Vec<Option<&mut [u8]>> =
                buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            let progress = bar(total, "load");
            let started = Instant::now();
            let stats = reader.load_with_progress(
                &mut |t: &TensorInfo| {
                    Ok(slots[t.index]
                        .take()
                        .map_or(Destination::Skip, Destination::Host))
                },
                &|p: &plaid::Progress| {
                    progress.set_position(p.bytes_done);
                    Ok(())
                },
            )?;
            progress.finish_and_clear();
            rows.push((label, stats.bytes, started.elapsed()));
            for (t, b) in model.iter().zip(&buffers) {
                if t.data != *b {
                    return Err(plaid::Error::InvalidArgument(format!(
                        "tensor '{}' came back different",
                        t.name
                    )));
                }
            }
        }
        let reader = Deserializer::open(&path, ReadOptions::default().threads(threads)?)?;
        let started = Instant::now();
        let stats = reader.verify()?;
        rows.push((
            "verify every block (plaid verify)",
            stats.bytes,
            started.elapsed(),
        ));

        let started = Instant::now();
        for (t, b) in model.iter().zip(buffers.iter_mut()) {
            b.copy_from_slice(&t.data);
        }
        rows.push(("baseline: memcpy, 1 thread", total, started.elapsed()));
        Ok(())
    })();
    if !keep {
        let _ = std::fs::remove_file(&path);
    }
    result?;

    println!();
    println!(
        "{:<36}  {:>10}  {:>9}  {:>8}",
        "phase", "bytes", "seconds", "GB/s"
    );
    println!("{}", "-".repeat(70));
    for (label, bytes, time) in &rows {
        println!(
            "{label:<36}  {:>10}  {:>9.3}  {:>8.2}",
            human(*bytes),
            time.as_secs_f64(),
            gbps(*bytes, *time)
        );
    }
    println!();
    println!(
        "every tensor came back byte-identical{}",
        if keep {
            format!("; kept {}", path.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

fn gbps(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-9) / 1e9
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// An encrypted file's cipher and where its key comes from, for `inspect`.
fn describe_encryption(encryption: &plaid::format::Encryption) -> String {
    use plaid::format::{plaid as v1, Encryption};
    let (cipher, kdf) = match encryption {
        Encryption::Tensorizer { kdf, .. } => ("XSalsa20-Poly1305 (tensorizer)", kdf.as_ref()),
        Encryption::Plaid { file, .. } => (
            if file.cipher == v1::CIPHER_AES_256_GCM {
                "AES-256-GCM"
            } else {
                "AEGIS-256X4"
            },
            file.kdf.as_ref(),
        ),
        _ => ("unknown", None),
    };
    match kdf {
        Some(kdf) => format!(
            "{cipher}, key from a passphrase (Argon2id, {} passes over {})",
            kdf.opslimit,
            human(kdf.memlimit)
        ),
        None => format!("{cipher}, raw key"),
    }
}

/// Where the key of an encrypted file comes from: a file or the environment, never the
/// command line (which other users of the machine can read).
#[derive(clap::Args, Debug, Default)]
struct Keys {
    /// A file holding the 32-byte key: raw, or as 64 hexadecimal digits (else the
    /// environment's `PLAID_KEY`, in hexadecimal).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// A file holding the passphrase (one trailing newline is dropped; else the
    /// environment's `PLAID_PASSPHRASE`).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// With a key or passphrase given (from a file or the environment), read tensors
    /// stored in the clear too instead of refusing them.
    #[arg(long)]
    allow_plaintext: bool,
    /// The most memory, in bytes, a file's passphrase key derivation may take (default
    /// 1073741824, 1 GiB).
    #[arg(long, value_name = "BYTES")]
    kdf_max_memory: Option<u64>,
    /// The most passes a file's passphrase key derivation may take (default 16).
    #[arg(long, value_name = "N")]
    kdf_max_passes: Option<u64>,
}

/// A key (checked: 32 bytes) and a passphrase (one trailing newline dropped), each from
/// its file (`files`: the key's, the passphrase's) or, without one, from the environment's
/// `{env}KEY` and `{env}PASSPHRASE`; with where an environment's came from.
type Material = (
    Option<zeroize::Zeroizing<Vec<u8>>>,
    Option<zeroize::Zeroizing<Vec<u8>>>,
    Option<String>,
);

fn material(
    (key_file, passphrase_file): (Option<&Path>, Option<&Path>),
    env: &str,
) -> plaid::Result<Material> {
    let (key_env, passphrase_env) = (format!("{env}KEY"), format!("{env}PASSPHRASE"));
    use zeroize::Zeroizing;
    let read = |path: &Path| {
        std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| plaid::Error::Io {
                context: format!("reading the key file {}", path.display()),
                source: e,
            })
    };
    let mut origin = None;
    let key = match (key_file, std::env::var(&key_env).ok()) {
        (Some(path), _) => Some(read(path)?),
        (None, Some(hex)) => {
            origin = Some(format!("from the environment's {key_env}"));
            Some(Zeroizing::new(hex.into_bytes()))
        }
        (None, None) => None,
    };
    let passphrase = match (passphrase_file, std::env::var_os(&passphrase_env)) {
        (Some(path), _) => Some(read(path)?),
        (None, Some(text)) => {
            origin = Some(format!("from the environment's {passphrase_env}"));
            Some(Zeroizing::new(
                std::os::unix::ffi::OsStrExt::as_bytes(text.as_os_str()).to_vec(),
            ))
        }
        (None, None) => None,
    };
    let key = key.map(key_bytes).transpose()?;
    let passphrase = passphrase.map(|mut p| {
        if p.last() == Some(&b'\n') {
            p.pop();
        }
        p
    });
    Ok((key, passphrase, origin))
}

impl Keys {
    /// Read options carrying the key or passphrase given, if any.
    fn options(&self) -> plaid::Result<ReadOptions> {
        let files = (self.key_file.as_deref(), self.passphrase_file.as_deref());
        let (key, passphrase, origin) = material(files, "PLAID_")?;
        let options = ReadOptions::default()
            .allow_plaintext(self.allow_plaintext)
            .key_origin(origin.as_deref());
        let mut options = with_material(
            options,
            key,
            passphrase,
            ReadOptions::key,
            ReadOptions::passphrase,
        )?;
        if self.kdf_max_memory.is_some() || self.kdf_max_passes.is_some() {
            let (memory, passes) = options.get_passphrase_limits();
            options = options.passphrase_limits(
                self.kdf_max_memory.unwrap_or(memory),
                self.kdf_max_passes.unwrap_or(passes),
            )?;
        }
        Ok(options)
    }
}

/// Where the key that encrypts a converted file comes from: a file or the environment,
/// never the command line.
#[derive(clap::Args, Debug, Default)]
struct EncryptKeys {
    /// Encrypt the output (plaid or tensorizer) with the 32-byte key in this file: raw, or
    /// as 64 hexadecimal digits (else the environment's `PLAID_ENCRYPT_KEY`, in
    /// hexadecimal).
    #[arg(long, value_name = "FILE")]
    encrypt_key_file: Option<PathBuf>,
    /// Encrypt the output with a key derived from the passphrase in this file (one
    /// trailing newline is dropped; else the environment's `PLAID_ENCRYPT_PASSPHRASE`).
    #[arg(long, value_name = "FILE")]
    encrypt_passphrase_file: Option<PathBuf>,
    /// The cipher of an encrypted plaid output: aegis-256x4 (the default) or aes-256-gcm.
    /// (A tensorizer output uses tensorizer's XSalsa20-Poly1305.)
    #[arg(long, value_name = "CIPHER")]
    cipher: Option<String>,
    /// Argon2id passes for the passphrase (default 3, as tensorizer's).
    #[arg(long, value_name = "N")]
    kdf_passes: Option<u64>,
    /// Argon2id memory for the passphrase, in bytes (default 268435456, 256 MiB, as
    /// tensorizer's).
    #[arg(long, value_name = "BYTES")]
    kdf_memory: Option<u64>,
    /// Allow passphrase limits above what readers take by default (1 GiB, 16 passes):
    /// readers must then raise theirs (--kdf-max-memory, --kdf-max-passes).
    #[arg(long)]
    kdf_above_read_limits: bool,
}

impl EncryptKeys {
    /// Write options carrying the key or passphrase given, if any.
    fn options(&self) -> plaid::Result<WriteOptions> {
        let files = (
            self.encrypt_key_file.as_deref(),
            self.encrypt_passphrase_file.as_deref(),
        );
        let (key, passphrase, _) = material(files, "PLAID_ENCRYPT_")?;
        let options = WriteOptions::default().kdf_above_read_limits(self.kdf_above_read_limits);
        let mut options = with_material(
            options,
            key,
            passphrase,
            WriteOptions::key,
            WriteOptions::passphrase,
        )?;
        if let Some(cipher) = &self.cipher {
            options = options.cipher(match cipher.to_ascii_lowercase().as_str() {
                "aegis-256x4" | "aegis256x4" => plaid::format::plaid::CIPHER_AEGIS_256X4,
                "aes-256-gcm" | "aes256gcm" => plaid::format::plaid::CIPHER_AES_256_GCM,
                other => {
                    return Err(plaid::Error::InvalidArgument(format!(
                        "cipher '{other}': aegis-256x4 or aes-256-gcm"
                    )))
                }
            })?;
        }
        if self.kdf_passes.is_some() || self.kdf_memory.is_some() {
            options = options.passphrase_limits(
                self.kdf_passes.unwrap_or(3),
                self.kdf_memory.unwrap_or(256 << 20),
            )?;
        }
        Ok(options)
    }
}

/// A builder setter of key material: `ReadOptions::key`, `WriteOptions::passphrase`, ...
type SetMaterial<O> = fn(O, Option<&[u8]>) -> plaid::Result<O>;

/// `options` carrying the key and the passphrase found (both is the options' error).
fn with_material<O>(
    mut options: O,
    key: Option<zeroize::Zeroizing<Vec<u8>>>,
    passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
    set_key: SetMaterial<O>,
    set_passphrase: SetMaterial<O>,
) -> plaid::Result<O> {
    if let Some(key) = key {
        options = set_key(options, Some(&key))?;
    }
    if let Some(passphrase) = passphrase {
        options = set_passphrase(options, Some(&passphrase))?;
    }
    Ok(options)
}

/// A key given as 32 raw bytes, or as 64 hexadecimal digits (whitespace around them
/// allowed).
fn key_bytes(key: zeroize::Zeroizing<Vec<u8>>) -> plaid::Result<zeroize::Zeroizing<Vec<u8>>> {
    if key.len() == 32 {
        return Ok(key);
    }
    let bad =
        || plaid::Error::InvalidArgument("the key is neither 32 bytes nor 64 hex digits".into());
    let text = std::str::from_utf8(&key).map_err(|_| bad())?.trim();
    if text.len() != 64 {
        return Err(bad());
    }
    (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map(zeroize::Zeroizing::new)
        .map_err(|_| bad())
}
