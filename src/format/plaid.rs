//! plaid format version 1: a 32-byte preamble, a protobuf header, then tensor data
//! aligned to at least 4096 bytes. `docs/FORMAT.md` is the specification; this module
//! is its only implementation, for reading and writing alike.

use std::collections::BTreeMap;

use prost::Message;

use super::checksum::{block_count, crc32c};
use super::{proto, Checksum, Encryption, Format, Index, PlaidEncryption, TensorInfo, TensorRole};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::{read_exact, Source};

/// The first 10 bytes of every plaid file. The high-bit byte catches 7-bit transfers,
/// `\r\n` catches CRLF-to-LF conversion, `\x1a` stops `type` on DOS, and the lone `\n`
/// catches LF-to-CRLF conversion.
pub const MAGIC: [u8; 10] = *b"\x89PLAID\r\n\x1a\n";
/// The format version this build reads and writes.
pub const VERSION: u16 = 1;
/// Length of the fixed preamble.
pub const PREAMBLE_LEN: u64 = 32;
/// Largest header accepted, in bytes.
pub const MAX_HEADER_LEN: u64 = 256 << 20;
/// Most tensors in one file.
pub const MAX_TENSORS: usize = 1 << 20;
/// Most metadata entries in one file.
pub const MAX_METADATA_ENTRIES: usize = 1 << 16;
/// Most dimensions of one tensor.
pub const MAX_RANK: usize = 64;
/// Longest tensor name or metadata key, in bytes.
pub const MAX_NAME_LEN: usize = 65_535;
/// Smallest and default data alignment.
pub const MIN_ALIGNMENT: u64 = 4096;
/// Largest data alignment accepted.
pub const MAX_ALIGNMENT: u64 = 1 << 30;
/// The most memory a key derivation named by a file may take at all (`docs/FORMAT.md`
/// 13.1); a reader takes at most its own default unless raised.
pub(crate) const MAX_KDF_MEMORY: u64 = 4 << 30;
/// The most passes a key derivation named by a file may take at all.
pub(crate) const MAX_KDF_PASSES: u64 = 64;
/// The least memory a key derivation may take (Argon2's minimum, 8 KiB).
pub(crate) const MIN_KDF_MEMORY: u64 = 8 << 10;
/// Default size of a checksum block.
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
/// Smallest checksum block.
pub const MIN_BLOCK_SIZE: u64 = 4096;
/// Largest checksum block.
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Preamble flag: the tensor data is encrypted (`docs/FORMAT.md` section 13).
pub const FLAG_ENCRYPTED: u32 = 1;
/// Cipher 1: AES-256-GCM per checksum block.
pub const CIPHER_AES_256_GCM: u32 = 1;
/// Cipher 2: AEGIS-256X4 per checksum block (the writer's default).
pub const CIPHER_AEGIS_256X4: u32 = 2;
/// Bytes of a GCM tag.
pub const TAG_LEN: usize = 16;

/// The decoded preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Format version.
    pub version: u16,
    /// CRC-32C of the header bytes.
    pub header_crc32c: u32,
    /// Length of the header.
    pub header_len: u64,
    /// Feature flags: 0, or [`FLAG_ENCRYPTED`].
    pub flags: u32,
}

