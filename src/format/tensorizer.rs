//! CoreWeave tensorizer's `.tensors` files, every format version tensorizer has written
//! (1 to 5): reading them into an [`Index`], and writing version 1/2 files that every
//! tensorizer release since 2.0 reads (version 1 ones even 1.x).
//!
//! Layout: a 73-byte file header (`|TZR|`, version, feature flags, counts, the metadata
//! length M), a metadata block of M bytes holding one entry per tensor, then for each
//! tensor a header (name, dtype, shape, hashes, data length) immediately followed by its
//! data, without alignment, and an 8-byte zero end marker. Every field is checked here,
//! and each tensor header is cross-checked against its metadata entry, because neither
//! the file header nor the metadata is covered by a hash. Each tensor's CRC-32 and
//! SHA-256 cover its header (hash values zeroed) followed by its data.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Checksum, Encryption, Format, Index, Kdf, TensorInfo, TensorRole};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::{read_exact, Source};

/// The first 5 bytes of every tensorizer file.
pub const MAGIC: &[u8; 5] = b"|TZR|";
/// Bytes before the metadata block.
pub const FILE_HEADER_LEN: u64 = 73;
/// The newest format version tensorizer has written.
pub const MAX_VERSION: u32 = 5;
/// The metadata block every tensorizer writer reserves.
pub const STANDARD_METADATA_LEN: u64 = 262_144;
/// Feature flag (v4+): tensor data is encrypted.
const FLAG_ENCRYPTED: u8 = 1;
/// Feature flag (v5): metadata entries carry a version tag.
const FLAG_VERSIONED_HEADERS: u8 = 2;
/// The first byte of a structured name (the JSON text sequence record separator).
const PATH_MARK: u8 = 0x1e;
/// Hash types in a tensor header.
const HASH_CRC32: u8 = 0;
const HASH_SHA256: u8 = 1;
/// Largest tensor header accepted: a name, a dtype, 255 dims and the hashes fit in far less.
const MAX_TENSOR_HEADER: u64 = 1 << 20;
/// Metadata is read in pieces of this size, growing as needed, so that a hostile M
/// costs no more memory than the entries it really holds.
const METADATA_READ: u64 = 1 << 20;

/// Whether `prefix` starts a tensorizer file.
pub fn sniff(prefix: &[u8]) -> bool {
    prefix.starts_with(MAGIC)
}

/// Reading a byte slice that starts at `base` in the file; running off its end is
/// [`Short`], which the caller turns into "read more" or "truncated".
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    base: u64,
}

/// The bytes ran out.
struct Short;

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], base: u64) -> Self {
        Cursor { bytes, at: 0, base }
    }
    fn offset(&self) -> u64 {
        self.base + self.at as u64
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], Short> {
        let end = self.at.checked_add(n).ok_or(Short)?;
        let out = self.bytes.get(self.at..end).ok_or(Short)?;
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> std::result::Result<u8, Short> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, Short> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> std::result::Result<u32, Short> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> std::result::Result<u64, Short> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// One metadata entry.
struct Entry {
    /// Where the entry starts in the file (for messages).
    at: u64,
    name: Vec<u8>,
    role: u8,
    dtype: Vec<u8>,
    /// Dims are u64 in this tensor's header too (entry version 5).
    wide_dims: bool,
    shape: Vec<u64>,
    header_offset: u64,
    data_offset: u64,
    data_length: u64,
}

/// What went wrong inside a structure: ran out of bytes, or a bad value.
enum Fault {
    Short,
    Bad(u64, String),
}

impl From<Short> for Fault {
    fn from(_: Short) -> Self {
        Fault::Short
    }
}

fn parse_entry(c: &mut Cursor<'_>, versioned: bool, i: u64) -> std::result::Result<Entry, Fault> {
    let at = c.offset();
    let wide_dims = if versioned {
        match c.u32()? {
            1 => false,
            5 => true,
            other => {
                return Err(Fault::Bad(
                    at,
                    format!("metadata entry {i} has version {other}; tensorizer writes 1 or 5"),
                ))
            }
        }
    } else {
        false
    };
    let name_len = c.u16()? as usize;
    let name = c.take(name_len)?.to_vec();
    let role = c.u8()?;
    let dtype_len = c.u8()? as usize;
    let dtype = c.take(dtype_len)?.to_vec();
    let ndim = c.u8()?;
    let mut shape = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        shape.push(if wide_dims {
            c.u64()?
        } else {
            u64::from(c.u32()?)
        });
    }
    Ok(Entry {
        at,
        name,
        role,
        dtype,
        wide_dims,
        shape,
        header_offset: c.u64()?,
        data_offset: c.u64()?,
        data_length: c.u64()?,
    })
}

