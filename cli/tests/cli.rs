//! The `plaid` command line: inspect, verify (exit status and the bad tensor's name), demo.

use std::process::Command;

use plaid::{DType, Deserializer, ReadOptions, Serializer, WriteOptions};

// The helpers the library's integration tests share (pseudo-random bytes, loading every
// tensor), from the workspace's tests/common.
#[path = "../../tests/common/mod.rs"]
mod common;
use common::{load_all, random_bytes};

/// The workspace's root, where the fixtures the library's tests share are.
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn plaid(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plaid"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `plaid ARGS` with the key material of the environment replaced by `env` (success, and
/// stdout then stderr).
fn plaid_with_keys(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plaid"))
        .args(args)
        .env_remove("PLAID_KEY")
        .env_remove("PLAID_PASSPHRASE")
        .env_remove("PLAID_ENCRYPT_KEY")
        .env_remove("PLAID_ENCRYPT_PASSPHRASE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn inspect_and_verify_and_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let a = random_bytes(40_000, 1);
    let b = random_bytes(8_000, 2);
    let mut s = Serializer::create(&path, WriteOptions::default()).unwrap();
    s.add_tensor("encoder.weight", DType::BF16, &[100, 200], &a)
        .unwrap();
    s.add_tensor("encoder.bias", DType::F32, &[2000], &b)
        .unwrap();
    s.set_metadata("architecture", "test").unwrap();
    s.finish().unwrap();
    let p = path.to_str().unwrap();

    let (ok, out, _) = plaid(&["inspect", p]);
    assert!(ok);
    assert!(
        out.contains("encoder.weight") && out.contains("bf16") && out.contains("[100, 200]"),
        "{out}"
    );
    assert!(out.contains("architecture = test"), "{out}");

    let (ok, out, _) = plaid(&["verify", p]);
    assert!(ok, "{out}");
    assert!(out.contains("OK, 2 tensors"), "{out}");

    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let offset = d.tensors()[1].offset as usize + 1234;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, _, err) = plaid(&["verify", p]);
    assert!(!ok, "verify must fail on a flipped bit");
    assert!(
        err.contains("encoder.bias") && err.contains("checksum mismatch"),
        "{err}"
    );

    // Filters: only the weight is inspected and verified, and it is intact.
    let (ok, out, _) = plaid(&["inspect", p, "--tensors", "*.weight"]);
    assert!(ok);
    assert!(out.contains("2 (1 matching *.weight)"), "{out}");
    assert!(
        out.contains("encoder.weight") && !out.contains("encoder.bias"),
        "{out}"
    );
    let (ok, out, err) = plaid(&["verify", p, "--tensors", "encoder.w*"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("OK, 1 tensors"), "{out}");
    let (ok, _, err) = plaid(&["verify", p, "--tensors", "enc*", "--tensors", "x"]);
    assert!(!ok && err.contains("encoder.bias"), "{err}");
    let (ok, _, err) = plaid(&["verify", p, "--tensors", "[bad"]);
    assert!(!ok && err.contains("'[bad'"), "{err}");
    // Converting part of a file: only the weight, read back and compared.
    let part = dir.path().join("part.safetensors");
    let (ok, _, err) = plaid(&[
        "convert",
        p,
        part.to_str().unwrap(),
        "--tensors",
        "*.weight",
    ]);
    assert!(ok, "{err}");
    let written = Deserializer::open(&part, ReadOptions::default()).unwrap();
    assert_eq!(written.tensors().len(), 1);
    assert_eq!(written.read_tensor(0).unwrap(), a);

    std::fs::write(&path, &bytes[..offset]).unwrap();
    let (ok, _, err) = plaid(&["verify", p]);
    assert!(!ok);
    assert!(err.contains("truncated") && err.contains("offset"), "{err}");
}

#[test]
fn demo_prints_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = plaid(&[
        "demo",
        "--size-mib",
        "64",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for row in [
        "serialize",
        "load into host buffers, verified",
        "verify every block",
        "memcpy",
        "GB/s",
    ] {
        assert!(out.contains(row), "missing {row}: {out}");
    }
    assert!(out.contains("byte-identical"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the demo cleans up"
    );
}

#[test]
fn bench_prints_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--size-mib",
        "16",
        "--rounds",
        "1",
        "--small-tensors",
        "200",
        "--dir",
        dir.path().to_str().unwrap(),
    ];
    let (ok, out, err) = plaid(&args);
    assert!(ok, "{err}");
    for row in [
        "limit: memcpy",
        "limit: read()",
        "naive: pread",
        "1 thread(s), verified",
        "200 tensors of 8 KiB",
        "x read()",
    ] {
        assert!(out.contains(row), "missing {row}: {out}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the bench cleans up"
    );
}

/// `plaid convert` in every direction between the three formats, the output format from
/// `--to` or the extension; `inspect` shows tensorizer's roles and paths; encrypted
/// tensorizer files are refused with a message saying so.
#[test]
fn convert_between_all_formats() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let fixtures = workspace().join("tests/fixtures/tensorizer");
    let source = fixtures.join("module_tiny_lm_f32.tensors");
    let source = source.to_str().unwrap();
    let steps = [
        (source.to_owned(), at("a.plaid"), None, "tensorizer -> "),
        (at("a.plaid"), at("b.safetensors"), None, "plaid -> "),
        (
            at("b.safetensors"),
            at("c.tensors"),
            None,
            "safetensors -> ",
        ),
        (
            at("c.tensors"),
            at("d.bin"),
            Some("safetensors"),
            "tensorizer -> ",
        ),
        (
            at("d.bin"),
            at("e.out"),
            Some("tensorizer"),
            "safetensors -> ",
        ),
        (at("a.plaid"), at("f.tensors"), None, "plaid -> "),
    ];
    for (input, output, to, what) in &steps {
        let mut args = vec!["convert", input.as_str(), output.as_str()];
        if let Some(to) = to {
            args.extend(["--to", to]);
        }
        let (ok, out, err) = plaid(&args);
        assert!(ok, "{what}: {err}");
        assert!(out.contains("read back and compared"), "{out}");
    }
    // By name: safetensors lays tensors out by dtype, then name, as safetensors does.
    let by_name = |d: &Deserializer| -> std::collections::BTreeMap<String, Vec<u8>> {
        let names = d.tensors().iter().map(|t| t.name.to_string());
        names.zip(load_all(d).unwrap()).collect()
    };
    let expected = by_name(&Deserializer::open(source, ReadOptions::default()).unwrap());
    for file in [
        "a.plaid",
        "b.safetensors",
        "c.tensors",
        "d.bin",
        "e.out",
        "f.tensors",
    ] {
        let d = Deserializer::open(at(file), ReadOptions::default()).unwrap();
        assert_eq!(by_name(&d), expected, "{file}");
    }
    // Through plaid's own format, roles and module indices survive: the file is
    // tensorizer's own, byte for byte.
    assert_eq!(
        std::fs::read(at("f.tensors")).unwrap(),
        std::fs::read(source).unwrap()
    );

    let (ok, out, _) = plaid(&["inspect", source]);
    assert!(ok && out.contains("tensorizer version 1"), "{out}");
    assert!(out.contains("param (module 1)"), "{out}");
    let nested = fixtures.join("nested_structure.tensors");
    let (ok, out, _) = plaid(&["inspect", nested.to_str().unwrap()]);
    assert!(ok && out.contains("model.layers.0.w"), "{out}");
    assert!(out.contains(r#"path ["model","layers",0,"w"]"#), "{out}");

    let encrypted = fixtures.join("encrypted_key_v3.tensors");
    let (ok, _, err) = plaid(&["convert", encrypted.to_str().unwrap(), &at("x.plaid")]);
    assert!(!ok && err.contains("encrypted"), "{err}");
}

/// `plaid` with `env` set (and every other `AWS_` variable removed).
#[cfg(feature = "remote")]
fn plaid_with_env(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plaid"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    let out = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Converting to S3 (configured from `AWS_*` variables, an `http://` endpoint used as
/// given), then inspecting, verifying and converting back from it; missing objects and
/// wrong keys exit non-zero naming the URL.
#[cfg(feature = "remote")]
#[test]
fn urls_wherever_the_cli_takes_a_file() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("PLAID_TEST_S3_ENDPOINT") else {
        assert!(
            var("PLAID_TEST_REQUIRE_SERVERS").is_none(),
            "PLAID_TEST_S3_ENDPOINT is not set: the test servers are not running"
        );
        eprintln!("skipped: the test servers are not running (scripts/servers)");
        return;
    };
    let env = vec![
        ("AWS_ENDPOINT_URL", endpoint),
        (
            "AWS_ACCESS_KEY_ID",
            var("PLAID_TEST_S3_ACCESS_KEY").unwrap(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            var("PLAID_TEST_S3_SECRET_KEY").unwrap(),
        ),
        ("AWS_REGION", var("PLAID_TEST_S3_REGION").unwrap()),
    ];
    let bucket = var("PLAID_TEST_S3_BUCKET").unwrap();
    let prefix = format!("s3://{bucket}/cli-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let a = random_bytes(3 << 20, 1);
    let mut s = Serializer::create(&path, WriteOptions::default()).unwrap();
    s.add_tensor("encoder.weight", DType::BF16, &[1024, 1536], &a)
        .unwrap();
    s.set_metadata("architecture", "test").unwrap();
    s.finish().unwrap();
    let local = path.to_str().unwrap();

    for (name, format) in [
        ("m.plaid", "plaid"),
        ("m.safetensors", "safetensors"),
        ("m.tensors", "tensorizer"),
    ] {
        let url = format!("{prefix}/{name}");
        let (ok, out, err) = plaid_with_env(&["convert", local, &url], &env);
        assert!(ok, "convert to {url}: {out}{err}");
        let (ok, out, err) = plaid_with_env(&["inspect", &url], &env);
        assert!(
            ok && out.contains("encoder.weight") && out.contains(format),
            "{out}{err}"
        );
        let (ok, out, err) = plaid_with_env(&["verify", &url], &env);
        assert!(ok, "{out}{err}");
        // And back from the URL to a local file.
        let back = dir.path().join(format!("back-{name}"));
        let (ok, out, err) = plaid_with_env(&["convert", &url, back.to_str().unwrap()], &env);
        assert!(ok, "convert from {url}: {out}{err}");
        let d = Deserializer::open(&back, ReadOptions::default()).unwrap();
        assert_eq!(d.read_tensor(0).unwrap(), a);
    }
    let missing = format!("{prefix}/absent.plaid");
    let (ok, _, err) = plaid_with_env(&["inspect", &missing], &env);
    assert!(
        !ok && err.contains(&missing) && err.contains("404"),
        "{err}"
    );
    let mut wrong = env.clone();
    wrong[2].1 = "wrong".into();
    let url = format!("{prefix}/m.plaid");
    let (ok, _, err) = plaid_with_env(&["verify", &url], &wrong);
    assert!(!ok && err.contains(&url) && err.contains("403"), "{err}");
}

/// Keys come from a file or the environment, never the command line; an encrypted
/// tensorizer file verifies with either, and converts to a plain file.
#[test]
fn encrypted_files_with_keys_from_files_and_the_environment() {
    let fixtures = workspace().join("tests/fixtures/tensorizer");
    let file = fixtures.join("encrypted_passphrase_4k_chunks_v3.tensors");
    let truth: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures.join("encrypted_passphrase_4k_chunks_v3.json")).unwrap(),
    )
    .unwrap();
    let key_hex = truth["encryption"]["key_hex"].as_str().unwrap();
    let passphrase = truth["encryption"]["passphrase"].as_str().unwrap();
    let f = file.to_str().unwrap();
    let run = plaid_with_keys;
    let (ok, out) = run(&["inspect", f], &[]);
    assert!(ok && out.contains("one_chunk_plus_1"), "{out}");
    let (ok, out) = run(&["verify", f], &[]);
    assert!(!ok && out.contains("no key"), "{out}");
    let (ok, out) = run(&["verify", f], &[("PLAID_KEY", key_hex)]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["verify", f], &[("PLAID_PASSPHRASE", passphrase)]);
    assert!(ok, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{key_hex}\n")).unwrap();
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{passphrase}\n")).unwrap();
    let (ok, out) = run(
        &["verify", f, "--key-file", key_file.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        &[
            "verify",
            f,
            "--passphrase-file",
            pass_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}");
    std::fs::write(&pass_file, "not it\n").unwrap();
    let (ok, out) = run(
        &[
            "verify",
            f,
            "--passphrase-file",
            pass_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && out.contains("authentication"), "{out}");
    // Decrypted into a plain plaid file, read back and compared by the converter.
    let plain = dir.path().join("plain.plaid");
    let (ok, out) = run(
        &["convert", f, plain.to_str().unwrap()],
        &[("PLAID_KEY", key_hex)],
    );
    assert!(ok, "{out}");
    let d = Deserializer::open(&plain, ReadOptions::default()).unwrap();
    assert!(d.tensors().iter().all(|t| t.encryption.is_none()));
    let i = d.find("one_chunk_plus_1").unwrap();
    assert_eq!(d.read_tensor(i).unwrap().len(), 4097);
}

/// plaid's own encryption from the command line: `convert` encrypts with a key or a
/// passphrase from a file or the environment (never the command line), `inspect` and
/// `verify` work without the key (the CRCs cover the stored bytes), `verify` with a wrong
/// key fails, and `convert` decrypts with the key, to plaid or tensorizer's encryption.
#[test]
fn plaid_encryption_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.plaid");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut w =
        plaid::Serializer::create(&plain, plaid::WriteOptions::default().sync(false)).unwrap();
    w.add_tensor("w", plaid::DType::U8, &[100, 1000], &data)
        .unwrap();
    w.finish().unwrap();
    let run = plaid_with_keys;
    let key_hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, key_hex).unwrap();
    let p = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let enc = dir.path().join("enc.plaid");
    // AES-256-GCM on request, then the default (AEGIS-256X4) over it.
    for cipher in ["aes-256-gcm", "aegis-256x4"] {
        let (ok, out) = run(
            &[
                "convert",
                &p(&plain),
                &p(&enc),
                "--encrypt-key-file",
                &p(&key_file),
                "--cipher",
                cipher,
            ],
            &[],
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = run(
        &["convert", &p(&plain), &p(&enc), "--cipher", "rot13"],
        &[("PLAID_ENCRYPT_KEY", key_hex)],
    );
    assert!(!ok && out.contains("rot13"), "{out}");
    assert!(!std::fs::read(&enc)
        .unwrap()
        .windows(64)
        .any(|w| w == &data[1000..1064]));
    let (ok, out) = run(&["inspect", &p(&enc)], &[]);
    assert!(
        ok && out.contains("encryption: AEGIS-256X4, raw key"),
        "{out}"
    );
    let (ok, out) = run(&["verify", &p(&enc)], &[]);
    assert!(ok, "without the key the stored bytes verify: {out}");
    let (ok, out) = run(&["verify", &p(&enc)], &[("PLAID_KEY", key_hex)]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["verify", &p(&enc)], &[("PLAID_KEY", &"11".repeat(32))]);
    assert!(!ok && out.contains("wrong key"), "{out}");
    // Decrypted back, by the key in the environment; without it, nothing is written.
    let back = dir.path().join("back.plaid");
    let (ok, out) = run(&["convert", &p(&enc), &p(&back)], &[]);
    assert!(!ok && out.contains("no key") && !back.exists(), "{out}");
    let (ok, out) = run(&["convert", &p(&enc), &p(&back)], &[("PLAID_KEY", key_hex)]);
    assert!(ok, "{out}");
    let d = Deserializer::open(&back, ReadOptions::default()).unwrap();
    assert_eq!(d.read_tensor(0).unwrap(), data);
    // Re-encrypted under a passphrase from the environment (cheap limits), and into
    // tensorizer's encryption.
    let pw = dir.path().join("pw.plaid");
    let (ok, out) = run(
        &[
            "convert",
            &p(&enc),
            &p(&pw),
            "--kdf-passes",
            "1",
            "--kdf-memory",
            "65536",
        ],
        &[
            ("PLAID_KEY", key_hex),
            ("PLAID_ENCRYPT_PASSPHRASE", "sesame"),
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["inspect", &p(&pw)], &[]);
    assert!(
        ok && out.contains("key from a passphrase (Argon2id, 1 passes over 64.00 KiB)"),
        "{out}"
    );
    let d = Deserializer::open(
        &pw,
        ReadOptions::default().passphrase(Some(b"sesame")).unwrap(),
    )
    .unwrap();
    assert_eq!(d.read_tensor(0).unwrap(), data);
    let tz = dir.path().join("enc.tensors");
    let (ok, out) = run(
        &["convert", &p(&plain), &p(&tz)],
        &[("PLAID_ENCRYPT_KEY", key_hex)],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["verify", &p(&tz)], &[("PLAID_KEY", key_hex)]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["verify", &p(&tz)], &[]);
    assert!(!ok && out.contains("no key"), "{out}");
    // safetensors cannot be encrypted: refused, not written in the clear.
    let st = dir.path().join("x.safetensors");
    let (ok, out) = run(
        &["convert", &p(&plain), &p(&st)],
        &[("PLAID_ENCRYPT_KEY", key_hex)],
    );
    assert!(
        !ok && out.contains("cannot be encrypted") && !st.exists(),
        "{out}"
    );
}

/// A key from the environment expects an encrypted file: `verify` and `convert` refuse a
/// file in the clear (naming where the key came from) unless `--allow-plaintext`.
#[test]
fn a_key_from_the_environment_refuses_a_file_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.plaid");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = Serializer::create(&plain, WriteOptions::default().sync(false)).unwrap();
    w.add_tensor("w", DType::U8, &[50_000], &data).unwrap();
    w.finish().unwrap();
    let run = plaid_with_keys;
    let p = plain.to_str().unwrap();
    let key = [("PLAID_KEY", "00".repeat(32))];
    let key: Vec<(&str, &str)> = key.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, out) = run(&["verify", p], &key);
    assert!(!ok, "{out}");
    assert!(out.contains("stored in the clear"), "{out}");
    assert!(out.contains("from the environment's PLAID_KEY"), "{out}");
    assert!(out.contains("--allow-plaintext"), "{out}");
    let copy = dir.path().join("copy.plaid");
    let (ok, out) = run(&["convert", p, copy.to_str().unwrap()], &key);
    assert!(
        !ok && out.contains("stored in the clear") && !copy.exists(),
        "{out}"
    );
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let (ok, out) = run(
        &["verify", p, "--key-file", key_file.to_str().unwrap()],
        &[],
    );
    assert!(!ok && out.contains("stored in the clear"), "{out}");
    assert!(!out.contains("environment"), "{out}");
    // Chosen explicitly: read in the clear.
    let (ok, out) = run(&["verify", p, "--allow-plaintext"], &key);
    assert!(ok, "{out}");
    let (ok, out) = run(
        &["convert", p, copy.to_str().unwrap(), "--allow-plaintext"],
        &key,
    );
    assert!(ok, "{out}");
    // Without a key, nothing changes.
    let (ok, out) = run(&["verify", p], &[]);
    assert!(ok, "{out}");
}

/// A malformed endpoint from the environment is an error naming the variable, never a
/// panic (exit status 101).
#[test]
fn a_malformed_endpoint_in_the_environment_is_an_error_naming_it() {
    for (var, value) in [
        ("AWS_ENDPOINT_URL", "ht!tp://bad url"),
        ("AWS_ENDPOINT_URL", "http://bad url"),
        ("AWS_ENDPOINT", "http://"),
        ("AWS_REGION", "eu west 1"),
        ("AWS_SESSION_TOKEN", "a\nb"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_plaid"))
            .args(["verify", "s3://bucket/model.plaid"])
            .env(var, value)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value:?}: {err}");
        assert!(err.contains(var), "{var}={value:?}: {err}");
        assert!(!err.contains("panicked"), "{var}={value:?}: {err}");
    }
}