impl Preamble {
    /// The 32 bytes on disk.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN as usize] {
        let mut out = [0u8; PREAMBLE_LEN as usize];
        out[..10].copy_from_slice(&MAGIC);
        out[10..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.header_crc32c.to_le_bytes());
        out[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.flags.to_le_bytes());
        let crc = crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse and check the preamble of `file`.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN as usize], file: &str) -> Result<Preamble> {
        if bytes[..10] != MAGIC {
            return Err(Error::format(file, 0, bad_magic_detail(bytes)));
        }
        let version = u16::from_le_bytes([bytes[10], bytes[11]]);
        let stored_crc = u32::from_le_bytes(le4(&bytes[28..32]));
        let actual_crc = crc32c(&bytes[..28]);
        if stored_crc != actual_crc {
            return Err(Error::format(
                file,
                28,
                format!(
                    "preamble checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
                ),
            ));
        }
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "{file}: plaid format version {version}; this build reads version {VERSION}"
            )));
        }
        let flags = u32::from_le_bytes(le4(&bytes[24..28]));
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(Error::Unsupported(format!(
                "{file}: unknown feature flags {:#x} in the preamble",
                flags & !FLAG_ENCRYPTED
            )));
        }
        Ok(Preamble {
            version,
            header_crc32c: u32::from_le_bytes(le4(&bytes[12..16])),
            header_len: u64::from_le_bytes(le8(&bytes[16..24])),
            flags,
        })
    }
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(b);
    out
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(b);
    out
}

fn bad_magic_detail(bytes: &[u8]) -> String {
    let stripped: Vec<u8> = MAGIC.iter().map(|b| b & 0x7f).collect();
    if bytes[..10] == stripped[..] {
        "bad magic: the high bit of byte 0 was stripped (7-bit transfer)".into()
    } else if bytes.starts_with(b"\x89PLAID\n") || bytes.starts_with(b"\x89PLAID\r\r\n") {
        "bad magic: line endings were converted (text-mode transfer)".into()
    } else {
        // The bytes are not quoted: they are the start of whatever file this is.
        "not a plaid file (bad magic: its first 10 bytes are not plaid's)".into()
    }
}

/// Read and validate the preamble and header of a plaid file.
pub fn read_index(source: &dyn Source) -> Result<Index> {
    let preamble_bytes: [u8; PREAMBLE_LEN as usize] =
        super::read_head(source, &format!("the {PREAMBLE_LEN}-byte preamble"))?;
    let (file, file_len) = (source.name(), source.len());
    let preamble = Preamble::decode(&preamble_bytes, file)?;
    if preamble.header_len > MAX_HEADER_LEN {
        return Err(Error::format(
            file,
            16,
            format!(
                "header length {} exceeds the limit of {MAX_HEADER_LEN} bytes",
                preamble.header_len
            ),
        ));
    }
    let header_end = PREAMBLE_LEN + preamble.header_len;
    if header_end > file_len {
        return Err(Error::format(
            file,
            file_len,
            format!("truncated: the header ends at offset {header_end} but the file is {file_len} bytes"),
        ));
    }
    // Bounded by both MAX_HEADER_LEN and the file's real length, checked above.
    let mut header_bytes = Vec::new();
    header_bytes
        .try_reserve_exact(preamble.header_len as usize)
        .map_err(|_| {
            Error::format(
                file,
                PREAMBLE_LEN,
                format!(
                    "cannot allocate the {}-byte header: out of memory",
                    preamble.header_len
                ),
            )
        })?;
    header_bytes.resize(preamble.header_len as usize, 0);
    read_exact(source, PREAMBLE_LEN, &mut header_bytes)?;
    let actual = crc32c(&header_bytes);
    if actual != preamble.header_crc32c {
        return Err(Error::format(
            file,
            PREAMBLE_LEN,
            format!(
                "header checksum mismatch (stored {:#010x}, computed {actual:#010x})",
                preamble.header_crc32c
            ),
        ));
    }
    // Counted on the wire before decoding: a 2-byte empty tensor or a 1-byte dimension
    // decodes into many times its size, so limits checked after decoding come too late.
    let tensor_count =
        prescan(&header_bytes).map_err(|detail| Error::format(file, PREAMBLE_LEN, detail))?;
    // The header's own fields first (prost skips the tensors, an unknown field to this
    // message), then each tensor decoded, checked and kept as it comes: no decoded copy of
    // the whole tensor list ever exists beside the index.
    let fields = HeaderFields::decode(header_bytes.as_slice())
        .map_err(|e| Error::format(file, PREAMBLE_LEN, format!("undecodable header: {e}")))?;
    let (mut index, mut next) =
        validate_fields(fields, preamble.flags, header_end, file_len, file)?;
    index.tensors.try_reserve_exact(tensor_count).map_err(|_| {
        Error::format(
            file,
            PREAMBLE_LEN,
            format!("no memory for the index of {tensor_count} tensors"),
        )
    })?;
    let mut wire = header_bytes.as_slice();
    while let Some((field, kind)) = next_key(&mut wire) {
        let bytes = match (field, kind) {
            (5, LEN) => take_len(&mut wire),
            _ => skip(&mut wire, field, kind, 0).map(|()| &[][..]),
        };
        // prescan and HeaderFields::decode walked the same bytes without complaint.
        let Some(bytes) = bytes.filter(|_| field == 5 && kind == LEN) else {
            continue;
        };
        let position = index.tensors.len();
        let t = proto::Tensor::decode(bytes).map_err(|e| {
            Error::format(
                file,
                PREAMBLE_LEN,
                format!("tensor #{position}: undecodable: {e}"),
            )
        })?;
        let info = validate_tensor(position, t, &mut next, &index, file)?;
        index.tensors.push(info);
    }
    refuse_duplicates(&index.tensors, file)?;
    Ok(index)
}