/// A tensorizer dtype string as plaid's dtype: numpy's `dtype.str` (`<f4`, `|b1`), or for
/// torch types numpy lacks, `<V2` / `|V1` + NUL + the torch name (`torch.bfloat16`).
pub fn parse_dtype(text: &[u8]) -> std::result::Result<DType, String> {
    let shown = String::from_utf8_lossy(text).replace('\0', "\\0");
    if let Some(nul) = text.iter().position(|&b| b == 0) {
        let (head, torch) = (&text[..nul], &text[nul + 1..]);
        if torch.contains(&0) {
            return Err(format!("dtype '{shown}' holds more than one NUL byte"));
        }
        let size: Option<u64> = match head {
            [b'<' | b'|' | b'>', b'V', digits @ ..] => std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok()),
            _ => None,
        };
        let Some(size) = size else {
            return Err(format!(
                "dtype '{shown}': an opaque dtype must start with '<V' or '|V' and a size"
            ));
        };
        let dtype = match torch {
            b"torch.bfloat16" => DType::BF16,
            b"torch.complex32" | b"torch.chalf" => DType::C32,
            b"torch.float8_e5m2" => DType::F8E5M2,
            b"torch.float8_e4m3fn" => DType::F8E4M3FN,
            b"torch.float8_e5m2fnuz" => DType::F8E5M2FNUZ,
            b"torch.float8_e4m3fnuz" => DType::F8E4M3FNUZ,
            b"torch.float8_e8m0fnu" => DType::F8E8M0FNU,
            b"torch.float4_e2m1fn_x2" => DType::F4E2M1FNx2,
            _ => {
                return Err(format!(
                    "dtype '{shown}' is a torch type plaid does not know"
                ))
            }
        };
        if dtype.size() != size {
            return Err(format!(
                "dtype '{shown}' says {size} bytes per element, but {dtype} has {}",
                dtype.size()
            ));
        }
        return Ok(dtype);
    }
    Ok(match text {
        b"<f4" => DType::F32,
        b"<f2" => DType::F16,
        b"<f8" => DType::F64,
        b"|i1" => DType::I8,
        b"|u1" => DType::U8,
        b"<i2" => DType::I16,
        b"<i4" => DType::I32,
        b"<i8" => DType::I64,
        b"<u2" => DType::U16,
        b"<u4" => DType::U32,
        b"<u8" => DType::U64,
        b"|b1" => DType::Bool,
        b"<c8" => DType::C64,
        b"<c16" => DType::C128,
        [b'>', ..] => return Err(format!("dtype '{shown}' is big-endian")),
        // A real numpy type plaid has no dtype for (long double, its complex, datetimes):
        // a valid file plaid cannot represent, not a malformed one.
        b"<f16" | b"<f12" | b"<c32" | b"<c24" | [b'<', b'M' | b'm', b'8', ..] => {
            return Err(format!(
                "dtype '{shown}' is a numpy type plaid does not know"
            ))
        }
        _ => return Err(format!("dtype '{shown}' is not one tensorizer writes")),
    })
}

/// The dtype string tensorizer writes for `dtype`, and whether it needs format version 2.
pub fn dtype_string(dtype: DType) -> (&'static [u8], bool) {
    match dtype {
        DType::F32 => (b"<f4", false),
        DType::F16 => (b"<f2", false),
        DType::F64 => (b"<f8", false),
        DType::I8 => (b"|i1", false),
        DType::U8 => (b"|u1", false),
        DType::I16 => (b"<i2", false),
        DType::I32 => (b"<i4", false),
        DType::I64 => (b"<i8", false),
        DType::U16 => (b"<u2", false),
        DType::U32 => (b"<u4", false),
        DType::U64 => (b"<u8", false),
        DType::Bool => (b"|b1", false),
        DType::C64 => (b"<c8", false),
        DType::C128 => (b"<c16", false),
        DType::BF16 => (b"<V2\0torch.bfloat16", true),
        DType::C32 => (b"<V4\0torch.complex32", true),
        DType::F8E5M2 => (b"|V1\0torch.float8_e5m2", true),
        DType::F8E4M3FN => (b"|V1\0torch.float8_e4m3fn", true),
        DType::F8E5M2FNUZ => (b"|V1\0torch.float8_e5m2fnuz", true),
        DType::F8E4M3FNUZ => (b"|V1\0torch.float8_e4m3fnuz", true),
        DType::F8E8M0FNU => (b"|V1\0torch.float8_e8m0fnu", true),
        DType::F4E2M1FNx2 => (b"|V1\0torch.float4_e2m1fn_x2", true),
    }
}

fn role_of(code: u8) -> Option<TensorRole> {
    Some(match code {
        0 => TensorRole::Param,
        1 => TensorRole::Buffer,
        2 => TensorRole::StateDict,
        _ => return None,
    })
}

