//! `plaid bench-encryption`: the same synthetic checkpoint written plain and encrypted with
//! each cipher (AEGIS-256X4, the default, and AES-256-GCM; `docs/FORMAT.md` section 13),
//! each loaded verified into the same pre-faulted host buffers, in turn (plain, AEGIS,
//! GCM, plain, ...) so that all see the same machine state; a table of medians and of each
//! encrypted load's speed against the plain one. Fails unless every load gives back the
//! written bytes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use plaid::{DType, Deserializer, ReadOptions, Serializer, WriteOptions};

/// A benchmark key: the point is the cipher's cost, not the key's secrecy.
const KEY: [u8; 32] = [0x5a; 32];

pub(crate) fn bench_encryption(
    size_mib: u64,
    rounds: usize,
    threads: usize,
    dir: Option<PathBuf>,
) -> plaid::Result<()> {
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let id = std::process::id();
    let paths: Vec<PathBuf> = ["plain", "aegis", "gcm"]
        .iter()
        .map(|kind| dir.join(format!("plaid-bench-{kind}-{id}.plaid")))
        .collect();
    let names = [
        "plain (CRC-32C per 4 MiB block)",
        "encrypted, AEGIS-256X4 (the default), tag per 4 MiB block",
        "encrypted, AES-256-GCM, tag per 4 MiB block",
    ];
    let result = (|| {
        let tensors = super::synthetic_model(size_mib << 20);
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .enumerate()
            .map(|(i, (_, shape))| {
                let mut d = vec![0u8; DType::BF16.nbytes(shape).unwrap_or(0) as usize];
                super::fill_random(&mut d, i as u64 + 1);
                d
            })
            .collect();
        let total: u64 = data.iter().map(|d| d.len() as u64).sum();
        let mut write_times = Vec::new();
        let sealed = |cipher: u32| -> plaid::Result<WriteOptions> {
            WriteOptions::default().key(Some(&KEY))?.cipher(cipher)
        };
        for (path, options) in paths.iter().zip([
            WriteOptions::default(),
            sealed(plaid::format::plaid::CIPHER_AEGIS_256X4)?,
            sealed(plaid::format::plaid::CIPHER_AES_256_GCM)?,
        ]) {
            let started = Instant::now();
            let mut w = Serializer::create(path, options.sync(false))?;
            for ((name, shape), bytes) in tensors.iter().zip(&data) {
                w.add_tensor(name, DType::BF16, shape, bytes)?;
            }
            w.finish()?;
            write_times.push(started.elapsed());
        }
        let options = ReadOptions::default().threads(threads)?.verify(true);
        let readers = [
            Deserializer::open(&paths[0], options.clone())?,
            Deserializer::open(&paths[1], options.clone().key(Some(&KEY))?)?,
            Deserializer::open(&paths[2], options.key(Some(&KEY))?)?,
        ];
        let mut buffers: Vec<Vec<u8>> = data.iter().map(|d| vec![0u8; d.len()]).collect();
        let load = |reader: &Deserializer, buffers: &mut [Vec<u8>]| -> plaid::Result<Duration> {
            let started = Instant::now();
            crate::bench::load(reader, buffers)?;
            Ok(started.elapsed())
        };
        // Warm-up (page cache, code, threads), then rounds alternating plain and encrypted.
        for reader in &readers {
            load(reader, &mut buffers)?;
        }
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds.max(1) {
            for (k, reader) in readers.iter().enumerate() {
                times[k].push(load(reader, &mut buffers)?);
            }
        }
        // Both loads give back exactly what was written.
        for (k, reader) in readers.iter().enumerate() {
            load(reader, &mut buffers)?;
            if let Some(i) = (0..data.len()).find(|&i| buffers[i] != data[i]) {
                return Err(plaid::Error::InvalidArgument(format!(
                    "bench-encryption: tensor '{}' of the file '{}' loaded wrong",
                    tensors[i].0, names[k]
                )));
            }
        }
        let median = |t: &mut Vec<Duration>| {
            t.sort();
            t[t.len() / 2]
        };
        let medians: Vec<Duration> = times.iter_mut().map(median).collect();
        println!(
            "plaid bench-encryption: {} tensors, {} of bf16, {threads} threads, verified, from the page cache, {} rounds of each in turn",
            tensors.len(),
            super::human(total),
            rounds.max(1)
        );
        println!();
        println!("| load (verified) | median (s) | GB/s | vs plain | write (s) |");
        println!("|---|---:|---:|---:|---:|");
        for k in 0..3 {
            println!(
                "| {} | {:.3} | {:.2} | {:.2}x | {:.2} |",
                names[k],
                medians[k].as_secs_f64(),
                super::gbps(total, medians[k]),
                medians[0].as_secs_f64() / medians[k].as_secs_f64(),
                write_times[k].as_secs_f64()
            );
        }
        println!();
        println!(
            "encrypted / plain speed: {:.2} with AEGIS-256X4, {:.2} with AES-256-GCM (target: at least 0.70 for the default)",
            medians[0].as_secs_f64() / medians[1].as_secs_f64(),
            medians[0].as_secs_f64() / medians[2].as_secs_f64()
        );
        Ok(())
    })();
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    result
}
