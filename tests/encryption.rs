//! plaid's own encrypted files (`docs/FORMAT.md` section 13): written with a key or a
//! passphrase, read back bit-exact through every path (whole loads, slices, streams,
//! verification), and refused, naming the tensor, without a key, with a wrong one, and
//! with damaged, swapped or moved blocks.

mod common;

use std::path::Path;

use common::random_bytes;
use plaid::format::{checksum, plaid as v1, proto};
use plaid::source::{CountingSource, FileSource, ShortReads};
use plaid::{DType, Deserializer, Destination, Error, ReadOptions, Serializer, View, WriteOptions};
use prost::Message;

const BLOCK: u64 = 4096;
const KEY: [u8; 32] = [0x42; 32];

/// The tensors the tests write: several blocks, a last block cut short, a scalar, an
/// empty tensor and a long name.
fn tensors() -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, (name, dtype, shape)) in [
        ("w", DType::F32, vec![64u64, 100]),
        ("b", DType::BF16, vec![3000]),
        ("s", DType::F64, vec![]),
        ("e", DType::F32, vec![0, 8]),
        (
            "model.layers.0.self_attn.q_proj.weight",
            DType::U8,
            vec![3, 4096],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let len = dtype.nbytes(&shape).unwrap() as usize;
        out.push((
            name.to_string(),
            dtype,
            shape,
            random_bytes(len, 40 + i as u64),
        ));
    }
    out
}

fn write(path: &Path, options: WriteOptions) -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    let tensors = tensors();
    let options = options.sync(false).checksum_block_size(BLOCK).unwrap();
    let mut w = Serializer::create(path, options).unwrap();
    for (name, dtype, shape, data) in &tensors {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.set_metadata("architecture", "test").unwrap();
    w.finish().unwrap();
    tensors
}

/// Both ciphers: AEGIS-256X4 (the default) and AES-256-GCM.
const CIPHERS: [u32; 2] = [v1::CIPHER_AEGIS_256X4, v1::CIPHER_AES_256_GCM];

thread_local! {
    /// The cipher `keyed` writes with, set by `for_each_cipher`.
    static CIPHER: std::cell::Cell<u32> = const { std::cell::Cell::new(v1::CIPHER_AEGIS_256X4) };
}

/// Run `test` once per cipher.
fn for_each_cipher(test: impl Fn(u32)) {
    for cipher in CIPHERS {
        CIPHER.with(|c| c.set(cipher));
        test(cipher);
    }
}

fn keyed() -> WriteOptions {
    WriteOptions::default()
        .key(Some(&KEY))
        .unwrap()
        .cipher(CIPHER.with(|c| c.get()))
        .unwrap()
}

fn read_key() -> ReadOptions {
    ReadOptions::default().key(Some(&KEY)).unwrap()
}

/// The header of a plaid file, decoded, and where it ends.
fn header(file: &[u8]) -> proto::Header {
    let len = u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize;
    proto::Header::decode(&file[32..32 + len]).unwrap()
}

/// `file` with `header` in place of its own (same length), both CRCs made right.
fn with_header(file: &[u8], header: &proto::Header) -> Vec<u8> {
    let bytes = header.encode_to_vec();
    let old = u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), old, "the edited header keeps its length");
    let preamble = v1::Preamble {
        version: v1::VERSION,
        header_crc32c: checksum::crc32c(&bytes),
        header_len: bytes.len() as u64,
        flags: u32::from_le_bytes(file[24..28].try_into().unwrap()),
    };
    let mut out = file.to_vec();
    out[..32].copy_from_slice(&preamble.encode());
    out[32..32 + bytes.len()].copy_from_slice(&bytes);
    out
}

fn open_bytes(bytes: Vec<u8>, options: ReadOptions) -> plaid::Result<Deserializer> {
    Deserializer::from_source(
        Box::new(plaid::source::MemorySource::new("m.plaid", bytes)),
        options,
    )
}

#[test]
fn an_encrypted_file_round_trips_with_its_key_through_every_read_path() {
    for_each_cipher(round_trip);
}

