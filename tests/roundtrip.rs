//! The core Rust API end to end: write, open, load, verify, and every way it must fail.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{file_with_header, load_all, random_bytes, tensor, valid_header, Tensor};
use plaid::format::proto;
use plaid::source::{FailingSource, MemorySource};
use plaid::{
    DType, Deserializer, Destination, Error, HostBuffers, ReadOptions, Serializer, TensorInfo,
    WriteOptions,
};

fn write(path: &Path, tensors: &[Tensor], options: WriteOptions, metadata: &[(&str, &str)]) {
    let mut s = Serializer::create(path, options.sync(false)).unwrap();
    for t in tensors {
        s.add_tensor(&t.name, t.dtype, &t.shape, &t.data).unwrap();
    }
    for (k, v) in metadata {
        s.set_metadata(k, v).unwrap();
    }
    s.finish().unwrap();
}

fn mixed_model() -> Vec<Tensor> {
    let mut tensors: Vec<Tensor> = DType::ALL
        .iter()
        .enumerate()
        .map(|(i, &d)| tensor(&format!("dtype.{d}"), d, &[3, 5, 7], i as u64))
        .collect();
    tensors.push(tensor("scalar", DType::F64, &[], 100));
    tensors.push(tensor("empty", DType::BF16, &[0, 7], 101));
    tensors.push(tensor("rank8", DType::I16, &[2, 1, 3, 1, 2, 2, 1, 3], 102));
    tensors.push(tensor("模型.层.权重 ünïcödé 🦙", DType::U8, &[17], 103));
    tensors.push(tensor("multi_block", DType::U8, &[3 * 4096 + 17], 104));
    tensors
}

#[test]
fn every_dtype_and_odd_shape_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let tensors = mixed_model();
    let options = WriteOptions::default().checksum_block_size(4096).unwrap();
    write(
        &path,
        &tensors,
        options,
        &[("arch", "test"), ("ünï", "cödé")],
    );

    for (threads, chunk) in [(1, 1 << 20), (4, 4096), (0, 16 << 20)] {
        let options = ReadOptions::default()
            .threads(threads)
            .unwrap()
            .request_bytes(chunk)
            .unwrap();
        let d = Deserializer::open(&path, options).unwrap();
        assert_eq!(d.tensors().len(), tensors.len());
        assert_eq!(d.metadata().get("arch").map(String::as_str), Some("test"));
        assert_eq!(d.metadata().get("ünï").map(String::as_str), Some("cödé"));
        let loaded = load_all(&d).unwrap();
        for (t, (info, bytes)) in tensors.iter().zip(d.tensors().iter().zip(&loaded)) {
            assert_eq!(info.name, t.name);
            assert_eq!(info.dtype, t.dtype);
            assert_eq!(info.shape.as_slice(), t.shape.as_slice());
            assert_eq!(info.offset % 4096, 0);
            assert_eq!(bytes, &t.data, "tensor {}", t.name);
            assert_eq!(d.find(&t.name).unwrap(), info.index);
        }
        assert_eq!(
            d.verify().unwrap().bytes,
            tensors.iter().map(|t| t.data.len() as u64).sum::<u64>()
        );
    }
}

#[test]
fn skip_load_twice_and_host_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let tensors = mixed_model();
    write(&path, &tensors, WriteOptions::default(), &[]);
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();

    let mut first = vec![0u8; tensors[0].data.len()];
    let mut second = vec![0u8; tensors[0].data.len()];
    for buffer in [&mut first, &mut second] {
        let mut map = HostBuffers::new();
        map.insert(tensors[0].name.clone(), buffer.as_mut_slice());
        let stats = d.load(&mut map).unwrap();
        assert_eq!(stats.tensors, 1);
    }
    assert_eq!(first, tensors[0].data);
    assert_eq!(second, tensors[0].data);
    assert_eq!(d.read_tensor(5).unwrap(), tensors[5].data);
    assert!(matches!(d.find("nope"), Err(Error::NotFound(_))));
}

