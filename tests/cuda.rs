//! The CUDA paths, tested without a GPU against the stand-in driver in
//! `tests/cuda/fake_cuda.c`: it is built here into `libcuda.so.1`, and each scenario runs
//! in a child process (this test binary again, one `#[ignore]`d test) whose
//! `LD_LIBRARY_PATH` finds it. The stand-in defers every asynchronous copy until its
//! stream or event is synchronized, so a staging buffer reused too early shows up as
//! wrong bytes, and it refuses calls made without a current context.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[cfg(feature = "remote")]
#[path = "remote/fault_server.rs"]
mod fault_server;

use std::ffi::c_void;
use std::path::Path;
use std::process::Command;

use common::random_bytes;
use plaid::{
    DType, Deserializer, Destination, Error, ReadOptions, Serializer, TensorInfo, View,
    WriteOptions,
};

/// Build the stand-in (or its no-device variant) into `dir/libcuda.so.1`.
fn build_standin(dir: &Path, no_device: bool) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda/fake_cuda.c");
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args([
        "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o",
    ])
    .arg(dir.join("libcuda.so.1"))
    .arg(&source)
    .arg("-lpthread");
    if no_device {
        cc.arg("-DFAKE_CUDA_NO_DEVICE");
    }
    let out = cc
        .output()
        .expect("a C compiler (cc) to build the stand-in driver");
    assert!(
        out.status.success(),
        "building the stand-in driver failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run the ignored test `name` in a child process against a stand-in driver.
fn run_child(name: &str, no_device: bool, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    build_standin(dir.path(), no_device);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LD_LIBRARY_PATH", dir.path())
        .env("PLAID_CUDA_CHILD", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed against the stand-in driver:\n{stdout}\n{stderr}"
    );
}

/// The stand-in, loaded once for the whole child process (unloading it would lose its
/// state).
fn standin() -> &'static libloading::Library {
    static LIB: std::sync::OnceLock<libloading::Library> = std::sync::OnceLock::new();
    // SAFETY: the stand-in (fake_cuda.c) has no library initialisers, so loading it has no
    // preconditions; the OnceLock keeps it loaded for the rest of the process.
    LIB.get_or_init(|| unsafe { libloading::Library::new("libcuda.so.1").unwrap() })
}

fn in_child() {
    assert!(
        std::env::var_os("PLAID_CUDA_CHILD").is_some(),
        "run by the parent tests with the stand-in driver, not directly"
    );
}

/// The stand-in's counters: pinned bytes now and at the peak, copies performed, misuse.
fn stats() -> (u64, u64, u64, u64) {
    // SAFETY: `fake_cuda_stats` takes four `uint64_t *` in fake_cuda.c, as the Symbol's type
    // says, and each points to a local here; `standin` keeps the library loaded.
    unsafe {
        let lib = standin();
        let f: libloading::Symbol<unsafe extern "C" fn(*mut u64, *mut u64, *mut u64, *mut u64)> =
            lib.get(b"fake_cuda_stats").unwrap();
        let (mut a, mut b, mut c, mut d) = (0, 0, 0, 0);
        f(&mut a, &mut b, &mut c, &mut d);
        (a, b, c, d)
    }
}

fn reset_stats() {
    // SAFETY: `fake_cuda_reset_stats` is `void (void)` in fake_cuda.c, as the Symbol's type
    // says; `standin` keeps the library loaded.
    unsafe {
        let lib = standin();
        let f: libloading::Symbol<unsafe extern "C" fn()> =
            lib.get(b"fake_cuda_reset_stats").unwrap();
        f();
    }
}

/// A model of many shapes: large tensors over several chunks, many small ones, 0-d and
/// empty ones, and odd sizes.
/// The bytes of `model`'s tensors in `d`'s order (a safetensors file lays tensors out by
/// dtype, then name).
fn in_order_of(d: &Deserializer, model: &[(String, DType, Vec<u64>, Vec<u8>)]) -> Vec<Vec<u8>> {
    let by_name: std::collections::HashMap<&str, &Vec<u8>> =
        model.iter().map(|t| (t.0.as_str(), &t.3)).collect();
    d.tensors()
        .iter()
        .map(|t| by_name[&*t.name].clone())
        .collect()
}

fn write_model(path: &Path) -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    let mut tensors = vec![
        ("big".to_string(), DType::U8, vec![5 << 20], 1u64),
        ("odd".to_string(), DType::F32, vec![333, 77], 2),
        ("scalar".to_string(), DType::F64, vec![], 3),
        ("empty".to_string(), DType::BF16, vec![0, 8], 4),
        ("mid".to_string(), DType::F16, vec![1 << 20], 5),
    ];
    for i in 0..300u64 {
        tensors.push((
            format!("small.{i}"),
            DType::U8,
            vec![1 + (i * 37) % 9000],
            10 + i,
        ));
    }
    let data: Vec<_> = tensors
        .into_iter()
        .map(|(name, dtype, shape, seed)| {
            let len = dtype.nbytes(&shape).unwrap() as usize;
            (name, dtype, shape, random_bytes(len, seed))
        })
        .collect();
    let mut s = Serializer::create(path, WriteOptions::default().sync(false)).unwrap();
    for (name, dtype, shape, bytes) in &data {
        s.add_tensor(name, *dtype, shape, bytes).unwrap();
    }
    s.finish().unwrap();
    data
}