fn round_trip(cipher: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let tensors = write(&path, keyed());
    let file = std::fs::read(&path).unwrap();
    // Flagged, and the data is not stored in the clear.
    assert_eq!(
        u32::from_le_bytes(file[24..28].try_into().unwrap()),
        v1::FLAG_ENCRYPTED
    );
    let h = header(&file);
    let e = h.encryption.as_ref().unwrap();
    assert_eq!(
        (
            e.cipher,
            e.salt.len(),
            e.nonce_base.len(),
            e.key_check.len()
        ),
        (cipher, 32, if cipher == 1 { 12 } else { 32 }, 16)
    );
    assert!(e.passphrase.is_none());
    for (t, (_, _, _, data)) in h.tensors.iter().zip(&tensors) {
        let stored = &file[t.offset as usize..(t.offset + t.length) as usize];
        assert_eq!(t.block_tags.len(), 16 * data.len().div_ceil(BLOCK as usize));
        if data.len() >= 16 {
            assert_ne!(
                stored,
                &data[..],
                "tensor '{}' is stored in the clear",
                t.name
            );
        }
        // The CRCs are those of the stored bytes.
        assert_eq!(t.block_crc32c, checksum::block_crcs(stored, BLOCK));
    }
    // Opens without a key: names, shapes, dtypes and metadata.
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    assert_eq!(d.tensors().len(), tensors.len());
    assert_eq!(d.metadata()["architecture"], "test");
    for (t, (name, dtype, shape, _)) in d.tensors().iter().zip(&tensors) {
        assert_eq!(
            (t.name.as_str(), t.dtype, t.shape.to_vec()),
            (name.as_str(), *dtype, shape.clone())
        );
        assert_eq!(t.encryption.is_some(), t.nbytes > 0, "{name}");
    }
    // With the key, bit-exact: verified or not, any chunk size, streamed in short reads.
    for (verify, chunk) in [
        (true, 0),
        (false, 0),
        (true, 8192),
        (false, 4096),
        (true, 1 << 20),
    ] {
        let mut options = read_key().verify(verify);
        if chunk > 0 {
            options = options.request_bytes(chunk).unwrap();
        }
        let d = Deserializer::open(&path, options.clone()).unwrap();
        let loaded = common::load_all(&d).unwrap();
        for (got, (name, _, _, data)) in loaded.iter().zip(&tensors) {
            assert_eq!(got, data, "{name} verify={verify} chunk={chunk}");
        }
        let streamed = ShortReads::new(FileSource::open(&path).unwrap(), 11);
        let d = Deserializer::from_source(Box::new(streamed), options).unwrap();
        assert_eq!(common::load_all(&d).unwrap(), loaded);
    }
    // Verification authenticates (with the key), and checks the stored bytes (without).
    Deserializer::open(&path, read_key())
        .unwrap()
        .verify()
        .unwrap();
    // read_tensor decrypts; views are refused.
    let d = Deserializer::open(&path, read_key()).unwrap();
    assert_eq!(d.read_tensor(0).unwrap(), tensors[0].3);
    let e = d.view(0).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("'w'"), "{e}");
    // Every write draws new salts: the same tensors and key give other bytes.
    let again = dir.path().join("again.plaid");
    write(&again, keyed());
    let (a, b) = (header(&file), header(&std::fs::read(&again).unwrap()));
    assert_ne!(
        a.encryption.as_ref().unwrap().salt,
        b.encryption.as_ref().unwrap().salt
    );
    assert_ne!(
        a.encryption.unwrap().nonce_base,
        b.encryption.unwrap().nonce_base
    );
    assert_ne!(a.tensors[0].block_tags, b.tensors[0].block_tags);
}

#[test]
fn no_key_a_wrong_key_and_a_passphrase_for_a_key_are_decrypt_errors_naming_the_tensor() {
    for_each_cipher(|_| wrong_keys());
}

fn wrong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    write(&path, keyed());
    let fails = |options: ReadOptions| {
        let d = Deserializer::open(&path, options).unwrap();
        let e = common::load_all(&d).unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        assert!(e.to_string().contains("'w'"), "{e}");
        assert!(e.to_string().contains("m.plaid"), "{e}");
        e.to_string()
    };
    assert!(fails(ReadOptions::default()).contains("no key"));
    let wrong = fails(ReadOptions::default().key(Some(&[0x43; 32])).unwrap());
    assert!(wrong.contains("wrong key"), "{wrong}");
    let e = fails(ReadOptions::default().passphrase(Some(b"pw")).unwrap());
    assert!(e.contains("raw key"), "{e}");
    // A key for a file stored in the clear refuses it, unless plaintext is allowed.
    let plain = dir.path().join("plain.plaid");
    let tensors = write(&plain, WriteOptions::default());
    let d = Deserializer::open(&plain, read_key()).unwrap();
    assert!(matches!(common::load_all(&d), Err(Error::Decrypt(_))));
    let d = Deserializer::open(&plain, read_key().allow_plaintext(true)).unwrap();
    let loaded = common::load_all(&d).unwrap();
    assert_eq!(loaded[0], tensors[0].3);
    assert!(d.tensors().iter().all(|t| t.encryption.is_none()));
}

