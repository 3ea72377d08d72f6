//! On-disk formats. Every reader turns a file's header into an [`Index`]: the list of
//! tensors with their byte ranges and how to verify them. The load pipeline works only
//! on the index, so it is shared by every format.

pub mod checksum;
// The copy-and-CRC kernels: the library picks one; choosing another (benchmarks, fuzzing)
// takes the feature `testing`.
#[cfg(feature = "testing")]
pub mod crc_copy;
#[cfg(not(feature = "testing"))]
pub(crate) mod crc_copy;
pub mod plaid;
pub mod safetensors;
pub mod tensorizer;
pub(crate) mod verify;

/// Types generated from `proto/plaid.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/plaid.v1.rs"));
}

use std::collections::BTreeMap;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::{read_exact, Source};

/// One tensor as a reader found it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorInfo {
    /// UTF-8 name, unique in the file (held inline up to 24 bytes).
    pub name: Name,
    /// Element type.
    pub dtype: DType,
    /// Row-major dimensions; empty for a 0-d tensor (held inline up to rank 2).
    pub shape: Shape,
    /// Bytes of data: product(shape) * dtype size.
    pub nbytes: u64,
    /// Position in the file's tensor list.
    pub index: usize,
    /// Absolute offset of the first data byte in the file.
    pub offset: u64,
    /// How the data is verified.
    pub checksum: Checksum,
    /// The file stores no bytes for this tensor (a tensorizer meta tensor): it loads as
    /// `nbytes` zeros, and `offset` is where its data would start.
    pub zero_fill: bool,
    /// What the tensor was to the model that wrote it, where the file says.
    pub role: TensorRole,
    /// Index of the owning module in the writer's module walk (tensorizer's
    /// `module_idx`); 0 where the file does not say.
    pub module_index: u32,
    /// The tensor's place in a nested structure, as a compact JSON array of strings and
    /// non-negative integers (`["model","layers",0,"w"]`), for files that store one
    /// (tensorizer's structured names); `name` is then its components joined by dots.
    pub path: Option<Box<str>>,
    /// How the stored bytes are encrypted, if they are (boxed: most tensors are not).
    pub encryption: Option<Box<Encryption>>,
}

/// How a tensor's stored bytes are encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encryption {
    /// tensorizer's: chunks of `chunk_size` bytes (the last one shorter), chunk `i` sealed
    /// by libsodium's `crypto_secretbox` (XSalsa20-Poly1305) with nonce `nonce + i` (a
    /// 24-byte little-endian integer) and MAC `macs[i]`, under a raw key or one derived from
    /// a passphrase by `kdf`.
    Tensorizer {
        /// Bytes per sealed chunk.
        chunk_size: u64,
        /// The first chunk's nonce.
        nonce: [u8; 24],
        /// One Poly1305 MAC per chunk.
        macs: Box<[[u8; 16]]>,
        /// Where the key comes from a passphrase: how.
        kdf: Option<Kdf>,
    },
    /// plaid's (`docs/FORMAT.md` section 13): each checksum block sealed by AEGIS-256X4 or
    /// AES-256-GCM under the file's key, with tag `tags[j]` for block `j`.
    Plaid {
        /// Bytes per block (the file's checksum block size).
        block_size: u64,
        /// The tensor's position in the file's header, which its nonces and associated
        /// data bind (kept here: `TensorInfo::index` changes when a deserializer keeps only
        /// some tensors).
        position: u32,
        /// One tag per block.
        tags: Box<[[u8; 16]]>,
        /// What every tensor of the file shares: salts, nonce base, key check.
        file: std::sync::Arc<PlaidEncryption>,
    },
}

/// The file-wide part of a plaid file's encryption (its header's `encryption` field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaidEncryption {
    /// The cipher: 1 AES-256-GCM, 2 AEGIS-256X4.
    pub cipher: u32,
    /// The HKDF salt of the file key.
    pub salt: [u8; 32],
    /// The base of every block's nonce: 12 bytes for AES-256-GCM (then zeros), 32 for
    /// AEGIS-256X4.
    pub nonce_base: [u8; 32],
    /// Where the key comes from a passphrase: how.
    pub kdf: Option<Kdf>,
    /// The GCM tag of the empty message that tells a wrong key from damage.
    pub key_check: [u8; 16],
}

impl Encryption {
    /// The unit a reader must decrypt whole: stored bytes are cut at multiples of it.
    pub fn unit(&self) -> u64 {
        match self {
            Encryption::Tensorizer { chunk_size, .. } => (*chunk_size).max(1),
            Encryption::Plaid { block_size, .. } => (*block_size).max(1),
        }
    }
}

