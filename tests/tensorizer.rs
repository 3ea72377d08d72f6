//! Every tensorizer fixture in `tests/fixtures/tensorizer/` (files written by the real
//! tensorizer package, several releases) read through the Rust API and the C API and
//! compared with its `.json` ground truth: names, paths, dtypes, shapes, roles, module
//! indices and the SHA-256 of every tensor's bytes; damaged fixtures give the behaviour
//! their `.json` says a correct reader must show.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::{c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr;

use plaid::ffi::deserializer::*;
use plaid::ffi::placement::*;
use plaid::ffi::read_options::*;
use plaid::ffi::status::*;
use plaid::{DType, Deserializer, Error, Format, ReadOptions, TensorRole};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorizer")
}

/// The fixture's file stem for a test name (`v1_by_tensorizer_1_1_0` is
/// `v1_by_tensorizer_1.1.0`).
fn stem(id: &str) -> String {
    std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".tensors").map(str::to_owned)
        })
        .find(|stem| stem.replace('.', "_") == id)
        .unwrap_or_else(|| panic!("no fixture for {id}"))
}

fn truth(fixture: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("{}.json", stem(fixture)))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn path(fixture: &str) -> PathBuf {
    dir().join(format!("{}.tensors", stem(fixture)))
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn torch_dtype(name: &str) -> DType {
    match name.strip_prefix("torch.").unwrap() {
        "float32" => DType::F32,
        "float16" => DType::F16,
        "float64" => DType::F64,
        "bfloat16" => DType::BF16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "int16" => DType::I16,
        "int32" => DType::I32,
        "int64" => DType::I64,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        "bool" => DType::Bool,
        "complex32" => DType::C32,
        "complex64" => DType::C64,
        "complex128" => DType::C128,
        "float8_e5m2" => DType::F8E5M2,
        "float8_e4m3fn" => DType::F8E4M3FN,
        "float8_e5m2fnuz" => DType::F8E5M2FNUZ,
        "float8_e4m3fnuz" => DType::F8E4M3FNUZ,
        "float8_e8m0fnu" => DType::F8E8M0FNU,
        "float4_e2m1fn_x2" => DType::F4E2M1FNx2,
        other => panic!("unexpected torch dtype {other}"),
    }
}

/// The name plaid gives a tensor: the stored name, or for a structured one (0x1E + a
/// JSON path) the path's components joined by dots.
fn expected_name(t: &Value) -> String {
    let raw = t["name"].as_str().unwrap();
    if raw.starts_with('\u{1e}') {
        t["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".")
    } else {
        raw.to_owned()
    }
}

/// Load every tensor through the Rust API with these options.
fn load(fixture: &str, options: ReadOptions) -> plaid::Result<Vec<Vec<u8>>> {
    let d = Deserializer::open(path(fixture), options)?;
    common::load_all(&d)
}

/// Check the index and the bytes of an intact fixture against its ground truth.
fn check_intact(fixture: &str) {
    let truth = truth(fixture);
    let tensors = truth["tensors"].as_array().unwrap();
    let hash_mismatch: Vec<&str> = truth["expected_hash_mismatch"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    let d = Deserializer::open(path(fixture), ReadOptions::default()).unwrap();
    assert_eq!(d.format(), Format::Tensorizer);
    assert_eq!(
        u64::from(d.format_version()),
        truth["format_version"].as_u64().unwrap()
    );
    assert_eq!(d.tensors().len(), tensors.len());
    for (info, t) in d.tensors().iter().zip(tensors) {
        let name = expected_name(t);
        assert_eq!(info.name, name);
        assert_eq!(d.find(&name).unwrap(), info.index);
        assert_eq!(
            info.dtype,
            torch_dtype(t["torch_dtype"].as_str().unwrap()),
            "{name}"
        );
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(info.shape.as_slice(), shape.as_slice(), "{name}");
        assert_eq!(info.nbytes, t["nbytes"].as_u64().unwrap(), "{name}");
        assert_eq!(info.zero_fill, t["is_meta"].as_bool().unwrap(), "{name}");
        assert_eq!(info.offset, t["data_offset"].as_u64().unwrap(), "{name}");
        assert_eq!(
            u64::from(info.module_index),
            t["module_idx"].as_u64().unwrap(),
            "{name}"
        );
        let role = match t["tensor_type"].as_str().unwrap() {
            "PARAM" => TensorRole::Param,
            "BUFFER" => TensorRole::Buffer,
            "STATE_DICT" => TensorRole::StateDict,
            other => panic!("role {other}"),
        };
        assert_eq!(info.role, role, "{name}");
        match &info.path {
            Some(p) => {
                assert!(t["name"].as_str().unwrap().starts_with('\u{1e}'));
                let parsed: Value = serde_json::from_str(p).unwrap();
                assert_eq!(&parsed, &t["path"], "{name}");
            }
            None => assert!(!t["name"].as_str().unwrap().starts_with('\u{1e}')),
        }
    }

    let check_bytes = |loaded: &[Vec<u8>], how: &str| {
        for (bytes, t) in loaded.iter().zip(tensors) {
            assert_eq!(
                sha(bytes),
                t["sha256"].as_str().unwrap(),
                "{fixture}: tensor {} ({how})",
                expected_name(t)
            );
        }
    };
    // Without verification every fixture loads, through the mapping and through pread.
    for mmap in [true, false] {
        let options = ReadOptions::default().verify(false).mmap(mmap);
        check_bytes(&load(fixture, options).unwrap(), "unverified");
    }
    // Views: zero-copy, meta tensors as zero pages.
    let d = Deserializer::open(path(fixture), ReadOptions::default().verify(false)).unwrap();
    d.map().unwrap();
    let views: Vec<Vec<u8>> = (0..d.tensors().len())
        .map(|i| d.view(i).unwrap().to_vec())
        .collect();
    check_bytes(&views, "views");

    // With verification and the SHA-256s, the file's own CRC32 and SHA-256 are checked:
    // every tensor passes except those whose stored hashes tensorizer itself got wrong.
    for chunk in [4096, 16 << 20] {
        let options = ReadOptions::default()
            .verify_sha256(true)
            .threads(2)
            .unwrap()
            .request_bytes(chunk)
            .unwrap();
        let verified = load(fixture, options.clone());
        let checked = Deserializer::open(path(fixture), options.clone())
            .unwrap()
            .verify();
        match hash_mismatch.as_slice() {
            [] => {
                check_bytes(&verified.unwrap(), "verified");
                checked.unwrap();
            }
            [bad] => {
                for err in [verified.unwrap_err(), checked.unwrap_err()] {
                    assert!(
                        matches!(&err, Error::HashMismatch { tensor, .. } if tensor == bad),
                        "{err}"
                    );
                    assert!(err.to_string().contains(&stem(fixture)), "{err}");
                }
            }
            more => panic!("{more:?}"),
        }
    }
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Encrypted files open without a key (names, dtypes and shapes are in the clear), refuse
/// to load without one, and decrypt bit-exact with the file's raw key and, where the file
/// derived it, with its passphrase: verified or not, in pieces of every size, through
/// short reads. A wrong key fails authentication, naming the tensor.
fn check_encrypted(fixture: &str) {
    let truth = truth(fixture);
    let encryption = &truth["encryption"];
    let key = unhex(encryption["key_hex"].as_str().unwrap());
    let damaged = truth["damaged"].as_bool().unwrap_or(false);
    let tensors = truth["tensors"].as_array().unwrap();
    // Without a key: the index, then PLAID_ERR_DECRYPT naming an encrypted tensor.
    let d = Deserializer::open(path(fixture), ReadOptions::default()).unwrap();
    assert_eq!(d.tensors().len(), tensors.len());
    let err = common::load_all(&d).unwrap_err();
    assert!(matches!(err, Error::Decrypt(_)), "{err}");
    assert!(err.to_string().contains("no key"), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("'{}'", tensors[0]["name"].as_str().unwrap())),
        "{err}"
    );
    let mut ways = vec![ReadOptions::default().key(Some(&key)).unwrap()];
    if let Some(passphrase) = encryption["passphrase"].as_str() {
        ways.push(
            ReadOptions::default()
                .passphrase(Some(passphrase.as_bytes()))
                .unwrap(),
        );
    }
    for options in ways {
        for (verify, chunk) in [(true, 0), (false, 0), (true, 4096), (false, 12288)] {
            let mut options = options.clone().verify(verify);
            if chunk > 0 {
                options = options.request_bytes(chunk).unwrap();
            }
            let loaded = load(fixture, options.clone());
            if damaged {
                let err = loaded.unwrap_err();
                assert!(matches!(err, Error::Decrypt(_)), "{err}");
                let corrupted = truth["expect"]["corrupted_tensor"].as_str().unwrap();
                assert!(err.to_string().contains(&format!("'{corrupted}'")), "{err}");
                assert!(err.to_string().contains("authentication"), "{err}");
                continue;
            }
            let loaded = loaded.unwrap();
            for (t, bytes) in tensors.iter().zip(&loaded) {
                assert_eq!(
                    sha(bytes),
                    t["sha256"].as_str().unwrap(),
                    "{} {}",
                    fixture,
                    t["name"]
                );
            }
            // Through a stand-in network stream: random short reads, out of order.
            let source = plaid::source::ShortReads::new(
                plaid::source::FileSource::open(&path(fixture)).unwrap(),
                7,
            );
            let d = Deserializer::from_source(Box::new(source), options).unwrap();
            let streamed = common::load_all(&d).unwrap();
            assert_eq!(streamed, loaded, "{fixture} through short reads");
        }
    }
    if damaged {
        return;
    }
    // A wrong key: authentication fails, naming the tensor, verified or not.
    let mut wrong = key.clone();
    wrong[0] ^= 1;
    for verify in [true, false] {
        let options = ReadOptions::default()
            .key(Some(&wrong))
            .unwrap()
            .verify(verify);
        let err = load(fixture, options).unwrap_err();
        assert!(matches!(err, Error::Decrypt(_)), "{err}");
        assert!(err.to_string().contains("authentication"), "{err}");
    }
    // Views of encrypted tensors would be ciphertext: refused.
    let d = Deserializer::open(
        path(fixture),
        ReadOptions::default().key(Some(&key)).unwrap(),
    )
    .unwrap();
    let first = d
        .tensors()
        .iter()
        .position(|t| t.encryption.is_some())
        .unwrap();
    assert!(matches!(d.view(first), Err(Error::Unsupported(_))));
}

/// Through the C API: open, describe and load every tensor with a placement callback.
fn check_c_api(fixture: &str) {
    let truth = truth(fixture);
    let tensors = truth["tensors"].as_array().unwrap();
    let c_path = CString::new(path(fixture).to_str().unwrap()).unwrap();
    let mut options = ptr::null_mut();
    let mut d = ptr::null_mut();
    // SAFETY: `options` is used only between its creation and its free here; `c_path` is a
    // CString alive across the open; `d` is the handle it writes, freed at the end of
    // `check_c_api`.
    unsafe {
        assert_eq!(plaid_read_options_new(&mut options), PLAID_OK);
        // Verification off: tensorizer's own quirk files hold hashes it got wrong.
        assert_eq!(plaid_read_options_set_verify(options, 0), PLAID_OK);
        assert_eq!(
            plaid_deserializer_open(c_path.as_ptr(), options, &mut d),
            PLAID_OK
        );
        plaid_read_options_free(options);
        assert_eq!(plaid_deserializer_format(d), PLAID_FORMAT_TENSORIZER);
        assert_eq!(plaid_deserializer_tensor_count(d), tensors.len());
    }
    let mut buffers: Vec<Vec<u8>> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        // SAFETY: `d` is live and `i` is below its tensor count (asserted above), so the
        // info is non-NULL and lives as long as `d`.
        let info = unsafe { &*plaid_deserializer_tensor(d, i) };
        // SAFETY: `info.name` is NUL-terminated and lives as long as `d`, which outlives
        // `name`.
        let name = unsafe { CStr::from_ptr(info.name) }.to_str().unwrap();
        assert_eq!(name, expected_name(t));
        assert_eq!(info.name_len, name.len());
        assert_eq!(info.nbytes, t["nbytes"].as_u64().unwrap());
        assert_eq!(info.zero_fill != 0, t["is_meta"].as_bool().unwrap());
        let role = match t["tensor_type"].as_str().unwrap() {
            "PARAM" => PLAID_ROLE_PARAM,
            "BUFFER" => PLAID_ROLE_BUFFER,
            _ => PLAID_ROLE_STATE_DICT,
        };
        assert_eq!(info.role, role);
        assert_eq!(
            u64::from(info.module_index),
            t["module_idx"].as_u64().unwrap()
        );
        if info.path.is_null() {
            assert_eq!(info.path_len, 0);
        } else {
            // SAFETY: `info.path` is non-NULL here, NUL-terminated, and lives as long as
            // `d`, which outlives `p`.
            let p = unsafe { CStr::from_ptr(info.path) }.to_str().unwrap();
            assert_eq!(info.path_len, p.len());
            assert_eq!(&serde_json::from_str::<Value>(p).unwrap(), &t["path"]);
        }
        // Poisoned, so that a tensor left unwritten shows.
        buffers.push(vec![0xA5; info.nbytes as usize]);
    }
    // SAFETY: `d` is still live; `buffers` holds one buffer per tensor, outlives the call
    // and only `place_all` uses it.
    let status = unsafe {
        plaid_deserializer_load(d, Some(place_all), &mut buffers as *mut _ as *mut c_void)
    };
    assert_eq!(status, PLAID_OK);
    for (bytes, t) in buffers.iter().zip(tensors) {
        assert_eq!(
            sha(bytes),
            t["sha256"].as_str().unwrap(),
            "{}",
            expected_name(t)
        );
    }
    // SAFETY: `d` came from plaid_deserializer_open above and is freed once, here.
    unsafe { plaid_deserializer_free(d) };
}

macro_rules! intact {
    ($($fixture:ident),* $(,)?) => {$(
        #[test]
        fn $fixture() {
            check_intact(stringify!($fixture));
            check_c_api(stringify!($fixture));
        }
    )*};
}

intact!(
    dtypes_numpy_native,
    dtypes_opaque_v2,
    shapes_and_layouts,
    module_tiny_lm_f32,
    module_tiny_lm_persistent_only,
    state_dict_of_module,
    nested_structure,
    write_tensor_calls,
    meta_tensors_v4,
    long_dims_v5,
    names_unicode_long,
    many_small_tensors,
    quirk_opaque_zero_length,
    quirk_meta_scalar,
    quirk_no_tensors,
    v2_by_tensorizer_2_0_0,
    v4_by_tensorizer_2_8_1_meta,
    v1_by_tensorizer_1_1_0,
);

macro_rules! encrypted {
    ($($fixture:ident),* $(,)?) => {$(
        #[test]
        fn $fixture() {
            check_encrypted(stringify!($fixture));
        }
    )*};
}

encrypted!(
    encrypted_key_v3,
    encrypted_passphrase_4k_chunks_v3,
    encrypted_meta_v4,
    v3_by_tensorizer_2_7_2_encrypted_key,
    damaged_encrypted_bitflip_in_ciphertext,
);

/// The damaged fixtures' base tensors, and the bytes loaded without verification.
fn damaged_unverified(fixture: &str) -> (Vec<Value>, Vec<Vec<u8>>) {
    let truth = truth(fixture);
    let tensors = truth["tensors"].as_array().unwrap().clone();
    let loaded = load(fixture, ReadOptions::default().verify(false)).unwrap();
    assert_eq!(loaded.len(), tensors.len());
    (tensors, loaded)
}

#[test]
fn damaged_bad_magic() {
    let err = Deserializer::open(path("damaged_bad_magic"), ReadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Format { offset: 0, .. }), "{err}");
}

#[test]
fn damaged_truncated_in_file_header() {
    let fixture = "damaged_truncated_in_file_header";
    let err = Deserializer::open(path(fixture), ReadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Format { offset: 40, .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(err.to_string().contains("file header"), "{err}");
}

#[test]
fn damaged_truncated_in_tensor_data() {
    // Never partially-filled buffers reported as success: the file is refused up front,
    // naming the tensor that runs past the end.
    let fixture = "damaged_truncated_in_tensor_data";
    for verify in [true, false] {
        let options = ReadOptions::default().verify(verify);
        let err = Deserializer::open(path(fixture), options).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("truncated") && text.contains("noncontig_t"),
            "{text}"
        );
    }
}

#[test]
fn damaged_bitflip_in_stored_sha256() {
    // Verified with the SHA-256s: an error naming 'f32'. Unverified: every tensor loads with
    // correct data.
    let fixture = "damaged_bitflip_in_stored_sha256";
    let err = load(fixture, ReadOptions::default().verify_sha256(true)).unwrap_err();
    assert!(
        matches!(&err, Error::HashMismatch { tensor, .. } if tensor == "f32"),
        "{err}"
    );
    assert!(err.to_string().contains("sha256"), "{err}");
    let (tensors, loaded) = damaged_unverified(fixture);
    for (bytes, t) in loaded.iter().zip(&tensors) {
        assert_eq!(sha(bytes), t["sha256"].as_str().unwrap());
    }
    // Checking only the CRCs, the default, the intact data loads (the CRC does not cover the
    // stored SHA-256), through the Rust API and the C API.
    let crc_only = load(fixture, ReadOptions::default()).unwrap();
    assert_eq!(crc_only, loaded);
    assert_eq!(
        load(fixture, ReadOptions::default().verify_sha256(false)).unwrap(),
        loaded
    );
    let c_path = CString::new(path(fixture).to_str().unwrap()).unwrap();
    for (sha256, expected) in [(1, PLAID_ERR_CHECKSUM), (0, PLAID_OK)] {
        let mut options = ptr::null_mut();
        let mut d = ptr::null_mut();
        let mut buffers: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| vec![0; t["nbytes"].as_u64().unwrap() as usize])
            .collect();
        // SAFETY: `options` and `d` are used only between their creation and their free
        // here; `c_path` outlives the open; `buffers` holds one buffer per tensor and
        // outlives the load, where only `place_all` uses it.
        unsafe {
            assert_eq!(plaid_read_options_new(&mut options), PLAID_OK);
            assert_eq!(
                plaid_read_options_set_verify_sha256(options, sha256),
                PLAID_OK
            );
            assert_eq!(
                plaid_deserializer_open(c_path.as_ptr(), options, &mut d),
                PLAID_OK
            );
            plaid_read_options_free(options);
            let status =
                plaid_deserializer_load(d, Some(place_all), &mut buffers as *mut _ as *mut c_void);
            assert_eq!(status, expected);
            plaid_deserializer_free(d);
        }
        if expected == PLAID_OK {
            assert_eq!(buffers, loaded);
        }
    }
}

/// A placement callback putting tensor `i` into `(*user)[i]`.
unsafe extern "C" fn place_all(
    user: *mut c_void,
    info: *const plaid_tensor_info,
    dest: *mut plaid_destination,
) -> i32 {
    // SAFETY: `user` is the `buffers` each caller passes to plaid_deserializer_load, alive
    // and touched by nothing else until that call returns.
    let buffers = unsafe { &mut *(user as *mut Vec<Vec<u8>>) };
    // SAFETY: plaid passes an `info` that lives as long as the deserializer and a `dest`
    // that is valid and ours alone during this call.
    let (info, dest) = unsafe { (&*info, &mut *dest) };
    let buffer = &mut buffers[info.index];
    dest.kind = PLAID_DEST_HOST;
    dest.address = buffer.as_mut_ptr() as u64;
    dest.capacity = buffer.len() as u64;
    0
}

#[test]
fn damaged_bitflip_in_tensor_data() {
    // Verified: an error naming 'f16'. Unverified: all load, only that tensor differs.
    let fixture = "damaged_bitflip_in_tensor_data";
    for mmap in [true, false] {
        for sha256 in [true, false] {
            let options = ReadOptions::default().mmap(mmap).verify_sha256(sha256);
            let err = load(fixture, options).unwrap_err();
            assert!(
                matches!(&err, Error::HashMismatch { tensor, .. } if tensor == "f16"),
                "{err}"
            );
        }
        let d = Deserializer::open(path(fixture), ReadOptions::default().mmap(mmap)).unwrap();
        let err = d.verify().unwrap_err();
        assert!(
            matches!(&err, Error::HashMismatch { tensor, .. } if tensor == "f16"),
            "{err}"
        );
        let i = d.find("f16").unwrap();
        let err = d.view(i).unwrap_err();
        assert!(
            matches!(&err, Error::HashMismatch { tensor, .. } if tensor == "f16"),
            "{err}"
        );
    }
    let (tensors, loaded) = damaged_unverified(fixture);
    for (bytes, t) in loaded.iter().zip(&tensors) {
        let intact = sha(bytes) == t["sha256"].as_str().unwrap();
        assert_eq!(intact, t["name"] != "f16", "{}", t["name"]);
    }
}

/// Every fixture in the folder has a test above.
#[test]
fn every_fixture_is_tested() {
    let source = include_str!("tensorizer.rs");
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".tensors") {
            let id = stem.replace('.', "_");
            assert!(
                source.contains(&format!("    {id},")) || source.contains(&format!("fn {id}()")),
                "fixture {stem} has no test"
            );
        }
    }
}