#[test]
fn a_passphrase_file_records_its_derivation_and_opens_only_with_the_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let options = WriteOptions::default()
        .passphrase(Some(b"correct horse"))
        .unwrap()
        .passphrase_limits(2, 64 << 10)
        .unwrap();
    let tensors = write(&path, options);
    let h = header(&std::fs::read(&path).unwrap());
    let p = h.encryption.unwrap().passphrase.unwrap();
    assert_eq!((p.passes, p.memory, p.salt.len()), (2, 64 << 10, 16));
    let d = Deserializer::open(
        &path,
        ReadOptions::default()
            .passphrase(Some(b"correct horse"))
            .unwrap(),
    )
    .unwrap();
    let loaded = common::load_all(&d).unwrap();
    for (got, (_, _, _, data)) in loaded.iter().zip(&tensors) {
        assert_eq!(got, data);
    }
    let d = Deserializer::open(
        &path,
        ReadOptions::default()
            .passphrase(Some(b"correct horsE"))
            .unwrap(),
    )
    .unwrap();
    let e = common::load_all(&d).unwrap_err();
    assert!(
        matches!(e, Error::Decrypt(_)) && e.to_string().contains("wrong passphrase"),
        "{e}"
    );
    // A raw key for a passphrase file: the key is used as the master key, and fails.
    let d = Deserializer::open(&path, read_key()).unwrap();
    assert!(matches!(
        common::load_all(&d).unwrap_err(),
        Error::Decrypt(_)
    ));
    // The limits are checked; the defaults are libsodium's MODERATE.
    assert!(matches!(
        WriteOptions::default().passphrase_limits(0, 64 << 10),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        WriteOptions::default().passphrase_limits(1, 1000),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        WriteOptions::default().passphrase_limits(65, 1 << 20),
        Err(Error::InvalidArgument(_))
    ));
    // A key and a passphrase together are refused; None clears.
    let both = WriteOptions::default()
        .key(Some(&KEY))
        .unwrap()
        .passphrase(Some(b"x"));
    assert!(matches!(both, Err(Error::InvalidArgument(_))));
    let cleared = WriteOptions::default()
        .key(Some(&KEY))
        .unwrap()
        .key(None)
        .unwrap();
    assert!(!cleared.encrypts());
    assert!(matches!(
        WriteOptions::default().key(Some(&[1; 31])),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn damaged_swapped_and_moved_blocks_fail_and_hand_out_nothing() {
    for_each_cipher(|_| damaged_swapped_and_moved());
}

fn damaged_swapped_and_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let tensors = write(&path, keyed());
    let file = std::fs::read(&path).unwrap();
    let h = header(&file);
    let w = &h.tensors[0];
    let at = w.offset as usize;

    // A flipped ciphertext byte in block 1 of 'w': DECRYPT (authentication fails),
    // verification on or off, naming the tensor, the block and its file offset. Without
    // the key, verification finds it through the CRC of the stored bytes.
    let mut flipped = file.clone();
    flipped[at + 4096 + 17] ^= 0x20;
    for verify in [true, false] {
        let d = open_bytes(flipped.clone(), read_key().verify(verify)).unwrap();
        let e = common::load_all(&d).unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("'w'")
                && msg.contains("block 1")
                && msg.contains(&format!("file offset {}", at + 4096)),
            "{msg}"
        );
        assert!(msg.contains("damaged or moved"), "{msg}");
    }
    let e = open_bytes(flipped, ReadOptions::default())
        .unwrap()
        .verify()
        .unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("'w'"), "{e}");

    // Blocks 0 and 1 swapped, with their CRCs and tags: each is intact, neither is in its
    // place. Verification passes the CRCs; authentication does not.
    let mut swapped = file.clone();
    swapped[at..at + 8192].rotate_left(4096);
    let mut h2 = h.clone();
    h2.tensors[0].block_crc32c.swap(0, 1);
    let mut tags = h2.tensors[0].block_tags.clone();
    tags[..32].rotate_left(16);
    h2.tensors[0].block_tags = tags;
    let swapped = with_header(&swapped, &h2);
    for verify in [true, false] {
        let d = open_bytes(swapped.clone(), read_key().verify(verify)).unwrap();
        let mut out = vec![0xA5u8; tensors[0].3.len()];
        let e = d
            .load(&mut |t: &plaid::TensorInfo| {
                Ok(if t.name == "w" {
                    Destination::Host(unsafe_reborrow(&mut out))
                } else {
                    Destination::Skip
                })
            })
            .unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "verify={verify}: {e}");
        assert!(e.to_string().contains("'w'"), "{e}");
        // The block that failed is not handed out: zeros, not unauthenticated plaintext.
        let failed = if e.to_string().contains("block 0") {
            0
        } else {
            1
        };
        assert!(out[failed * 4096..(failed + 1) * 4096]
            .iter()
            .all(|&b| b == 0));
    }

    // A block moved from another tensor (with its CRC and tag) fails too: the tensor's
    // index and the block's offset are bound.
    let q = &h.tensors[4];
    let mut moved = file.clone();
    let (qa, wa) = (q.offset as usize, at);
    let block: Vec<u8> = moved[qa..qa + 4096].to_vec();
    moved[wa..wa + 4096].copy_from_slice(&block);
    let mut h3 = h.clone();
    h3.tensors[0].block_crc32c[0] = q.block_crc32c[0];
    let qtag = q.block_tags[..16].to_vec();
    h3.tensors[0].block_tags[..16].copy_from_slice(&qtag);
    let d = open_bytes(with_header(&moved, &h3), read_key()).unwrap();
    let e = common::load_all(&d).unwrap_err();
    assert!(
        matches!(e, Error::Decrypt(_))
            && e.to_string().contains("'w'")
            && e.to_string().contains("block 0"),
        "{e}"
    );

    // A header edited to rename a tensor: its blocks no longer authenticate.
    let mut h4 = h.clone();
    h4.tensors[1].name = "c".into();
    let d = open_bytes(with_header(&file, &h4), read_key()).unwrap();
    let e = common::load_all(&d).unwrap_err();
    assert!(
        matches!(e, Error::Decrypt(_)) && e.to_string().contains("'c'"),
        "{e}"
    );
}