/// A key derived from a passphrase by libsodium's `crypto_pwhash` (Argon2id v1.3, one
/// lane, 32 bytes out).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kdf {
    /// Passes (Argon2's `t_cost`).
    pub opslimit: u64,
    /// Memory in bytes (Argon2's `m_cost` is this / 1024 KiB).
    pub memlimit: u64,
    /// The salt.
    pub salt: [u8; 16],
}

/// A tensor's name in an index: a string held inline when short, so that an index of many
/// small tensors costs a small multiple of the header that declares them.
pub type Name = compact_str::CompactString;

/// A tensor's dimensions in an index, held inline up to rank 2.
pub type Shape = smallvec::SmallVec<[u64; 2]>;

impl TensorInfo {
    /// Bytes the file stores for this tensor: `nbytes`, or 0 for a zero-filled tensor.
    pub fn stored_len(&self) -> u64 {
        if self.zero_fill {
            0
        } else {
            self.nbytes
        }
    }
}

/// What a writer records about where a tensor came from: [`TensorInfo`]'s `role`,
/// `module_index` and `path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorOrigin {
    /// What the tensor was to the model.
    pub role: TensorRole,
    /// Index of the owning module in the writer's module walk.
    pub module_index: u32,
    /// Its place in a nested structure, as a compact JSON array (see [`TensorInfo::path`]).
    pub path: Option<String>,
}

impl TensorOrigin {
    /// An origin with this role, module index and path.
    pub fn new(role: TensorRole, module_index: u32, path: Option<String>) -> Self {
        TensorOrigin {
            role,
            module_index,
            path,
        }
    }
}

impl TensorInfo {
    /// The tensor's role, module index and path together.
    pub fn origin(&self) -> TensorOrigin {
        TensorOrigin::new(
            self.role,
            self.module_index,
            self.path.as_deref().map(String::from),
        )
    }
}

/// The dotted name of a path given as a JSON array of strings and non-negative integers
/// (`["model","layers",0,"w"]` is `model.layers.0.w`).
pub fn flatten_path(json: &str) -> std::result::Result<String, String> {
    let bad = |why: &str| format!("path '{}' {why}", json.escape_debug());
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(&format!("is not JSON: {e}")))?;
    let parts = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("is not a non-empty JSON array"))?;
    let mut flat = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            serde_json::Value::String(s) => flat.push(s.clone()),
            serde_json::Value::Number(n) if n.is_u64() => flat.push(n.to_string()),
            _ => {
                return Err(bad(
                    "holds a component that is neither a string nor an index",
                ))
            }
        }
    }
    Ok(flat.join("."))
}

/// What a tensor was to the model that wrote it (tensorizer's tensor type). The numbers
/// are the C API's `PLAID_ROLE_*` constants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TensorRole {
    /// The file does not say.
    #[default]
    Unspecified,
    /// A module parameter (`nn.Parameter`).
    Param,
    /// A module buffer.
    Buffer,
    /// An entry of a state dict.
    StateDict,
}

impl TensorRole {
    /// The stable number (`PLAID_ROLE_*`).
    pub const fn id(self) -> u32 {
        match self {
            TensorRole::Unspecified => 0,
            TensorRole::Param => 1,
            TensorRole::Buffer => 2,
            TensorRole::StateDict => 3,
        }
    }

    /// The role with this number.
    pub fn from_id(id: u32) -> Option<TensorRole> {
        Some(match id {
            0 => TensorRole::Unspecified,
            1 => TensorRole::Param,
            2 => TensorRole::Buffer,
            3 => TensorRole::StateDict,
            _ => return None,
        })
    }

    /// A short name for messages and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            TensorRole::Unspecified => "unspecified",
            TensorRole::Param => "param",
            TensorRole::Buffer => "buffer",
            TensorRole::StateDict => "state_dict",
        }
    }
}

/// How a tensor's bytes are verified.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checksum {
    /// Nothing to verify against.
    None,
    /// CRC-32C of each `block_size` block, relative to the tensor's first byte.
    Crc32cBlocks {
        /// Block length in bytes (the last block may be shorter).
        block_size: u64,
        /// One CRC per block.
        crcs: Box<[u32]>,
    },
    /// tensorizer's per-tensor hashes: CRC-32 (IEEE) and/or SHA-256 of `prefix` (the
    /// tensor's header with the hash values zeroed) followed by all of the tensor's stored
    /// bytes. Verifying needs the whole tensor, read in order.
    WholeTensor {
        /// Bytes hashed before the data.
        prefix: std::sync::Arc<[u8]>,
        /// Stored CRC-32, if any.
        crc32: Option<u32>,
        /// Stored SHA-256, if any (boxed: most tensors of most files have none, and the
        /// index holds one of these per tensor).
        sha256: Option<Box<[u8; 32]>>,
    },
}