/// The `Header` message without its tensors, which are decoded one at a time.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderFields {
    #[prost(uint64, tag = "1")]
    alignment: u64,
    #[prost(uint64, tag = "2")]
    checksum_block_size: u64,
    #[prost(uint64, tag = "3")]
    data_offset: u64,
    #[prost(uint64, tag = "4")]
    file_length: u64,
    #[prost(btree_map = "string, string", tag = "6")]
    metadata: BTreeMap<String, String>,
    #[prost(string, tag = "7")]
    writer: String,
    #[prost(message, optional, tag = "8")]
    encryption: Option<proto::Encryption>,
}

/// Where the next tensor's data may start, and the checksum block size.
struct Next {
    previous_end: u64,
    block_size: u64,
    encryption: Option<std::sync::Arc<PlaidEncryption>>,
}

/// A name as messages show it: whole when short, else its start and its length (a name of
/// megabytes is not repeated into every message about it).
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    const MOST: usize = 200;
    if name.len() <= MOST {
        return name.into();
    }
    let mut end = MOST;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &name[..end], name.len()).into()
}

/// Refuse a name given to two tensors (found by sorting positions, not by a second set of
/// names).
fn refuse_duplicates(tensors: &[TensorInfo], file: &str) -> Result<()> {
    let mut order: Vec<u32> = Vec::new();
    order
        .try_reserve_exact(tensors.len())
        .map_err(|_| Error::format(file, PREAMBLE_LEN, "no memory to check the tensor names"))?;
    order.extend(0..tensors.len() as u32);
    order.sort_unstable_by(|&a, &b| tensors[a as usize].name.cmp(&tensors[b as usize].name));
    for pair in order.windows(2) {
        let (a, b) = (pair[0].min(pair[1]) as usize, pair[0].max(pair[1]) as usize);
        if tensors[a].name == tensors[b].name {
            return Err(Error::format(
                file,
                PREAMBLE_LEN,
                format!(
                    "tensor #{b} '{}': duplicate name (tensor #{a} has it too)",
                    shown(&tensors[b].name)
                ),
            ));
        }
    }
    Ok(())
}