/// A mutable borrow handed to the placement callback, which outlives the closure's
/// borrow checker's view of `out` only inside the test's single `load` call.
fn unsafe_reborrow(out: &mut Vec<u8>) -> &'static mut [u8] {
    // SAFETY: every caller uses the slice only during one `load` call and reads `out` only
    // after it returns; `out` lives for the whole test.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr(), out.len()) }
}

#[test]
fn a_slice_of_an_encrypted_tensor_reads_and_decrypts_only_the_blocks_it_touches() {
    for_each_cipher(|_| slices());
}

fn slices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    // 64 rows of 4 KiB: one block per row.
    let data = random_bytes(64 * 4096, 9);
    let options = keyed().sync(false).checksum_block_size(BLOCK).unwrap();
    let mut w = Serializer::create(&path, options).unwrap();
    w.add_tensor("w", DType::F32, &[64, 1024], &data).unwrap();
    w.finish().unwrap();
    for verify in [true, false] {
        let source = CountingSource::new(FileSource::open(&path).unwrap());
        let counts = source.counts();
        let d = Deserializer::from_source(Box::new(source), read_key().verify(verify)).unwrap();
        let before = counts.bytes();
        let mut out = vec![0u8; 5 * 4096];
        {
            let mut slot = Some(&mut out[..]);
            d.load(&mut |_: &plaid::TensorInfo| {
                Ok(Destination::View(
                    View::whole().slice(0, 10, 15),
                    Box::new(Destination::Host(slot.take().unwrap())),
                ))
            })
            .unwrap();
        }
        assert_eq!(out, data[10 * 4096..15 * 4096], "verify={verify}");
        assert_eq!(counts.bytes() - before, 5 * 4096, "verify={verify}");
        // A quarter of each row: every block is read whole and authenticated.
        let before = counts.bytes();
        let mut out = vec![0u8; 64 * 1024];
        {
            let mut slot = Some(&mut out[..]);
            d.load(&mut |_: &plaid::TensorInfo| {
                Ok(Destination::View(
                    View::whole().slice(1, 256, 512),
                    Box::new(Destination::Host(slot.take().unwrap())),
                ))
            })
            .unwrap();
        }
        let want: Vec<u8> = data
            .chunks(4096)
            .flat_map(|row| row[1024..2048].to_vec())
            .collect();
        assert_eq!(out, want);
        assert_eq!(counts.bytes() - before, 64 * 4096);
    }
}