impl Checksum {
    /// The unit, in bytes, that a reader must read whole to verify it; `None` when any
    /// split works.
    pub fn block_size(&self) -> Option<u64> {
        match self {
            Checksum::None => None,
            Checksum::Crc32cBlocks { block_size, .. } => Some(*block_size),
            Checksum::WholeTensor { .. } => None,
        }
    }

    /// Whether verifying needs all of a tensor's bytes in order, in one piece of work.
    pub fn whole_tensor(&self) -> bool {
        matches!(self, Checksum::WholeTensor { .. })
    }
}

/// Which format a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// plaid's own format.
    Plaid,
    /// Hugging Face safetensors.
    Safetensors,
    /// CoreWeave tensorizer's `.tensors`.
    Tensorizer,
}

impl Format {
    /// The stable number of the C API's `PLAID_FORMAT_*` constants.
    pub const fn id(self) -> u32 {
        match self {
            Format::Plaid => 1,
            Format::Safetensors => 2,
            Format::Tensorizer => 3,
        }
    }

    /// A short name for messages and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Plaid => "plaid",
            Format::Safetensors => "safetensors",
            Format::Tensorizer => "tensorizer",
        }
    }
}

/// A format plaid reads: recognises its files from their first bytes and turns their
/// header into an [`Index`]. Everything after that (the pipeline, placement, verification)
/// is shared by every format.
pub trait FormatReader: Sync {
    /// Whether `prefix` (the first bytes of the file, up to 64) starts a file of this
    /// format; `file_len` is the whole file's length.
    fn sniff(&self, prefix: &[u8], file_len: u64) -> bool;
    /// Read and validate the header.
    fn read_index(&self, source: &dyn Source) -> Result<Index>;
}

struct PlaidReader;

impl FormatReader for PlaidReader {
    fn sniff(&self, prefix: &[u8], _file_len: u64) -> bool {
        prefix.starts_with(&plaid::MAGIC)
    }
    fn read_index(&self, source: &dyn Source) -> Result<Index> {
        plaid::read_index(source)
    }
}

struct SafetensorsReader;

impl FormatReader for SafetensorsReader {
    fn sniff(&self, prefix: &[u8], file_len: u64) -> bool {
        safetensors::sniff(prefix, file_len)
    }
    fn read_index(&self, source: &dyn Source) -> Result<Index> {
        safetensors::read_index(source)
    }
}

struct TensorizerReader;

impl FormatReader for TensorizerReader {
    fn sniff(&self, prefix: &[u8], _file_len: u64) -> bool {
        prefix.starts_with(tensorizer::MAGIC)
    }
    fn read_index(&self, source: &dyn Source) -> Result<Index> {
        tensorizer::read_index(source)
    }
}

/// Every format plaid reads, in the order they are tried.
pub static READERS: &[&dyn FormatReader] = &[&PlaidReader, &SafetensorsReader, &TensorizerReader];

/// Detect the format of `source` from its first bytes (never from its name) and read
/// its header.
pub fn read_index(source: &dyn Source) -> Result<Index> {
    let mut prefix = vec![0u8; source.len().min(64) as usize];
    read_exact(source, 0, &mut prefix)?;
    if let Some(reader) = READERS.iter().find(|r| r.sniff(&prefix, source.len())) {
        return reader.read_index(source);
    }
    // Not recognised: report what plaid's own reader finds wrong (a bad magic, or a file
    // too short), which names the offset.
    plaid::read_index(source)
}

/// Everything a reader learned from a file's header.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Index {
    /// The file's format.
    pub format: Format,
    /// The file's format version.
    pub version: u32,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// The model's own key/value metadata.
    pub metadata: BTreeMap<String, String>,
    /// Alignment of tensor data in the file.
    pub alignment: u64,
    /// Length of the whole file.
    pub file_length: u64,
}

/// The first `N` bytes of `source`, its fixed-size `head` ("the 32-byte preamble"); a
/// shorter file is a format error naming it: "truncated: 10 bytes, inside the ...".
pub(crate) fn read_head<const N: usize>(source: &dyn Source, head: &str) -> Result<[u8; N]> {
    let file_len = source.len();
    if file_len < N as u64 {
        return Err(Error::format(
            source.name(),
            file_len,
            format!("truncated: {file_len} bytes, inside {head}"),
        ));
    }
    let mut head = [0u8; N];
    read_exact(source, 0, &mut head)?;
    Ok(head)
}