/// Check the header's own fields; the index returned has no tensors yet.
fn validate_fields(
    header: HeaderFields,
    flags: u32,
    header_end: u64,
    file_len: u64,
    file: &str,
) -> Result<(Index, Next)> {
    let at = PREAMBLE_LEN;
    let fail = |detail: String| Err(Error::format(file, at, detail));
    let alignment = header.alignment;
    if !alignment.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&alignment) {
        return fail(format!("alignment {alignment} is not a power of two between {MIN_ALIGNMENT} and {MAX_ALIGNMENT}"));
    }
    let block_size = header.checksum_block_size;
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return fail(format!("checksum block size {block_size} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"));
    }
    if header.data_offset < header_end
        || !header.data_offset.is_multiple_of(alignment)
        || header.data_offset > header.file_length
    {
        return fail(format!(
            "data offset {} is not an aligned offset between the end of the header ({header_end}) \
             and the end of the file ({})",
            header.data_offset, header.file_length
        ));
    }
    if header.file_length > file_len {
        return Err(Error::format(
            file,
            file_len,
            format!(
                "truncated: the header declares {} bytes but the file ends at offset {file_len}",
                header.file_length
            ),
        ));
    }
    if header.file_length < file_len {
        return Err(Error::format(
            file,
            header.file_length,
            format!(
                "{} unexpected bytes after the declared end of the file",
                file_len - header.file_length
            ),
        ));
    }
    for (key, value) in &header.metadata {
        if let Err(detail) = check_text(key, "metadata key") {
            return fail(format!("{detail} ('{}')", shown(key)));
        }
        if value.contains('\0') {
            return fail(format!(
                "metadata value of '{}' contains a NUL byte",
                shown(key)
            ));
        }
    }
    let metadata = header.metadata;
    let encryption = match (header.encryption, flags & FLAG_ENCRYPTED != 0) {
        (None, false) => None,
        (Some(e), true) => Some(std::sync::Arc::new(validate_encryption(e, file)?)),
        (None, true) => {
            return fail("the preamble flags it encrypted but the header has no encryption".into())
        }
        (Some(_), false) => {
            return fail("the header has encryption but the preamble does not flag it".into())
        }
    };

    let index = Index {
        format: Format::Plaid,
        version: u32::from(VERSION),
        tensors: Vec::new(),
        metadata,
        alignment,
        file_length: file_len,
    };
    let next = Next {
        previous_end: header.data_offset,
        block_size,
        encryption,
    };
    Ok((index, next))
}

/// Check the header's `encryption` field (checks 16b to 16d of `docs/FORMAT.md` 13.5).
fn validate_encryption(e: proto::Encryption, file: &str) -> Result<PlaidEncryption> {
    let fail = |detail: String| Err(Error::format(file, PREAMBLE_LEN, detail));
    let nonce_len = match e.cipher {
        CIPHER_AES_256_GCM => 12,
        CIPHER_AEGIS_256X4 => 32,
        other => {
            return Err(Error::Unsupported(format!(
                "{file}: encrypted with cipher {other}; this build knows {CIPHER_AES_256_GCM} (AES-256-GCM) and {CIPHER_AEGIS_256X4} (AEGIS-256X4)"
            )))
        }
    };
    let (Ok(salt), true, Ok(key_check)) = (
        <[u8; 32]>::try_from(e.salt.as_slice()),
        e.nonce_base.len() == nonce_len,
        <[u8; TAG_LEN]>::try_from(e.key_check.as_slice()),
    ) else {
        return fail(format!(
            "encryption: a salt of {} bytes, a nonce base of {} and a key check of {} (32, {nonce_len} and 16 expected)",
            e.salt.len(),
            e.nonce_base.len(),
            e.key_check.len()
        ));
    };
    let mut nonce_base = [0u8; 32];
    nonce_base[..nonce_len].copy_from_slice(&e.nonce_base);
    let kdf = match e.passphrase {
        None => None,
        Some(p) => {
            let memory_ok = p.memory.is_multiple_of(1024)
                && (MIN_KDF_MEMORY..=MAX_KDF_MEMORY).contains(&p.memory);
            let passes_ok = (1..=MAX_KDF_PASSES).contains(&p.passes);
            let Ok(salt) = <[u8; 16]>::try_from(p.salt.as_slice()) else {
                return fail(format!(
                    "encryption: a passphrase salt of {} bytes (16 expected)",
                    p.salt.len()
                ));
            };
            if !memory_ok || !passes_ok {
                return fail(format!(
                    "encryption: a key derivation of {} passes over {} bytes, outside 1 to {} passes and {} to {} bytes in KiB",
                    p.passes,
                    p.memory,
                    MAX_KDF_PASSES,
                    MIN_KDF_MEMORY,
                    MAX_KDF_MEMORY
                ));
            }
            Some(super::Kdf {
                opslimit: p.passes,
                memlimit: p.memory,
                salt,
            })
        }
    };
    Ok(PlaidEncryption {
        cipher: e.cipher,
        salt,
        nonce_base,
        kdf,
        key_check,
    })
}