#[test]
fn conversion_encrypts_decrypts_and_reencrypts() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.plaid");
    let tensors = write(&plain, WriteOptions::default());
    let source = Deserializer::open(&plain, ReadOptions::default()).unwrap();
    // Plain to encrypted (checked with the key), encrypted to plain (with it), and
    // encrypted under one key to encrypted under a passphrase.
    let enc = dir.path().join("enc.plaid");
    plaid::convert::to_plaid(&source, &enc, keyed().sync(false), &mut |_, _| {}).unwrap();
    let enc_source = Deserializer::open(&enc, read_key()).unwrap();
    assert!(enc_source.tensors()[0].encryption.is_some());
    let back = dir.path().join("back.plaid");
    plaid::convert::to_plaid(
        &enc_source,
        &back,
        WriteOptions::default().sync(false),
        &mut |_, _| {},
    )
    .unwrap();
    let d = Deserializer::open(&back, ReadOptions::default()).unwrap();
    assert!(d.tensors().iter().all(|t| t.encryption.is_none()));
    assert_eq!(common::load_all(&d).unwrap()[0], tensors[0].3);
    let rekeyed = dir.path().join("pw.plaid");
    let options = WriteOptions::default()
        .passphrase(Some(b"pw"))
        .unwrap()
        .passphrase_limits(1, 8 << 10)
        .unwrap()
        .sync(false);
    plaid::convert::to_plaid(&enc_source, &rekeyed, options, &mut |_, _| {}).unwrap();
    let d = Deserializer::open(
        &rekeyed,
        ReadOptions::default().passphrase(Some(b"pw")).unwrap(),
    )
    .unwrap();
    let loaded = common::load_all(&d).unwrap();
    for (got, (_, _, _, data)) in loaded.iter().zip(&tensors) {
        assert_eq!(got, data);
    }
    // Part of an encrypted file (its tensors renumbered): each decrypts under its place in
    // the file, through every path.
    let part = Deserializer::open(&enc, read_key())
        .unwrap()
        .retain(&|t| t.name != "w" && t.name != "b");
    assert_eq!(part.tensors()[0].index, 0);
    let loaded = common::load_all(&part).unwrap();
    let kept: Vec<_> = tensors
        .iter()
        .filter(|t| t.0 != "w" && t.0 != "b")
        .collect();
    for (got, (name, _, _, data)) in loaded.iter().zip(&kept) {
        assert_eq!(got, data, "{name}");
    }
    let subset = dir.path().join("subset.plaid");
    plaid::convert::to_plaid(&part, &subset, keyed().sync(false), &mut |_, _| {}).unwrap();
    let d = Deserializer::open(&subset, read_key()).unwrap();
    assert_eq!(d.tensors().len(), kept.len());
    assert_eq!(common::load_all(&d).unwrap(), loaded);
    // To safetensors (which has no encryption): plaintext.
    let st = dir.path().join("m.safetensors");
    plaid::convert::to_safetensors(&enc_source, &st, &mut |_, _| {}).unwrap();
    let d = Deserializer::open(&st, ReadOptions::default()).unwrap();
    let first = d.find(&tensors[0].0).unwrap();
    assert_eq!(d.read_tensor(first).unwrap(), tensors[0].3);
    // Without the source's key, conversion fails with DECRYPT and leaves nothing.
    let keyless = Deserializer::open(&enc, ReadOptions::default()).unwrap();
    let out = dir.path().join("never.plaid");
    let e = plaid::convert::to_plaid(
        &keyless,
        &out,
        WriteOptions::default().sync(false),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, Error::Decrypt(_)), "{e}");
    assert!(!out.exists());
}