/// tensorizer's code for `role` (state-dict entry where the role is unspecified).
pub fn role_code(role: TensorRole) -> u8 {
    match role {
        TensorRole::Param => 0,
        TensorRole::Buffer => 1,
        _ => 2,
    }
}

/// A name as stored: plain UTF-8, or 0x1E + a JSON array path. Returns the flat name
/// (path components joined by dots) and the path's JSON text.
fn parse_name(raw: &[u8]) -> std::result::Result<(String, Option<String>), String> {
    if raw.is_empty() {
        return Err("a tensor has an empty name".into());
    }
    let text = std::str::from_utf8(raw).map_err(|e| format!("a tensor name is not UTF-8: {e}"))?;
    let Some(json) = text.strip_prefix(PATH_MARK as char) else {
        return Ok((text.to_owned(), None));
    };
    let flat = super::flatten_path(json).map_err(|why| format!("structured name: {why}"))?;
    Ok((flat, Some(json.to_owned())))
}

/// Read the metadata block's `count` entries, reading only as much of its `len` bytes
/// as they need.
fn read_entries(source: &dyn Source, len: u64, count: u64, versioned: bool) -> Result<Vec<Entry>> {
    let file = source.name();
    let mut want = len.min(METADATA_READ);
    loop {
        let mut bytes = crate::error::zeroed(want, format_args!("{file}: the metadata block"))?;
        read_exact(source, FILE_HEADER_LEN, &mut bytes)?;
        let mut c = Cursor::new(&bytes, FILE_HEADER_LEN);
        let mut entries = Vec::new();
        let mut fault = None;
        for i in 0..count {
            match parse_entry(&mut c, versioned, i) {
                // Each entry's own fields are checked as it comes: a block of entries
                // that cannot be tensors is refused at the first, before the others
                // cost memory.
                Ok(e) => {
                    check_entry(file, &e)?;
                    entries
                        .try_reserve(1)
                        .map_err(|_| Error::format(file, e.at, "no memory for the tensor index"))?;
                    entries.push(e);
                }
                Err(f) => {
                    fault = Some((i, f));
                    break;
                }
            }
        }
        match fault {
            None => return Ok(entries),
            Some((_, Fault::Bad(at, why))) => return Err(Error::format(file, at, why)),
            Some((i, Fault::Short)) if want >= len => {
                return Err(Error::format(
                    file,
                    FILE_HEADER_LEN + len,
                    format!(
                        "the {len}-byte metadata block ends inside entry {i} of the {count} the file header announces"
                    ),
                ))
            }
            Some((_, Fault::Short)) => want = len.min(want.saturating_mul(4)),
        }
    }
}

/// Fewest bytes a metadata entry takes: empty name and dtype, rank 0 (2 + 1 + 1 + 1 + 3
/// offsets of 8 bytes).
const MIN_ENTRY_LEN: u64 = 29;

/// What an entry says of its own tensor, checked: name, path, role and dtype.
fn check_entry(file: &str, entry: &Entry) -> Result<(String, Option<String>, TensorRole, DType)> {
    let (name, path) = parse_name(&entry.name).map_err(|why| Error::format(file, entry.at, why))?;
    let fail = |why: String| Error::format(file, entry.at, format!("{why} (tensor '{name}')"));
    let role = role_of(entry.role)
        .ok_or_else(|| fail(format!("tensor type {} is not 0, 1 or 2", entry.role)))?;
    let dtype = parse_dtype(&entry.dtype).map_err(|why| {
        match why.contains("not know") || why.contains("big-endian") {
            true => Error::Unsupported(format!("{file}: tensor '{name}': {why}")),
            false => fail(why),
        }
    })?;
    Ok((name, path, role, dtype))
}

/// A tensor header, checked against its metadata entry.
struct Record {
    module_index: u16,
    checksum: Checksum,
    encryption: Option<Box<Encryption>>,
}

/// libsodium's `crypto_pwhash_ALG_ARGON2ID13`.
const ALG_ARGON2ID13: i32 = 2;

/// A cipher chunk of crypt info: chunk size, first nonce, one MAC per chunk.
type Cipher = (u64, [u8; 24], Box<[[u8; 16]]>);