/// Check tensor #`index` against the header and the tensors before it.
fn validate_tensor(
    index: usize,
    t: proto::Tensor,
    next: &mut Next,
    header: &Index,
    file: &str,
) -> Result<TensorInfo> {
    let at = PREAMBLE_LEN;
    let (alignment, block_size, file_len) = (header.alignment, next.block_size, header.file_length);
    let previous_end = next.previous_end;
    let name = t.name;
    let tensor_fail = |offset: u64, detail: String| {
        Err(Error::format(
            file,
            offset,
            format!("tensor #{index} '{}': {detail}", shown(&name)),
        ))
    };
    if let Err(detail) = check_text(&name, "tensor name") {
        return tensor_fail(at, detail);
    }
    let dtype = u32::try_from(t.dtype)
        .map_err(|_| ())
        .and_then(|id| DType::from_id(id).map_err(|_| ()))
        .map_err(|_| {
            Error::Unsupported(format!(
                "{file}: tensor #{index} '{name}' has unknown dtype id {}",
                t.dtype
            ))
        })?;
    if t.shape.len() > MAX_RANK {
        return tensor_fail(
            at,
            format!("rank {} exceeds the limit of {MAX_RANK}", t.shape.len()),
        );
    }
    let Some(nbytes) = dtype.nbytes(&t.shape) else {
        return tensor_fail(
            at,
            format!("shape {:?} of {dtype} overflows 64 bits", t.shape),
        );
    };
    if nbytes != t.length {
        return tensor_fail(
            at,
            format!(
                "length {} does not match shape {:?} of {dtype} ({nbytes} bytes)",
                t.length, t.shape
            ),
        );
    }
    if !t.offset.is_multiple_of(alignment) || t.offset < previous_end {
        return tensor_fail(
            t.offset,
            format!("data offset {} is unaligned, out of order or overlaps the previous tensor (which ends at {previous_end})", t.offset),
        );
    }
    let end = match t.offset.checked_add(nbytes) {
        Some(end) if end <= file_len => end,
        _ => {
            return tensor_fail(
                t.offset,
                format!("data runs past the end of the file ({nbytes} bytes at offset {} in a {file_len}-byte file)", t.offset),
            )
        }
    };
    let expected_blocks = block_count(nbytes, block_size);
    if t.block_crc32c.len() as u64 != expected_blocks {
        return tensor_fail(
            at,
            format!(
                "{} block checksums for {expected_blocks} blocks",
                t.block_crc32c.len()
            ),
        );
    }
    let expected_tags = match next.encryption {
        Some(_) => expected_blocks as usize * TAG_LEN,
        None => 0,
    };
    if t.block_tags.len() != expected_tags {
        return tensor_fail(
            at,
            format!(
                "{} bytes of block tags, not {expected_tags} ({})",
                t.block_tags.len(),
                if next.encryption.is_some() {
                    "16 per checksum block in an encrypted file"
                } else {
                    "none in a file that is not encrypted"
                }
            ),
        );
    }
    if !t.path.is_empty() {
        if let Err(detail) = check_text(&t.path, "tensor path") {
            return tensor_fail(at, detail);
        }
        // The path is a JSON array whose components joined by dots are the name.
        match super::flatten_path(&t.path) {
            Ok(flat) if flat == name => {}
            Ok(_) => return tensor_fail(at, "its path names another tensor".into()),
            Err(_) => {
                return tensor_fail(
                    at,
                    "its path is not a JSON array of strings and non-negative integers".into(),
                )
            }
        }
    }
    next.previous_end = end;
    let encryption = match &next.encryption {
        Some(file) if nbytes > 0 => Some(Box::new(Encryption::Plaid {
            block_size,
            position: index as u32,
            tags: t
                .block_tags
                .chunks_exact(TAG_LEN)
                .map(|c| <[u8; TAG_LEN]>::try_from(c).unwrap_or_default())
                .collect(),
            file: file.clone(),
        })),
        _ => None,
    };
    Ok(TensorInfo {
        name: name.into(),
        dtype,
        shape: super::Shape::from_slice(&t.shape),
        nbytes,
        index,
        offset: t.offset,
        checksum: Checksum::Crc32cBlocks {
            block_size,
            crcs: t.block_crc32c.into_boxed_slice(),
        },
        zero_fill: false,
        role: TensorRole::from_id(t.role).unwrap_or_default(),
        module_index: t.module_index,
        path: (!t.path.is_empty()).then(|| t.path.into_boxed_str()),
        encryption,
    })
}

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const FIXED32: u64 = 5;
/// Deepest nesting of unknown groups skipped (prost's own recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;
/// Fewest bytes a valid `Tensor` message takes: a one-byte name and a dtype.
const MIN_TENSOR_LEN: usize = 5;