#[test]
fn hostile_encryption_fields_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    write(&path, keyed());
    let file = std::fs::read(&path).unwrap();
    let h = header(&file);
    let refuse = |h: &proto::Header, flags: Option<u32>, unsupported: bool, why: &str| {
        let bytes = h.encode_to_vec();
        let preamble = v1::Preamble {
            version: v1::VERSION,
            header_crc32c: checksum::crc32c(&bytes),
            header_len: bytes.len() as u64,
            flags: flags.unwrap_or(v1::FLAG_ENCRYPTED),
        };
        let mut f = preamble.encode().to_vec();
        f.extend_from_slice(&bytes);
        let data_offset = h.data_offset as usize;
        if f.len() > data_offset {
            return; // grew past the data: covered by the other edits
        }
        f.extend_from_slice(&file[f.len()..]);
        let e = open_bytes(f, ReadOptions::default()).unwrap_err();
        match unsupported {
            true => assert!(matches!(e, Error::Unsupported(_)), "{why}: {e}"),
            false => assert!(matches!(e, Error::Format { .. }), "{why}: {e}"),
        }
    };
    let edit = |f: &dyn Fn(&mut proto::Header)| {
        let mut h = h.clone();
        f(&mut h);
        h
    };
    refuse(&h, Some(0), false, "encryption without the flag");
    refuse(
        &edit(&|h| h.encryption = None),
        None,
        false,
        "the flag without encryption",
    );
    refuse(&h, Some(3), true, "an unknown flag");
    refuse(
        &edit(&|h| h.encryption.as_mut().unwrap().cipher = 1),
        None,
        false,
        "AES-256-GCM with a 32-byte nonce base",
    );
    refuse(
        &edit(&|h| h.encryption.as_mut().unwrap().cipher = 3),
        None,
        true,
        "another cipher",
    );
    refuse(
        &edit(&|h| h.encryption.as_mut().unwrap().salt.pop().map(drop).unwrap()),
        None,
        false,
        "a short salt",
    );
    refuse(
        &edit(&|h| h.encryption.as_mut().unwrap().nonce_base.push(0)),
        None,
        false,
        "a long nonce base",
    );
    refuse(
        &edit(&|h| h.encryption.as_mut().unwrap().key_check.clear()),
        None,
        false,
        "no key check",
    );
    refuse(
        &edit(&|h| h.tensors[0].block_tags.truncate(16)),
        None,
        false,
        "too few tags",
    );
    refuse(
        &edit(&|h| {
            h.encryption.as_mut().unwrap().passphrase = Some(proto::Passphrase {
                passes: 0,
                memory: 1 << 20,
                salt: vec![0; 16],
            })
        }),
        None,
        false,
        "no passes",
    );
    refuse(
        &edit(&|h| {
            h.encryption.as_mut().unwrap().passphrase = Some(proto::Passphrase {
                passes: 1,
                memory: 8 << 30,
                salt: vec![0; 16],
            })
        }),
        None,
        false,
        "8 GiB of memory",
    );
    refuse(
        &edit(&|h| {
            h.encryption.as_mut().unwrap().passphrase = Some(proto::Passphrase {
                passes: 1,
                memory: 1 << 20,
                salt: vec![0; 15],
            })
        }),
        None,
        false,
        "a short passphrase salt",
    );
}

/// `file` with `header` and `flags` in place of its own (its length may change, within the
/// room before the data), both CRCs made right and the padding zeroed.
fn relaid(file: &[u8], header: &proto::Header, flags: u32) -> Vec<u8> {
    let bytes = header.encode_to_vec();
    let preamble = v1::Preamble {
        version: v1::VERSION,
        header_crc32c: checksum::crc32c(&bytes),
        header_len: bytes.len() as u64,
        flags,
    };
    let data_offset = header.data_offset as usize;
    let mut out = preamble.encode().to_vec();
    out.extend_from_slice(&bytes);
    assert!(out.len() <= data_offset, "the header fits before the data");
    out.resize(data_offset, 0);
    out.extend_from_slice(&file[data_offset..]);
    out
}

/// The encrypted file at `path` with its encryption stripped the way whoever can replace
/// the file would: no `encryption`, no block tags, the flag cleared, the header's CRCs made
/// right. The data CRCs are those of the ciphertext, so they still match.
fn stripped(path: &Path) -> Vec<u8> {
    let file = std::fs::read(path).unwrap();
    let mut h = header(&file);
    h.encryption = None;
    for t in &mut h.tensors {
        t.block_tags.clear();
    }
    relaid(&file, &h, 0)
}

#[test]
fn a_key_refuses_a_file_whose_encryption_was_stripped_or_that_was_never_encrypted() {
    for_each_cipher(|_| downgrade());
}