/// A crypt-info block (§8.1 of the format notes): the key derivation, if any, and the
/// cipher's chunk size, first nonce and MACs, if any.
fn parse_crypt(
    c: &mut Cursor<'_>,
    i: u64,
) -> std::result::Result<(Option<Kdf>, Option<Cipher>), Fault> {
    let at = c.offset();
    let total = c.u64()?;
    let body = c.at;
    let chunks = c.u16()?;
    let (mut kdf, mut cipher) = (None, None);
    for _ in 0..chunks {
        let chunk_at = c.offset();
        let chunk_len = c.u64()?;
        let start = c.at;
        let bad = |why: String| Fault::Bad(chunk_at, format!("tensor {i}'s crypt info: {why}"));
        match c.u16()? {
            1 => {
                let method = c.u16()?;
                let (opslimit, memlimit) = (c.u64()?, c.u64()?);
                let alg = c.u32()? as i32;
                let salt_len = c.u16()?;
                if method != 1 || alg != ALG_ARGON2ID13 || salt_len != 16 {
                    return Err(bad(format!(
                        "key derivation method {method}, algorithm {alg}, salt of {salt_len} bytes; tensorizer writes 1 (pwhash), 2 (Argon2id v1.3), 16"
                    )));
                }
                let salt = c.take(16)?.try_into().expect("16");
                kdf = Some(Kdf {
                    opslimit,
                    memlimit,
                    salt,
                });
            }
            kind @ (2 | 3) => {
                let (chunk_size, nonce, count) = if kind == 2 {
                    let chunk_size = c.u64()?;
                    let nonce: [u8; 24] = c.take(24)?.try_into().expect("24");
                    (chunk_size, nonce, c.u64()?)
                } else {
                    // One secretbox over all of the data: its length is checked later.
                    (u64::MAX, c.take(24)?.try_into().expect("24"), 1)
                };
                let len = count.checked_mul(16).ok_or(Fault::Short)?;
                let bytes = c.take(usize::try_from(len).map_err(|_| Fault::Short)?)?;
                let macs: Box<[[u8; 16]]> = bytes
                    .chunks_exact(16)
                    .map(|m| m.try_into().expect("16"))
                    .collect();
                if cipher.replace((chunk_size, nonce, macs)).is_some() {
                    return Err(bad("two cipher chunks".into()));
                }
            }
            other => return Err(bad(format!("unknown chunk type {other}"))),
        }
        if (c.at - start) as u64 != chunk_len {
            return Err(bad(format!(
                "a chunk says {chunk_len} bytes but holds {}",
                c.at - start
            )));
        }
    }
    if (c.at - body) as u64 != total {
        return Err(Fault::Bad(
            at,
            format!(
                "tensor {i}'s crypt info says {total} bytes but holds {}",
                c.at - body
            ),
        ));
    }
    Ok((kdf, cipher))
}

fn parse_record(
    bytes: &[u8],
    entry: &Entry,
    i: u64,
    crypt: bool,
) -> std::result::Result<Record, Fault> {
    let base = entry.header_offset;
    let mut c = Cursor::new(bytes, base);
    let mismatch = |c: &Cursor<'_>, what: &str| {
        Fault::Bad(
            c.offset(),
            format!("tensor {i}'s header disagrees with its metadata entry about its {what}"),
        )
    };
    let header_len = c.u64()?;
    if header_len != bytes.len() as u64 {
        return Err(mismatch(&c, "header length"));
    }
    let module_index = c.u16()?;
    if c.u8()? != entry.role {
        return Err(mismatch(&c, "tensor type"));
    }
    let name_len = c.u16()? as usize;
    if c.take(name_len)? != entry.name.as_slice() {
        return Err(mismatch(&c, "name"));
    }
    let dtype_len = c.u8()? as usize;
    if c.take(dtype_len)? != entry.dtype.as_slice() {
        return Err(mismatch(&c, "dtype"));
    }
    let ndim = c.u8()? as usize;
    if ndim != entry.shape.len() {
        return Err(mismatch(&c, "rank"));
    }
    for &dim in &entry.shape {
        let stored = if entry.wide_dims {
            c.u64()?
        } else {
            u64::from(c.u32()?)
        };
        if stored != dim {
            return Err(mismatch(&c, "shape"));
        }
    }
    let section_len = c.u16()? as usize;
    let section_start = c.at;
    let count = c.u8()?;
    let mut prefix = bytes.to_vec();
    let (mut crc32, mut sha256) = (None, None);
    for _ in 0..count {
        let at = c.offset();
        let kind = c.u8()?;
        let len = c.u8()? as usize;
        let value_at = c.at;
        let value = c.take(len)?;
        match (kind, len) {
            (HASH_CRC32, 4) => crc32 = Some(u32::from_le_bytes(value.try_into().expect("4"))),
            (HASH_SHA256, 32) => {
                sha256 = Some(Box::new(value.try_into().expect("32")))
            }
            _ => {
                return Err(Fault::Bad(
                    at,
                    format!("tensor {i} has a hash of type {kind} and {len} bytes; tensorizer writes CRC32 (0, 4 bytes) and SHA256 (1, 32 bytes)"),
                ))
            }
        }
        prefix[value_at..value_at + len].fill(0);
    }
    if c.at - section_start != section_len {
        return Err(Fault::Bad(
            base + section_start as u64,
            format!(
                "tensor {i}'s hash section says {section_len} bytes but holds {}",
                c.at - section_start
            ),
        ));
    }
    // The crypt info, where the file has it, is not hashed: cut out of the prefix.
    let crypt_start = c.at;
    let (kdf, cipher) = if crypt {
        parse_crypt(&mut c, i)?
    } else {
        (None, None)
    };
    let crypt_end = c.at;
    // Then the data length is all that is left.
    if bytes.len() - c.at != 8 {
        return Err(Fault::Bad(
            c.offset(),
            format!(
                "tensor {i}'s header has {} bytes after its hashes where the 8-byte data length belongs",
                bytes.len() - c.at
            ),
        ));
    }
    let data_length = c.u64()?;
    if data_length != entry.data_length {
        return Err(mismatch(&c, "data length"));
    }
    prefix.drain(crypt_start..crypt_end);
    let encryption = match cipher {
        _ if data_length == 0 => None, // nothing stored, nothing to decrypt (meta tensors)
        None if crypt => {
            return Err(Fault::Bad(
                base + crypt_start as u64,
                format!("tensor {i} stores {data_length} bytes unencrypted in an encrypted file"),
            ))
        }
        None => None,
        Some((chunk_size, nonce, macs)) => {
            let chunk_size = chunk_size.min(data_length);
            if chunk_size == 0 || macs.len() as u64 != data_length.div_ceil(chunk_size) {
                return Err(Fault::Bad(
                    base + crypt_start as u64,
                    format!(
                        "tensor {i}'s crypt info has {} MACs for {data_length} bytes in chunks of {chunk_size}",
                        macs.len()
                    ),
                ));
            }
            Some(Box::new(Encryption::Tensorizer {
                chunk_size,
                nonce,
                macs,
                kdf,
            }))
        }
    };
    Ok(Record {
        encryption,
        module_index,
        checksum: if crc32.is_none() && sha256.is_none() {
            Checksum::None
        } else {
            Checksum::WholeTensor {
                prefix: Arc::from(prefix),
                crc32,
                sha256,
            }
        },
    })
}

