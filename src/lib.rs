//! plaid moves model weights from storage into memory the caller already allocated,
//! verified and at the speed of the hardware.
//!
//! The crate is a pure Rust core (format, sources, sinks, the load pipeline) with a thin
//! C shell in [`ffi`]. Rust users write with a [`Serializer`] and read with a
//! [`Deserializer`], deciding where each tensor goes through a [`Placement`]:
//!
//! ```
//! use plaid::{DType, Deserializer, Destination, ReadOptions, Serializer, TensorInfo, WriteOptions};
//!
//! # fn main() -> plaid::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("model.plaid");
//! let weights: Vec<u8> = (0..64u8).collect();
//! let mut writer = Serializer::create(&path, WriteOptions::default())?;
//! writer.add_tensor("embed.weight", DType::F32, &[4, 4], &weights)?;
//! writer.set_metadata("architecture", "tiny")?;
//! writer.finish()?;
//!
//! let reader = Deserializer::open(&path, ReadOptions::default())?;
//! let mut destination = vec![0u8; 64];
//! let mut slot = Some(destination.as_mut_slice());
//! reader.load(&mut |t: &TensorInfo| {
//!     Ok(match t.name.as_str() {
//!         "embed.weight" => Destination::Host(slot.take().unwrap()),
//!         _ => Destination::Skip,
//!     })
//! })?;
//! assert_eq!(destination, weights);
//! # Ok(())
//! # }
//! ```
//!
//! # Floors
//!
//! The modules stand on floors: each imports only from the floors below its own, and
//! modules sharing a floor import each other without a cycle (`tests/layers.rs` keeps this).
//! From the top:
//!
//! ```text
//! ffi
//! convert
//! serializer deserializer
//! options
//! remote cuda
//! pipeline
//! sink
//! crypto
//! format
//! source
//! dtype pool filter fs url
//! error
//! ```
//!
//! `remote` and `cuda` provide a source and a sink that nothing below them names: the
//! deserializer hands the pipeline its sources and its device sinks. `options` stands
//! above them (it holds their settings: `remote`'s [`StorageOptions`](options::StorageOptions),
//! the `CUstream`) and above the pipeline, which takes only the settings the options give
//! it. The serializer copies from a deserializer, so it stands beside it and takes it, never
//! the other way round.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod convert;
mod crypto;
pub mod cuda;
pub mod deserializer;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod filter;
pub mod format;
mod fs;
pub mod options;
mod pipeline;
mod pool;
pub mod remote;
pub mod serializer;
pub mod sink;
pub mod source;
mod url;

pub use cuda::CudaArena;
pub use deserializer::Deserializer;
pub use dtype::DType;
pub use error::{Error, Result};
pub use filter::NameFilter;
pub use format::{Format, TensorInfo, TensorOrigin, TensorRole};
pub use options::{ReadOptions, WriteOptions};
pub use pipeline::{LoadStats, Progress, ProgressFn};
pub use serializer::{Serializer, WriteStats};
pub use sink::{Destination, HostArena, HostBuffers, Placement, Slice, View};
pub use source::Source;

/// The library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The C ABI's major version: bumped on any incompatible change of the C API.
pub const ABI_VERSION: u32 = 2;