/// Damage anywhere in a file's structure (every byte of the file header, the metadata
/// entries and the first tensor headers flipped, the file cut at every length up to past
/// the first records) gives an error or correct data, never a panic; with verification
/// on, damage to hashed bytes is always caught.
#[test]
fn damage_anywhere_never_panics() {
    use plaid::source::MemorySource;
    let fixture = "write_tensor_calls";
    let truth = truth(fixture);
    let good = std::fs::read(path(fixture)).unwrap();
    let first_data = truth["tensors"][2]["data_offset"].as_u64().unwrap() as usize;
    let open = |bytes: Vec<u8>, verify: bool| {
        Deserializer::from_source(
            Box::new(MemorySource::new("damaged.tensors", bytes)),
            // Verifying checks every stored hash (the SHA-256s too).
            ReadOptions::default()
                .verify(verify)
                .verify_sha256(verify)
                .threads(1)
                .unwrap(),
        )
    };
    let structure: Vec<usize> = (0..73)
        .chain(73..73 + truth["metadata_used_bytes"].as_u64().unwrap() as usize)
        .chain(262_217..first_data)
        .collect();
    for &at in &structure {
        for bit in [0x01u8, 0x80] {
            let mut bytes = good.clone();
            bytes[at] ^= bit;
            for verify in [false, true] {
                let Ok(d) = open(bytes.clone(), verify) else {
                    continue;
                };
                // What opens must load, or fail cleanly; verified loads of a tensor
                // whose header was hit fail.
                let _ = common::load_all(&d);
            }
        }
    }
    for len in (0..first_data + 64).chain([good.len() - 9, good.len() - 1]) {
        let err = open(good[..len].to_vec(), false).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{len}: {err}");
    }
    // A flipped byte in a tensor header is always caught when verifying: the hashes cover
    // the header, and the reader cross-checks it with the metadata.
    let record = truth["tensors"][0]["header_offset"].as_u64().unwrap() as usize;
    let data = truth["tensors"][0]["data_offset"].as_u64().unwrap() as usize;
    for at in record..data {
        let mut bytes = good.clone();
        bytes[at] ^= 0x04;
        if let Ok(d) = open(bytes, true) {
            let err = common::load_all(&d).unwrap_err();
            assert!(
                matches!(err, Error::HashMismatch { .. } | Error::Format { .. }),
                "{at}: {err}"
            );
        }
    }
}

