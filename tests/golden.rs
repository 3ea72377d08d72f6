//! Golden files: small plaid files committed under `tests/golden/`, read by the Rust, C
//! and Python tests. This test checks that the committed files still load exactly as
//! `golden.json` says (old files stay readable) and that the writer still produces the
//! same layout and bytes for the same input (the format did not drift).
//!
//! Regenerate with `PLAID_BLESS=1 cargo test --test golden` (only for a deliberate
//! format change, which also needs a new format version).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{tensor as t, Tensor};
use plaid::format::proto;
use plaid::{DType, Deserializer, ReadOptions, Serializer, WriteOptions};
use prost::Message;
use sha2::{Digest, Sha256};

struct GoldenFile {
    name: &'static str,
    block_size: u64,
    metadata: Vec<(&'static str, &'static str)>,
    tensors: Vec<Tensor>,
}

fn golden_files() -> Vec<GoldenFile> {
    vec![
        GoldenFile {
            name: "all_dtypes.plaid",
            block_size: 4 << 20,
            metadata: vec![
                ("purpose", "one tensor of every dtype"),
                ("format", "plaid v1"),
            ],
            tensors: DType::ALL
                .iter()
                .map(|&d| t(&format!("{d}.tensor"), d, &[2, 3], u64::from(d.id())))
                .collect(),
        },
        GoldenFile {
            name: "odd_shapes.plaid",
            block_size: 4096,
            metadata: vec![(
                "purpose",
                "scalars, empty tensors, rank 8, unicode, multi-block",
            )],
            tensors: vec![
                t("scalar", DType::F32, &[], 1),
                t("empty", DType::BF16, &[0, 7], 2),
                t("rank8", DType::I16, &[1, 2, 1, 2, 1, 2, 1, 2], 3),
                t("模型.层.权重", DType::F16, &[5], 4),
                t("multi_block", DType::U8, &[10_000], 5),
            ],
        },
        GoldenFile {
            name: "empty.plaid",
            block_size: 4 << 20,
            metadata: vec![("purpose", "no tensors, only metadata")],
            tensors: vec![],
        },
    ]
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn write_golden(file: &GoldenFile, path: &Path) {
    let options = WriteOptions::default()
        .checksum_block_size(file.block_size)
        .unwrap()
        .sync(false);
    let mut s = Serializer::create(path, options).unwrap();
    for t in &file.tensors {
        s.add_tensor(&t.name, t.dtype, &t.shape, &t.data).unwrap();
    }
    for (k, v) in &file.metadata {
        s.set_metadata(k, v).unwrap();
    }
    s.finish().unwrap();
}

fn expectations(files: &[GoldenFile]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for f in files {
        let tensors: Vec<serde_json::Value> = f
            .tensors
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "sha256": hex(&Sha256::digest(&t.data)),
                })
            })
            .collect();
        let metadata: BTreeMap<_, _> = f.metadata.iter().cloned().collect();
        out.insert(
            f.name.into(),
            serde_json::json!({ "metadata": metadata, "tensors": tensors }),
        );
    }
    serde_json::json!({ "files": out })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The header of a plaid file with the writer's name blanked: everything that must not
/// drift between releases.
fn header_without_writer(bytes: &[u8]) -> proto::Header {
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let mut header = proto::Header::decode(&bytes[32..32 + len]).unwrap();
    header.writer.clear();
    header
}

#[test]
fn golden_files_are_current_and_load_as_recorded() {
    let files = golden_files();
    let dir = golden_dir();
    if std::env::var_os("PLAID_BLESS").is_some() {
        for f in &files {
            write_golden(f, &dir.join(f.name));
        }
        let json = serde_json::to_string_pretty(&expectations(&files)).unwrap();
        std::fs::write(dir.join("golden.json"), json + "\n").unwrap();
    }

    // 1. The committed files load as golden.json records (compatibility).
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let recorded = recorded["files"].as_object().unwrap();
    assert_eq!(recorded.len(), files.len());
    for (name, expected) in recorded {
        let d = Deserializer::open(dir.join(name), ReadOptions::default()).unwrap();
        d.verify().unwrap();
        let tensors = expected["tensors"].as_array().unwrap();
        assert_eq!(d.tensors().len(), tensors.len(), "{name}");
        for (info, want) in d.tensors().iter().zip(tensors) {
            assert_eq!(info.name, want["name"].as_str().unwrap());
            assert_eq!(info.dtype.name(), want["dtype"].as_str().unwrap());
            let shape: Vec<u64> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(info.shape.as_slice(), shape.as_slice());
            let bytes = d.read_tensor(info.index).unwrap();
            assert_eq!(
                hex(&Sha256::digest(&bytes)),
                want["sha256"].as_str().unwrap(),
                "{name}: {}",
                info.name
            );
        }
        let metadata: BTreeMap<String, String> =
            serde_json::from_value(expected["metadata"].clone()).unwrap();
        assert_eq!(d.metadata(), &metadata, "{name}");
    }

    // 2. Today's writer lays out the same input identically (no format drift).
    let scratch = tempfile::tempdir().unwrap();
    for f in &files {
        let fresh_path = scratch.path().join(f.name);
        write_golden(f, &fresh_path);
        let fresh = std::fs::read(&fresh_path).unwrap();
        let committed = std::fs::read(dir.join(f.name)).unwrap();
        assert_eq!(&fresh[..10], &committed[..10], "{}: magic", f.name);
        assert_eq!(
            header_without_writer(&fresh),
            header_without_writer(&committed),
            "{}: header",
            f.name
        );
        assert_eq!(fresh.len(), committed.len(), "{}: length", f.name);
        let data_offset = header_without_writer(&fresh).data_offset as usize;
        assert!(
            fresh[data_offset..] == committed[data_offset..],
            "{}: data region differs",
            f.name
        );
    }
}