fn downgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let tensors = write(&path, keyed());
    let bad = dir.path().join("stripped.plaid");
    std::fs::write(&bad, stripped(&path)).unwrap();
    // Without a key, the stripped file is an ordinary file whose CRCs hold: nothing tells
    // it from a plain one (what a reader without a key is promised is integrity only).
    let d = Deserializer::open(&bad, ReadOptions::default()).unwrap();
    d.verify().unwrap();
    // With the key, every way of reading refuses it, before anything is read.
    let passphrase = ReadOptions::default().passphrase(Some(b"p")).unwrap();
    for options in [read_key(), read_key().verify(false), passphrase] {
        let d = Deserializer::open(&bad, options).unwrap();
        let e = common::load_all(&d).unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        let message = e.to_string();
        assert!(
            message.contains("expected an encrypted file; it is stored in the clear"),
            "{message}"
        );
        assert!(
            message.contains("stripped.plaid") && message.contains("'w'"),
            "{message}"
        );
        assert!(matches!(d.verify(), Err(Error::Decrypt(_))));
        assert!(matches!(d.read_tensor(0), Err(Error::Decrypt(_))));
        assert!(matches!(d.view(0), Err(Error::Decrypt(_))));
        assert!(matches!(d.map(), Err(Error::Decrypt(_))));
        let out = dir.path().join("out.plaid");
        let e = plaid::convert::to_plaid(&d, &out, WriteOptions::default(), &mut |_, _| {})
            .unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        assert!(!out.exists(), "a refused conversion writes nothing");
    }
    // A slice through the views API, streamed, in short reads: refused the same way.
    let streamed = ShortReads::new(FileSource::open(&bad).unwrap(), 3);
    let d = Deserializer::from_source(Box::new(streamed), read_key()).unwrap();
    let mut out = vec![0u8; 100 * 4];
    let mut slot = Some(&mut out[..]);
    let e = d
        .load(&mut |t: &plaid::TensorInfo| {
            Ok(match (t.name.as_str(), slot.take()) {
                ("w", Some(out)) => Destination::View(
                    View::whole().slice(0, 0, 1),
                    Box::new(Destination::Host(out)),
                ),
                (_, other) => {
                    slot = other;
                    Destination::Skip
                }
            })
        })
        .unwrap_err();
    assert!(matches!(e, Error::Decrypt(_)), "{e}");
    // Allowed explicitly (a mixed fleet): it loads what it holds, the ciphertext here.
    let d = Deserializer::open(&bad, read_key().allow_plaintext(true)).unwrap();
    let loaded = common::load_all(&d).unwrap();
    assert_ne!(loaded[0], tensors[0].3, "the ciphertext, not the weights");
    // A file never encrypted is refused the same way; its empty tensors are not.
    let plain = dir.path().join("plain.plaid");
    write(&plain, WriteOptions::default());
    let d = Deserializer::open(&plain, read_key()).unwrap();
    assert!(matches!(common::load_all(&d), Err(Error::Decrypt(_))));
    let e_index = d.find("e").unwrap();
    assert_eq!(d.read_tensor(e_index).unwrap(), Vec::<u8>::new());
    let d = Deserializer::open(&plain, read_key().allow_plaintext(true)).unwrap();
    let loaded = common::load_all(&d).unwrap();
    for (got, (name, _, _, data)) in loaded.iter().zip(&tensors) {
        assert_eq!(got, data, "{name}");
    }
    // The origin of the key is named in the refusal where it is known.
    let d = Deserializer::open(
        &plain,
        read_key().key_origin(Some("from the environment's PLAID_KEY")),
    )
    .unwrap();
    let message = common::load_all(&d).unwrap_err().to_string();
    assert!(message.contains("PLAID_KEY"), "{message}");
}

