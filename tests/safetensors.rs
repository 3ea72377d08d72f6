//! safetensors files through the same deserializer: detection, every dtype, metadata,
//! and the validation safetensors itself does.

mod common;

use common::random_bytes;
use plaid::{DType, Deserializer, Error, Format, ReadOptions};
use serde_json::json;

/// A safetensors file: the 8-byte length, `header` as JSON padded with spaces to a
/// multiple of 8 (as the safetensors library writes it), then `data`.
fn file(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

fn open(bytes: Vec<u8>) -> plaid::Result<Deserializer> {
    let dir = tempfile::tempdir().unwrap();
    // The name says nothing: the format comes from the bytes.
    let path = dir.path().join("weights.bin");
    std::fs::write(&path, bytes).unwrap();
    Deserializer::open(&path, ReadOptions::default())
}

fn load_all(d: &Deserializer) -> Vec<Vec<u8>> {
    common::load_all(d).unwrap()
}

#[test]
fn every_dtype_loads_with_metadata_in_offset_order() {
    let kinds: &[(&str, DType, u64)] = &[
        ("BOOL", DType::Bool, 1),
        ("U8", DType::U8, 1),
        ("I8", DType::I8, 1),
        ("I16", DType::I16, 2),
        ("U16", DType::U16, 2),
        ("I32", DType::I32, 4),
        ("U32", DType::U32, 4),
        ("I64", DType::I64, 8),
        ("U64", DType::U64, 8),
        ("F16", DType::F16, 2),
        ("BF16", DType::BF16, 2),
        ("F32", DType::F32, 4),
        ("F64", DType::F64, 8),
        ("C64", DType::C64, 8),
        ("F8_E4M3", DType::F8E4M3FN, 1),
        ("F8_E5M2", DType::F8E5M2, 1),
        ("F8_E8M0", DType::F8E8M0FNU, 1),
    ];
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "note": "ünïcödé"}),
    );
    let mut data = Vec::new();
    let mut expected = Vec::new();
    // Written in reverse name order: the file order is the offset order.
    for (i, (name, dtype, size)) in kinds.iter().enumerate().rev() {
        let bytes = random_bytes((3 * 5 * size) as usize, i as u64);
        let begin = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            format!("t.{name}"),
            json!({"dtype": name, "shape": [3, 5], "data_offsets": [begin, data.len()]}),
        );
        expected.push((format!("t.{name}"), *dtype, bytes));
    }
    // F4 packs two values per byte: shape [4, 6] is 12 bytes, [4, 3] in plaid's units.
    let f4 = random_bytes(12, 99);
    let begin = data.len();
    data.extend_from_slice(&f4);
    header.insert(
        "t.F4".into(),
        json!({"dtype": "F4", "shape": [4, 6], "data_offsets": [begin, data.len()]}),
    );
    // 0-d and empty tensors.
    let scalar = random_bytes(4, 100);
    let begin = data.len();
    data.extend_from_slice(&scalar);
    header.insert(
        "scalar".into(),
        json!({"dtype": "F32", "shape": [], "data_offsets": [begin, begin + 4]}),
    );
    header.insert(
        "empty".into(),
        json!({"dtype": "F32", "shape": [0, 3], "data_offsets": [begin + 4, begin + 4]}),
    );

    let d = open(file(&serde_json::Value::Object(header), &data)).unwrap();
    assert_eq!(d.format(), Format::Safetensors);
    assert_eq!(d.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(
        d.metadata().get("note").map(String::as_str),
        Some("ünïcödé")
    );
    let loaded = load_all(&d);
    for (name, dtype, bytes) in &expected {
        let i = d.find(name).unwrap();
        let t = d.tensor(i).unwrap();
        assert_eq!(
            (t.dtype, t.shape.as_slice()),
            (*dtype, &[3u64, 5][..]),
            "{name}"
        );
        assert_eq!(&loaded[i], bytes, "{name}");
    }
    let i = d.find("t.F4").unwrap();
    assert_eq!(d.tensor(i).unwrap().dtype, DType::F4E2M1FNx2);
    assert_eq!(d.tensor(i).unwrap().shape.as_slice(), [4, 3]);
    assert_eq!(loaded[i], f4);
    let i = d.find("scalar").unwrap();
    assert_eq!(loaded[i], scalar);
    assert_eq!(d.tensor(d.find("empty").unwrap()).unwrap().nbytes, 0);
    // Offsets ascend in file order; views work on these files too.
    assert!(d.tensors().windows(2).all(|w| w[0].offset <= w[1].offset));
    let i = d.find("t.F64").unwrap();
    assert_eq!(d.view(i).unwrap(), &loaded[i][..]);
    // Loading into plaid-allocated memory works the same.
    let arena = d.load_to_host(&mut |_| true, None).unwrap();
    assert_eq!(arena.tensor(i).unwrap(), &loaded[i][..]);
}

