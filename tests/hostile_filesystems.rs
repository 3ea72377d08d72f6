//! Hostile files and file systems: opening never blocks on what a path turns into, writes
//! never replace what is not a regular file, NUL bytes in names are malformed files,
//! shards cannot escape their checkpoint's folder, and messages about files that are not
//! what they claim do not quote the files' bytes. Each test failed before its fix.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::CString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::random_bytes;
use plaid::{DType, Deserializer, Error, ReadOptions, Serializer, WriteOptions};

fn mkfifo(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a CString, NUL-terminated and alive across the call; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn plaid_file(path: &Path) -> Vec<u8> {
    let data = random_bytes(4096, 3);
    let mut w = Serializer::create(path, WriteOptions::default().sync(false)).unwrap();
    w.add_tensor("w", DType::U8, &[4096], &data).unwrap();
    w.finish().unwrap();
    data
}

/// A safetensors file with one tensor named `name` and metadata `metadata`.
fn safetensors(name: &str, metadata: Option<(&str, &str)>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert(
        name.to_owned(),
        serde_json::json!({"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}),
    );
    if let Some((k, v)) = metadata {
        header.insert("__metadata__".into(), serde_json::json!({ k: v }));
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&text);
    file.extend_from_slice(&[1, 2, 3, 4]);
    file
}

#[test]
fn opening_never_blocks_on_a_path_that_becomes_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let regular = dir.path().join("regular.plaid");
    let fifo = dir.path().join("fifo");
    plaid_file(&regular);
    mkfifo(&fifo);
    // A FIFO at the path: refused at once.
    match Deserializer::open(&fifo, ReadOptions::default()) {
        Err(Error::Io { context, source }) => {
            assert!(context.contains("fifo"), "{context}");
            assert!(
                source.to_string().contains("not a regular file"),
                "{source}"
            );
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // The path flips between a regular file and a FIFO while it is opened again and again:
    // every open ends (checking the type before opening by name would block forever on
    // the FIFO whenever the swap falls between the check and the open).
    std::fs::copy(&regular, &path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, path, regular) = (stop.clone(), path.clone(), regular.clone());
        std::thread::spawn(move || {
            let (file_copy, fifo_copy) = (path.with_extension("file"), path.with_extension("fifo"));
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&file_copy);
                std::fs::hard_link(&regular, &file_copy).unwrap();
                std::fs::rename(&file_copy, &path).unwrap();
                mkfifo(&fifo_copy);
                std::fs::rename(&fifo_copy, &path).unwrap();
            }
        })
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let opener = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut outcomes = (0, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                match Deserializer::open(&path, ReadOptions::default()) {
                    Ok(_) => outcomes.0 += 1,
                    Err(_) => outcomes.1 += 1,
                }
            }
            done_tx.send(outcomes).unwrap();
        })
    };
    let outcome = done_rx.recv_timeout(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let outcomes = outcome.expect("an open blocked on a FIFO");
    opener.join().unwrap();
    // Both kinds were met.
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
}

#[test]
fn writes_never_replace_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("m.plaid");
    plaid_file(&source);
    let fifo = dir.path().join("target.fifo");
    mkfifo(&fifo);
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let d = Deserializer::open(&source, ReadOptions::default()).unwrap();
    for target in [&fifo, &folder] {
        let started = Instant::now();
        let refused = [
            Serializer::create(target, WriteOptions::default()).map(drop),
            plaid::convert::to_plaid(&d, target, WriteOptions::default(), &mut |_, _| {}),
            plaid::convert::to_safetensors(&d, target, &mut |_, _| {}),
        ];
        for r in refused {
            assert!(
                matches!(r, Err(Error::Io { .. })),
                "{}: {r:?}",
                target.display()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::symlink_metadata(&folder).unwrap().is_dir());
    // No temporary file was left beside them.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A symlink at the target is replaced by the new file; what it pointed to is kept.
    let pointed = dir.path().join("pointed.plaid");
    std::fs::write(&pointed, b"keep me").unwrap();
    let link = dir.path().join("link.plaid");
    std::os::unix::fs::symlink(&pointed, &link).unwrap();
    plaid::convert::to_plaid(&d, &link, WriteOptions::default(), &mut |_, _| {}).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(std::fs::read(&pointed).unwrap(), b"keep me");
}

#[test]
fn a_nul_byte_in_a_name_is_a_malformed_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("name.safetensors", safetensors("a\0b", None)),
        ("meta.safetensors", safetensors("w", Some(("k\0", "v")))),
        ("value.safetensors", safetensors("w", Some(("k", "v\0")))),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        match Deserializer::open(&path, ReadOptions::default()) {
            Err(Error::Format { detail, .. }) => assert!(detail.contains("NUL"), "{detail}"),
            other => panic!("{name}: expected a format error, got {other:?}"),
        }
        // Through the C API: PLAID_ERR_FORMAT, not INVALID_ARGUMENT.
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let mut d = std::ptr::null_mut();
        // SAFETY: `c` is a CString alive across the call, NULL options mean the defaults, and
        // `d` is a writable local (left NULL by this failing open, so nothing to free).
        let status = unsafe {
            plaid::ffi::deserializer::plaid_deserializer_open(c.as_ptr(), std::ptr::null(), &mut d)
        };
        assert_eq!(status, plaid::ffi::status::PLAID_ERR_FORMAT, "{name}");
    }
    // Tensorizer: a raw NUL in a tensor name.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorizer/v1_by_tensorizer_1.1.0.tensors");
    let d = Deserializer::open(&fixture, ReadOptions::default()).unwrap();
    let first = d.tensors()[0].name.clone();
    let mut bytes = std::fs::read(&fixture).unwrap();
    let at = bytes
        .windows(first.len())
        .position(|w| w == first.as_bytes())
        .unwrap();
    bytes[at] = 0;
    // Every copy of the name (the metadata entry and the tensor's own header).
    while let Some(next) = bytes
        .windows(first.len())
        .position(|w| w == first.as_bytes())
    {
        bytes[next] = 0;
    }
    let path = dir.path().join("nul.tensors");
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Deserializer::open(&path, ReadOptions::default()),
        Err(Error::Format { .. })
    ));
}