/// Walk the header's wire format and refuse more tensors, metadata entries or dimensions
/// than the limits allow, and tensor entries too short to be valid, before anything is
/// decoded into memory; returns the number of tensors. Malformed wire data is left for
/// the decoder to report.
fn prescan(header: &[u8]) -> std::result::Result<usize, String> {
    let (mut tensors, mut entries) = (0usize, 0usize);
    let mut buf = header;
    while let Some((field, wire)) = next_key(&mut buf) {
        match (field, wire) {
            (5, LEN) => {
                tensors += 1;
                if tensors > MAX_TENSORS {
                    return Err(format!("more than {MAX_TENSORS} tensors"));
                }
                let Some(tensor) = take_len(&mut buf) else {
                    return Ok(tensors);
                };
                // A valid tensor holds at least a name of one byte (3 bytes on the wire)
                // and a dtype other than 0 (2 bytes): a shorter entry is refused before
                // it costs the hundred-odd bytes a decoded tensor takes.
                if tensor.len() < MIN_TENSOR_LEN {
                    return Err(format!(
                        "tensor #{}: {} bytes cannot hold a name and a dtype",
                        tensors - 1,
                        tensor.len()
                    ));
                }
                check_rank(tensor, tensors - 1)?;
            }
            (6, LEN) => {
                entries += 1;
                if entries > MAX_METADATA_ENTRIES {
                    return Err(format!("more than {MAX_METADATA_ENTRIES} metadata entries"));
                }
                if take_len(&mut buf).is_none() {
                    return Ok(tensors);
                }
            }
            _ => {
                if skip(&mut buf, field, wire, 0).is_none() {
                    return Ok(tensors);
                }
            }
        }
    }
    Ok(tensors)
}