#[test]
fn empty_and_metadata_only_files_open() {
    let d = open(file(&json!({}), &[])).unwrap();
    assert_eq!((d.format(), d.tensors().len()), (Format::Safetensors, 0));
    let d = open(file(&json!({"__metadata__": {"a": "b"}}), &[])).unwrap();
    assert_eq!(d.metadata().len(), 1);
    // Unaligned offsets (an odd-sized first tensor) are fine.
    let data = random_bytes(3 + 8, 1);
    let d = open(file(
        &json!({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                "b": {"dtype": "F64", "shape": [1], "data_offsets": [3, 11]}}),
        &data,
    ))
    .unwrap();
    let loaded = load_all(&d);
    assert_eq!(loaded[1], &data[3..]);
}

#[test]
fn invalid_files_are_refused_as_safetensors_refuses_them() {
    let t = |dtype: &str, shape: serde_json::Value, a: u64, b: u64| json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            file(&json!({"a": t("F32", json!([2]), 0, 8)}), &[0; 4]),
            "truncated",
        ),
        (
            file(&json!({"a": t("F32", json!([2]), 0, 8)}), &[0; 12]),
            "belong to none",
        ),
        (
            file(&json!({"a": t("F32", json!([2]), 0, 7)}), &[0; 7]),
            "needs 8",
        ),
        (
            file(
                &json!({"a": t("U8", json!([4]), 0, 4), "b": t("U8", json!([4]), 2, 6)}),
                &[0; 6],
            ),
            "overlaps",
        ),
        (
            file(
                &json!({"a": t("U8", json!([4]), 0, 4), "b": t("U8", json!([4]), 6, 10)}),
                &[0; 10],
            ),
            "gap",
        ),
        (
            file(&json!({"a": t("F4", json!([3]), 0, 1)}), &[0; 1]),
            "even",
        ),
        (
            file(&json!({"a": {"dtype": "F32", "shape": [1]}}), &[0; 4]),
            "data_offsets",
        ),
        (
            file(&json!({"a": t("F32", json!([-1]), 0, 4)}), &[0; 4]),
            "dimension",
        ),
        (
            file(&json!({"__metadata__": {"a": 1}}), &[]),
            "not a string",
        ),
    ];
    for (bytes, needle) in cases {
        let err = open(bytes).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{needle}: {err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(err.to_string().contains("weights.bin"), "{err}");
    }
    // An unknown dtype is unsupported, naming it.
    let err = open(file(&json!({"a": t("F6_E2M3", json!([4]), 0, 3)}), &[0; 3])).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("F6_E2M3"),
        "{err}"
    );
    // Invalid JSON.
    let mut bad = file(&json!({"a": 1}), &[]);
    bad[9] = b'#';
    assert!(open(bad).unwrap_err().to_string().contains("JSON"));
    // A huge declared header: refused before anything is allocated. (Sniffed as not
    // safetensors, so the reader reports the bad plaid magic; either way, an error.)
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(matches!(open(huge).unwrap_err(), Error::Format { .. }));
    let mut over = (200_000_000u64).to_le_bytes().to_vec();
    over.extend_from_slice(b"{}");
    over.resize(300, b' ');
    assert!(open(over).is_err());
    // A file with tensorizer's magic is read as one: this one is cut short.
    let err = open(b"|TZR|\x05\x00\x00\x00 and more bytes".to_vec()).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("tensorizer"),
        "{err}"
    );
}

#[test]
fn every_truncation_of_a_safetensors_file_is_an_error() {
    let data = random_bytes(64, 5);
    let bytes = file(
        &json!({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
                "b": {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]}}),
        &data,
    );
    for cut in 0..bytes.len() {
        assert!(open(bytes[..cut].to_vec()).is_err(), "cut at {cut} opened");
    }
    assert!(open(bytes).is_ok());
}

