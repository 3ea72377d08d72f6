//! The read path with sources that cannot be mapped and hand over bytes in pieces: a
//! stand-in network stream (seeded random short reads of 1 byte to 3 MiB, concurrent calls
//! finishing out of order) carries every format bit-exact and verified; a damaged byte is
//! found wherever it lies relative to checksum blocks and read pieces; headers cost a
//! constant number of reads; requests in flight are apart from the CPU workers; host
//! memory read through stays within requests in flight x request size.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{load_all, random_bytes};
use plaid::source::{CountingSource, FailingSource, MemorySource, ShortReads, Source, SourceHints};
use plaid::{DType, Deserializer, Error, ReadOptions, Serializer, WriteOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorizer")
}

/// A plaid file of many shapes (large tensors over several blocks and requests, many
/// small ones, 0-d and empty ones) with `block`-byte checksum blocks, and its tensors.
fn plaid_model(block: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut shapes: Vec<(DType, Vec<u64>)> = vec![
        (DType::U8, vec![(3 << 20) + 4097]),
        (DType::F32, vec![333, 77]),
        (DType::F64, vec![]),
        (DType::BF16, vec![0, 8]),
        (DType::F16, vec![300_001]),
    ];
    for i in 0..120u64 {
        shapes.push((DType::U8, vec![1 + (i * 37) % 9000]));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let options = WriteOptions::default()
        .checksum_block_size(block)
        .unwrap()
        .sync(false);
    let mut writer = Serializer::create(&path, options).unwrap();
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(i, (dtype, shape))| random_bytes(dtype.nbytes(shape).unwrap() as usize, i as u64))
        .collect();
    for (i, ((dtype, shape), bytes)) in shapes.iter().zip(&data).enumerate() {
        writer
            .add_tensor(&format!("t{i}"), *dtype, shape, bytes)
            .unwrap();
    }
    writer.set_metadata("kind", "streaming test").unwrap();
    writer.finish().unwrap();
    (std::fs::read(&path).unwrap(), data)
}

/// The same tensors as a safetensors file.
fn safetensors_of(plaid: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("m.plaid"), dir.path().join("m.safetensors"));
    std::fs::write(&from, plaid).unwrap();
    let d = Deserializer::open(&from, ReadOptions::default()).unwrap();
    plaid::convert::to_safetensors(&d, &to, &mut |_, _| {}).unwrap();
    std::fs::read(&to).unwrap()
}

/// A stand-in stream over `bytes` with the given seed and hints.
fn stream(name: &str, bytes: Vec<u8>, seed: u64, hints: SourceHints) -> Box<dyn Source> {
    Box::new(ShortReads::new(MemorySource::new(name, bytes), seed).hints(hints))
}

/// Remote-like hints: 256 KiB requests, a 64 KiB gap, 6 in flight.
fn remote() -> SourceHints {
    SourceHints::new(256 << 10, 64 << 10, 6)
}

fn options() -> ReadOptions {
    ReadOptions::default().threads(2).unwrap()
}

#[test]
fn every_format_loads_bit_exact_and_verified_through_short_reads() {
    let (plaid, data) = plaid_model(4096);
    let safetensors = safetensors_of(&plaid);
    for seed in 0..3u64 {
        for (name, bytes) in [("m.plaid", &plaid), ("m.safetensors", &safetensors)] {
            let d =
                Deserializer::from_source(stream(name, bytes.clone(), seed, remote()), options())
                    .unwrap();
            assert_eq!(d.tensors().len(), data.len());
            // By name: safetensors lays tensors out by dtype, then name.
            let loaded = load_all(&d).unwrap();
            let mut by_name: Vec<(String, Vec<u8>)> = d
                .tensors()
                .iter()
                .map(|t| t.name.to_string())
                .zip(loaded)
                .collect();
            by_name.sort_by_key(|(n, _)| n[1..].parse::<usize>().unwrap());
            let loaded: Vec<Vec<u8>> = by_name.into_iter().map(|(_, b)| b).collect();
            assert!(loaded == data, "{name}, seed {seed}: the tensors differ");
            let stats = d.verify().unwrap();
            assert_eq!(stats.tensors, data.len());
            // Views need a mapping, which a stream does not have.
            assert!(matches!(d.view(0), Err(Error::Unsupported(_))));
        }
    }

    // Every tensorizer fixture that loads, compared with its ground truth.
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "tensors") {
            continue;
        }
        let truth: Value =
            serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let expected = Deserializer::open(&path, ReadOptions::default()).and_then(|d| load_all(&d));
        let streamed = Deserializer::from_source(stream(&name, bytes, 7, remote()), options())
            .and_then(|d| load_all(&d));
        match (expected, streamed) {
            (Ok(expected), Ok(streamed)) => {
                assert!(expected == streamed, "{name}");
                for (t, bytes) in truth["tensors"].as_array().unwrap().iter().zip(&streamed) {
                    let sha: String = Sha256::digest(bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    assert_eq!(t["sha256"].as_str().unwrap(), sha, "{name}: {}", t["name"]);
                }
                checked += 1;
            }
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{name}: {a} / {b}"
            ),
            (a, b) => panic!(
                "{name}: from the file {:?}, streamed {:?}",
                a.err(),
                b.err()
            ),
        }
    }
    assert!(checked >= 17, "{checked} fixtures loaded");
}