/// Byte ranges of a source read into memory, looked up by offset.
struct Ranges {
    /// `(offset, bytes)`, by offset, not overlapping.
    read: Vec<(u64, Vec<u8>)>,
}

impl Ranges {
    /// The `len` bytes at `offset`, which lie inside one range read.
    fn get(&self, offset: u64, len: u64) -> &[u8] {
        let k = self.read.partition_point(|(at, _)| *at <= offset) - 1;
        let (at, bytes) = &self.read[k];
        let start = (offset - at) as usize;
        &bytes[start..start + len as usize]
    }
}

/// Read every range of `wanted` (by offset, not overlapping): neighbours closer than the
/// source's merge gap in one request (up to its request size), the requests spread over as
/// many threads as the source wants in flight.
fn read_ranges(source: &dyn Source, wanted: &[(u64, u64)]) -> Result<Ranges> {
    let hints = source.hints();
    let merged = crate::source::coalesce(wanted, hints.merge_gap, hints.request_bytes);
    let slots: Vec<parking_lot::Mutex<Vec<u8>>> = merged
        .iter()
        .map(|_| parking_lot::Mutex::new(Vec::new()))
        .collect();
    let threads = hints
        .in_flight(crate::pool::threads_or_cores(0))
        .min(merged.len());
    crate::pool::for_each(
        merged.iter().zip(&slots),
        threads,
        |(&(offset, len), slot)| {
            let mut bytes = crate::error::zeroed(
                len,
                format_args!("{}: tensor headers at offset {offset}", source.name()),
            )?;
            read_exact(source, offset, &mut bytes)?;
            *slot.lock() = bytes;
            Ok(())
        },
    )?;
    Ok(Ranges {
        read: merged
            .iter()
            .zip(slots)
            .map(|(&(offset, _), slot)| (offset, slot.into_inner()))
            .collect(),
    })
}