#[test]
fn convert_round_trips_safetensors_through_plaid() {
    let data = random_bytes(6 * 4 + 10 + 12, 42);
    let original = file(
        &json!({"__metadata__": {"format": "pt"},
                "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                "b": {"dtype": "I8", "shape": [10], "data_offsets": [24, 34]},
                "f4": {"dtype": "F4", "shape": [3, 8], "data_offsets": [34, 46]}}),
        &data,
    );
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("in.safetensors");
    std::fs::write(&st, &original).unwrap();
    let source = Deserializer::open(&st, ReadOptions::default()).unwrap();
    let as_plaid = dir.path().join("mid.plaid");
    plaid::convert::to_plaid(
        &source,
        &as_plaid,
        plaid::WriteOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let mid = Deserializer::open(&as_plaid, ReadOptions::default()).unwrap();
    assert_eq!(mid.format(), Format::Plaid);
    mid.verify().unwrap();
    let back = dir.path().join("out.safetensors");
    let mut reports = 0;
    plaid::convert::to_safetensors(&mid, &back, &mut |_, _| reports += 1).unwrap();
    assert!(reports >= 3);
    let round = Deserializer::open(&back, ReadOptions::default()).unwrap();
    assert_eq!(round.format(), Format::Safetensors);
    assert_eq!(round.metadata(), source.metadata());
    for (i, t) in source.tensors().iter().enumerate() {
        let j = round.find(&t.name).unwrap();
        assert_eq!(
            (&round.tensors()[j].shape, round.tensors()[j].dtype),
            (&t.shape, t.dtype)
        );
        assert_eq!(
            round.view(j).unwrap(),
            source.view(i).unwrap(),
            "{}",
            t.name
        );
    }
    // The F4 tensor's shape is in values again in the safetensors header.
    let header_len = u64::from_le_bytes(std::fs::read(&back).unwrap()[..8].try_into().unwrap());
    let header = std::fs::read(&back).unwrap()[8..8 + header_len as usize].to_vec();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["f4"]["shape"], json!([3, 8]));
}

#[test]
fn convert_refuses_what_safetensors_cannot_hold_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.plaid");
    let mut w =
        plaid::Serializer::create(&path, plaid::WriteOptions::default().sync(false)).unwrap();
    let bytes = random_bytes(16, 1);
    w.add_tensor("ok", DType::U8, &[16], &bytes).unwrap();
    w.add_tensor("complex32", DType::C32, &[4], &bytes).unwrap();
    w.finish().unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let out = dir.path().join("c.safetensors");
    let err = plaid::convert::to_safetensors(&d, &out, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("complex32"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the source remains");
}

/// Two shards and their index, as `transformers` writes a sharded checkpoint.
fn sharded(dir: &std::path::Path, weight_map: serde_json::Value) -> std::path::PathBuf {
    let a = random_bytes(8 + 3 + 40, 1);
    let b = random_bytes(5 + 16, 2);
    std::fs::write(
        dir.join("model-00001-of-00002.safetensors"),
        file(
            &json!({"__metadata__": {"format": "pt"},
                    "x.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "x.bias": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
                    "y.weight": {"dtype": "F64", "shape": [5], "data_offsets": [11, 51]}}),
            &a,
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        file(
            &json!({"z.bias": {"dtype": "I8", "shape": [5], "data_offsets": [0, 5]},
                    "z.weight": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [5, 21]}}),
            &b,
        ),
    )
    .unwrap();
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        serde_json::to_vec_pretty(
            &json!({"metadata": {"total_size": 72}, "weight_map": weight_map}),
        )
        .unwrap(),
    )
    .unwrap();
    index
}

fn full_map() -> serde_json::Value {
    json!({"x.weight": "model-00001-of-00002.safetensors",
           "x.bias": "model-00001-of-00002.safetensors",
           "y.weight": "model-00001-of-00002.safetensors",
           "z.bias": "model-00002-of-00002.safetensors",
           "z.weight": "model-00002-of-00002.safetensors"})
}

#[test]
fn a_sharded_checkpoint_opens_as_one_model_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let index = sharded(dir.path(), full_map());
    for threads in [1, 3] {
        let options = ReadOptions::default().threads(threads).unwrap();
        let d = Deserializer::open(&index, options).unwrap();
        assert_eq!(d.format(), Format::Safetensors);
        assert_eq!(d.tensors().len(), 5);
        assert_eq!(
            d.metadata().get("total_size").map(String::as_str),
            Some("72")
        );
        assert_eq!(d.metadata().get("format").map(String::as_str), Some("pt"));
        let loaded = load_all(&d);
        // Each tensor's bytes are those of its shard.
        for shard in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ] {
            let one = Deserializer::open(dir.path().join(shard), ReadOptions::default()).unwrap();
            let own = load_all(&one);
            for (t, bytes) in one.tensors().iter().zip(own) {
                assert_eq!(loaded[d.find(&t.name).unwrap()], bytes, "{}", t.name);
            }
        }
        let arena = d.load_to_host(&mut |_| true, None).unwrap();
        let z = d.find("z.weight").unwrap();
        assert_eq!(arena.tensor(z).unwrap(), &loaded[z][..]);
        // Zero-copy views: each shard is mapped on its own.
        d.map().unwrap();
        for (i, bytes) in loaded.iter().enumerate() {
            assert_eq!(d.view(i).unwrap(), &bytes[..]);
        }
    }
    // A sharded checkpoint converts to one plaid file and one safetensors file, metadata
    // included.
    let d = Deserializer::open(&index, ReadOptions::default()).unwrap();
    let expected = load_all(&d);
    for out in ["one.plaid", "one.safetensors"] {
        let out = dir.path().join(out);
        if out.extension().unwrap() == "plaid" {
            plaid::convert::to_plaid(&d, &out, Default::default(), &mut |_, _| {}).unwrap();
        } else {
            plaid::convert::to_safetensors(&d, &out, &mut |_, _| {}).unwrap();
        }
        let one = Deserializer::open(&out, ReadOptions::default()).unwrap();
        assert_eq!(one.metadata(), d.metadata());
        // By name: a safetensors file lays tensors out by dtype, then name.
        let loaded = load_all(&one);
        for (i, t) in d.tensors().iter().enumerate() {
            assert_eq!(
                loaded[one.find(&t.name).unwrap()],
                expected[i],
                "{}",
                t.name
            );
        }
    }
}