/// A source whose reads end at multiples of `piece` (a fixed short-read pattern).
struct Pieces {
    inner: MemorySource,
    piece: u64,
}

impl Source for Pieces {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> plaid::Result<usize> {
        let n = (self.piece - offset % self.piece).min(buf.len() as u64) as usize;
        self.inner.read_at(offset, &mut buf[..n])
    }
    fn hints(&self) -> SourceHints {
        SourceHints::new(16 << 10, 0, 3)
    }
}

#[test]
fn a_damaged_byte_is_found_wherever_it_lies_against_blocks_and_pieces() {
    let block = 4096u64;
    let data = random_bytes(5 * block as usize + 123, 99);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.plaid");
    let options = WriteOptions::default()
        .checksum_block_size(block)
        .unwrap()
        .sync(false);
    let mut writer = Serializer::create(&path, options).unwrap();
    writer
        .add_tensor("w", DType::U8, &[data.len() as u64], &data)
        .unwrap();
    writer.finish().unwrap();
    let good = std::fs::read(&path).unwrap();
    let offset = Deserializer::open(&path, ReadOptions::default())
        .unwrap()
        .tensors()[0]
        .offset;
    for piece in [1u64, 1000, 4095, 4096, 4097, 10_000] {
        // Positions in the tensor at, just before and just after every block boundary
        // (relative to the tensor) and every piece boundary (relative to the file: reads
        // end at multiples of `piece`), and the tensor's first and last bytes.
        let end = data.len() as u64;
        let blocks = (0..end).step_by(block as usize);
        let pieces = (offset.div_ceil(piece)..)
            .map(|k| k * piece - offset)
            .take_while(|&at| at < end)
            .step_by(if piece < 64 { 997 } else { 1 });
        let mut positions: Vec<u64> = vec![0, end - 1];
        for boundary in blocks.chain(pieces) {
            positions.extend([boundary.saturating_sub(1), boundary, boundary + 1]);
        }
        positions.retain(|&p| p < end);
        positions.sort_unstable();
        positions.dedup();
        for &at in &positions {
            let mut bytes = good.clone();
            bytes[(offset + at) as usize] ^= 0x10;
            let source = Pieces {
                inner: MemorySource::new("damaged.plaid", bytes),
                piece,
            };
            let d = Deserializer::from_source(
                Box::new(source),
                ReadOptions::default().threads(2).unwrap(),
            )
            .unwrap();
            for (what, err) in [
                ("load", load_all(&d).unwrap_err()),
                ("verify", d.verify().unwrap_err()),
            ] {
                match err {
                    Error::Checksum {
                        tensor,
                        block: b,
                        offset: o,
                        ..
                    } => {
                        assert_eq!(tensor, "w");
                        assert_eq!(b, at / block, "{what}: byte {at}, pieces of {piece}");
                        assert_eq!(o, offset + b * block);
                    }
                    other => panic!("{what}: byte {at}, pieces of {piece}: {other}"),
                }
            }
        }
    }
}

/// A source with the hints of another kind of storage.
struct Hinted<S>(S, SourceHints);

impl<S: Source> Source for Hinted<S> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> plaid::Result<usize> {
        self.0.read_at(offset, buf)
    }
    fn hints(&self) -> SourceHints {
        self.1
    }
}

