//! The `plaid` command line: inspect, verify (exit status and the bad tensor's name), demo.

mod common;

use std::process::Command;

use common::random_bytes;
use plaid::{DType, Deserializer, ReadOptions, Serializer, WriteOptions};

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
    let fixtures =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorizer");
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
    let original = Deserializer::open(source, ReadOptions::default()).unwrap();
    let expected = common::load_all(&original).unwrap();
    for file in [
        "a.plaid",
        "b.safetensors",
        "c.tensors",
        "d.bin",
        "e.out",
        "f.tensors",
    ] {
        let d = Deserializer::open(at(file), ReadOptions::default()).unwrap();
        assert_eq!(common::load_all(&d).unwrap(), expected, "{file}");
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