/// Read and validate a tensorizer file's header, metadata and every tensor header.
pub fn read_index(source: &dyn Source) -> Result<Index> {
    let file = source.name();
    let head: [u8; FILE_HEADER_LEN as usize] = super::read_head(
        source,
        &format!("tensorizer's {FILE_HEADER_LEN}-byte file header"),
    )?;
    let file_len = source.len();
    if !sniff(&head) {
        return Err(Error::format(
            file,
            0,
            "not a tensorizer file (no '|TZR|' magic)",
        ));
    }
    let mut c = Cursor::new(&head, 0);
    let _ = c.take(MAGIC.len());
    let field = |c: &mut Cursor<'_>, n: usize| c.take(n).ok().expect("73 bytes read").to_vec();
    let version = u32::from_le_bytes(field(&mut c, 4).try_into().expect("4"));
    let flags = field(&mut c, 32);
    let le = |b: Vec<u8>| u64::from_le_bytes(b.try_into().expect("8"));
    let _data_bytes = le(field(&mut c, 8));
    let _reserved = le(field(&mut c, 8));
    let count = le(field(&mut c, 8));
    let metadata_len = le(field(&mut c, 8));
    match version {
        0 => {
            return Err(Error::format(
                file,
                5,
                "tensorizer format version 0 does not exist",
            ))
        }
        v if v > MAX_VERSION => {
            return Err(Error::Unsupported(format!(
                "{file}: tensorizer format version {v}; plaid reads versions 1 to {MAX_VERSION}"
            )))
        }
        _ => {}
    }
    // The flags field means something only from version 4 on (before, an unused hash).
    let (encrypted, versioned) = if version >= 4 {
        if flags[0] & !(FLAG_ENCRYPTED | FLAG_VERSIONED_HEADERS) != 0
            || flags[1..].iter().any(|&b| b != 0)
        {
            return Err(Error::Unsupported(format!(
                "{file}: unknown tensorizer feature flags (offset 9: {})",
                flags
                    .iter()
                    .rev()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )));
        }
        let versioned = flags[0] & FLAG_VERSIONED_HEADERS != 0;
        if versioned && version < 5 {
            return Err(Error::format(
                file,
                9,
                format!("the versioned-headers flag needs format version 5, but the file says {version}"),
            ));
        }
        (flags[0] & FLAG_ENCRYPTED != 0, versioned)
    } else {
        (version == 3, false)
    };
    let records_start = FILE_HEADER_LEN
        .checked_add(metadata_len)
        .filter(|&end| end <= file_len)
        .ok_or_else(|| {
            Error::format(
                file,
                65,
                format!("truncated: the {metadata_len}-byte metadata block runs past the end of the {file_len}-byte file"),
            )
        })?;
    // An entry takes at least 29 bytes, so the block bounds the count.
    if count > metadata_len / MIN_ENTRY_LEN {
        return Err(Error::format(
            file,
            57,
            format!("{count} tensors cannot fit a {metadata_len}-byte metadata block"),
        ));
    }
    let entries = read_entries(source, metadata_len, count, versioned)?;

    // Every entry is checked first; then the per-tensor headers, which lie between the
    // tensors' data through the whole file, are read with many requests in flight.
    let mut checked = Vec::new();
    checked
        .try_reserve_exact(entries.len())
        .map_err(|_| Error::format(file, 57, "no memory for the tensor index"))?;
    let mut cursor = records_start;
    for (index, entry) in entries.into_iter().enumerate() {
        let i = index as u64;
        let (name, path, role, dtype) = check_entry(file, &entry)?;
        let fail = |offset: u64, why: String| {
            Error::format(file, offset, format!("{why} (tensor '{name}')"))
        };
        let nbytes = dtype
            .nbytes(&entry.shape)
            .ok_or_else(|| fail(entry.at, format!("shape {:?} overflows", entry.shape)))?;
        if entry.header_offset != cursor {
            return Err(fail(
                entry.at,
                format!(
                    "the metadata puts tensor {i}'s header at offset {}, but the previous record ends at {cursor}",
                    entry.header_offset
                ),
            ));
        }
        let header_len = entry
            .data_offset
            .checked_sub(entry.header_offset)
            .filter(|len| (8..=MAX_TENSOR_HEADER).contains(len))
            .ok_or_else(|| {
                fail(
                    entry.at,
                    format!(
                        "data offset {} is not a plausible header length after header offset {}",
                        entry.data_offset, entry.header_offset
                    ),
                )
            })?;
        let data_end = entry
            .data_offset
            .checked_add(entry.data_length)
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                fail(
                    entry.data_offset,
                    format!(
                        "truncated: {} bytes of data at offset {} run past the end of the {file_len}-byte file",
                        entry.data_length, entry.data_offset
                    ),
                )
            })?;
        let zero_fill = if entry.data_length == nbytes {
            false
        } else if entry.data_length == 0 && version >= 4 {
            true // a meta tensor: no data, loads as zeros
        } else {
            return Err(fail(
                entry.at,
                format!(
                    "stores {} bytes, but {dtype} {:?} needs {nbytes}",
                    entry.data_length, entry.shape
                ),
            ));
        };
        cursor = data_end;
        checked.push((
            entry, name, path, role, dtype, nbytes, header_len, zero_fill,
        ));
    }
    let wanted: Vec<(u64, u64)> = checked.iter().map(|c| (c.0.header_offset, c.6)).collect();
    let headers = read_ranges(source, &wanted)?;

    let mut tensors = Vec::with_capacity(checked.len());
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(checked.len());
    for (index, (entry, name, path, role, dtype, nbytes, header_len, zero_fill)) in
        checked.into_iter().enumerate()
    {
        let i = index as u64;
        let fail = |offset: u64, why: String| {
            Error::format(file, offset, format!("{why} (tensor '{name}')"))
        };
        let header = headers.get(entry.header_offset, header_len);
        let record = parse_record(header, &entry, i, encrypted).map_err(|f| match f {
            Fault::Short => fail(
                entry.header_offset,
                format!("tensor {i}'s {header_len}-byte header ends before its fields do"),
            ),
            Fault::Bad(at, why) => fail(at, why),
        })?;
        if let Some(other) = by_name.insert(name.clone(), index) {
            return Err(fail(
                entry.at,
                format!("tensors {other} and {i} have the same name"),
            ));
        }
        tensors.push(TensorInfo {
            name: name.into(),
            dtype,
            shape: super::Shape::from_slice(&entry.shape),
            nbytes,
            index,
            offset: entry.data_offset,
            checksum: record.checksum,
            zero_fill,
            role,
            module_index: u32::from(record.module_index),
            encryption: record.encryption,
            path: path.map(String::into_boxed_str),
        });
    }
    // The records end with an 8-byte zero.
    let mut end = [0u8; 8];
    if cursor.checked_add(8).is_none_or(|e| e > file_len) {
        return Err(Error::format(
            file,
            cursor,
            "truncated: the 8-byte end marker after the last tensor is missing",
        ));
    }
    read_exact(source, cursor, &mut end)?;
    if end != [0; 8] {
        return Err(Error::format(
            file,
            cursor,
            format!(
                "expected the zero end marker after the last of {count} tensors, found more data \
                 (a file from an interrupted write?)"
            ),
        ));
    }
    Ok(Index {
        format: Format::Tensorizer,
        version,
        tensors,
        metadata: Default::default(),
        alignment: 1,
        file_length: file_len,
    })
}