#[test]
fn opening_reads_a_header_that_fits_the_read_ahead_in_one_read() {
    let (plaid, _) = plaid_model(4 << 20);
    let safetensors = safetensors_of(&plaid);
    for (name, bytes) in [("m.plaid", plaid), ("m.safetensors", safetensors)] {
        for hints in [
            SourceHints::local(),
            remote(),
            SourceHints::new(8 << 20, 1 << 20, 8),
        ] {
            let counted = CountingSource::new(MemorySource::new(name, bytes.clone()));
            let counts = counted.counts();
            let d = Deserializer::from_source(Box::new(Hinted(counted, hints)), options()).unwrap();
            assert_eq!(d.tensors().len(), 125);
            assert_eq!(counts.reads(), 1, "{name} with {hints:?}: reads to open");
            // A load then reads only tensor data: nothing of the header again.
            let before = counts.bytes();
            load_all(&d).unwrap();
            let data: u64 = d.tensors().iter().map(|t| t.nbytes).sum();
            assert!(
                counts.bytes() - before < data + (1 << 20),
                "{name}: read too much"
            );
        }
    }
    // A header larger than the window: the window grows, doubling, so a few reads more.
    let many = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.plaid");
        let mut writer = Serializer::create(&path, WriteOptions::default().sync(false)).unwrap();
        let bytes: Vec<u8> = (0..5000).map(|i| i as u8).collect();
        for (i, byte) in bytes.chunks(1).enumerate() {
            writer
                .add_tensor(
                    &format!("layer.{i}.a.rather.long.name.weight"),
                    DType::U8,
                    &[1],
                    byte,
                )
                .unwrap();
        }
        writer.finish().unwrap();
        std::fs::read(&path).unwrap()
    };
    let counted = CountingSource::new(MemorySource::new("many.plaid", many));
    let counts = counted.counts();
    let d = Deserializer::from_source(Box::new(counted), options()).unwrap();
    assert_eq!(d.tensors().len(), 5000);
    assert!(
        (2..=5).contains(&counts.reads()),
        "{} reads",
        counts.reads()
    );
}

#[test]
fn tensorizer_headers_are_read_with_many_requests_in_flight() {
    // A model whose tensors lie far apart (more than a merge gap): every header is a
    // request of its own, and they overlap.
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("spread.plaid");
    let mut writer = Serializer::create(&from, WriteOptions::default().sync(false)).unwrap();
    let data: Vec<Vec<u8>> = (0..24u64).map(|i| random_bytes(200_000, i)).collect();
    for (i, bytes) in data.iter().enumerate() {
        writer
            .add_tensor(&format!("w{i}"), DType::U8, &[200_000], bytes)
            .unwrap();
    }
    writer.finish().unwrap();
    let to = dir.path().join("spread.tensors");
    let d = Deserializer::open(&from, ReadOptions::default()).unwrap();
    plaid::convert::to_tensorizer(&d, &to, &mut |_, _| {}).unwrap();
    let bytes = std::fs::read(&to).unwrap();

    /// Every read takes a while, so that requests made together overlap.
    struct Slow(MemorySource);
    impl Source for Slow {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> plaid::Result<usize> {
            std::thread::sleep(Duration::from_millis(3));
            self.0.read_at(offset, buf)
        }
        fn hints(&self) -> SourceHints {
            SourceHints::new(1 << 20, 4096, 8)
        }
    }
    let counted = CountingSource::new(Slow(MemorySource::new("spread.tensors", bytes)));
    let counts = counted.counts();
    let d = Deserializer::from_source(Box::new(counted), options()).unwrap();
    assert_eq!(d.tensors().len(), 24);
    // The window (64 KiB: file header and the start of the metadata), the metadata, the
    // 24 headers (the first in the window's growth or its own request) and the end marker.
    assert!(counts.reads() <= 28, "{} reads", counts.reads());
    assert!(
        counts.most_in_flight() >= 4,
        "headers were read {} at a time",
        counts.most_in_flight()
    );
}