/// Load every tensor of `d` into "device memory" (host buffers, as the stand-in's device
/// pointers are host addresses), poisoned first; tensors whose index `host` selects go to
/// host memory instead.
fn load_to_device(d: &Deserializer, host: &dyn Fn(usize) -> bool) -> plaid::Result<Vec<Vec<u8>>> {
    let mut buffers: Vec<Vec<u8>> = d
        .tensors()
        .iter()
        .map(|t| vec![0xA5; t.nbytes as usize])
        .collect();
    let addresses: Vec<u64> = buffers.iter_mut().map(|b| b.as_mut_ptr() as u64).collect();
    let mut host_buffers: Vec<Option<&mut [u8]>> =
        buffers.iter_mut().map(|b| Some(&mut b[..])).collect();
    d.load(&mut |t: &TensorInfo| {
        let buffer = host_buffers[t.index].take().unwrap();
        Ok(if host(t.index) {
            Destination::Host(buffer)
        } else {
            Destination::Cuda {
                device: 0,
                address: addresses[t.index],
                capacity: t.nbytes,
            }
        })
    })?;
    drop(host_buffers);
    Ok(buffers)
}

#[test]
fn device_paths_against_the_stand_in() {
    run_child("child_device_paths", false, &[]);
}

#[test]
#[ignore = "run by device_paths_against_the_stand_in with the stand-in driver"]
fn child_device_paths() {
    in_child();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let model = write_model(&path);
    let expected: Vec<&Vec<u8>> = model.iter().map(|t| &t.3).collect();
    for chunk in [4096u64, 64 << 10, 16 << 20] {
        for threads in [1, 3] {
            for (mmap, verify) in [(true, true), (false, true), (true, false)] {
                let options = ReadOptions::default()
                    .request_bytes(chunk)
                    .unwrap()
                    .threads(threads)
                    .unwrap()
                    .mmap(mmap)
                    .verify(verify);
                let d = Deserializer::open(&path, options).unwrap();
                reset_stats();
                let loaded = load_to_device(&d, &|_| false).unwrap();
                let what =
                    format!("chunk {chunk}, {threads} threads, mmap {mmap}, verify {verify}");
                for (i, bytes) in loaded.iter().enumerate() {
                    assert!(
                        bytes == expected[i],
                        "{what}: tensor {} differs",
                        model[i].0
                    );
                }
                // Pinned memory: two staging buffers per worker, kept for the next load.
                let (pinned, peak, copies, misuse) = stats();
                assert_eq!(misuse, 0, "{what}");
                assert!(copies > 0);
                assert_eq!(pinned as usize, d.pinned_staging_bytes(), "{what}");
                // Each staging buffer holds a read chunk, rounded up to whole checksum
                // blocks (4 MiB) so that every piece is verified before it is sent.
                let bound = threads * 2 * (chunk.max(4 << 20)) as usize;
                assert!(pinned as usize <= bound, "{what}: {pinned} pinned bytes");
                // A second load, half to host memory, reuses the ring.
                let loaded = load_to_device(&d, &|i| i % 2 == 0).unwrap();
                assert!(loaded.iter().zip(&expected).all(|(a, b)| a == *b), "{what}");
                let (_, peak_after, _, misuse) = stats();
                assert_eq!((peak_after, misuse), (peak, 0), "{what}");
            }
        }
    }
    // Dropping the deserializer frees its pinned memory.
    let (pinned, _, _, misuse) = stats();
    assert_eq!((pinned, misuse), (0, 0));

    // plaid allocates: one device allocation, every tensor in it.
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let arena = d.load_to_cuda(0, &mut |t| t.name != "mid", None).unwrap();
    assert_eq!(arena.device(), 0);
    for (i, t) in d.tensors().iter().enumerate() {
        match arena.tensor(i) {
            Some((address, len)) => {
                assert_eq!(address % 256, 0);
                assert_eq!(len, t.nbytes);
                // SAFETY: the stand-in's device pointers are host addresses, so `address` is the
                // start of `len` readable bytes in `arena`, which lives until dropped below.
                let bytes =
                    unsafe { std::slice::from_raw_parts(address as *const u8, len as usize) };
                assert!(bytes == &expected[i][..], "arena tensor {}", t.name);
            }
            None => assert_eq!(t.name, "mid"),
        }
    }
    drop(arena);

    // tensorizer files (whole-tensor hashes, meta tensors as zeros) go to devices too.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorizer");
    for (fixture, bad) in [
        ("meta_tensors_v4", None),
        ("module_tiny_lm_f32", None),
        ("damaged_bitflip_in_tensor_data", Some("f16")),
    ] {
        let file = fixtures.join(format!("{fixture}.tensors"));
        let d =
            Deserializer::open(&file, ReadOptions::default().request_bytes(4096).unwrap()).unwrap();
        let host = Deserializer::open(&file, ReadOptions::default().verify(false)).unwrap();
        match (load_to_device(&d, &|_| false), bad) {
            (Ok(loaded), None) => assert_eq!(loaded, common::load_all(&host).unwrap(), "{fixture}"),
            (Err(e), Some(bad)) => assert!(
                matches!(&e, Error::HashMismatch { tensor, .. } if tensor == bad),
                "{e}"
            ),
            (other, _) => panic!("{fixture}: {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(stats().3, 0);

    // The caller's stream: the copies go on it, and the load still returns complete.
    let stream = caller_stream();
    let d = Deserializer::open(&path, ReadOptions::default().cuda_stream(stream)).unwrap();
    let loaded = load_to_device(&d, &|_| false).unwrap();
    assert!(loaded.iter().zip(&expected).all(|(a, b)| a == *b));

    // Serializing from device memory: copied out through pinned buffers while writing.
    let out = dir.path().join("from-device.plaid");
    let mut s = Serializer::create(&out, WriteOptions::default().sync(false)).unwrap();
    for (name, dtype, shape, bytes) in &model {
        if name.starts_with("small.") && !name.ends_with('7') {
            s.add_tensor(name, *dtype, shape, bytes).unwrap();
        } else {
            s.add_tensor_cuda(name, *dtype, shape, 0, bytes.as_ptr() as u64)
                .unwrap();
        }
    }
    s.finish().unwrap();
    let back = Deserializer::open(&out, ReadOptions::default()).unwrap();
    let loaded = common::load_all(&back).unwrap();
    assert!(loaded.iter().zip(&expected).all(|(a, b)| a == *b));
    assert_eq!(stats().3, 0, "misuse");
}

#[test]
fn encrypted_files_into_device_memory_against_the_stand_in() {
    run_child("child_encrypted_files", false, &[]);
}

/// Encrypted plaid files (both ciphers) into device memory: each block is decrypted and
/// authenticated in the staging buffer before it is sent, mapped or read, verified or not;
/// a damaged block fails the load naming its tensor; slices of encrypted tensors too.
#[test]
#[ignore = "run by encrypted_files_into_device_memory_against_the_stand_in with the stand-in driver"]
fn child_encrypted_files() {
    in_child();
    let dir = tempfile::tempdir().unwrap();
    let key = [9u8; 32];
    for cipher in [
        plaid::format::plaid::CIPHER_AEGIS_256X4,
        plaid::format::plaid::CIPHER_AES_256_GCM,
    ] {
        let path = dir.path().join(format!("enc{cipher}.plaid"));
        let data = random_bytes(3 << 20, cipher as u64);
        let small = random_bytes(1000, 7);
        let options = WriteOptions::default()
            .sync(false)
            .key(Some(&key))
            .unwrap()
            .cipher(cipher)
            .unwrap()
            .checksum_block_size(64 << 10)
            .unwrap();
        let mut s = Serializer::create(&path, options).unwrap();
        s.add_tensor("w", DType::U8, &[48, 65536], &data).unwrap();
        s.add_tensor("small", DType::U8, &[1000], &small).unwrap();
        s.finish().unwrap();
        // Chunks of 256 KiB, and of 16 KiB: smaller than a block, which the staging
        // lanes must still hold whole.
        for (mmap, verify, chunk) in [
            (true, true, 256 << 10),
            (false, true, 256 << 10),
            (true, false, 256 << 10),
            (false, false, 256 << 10),
            (true, true, 16 << 10),
            (false, true, 16 << 10),
        ] {
            let options = ReadOptions::default()
                .key(Some(&key))
                .unwrap()
                .mmap(mmap)
                .verify(verify)
                .request_bytes(chunk)
                .unwrap();
            let d = Deserializer::open(&path, options).unwrap();
            let loaded = load_to_device(&d, &|_| false).unwrap();
            assert!(
                loaded[0] == data && loaded[1] == small,
                "cipher {cipher} mmap {mmap} verify {verify}"
            );
            let (_, _, _, misuse) = stats();
            assert_eq!(misuse, 0);
        }
        // Rows 5..9 of "w" into device memory: only their blocks read and decrypted.
        let d = Deserializer::open(&path, ReadOptions::default().key(Some(&key)).unwrap()).unwrap();
        let mut out = vec![0u8; 4 * 65536];
        let address = out.as_mut_ptr() as u64;
        d.load(&mut |t: &TensorInfo| {
            Ok(if t.name == "w" {
                Destination::View(
                    View::whole().slice(0, 5, 9),
                    Box::new(Destination::Cuda {
                        device: 0,
                        address,
                        capacity: 4 * 65536,
                    }),
                )
            } else {
                Destination::Skip
            })
        })
        .unwrap();
        assert!(out == data[5 * 65536..9 * 65536]);
        // A damaged block: PLAID_ERR_DECRYPT naming the tensor, nothing of it sent.
        let mut bytes = std::fs::read(&path).unwrap();
        let offset = d.tensors()[0].offset as usize;
        bytes[offset + 200_000] ^= 1;
        let damaged = dir.path().join(format!("damaged{cipher}.plaid"));
        std::fs::write(&damaged, &bytes).unwrap();
        let d = Deserializer::open(
            &damaged,
            ReadOptions::default()
                .key(Some(&key))
                .unwrap()
                .verify(false),
        )
        .unwrap();
        let e = load_to_device(&d, &|_| false).unwrap_err();
        assert!(
            matches!(e, Error::Decrypt(_)) && e.to_string().contains("'w'"),
            "{e}"
        );
    }
}

#[test]
fn streamed_sources_into_device_memory_against_the_stand_in() {
    run_child("child_streamed_sources", false, &[]);
}

/// Every format from a stand-in network stream (seeded random short reads, out of order)
/// into stand-in device memory: more requests in flight than staging lanes, and pinned
/// memory bounded by the lanes, not by the requests.
#[test]
#[ignore = "run by streamed_sources_into_device_memory_against_the_stand_in with the stand-in driver"]
fn child_streamed_sources() {
    use plaid::source::{MemorySource, ShortReads, SourceHints};
    in_child();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let model = write_model(&path);
    let safetensors = dir.path().join("m.safetensors");
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    plaid::convert::to_safetensors(&d, &safetensors, &mut |_, _| {}).unwrap();
    let request = 256u64 << 10;
    let lanes = 2;
    let stream = |file: &Path, seed: u64| -> Deserializer {
        let source = ShortReads::new(
            MemorySource::new(file.display().to_string(), std::fs::read(file).unwrap()),
            seed,
        )
        .hints(SourceHints::new(request, 64 << 10, 6));
        let options = ReadOptions::default()
            .threads(2)
            .unwrap()
            .staging_lanes(lanes)
            .unwrap();
        Deserializer::from_source(Box::new(source), options).unwrap()
    };
    for file in [&path, &safetensors] {
        for seed in 0..2 {
            let d = stream(file, seed);
            reset_stats();
            let loaded = load_to_device(&d, &|i| i % 5 == 0).unwrap();
            assert!(
                loaded == in_order_of(&d, &model),
                "{}: seed {seed}",
                file.display()
            );
            let (pinned, _, copies, misuse) = stats();
            assert_eq!(misuse, 0);
            assert!(copies > 0);
            // Two buffers of one request per lane, whatever the six requests in flight
            // (and although plaid files checksum 4 MiB blocks).
            assert!(
                pinned as usize <= lanes * 2 * request as usize,
                "{pinned} pinned bytes"
            );
            assert_eq!(pinned as usize, d.pinned_staging_bytes());
        }
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorizer");
    for fixture in [
        "module_tiny_lm_f32",
        "meta_tensors_v4",
        "shapes_and_layouts",
    ] {
        let file = fixtures.join(format!("{fixture}.tensors"));
        let host = Deserializer::open(&file, ReadOptions::default()).unwrap();
        let loaded = load_to_device(&stream(&file, 3), &|_| false).unwrap();
        assert_eq!(loaded, common::load_all(&host).unwrap(), "{fixture}");
    }
    assert_eq!(stats().3, 0, "misuse");
}

#[cfg(feature = "remote")]
#[test]
fn remote_sources_into_device_memory_against_the_stand_in() {
    run_child("child_remote_sources", false, &[]);
}

/// Every format over HTTP (a server inside the test, with a reset mid-body to resume) and,
/// where the test servers run, from S3, into stand-in device memory: pinned memory bounded
/// by lanes x 2 x the request size.
#[cfg(feature = "remote")]
#[test]
#[ignore = "run by remote_sources_into_device_memory_against_the_stand_in with the stand-in driver"]
fn child_remote_sources() {
    in_child();
    let server = fault_server::FaultServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let model = write_model(&path);
    let safetensors = dir.path().join("m.safetensors");
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    plaid::convert::to_safetensors(&d, &safetensors, &mut |_, _| {}).unwrap();
    server.put("m.plaid", std::fs::read(&path).unwrap());
    server.put("m.safetensors", std::fs::read(&safetensors).unwrap());
    let request = 256u64 << 10;
    let lanes = 3;
    let options = || {
        ReadOptions::default()
            .threads(2)
            .unwrap()
            .request_bytes(request)
            .unwrap()
            .requests_in_flight(8)
            .unwrap()
            .staging_lanes(lanes)
            .unwrap()
            .storage("max_retries", "3")
            .unwrap()
    };
    for name in ["m.plaid", "m.safetensors"] {
        server.set_fault(fault_server::Fault::ResetMidBody { remaining: 2 });
        let d = Deserializer::open(server.url_of(name), options()).unwrap();
        reset_stats();
        let loaded = load_to_device(&d, &|i| i % 5 == 0).unwrap();
        assert!(loaded == in_order_of(&d, &model), "{name}");
        let (pinned, _, copies, misuse) = stats();
        assert_eq!(misuse, 0);
        assert!(copies > 0);
        assert!(
            pinned as usize <= lanes * 2 * request as usize,
            "{pinned} pinned bytes"
        );
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorizer/module_tiny_lm_f32.tensors");
    server.put("m.tensors", std::fs::read(&fixture).unwrap());
    let host = Deserializer::open(&fixture, ReadOptions::default()).unwrap();
    let remote = Deserializer::open(server.url_of("m.tensors"), options()).unwrap();
    assert_eq!(
        load_to_device(&remote, &|_| false).unwrap(),
        common::load_all(&host).unwrap()
    );
    // Every format from nginx and from S3 too, where the test servers run (the S3 objects
    // uploaded by plaid itself), each compared with a local load.
    let files = [path.clone(), safetensors.clone(), fixture.clone()];
    let local: Vec<Vec<Vec<u8>>> = files
        .iter()
        .map(|f| common::load_all(&Deserializer::open(f, ReadOptions::default()).unwrap()).unwrap())
        .collect();
    if let (Ok(base), Ok(root)) = (
        std::env::var("PLAID_TEST_HTTP_URL"),
        std::env::var("PLAID_TEST_HTTP_ROOT"),
    ) {
        for (file, expected) in files.iter().zip(&local) {
            let name = format!(
                "cuda-{}-{}",
                std::process::id(),
                file.file_name().unwrap().to_string_lossy()
            );
            std::fs::copy(file, Path::new(&root).join(&name)).unwrap();
            let d = Deserializer::open(format!("{base}/{name}"), options()).unwrap();
            assert!(
                &load_to_device(&d, &|i| i % 4 == 0).unwrap() == expected,
                "{base}/{name}"
            );
        }
    }
    if let Ok(endpoint) = std::env::var("PLAID_TEST_S3_ENDPOINT") {
        let var = |n: &str| std::env::var(n).unwrap();
        let pairs = [
            ("aws_endpoint", endpoint),
            ("aws_access_key_id", var("PLAID_TEST_S3_ACCESS_KEY")),
            ("aws_secret_access_key", var("PLAID_TEST_S3_SECRET_KEY")),
            ("aws_region", var("PLAID_TEST_S3_REGION")),
        ];
        let mut upload_options = plaid::options::StorageOptions::default();
        let mut read = options();
        for (k, v) in &pairs {
            upload_options.set(k, v).unwrap();
            read = read.storage(k, v).unwrap();
        }
        for (file, expected) in files.iter().zip(&local) {
            let url = format!(
                "s3://{}/cuda-{}/{}",
                var("PLAID_TEST_S3_BUCKET"),
                std::process::id(),
                file.file_name().unwrap().to_string_lossy()
            );
            let mut upload = plaid::remote::Upload::create(&url, &upload_options).unwrap();
            upload.write(&std::fs::read(file).unwrap()).unwrap();
            upload.finish().unwrap();
            let d = Deserializer::open(&url, read.clone()).unwrap();
            assert!(
                &load_to_device(&d, &|i| i % 3 == 0).unwrap() == expected,
                "{url}"
            );
        }
    }
    assert_eq!(stats().3, 0, "misuse");
}

/// A stream of the caller's, made in device 0's primary context through the stand-in.
fn caller_stream() -> usize {
    // SAFETY: each Symbol's type matches the function's declaration in fake_cuda.c and
    // `standin` keeps the library loaded; `ctx` and `stream` are writable locals, and cuInit
    // runs before the context calls.
    unsafe {
        let lib = standin();
        let retain: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void, i32) -> i32> =
            lib.get(b"cuDevicePrimaryCtxRetain").unwrap();
        let push: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> i32> =
            lib.get(b"cuCtxPushCurrent_v2").unwrap();
        let pop: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void) -> i32> =
            lib.get(b"cuCtxPopCurrent_v2").unwrap();
        let create: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void, u32) -> i32> =
            lib.get(b"cuStreamCreate").unwrap();
        let init: libloading::Symbol<unsafe extern "C" fn(u32) -> i32> =
            lib.get(b"cuInit").unwrap();
        assert_eq!(init(0), 0);
        let mut ctx = std::ptr::null_mut();
        assert_eq!(retain(&mut ctx, 0), 0);
        assert_eq!(push(ctx), 0);
        let mut stream = std::ptr::null_mut();
        assert_eq!(create(&mut stream, 0), 0);
        assert_eq!(pop(&mut ctx), 0);
        stream as usize
    }
}

#[test]
fn the_stand_in_defers_copies() {
    run_child("child_the_stand_in_defers_copies", false, &[]);
}

/// The stand-in really defers copies: a buffer overwritten before its copy was waited for
/// delivers the new bytes, which is what the device-path tests would catch.
#[test]
#[ignore = "run by the_stand_in_defers_copies with the stand-in driver"]
fn child_the_stand_in_defers_copies() {
    in_child();
    let stream = caller_stream();
    // SAFETY: each Symbol's type matches fake_cuda.c and `standin` keeps the library loaded;
    // the context stays retained and `stream` is the live one from `caller_stream`; the
    // 64-byte `staging` and `device` outlive the sync that performs the deferred copy.
    unsafe {
        let lib = standin();
        let retain: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void, i32) -> i32> =
            lib.get(b"cuDevicePrimaryCtxRetain").unwrap();
        let push: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> i32> =
            lib.get(b"cuCtxPushCurrent_v2").unwrap();
        let copy: libloading::Symbol<
            unsafe extern "C" fn(u64, *const c_void, usize, usize) -> i32,
        > = lib.get(b"cuMemcpyHtoDAsync_v2").unwrap();
        let sync: libloading::Symbol<unsafe extern "C" fn(usize) -> i32> =
            lib.get(b"cuStreamSynchronize").unwrap();
        let mut ctx = std::ptr::null_mut();
        assert_eq!(retain(&mut ctx, 0), 0);
        assert_eq!(push(ctx), 0);
        let mut staging = [1u8; 64];
        let mut device = [0u8; 64];
        assert_eq!(
            copy(
                device.as_mut_ptr() as u64,
                staging.as_ptr().cast(),
                64,
                stream
            ),
            0
        );
        assert_eq!(device, [0u8; 64], "not copied before a synchronization");
        staging.fill(2); // reused too early
        assert_eq!(sync(stream), 0);
        assert_eq!(device, [2u8; 64], "the copy reads the buffer when it runs");
    }
}

#[test]
fn injected_errors_against_the_stand_in() {
    run_child(
        "child_injected_errors",
        false,
        &[("FAKE_CUDA_FAIL_COPY_AT", "7")],
    );
}

#[test]
#[ignore = "run by injected_errors_against_the_stand_in with the stand-in driver"]
fn child_injected_errors() {
    in_child();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let model = write_model(&path);
    let options = ReadOptions::default()
        .request_bytes(64 << 10)
        .unwrap()
        .threads(3)
        .unwrap();
    let d = Deserializer::open(&path, options).unwrap();
    // The 7th copy fails: the load stops with the driver's error and a tensor, no hang.
    let err = load_to_device(&d, &|_| false).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Cuda(_)), "{text}");
    assert!(
        text.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && text.contains("tensor '"),
        "{text}"
    );
    assert_eq!(
        stats().3,
        0,
        "copies still in flight when the load returned"
    );
    // The same deserializer loads fine afterwards.
    let loaded = load_to_device(&d, &|_| false).unwrap();
    assert!(loaded.iter().zip(&model).all(|(a, b)| *a == b.3));

    // Bad destinations are refused before anything is read.
    type Place = Box<dyn Fn(&TensorInfo) -> Destination<'static>>;
    let cases: Vec<(Place, &str)> = vec![
        (
            Box::new(|t: &TensorInfo| Destination::Cuda {
                device: 5,
                address: 4096 + (t.index as u64) * (1 << 24),
                capacity: t.nbytes,
            }),
            "CUDA_ERROR_INVALID_DEVICE",
        ),
        (
            Box::new(|t: &TensorInfo| Destination::Cuda {
                device: 0,
                address: 0,
                capacity: t.nbytes,
            }),
            "NULL",
        ),
        (
            Box::new(|t: &TensorInfo| Destination::Cuda {
                device: 0,
                address: 4096,
                capacity: t.nbytes / 2,
            }),
            "needs",
        ),
        (
            Box::new(|t: &TensorInfo| Destination::Cuda {
                device: 0,
                address: 1 << 20,
                capacity: t.nbytes,
            }),
            "overlap",
        ),
    ];
    for (place, needle) in cases {
        let err = d
            .load(&mut |t: &TensorInfo| {
                Ok(if t.nbytes > 8 {
                    place(t)
                } else {
                    Destination::Skip
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    assert_eq!(stats().3, 0);
}

#[test]
fn a_driver_without_devices() {
    run_child("child_no_device", true, &[]);
}

#[test]
#[ignore = "run by a_driver_without_devices with the no-device stand-in"]
fn child_no_device() {
    in_child();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let model = write_model(&path);
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let err = load_to_device(&d, &|_| false).unwrap_err();
    assert!(
        matches!(&err, Error::Cuda(m) if m.contains("CUDA_ERROR_NO_DEVICE")),
        "{err}"
    );
    let err = d.load_to_cuda(0, &mut |_| true, None).unwrap_err();
    assert!(matches!(err, Error::Cuda(_)), "{err}");
    // Host loads are unaffected.
    let loaded = load_to_device(&d, &|_| true).unwrap();
    assert!(loaded.iter().zip(&model).all(|(a, b)| *a == b.3));
}

/// With no driver library at all, every CUDA path is `Error::NoCuda`, never a crash.
#[test]
fn no_driver_is_no_cuda() {
    // SAFETY: is_culib_present takes no arguments and only tries to load the driver library
    // (a system one, if any), calling nothing in it.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        eprintln!("a CUDA driver library is installed here: the no-driver path is not tested");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    write_model(&path);
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let err = load_to_device(&d, &|i| i != 2).unwrap_err();
    assert!(
        matches!(&err, Error::NoCuda(m) if m.contains("scalar")),
        "{err}"
    );
    let err = d.load_to_cuda(0, &mut |_| true, None).unwrap_err();
    assert!(matches!(err, Error::NoCuda(_)), "{err}");
    let mut s = Serializer::create(dir.path().join("x.plaid"), WriteOptions::default()).unwrap();
    let err = s
        .add_tensor_cuda("w", DType::F32, &[4], 0, 4096)
        .unwrap_err();
    assert!(matches!(err, Error::NoCuda(_)), "{err}");
}

#[test]
fn c_api_against_the_stand_in() {
    run_child("child_c_api", false, &[]);
}

/// The C API's CUDA calls, called as a C program calls them: `PLAID_DEST_CUDA` through the
/// placement callback (on the caller's stream), `plaid_deserializer_load_cuda` and its
/// arena, and `plaid_serializer_add_tensor_cuda`.
#[test]
#[ignore = "run by c_api_against_the_stand_in with the stand-in driver"]
fn child_c_api() {
    use plaid::ffi::cuda_arena::*;
    use plaid::ffi::deserializer::*;
    use plaid::ffi::placement::*;
    use plaid::ffi::read_options::*;
    use plaid::ffi::serializer::*;
    use plaid::ffi::status::*;
    use std::ffi::CString;

    in_child();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let model = write_model(&path);
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let stream = caller_stream();

    struct Devices(Vec<Vec<u8>>);
    unsafe extern "C" fn place(
        user: *mut c_void,
        info: *const plaid_tensor_info,
        dest: *mut plaid_destination,
    ) -> i32 {
        // SAFETY: `user` is the `devices` passed to plaid_deserializer_load below, alive
        // and touched by nothing else until that call returns.
        let devices = unsafe { &mut *(user as *mut Devices) };
        // SAFETY: plaid passes an `info` that lives as long as the deserializer and a
        // `dest` that is valid and ours alone during this call.
        let (info, dest) = unsafe { (&*info, &mut *dest) };
        let buffer = &mut devices.0[info.index];
        dest.kind = PLAID_DEST_CUDA;
        dest.device = 0;
        dest.address = buffer.as_mut_ptr() as u64;
        dest.capacity = buffer.len() as u64;
        0
    }
    unsafe extern "C" fn skip_mid(_user: *mut c_void, info: *const plaid_tensor_info) -> i32 {
        // SAFETY: plaid passes a valid `info` for this call, whose `name` is NUL-terminated
        // and outlives `name`.
        let name = unsafe { std::ffi::CStr::from_ptr((*info).name) };
        i32::from(name.to_bytes() != b"mid")
    }

    let mut options = std::ptr::null_mut();
    let mut d = std::ptr::null_mut();
    let mut devices = Devices(model.iter().map(|t| vec![0xA5; t.3.len()]).collect());
    let mut arena = std::ptr::null_mut();
    // SAFETY: `options` is used only between its creation and its free; `stream` is the
    // live stream from `caller_stream`; `c_path` outlives the open; `devices` outlives the
    // load, where only `place` uses it; `d` and `arena` are freed once, after the loop
    // below.
    unsafe {
        assert_eq!(plaid_read_options_new(&mut options), PLAID_OK);
        assert_eq!(
            plaid_read_options_set_cuda_stream(options, stream as *mut c_void),
            PLAID_OK
        );
        assert_eq!(
            plaid_deserializer_open(c_path.as_ptr(), options, &mut d),
            PLAID_OK
        );
        plaid_read_options_free(options);
        let user = &mut devices as *mut Devices as *mut c_void;
        assert_eq!(plaid_deserializer_load(d, Some(place), user), PLAID_OK);
        assert_eq!(
            plaid_deserializer_load_cuda(d, 0, Some(skip_mid), std::ptr::null_mut(), &mut arena),
            PLAID_OK
        );
        assert_eq!(plaid_cuda_arena_device(arena), 0);
    }
    for (i, (name, _, _, bytes)) in model.iter().enumerate() {
        assert!(devices.0[i] == *bytes, "{name} via the callback");
        let (mut address, mut nbytes) = (0u64, 0u64);
        // SAFETY: `arena` is the live handle from plaid_deserializer_load_cuda above, freed
        // after this loop; `address` and `nbytes` are writable locals.
        let status = unsafe { plaid_cuda_arena_tensor(arena, i, &mut address, &mut nbytes) };
        if name == "mid" {
            assert_eq!(status, PLAID_ERR_NOT_FOUND);
            continue;
        }
        assert_eq!(status, PLAID_OK);
        // SAFETY: the stand-in's device pointers are host addresses, so `address` is the start
        // of `nbytes` readable bytes in `arena`, which is freed only after this loop.
        let on_device =
            unsafe { std::slice::from_raw_parts(address as *const u8, nbytes as usize) };
        assert!(on_device == &bytes[..], "{name} in the arena");
    }
    // SAFETY: `arena` and `d` were made above, are no longer used, and are freed once,
    // here.
    unsafe {
        plaid_cuda_arena_free(arena);
        plaid_deserializer_free(d);
    }

    // Serializing from device memory through the C API.
    let out = CString::new(dir.path().join("out.plaid").to_str().unwrap()).unwrap();
    let mut s = std::ptr::null_mut();
    // SAFETY: `s` is used only between its creation and its free here; the names are
    // CStrings and each `shape` holds `shape.len()` values, alive across their calls; each
    // `bytes`, a host address the stand-in takes as device memory, stays in `model` until
    // after finish; address 4096 is refused for its size before it is ever read.
    unsafe {
        assert_eq!(
            plaid_serializer_new(out.as_ptr(), std::ptr::null(), &mut s),
            PLAID_OK
        );
        for (name, dtype, shape, bytes) in model.iter().take(20) {
            let name = CString::new(name.as_str()).unwrap();
            let status = plaid_serializer_add_tensor_cuda(
                s,
                name.as_ptr(),
                dtype.id(),
                shape.as_ptr(),
                shape.len(),
                0,
                bytes.as_ptr() as u64,
                bytes.len() as u64,
            );
            assert_eq!(status, PLAID_OK);
        }
        let bad = CString::new("wrong_size").unwrap();
        let status = plaid_serializer_add_tensor_cuda(
            s,
            bad.as_ptr(),
            DType::F32.id(),
            [4u64].as_ptr(),
            1,
            0,
            4096,
            15,
        );
        assert_eq!(status, PLAID_ERR_INVALID_ARGUMENT);
        assert_eq!(plaid_serializer_finish(s), PLAID_OK);
        plaid_serializer_free(s);
    }
    let back = Deserializer::open(dir.path().join("out.plaid"), ReadOptions::default()).unwrap();
    let loaded = common::load_all(&back).unwrap();
    assert!(loaded.iter().zip(&model).all(|(a, b)| *a == b.3));
    assert_eq!(stats().3, 0, "misuse");
}

#[test]
fn views_into_device_memory_against_the_stand_in() {
    run_child("child_views", false, &[]);
}

/// Slices along dimension 0 (a contiguous range) and 1 (gathered on the host, then copied)
/// and conversions, into stand-in device memory, against the same views loaded into host
/// memory; capacity and overlap are checked against the view's size.
#[test]
#[ignore = "run by views_into_device_memory_against_the_stand_in with the stand-in driver"]
fn child_views() {
    in_child();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let data = write_model(&path);
    let d = Deserializer::open(
        &path,
        ReadOptions::default().request_bytes(1 << 16).unwrap(),
    )
    .unwrap();
    let odd = d.find("odd").unwrap();
    let (_, _, shape, bytes) = &data[odd];
    assert_eq!(shape, &vec![333, 77]);
    for view in [
        View::whole().slice(0, 100, 250),
        View::whole().slice(1, 7, 30),
        View::whole().slice(1, 7, 30).dtype(DType::BF16),
        View::whole().dtype(DType::F16),
    ] {
        // The reference: the same view into host memory.
        let rows = view
            .slice
            .map_or(333, |s| if s.dim == 0 { s.stop - s.start } else { 333 });
        let cols = view
            .slice
            .map_or(77, |s| if s.dim == 1 { s.stop - s.start } else { 77 });
        let size = view.dtype.map_or(4, |t| t.size());
        let len = (rows * cols * size) as usize;
        let mut host = vec![0u8; len];
        let mut slot = Some(&mut host[..]);
        d.load(&mut |t: &TensorInfo| {
            Ok(match (t.index == odd).then(|| slot.take()).flatten() {
                Some(b) => Destination::View(view, Box::new(Destination::Host(b))),
                None => Destination::Skip,
            })
        })
        .unwrap();
        if view.dtype.is_none() {
            // Against the stored bytes, by row-major indices.
            let row_bytes = 77 * 4;
            let s = view.slice.unwrap();
            let want: Vec<u8> = (0..333usize)
                .flat_map(|r| {
                    let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    let keep_row = s.dim == 1 || (s.start as usize..s.stop as usize).contains(&r);
                    let cols = if s.dim == 1 {
                        s.start as usize * 4..s.stop as usize * 4
                    } else {
                        0..row_bytes
                    };
                    if keep_row {
                        row[cols].to_vec()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            assert_eq!(host, want, "{view:?}");
        }
        let mut device = vec![0xA5u8; len];
        let address = device.as_mut_ptr() as u64;
        // One byte short: capacity, before anything is read.
        let e = d
            .load(&mut |t: &TensorInfo| {
                Ok(if t.index == odd {
                    let to = Destination::Cuda {
                        device: 0,
                        address,
                        capacity: len as u64 - 1,
                    };
                    Destination::View(view, Box::new(to))
                } else {
                    Destination::Skip
                })
            })
            .unwrap_err();
        assert!(matches!(e, Error::Capacity { .. }), "{e}");
        d.load(&mut |t: &TensorInfo| {
            Ok(if t.index == odd {
                let to = Destination::Cuda {
                    device: 0,
                    address,
                    capacity: len as u64,
                };
                Destination::View(view, Box::new(to))
            } else {
                Destination::Skip
            })
        })
        .unwrap();
        assert_eq!(device, host, "{view:?} into device memory");
        // Into device memory plaid allocates.
        let arena = d
            .load_views_to_cuda(
                0,
                &mut |t: &TensorInfo| Ok((t.index == odd).then_some(view)),
                None,
            )
            .unwrap();
        let (address, capacity) = arena.tensor(odd).unwrap();
        assert_eq!(capacity as usize, len);
        // SAFETY: the stand-in's device memory is host memory; the arena holds `len` bytes
        // at `address` until it is dropped, after this copy.
        let got = unsafe { std::slice::from_raw_parts(address as *const u8, len) }.to_vec();
        assert_eq!(got, host, "{view:?} into an arena");
        assert!(arena.tensor(0).is_none() || odd == 0);
    }
    let (_, _, _, misuse) = stats();
    assert_eq!(misuse, 0);
}