#[test]
fn a_files_key_derivation_is_bounded_by_the_readers_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let cheap = WriteOptions::default()
        .passphrase(Some(b"correct horse"))
        .unwrap()
        .passphrase_limits(2, 64 << 10)
        .unwrap();
    let tensors = write(&path, cheap);
    let read = |max_memory: u64, max_passes: u64| {
        ReadOptions::default()
            .passphrase(Some(b"correct horse"))
            .unwrap()
            .passphrase_limits(max_memory, max_passes)
            .unwrap()
    };
    // Within the limits: read.
    let d = Deserializer::open(&path, read(64 << 10, 2)).unwrap();
    assert_eq!(common::load_all(&d).unwrap()[0], tensors[0].3);
    // Past them (memory, then passes): refused before the derivation runs.
    for (memory, passes) in [(32 << 10, 16), (1 << 30, 1)] {
        let d = Deserializer::open(&path, read(memory, passes)).unwrap();
        let e = common::load_all(&d).unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        let message = e.to_string();
        assert!(message.contains("past this reader's limits"), "{message}");
        assert!(message.contains("passphrase_limits"), "{message}");
    }
    // Limits outside the format's are refused as arguments.
    for (memory, passes) in [(0, 1), (1 << 20, 0), (8 << 30, 1), (1 << 20, 65)] {
        assert!(matches!(
            ReadOptions::default().passphrase_limits(memory, passes),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert_eq!(
        ReadOptions::default().get_passphrase_limits(),
        (1 << 30, 16),
        "the defaults: 1 GiB and 16 passes"
    );

    // A file that declares 4 GiB (the format's limit) and 64 passes: refused at once by
    // default, where it used to cost an abort or minutes of CPU.
    let file = std::fs::read(&path).unwrap();
    let mut h = header(&file);
    let p = h.encryption.as_mut().unwrap().passphrase.as_mut().unwrap();
    p.memory = 4 << 30;
    p.passes = 64;
    let costly = dir.path().join("costly.plaid");
    std::fs::write(&costly, relaid(&file, &h, v1::FLAG_ENCRYPTED)).unwrap();
    let started = std::time::Instant::now();
    let d = Deserializer::open(
        &costly,
        ReadOptions::default().passphrase(Some(b"x")).unwrap(),
    )
    .unwrap();
    let e = common::load_all(&d).unwrap_err();
    assert!(matches!(e, Error::Decrypt(_)), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // With the limits raised, memory the system refuses is an error, not an abort.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let (code, stderr) = common::plaid_with_address_space(
        &[
            "verify",
            costly.to_str().unwrap(),
            "--passphrase-file",
            pw.to_str().unwrap(),
            "--kdf-max-memory",
            "4294967296",
            "--kdf-max-passes",
            "64",
        ],
        1 << 30,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("out of memory"), "{stderr}");
    assert!(stderr.contains("costly.plaid"), "{stderr}");

    // A writer refuses limits its readers would refuse, unless told.
    let strong = WriteOptions::default()
        .passphrase(Some(b"p"))
        .unwrap()
        .passphrase_limits(3, 2 << 30)
        .unwrap();
    let e = Serializer::create(dir.path().join("w.plaid"), strong.clone()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("kdf_above_read_limits"), "{e}");
    Serializer::create(
        dir.path().join("w.plaid"),
        strong.kdf_above_read_limits(true),
    )
    .unwrap();
    // With a raw key the limits do not apply.
    let keyed_strong = WriteOptions::default()
        .key(Some(&KEY))
        .unwrap()
        .passphrase_limits(3, 2 << 30)
        .unwrap();
    Serializer::create(dir.path().join("k.plaid"), keyed_strong).unwrap();
}

#[test]
fn a_fixed_passphrase_salt_is_the_salt_a_tensorizer_file_records() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.plaid");
    let tensors = write(&plain, WriteOptions::default());
    let source = Deserializer::open(&plain, ReadOptions::default()).unwrap();
    let salt = *b"0123456789abcdef";
    let options = WriteOptions::default()
        .passphrase(Some(b"pw"))
        .unwrap()
        .passphrase_limits(1, 8 << 10)
        .unwrap()
        .passphrase_salt(Some(&salt))
        .unwrap()
        .sync(false);
    let recorded = |path: &Path| -> Vec<[u8; 16]> {
        let d = Deserializer::open(path, ReadOptions::default()).unwrap();
        d.tensors()
            .iter()
            .filter_map(|t| match t.encryption.as_deref() {
                Some(plaid::format::Encryption::Tensorizer { kdf: Some(kdf), .. }) => {
                    Some(kdf.salt)
                }
                _ => None,
            })
            .collect()
    };
    for name in ["a.tensors", "b.tensors"] {
        let out = dir.path().join(name);
        plaid::convert::to_tensorizer_with(&source, &out, &options, &mut |_, _| {}).unwrap();
        let salts = recorded(&out);
        assert!(
            !salts.is_empty() && salts.iter().all(|s| *s == salt),
            "{name}"
        );
        let d = Deserializer::open(
            &out,
            ReadOptions::default().passphrase(Some(b"pw")).unwrap(),
        )
        .unwrap();
        let loaded = common::load_all(&d).unwrap();
        for (got, (_, _, _, data)) in loaded.iter().zip(&tensors) {
            assert_eq!(got, data);
        }
    }
    // Without a fixed salt, each file draws its own; a salt of another length is refused.
    let fresh = options.clone().passphrase_salt(None).unwrap();
    let out = dir.path().join("c.tensors");
    plaid::convert::to_tensorizer_with(&source, &out, &fresh, &mut |_, _| {}).unwrap();
    assert!(recorded(&out).iter().all(|s| *s != salt));
    assert!(matches!(
        WriteOptions::default().passphrase_salt(Some(b"short")),
        Err(Error::InvalidArgument(_))
    ));
}