#[test]
fn messages_about_foreign_files_do_not_quote_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"SECRETKEY=hunter2-and-some-more-bytes-of-a-private-file-that-is-not-a-model";
    let path = dir.path().join("private.txt");
    std::fs::write(&path, secret).unwrap();
    let err = Deserializer::open(&path, ReadOptions::default())
        .unwrap_err()
        .to_string();
    let hex: String = secret[..10].iter().map(|b| format!("{b:02x}")).collect();
    let as_int = u64::from_le_bytes(secret[..8].try_into().unwrap()).to_string();
    assert!(!err.contains(&hex) && !err.contains(&as_int), "{err}");
    assert!(!err.contains("SECRET") && !err.contains("hunter2"), "{err}");
    // A file whose first 8 bytes make a huge safetensors header length.
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{\"x\":1}");
    std::fs::write(&path, &huge).unwrap();
    let err = Deserializer::open(&path, ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(!err.contains(&(1u64 << 40).to_string()), "{err}");
}

#[test]
fn shards_cannot_escape_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret.safetensors"), safetensors("w", None)).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join("secret.safetensors"),
        checkpoint.join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}});
    let index_path = checkpoint.join("model.safetensors.index.json");
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    match Deserializer::open(&index_path, ReadOptions::default()) {
        Err(Error::Io { source, .. }) => {
            assert!(source.to_string().contains("outside"), "{source}")
        }
        other => panic!("expected the shard to be refused, got {other:?}"),
    }
    // A read option names another folder to allow.
    let allowed = ReadOptions::default().shard_root(dir.path());
    assert_eq!(
        Deserializer::open(&index_path, allowed)
            .unwrap()
            .tensors()
            .len(),
        1
    );

    // A Hugging Face cache snapshot: shards are symlinks into the model's blobs, allowed.
    let model = dir.path().join("hub/models--org--name");
    let snapshot = model.join("snapshots/0123abc");
    std::fs::create_dir_all(model.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(model.join("blobs/deadbeef"), safetensors("w", None)).unwrap();
    // Relative, as the hub makes them: up from the snapshot to the model's blobs.
    std::os::unix::fs::symlink(
        Path::new("..").join("..").join("blobs").join("deadbeef"),
        snapshot.join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    std::fs::write(
        snapshot.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let d = Deserializer::open(
        snapshot.join("model.safetensors.index.json"),
        ReadOptions::default(),
    )
    .unwrap();
    assert_eq!(d.read_tensor(0).unwrap(), vec![1, 2, 3, 4]);
}

/// What `plaid` tensors a file holds, if it is a complete, valid file.
fn contents(path: &Path) -> Option<Vec<Vec<u8>>> {
    let d = Deserializer::open(path, ReadOptions::default()).ok()?;
    d.verify().ok()?;
    common::load_all(&d).ok()
}

/// The writer of `writers_killed_at_random_points_leave_the_old_file_or_the_new_one`, run
/// in a child process: convert one file to plaid's format over another.
#[test]
#[ignore = "run as a child process by writers_killed_at_random_points_leave_the_old_file_or_the_new_one"]
fn convert_in_a_child() {
    let from = std::env::var_os("PLAID_CHILD_CONVERT_FROM").expect("run by its parent test");
    let to = std::env::var_os("PLAID_CHILD_CONVERT_TO").unwrap();
    let source = Deserializer::open(&from, ReadOptions::default()).unwrap();
    plaid::convert::to_format(
        &source,
        Path::new(&to),
        "plaid",
        WriteOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
}

#[test]
fn writers_killed_at_random_points_leave_the_old_file_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    // Two sources of the same shape and different bytes: each write replaces the other.
    let sources: Vec<_> = (0..2u64)
        .map(|k| {
            let path = dir.path().join(format!("source{k}.plaid"));
            let mut w = Serializer::create(&path, WriteOptions::default().sync(false)).unwrap();
            let tensors: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(6 << 20, 10 * k + i)).collect();
            for (i, t) in tensors.iter().enumerate() {
                w.add_tensor(&format!("t{i}"), DType::U8, &[t.len() as u64], t)
                    .unwrap();
            }
            w.finish().unwrap();
            (path, tensors)
        })
        .collect();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("model.plaid");
    // Each writer is a child process: this test binary running `convert_in_a_child`.
    let convert = |k: usize| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "convert_in_a_child",
                "--test-threads=1",
            ])
            .env("PLAID_CHILD_CONVERT_FROM", &sources[k].0)
            .env("PLAID_CHILD_CONVERT_TO", &target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long one conversion takes here.
    let started = Instant::now();
    assert!(convert(0).wait().unwrap().success());
    let typical = started.elapsed();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    for round in 0..30 {
        let before = contents(&target);
        let k = (round + 1) % 2;
        let mut child = convert(k);
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = typical.mul_f64((state % 1000) as f64 / 1000.0 * 1.2);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
        let now = contents(&target).expect("the target is always a complete, valid file");
        assert!(
            Some(&now) == before.as_ref() || now == sources[k].1,
            "round {round}: the target is neither the old file nor the new one"
        );
    }
    assert!(kills > 5, "only {kills} writers were killed mid-way");
    // The next complete write to the same target removes what the killed ones left.
    assert!(convert(0).wait().unwrap().success());
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "model.plaid")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(contents(&target).unwrap(), sources[0].1);
}