#[test]
fn capacity_and_cancel_fail_before_any_byte_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let tensors = mixed_model();
    write(&path, &tensors, WriteOptions::default(), &[]);
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();

    let mut buffers: Vec<Vec<u8>> = tensors.iter().map(|t| vec![0xA5; t.data.len()]).collect();
    {
        let mut slots: Vec<Option<&mut [u8]>> =
            buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
        let err = d
            .load(&mut |t: &TensorInfo| {
                let b = slots[t.index].take().unwrap();
                Ok(if t.index == 3 {
                    Destination::Host(&mut b[1..])
                } else {
                    Destination::Host(b)
                })
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::Capacity { ref tensor, .. } if tensor == "dtype.i16"),
            "{err}"
        );
    }
    {
        let mut slots: Vec<Option<&mut [u8]>> =
            buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
        let err = d
            .load(&mut |t: &TensorInfo| {
                if t.index == 4 {
                    return Err(Error::Cancelled("stop".into()));
                }
                Ok(Destination::Host(slots[t.index].take().unwrap()))
            })
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)));
    }
    assert!(buffers.iter().all(|b| b.iter().all(|&x| x == 0xA5)));

    let err = d
        .load(&mut |_: &TensorInfo| {
            Ok(Destination::Cuda {
                device: 0,
                address: 1,
                capacity: 1 << 40,
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::NoCuda(_)), "{err}");
}

#[test]
fn a_flipped_data_bit_is_caught_and_named() {
    let (_dir, path, tensors) = mixed_file(&[]);
    let mut bytes = std::fs::read(&path).unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let target = d.tensor(d.find("multi_block").unwrap()).unwrap().clone();
    let flip_at = target.offset + 2 * 4096 + 5;
    bytes[flip_at as usize] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let d = Deserializer::open(
        &path,
        ReadOptions::default()
            .threads(3)
            .unwrap()
            .request_bytes(4096)
            .unwrap(),
    )
    .unwrap();
    for err in [load_all(&d).unwrap_err(), d.verify().unwrap_err()] {
        match &err {
            Error::Checksum {
                tensor,
                offset,
                block,
                ..
            } => {
                assert_eq!(tensor, "multi_block");
                assert_eq!(*block, 2);
                assert_eq!(*offset, target.offset + 2 * 4096);
            }
            other => panic!("expected a checksum error, got {other}"),
        }
        assert!(err.to_string().contains("multi_block"));
    }
    // With verification off the damaged bytes load as they are.
    let d = Deserializer::open(&path, ReadOptions::default().verify(false)).unwrap();
    let loaded = load_all(&d).unwrap();
    assert_eq!(
        loaded[target.index][2 * 4096 + 5],
        tensors[target.index].data[2 * 4096 + 5] ^ 0x10
    );
}

/// The mixed model plus `extra` tensors, written with 4 KiB checksum blocks (so that
/// tensors span several blocks) into a fresh directory.
fn mixed_file(extra: &[Tensor]) -> (tempfile::TempDir, std::path::PathBuf, Vec<Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let mut tensors = mixed_model();
    tensors.extend_from_slice(extra);
    let options = WriteOptions::default().checksum_block_size(4096).unwrap();
    write(&path, &tensors, options, &[("k", "v")]);
    (dir, path, tensors)
}

fn small_file() -> Vec<u8> {
    let (_dir, path, _) = mixed_file(&[]);
    std::fs::read(path).unwrap()
}

fn open_bytes(bytes: Vec<u8>) -> plaid::Result<Deserializer> {
    Deserializer::from_source(
        Box::new(MemorySource::new("mem.plaid", bytes)),
        ReadOptions::default(),
    )
}

#[test]
fn every_truncation_is_a_format_error_naming_the_offset() {
    let bytes = small_file();
    let len = bytes.len();
    let mut cuts: Vec<usize> = vec![
        0,
        1,
        9,
        10,
        31,
        32,
        33,
        100,
        4095,
        4096,
        4097,
        len / 2,
        len - 1,
    ];
    cuts.extend((0..len).step_by(997));
    for cut in cuts {
        match open_bytes(bytes[..cut].to_vec()) {
            Err(e @ Error::Format { .. }) => assert!(e.to_string().contains("offset"), "{e}"),
            Err(other) => panic!("cut at {cut}: expected a format error, got {other}"),
            Ok(_) => panic!("cut at {cut}: a truncated file opened"),
        }
    }
    // A file that shrinks after it was opened fails the load with the offset.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrinks.plaid");
    std::fs::write(&path, &bytes).unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len as u64 - 5000)
        .unwrap();
    let err = load_all(&d).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(
        err.to_string().contains("truncated") && err.to_string().contains("tensor '"),
        "{err}"
    );
}

#[test]
fn every_bit_flip_in_preamble_and_header_is_caught() {
    let bytes = small_file();
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    for byte in 0..32 + header_len {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 1 << bit;
            match open_bytes(damaged) {
                Err(Error::Format { .. }) | Err(Error::Unsupported(_)) => {}
                Err(other) => panic!("flip {byte}.{bit}: unexpected {other}"),
                Ok(_) => panic!("flip {byte}.{bit}: damaged header accepted"),
            }
        }
    }
}

