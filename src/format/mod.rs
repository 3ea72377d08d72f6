//! On-disk formats. Every reader turns a file's header into an [`Index`]: the list of
//! tensors with their byte ranges and how to verify them. The load pipeline works only
//! on the index, so it is shared by every format.

pub mod checksum;
pub mod plaid;
pub mod safetensors;

/// Types generated from `proto/plaid.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/plaid.v1.rs"));
}

use std::collections::BTreeMap;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::Source;

/// One tensor as a reader found it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorInfo {
    /// UTF-8 name, unique in the file.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Row-major dimensions; empty for a 0-d tensor.
    pub shape: Vec<u64>,
    /// Bytes of data: product(shape) * dtype size.
    pub nbytes: u64,
    /// Position in the file's tensor list.
    pub index: usize,
    /// Absolute offset of the first data byte in the file.
    pub offset: u64,
    /// How the data is verified.
    pub checksum: Checksum,
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
        crcs: Vec<u32>,
    },
}

impl Checksum {
    /// The unit, in bytes, that a reader must read whole to verify it; `None` when any
    /// split works.
    pub fn block_size(&self) -> Option<u64> {
        match self {
            Checksum::None => None,
            Checksum::Crc32cBlocks { block_size, .. } => Some(*block_size),
        }
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
}

impl Format {
    /// The stable number of the C API's `PLAID_FORMAT_*` constants.
    pub const fn id(self) -> u32 {
        match self {
            Format::Plaid => 1,
            Format::Safetensors => 2,
        }
    }

    /// A short name for messages and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Plaid => "plaid",
            Format::Safetensors => "safetensors",
        }
    }
}

/// A format plaid reads: recognises its files from their first bytes and turns their
/// header into an [`Index`]. Everything after that (the pipeline, placement, verification)
/// is shared by every format.
pub trait FormatReader: Sync {
    /// The format this reader reads.
    fn format(&self) -> Format;
    /// Whether `prefix` (the first bytes of the file, up to 64) starts a file of this
    /// format; `file_len` is the whole file's length.
    fn sniff(&self, prefix: &[u8], file_len: u64) -> bool;
    /// Read and validate the header.
    fn read_index(&self, source: &dyn Source) -> Result<Index>;
}

struct PlaidReader;

impl FormatReader for PlaidReader {
    fn format(&self) -> Format {
        Format::Plaid
    }
    fn sniff(&self, prefix: &[u8], _file_len: u64) -> bool {
        prefix.starts_with(&plaid::MAGIC)
    }
    fn read_index(&self, source: &dyn Source) -> Result<Index> {
        plaid::read_index(source)
    }
}

struct SafetensorsReader;

impl FormatReader for SafetensorsReader {
    fn format(&self) -> Format {
        Format::Safetensors
    }
    fn sniff(&self, prefix: &[u8], file_len: u64) -> bool {
        safetensors::sniff(prefix, file_len)
    }
    fn read_index(&self, source: &dyn Source) -> Result<Index> {
        safetensors::read_index(source)
    }
}

/// Every format plaid reads, in the order they are tried.
pub static READERS: &[&dyn FormatReader] = &[&PlaidReader, &SafetensorsReader];

/// tensorizer's magic, recognised so that its files get a clear message.
const TENSORIZER_MAGIC: &[u8] = b"|TZR|";

/// Detect the format of `source` from its first bytes (never from its name) and read
/// its header.
pub fn read_index(source: &dyn Source) -> Result<Index> {
    let mut prefix = vec![0u8; source.len().min(64) as usize];
    source.read_at(0, &mut prefix)?;
    if let Some(reader) = READERS.iter().find(|r| r.sniff(&prefix, source.len())) {
        return reader.read_index(source);
    }
    if prefix.starts_with(TENSORIZER_MAGIC) {
        return Err(Error::Unsupported(format!(
            "{}: a tensorizer file; this build of plaid does not read tensorizer files yet",
            source.name()
        )));
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