/// Refuse a `Tensor` message with more than `MAX_RANK` shape entries.
fn check_rank(mut tensor: &[u8], index: usize) -> std::result::Result<(), String> {
    let mut rank = 0usize;
    while let Some((field, wire)) = next_key(&mut tensor) {
        match (field, wire) {
            (3, LEN) => {
                let Some(packed) = take_len(&mut tensor) else {
                    return Ok(());
                };
                rank += packed.iter().filter(|&&b| b & 0x80 == 0).count();
            }
            (3, VARINT) => {
                rank += 1;
                if read_varint(&mut tensor).is_none() {
                    return Ok(());
                }
            }
            _ => {
                if skip(&mut tensor, field, wire, 0).is_none() {
                    return Ok(());
                }
            }
        }
        if rank > MAX_RANK {
            return Err(format!(
                "tensor #{index}: rank exceeds the limit of {MAX_RANK}"
            ));
        }
    }
    Ok(())
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn next_key(buf: &mut &[u8]) -> Option<(u64, u64)> {
    if buf.is_empty() {
        return None;
    }
    let key = read_varint(buf)?;
    Some((key >> 3, key & 7))
}

fn take_len<'b>(buf: &mut &'b [u8]) -> Option<&'b [u8]> {
    let len = usize::try_from(read_varint(buf)?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(field)
}

fn skip(buf: &mut &[u8], field: u64, wire: u64, depth: u32) -> Option<()> {
    let fixed = |buf: &mut &[u8], n: usize| -> Option<()> {
        *buf = buf.get(n..)?;
        Some(())
    };
    match wire {
        VARINT => read_varint(buf).map(drop),
        FIXED64 => fixed(buf, 8),
        LEN => take_len(buf).map(drop),
        FIXED32 => fixed(buf, 4),
        START_GROUP if depth < MAX_GROUP_DEPTH => loop {
            let (inner, inner_wire) = next_key(buf)?;
            if inner_wire == END_GROUP {
                return (inner == field).then_some(());
            }
            skip(buf, inner, inner_wire, depth + 1)?;
        },
        _ => None,
    }
}

/// Checks a tensor name or metadata key: non-empty, bounded, no NUL (C reads it as a
/// NUL-terminated string).
pub fn check_text(text: &str, what: &str) -> std::result::Result<(), String> {
    if text.is_empty() {
        return Err(format!("empty {what}"));
    }
    if text.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} of {} bytes exceeds the limit of {MAX_NAME_LEN}",
            text.len()
        ));
    }
    if text.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

/// A tensor as the writer lays it out.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Bytes of data.
    pub nbytes: u64,
    /// Per-block CRC-32C.
    pub block_crc32c: Vec<u32>,
    /// Per-block GCM tags, concatenated (encrypted files only).
    pub block_tags: Vec<u8>,
    /// What the tensor was to the model that wrote it.
    pub role: TensorRole,
    /// Index of the owning module.
    pub module_index: u32,
    /// Its path in a nested structure (JSON array text).
    pub path: Option<String>,
}

/// The bytes before the first tensor and where each tensor goes.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Preamble followed by the header (padding to `data_offset` is not included).
    pub head: Vec<u8>,
    /// Absolute offset of each tensor.
    pub offsets: Vec<u64>,
    /// Total file length.
    pub file_length: u64,
}