#[test]
fn a_sharded_checkpoint_that_disagrees_with_its_index_is_refused() {
    let cases = [
        (
            json!({"x.weight": "model-00001-of-00002.safetensors"}),
            "not in the weight map",
        ),
        (
            {
                let mut m = full_map();
                m["z.bias"] = json!("model-00001-of-00002.safetensors");
                m
            },
            "weight map says",
        ),
        (
            {
                let mut m = full_map();
                m["ghost"] = json!("model-00002-of-00002.safetensors");
                m
            },
            "'ghost' is in the weight map",
        ),
        (
            {
                let mut m = full_map();
                m["w"] = json!("../elsewhere.safetensors");
                m
            },
            "not a file name",
        ),
    ];
    for (map, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let index = sharded(dir.path(), map);
        let err = Deserializer::open(&index, ReadOptions::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    // A missing shard names it.
    let dir = tempfile::tempdir().unwrap();
    let index = sharded(dir.path(), full_map());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = Deserializer::open(&index, ReadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
    // An empty weight map is a model without tensors.
    let dir = tempfile::tempdir().unwrap();
    let index = sharded(dir.path(), json!({}));
    let d = Deserializer::open(&index, ReadOptions::default()).unwrap();
    assert_eq!(d.tensors().len(), 0);
    // Not an index at all.
    std::fs::write(&index, b"{\"no\": 1}").unwrap();
    let err = Deserializer::open(&index, ReadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("weight_map"), "{err}");
}

#[test]
fn written_safetensors_files_are_laid_out_as_safetensors_writes_them() {
    // Tensors given in another order, with metadata: the output orders tensors by dtype
    // (safetensors' order, widest first) then by name, fields as safetensors writes them,
    // the metadata first with its keys sorted, the header padded with spaces to 8 bytes.
    let dir = tempfile::tempdir().unwrap();
    let mid = dir.path().join("in.plaid");
    let zeros16 = vec![0u8; 16];
    let f16 = vec![0u8; 8];
    let fnuz = vec![0x40u8];
    let mut s = plaid::Serializer::create(&mid, plaid::WriteOptions::default()).unwrap();
    s.add_tensor("test2", DType::F16, &[2, 2], &f16).unwrap();
    s.add_tensor("e4", DType::F8E4M3FNUZ, &[1], &fnuz).unwrap();
    s.add_tensor("test1", DType::I32, &[2, 2], &zeros16)
        .unwrap();
    s.set_metadata("zeta", "2").unwrap();
    s.set_metadata("alpha", "\"1\"").unwrap();
    s.finish().unwrap();
    let out = dir.path().join("out.safetensors");
    let source = Deserializer::open(&mid, ReadOptions::default()).unwrap();
    plaid::convert::to_safetensors(&source, &out, &mut |_, _| {}).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let header = br#"{"__metadata__":{"alpha":"\"1\"","zeta":"2"},"test1":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},"test2":{"dtype":"F16","shape":[2,2],"data_offsets":[16,24]},"e4":{"dtype":"F8_E4M3FNUZ","shape":[1],"data_offsets":[24,25]}}"#;
    let padded = header.len().next_multiple_of(8);
    assert_eq!(&bytes[..8], &(padded as u64).to_le_bytes());
    assert_eq!(&bytes[8..8 + header.len()], &header[..]);
    assert!(bytes[8 + header.len()..8 + padded]
        .iter()
        .all(|&b| b == b' '));
    assert_eq!(bytes.len(), 8 + padded + 25);
    // Read back: the fnuz float8 is a dtype of its own.
    let back = Deserializer::open(&out, ReadOptions::default()).unwrap();
    let e4 = back.find("e4").unwrap();
    assert_eq!(back.tensors()[e4].dtype, DType::F8E4M3FNUZ);
    assert_eq!(back.view(e4).unwrap(), &fnuz[..]);
}
