//! Remote reads against a fault-injecting HTTP server inside the test (every fault
//! deterministic), and against the real servers the test command starts (nginx, an
//! S3-compatible server, azurite, a GCS emulator) where their addresses are in the
//! environment (`scripts/servers`); `PLAID_TEST_REQUIRE_SERVERS=1` makes their absence a
//! failure rather than a skip.
#![cfg(feature = "remote")]
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "remote/fault_server.rs"]
mod fault_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{load_all, random_bytes};
use fault_server::{Fault, FaultServer, Redirect};
use plaid::{DType, Deserializer, Destination, Error, ReadOptions, Serializer, WriteOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorizer")
}

/// A plaid file with a few MiB over several tensors and many small ones, and its tensors.
fn plaid_model() -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut shapes: Vec<(DType, Vec<u64>)> = vec![
        (DType::U8, vec![(3 << 20) + 4097]),
        (DType::F32, vec![333, 77]),
        (DType::F64, vec![]),
        (DType::BF16, vec![0, 8]),
        (DType::F16, vec![300_001]),
    ];
    for i in 0..40u64 {
        shapes.push((DType::U8, vec![1 + (i * 37) % 9000]));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let mut writer = Serializer::create(&path, WriteOptions::default().sync(false)).unwrap();
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

/// Small requests, several in flight, few quick retries: faults show within seconds.
fn options() -> ReadOptions {
    ReadOptions::default()
        .threads(2)
        .unwrap()
        .request_bytes(256 << 10)
        .unwrap()
        .requests_in_flight(6)
        .unwrap()
        .storage("max_retries", "3")
        .unwrap()
        .storage("retry_timeout", "20s")
        .unwrap()
        .storage("timeout", "3s")
        .unwrap()
}

/// Every tensor of the local file `bytes` (as the reference).
fn local_tensors(name: &str, bytes: &[u8]) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    load_all(&Deserializer::open(&path, ReadOptions::default()).unwrap()).unwrap()
}

fn load_url(url: &str, options: ReadOptions) -> plaid::Result<Vec<Vec<u8>>> {
    let d = Deserializer::open(url, options)?;
    load_all(&d)
}

/// The message of an error, with its status checked.
fn io_message(result: plaid::Result<Vec<Vec<u8>>>) -> String {
    match result {
        Err(e @ Error::Io { .. }) => e.to_string(),
        Err(other) => panic!("expected an I/O error, got {other:?}"),
        Ok(_) => panic!("expected an I/O error, the load succeeded"),
    }
}

#[test]
fn every_format_loads_bit_exact_over_http() {
    let server = FaultServer::start();
    let (plaid, tensors) = plaid_model();
    let safetensors = safetensors_of(&plaid);
    let tensorizer = std::fs::read(fixtures().join("module_tiny_lm_f32.tensors")).unwrap();
    server.put("m.plaid", plaid.clone());
    server.put("m.safetensors", safetensors.clone());
    server.put("dir/m.tensors", tensorizer.clone());

    assert_eq!(
        load_url(&server.url_of("m.plaid"), options()).unwrap(),
        tensors
    );
    assert_eq!(
        load_url(&server.url_of("m.safetensors"), options()).unwrap(),
        local_tensors("m.safetensors", &safetensors)
    );
    assert_eq!(
        load_url(&server.url_of("dir/m.tensors"), options()).unwrap(),
        local_tensors("m.tensors", &tensorizer)
    );
    // Verification alone, and with default options (large requests).
    let d = Deserializer::open(server.url_of("m.plaid"), ReadOptions::default()).unwrap();
    assert_eq!(d.name(), server.url_of("m.plaid"));
    d.verify().unwrap();
    assert_eq!(load_all(&d).unwrap(), tensors);
    // Views need the bytes in memory: a remote source cannot lend them.
    assert!(
        matches!(d.view(0), Err(Error::Unsupported(_))),
        "{:?}",
        d.view(0)
    );
}

fn st_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "U8",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        other => panic!("no safetensors name for {other:?} in this test"),
    }
}

#[test]
fn a_sharded_checkpoint_opens_through_its_remote_index() {
    let server = FaultServer::start();
    let (plaid, _) = plaid_model();
    let whole = safetensors_of(&plaid);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.plaid"), &plaid).unwrap();
    let d = Deserializer::open(dir.path().join("m.plaid"), ReadOptions::default()).unwrap();
    // Two shards of the tensors, written as safetensors files, and their index.
    let names: Vec<String> = d.tensors().iter().map(|t| t.name.to_string()).collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (k, part) in [first, second].iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", k + 1);
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for name in part.iter() {
            let t = &d.tensors()[d.find(name).unwrap()];
            let bytes = d.read_tensor(t.index).unwrap();
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": st_dtype(t.dtype),
                    "shape": t.shape.as_slice(),
                    "data_offsets": [data.len(), data.len() + bytes.len()],
                }),
            );
            data.extend_from_slice(&bytes);
            weight_map.insert(name.clone(), serde_json::json!(shard));
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&header);
        file.extend_from_slice(&data);
        server.put(&format!("ckpt/{shard}"), file);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    server.put(
        "ckpt/model.safetensors.index.json",
        serde_json::to_vec(&index).unwrap(),
    );
    let remote = Deserializer::open(
        server.url_of("ckpt/model.safetensors.index.json"),
        options(),
    )
    .unwrap();
    assert_eq!(remote.tensors().len(), names.len());
    // In m.plaid's order (the safetensors file lays tensors out by dtype, then name).
    let expected = local_tensors("m.plaid", &plaid);
    assert_eq!(local_tensors("m.safetensors", &whole).len(), expected.len());
    let by_name: Vec<Vec<u8>> = {
        let loaded = load_all(&remote).unwrap();
        let local = Deserializer::open(dir.path().join("m.plaid"), ReadOptions::default()).unwrap();
        local
            .tensors()
            .iter()
            .map(|t| loaded[remote.find(&t.name).unwrap()].clone())
            .collect()
    };
    assert_eq!(by_name, expected);
}

