//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use plaid::format::{plaid as v1, proto};
use prost::Message;

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A tensor with deterministic pseudo-random contents.
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: plaid::DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// A tensor of `dtype` and `shape` filled from `seed`.
pub fn tensor(name: &str, dtype: plaid::DType, shape: &[u64], seed: u64) -> Tensor {
    let len = dtype.nbytes(shape).unwrap() as usize;
    Tensor {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data: random_bytes(len, seed),
    }
}

/// A file with an arbitrary (possibly hostile) header, with correct preamble and header
/// checksums so that the reader's semantic validation is what gets tested.
pub fn file_with_header(header: &proto::Header, data_len: usize) -> Vec<u8> {
    let header_bytes = header.encode_to_vec();
    let preamble = v1::Preamble {
        version: v1::VERSION,
        header_crc32c: plaid::format::checksum::crc32c(&header_bytes),
        header_len: header_bytes.len() as u64,
        flags: 0,
    };
    let mut file = preamble.encode().to_vec();
    file.extend_from_slice(&header_bytes);
    file.resize(4096 + data_len, 0);
    file
}

/// A well-formed header with one f32 tensor of `n` elements at offset 4096.
pub fn valid_header(n: u64, data: &[u8]) -> proto::Header {
    proto::Header {
        alignment: 4096,
        checksum_block_size: 4096,
        data_offset: 4096,
        file_length: 4096 + n * 4,
        tensors: vec![proto::Tensor {
            name: "w".into(),
            dtype: plaid::DType::F32.id() as i32,
            shape: vec![n],
            offset: 4096,
            length: n * 4,
            block_crc32c: plaid::format::checksum::block_crcs(data, 4096),
            ..Default::default()
        }],
        metadata: BTreeMap::new(),
        writer: "test".into(),
        encryption: None,
    }
}

/// Load every tensor of `d` into buffers poisoned with 0xA5 and return them.
pub fn load_all(d: &plaid::Deserializer) -> plaid::Result<Vec<Vec<u8>>> {
    let mut buffers: Vec<Vec<u8>> = d
        .tensors()
        .iter()
        .map(|t| vec![0xA5; t.nbytes as usize])
        .collect();
    let mut slots: Vec<Option<&mut [u8]>> =
        buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
    d.load(&mut |t: &plaid::TensorInfo| {
        Ok(plaid::Destination::Host(slots[t.index].take().unwrap()))
    })?;
    Ok(buffers)
}

/// The command-line tool (the workspace's `plaid-cli`), built beside this test binary: a
/// `cargo test` of the workspace builds it before any test runs.
pub fn plaid_cli() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/plaid
    let cli = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("plaid");
    assert!(
        cli.exists(),
        "{} is not built: run the tests of the whole workspace (cargo test), or cargo build -p plaid-cli first",
        cli.display()
    );
    cli
}

/// Exit code (None when killed by a signal) and stderr of `plaid ARGS` run with at most
/// `limit` bytes of address space.
pub fn plaid_with_address_space(args: &[&str], limit: u64) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(plaid_cli());
    command.args(args).stdout(std::process::Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
