//! Remote storage: HTTP(S), S3 (and S3-compatible stores), Google Cloud Storage and Azure
//! Blob Storage, through `object_store`. A [`RemoteSource`] reads ranges of one object with
//! ranged GETs whose bodies are copied into the destination as they arrive (no staged copy
//! of the object); [`Upload`] writes one object with a multipart upload whose parts go out
//! in parallel while the file is produced.
//!
//! Each [`Client`] owns its tokio runtime ([`runtime`]): there is no global one.
//! Robustness comes from `object_store` (retries with backoff, bodies resumed midway,
//! `Content-Range` checked) and from plaid: the object's ETag is pinned when it is opened
//! and every range is asked `If-Match` it (and checked against the ETag answered, for
//! servers that ignore the header), and a body shorter or longer than asked is an error.

//!
//! [`StorageOptions`], the store's settings, are here whether or not the `remote` feature is
//! built (a build without it refuses every key); everything else only with it.

mod storage_options;
pub use storage_options::StorageOptions;

#[cfg(feature = "remote")]
mod client;
#[cfg(feature = "remote")]
mod config;
#[cfg(feature = "remote")]
mod errors;
#[cfg(feature = "remote")]
mod http;
#[cfg(feature = "remote")]
mod profile;
#[cfg(feature = "remote")]
mod runtime;
#[cfg(feature = "remote")]
mod upload;

pub use crate::url::is_url;
#[cfg(feature = "remote")]
pub use client::*;
#[cfg(feature = "remote")]
pub(crate) use upload::delete;
#[cfg(feature = "remote")]
pub use upload::Upload;