#[test]
fn random_damage_never_panics() {
    let bytes = small_file();
    let noise = random_bytes(1 << 16, 7);
    for round in 0..3000usize {
        let mut damaged = bytes.clone();
        let n = 1 + noise[round % noise.len()] as usize % 8;
        for k in 0..n {
            let at = (noise[(round * 7 + k) % noise.len()] as usize * 131 + round * 31 + k)
                % damaged.len();
            damaged[at] = noise[(round + k * 13) % noise.len()];
        }
        if round % 5 == 0 {
            damaged.truncate(round * 17 % bytes.len());
        }
        if let Ok(d) = open_bytes(damaged) {
            // Whatever opens must load, or fail cleanly.
            match load_all(&d) {
                Ok(_) | Err(Error::Checksum { .. }) | Err(Error::Format { .. }) => {}
                Err(other) => panic!("round {round}: unexpected {other}"),
            }
        }
    }
    for seed in 0..200 {
        let garbage = random_bytes(seed as usize * 97, seed);
        assert!(open_bytes(garbage).is_err());
    }
    let text = b"This is a text file, not a model.\n".repeat(200);
    assert!(matches!(
        open_bytes(text),
        Err(Error::Format { offset: 0, .. })
    ));
}

#[test]
fn hostile_headers_are_rejected_with_a_clear_error() {
    let data = random_bytes(64, 1);
    let good = valid_header(16, &data);
    let mut file = file_with_header(&good, 64);
    file[4096..].copy_from_slice(&data);
    assert_eq!(load_all(&open_bytes(file).unwrap()).unwrap()[0], data);

    type Mutation = (&'static str, fn(&mut proto::Header));
    let cases: Vec<Mutation> = vec![
        ("alignment", |h| h.alignment = 1000),
        ("alignment", |h| h.alignment = 2048),
        ("block size", |h| h.checksum_block_size = 0),
        ("data offset", |h| h.data_offset = 8),
        ("data offset", |h| {
            h.tensors.clear();
            h.data_offset = 8192
        }),
        ("declares", |h| h.file_length += 1),
        ("unexpected bytes", |h| h.file_length -= 1),
        ("duplicate", |h| {
            // The first copy empty, so that the second passes every check but its name.
            let t = h.tensors[0].clone();
            h.tensors[0].shape = vec![0];
            h.tensors[0].length = 0;
            h.tensors[0].block_crc32c.clear();
            h.tensors.push(t)
        }),
        ("NUL", |h| h.tensors[0].name = "a\0b".into()),
        ("empty tensor name", |h| h.tensors[0].name.clear()),
        ("rank", |h| h.tensors[0].shape = vec![1; 65]),
        ("overflows", |h| h.tensors[0].shape = vec![u64::MAX / 2, 3]),
        ("overflows", |h| {
            h.tensors[0].shape = vec![0, 1 << 62, 1 << 62]
        }),
        ("does not match", |h| h.tensors[0].length = 60),
        ("unaligned", |h| h.tensors[0].offset = 4097),
        ("past the end", |h| {
            h.tensors[0].shape = vec![1 << 40];
            h.tensors[0].length = 4 << 40
        }),
        ("block checksums", |h| h.tensors[0].block_crc32c.push(1)),
        ("path is not a JSON array", |h| {
            h.tensors[0].path = "w".into()
        }),
        ("path is not a JSON array", |h| {
            h.tensors[0].path = "{\"w\":0}".into()
        }),
        ("path is not a JSON array", |h| {
            h.tensors[0].path = "[-1]".into()
        }),
        ("path names another tensor", |h| {
            h.tensors[0].path = "[\"other\"]".into()
        }),
        ("metadata key", |h| {
            h.metadata.insert(String::new(), "x".into());
        }),
        ("overlaps", |h| {
            let mut t = h.tensors[0].clone();
            t.name = "second".into();
            h.tensors.push(t)
        }),
    ];
    for (expected, mutate) in cases {
        let mut header = good.clone();
        mutate(&mut header);
        let err = open_bytes(file_with_header(&header, 64)).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{expected}: {err}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    let mut header = good.clone();
    header.tensors[0].dtype = 99;
    let err = open_bytes(file_with_header(&header, 64)).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("dtype"),
        "{err}"
    );

    // A header length far beyond the file is refused before anything is allocated.
    let mut file = file_with_header(&good, 64);
    file[16..24].copy_from_slice(&(200u64 << 20).to_le_bytes());
    let crc = plaid::format::checksum::crc32c(&file[..28]);
    file[28..32].copy_from_slice(&crc.to_le_bytes());
    let err = open_bytes(file).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_source_that_dies_mid_stream_fails_the_load_naming_the_tensor() {
    let bytes = small_file();
    let fail_from = bytes.len() as u64 - 20_000;
    let source = FailingSource::new(MemorySource::new("remote.plaid", bytes), fail_from);
    let d = Deserializer::from_source(Box::new(source), ReadOptions::default().threads(4).unwrap())
        .unwrap();
    let err = load_all(&d).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("remote.plaid") && text.contains("tensor '") && text.contains("offset"),
        "{text}"
    );
}

#[test]
fn writes_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let data = random_bytes(4096, 3);
    let entries = |dir: &Path| std::fs::read_dir(dir).unwrap().count();

    // Abandoned: nothing at the target, nothing left beside it.
    {
        let mut s = Serializer::create(&path, WriteOptions::default()).unwrap();
        s.add_tensor("w", DType::U8, &[4096], &data).unwrap();
        // Unnamed where the file system allows O_TMPFILE, else one temporary file.
        assert!(
            entries(dir.path()) <= 1,
            "at most the temporary file exists while writing"
        );
    }
    assert!(!path.exists());
    assert_eq!(entries(dir.path()), 0);

    // Replacing: the old file stays whole until the new one is complete.
    write(
        &path,
        &[tensor("old", DType::U8, &[10], 1)],
        WriteOptions::default(),
        &[],
    );
    let old = std::fs::read(&path).unwrap();
    let mut s = Serializer::create(&path, WriteOptions::default()).unwrap();
    s.add_tensor("new", DType::U8, &[4096], &data).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), old);
    s.finish().unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    assert_eq!(d.tensors()[0].name, "new");
    assert_eq!(entries(dir.path()), 1);

    // A failed rename (a directory appeared at the target meanwhile) leaves nothing behind.
    let blocked = dir.path().join("blocked.plaid");
    let mut s = Serializer::create(&blocked, WriteOptions::default()).unwrap();
    s.add_tensor("w", DType::U8, &[4096], &data).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("x"), b"x").unwrap();
    let err = s.finish().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(entries(dir.path()), 2);

    // A directory as the target, or a missing directory, fails at creation.
    for target in [dir.path().to_path_buf(), dir.path().join("sub/")] {
        let err = Serializer::create(&target, WriteOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::Io { .. }) && err.to_string().contains("directory"),
            "{err}"
        );
    }
    assert!(matches!(
        Serializer::create("", WriteOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    let err = Deserializer::open(dir.path(), ReadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("directory"),
        "{err}"
    );
    assert!(matches!(
        Serializer::create(
            dir.path().join("no/such/dir/m.plaid"),
            WriteOptions::default()
        ),
        Err(Error::Io { .. })
    ));
}

#[test]
fn bad_tensors_are_refused_when_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serializer::create(dir.path().join("m.plaid"), WriteOptions::default()).unwrap();
    let data = [0u8; 16];
    assert!(
        s.add_tensor("a", DType::F32, &[3], &data).is_err(),
        "size mismatch"
    );
    assert!(
        s.add_tensor("", DType::U8, &[16], &data).is_err(),
        "empty name"
    );
    assert!(
        s.add_tensor("a\0", DType::U8, &[16], &data).is_err(),
        "NUL in name"
    );
    assert!(
        s.add_tensor("a", DType::U8, &[1; 65], &data[..1]).is_err(),
        "rank"
    );
    assert!(
        s.add_tensor("a", DType::U64, &[u64::MAX, 2], &data)
            .is_err(),
        "overflow"
    );
    s.add_tensor("a", DType::U8, &[16], &data).unwrap();
    assert!(
        s.add_tensor("a", DType::U8, &[16], &data).is_err(),
        "duplicate"
    );
    assert!(s.set_metadata("", "v").is_err());
    assert!(WriteOptions::default().alignment(1000).is_err());
    assert!(WriteOptions::default().checksum_block_size(1024).is_err());
    assert!(ReadOptions::default().request_bytes(0).is_err());
    assert_eq!(s.tensor_count(), 1);
}

#[test]
fn zero_tensors_and_metadata_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.plaid");
    write(&path, &[], WriteOptions::default(), &[("only", "metadata")]);
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    assert!(d.tensors().is_empty());
    let expected: BTreeMap<String, String> = [("only".to_string(), "metadata".to_string())].into();
    assert_eq!(d.metadata(), &expected);
    assert_eq!(load_all(&d).unwrap().len(), 0);
}