/// Lay out a file: place each tensor at the next aligned offset after the header and
/// encode the header. The header's size depends on the offsets it records, so the
/// data offset is raised until the header fits in front of it.
pub fn layout(
    tensors: &[PlannedTensor],
    metadata: &BTreeMap<String, String>,
    alignment: u64,
    block_size: u64,
    encryption: Option<&proto::Encryption>,
) -> Result<Layout> {
    let overflow = || Error::invalid("the file would exceed 2^64 bytes");
    let mut data_offset = align_up(PREAMBLE_LEN, alignment).ok_or_else(overflow)?;
    loop {
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut cursor = data_offset;
        for t in tensors {
            let offset = align_up(cursor, alignment).ok_or_else(overflow)?;
            offsets.push(offset);
            cursor = offset.checked_add(t.nbytes).ok_or_else(overflow)?;
        }
        let header = proto::Header {
            alignment,
            checksum_block_size: block_size,
            data_offset,
            file_length: cursor,
            tensors: tensors
                .iter()
                .zip(&offsets)
                .map(|(t, &offset)| proto::Tensor {
                    name: t.name.clone(),
                    dtype: t.dtype.id() as i32,
                    shape: t.shape.clone(),
                    offset,
                    length: t.nbytes,
                    block_crc32c: t.block_crc32c.clone(),
                    role: t.role.id(),
                    module_index: t.module_index,
                    path: t.path.clone().unwrap_or_default(),
                    block_tags: t.block_tags.clone(),
                })
                .collect(),
            metadata: metadata.clone(),
            writer: concat!("plaid ", env!("CARGO_PKG_VERSION")).to_owned(),
            encryption: encryption.cloned(),
        };
        let header_bytes = header.encode_to_vec();
        let header_len = header_bytes.len() as u64;
        if header_len > MAX_HEADER_LEN {
            return Err(Error::invalid(format!(
                "the header would be {header_len} bytes, over the format's limit of {MAX_HEADER_LEN}"
            )));
        }
        if PREAMBLE_LEN + header_len <= data_offset {
            let preamble = Preamble {
                version: VERSION,
                header_crc32c: crc32c(&header_bytes),
                header_len,
                flags: if encryption.is_some() {
                    FLAG_ENCRYPTED
                } else {
                    0
                },
            };
            let mut head = Vec::with_capacity((PREAMBLE_LEN + header_len) as usize);
            head.extend_from_slice(&preamble.encode());
            head.extend_from_slice(&header_bytes);
            return Ok(Layout {
                head,
                offsets,
                file_length: cursor,
            });
        }
        data_offset = align_up(PREAMBLE_LEN + header_len, alignment).ok_or_else(overflow)?;
    }
}

/// `value` rounded up to a multiple of the power of two `alignment`.
pub fn align_up(value: u64, alignment: u64) -> Option<u64> {
    Some(value.checked_add(alignment - 1)? & !(alignment - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips_and_detects_damage() {
        let p = Preamble {
            version: VERSION,
            header_crc32c: 0xdead_beef,
            header_len: 1234,
            flags: 0,
        };
        let bytes = p.encode();
        assert_eq!(Preamble::decode(&bytes, "f").unwrap(), p);

        let mut stripped = bytes;
        stripped[0] &= 0x7f;
        let e = Preamble::decode(&stripped, "f").unwrap_err().to_string();
        assert!(e.contains("7-bit"), "{e}");

        let mut crlf_to_lf = [0u8; 32];
        crlf_to_lf[..7].copy_from_slice(b"\x89PLAID\n");
        let e = Preamble::decode(&crlf_to_lf, "f").unwrap_err().to_string();
        assert!(e.contains("line endings"), "{e}");

        let mut flipped = bytes;
        flipped[17] ^= 1;
        let e = Preamble::decode(&flipped, "f").unwrap_err().to_string();
        assert!(e.contains("preamble checksum"), "{e}");
    }

    #[test]
    fn align_up_works() {
        assert_eq!(align_up(0, 4096), Some(0));
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 4096), None);
    }

    #[test]
    fn layout_places_data_after_a_large_header() {
        let tensors: Vec<PlannedTensor> = (0..2000)
            .map(|i| PlannedTensor {
                name: format!("layer.{i}.weight"),
                dtype: DType::F32,
                shape: vec![1],
                nbytes: 4,
                block_crc32c: vec![0],
                block_tags: Vec::new(),
                role: TensorRole::Unspecified,
                module_index: 0,
                path: None,
            })
            .collect();
        let l = layout(&tensors, &BTreeMap::new(), 4096, DEFAULT_BLOCK_SIZE, None).unwrap();
        assert!(l.head.len() as u64 <= l.offsets[0]);
        assert!(l.offsets.iter().all(|o| o % 4096 == 0));
        assert!(l.offsets.windows(2).all(|w| w[1] - w[0] == 4096));
        assert_eq!(l.file_length, l.offsets[1999] + 4);
    }
}