#[test]
fn an_unfinished_write_has_no_name_where_the_file_system_allows() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.plaid");
    let data = random_bytes(1 << 20, 5);
    let mut w = Serializer::create(&target, WriteOptions::default().sync(false)).unwrap();
    w.add_tensor("w", DType::U8, &[data.len() as u64], &data)
        .unwrap();
    let listing = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    // Does this file system take O_TMPFILE? (Linux's tmpfs, ext4, xfs and btrfs do.)
    let unnamed = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir.path())
        .is_ok();
    let during = listing();
    if unnamed {
        assert!(during.is_empty(), "an unfinished write shows {during:?}");
    } else {
        assert!(
            during.len() == 1
                && during[0].starts_with(".model.plaid.")
                && during[0].ends_with(".partial"),
            "{during:?}"
        );
    }
    w.finish().unwrap();
    assert_eq!(listing(), vec!["model.plaid".to_string()]);
    assert_eq!(contents(&target).unwrap(), vec![data]);
    // Dropped unfinished: nothing appears, nothing is left.
    let mut w =
        Serializer::create(dir.path().join("other.plaid"), WriteOptions::default()).unwrap();
    w.add_tensor("w", DType::U8, &[4], &[1, 2, 3, 4]).unwrap();
    drop(w);
    assert_eq!(listing(), vec!["model.plaid".to_string()]);
}

#[test]
fn memory_the_system_refuses_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    // A 99 MB safetensors header (blank JSON: all of it must be read before it parses).
    let safetensors = dir.path().join("big.safetensors");
    let header_len = 99_000_000u64;
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.push(b'{');
    bytes.resize(8 + header_len as usize - 1, b' ');
    bytes.push(b'}');
    std::fs::write(&safetensors, &bytes).unwrap();
    // A plaid file whose preamble declares a 200 MB header (the allocation comes before
    // the header's checksum is checked).
    let plaid = dir.path().join("big.plaid");
    let preamble = plaid::format::plaid::Preamble {
        version: plaid::format::plaid::VERSION,
        header_crc32c: 0,
        header_len: 200_000_000,
        flags: 0,
    };
    let mut bytes = preamble.encode().to_vec();
    bytes.resize(32 + 200_000_000 + 4096, 0);
    std::fs::write(&plaid, &bytes).unwrap();
    drop(bytes);

    const MIB: u64 = 1 << 20;
    for path in [&safetensors, &plaid] {
        let (code, stderr) =
            common::plaid_with_address_space(&["inspect", path.to_str().unwrap()], 64 * MIB);
        assert_eq!(code, Some(1), "{path:?} under 64 MiB: {stderr}");
        assert!(stderr.contains("out of memory"), "{stderr}");
        assert!(
            stderr.contains(path.file_name().unwrap().to_str().unwrap()),
            "{stderr}"
        );
    }
    // Room for the header once (not twice, as a read-ahead copy of it needed before): the
    // safetensors file opens.
    let (code, stderr) =
        common::plaid_with_address_space(&["inspect", safetensors.to_str().unwrap()], 160 * MIB);
    assert_eq!(code, Some(0), "{stderr}");
}