/// Convert `from` to `to` with the library call for `format`.
fn convert(from: &std::path::Path, to: &std::path::Path, format: Format) -> plaid::Result<()> {
    let source = Deserializer::open(from, ReadOptions::default().verify(false))?;
    let mut quiet = |_: u64, _: u64| {};
    match format {
        Format::Plaid => plaid::convert::to_plaid(
            &source,
            to,
            plaid::WriteOptions::default().sync(false),
            &mut quiet,
        ),
        Format::Safetensors => plaid::convert::to_safetensors(&source, to, &mut quiet),
        _ => plaid::convert::to_tensorizer(&source, to, &mut quiet),
    }
}

/// tensorizer -> plaid -> tensorizer gives back the very bytes the real tensorizer wrote:
/// names (structured ones through their paths), roles, module indices, dtypes (opaque
/// ones in a version 2 file), hashes and layout all survive, and plaid's tensorizer writer
/// matches tensorizer's own, byte for byte.
#[test]
fn convert_round_trips_to_identical_tensorizer_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for fixture in [
        "dtypes_numpy_native",
        "dtypes_opaque_v2",
        "shapes_and_layouts",
        "module_tiny_lm_f32",
        "state_dict_of_module",
        "nested_structure",
        "write_tensor_calls",
        "names_unicode_long",
        "many_small_tensors",
        "v1_by_tensorizer_1_1_0",
        "v2_by_tensorizer_2_0_0",
    ] {
        let plaid_file = dir.path().join(format!("{fixture}.plaid"));
        let back = dir.path().join(format!("{fixture}.tensors"));
        convert(&path(fixture), &plaid_file, Format::Plaid).unwrap();
        let p = Deserializer::open(&plaid_file, ReadOptions::default()).unwrap();
        let t = Deserializer::open(path(fixture), ReadOptions::default()).unwrap();
        for (a, b) in p.tensors().iter().zip(t.tensors()) {
            assert_eq!(
                (&a.name, &a.path, a.role, a.module_index),
                (&b.name, &b.path, b.role, b.module_index)
            );
        }
        convert(&plaid_file, &back, Format::Tensorizer).unwrap();
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(path(fixture)).unwrap(),
            "{fixture}: plaid's tensorizer file differs from tensorizer's"
        );
    }
}