/// The header of one tensor as tensorizer writes it: CRC32 then SHA256, or, for a tensor
/// with data in an encrypted file (`crypt` is `Some`), SHA256 only, followed by the crypt
/// info `crypt` holds (from [`encode_crypt_info`]; empty to get the bytes hashed, which
/// leave it out). `hashes` are the values to store; pass `None` to get the bytes to hash
/// (the same layout with zeroed hash values).
pub fn encode_header(
    tensor: &TensorInfo,
    raw_name: &[u8],
    hashes: Option<(u32, [u8; 32])>,
    crypt: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let (dtype, _) = dtype_string(tensor.dtype);
    if raw_name.is_empty() || raw_name.len() > usize::from(u16::MAX) {
        return Err(Error::invalid(format!(
            "tensor '{}': tensorizer names hold 1 to 65535 bytes",
            tensor.name
        )));
    }
    if tensor.shape.len() > 255 {
        return Err(Error::invalid(format!(
            "tensor '{}': tensorizer holds at most 255 dimensions",
            tensor.name
        )));
    }
    if let Some(dim) = tensor.shape.iter().find(|&&d| d > u64::from(u32::MAX)) {
        return Err(Error::Unsupported(format!(
            "tensor '{}': dimension {dim} needs tensorizer format version 5, which plaid does not write",
            tensor.name
        )));
    }
    let module = u16::try_from(tensor.module_index).unwrap_or(0);
    let (crc, sha) = hashes.unwrap_or((0, [0; 32]));
    let mut out = Vec::with_capacity(64 + raw_name.len() + 4 * tensor.shape.len());
    out.extend_from_slice(&[0; 8]); // header length, filled in below
    out.extend_from_slice(&module.to_le_bytes());
    out.push(role_code(tensor.role));
    out.extend_from_slice(&(raw_name.len() as u16).to_le_bytes());
    out.extend_from_slice(raw_name);
    out.push(dtype.len() as u8);
    out.extend_from_slice(dtype);
    out.push(tensor.shape.len() as u8);
    for &dim in &tensor.shape {
        out.extend_from_slice(&(dim as u32).to_le_bytes());
    }
    if crypt.is_some() && tensor.nbytes > 0 {
        // tensorizer keeps no CRC32 of encrypted data.
        out.extend_from_slice(&35u16.to_le_bytes());
        out.push(1);
    } else {
        out.extend_from_slice(&41u16.to_le_bytes());
        out.push(2);
        out.extend_from_slice(&[HASH_CRC32, 4]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out.extend_from_slice(&[HASH_SHA256, 32]);
    out.extend_from_slice(&sha);
    out.extend_from_slice(crypt.unwrap_or_default());
    out.extend_from_slice(&tensor.nbytes.to_le_bytes());
    let len = out.len() as u64;
    out[..8].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// A tensor's sealed chunks as its crypt info records them: the chunk size, the first
/// nonce and one MAC per chunk.
pub type SealedChunks<'a> = (u64, &'a [u8; 24], &'a [[u8; 16]]);

/// A crypt-info block (§8.1 of the format notes) as tensorizer writes it: the key
/// derivation chunk where the key comes from a passphrase, then the XSalsa20-Poly1305
/// chunk (chunk size, first nonce, MACs) for a tensor with data; no chunks for one
/// without.
pub fn encode_crypt_info(kdf: Option<&Kdf>, cipher: Option<SealedChunks<'_>>) -> Vec<u8> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    if let (Some(kdf), Some(_)) = (kdf, cipher) {
        let mut c = Vec::with_capacity(42);
        c.extend_from_slice(&1u16.to_le_bytes()); // key derivation
        c.extend_from_slice(&1u16.to_le_bytes()); // pwhash
        c.extend_from_slice(&kdf.opslimit.to_le_bytes());
        c.extend_from_slice(&kdf.memlimit.to_le_bytes());
        c.extend_from_slice(&ALG_ARGON2ID13.to_le_bytes());
        c.extend_from_slice(&16u16.to_le_bytes());
        c.extend_from_slice(&kdf.salt);
        chunks.push(c);
    }
    if let Some((chunk_size, nonce, macs)) = cipher {
        let mut c = Vec::with_capacity(42 + 16 * macs.len());
        c.extend_from_slice(&2u16.to_le_bytes()); // XSalsa20-Poly1305, parallel
        c.extend_from_slice(&chunk_size.to_le_bytes());
        c.extend_from_slice(nonce);
        c.extend_from_slice(&(macs.len() as u64).to_le_bytes());
        for mac in macs {
            c.extend_from_slice(mac);
        }
        chunks.push(c);
    }
    let body_len: usize = 2 + chunks.iter().map(|c| 8 + c.len()).sum::<usize>();
    let mut out = Vec::with_capacity(8 + body_len);
    out.extend_from_slice(&(body_len as u64).to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u16).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend_from_slice(&c);
    }
    out
}

/// The metadata entry of one tensor (version 1/2 layout).
pub fn encode_entry(
    tensor: &TensorInfo,
    raw_name: &[u8],
    header_offset: u64,
    header_len: u64,
) -> Vec<u8> {
    let (dtype, _) = dtype_string(tensor.dtype);
    let mut out = Vec::with_capacity(40 + raw_name.len() + 4 * tensor.shape.len());
    out.extend_from_slice(&(raw_name.len() as u16).to_le_bytes());
    out.extend_from_slice(raw_name);
    out.push(role_code(tensor.role));
    out.push(dtype.len() as u8);
    out.extend_from_slice(dtype);
    out.push(tensor.shape.len() as u8);
    for &dim in &tensor.shape {
        out.extend_from_slice(&(dim as u32).to_le_bytes());
    }
    out.extend_from_slice(&header_offset.to_le_bytes());
    out.extend_from_slice(&(header_offset + header_len).to_le_bytes());
    out.extend_from_slice(&tensor.nbytes.to_le_bytes());
    out
}

/// The name bytes tensorizer stores for `tensor`: 0x1E + its path where it has one,
/// else its name.
pub fn raw_name(tensor: &TensorInfo) -> Vec<u8> {
    match &tensor.path {
        Some(path) => {
            let mut raw = vec![PATH_MARK];
            raw.extend_from_slice(path.as_bytes());
            raw
        }
        None => tensor.name.as_bytes().to_vec(),
    }
}

/// The 73-byte file header.
pub fn encode_file_header(version: u32, data_bytes: u64, count: u64, metadata_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER_LEN as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0; 32]);
    out.extend_from_slice(&data_bytes.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&metadata_len.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_round_trip() {
        for &d in DType::ALL {
            let (text, _) = dtype_string(d);
            assert_eq!(parse_dtype(text), Ok(d), "{d}");
        }
        assert!(parse_dtype(b"<V2\0torch.bfloat16\0x").is_err());
        assert!(parse_dtype(b"<V4\0torch.bfloat16").is_err());
        assert!(parse_dtype(b"|V1\0torch.uint4")
            .unwrap_err()
            .contains("not know"));
        assert!(parse_dtype(b">f4").unwrap_err().contains("big-endian"));
        assert!(parse_dtype(b"").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(parse_name(b"a.b").unwrap(), ("a.b".into(), None));
        let (flat, path) = parse_name(b"\x1e[\"model\",\"layers\",0,\"w\"]").unwrap();
        assert_eq!(flat, "model.layers.0.w");
        assert_eq!(path.as_deref(), Some("[\"model\",\"layers\",0,\"w\"]"));
        for bad in [
            &b""[..],
            b"\x1e",
            b"\x1e[]",
            b"\x1e{}",
            b"\x1e[-1]",
            b"\x1e[1.5]",
            b"\xff",
        ] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }
}
