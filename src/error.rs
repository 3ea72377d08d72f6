//! The one error type of the core. Every variant maps to one C status code.

use std::fmt;

/// Result alias used throughout plaid.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in plaid. Messages name the file, the tensor and
/// the byte offset wherever one is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A caller passed something unusable: a bad dtype, a NULL, an option out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operating system refused a read or a write.
    #[error("{context}: {source}")]
    Io {
        /// What plaid was doing, with the file and offset.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is malformed, truncated or not a plaid file.
    #[error("{file}: {detail} (at offset {offset})")]
    Format {
        /// The file.
        file: String,
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A valid file that uses something this build does not know (a newer version, a dtype).
    #[error("{0}")]
    Unsupported(String),
    /// Data did not match its stored checksum.
    #[error(
        "{file}: checksum mismatch in tensor '{tensor}' at file offset {offset} \
         (block {block}: stored crc32c {expected:#010x}, computed {actual:#010x})"
    )]
    Checksum {
        /// The file.
        file: String,
        /// The tensor whose data is damaged.
        tensor: String,
        /// File offset of the damaged block.
        offset: u64,
        /// Index of the damaged block within the tensor.
        block: u64,
        /// The checksum stored in the file.
        expected: u32,
        /// The checksum of the bytes read.
        actual: u32,
    },
    /// A tensor's bytes did not match a hash stored for the whole tensor (tensorizer's
    /// CRC-32 and SHA-256).
    #[error("{file}: checksum mismatch in tensor '{tensor}' at file offset {offset} ({detail})")]
    HashMismatch {
        /// The file.
        file: String,
        /// The tensor whose data (or header) is damaged.
        tensor: String,
        /// File offset of the tensor's data.
        offset: u64,
        /// Which hash failed, with the stored and computed values.
        detail: String,
    },
    /// A destination is smaller than the tensor placed into it.
    #[error("tensor '{tensor}' needs {needed} bytes but its destination holds {capacity}")]
    Capacity {
        /// The tensor.
        tensor: String,
        /// Its size in bytes.
        needed: u64,
        /// Bytes writable at the destination.
        capacity: u64,
    },
    /// The caller stopped the operation (a callback returned non-zero).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A named tensor does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A CUDA destination was requested but no CUDA driver is usable.
    #[error("{0}")]
    NoCuda(String),
    /// The CUDA driver reported an error.
    #[error("{0}")]
    Cuda(String),
    /// An encrypted tensor could not be decrypted: no key was given, or authentication
    /// failed (a wrong key or passphrase, or damaged ciphertext); the message says which and
    /// names the tensor.
    #[error("{0}")]
    Decrypt(String),
}

/// What a panic's payload says (its message, where it is a string).
pub(crate) fn panic_detail(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown payload".to_owned())
}

/// `len` zero bytes, or an I/O error of kind `OutOfMemory` naming `what` when the system
/// refuses the memory: an allocation sized by input is a status, never an abort.
pub(crate) fn zeroed(len: u64, what: impl fmt::Display) -> Result<Vec<u8>> {
    let refused = || {
        Error::io(
            format!("allocating {len} bytes for {what}"),
            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        )
    };
    let len = usize::try_from(len).map_err(|_| refused())?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| refused())?;
    bytes.resize(len, 0);
    Ok(bytes)
}

impl Error {
    /// A format error at `offset` of `file`.
    pub(crate) fn format(file: &str, offset: u64, detail: impl fmt::Display) -> Self {
        Error::Format {
            file: file.to_owned(),
            offset,
            detail: detail.to_string(),
        }
    }

    /// An I/O error with context.
    pub(crate) fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }

    /// An invalid-argument error.
    pub(crate) fn invalid(detail: impl fmt::Display) -> Self {
        Error::InvalidArgument(detail.to_string())
    }
}

impl Error {
    /// The same error, naming the tensor being read when it happened.
    pub(crate) fn in_tensor(self, tensor: &str) -> Self {
        match self {
            Error::Io { context, source } => Error::Io {
                context: format!("{context} (tensor '{tensor}')"),
                source,
            },
            Error::Format {
                file,
                offset,
                detail,
            } => Error::Format {
                file,
                offset,
                detail: format!("{detail} (tensor '{tensor}')"),
            },
            Error::Cuda(message) if !message.contains(&format!("tensor '{tensor}'")) => {
                Error::Cuda(format!("{message} (tensor '{tensor}')"))
            }
            Error::NoCuda(message) if !message.contains(&format!("tensor '{tensor}'")) => {
                Error::NoCuda(format!("{message} (tensor '{tensor}')"))
            }
            other => other,
        }
    }
}