/// Meta tensors become stored zeros; dims of 2^32 and more (format version 5) are refused
/// by the writer; every other direction is read back and compared by `convert` itself.
#[test]
fn convert_in_every_direction() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    // tensorizer (with meta tensors) -> tensorizer: a version 1 file with zeros stored.
    convert(
        &path("meta_tensors_v4"),
        &out("meta.tensors"),
        Format::Tensorizer,
    )
    .unwrap();
    let written = Deserializer::open(out("meta.tensors"), ReadOptions::default()).unwrap();
    assert_eq!(written.format_version(), 1);
    assert!(written.tensors().iter().all(|t| !t.zero_fill));
    let truth = truth("meta_tensors_v4");
    for (bytes, t) in common::load_all(&written)
        .unwrap()
        .iter()
        .zip(truth["tensors"].as_array().unwrap())
    {
        assert_eq!(sha(bytes), t["sha256"].as_str().unwrap());
    }
    // Long dims need version 5, which plaid does not write.
    let err = convert(
        &path("long_dims_v5"),
        &out("long.tensors"),
        Format::Tensorizer,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(!out("long.tensors").exists());
    // tensorizer -> safetensors -> tensorizer (plain names, safetensors dtypes).
    convert(
        &path("module_tiny_lm_f32"),
        &out("lm.safetensors"),
        Format::Safetensors,
    )
    .unwrap();
    convert(
        &out("lm.safetensors"),
        &out("lm.tensors"),
        Format::Tensorizer,
    )
    .unwrap();
    // By name: the safetensors step lays tensors out by dtype, then name.
    let by_name = |p: &std::path::Path| -> std::collections::BTreeMap<String, Vec<u8>> {
        let d = Deserializer::open(p, ReadOptions::default()).unwrap();
        let names = d.tensors().iter().map(|t| t.name.to_string());
        names.zip(common::load_all(&d).unwrap()).collect()
    };
    assert_eq!(
        by_name(&path("module_tiny_lm_f32")),
        by_name(&out("lm.tensors"))
    );
    // A dtype safetensors lacks is refused before anything is written.
    let err = convert(
        &path("dtypes_numpy_native"),
        &out("c.safetensors"),
        Format::Safetensors,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(!out("c.safetensors").exists());
}

/// With SHA-256 off, a tensor's CRC-32 is combined from the CRCs of its chunks, so one
/// tensor spreads over the workers: every byte still counts, a flipped one anywhere is
/// caught, and the error names the tensor.
#[test]
fn crc_only_verification_combines_the_pieces_crcs() {
    let fixture = "shapes_and_layouts";
    let truth = truth(fixture);
    let big = truth["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "big_1d_f32_600KB")
        .unwrap()
        .clone();
    let options = || {
        ReadOptions::default()
            .verify_sha256(false)
            .request_bytes(4096)
            .unwrap()
            .threads(3)
            .unwrap()
    };
    for mmap in [true, false] {
        let loaded = load(fixture, options().mmap(mmap)).unwrap();
        for (bytes, t) in loaded.iter().zip(truth["tensors"].as_array().unwrap()) {
            assert_eq!(sha(bytes), t["sha256"].as_str().unwrap());
        }
        let d = Deserializer::open(path(fixture), options().mmap(mmap)).unwrap();
        d.verify().unwrap();
    }
    // Damage in the middle, and in the last piece, of the 600 KB tensor.
    let good = std::fs::read(path(fixture)).unwrap();
    let start = big["data_offset"].as_u64().unwrap() as usize;
    let dir = tempfile::tempdir().unwrap();
    for at in [start + 300_000, start + 599_999] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        let damaged = dir.path().join("damaged.tensors");
        std::fs::write(&damaged, &bytes).unwrap();
        let d = Deserializer::open(&damaged, options()).unwrap();
        for err in [common::load_all(&d).unwrap_err(), d.verify().unwrap_err()] {
            assert!(
                matches!(&err, Error::HashMismatch { tensor, .. } if tensor == "big_1d_f32_600KB"),
                "{err}"
            );
            assert!(err.to_string().contains("crc32"), "{err}");
        }
    }
}

/// The key API of the C shell: lengths, one kind of key material at a time, clearing, and
/// PLAID_ERR_DECRYPT for a load without a key.
#[test]
fn keys_through_the_c_api() {
    let fixture = "encrypted_passphrase_4k_chunks_v3";
    let truth = truth(fixture);
    let key = unhex(truth["encryption"]["key_hex"].as_str().unwrap());
    let passphrase = truth["encryption"]["passphrase"].as_str().unwrap();
    let c_path = CString::new(path(fixture).to_str().unwrap()).unwrap();
    // Loads every tensor of the file into buffers of its sizes: the status, and the bytes.
    let load = |options: *mut plaid_read_options| -> (i32, Vec<Vec<u8>>) {
        let mut d = ptr::null_mut();
        // SAFETY: `c_path` is NUL-terminated; `options` is live; `d` is writable.
        let status = unsafe { plaid_deserializer_open(c_path.as_ptr(), options, &mut d) };
        assert_eq!(status, PLAID_OK, "opening needs no key");
        let sizes: Vec<usize> = truth["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["nbytes"].as_u64().unwrap() as usize)
            .collect();
        let mut buffers: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
        unsafe extern "C" fn place(
            user: *mut c_void,
            info: *const plaid_tensor_info,
            dest: *mut plaid_destination,
        ) -> i32 {
            // SAFETY: `user` is the buffers below, alive and only used by this callback
            // during the load; `info` and `dest` are valid during the call.
            let (buffers, info, dest) =
                unsafe { (&mut *(user as *mut Vec<Vec<u8>>), &*info, &mut *dest) };
            let b = &mut buffers[info.index];
            dest.kind = PLAID_DEST_HOST;
            dest.address = b.as_mut_ptr() as u64;
            dest.capacity = b.len() as u64;
            0
        }
        // SAFETY: `d` is live; `place` honours its contract with `buffers`, which outlives
        // the call; `d` is freed once after.
        let status = unsafe {
            let status =
                plaid_deserializer_load(d, Some(place), &mut buffers as *mut _ as *mut c_void);
            plaid_deserializer_free(d);
            status
        };
        (status, buffers)
    };
    let mut o = ptr::null_mut();
    // SAFETY: `o` is made here, used only in this test, and freed once at its end; every
    // key pointer is a live local slice or NULL with the length given.
    unsafe {
        assert_eq!(plaid_read_options_new(&mut o), PLAID_OK);
        assert_eq!(load(o).0, PLAID_ERR_DECRYPT);
        assert_eq!(
            CStr::from_ptr(plaid_status_name(PLAID_ERR_DECRYPT))
                .to_str()
                .unwrap(),
            "PLAID_ERR_DECRYPT"
        );
        assert_eq!(
            plaid_read_options_set_key(o, key.as_ptr(), 31),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_read_options_set_key(o, ptr::null(), 32),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(plaid_read_options_set_key(o, key.as_ptr(), 32), PLAID_OK);
        let pw = passphrase.as_bytes();
        assert_eq!(
            plaid_read_options_set_passphrase(o, pw.as_ptr().cast(), pw.len()),
            PLAID_ERR_INVALID_ARGUMENT,
            "a key and a passphrase"
        );
        let (status, with_key) = load(o);
        assert_eq!(status, PLAID_OK);
        for (t, bytes) in truth["tensors"].as_array().unwrap().iter().zip(&with_key) {
            assert_eq!(sha(bytes), t["sha256"].as_str().unwrap());
        }
        assert_eq!(
            plaid_read_options_set_key(o, ptr::null(), 0),
            PLAID_OK,
            "clears"
        );
        assert_eq!(load(o).0, PLAID_ERR_DECRYPT);
        assert_eq!(
            plaid_read_options_set_passphrase(o, pw.as_ptr().cast(), pw.len()),
            PLAID_OK
        );
        let (status, with_passphrase) = load(o);
        assert_eq!(status, PLAID_OK);
        assert_eq!(with_passphrase, with_key);
        // A wrong passphrase: its own key, which fails authentication.
        assert_eq!(
            plaid_read_options_set_passphrase(o, pw.as_ptr().cast(), pw.len() - 1),
            PLAID_OK
        );
        assert_eq!(load(o).0, PLAID_ERR_DECRYPT);
        plaid_read_options_free(o);
    }
}

/// A key given for a file stored in the clear is ignored: it loads as without one.
#[test]
fn a_key_refuses_a_plain_file_unless_plaintext_is_allowed() {
    let fixture = "v4_by_tensorizer_2_8_1_meta";
    let plain = load(fixture, ReadOptions::default()).unwrap();
    let key = ReadOptions::default().key(Some(&[7u8; 32])).unwrap();
    let passphrase = ReadOptions::default()
        .passphrase(Some(b"anything"))
        .unwrap();
    for options in [key, passphrase] {
        let e = load(fixture, options.clone()).unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        assert!(e.to_string().contains("stored in the clear"), "{e}");
        let allowed = load(fixture, options.allow_plaintext(true)).unwrap();
        assert_eq!(allowed, plain);
    }
}
