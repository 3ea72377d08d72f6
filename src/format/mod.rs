//! On-disk formats. Every reader turns a file's header into an [`Index`]: the list of
//! tensors with their byte ranges and how to verify them. The load pipeline works only
//! on the index, so it is shared by every format.

pub mod checksum;
pub mod plaid;

/// Types generated from `proto/plaid.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/plaid.v1.rs"));
}

use std::collections::BTreeMap;

use crate::dtype::DType;

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