#[test]
fn requests_in_flight_are_apart_from_cpu_workers_and_bound_memory() {
    let (plaid, data) = plaid_model(4096);
    for (in_flight, threads) in [(1u32, 1usize), (6, 1), (3, 2)] {
        let source = CountingSource::new(
            ShortReads::new(MemorySource::new("m.plaid", plaid.clone()), 11)
                .jitter(Duration::from_millis(1))
                .hints(SourceHints::new(64 << 10, 0, 2)),
        );
        let counts = source.counts();
        let options = ReadOptions::default()
            .threads(threads)
            .unwrap()
            .requests_in_flight(in_flight)
            .unwrap();
        let d = Deserializer::from_source(Box::new(source), options).unwrap();
        assert!(load_all(&d).unwrap() == data);
        assert_eq!(
            counts.most_in_flight(),
            in_flight as usize,
            "{in_flight} in flight"
        );
        // Verification keeps nothing: scratch of at most one request (or batch) per
        // request in flight.
        let stats = d.verify().unwrap();
        assert!(stats.scratch_peak > 0);
        assert!(
            stats.scratch_peak <= in_flight as usize * (64 << 10),
            "{} bytes of scratch with {in_flight} x 64 KiB",
            stats.scratch_peak
        );
        // Loading into host memory reads into the destinations themselves, except for
        // batches of small tensors.
        let mut buffers: Vec<Vec<u8>> = data.iter().map(|b| vec![0; b.len()]).collect();
        let mut slots: Vec<Option<&mut [u8]>> =
            buffers.iter_mut().map(|b| Some(&mut b[..])).collect();
        let stats = d
            .load(&mut |t: &plaid::TensorInfo| {
                Ok(plaid::Destination::Host(slots[t.index].take().unwrap()))
            })
            .unwrap();
        assert!(stats.scratch_peak <= in_flight as usize * (64 << 10));
    }
    // Checksum blocks (4 MiB) larger than a request (64 KiB): jobs are whole blocks, read
    // a request at a time, so the bound holds all the same.
    let (plaid, data) = plaid_model(4 << 20);
    let source = ShortReads::new(MemorySource::new("m.plaid", plaid), 2)
        .jitter(Duration::ZERO)
        .hints(SourceHints::new(64 << 10, 0, 3));
    let d = Deserializer::from_source(Box::new(source), options()).unwrap();
    assert!(load_all(&d).unwrap() == data);
    let stats = d.verify().unwrap();
    assert!(
        stats.scratch_peak <= 3 * (64 << 10),
        "{}",
        stats.scratch_peak
    );
}

#[test]
fn a_stream_that_dies_or_lies_fails_cleanly() {
    let (plaid, _) = plaid_model(4096);
    let len = plaid.len() as u64;
    // Dying at any of several points: an I/O error naming the source, tensor and offset.
    for fail_from in [len / 2, len - 100, len - 5_000_000.min(len / 3)] {
        let source = FailingSource::new(
            ShortReads::new(MemorySource::new("remote.plaid", plaid.clone()), 5),
            fail_from,
        );
        let d = Deserializer::from_source(Box::new(source), options()).unwrap();
        let err = load_all(&d).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Io { .. }), "{text}");
        assert!(
            text.contains("remote.plaid") && text.contains("offset") && text.contains("tensor '"),
            "{text}"
        );
    }

    /// A source that says it is longer than the data it can give.
    struct Short(MemorySource, u64);
    impl Source for Short {
        fn name(&self) -> &str {
            "short.plaid"
        }
        fn len(&self) -> u64 {
            self.1
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> plaid::Result<usize> {
            self.0.read_at(offset, buf)
        }
    }
    let cut = plaid.len() - 10;
    let source = Short(MemorySource::new("short.plaid", plaid[..cut].to_vec()), len);
    let d = Deserializer::from_source(Box::new(source), options()).unwrap();
    let err = load_all(&d).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // A sharded checkpoint's index names other files: not a source.
    let index = serde_json::json!({"metadata": {}, "weight_map": {"w": "a.safetensors"}});
    let bytes = serde_json::to_vec(&index).unwrap();
    let err = Deserializer::from_source(
        Box::new(MemorySource::new("model.safetensors.index.json", bytes)),
        options(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");

    let metadata: BTreeMap<String, String> =
        Deserializer::from_source(stream("m.plaid", plaid, 1, remote()), options())
            .unwrap()
            .metadata()
            .clone();
    assert_eq!(metadata["kind"], "streaming test");
}