#[test]
fn server_errors_are_retried_then_the_load_succeeds() {
    let server = FaultServer::start();
    let (plaid, tensors) = plaid_model();
    server.put("m.plaid", plaid);
    let d = Deserializer::open(server.url_of("m.plaid"), options()).unwrap();
    server.set_fault(Fault::Status {
        code: 503,
        remaining: 2,
    });
    assert_eq!(load_all(&d).unwrap(), tensors);
    server.set_fault(Fault::Status {
        code: 500,
        remaining: 2,
    });
    assert_eq!(load_all(&d).unwrap(), tensors);
}

#[test]
fn a_server_that_keeps_failing_is_an_io_error_naming_url_range_and_status() {
    let server = FaultServer::start();
    let (plaid, _) = plaid_model();
    server.put("m.plaid", plaid);
    let options = options().storage("max_retries", "2").unwrap();
    let d = Deserializer::open(server.url_of("m.plaid"), options).unwrap();
    server.set_fault(Fault::Status {
        code: 500,
        remaining: usize::MAX,
    });
    let started = Instant::now();
    let message = io_message(load_all(&d));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains(&server.url_of("m.plaid")), "{message}");
    assert!(message.contains("bytes "), "{message}");
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(message.contains("InternalError"), "{message}");
}

#[test]
fn a_reset_mid_body_is_resumed() {
    let server = FaultServer::start();
    let (plaid, tensors) = plaid_model();
    server.put("m.plaid", plaid);
    let d = Deserializer::open(server.url_of("m.plaid"), options()).unwrap();
    server.set_fault(Fault::ResetMidBody { remaining: 3 });
    assert_eq!(load_all(&d).unwrap(), tensors);
    assert!(server.ranged_gets() > 3);
}

#[test]
fn a_stalled_body_times_out_and_is_retried() {
    let server = FaultServer::start();
    let (plaid, tensors) = plaid_model();
    server.put("m.plaid", plaid);
    let options = options().storage("timeout", "1s").unwrap();
    let d = Deserializer::open(server.url_of("m.plaid"), options.clone()).unwrap();
    server.set_fault(Fault::Stall {
        remaining: 1,
        secs: 4,
    });
    assert_eq!(load_all(&d).unwrap(), tensors);
    // Stalling every time: an error within the retry budget, not a hang.
    let d = Deserializer::open(
        server.url_of("m.plaid"),
        options.storage("max_retries", "1").unwrap(),
    )
    .unwrap();
    server.set_fault(Fault::Stall {
        remaining: usize::MAX,
        secs: 4,
    });
    let started = Instant::now();
    let message = io_message(load_all(&d));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains(&server.url_of("m.plaid")), "{message}");
}

#[test]
fn short_bodies_wrong_ranges_and_whole_answers_are_errors_never_data() {
    let server = FaultServer::start();
    let (plaid, _) = plaid_model();
    server.put("m.plaid", plaid);
    let d = Deserializer::open(server.url_of("m.plaid"), options()).unwrap();
    for fault in [
        Fault::ShortBody,
        Fault::WrongContentRange,
        Fault::IgnoreRange,
    ] {
        server.set_fault(fault.clone());
        let message = io_message(load_all(&d));
        assert!(
            message.contains(&server.url_of("m.plaid")),
            "{fault:?}: {message}"
        );
        assert!(message.contains("bytes "), "{fault:?}: {message}");
    }
}

#[test]
fn an_object_replaced_during_a_load_fails_it() {
    let server = FaultServer::start();
    let (plaid, _) = plaid_model();
    server.put("m.plaid", plaid);
    let d = Deserializer::open(server.url_of("m.plaid"), options()).unwrap();
    server.set_fault(Fault::ReplaceAfter { after: 3 });
    let message = io_message(load_all(&d));
    assert!(message.contains("changed since it was opened"), "{message}");
    assert!(message.contains("412"), "{message}");
}