#[test]
fn headers_that_would_decode_into_far_more_memory_are_refused_first() {
    use plaid::format::plaid::{MAX_METADATA_ENTRIES, MAX_RANK, MAX_TENSORS};
    let good = valid_header(16, &random_bytes(64, 1));
    let base = prost::Message::encode_to_vec(&good);
    // Empty tensors are 2 bytes on the wire each; one more than the limit.
    // Tensors of 5 bytes each (a one-byte name and a dtype, the shortest that can be
    // valid), one more than the limit: shorter entries are refused one by one first.
    let mut flood = base.clone();
    for _ in 0..MAX_TENSORS {
        flood.extend_from_slice(&[0x2a, 0x05, 0x0a, 0x01, b'a', 0x10, 0x02]);
    }
    // Metadata entries {"a": ""} of 5 bytes each.
    let mut entries = base.clone();
    for _ in 0..=MAX_METADATA_ENTRIES {
        entries.extend_from_slice(&[0x32, 0x03, 0x0a, 0x01, b'a']);
    }
    // One tensor whose packed shape holds a million 1-byte dimensions.
    let mut shape = base.clone();
    let mut tensor = vec![0x1a];
    let dims = 1usize << 20;
    let mut n = dims;
    while n >= 0x80 {
        tensor.push((n as u8) | 0x80);
        n >>= 7;
    }
    tensor.push(n as u8);
    tensor.resize(tensor.len() + dims, 1);
    shape.push(0x2a);
    let mut len = tensor.len();
    while len >= 0x80 {
        shape.push((len as u8) | 0x80);
        len >>= 7;
    }
    shape.push(len as u8);
    shape.extend_from_slice(&tensor);

    for (what, header) in [
        ("tensors", flood),
        ("metadata entries", entries),
        ("rank", shape),
    ] {
        let preamble = plaid::format::plaid::Preamble {
            version: plaid::format::plaid::VERSION,
            header_crc32c: plaid::format::checksum::crc32c(&header),
            header_len: header.len() as u64,
            flags: 0,
        };
        let mut file = preamble.encode().to_vec();
        file.extend_from_slice(&header);
        file.resize(file.len() + 64, 0);
        let err = open_bytes(file).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{what}: {err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    const { assert!(MAX_RANK < 1 << 20) };
}

#[test]
fn long_target_names_and_special_files() {
    let dir = tempfile::tempdir().unwrap();
    // The longest name a file system allows still gets a temporary file beside it.
    let path = dir.path().join(format!("{}.plaid", "m".repeat(249)));
    write(
        &path,
        &[tensor("w", DType::U8, &[3], 1)],
        WriteOptions::default(),
        &[],
    );
    assert_eq!(
        Deserializer::open(&path, ReadOptions::default())
            .unwrap()
            .tensors()
            .len(),
        1
    );

    // A FIFO is refused at once instead of blocking until a writer appears.
    let fifo = dir.path().join("pipe.plaid");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c_path` is a CString, NUL-terminated and alive across the call; mkfifo only
    // reads it.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let err = Deserializer::open(&fifo, ReadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("not a regular file"),
        "{err}"
    );

    let options = ReadOptions::default().verify(false).threads(3).unwrap();
    assert_eq!((options.get_verify(), options.get_threads()), (false, 3));
    let options = WriteOptions::default().alignment(8192).unwrap();
    assert_eq!(
        (
            options.get_alignment(),
            options.get_checksum_block_size(),
            options.get_sync()
        ),
        (8192, 4 << 20, true)
    );
}

#[test]
fn progress_is_reported_and_can_cancel() {
    use std::sync::Mutex;
    let (_dir, path, tensors) = mixed_file(&[]);
    let options = ReadOptions::default()
        .threads(3)
        .unwrap()
        .request_bytes(4096)
        .unwrap()
        .progress_interval(std::time::Duration::ZERO);
    let d = Deserializer::open(&path, options).unwrap();
    let total: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();

    let seen = Mutex::new(Vec::new());
    let stats = d
        .verify_with_progress(&|p: &plaid::Progress| {
            seen.lock().unwrap().push(*p);
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(stats.bytes, total);
    let last = seen.last().unwrap();
    assert_eq!((last.bytes_done, last.bytes_total), (total, total));
    assert_eq!(
        (last.tensors_done, last.tensors_total),
        (tensors.len(), tensors.len())
    );
    assert!(
        seen.len() > 5,
        "a report per chunk with a zero interval: {}",
        seen.len()
    );
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));

    // Cancelling from a report stops the load with that error.
    let mut buffers: Vec<Vec<u8>> = tensors.iter().map(|t| vec![0; t.data.len()]).collect();
    let mut slots: Vec<Option<&mut [u8]>> =
        buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
    let err = d
        .load_with_progress(
            &mut |t: &TensorInfo| Ok(Destination::Host(slots[t.index].take().unwrap())),
            &|p: &plaid::Progress| {
                if p.bytes_done > 0 {
                    Err(Error::Cancelled("enough".into()))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err}");
}

#[test]
fn direct_io_reads_the_same_bytes_into_aligned_and_unaligned_destinations() {
    let (_dir, path, tensors) = mixed_file(&[tensor("big", DType::U8, &[(9 << 20) + 123], 77)]);
    let source = plaid::source::FileSource::open_with(&path, true).unwrap();
    if !source.is_direct() {
        eprintln!("this file system refuses O_DIRECT: only the fallback is tested");
    }
    for threads in [1, 3] {
        let options = ReadOptions::default()
            .direct_io(true)
            .threads(threads)
            .unwrap()
            .request_bytes(1 << 20)
            .unwrap();
        assert!(options.get_direct_io());
        let d = Deserializer::open(&path, options).unwrap();
        let loaded = load_all(&d).unwrap();
        for (t, bytes) in tensors.iter().zip(&loaded) {
            assert_eq!(bytes, &t.data, "tensor {}", t.name);
        }
        // A page-aligned destination takes the direct path without the bounce buffer.
        let big = d.find("big").unwrap();
        let len = tensors[big].data.len();
        let mut arena = vec![0u8; len + 8192];
        let skip = arena.as_ptr().align_offset(4096);
        for start in [skip, skip + 1] {
            let dest = &mut arena[start..start + len];
            let mut slot = Some(dest);
            d.load(&mut |t: &TensorInfo| {
                Ok(if t.index == big {
                    Destination::Host(slot.take().unwrap())
                } else {
                    Destination::Skip
                })
            })
            .unwrap();
            assert!(
                arena[start..start + len] == tensors[big].data[..],
                "start {start}"
            );
        }
    }
    // Truncation after opening is still a format error naming the offset.
    let d = Deserializer::open(&path, ReadOptions::default().direct_io(true)).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 5000)
        .unwrap();
    let err = load_all(&d).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("offset"),
        "{err}"
    );
}

/// The mixed model plus tensors large enough (reads of 64 KiB and more) to be copied out
/// of the file's mapping rather than read with `pread`.
fn large_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<Tensor>) {
    mixed_file(&[
        tensor("big.a", DType::U8, &[(3 << 20) + 5], 91),
        tensor("big.b", DType::F32, &[1024, 1000], 92),
        tensor("big.c", DType::U8, &[200_000], 93),
    ])
}

#[test]
fn mapped_and_pread_copies_read_the_same_bytes() {
    let (_dir, path, tensors) = large_file();
    for mmap in [true, false] {
        for threads in [1, 3] {
            for chunk in [64 << 10, 1 << 20] {
                let options = ReadOptions::default()
                    .mmap(mmap)
                    .threads(threads)
                    .unwrap()
                    .request_bytes(chunk)
                    .unwrap();
                assert_eq!(options.get_mmap(), mmap);
                let d = Deserializer::open(&path, options).unwrap();
                let loaded = load_all(&d).unwrap();
                for (t, bytes) in tensors.iter().zip(&loaded) {
                    assert!(bytes == &t.data, "tensor {} (mmap {mmap})", t.name);
                }
                assert_eq!(
                    d.verify().unwrap().bytes,
                    d.tensors().iter().map(|t| t.nbytes).sum::<u64>()
                );
            }
        }
    }
}

#[test]
fn zero_copy_views_are_the_file_bytes_verified_on_first_view_or_up_front() {
    let (_dir, path, tensors) = large_file();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    d.map().unwrap();
    for (i, t) in tensors.iter().enumerate() {
        let view = d.view(i).unwrap();
        assert!(view == &t.data[..], "tensor {}", t.name);
        assert_eq!(view.as_ptr() as usize % 4096, 0, "tensor {}", t.name);
        assert_eq!(d.view(i).unwrap().as_ptr(), view.as_ptr());
    }
    assert!(matches!(d.view(tensors.len()), Err(Error::NotFound(_))));

    // Views of bytes in memory work the same way.
    let m = open_bytes(std::fs::read(&path).unwrap()).unwrap();
    let b = m.find("big.b").unwrap();
    assert!(m.view(b).unwrap() == &tensors[b].data[..]);

    // Damage one byte of big.b.
    let mut bytes = std::fs::read(&path).unwrap();
    let b = d.find("big.b").unwrap();
    let at = d.tensor(b).unwrap().offset as usize + 777_777;
    bytes[at] ^= 1;
    drop(d);
    std::fs::write(&path, &bytes).unwrap();

    // On first view: mapping reads nothing; only the damaged tensor's view fails.
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    d.map().unwrap();
    let a = d.find("big.a").unwrap();
    assert!(d.view(a).unwrap() == &tensors[a].data[..]);
    for _ in 0..2 {
        let err = d.view(b).unwrap_err();
        assert!(
            matches!(&err, Error::Checksum { tensor, .. } if tensor == "big.b"),
            "{err}"
        );
    }
    // Up front: mapping fails, naming the tensor.
    let options = ReadOptions::default().verify_views_up_front(true);
    assert!(options.get_verify_views_up_front());
    let d = Deserializer::open(&path, options).unwrap();
    let err = d.map().unwrap_err();
    assert!(
        matches!(&err, Error::Checksum { tensor, .. } if tensor == "big.b"),
        "{err}"
    );
    // Without verification the view shows the bytes as they are.
    let d = Deserializer::open(&path, ReadOptions::default().verify(false)).unwrap();
    assert_eq!(d.view(b).unwrap()[777_777], tensors[b].data[777_777] ^ 1);
}

#[test]
fn a_file_truncated_under_its_mapping_is_an_error_not_a_crash() {
    let (_dir, path, tensors) = large_file();
    let options = ReadOptions::default()
        .threads(2)
        .unwrap()
        .request_bytes(1 << 20)
        .unwrap();
    let d = Deserializer::open(&path, options).unwrap();
    let a = d.find("big.a").unwrap();
    let view = d.view(a).unwrap();
    let cut = d.tensor(a).unwrap().offset + (1 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    // Touching the pages past the new end reads zeros instead of raising SIGBUS.
    let past: u64 = view[1 << 20..].iter().map(|&b| u64::from(b)).sum();
    assert_eq!(past, 0);
    assert!(view[..1 << 20] == tensors[a].data[..1 << 20]);

    // And plaid now says what happened, for views and for copies.
    let err = d.view(a).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("shrank"),
        "{err}"
    );
    let err = load_all(&d).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("offset"),
        "{err}"
    );
    // A deserializer opened on the truncated file fails cleanly.
    assert!(Deserializer::open(&path, ReadOptions::default()).is_err());
}

/// A `SIGBUS` that is not plaid's still takes the default action: run in a child process
/// that installs plaid's handler, then faults on a mapping of its own.
#[test]
fn a_sigbus_outside_plaid_mappings_still_kills() {
    if let Some(path) = std::env::var_os("PLAID_SIGBUS_CHILD") {
        let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
        d.map().unwrap();
        let own = tempfile::tempfile().unwrap();
        own.set_len(1 << 16).unwrap();
        // SAFETY: `own` is open across the mmap and the result is checked; offset 8192 lies
        // inside the 64 KiB mapping. Once the file is truncated that read raises SIGBUS,
        // which is what this child process exists to show.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                1 << 16,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&own),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            own.set_len(0).unwrap();
            let byte = std::ptr::read_volatile(p.cast::<u8>().add(8192));
            eprintln!("read {byte} past the end without a signal");
        }
        std::process::exit(0);
    }
    let (_dir, path, _) = large_file();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_sigbus_outside_plaid_mappings_still_kills",
            "--nocapture",
        ])
        .env("PLAID_SIGBUS_CHILD", &path)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.status.signal(),
        Some(libc::SIGBUS),
        "{status:?} {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Small tensors are read in batches: every mix of loaded and skipped tensors, sizes and
/// chunk sizes lands every byte, and errors still name the tensor they hit.
#[test]
fn small_tensors_read_in_batches_land_and_fail_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.plaid");
    let tensors: Vec<Tensor> = (0..300u64)
        .map(|i| {
            let len = [1, 17, 4096, 5000, 70_000, 300_000][(i % 6) as usize];
            tensor(&format!("t{i}"), DType::U8, &[len], 1000 + i)
        })
        .collect();
    let options = WriteOptions::default().checksum_block_size(4096).unwrap();
    write(&path, &tensors, options, &[]);
    for (mmap, threads, chunk) in [
        (true, 1, 1 << 20),
        (true, 3, 64 << 10),
        (false, 2, 16 << 20),
    ] {
        let options = ReadOptions::default()
            .mmap(mmap)
            .threads(threads)
            .unwrap()
            .request_bytes(chunk)
            .unwrap();
        let d = Deserializer::open(&path, options).unwrap();
        // Every third tensor skipped: batches span gaps.
        let mut buffers: Vec<Vec<u8>> = tensors.iter().map(|t| vec![0xA5; t.data.len()]).collect();
        let mut slots: Vec<Option<&mut [u8]>> =
            buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
        let stats = d
            .load(&mut |t: &TensorInfo| {
                Ok(match t.index % 3 {
                    2 => Destination::Skip,
                    _ => Destination::Host(slots[t.index].take().unwrap()),
                })
            })
            .unwrap();
        assert_eq!(stats.tensors, 200);
        for (i, (t, b)) in tensors.iter().zip(&buffers).enumerate() {
            if i % 3 == 2 {
                assert!(
                    b.iter().all(|&x| x == 0xA5),
                    "skipped {} was written",
                    t.name
                );
            } else {
                assert!(
                    b == &t.data,
                    "tensor {} (mmap {mmap}, chunk {chunk})",
                    t.name
                );
            }
        }
    }

    // One damaged byte in a small tensor in the middle of a batch.
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let victim = d.tensor(d.find("t100").unwrap()).unwrap().clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim.offset as usize + 3] ^= 0x40;
    drop(d);
    std::fs::write(&path, &bytes).unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let err = load_all(&d).unwrap_err();
    assert!(
        matches!(&err, Error::Checksum { tensor, .. } if tensor == "t100"),
        "{err}"
    );

    // A source dying inside a batch names the first tensor it cannot deliver.
    bytes[victim.offset as usize + 3] ^= 0x40;
    let source = FailingSource::new(MemorySource::new("remote.plaid", bytes), victim.offset + 2);
    let d = Deserializer::from_source(Box::new(source), ReadOptions::default().threads(1).unwrap())
        .unwrap();
    let err = load_all(&d).unwrap_err();
    assert!(err.to_string().contains("tensor 't100'"), "{err}");
}

#[test]
fn load_to_host_allocates_aligned_fresh_tensors() {
    let (_dir, path, tensors) = large_file();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let arena = d.load_to_host(&mut |_| true, None).unwrap();
    for (i, t) in tensors.iter().enumerate() {
        let bytes = arena.tensor(i).unwrap();
        assert!(bytes == &t.data[..], "tensor {}", t.name);
        assert_eq!(bytes.as_ptr() as usize % plaid::sink::ARENA_ALIGN, 0);
    }
    assert!(arena.tensor(tensors.len()).is_none());
    // Filtered: only the big ones, with progress.
    let reports = std::sync::atomic::AtomicUsize::new(0);
    let progress = |_: &plaid::Progress| {
        reports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    let mut arena = d
        .load_to_host(&mut |t| t.name.starts_with("big."), Some(&progress))
        .unwrap();
    assert!(reports.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let b = d.find("big.b").unwrap();
    assert!(arena.tensor(0).is_none());
    assert!(arena.tensor_mut(b).unwrap() == &tensors[b].data[..]);
    let selected: usize = tensors
        .iter()
        .filter(|t| t.name.starts_with("big."))
        .map(|t| t.data.len())
        .sum();
    assert!(arena.allocated() <= selected + 3 * plaid::sink::ARENA_ALIGN);
    // Huge pages (not the default) give the same bytes.
    let huge_pages = ReadOptions::default().huge_pages(true);
    assert!(huge_pages.get_huge_pages() && !ReadOptions::default().get_huge_pages());
    let plain = Deserializer::open(&path, huge_pages).unwrap();
    let arena = plain.load_to_host(&mut |_| true, None).unwrap();
    assert!(arena.tensor(b).unwrap() == &tensors[b].data[..]);
    // A damaged tensor fails the whole call.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[d.tensor(b).unwrap().offset as usize + 5] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let err = d.load_to_host(&mut |_| true, None).unwrap_err();
    assert!(
        matches!(&err, Error::Checksum { tensor, .. } if tensor == "big.b"),
        "{err}"
    );
}