#[test]
fn missing_objects_and_dead_servers() {
    let server = FaultServer::start();
    match Deserializer::open(server.url_of("nothing.plaid"), options()) {
        Err(Error::NotFound(message)) => {
            assert!(
                message.contains(&server.url_of("nothing.plaid")),
                "{message}"
            );
            assert!(message.contains("404"), "{message}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A port nobody listens on: refused at once, after the retries.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{dead}/m.plaid");
    match Deserializer::open(&url, options().storage("max_retries", "1").unwrap()) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains(&url), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn loads_work_from_inside_another_tokio_runtime() {
    let server = FaultServer::start();
    let (plaid, tensors) = plaid_model();
    server.put("m.plaid", plaid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url_of("m.plaid");
    let loaded = runtime.block_on(async move {
        let d = Deserializer::open(&url, options()).unwrap();
        let loaded = load_all(&d).unwrap();
        drop(d);
        loaded
    });
    assert_eq!(loaded, tensors);
}

#[test]
fn storage_options_are_checked() {
    assert!(ReadOptions::default()
        .storage("aws_region", "eu-west-1")
        .is_ok());
    assert!(matches!(
        ReadOptions::default().storage("no_such_option", "1"),
        Err(Error::InvalidArgument(_))
    ));
    let server = FaultServer::start();
    server.put("m.plaid", plaid_model().0);
    let bad = ReadOptions::default()
        .storage("max_retries", "many")
        .unwrap();
    assert!(matches!(
        Deserializer::open(server.url_of("m.plaid"), bad),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_verify_against_a_server_dripping_its_data_ends_within_one_retry_budget() {
    // Every data range arrives at 5 bytes a second, so no request ever completes. Each
    // request gives up after `timeout` and is retried within `retry_timeout`; the verify
    // reads the tensors batched, then each alone to name the one that failed: the budget
    // of the whole operation must not restart between those (it did: 2x, and more with
    // each further phase).
    let server = FaultServer::start();
    let (plaid, _) = plaid_model();
    server.put("m.plaid", plaid);
    let (retry_timeout, timeout) = (Duration::from_secs(3), Duration::from_secs(1));
    let options = ReadOptions::default()
        .threads(2)
        .unwrap()
        .storage("timeout", "1s")
        .unwrap()
        .storage("retry_timeout", "3s")
        .unwrap()
        .storage("max_retries", "1000")
        .unwrap();
    let d = Deserializer::open(server.url_of("m.plaid"), options).unwrap();
    // A later operation gets a budget of its own, however long the handle sat idle.
    std::thread::sleep(Duration::from_millis(200));
    server.set_fault(Fault::Drip { interval_ms: 200 });
    let started = Instant::now();
    let e = d.verify().unwrap_err();
    let took = started.elapsed();
    assert!(
        took < retry_timeout + timeout + Duration::from_millis(1500),
        "the verify took {took:?}, past retry_timeout + timeout"
    );
    assert!(
        took >= retry_timeout,
        "it gave up early, after {took:?}: {e}"
    );
    assert!(matches!(e, Error::Io { .. }), "{e}");
    let message = e.to_string();
    assert!(message.contains(&server.url_of("m.plaid")), "{message}");
    assert!(message.contains("bytes "), "{message}");
    // The same handle serves again once the server does.
    server.set_fault(Fault::None);
    d.verify().unwrap();
}

/// Read options for an S3 bucket at the fault server `endpoint`, with temporary
/// credentials (a session token).
fn s3_at(endpoint: &FaultServer) -> ReadOptions {
    options()
        .storage("aws_endpoint", &endpoint.url)
        .unwrap()
        .storage("aws_access_key_id", "AKIDEXAMPLE")
        .unwrap()
        .storage("aws_secret_access_key", "wJalrXUtnFEMI/K7MDENG")
        .unwrap()
        .storage("aws_session_token", "SESSION-TOKEN-of-the-test")
        .unwrap()
        .storage("aws_region", "us-east-1")
        .unwrap()
        .storage("max_retries", "1")
        .unwrap()
}

#[test]
fn s3_follows_no_redirect_and_its_session_token_never_reaches_another_origin() {
    let endpoint = FaultServer::start();
    let elsewhere = FaultServer::start(); // another origin: another port
    let (plaid, tensors) = plaid_model();
    endpoint.put("bucket/m.plaid", plaid.clone());
    elsewhere.put("bucket/m.plaid", plaid);
    let url = "s3://bucket/m.plaid";
    // The endpoint serves: the token is sent there (so the test would see it elsewhere).
    assert_eq!(load_url(url, s3_at(&endpoint)).unwrap(), tensors);
    assert!(endpoint
        .header_values("x-amz-security-token")
        .iter()
        .any(|t| t == "SESSION-TOKEN-of-the-test"));
    // A redirect of the opening request, of every kind.
    for status in [301, 302, 303, 307, 308] {
        endpoint.set_redirect(Some(Redirect {
            status,
            to: elsewhere.url.clone(),
            region: None,
        }));
        let e = Deserializer::open(url, s3_at(&endpoint)).unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, Error::Io { .. }), "{status}: {e:?}");
        assert!(message.contains("redirect"), "{status}: {message}");
        assert!(message.contains(&elsewhere.url), "{status}: {message}");
    }
    // A redirect of the data's ranged GETs, once the object is open.
    endpoint.set_redirect(None);
    let d = Deserializer::open(url, s3_at(&endpoint)).unwrap();
    endpoint.set_redirect(Some(Redirect {
        status: 307,
        to: elsewhere.url.clone(),
        region: None,
    }));
    let message = io_message(load_all(&d));
    assert!(message.contains("redirect"), "{message}");
    assert!(
        elsewhere.received().is_empty(),
        "requests reached the other origin: {:?}",
        elsewhere.received()
    );
    assert!(elsewhere.header_values("x-amz-security-token").is_empty());
    // S3's answer for a bucket in another region names it.
    endpoint.set_redirect(Some(Redirect {
        status: 301,
        to: elsewhere.url.clone(),
        region: Some("eu-west-3".into()),
    }));
    let message = Deserializer::open(url, s3_at(&endpoint))
        .unwrap_err()
        .to_string();
    assert!(message.contains("region eu-west-3"), "{message}");
    assert!(message.contains("aws_region"), "{message}");
    assert!(!message.contains("SESSION-TOKEN"), "{message}");
}

#[test]
fn gcs_and_azure_follow_no_redirect_either() {
    let endpoint = FaultServer::start();
    let elsewhere = FaultServer::start();
    endpoint.set_redirect(Some(Redirect {
        status: 307,
        to: elsewhere.url.clone(),
        region: None,
    }));
    let stores = [
        (
            "gs://bucket/m.plaid",
            vec![
                ("google_base_url", endpoint.url.clone()),
                ("google_bearer_token", "TOKEN-of-the-test".to_owned()),
                ("allow_http", "true".to_owned()),
            ],
        ),
        (
            "az://container/m.plaid",
            vec![
                ("azure_storage_account_name", "account".to_owned()),
                ("azure_storage_endpoint", endpoint.url.clone()),
                ("azure_storage_token", "TOKEN-of-the-test".to_owned()),
                ("allow_http", "true".to_owned()),
            ],
        ),
    ];
    for (url, pairs) in stores {
        let mut o = options();
        for (k, v) in pairs {
            o = o.storage(k, &v).unwrap();
        }
        let e = Deserializer::open(url, o).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{url}: {e:?}");
        assert!(e.to_string().contains("redirect"), "{url}: {e}");
    }
    assert!(endpoint.requests() >= 2, "each store asked the endpoint");
    assert!(
        elsewhere.received().is_empty(),
        "{:?}",
        elsewhere.received()
    );
}

#[test]
fn plain_http_follows_redirects_unless_the_url_carries_a_password() {
    let front = FaultServer::start();
    let back = FaultServer::start();
    let (plaid, tensors) = plaid_model();
    back.put("m.plaid", plaid.clone());
    front.set_redirect(Some(Redirect {
        status: 307,
        to: back.url.clone(),
        region: None,
    }));
    // No credential: followed to the other origin, which serves (with its ETag pinned).
    assert_eq!(
        load_url(&front.url_of("m.plaid"), options()).unwrap(),
        tensors
    );
    assert!(back.requests() > 0);
    // A user and password: sent as basic authentication to the URL's origin only, and a
    // redirect is an error that never shows the password.
    let with_password = front.url.replace("http://", "http://reader:s3cr%40t@") + "/m.plaid";
    let seen_by_back = back.requests();
    let e = Deserializer::open(&with_password, options()).unwrap_err();
    let message = e.to_string();
    assert!(message.contains("redirect"), "{message}");
    assert!(!message.contains("s3cr"), "{message}");
    assert!(message.contains("reader:***@"), "{message}");
    assert_eq!(
        back.requests(),
        seen_by_back,
        "nothing more reached the other origin"
    );
    assert!(back.header_values("authorization").is_empty());
    // `reader:s3cr@t` in base 64.
    let basic = "Basic cmVhZGVyOnMzY3JAdA==";
    assert!(front
        .header_values("authorization")
        .iter()
        .any(|a| a == basic));
    // Served where it is asked, with the credentials.
    front.set_redirect(None);
    front.put("m.plaid", plaid);
    let d = Deserializer::open(&with_password, options()).unwrap();
    assert!(!d.name().contains("s3cr"), "{}", d.name());
    assert_eq!(load_all(&d).unwrap(), tensors);
    // Other stores take no credentials in their URLs.
    let e = Deserializer::open("s3://key:secret@bucket/m.plaid", options()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(!e.to_string().contains("secret@"), "{e}");
}

// ---- Against the servers the test command starts (scripts/servers) ----

/// The value of the environment variable `name` the server script exported, or `None`
/// (with a note) where the servers are not running; a failure where they must be.
fn server_var(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("PLAID_TEST_REQUIRE_SERVERS").is_none(),
                "{name} is not set: start the servers with scripts/servers (the test command does)"
            );
            eprintln!("skipped: {name} is not set (scripts/servers starts the test servers)");
            None
        }
    }
}

/// A fresh key prefix, so that runs and tests never see each other's objects.
fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

struct S3 {
    bucket: String,
    pairs: Vec<(&'static str, String)>,
}

impl S3 {
    fn from_env() -> Option<S3> {
        let endpoint = server_var("PLAID_TEST_S3_ENDPOINT")?;
        Some(S3 {
            bucket: server_var("PLAID_TEST_S3_BUCKET")?,
            pairs: vec![
                ("aws_endpoint", endpoint),
                ("aws_access_key_id", server_var("PLAID_TEST_S3_ACCESS_KEY")?),
                (
                    "aws_secret_access_key",
                    server_var("PLAID_TEST_S3_SECRET_KEY")?,
                ),
                ("aws_region", server_var("PLAID_TEST_S3_REGION")?),
                ("max_retries", "2".into()),
                ("retry_timeout", "20s".into()),
            ],
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn read(&self) -> ReadOptions {
        let mut o = ReadOptions::default().request_bytes(1 << 20).unwrap();
        for (k, v) in &self.pairs {
            o = o.storage(k, v).unwrap();
        }
        o
    }

    fn write(&self) -> WriteOptions {
        let mut o = WriteOptions::default()
            .storage("upload_part_size", &(5u64 << 20).to_string())
            .unwrap()
            .storage("upload_parts_in_flight", "3")
            .unwrap();
        for (k, v) in &self.pairs {
            o = o.storage(k, v).unwrap();
        }
        o
    }

    /// Upload `bytes` as the object `key`.
    fn put(&self, key: &str, bytes: &[u8]) {
        let mut upload =
            plaid::remote::Upload::create(&self.url(key), self.write().get_storage()).unwrap();
        for piece in bytes.chunks(3 << 20) {
            upload.write(piece).unwrap();
        }
        upload.finish().unwrap();
    }
}

/// A plaid model of about 13 MiB (three parts of a 5 MiB multipart upload).
fn large_model() -> Vec<(String, Vec<u64>, Vec<u8>)> {
    (0..6u64)
        .map(|i| {
            let n = (2 << 20) + i * 12_345;
            (
                format!("layer{i}.weight"),
                vec![n / 4],
                random_bytes(n as usize / 4 * 4, 100 + i),
            )
        })
        .collect()
}

#[test]
fn s3_multipart_upload_then_every_format_loads_back() {
    let Some(s3) = S3::from_env() else { return };
    let prefix = unique("upload");
    let model = large_model();
    let url = s3.url(&format!("{prefix}/m.plaid"));
    let mut writer = Serializer::create(&url, s3.write()).unwrap();
    for (name, shape, bytes) in &model {
        writer.add_tensor(name, DType::F32, shape, bytes).unwrap();
    }
    writer.set_metadata("where", "s3").unwrap();
    let stats = writer.finish().unwrap();
    assert!(stats.file_length > 10 << 20);

    let d = Deserializer::open(&url, s3.read()).unwrap();
    assert_eq!(d.metadata().get("where").map(String::as_str), Some("s3"));
    let loaded = load_all(&d).unwrap();
    for ((_, _, bytes), got) in model.iter().zip(&loaded) {
        assert_eq!(bytes, got);
    }
    d.verify().unwrap();

    // safetensors and tensorizer files put as they are.
    let (plaid, tensors) = plaid_model();
    let safetensors = safetensors_of(&plaid);
    let tensorizer = std::fs::read(fixtures().join("module_tiny_lm_f32.tensors")).unwrap();
    s3.put(&format!("{prefix}/m.safetensors"), &safetensors);
    s3.put(&format!("{prefix}/m.tensors"), &tensorizer);
    s3.put(&format!("{prefix}/small.plaid"), &plaid);
    assert_eq!(
        load_url(&s3.url(&format!("{prefix}/small.plaid")), s3.read()).unwrap(),
        tensors
    );
    assert_eq!(
        load_url(&s3.url(&format!("{prefix}/m.safetensors")), s3.read()).unwrap(),
        local_tensors("m.safetensors", &safetensors)
    );
    assert_eq!(
        load_url(&s3.url(&format!("{prefix}/m.tensors")), s3.read()).unwrap(),
        local_tensors("m.tensors", &tensorizer)
    );
}

#[test]
fn s3_abandoned_and_failed_uploads_leave_no_object() {
    let Some(s3) = S3::from_env() else { return };
    let prefix = unique("abandoned");
    let model = large_model();
    // Dropped unfinished after parts went out.
    let url = s3.url(&format!("{prefix}/dropped.plaid"));
    {
        let mut upload = plaid::remote::Upload::create(&url, s3.write().get_storage()).unwrap();
        upload.write(&model[0].2).unwrap();
        upload.write(&model[1].2).unwrap();
        upload.write(&model[2].2).unwrap();
    }
    assert!(matches!(
        Deserializer::open(&url, s3.read()),
        Err(Error::NotFound(_))
    ));
    // A serializer dropped before finish.
    let url = s3.url(&format!("{prefix}/serializer.plaid"));
    {
        let mut writer = Serializer::create(&url, s3.write()).unwrap();
        writer
            .add_tensor("w", DType::F32, &model[0].1, &model[0].2)
            .unwrap();
    }
    assert!(matches!(
        Deserializer::open(&url, s3.read()),
        Err(Error::NotFound(_))
    ));
    // A finish that fails (a tensor in device memory with no CUDA driver here) aborts.
    let url = s3.url(&format!("{prefix}/failed.plaid"));
    let mut writer = Serializer::create(&url, s3.write()).unwrap();
    writer
        .add_tensor("w", DType::F32, &model[0].1, &model[0].2)
        .unwrap();
    if writer
        .add_tensor_cuda("d", DType::F32, &[4], 0, 0x1000)
        .is_ok()
    {
        assert!(writer.finish().is_err());
        assert!(matches!(
            Deserializer::open(&url, s3.read()),
            Err(Error::NotFound(_))
        ));
    }
}

#[test]
fn s3_wrong_credentials_and_missing_objects() {
    let Some(s3) = S3::from_env() else { return };
    let key = unique("creds");
    s3.put(&key, &plaid_model().0);
    let wrong = s3.read().storage("aws_secret_access_key", "wrong").unwrap();
    match Deserializer::open(s3.url(&key), wrong) {
        Err(e @ Error::Io { .. }) => {
            let m = e.to_string();
            assert!(m.contains(&s3.url(&key)), "{m}");
            assert!(m.contains("HTTP 403"), "{m}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    match Deserializer::open(s3.url("no/such/object.plaid"), s3.read()) {
        Err(Error::NotFound(m)) => assert!(m.contains("no/such/object.plaid"), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Unsigned requests (public buckets) send no signature: this server wants one.
    let unsigned = s3.read().storage("aws_skip_signature", "true").unwrap();
    match Deserializer::open(s3.url(&key), unsigned) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("HTTP 403"), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // A CA bundle that cannot be read is named.
    let bundle = s3
        .read()
        .storage("aws_ca_bundle", "/nonexistent/ca.pem")
        .unwrap();
    match Deserializer::open(s3.url(&key), bundle) {
        Err(e) => assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}"),
        Ok(_) => panic!("opened with an unreadable CA bundle"),
    }
    // (A missing bucket is not tested here: s3s-fs makes buckets on the fly.)
}

#[test]
fn nginx_serves_every_format_and_a_sharded_checkpoint() {
    let (Some(base), Some(root)) = (
        server_var("PLAID_TEST_HTTP_URL"),
        server_var("PLAID_TEST_HTTP_ROOT"),
    ) else {
        return;
    };
    let dir = unique("nginx");
    std::fs::create_dir_all(Path::new(&root).join(&dir)).unwrap();
    let (plaid, tensors) = plaid_model();
    let safetensors = safetensors_of(&plaid);
    let tensorizer = std::fs::read(fixtures().join("module_tiny_lm_f32.tensors")).unwrap();
    for (name, bytes) in [
        ("m.plaid", &plaid),
        ("m.safetensors", &safetensors),
        ("m.tensors", &tensorizer),
    ] {
        std::fs::write(Path::new(&root).join(&dir).join(name), bytes).unwrap();
    }
    let url = |name: &str| format!("{base}/{dir}/{name}");
    assert_eq!(load_url(&url("m.plaid"), options()).unwrap(), tensors);
    assert_eq!(
        load_url(&url("m.safetensors"), options()).unwrap(),
        local_tensors("m.safetensors", &safetensors)
    );
    assert_eq!(
        load_url(&url("m.tensors"), options()).unwrap(),
        local_tensors("m.tensors", &tensorizer)
    );
    // nginx answers If-Match: a file replaced after opening fails the load.
    let d = Deserializer::open(url("m.plaid"), options()).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let mut changed = plaid.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(Path::new(&root).join(&dir).join("m.plaid"), &changed).unwrap();
    let message = io_message(load_all(&d));
    assert!(
        message.contains("412") || message.contains("changed"),
        "{message}"
    );
    match Deserializer::open(url("absent.plaid"), options()) {
        Err(Error::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn azurite_upload_then_load() {
    let Some(endpoint) = server_var("PLAID_TEST_AZURE_ENDPOINT") else {
        return;
    };
    let (Some(account), Some(key), Some(container)) = (
        server_var("PLAID_TEST_AZURE_ACCOUNT"),
        server_var("PLAID_TEST_AZURE_ACCESS_KEY"),
        server_var("PLAID_TEST_AZURE_CONTAINER"),
    ) else {
        return;
    };
    let pairs = [
        ("azure_storage_account_name", account.as_str()),
        ("azure_storage_access_key", key.as_str()),
        ("azure_storage_endpoint", endpoint.as_str()),
        ("azure_allow_http", "true"),
        ("max_retries", "2"),
    ];
    let mut read = options();
    let mut write = WriteOptions::default()
        .storage("upload_part_size", &(5u64 << 20).to_string())
        .unwrap();
    for (k, v) in pairs {
        read = read.storage(k, v).unwrap();
        write = write.storage(k, v).unwrap();
    }
    let url = format!("az://{container}/{}/m.plaid", unique("azure"));
    let model = large_model();
    let mut writer = Serializer::create(&url, write).unwrap();
    for (name, shape, bytes) in &model {
        writer.add_tensor(name, DType::F32, shape, bytes).unwrap();
    }
    writer.finish().unwrap();
    let loaded = load_url(&url, read.clone()).unwrap();
    for ((_, _, bytes), got) in model.iter().zip(&loaded) {
        assert_eq!(bytes, got);
    }
    let wrong = read
        .storage("azure_storage_access_key", "d3Jvbmc=")
        .unwrap();
    assert!(matches!(
        Deserializer::open(&url, wrong),
        Err(Error::Io { .. })
    ));
}

#[test]
fn gcs_emulator_load() {
    let Some(base) = server_var("PLAID_TEST_GCS_BASE_URL") else {
        return;
    };
    let (Some(bucket), Some(key)) = (
        server_var("PLAID_TEST_GCS_BUCKET"),
        server_var("PLAID_TEST_GCS_SERVICE_ACCOUNT_KEY"),
    ) else {
        return;
    };
    // The emulator takes no XML-API writes: the object is put with its JSON API.
    let name = format!("{}/m.plaid", unique("gcs"));
    let (plaid, tensors) = plaid_model();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.plaid");
    std::fs::write(&file, &plaid).unwrap();
    let status = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "POST", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "{base}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            name.replace('/', "%2F")
        ))
        .status()
        .expect("curl");
    assert!(status.success());
    let read = options()
        .storage("google_base_url", &base)
        .unwrap()
        .storage("google_service_account_key", &key)
        .unwrap()
        .storage("google_allow_http", "true")
        .unwrap();
    assert_eq!(
        load_url(&format!("gs://{bucket}/{name}"), read).unwrap(),
        tensors
    );
}

// ---- The C API, called from Rust exactly as C calls it ----

mod c_api {
    use std::ffi::{c_char, CStr, CString};
    use std::ptr;

    use plaid::ffi::deserializer::*;
    use plaid::ffi::read_options::*;
    use plaid::ffi::serializer::*;
    use plaid::ffi::status::*;
    use plaid::ffi::write_options::*;

    use super::{plaid_model, FaultServer, S3};

    fn last_error() -> String {
        // SAFETY: a NULL buffer with length 0 only asks for the message's length.
        let len = unsafe { plaid_last_error_message(ptr::null_mut(), 0) };
        let mut buf = vec![0 as c_char; len + 1];
        // SAFETY: `buf` is `len + 1` writable c_chars and exactly that length is passed.
        unsafe { plaid_last_error_message(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: `buf` is non-empty, so the call above NUL-terminated it; it outlives the
        // borrow, which `to_owned` copies.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn c(text: &str) -> CString {
        CString::new(text).unwrap()
    }

    #[test]
    fn storage_options_and_urls_through_the_c_api() {
        let server = FaultServer::start();
        server.put("m.plaid", plaid_model().0);
        // SAFETY: `o`, `d` and `w` are used only between their creation and their free
        // here; each `c(..)` CString and `url` outlive the call they are passed to; the
        // NULL arguments are refused, as each function's `# Safety` allows.
        unsafe {
            let mut o = ptr::null_mut();
            assert_eq!(plaid_read_options_new(&mut o), PLAID_OK);
            assert_eq!(
                plaid_read_options_set_storage(o, c("MAX_RETRIES").as_ptr(), c("1").as_ptr()),
                PLAID_OK
            );
            assert_eq!(
                plaid_read_options_set_storage(o, c("timeout").as_ptr(), c("5s").as_ptr()),
                PLAID_OK
            );
            assert_eq!(
                plaid_read_options_set_storage(o, c("bogus_key").as_ptr(), c("1").as_ptr()),
                PLAID_ERR_INVALID_ARGUMENT
            );
            assert!(last_error().contains("bogus_key"), "{}", last_error());
            assert_eq!(
                plaid_read_options_set_storage(o, ptr::null(), c("1").as_ptr()),
                PLAID_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                plaid_read_options_set_storage(
                    ptr::null_mut(),
                    c("timeout").as_ptr(),
                    c("1s").as_ptr()
                ),
                PLAID_ERR_INVALID_ARGUMENT
            );
            let mut d = ptr::null_mut();
            let url = c(&server.url_of("m.plaid"));
            assert_eq!(
                plaid_deserializer_open(url.as_ptr(), o, &mut d),
                PLAID_OK,
                "{}",
                last_error()
            );
            assert!(plaid_deserializer_tensor_count(d) > 40);
            assert_eq!(plaid_deserializer_verify(d), PLAID_OK, "{}", last_error());
            plaid_deserializer_free(d);

            let mut missing = ptr::null_mut();
            let url = c(&server.url_of("absent.plaid"));
            assert_eq!(
                plaid_deserializer_open(url.as_ptr(), o, &mut missing),
                PLAID_ERR_NOT_FOUND
            );
            assert!(missing.is_null());
            assert!(last_error().contains("absent.plaid"), "{}", last_error());
            plaid_read_options_free(o);

            // Plain HTTP servers cannot be written to.
            let mut w = ptr::null_mut();
            assert_eq!(plaid_write_options_new(&mut w), PLAID_OK);
            assert_eq!(
                plaid_write_options_set_storage(
                    w,
                    c("upload_part_size").as_ptr(),
                    c("6000000").as_ptr()
                ),
                PLAID_OK
            );
            assert_eq!(
                plaid_write_options_set_storage(w, c("nope").as_ptr(), c("1").as_ptr()),
                PLAID_ERR_INVALID_ARGUMENT
            );
            let mut s = ptr::null_mut();
            let url = c(&server.url_of("new.plaid"));
            assert_eq!(
                plaid_serializer_new(url.as_ptr(), w, &mut s),
                PLAID_ERR_UNSUPPORTED
            );
            plaid_write_options_free(w);
        }
    }

    /// Every storage option plaid or `object_store` knows (canonical names and a few
    /// aliases).
    const EVERY_KEY: &[&str] = &[
        // plaid's own
        "max_retries",
        "retry_timeout",
        "aws_profile",
        "aws_ca_bundle",
        "ca_bundle",
        "upload_part_size",
        "upload_parts_in_flight",
        "profile",
        // S3
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_region",
        "aws_bucket",
        "aws_endpoint",
        "aws_endpoint_url_s3",
        "aws_session_token",
        "aws_imdsv1_fallback",
        "aws_virtual_hosted_style_request",
        "aws_s3_express",
        "aws_default_region",
        "aws_metadata_endpoint",
        "aws_unsigned_payload",
        "aws_checksum_algorithm",
        "aws_container_credentials_relative_uri",
        "aws_container_credentials_full_uri",
        "aws_container_authorization_token_file",
        "aws_web_identity_token_file",
        "aws_role_arn",
        "aws_role_session_name",
        "aws_endpoint_url_sts",
        "aws_skip_signature",
        "aws_copy_if_not_exists",
        "aws_conditional_put",
        "aws_disable_tagging",
        "aws_disable_bulk_delete",
        "aws_request_payer",
        "endpoint",
        "region",
        "endpoint_url",
        // GCS
        "google_service_account",
        "google_service_account_key",
        "google_bucket",
        "google_base_url",
        "google_application_credentials",
        "google_bearer_token",
        "google_skip_signature",
        // Azure
        "azure_storage_account_name",
        "azure_storage_account_key",
        "azure_storage_client_id",
        "azure_storage_client_secret",
        "azure_storage_tenant_id",
        "azure_storage_authority_host",
        "azure_storage_sas_key",
        "azure_storage_token",
        "azure_storage_use_emulator",
        "azure_use_fabric_endpoint",
        "azure_storage_endpoint",
        "azure_msi_endpoint",
        "azure_object_id",
        "azure_msi_resource_id",
        "azure_federated_token_file",
        "azure_use_azure_cli",
        "azure_skip_signature",
        "azure_container_name",
        "azure_disable_tagging",
        "azure_fabric_token_service_url",
        "azure_fabric_workload_host",
        "azure_fabric_session_token",
        "azure_fabric_cluster_identifier",
        "azure_credential_type",
        "azure_storage_encryption_key",
        // the HTTP client's
        "allow_http",
        "allow_invalid_certificates",
        "disable_system_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_max_frame_size",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    ];

    #[test]
    fn every_storage_option_with_hostile_values_is_an_error_never_a_panic() {
        let server = FaultServer::start();
        let (plaid, _) = plaid_model();
        for name in ["m.plaid", "bucket/m.plaid", "container/m.plaid"] {
            server.put(name, plaid.clone());
        }
        let long = "x".repeat(10_000);
        let hostile = [
            "ht!tp://bad url",
            "http://bad url",
            "http://",
            " ",
            "",
            "a\nb\r\nX-Injected: 1",
            "-1",
            "18446744073709551616",
            "\u{165}\u{eb}\u{161}\u{165} \u{2603}",
            long.as_str(),
        ];
        // Each store pointed at the local server, so that a value that passes reaches it.
        let common = [
            ("max_retries", "0"),
            ("retry_timeout", "1s"),
            ("timeout", "2s"),
            ("connect_timeout", "1s"),
        ];
        let stores: [(&str, Vec<(&str, String)>); 4] = [
            (
                "s3://bucket/m.plaid",
                vec![
                    ("aws_endpoint", server.url.clone()),
                    ("aws_access_key_id", "AKIDEXAMPLE".into()),
                    ("aws_secret_access_key", "secret".into()),
                    ("aws_region", "us-east-1".into()),
                ],
            ),
            (
                "gs://bucket/m.plaid",
                vec![
                    ("google_base_url", server.url.clone()),
                    ("google_skip_signature", "true".into()),
                ],
            ),
            (
                "az://container/m.plaid",
                vec![
                    ("azure_storage_account_name", "account".into()),
                    ("azure_storage_endpoint", server.url.clone()),
                    ("azure_skip_signature", "true".into()),
                ],
            ),
            (&server.url_of("m.plaid"), vec![]),
        ];
        let mut statuses = std::collections::BTreeMap::new();
        for (k, (url, base)) in stores.iter().enumerate() {
            let url = c(url);
            // Each store's own keys, and the keys of the client and of plaid's with the
            // stores that differ in how they build the client (S3 and plain HTTP).
            let mine = |key: &str| match key.split('_').next() {
                Some("aws") | Some("endpoint") | Some("region") => k == 0,
                Some("google") => k == 1,
                Some("azure") => k == 2,
                _ => k == 0 || k == 3,
            };
            for key in EVERY_KEY.iter().filter(|key| mine(key)) {
                for value in hostile {
                    // SAFETY: `o` and `d` are used only between their creation and their
                    // free here; the CStrings outlive the calls they are passed to.
                    unsafe {
                        let mut o = ptr::null_mut();
                        assert_eq!(plaid_read_options_new(&mut o), PLAID_OK);
                        for (k, v) in common
                            .iter()
                            .map(|(k, v)| (*k, v.to_string()))
                            .chain(base.iter().map(|(k, v)| (*k, v.clone())))
                        {
                            assert_eq!(
                                plaid_read_options_set_storage(o, c(k).as_ptr(), c(&v).as_ptr()),
                                PLAID_OK
                            );
                        }
                        let set =
                            plaid_read_options_set_storage(o, c(key).as_ptr(), c(value).as_ptr());
                        assert_ne!(set, PLAID_ERR_PANIC, "{key}={value:?}: {}", last_error());
                        let mut d = ptr::null_mut();
                        let opened = plaid_deserializer_open(url.as_ptr(), o, &mut d);
                        assert_ne!(
                            opened,
                            PLAID_ERR_PANIC,
                            "{url:?} {key}={value:?}: {}",
                            last_error()
                        );
                        if opened == PLAID_ERR_INVALID_ARGUMENT {
                            let message = last_error();
                            assert!(
                                message.contains(key) || set == PLAID_OK,
                                "{key}={value:?}: {message}"
                            );
                        }
                        *statuses.entry(opened).or_insert(0usize) += 1;
                        plaid_deserializer_free(d);
                        plaid_read_options_free(o);
                    }
                }
            }
        }
        eprintln!("statuses of the opens: {statuses:?}");
        // The values that must be refused as such, naming their key, when the store is
        // built.
        for (url, base, key, value) in [
            (
                &stores[0].0,
                &stores[0].1,
                "aws_endpoint",
                "ht!tp://bad url",
            ),
            (&stores[0].0, &stores[0].1, "aws_endpoint", "http://bad url"),
            (&stores[0].0, &stores[0].1, "endpoint", "http://"),
            (&stores[0].0, &stores[0].1, "aws_region", "eu west 1"),
            (&stores[0].0, &stores[0].1, "aws_session_token", "a\nb"),
            (
                &stores[1].0,
                &stores[1].1,
                "google_base_url",
                "ht!tp://bad url",
            ),
            (
                &stores[2].0,
                &stores[2].1,
                "azure_storage_endpoint",
                "http://bad url",
            ),
            (&stores[3].0, &stores[3].1, "timeout", "soon"),
            (&stores[3].0, &stores[3].1, "proxy_url", "ht!tp://bad url"),
            (&stores[3].0, &stores[3].1, "allow_http", "maybe"),
        ] {
            // SAFETY: as above.
            unsafe {
                let mut o = ptr::null_mut();
                assert_eq!(plaid_read_options_new(&mut o), PLAID_OK);
                for (k, v) in base {
                    plaid_read_options_set_storage(o, c(k).as_ptr(), c(v).as_ptr());
                }
                assert_eq!(
                    plaid_read_options_set_storage(o, c(key).as_ptr(), c(value).as_ptr()),
                    PLAID_OK
                );
                let mut d = ptr::null_mut();
                let opened = plaid_deserializer_open(c(url).as_ptr(), o, &mut d);
                let message = last_error();
                assert_eq!(
                    opened, PLAID_ERR_INVALID_ARGUMENT,
                    "{key}={value:?}: {message}"
                );
                assert!(message.contains(key), "{key}={value:?}: {message}");
                assert!(d.is_null());
                plaid_read_options_free(o);
            }
        }
    }

    #[test]
    fn an_s3_upload_and_load_through_the_c_api() {
        let Some(s3) = S3::from_env() else { return };
        let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect();
        let url = c(&s3.url(&format!("{}/c.plaid", super::unique("c-api"))));
        // SAFETY: `w`, `o`, `s` and `d` are used only between their creation and their free
        // here; the CStrings outlive the calls they are passed to; `shape` holds the 1
        // value given and `data` its `len()` bytes, alive until after finish.
        unsafe {
            let mut w = ptr::null_mut();
            assert_eq!(plaid_write_options_new(&mut w), PLAID_OK);
            let mut o = ptr::null_mut();
            assert_eq!(plaid_read_options_new(&mut o), PLAID_OK);
            for (k, v) in &s3.pairs {
                assert_eq!(
                    plaid_write_options_set_storage(w, c(k).as_ptr(), c(v).as_ptr()),
                    PLAID_OK
                );
                assert_eq!(
                    plaid_read_options_set_storage(o, c(k).as_ptr(), c(v).as_ptr()),
                    PLAID_OK
                );
            }
            let mut s = ptr::null_mut();
            assert_eq!(
                plaid_serializer_new(url.as_ptr(), w, &mut s),
                PLAID_OK,
                "{}",
                last_error()
            );
            let shape = [data.len() as u64];
            assert_eq!(
                plaid_serializer_add_tensor(
                    s,
                    c("w").as_ptr(),
                    1,
                    shape.as_ptr(),
                    1,
                    data.as_ptr().cast(),
                    data.len() as u64
                ),
                PLAID_OK,
                "{}",
                last_error()
            );
            // Not there before finish.
            let mut d = ptr::null_mut();
            assert_eq!(
                plaid_deserializer_open(url.as_ptr(), o, &mut d),
                PLAID_ERR_NOT_FOUND
            );
            assert_eq!(plaid_serializer_finish(s), PLAID_OK, "{}", last_error());
            plaid_serializer_free(s);
            assert_eq!(
                plaid_deserializer_open(url.as_ptr(), o, &mut d),
                PLAID_OK,
                "{}",
                last_error()
            );
            assert_eq!(plaid_deserializer_tensor_count(d), 1);
            assert_eq!(plaid_deserializer_verify(d), PLAID_OK, "{}", last_error());
            plaid_deserializer_free(d);
            plaid_read_options_free(o);
            plaid_write_options_free(w);
        }
    }
}

/// A slice over HTTP asks the server for its rows only (whole checksum blocks when
/// verifying), counted by the bytes the server sent.
#[test]
fn a_remote_slice_requests_only_its_ranges() {
    let server = FaultServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    // 512 rows of 64 KiB, one checksum block of 64 KiB per row: 32 MiB.
    let data = random_bytes(512 << 16, 31);
    let options = WriteOptions::default()
        .sync(false)
        .checksum_block_size(64 << 10)
        .unwrap();
    let mut w = Serializer::create(&path, options).unwrap();
    w.add_tensor("w", DType::U8, &[512, 64 << 10], &data)
        .unwrap();
    w.finish().unwrap();
    server.put("m.plaid", std::fs::read(&path).unwrap());
    for verify in [true, false] {
        let d = Deserializer::open(server.url_of("m.plaid"), options_for_slices(verify)).unwrap();
        let before = server.ranged_bytes();
        // Rank 3 of 8: rows 192..256, 4 MiB.
        let mut out = vec![0u8; 64 << 16];
        let mut slot = Some(&mut out[..]);
        d.load(&mut |_: &plaid::format::TensorInfo| {
            let to = Destination::Host(slot.take().unwrap());
            Ok(Destination::View(
                plaid::View::whole().slice(0, 192, 256),
                Box::new(to),
            ))
        })
        .unwrap();
        assert_eq!(out, data[192 << 16..256 << 16]);
        let sent = server.ranged_bytes() - before;
        assert_eq!(
            sent,
            64 << 16,
            "verify {verify}: {sent} bytes sent for a 4 MiB slice"
        );
    }
}

fn options_for_slices(verify: bool) -> ReadOptions {
    options().verify(verify)
}
