//! Converting between formats. The source's tensors are read through zero-copy views of
//! its mapping (verified as per its read options), so a conversion holds no copy of the
//! model in memory beyond the page cache; the output is written under a temporary name,
//! read back and compared byte for byte, and only then renamed into place.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::deserializer::Deserializer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fs::{parent_dir, sync_parent};
use crate::options::{ReadOptions, WriteOptions};
use crate::serializer::Serializer;

/// The safetensors name of `dtype`, how many stored values one plaid element holds (2 for
/// packed 4-bit floats), and its rank in safetensors' dtype order (a file's tensors are
/// laid out by rank, highest first, then by name, as safetensors lays them out).
fn safetensors_dtype(dtype: DType) -> Option<(&'static str, u64, u8)> {
    Some(match dtype {
        DType::Bool => ("BOOL", 1, 0),
        DType::F4E2M1FNx2 => ("F4", 2, 1),
        DType::U8 => ("U8", 1, 4),
        DType::I8 => ("I8", 1, 5),
        DType::F8E5M2 => ("F8_E5M2", 1, 6),
        DType::F8E4M3FN => ("F8_E4M3", 1, 7),
        DType::F8E8M0FNU => ("F8_E8M0", 1, 8),
        DType::F8E4M3FNUZ => ("F8_E4M3FNUZ", 1, 9),
        DType::F8E5M2FNUZ => ("F8_E5M2FNUZ", 1, 10),
        DType::I16 => ("I16", 1, 11),
        DType::U16 => ("U16", 1, 12),
        DType::F16 => ("F16", 1, 13),
        DType::BF16 => ("BF16", 1, 14),
        DType::I32 => ("I32", 1, 15),
        DType::U32 => ("U32", 1, 16),
        DType::F32 => ("F32", 1, 17),
        DType::C64 => ("C64", 1, 18),
        DType::F64 => ("F64", 1, 19),
        DType::I64 => ("I64", 1, 20),
        DType::U64 => ("U64", 1, 21),
        _ => return None,
    })
}

/// Bytes read at once from a source whose bytes are not in memory (a URL).
const PIECE: usize = 8 << 20;

/// Write every tensor and the metadata of `source` as a plaid file at `out`, calling
/// `progress(bytes_written, total)` as it goes, then check the result.
pub fn to_plaid(
    source: &Deserializer,
    out: &Path,
    options: WriteOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    // Written beside the target under a temporary name, checked, then renamed into place:
    // a conversion that fails its check leaves the target as it was. An object store
    // target is uploaded whole, then checked, and deleted if the check fails.
    let storage = options.get_storage().clone();
    // The written file is checked with the key it was encrypted with, if any.
    let secret = options.secret.clone();
    let staged = staging(out)?;
    let mut writer = Serializer::create(staged.path(), options)?;
    // Encrypted tensors are decrypted as they are read, never lent.
    let mapped =
        source.mappable().is_ok() && source.tensors().iter().all(|t| t.encryption.is_none());
    for (i, t) in source.tensors().iter().enumerate() {
        if mapped {
            writer.add_tensor_with_origin(
                &t.name,
                t.dtype,
                &t.shape,
                source.view(i)?,
                t.origin(),
            )?;
        } else {
            // Read in pieces while the file is written (a URL): memory stays at a piece.
            writer.add_tensor_read(&t.name, t.dtype, &t.shape, t.origin(), source, i)?;
        }
    }
    for (key, value) in source.metadata() {
        writer.set_metadata(key, value)?;
    }
    writer.finish_with_progress(progress)?;
    settle(source, staged, out, true, &storage, &secret)
}

/// Where a converted file is written before it is checked.
enum Staged {
    /// A temporary file beside the target, removed when dropped, locked while open (a
    /// killed conversion's is removed by the next one).
    Local(tempfile::NamedTempFile),
    /// The target URL itself (uploads appear whole or not at all).
    Remote(std::path::PathBuf),
}

impl Staged {
    fn path(&self) -> &Path {
        match self {
            Staged::Local(file) => file.path(),
            Staged::Remote(url) => url,
        }
    }
}

/// Check what was written against `source`, then put it in place (a local file) or, where
/// the check fails, remove it (an object already uploaded).
fn settle(
    source: &Deserializer,
    staged: Staged,
    out: &Path,
    with_metadata: bool,
    storage: &crate::options::StorageOptions,
    secret: &crate::crypto::Secret,
) -> Result<()> {
    let checked = check(source, staged.path(), with_metadata, storage, secret);
    match staged {
        Staged::Local(path) => {
            checked?;
            publish(path, out)
        }
        Staged::Remote(url) => {
            // Uploaded whole already: a copy that fails its check is removed.
            #[cfg(feature = "remote")]
            if checked.is_err() {
                let _ = crate::remote::delete(&url.to_string_lossy(), storage);
            }
            #[cfg(not(feature = "remote"))]
            let _ = (url, storage);
            checked
        }
    }
}

/// A temporary path beside `out` (removed when dropped, unless published); `out` itself
/// for a URL.
fn staging(out: &Path) -> Result<Staged> {
    if crate::url::is_url(&out.to_string_lossy()) {
        return Ok(Staged::Remote(out.to_path_buf()));
    }
    crate::fs::check_target(out)?;
    let dir = parent_dir(out);
    // What killed conversions left: their staged files, and the serializer's temporaries
    // beside those (named after them).
    crate::fs::remove_stale_temporaries(dir, ".plaid-convert.");
    crate::fs::remove_stale_temporaries(dir, "..plaid-convert.");
    crate::fs::locked_temporary(dir, ".plaid-convert.").map(Staged::Local)
}

/// Rename a checked file into place and make the rename durable.
fn publish(staged: tempfile::NamedTempFile, out: &Path) -> Result<()> {
    crate::fs::check_target(out)?;
    let target = out.display().to_string();
    staged
        .persist(out)
        .map_err(|e| Error::io(format!("writing {target}: renaming into place"), e.error))?;
    sync_parent(out).map_err(|e| Error::io(format!("writing {target}: fsync of the directory"), e))
}

/// Write every tensor and the metadata of `source` as a safetensors file at `out`
/// (`__metadata__` holding the metadata), atomically, then check the result. The bytes
/// are those safetensors writes for the same tensors: tensors laid out by dtype (widest
/// first, in safetensors' dtype order) then by name, the header's entries in that order
/// with their fields as safetensors orders them (`dtype`, `shape`, `data_offsets`), the
/// metadata first (its keys sorted), and the header padded with spaces to a multiple of
/// 8 bytes. Tensors of dtypes safetensors cannot hold are refused before anything is
/// written.
pub fn to_safetensors(
    source: &Deserializer,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    // A JSON string as serde_json (which safetensors uses) writes it.
    let json = |v: &str| Value::String(v.to_owned()).to_string();
    let mut text = String::from("{");
    if !source.metadata().is_empty() {
        let mut entries: Vec<(&String, &String)> = source.metadata().iter().collect();
        entries.sort();
        text.push_str("\"__metadata__\":{");
        for (k, (key, value)) in entries.into_iter().enumerate() {
            if k > 0 {
                text.push(',');
            }
            text.push_str(&json(key));
            text.push(':');
            text.push_str(&json(value));
        }
        text.push('}');
    }
    let mut order = Vec::with_capacity(source.tensors().len());
    for (i, t) in source.tensors().iter().enumerate() {
        let (dtype, per_unit, rank) = safetensors_dtype(t.dtype).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor '{}' has dtype {}, which safetensors cannot hold",
                source.name(),
                t.name,
                t.dtype
            ))
        })?;
        if t.name == "__metadata__" {
            return Err(Error::Unsupported(format!(
                "{}: a tensor named '__metadata__' cannot be stored in safetensors",
                source.name()
            )));
        }
        order.push((rank, i, dtype, per_unit));
    }
    let tensors = source.tensors();
    order.sort_by(|a, b| {
        b.0.cmp(&a.0).then_with(|| {
            tensors[a.1]
                .name
                .as_bytes()
                .cmp(tensors[b.1].name.as_bytes())
        })
    });
    let mut at = 0u64;
    for &(_, i, dtype, per_unit) in &order {
        let t = &tensors[i];
        let mut shape = t.shape.to_vec();
        if per_unit > 1 {
            let widened = shape.last().and_then(|last| last.checked_mul(per_unit));
            match (shape.last_mut(), widened) {
                (Some(last), Some(w)) => *last = w,
                _ => {
                    return Err(Error::Unsupported(format!(
                        "{}: tensor '{}' ({} {:?}) has no safetensors shape",
                        source.name(),
                        t.name,
                        t.dtype,
                        t.shape
                    )))
                }
            }
        }
        if text.len() > 1 {
            text.push(',');
        }
        let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
        text.push_str(&format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{at},{}]}}",
            json(&t.name),
            shape.join(","),
            at + t.nbytes
        ));
        at += t.nbytes;
    }
    text.push('}');
    let mut text = text.into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let staged = write_staged(out, &mut |w, fail| {
        w.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|()| w.write_all(&text))
            .map_err(|e| fail("header", e))?;
        let mut done = 0;
        for &(_, i, _, _) in &order {
            let t = &tensors[i];
            source.for_each_piece(i, PIECE, &mut |piece| {
                w.write_all(piece)
                    .map_err(|e| fail(&format!("tensor '{}'", t.name), e))
            })?;
            done += t.nbytes;
            progress(done, at);
        }
        Ok(())
    })?;
    settle(
        source,
        staged,
        out,
        true,
        &Default::default(),
        &Default::default(),
    )
}

/// Write every tensor of `source` as a tensorizer `.tensors` file at `out`: format
/// version 1, or 2 where a dtype needs it (bfloat16, complex32, float8, float4), which
/// every tensorizer release since 2.0 reads (version 1 files even 1.x). Each tensor gets
/// tensorizer's CRC32 and SHA-256 (computed in parallel), its role (a state-dict entry
/// where the source does not say), module index and structured name (from its path).
/// tensorizer files hold no metadata: the source's is not carried over. Written
/// atomically, read back, verified and compared.
pub fn to_tensorizer(
    source: &Deserializer,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    to_tensorizer_with(source, out, &WriteOptions::default(), progress)
}

/// Bytes per sealed chunk of an encrypted tensorizer file: tensorizer's default (2 MiB).
const TENSORIZER_CHUNK: u64 = 2 << 20;

/// [`to_tensorizer`], encrypted where `options` hold a key or a passphrase: format version
/// 3, each tensor's data sealed as tensorizer seals it (XSalsa20-Poly1305 in chunks of
/// 2 MiB, a fresh random nonce per tensor, the key raw or derived by Argon2id with a fresh
/// salt and the options' limits), so that tensorizer reads it with the same key or
/// passphrase. The written file is checked with that key.
pub fn to_tensorizer_with(
    source: &Deserializer,
    out: &Path,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    use crate::crypto::SecretboxSealer;
    use crate::format::tensorizer as tz;
    let tensors = source.tensors();
    let raw_names: Vec<Vec<u8>> = tensors.iter().map(tz::raw_name).collect();
    let (passes, memory) = options.kdf()?;
    let master = options.secret.master(passes, memory)?;
    let encrypted = master.is_some();
    let version = if encrypted {
        3
    } else if tensors.iter().any(|t| tz::dtype_string(t.dtype).1) {
        2
    } else {
        1
    };
    // Each tensor with data gets its own nonce; the crypt info's size is known before its
    // MACs are.
    let mut sealers = Vec::with_capacity(tensors.len());
    for t in tensors {
        sealers.push(match &master {
            Some((key, _)) if t.nbytes > 0 => Some(SecretboxSealer::new(key, TENSORIZER_CHUNK)?),
            _ => None,
        });
    }
    let kdf = master.as_ref().and_then(|(_, kdf)| kdf.as_ref());
    let crypt_info = |i: usize, macs: &[[u8; 16]]| -> Option<Vec<u8>> {
        encrypted.then(|| {
            let cipher = sealers[i].as_ref().map(|s| (s.chunk_size, &s.nonce, macs));
            tz::encode_crypt_info(kdf, cipher)
        })
    };
    let chunks = |t: &crate::TensorInfo| t.nbytes.div_ceil(TENSORIZER_CHUNK) as usize;
    // Lay out: the metadata block (tensorizer's 256 KiB, or larger if the entries need
    // it; every reader accepts any size), then each header followed by its data. The
    // headers hashed leave the crypt info out.
    let mut headers = Vec::with_capacity(tensors.len());
    let mut header_lens = Vec::with_capacity(tensors.len());
    for (i, (t, raw)) in tensors.iter().zip(&raw_names).enumerate() {
        // The whole header's length is hashed, without the crypt info's bytes.
        let placeholder = crypt_info(i, &vec![[0u8; 16]; chunks(t)]);
        let mut hashed = tz::encode_header(t, raw, None, placeholder.as_deref())?;
        header_lens.push(hashed.len() as u64);
        let crypt_len = placeholder.map_or(0, |c| c.len());
        let end = hashed.len() - 8;
        hashed.drain(end - crypt_len..end);
        headers.push(hashed);
    }
    let entries_len: u64 = tensors
        .iter()
        .zip(&raw_names)
        .map(|(t, raw)| tz::encode_entry(t, raw, 0, 0).len() as u64)
        .sum();
    let metadata_len = entries_len.max(tz::STANDARD_METADATA_LEN);
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut cursor = tz::FILE_HEADER_LEN + metadata_len;
    for (t, len) in tensors.iter().zip(&header_lens) {
        offsets.push(cursor);
        cursor += len + t.nbytes;
    }
    let total = cursor + 8;

    // Hashes: CRC32 (not of encrypted data: tensorizer keeps none) and SHA-256 of each
    // header (hash values zeroed, crypt info left out) and its plaintext, with the MACs of
    // its sealed chunks, one tensor per task, largest first, on every core.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].nbytes));
    type Sums = (u32, [u8; 32], Vec<[u8; 16]>);
    let sums = parking_lot::Mutex::new(vec![(0u32, [0u8; 32], Vec::new()); tensors.len()]);
    let threads = crate::pool::threads_or_cores(0).min(tensors.len());
    crate::pool::for_each(order.into_iter(), threads, |i| {
        let sealer = sealers[i].as_ref();
        let mut h = crate::format::checksum::WholeHasher::with(sealer.is_none(), true);
        h.update(&headers[i]);
        let mut macs = Vec::new();
        let mut scratch = Vec::new();
        let mut at = 0u64;
        source.for_each_piece(i, PIECE, &mut |piece| {
            h.update(piece);
            if let Some(sealer) = sealer {
                for part in piece.chunks(PIECE) {
                    scratch.clear();
                    scratch.extend_from_slice(part);
                    macs.extend(sealer.seal(at, &mut scratch));
                    at += part.len() as u64;
                }
            }
            Ok(())
        })?;
        let (crc, sha) = h.finish();
        let entry: Sums = (crc.unwrap_or(0), sha.unwrap_or([0; 32]), macs);
        sums.lock()[i] = entry;
        Ok(())
    })?;
    let sums = sums.into_inner();

    let staged = write_staged(out, &mut |w, fail| {
        let data_bytes: u64 = tensors.iter().map(|t| t.nbytes).sum();
        let mut head =
            tz::encode_file_header(version, data_bytes, tensors.len() as u64, metadata_len);
        for ((t, raw), (&offset, len)) in tensors
            .iter()
            .zip(&raw_names)
            .zip(offsets.iter().zip(&header_lens))
        {
            head.extend_from_slice(&tz::encode_entry(t, raw, offset, *len));
        }
        head.resize((tz::FILE_HEADER_LEN + metadata_len) as usize, 0);
        w.write_all(&head).map_err(|e| fail("header", e))?;
        let mut done = 0;
        let mut scratch = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let (crc, sha, macs) = &sums[i];
            let crypt = crypt_info(i, macs);
            let header = tz::encode_header(t, &raw_names[i], Some((*crc, *sha)), crypt.as_deref())?;
            debug_assert_eq!(header.len() as u64, header_lens[i]);
            let what = || format!("tensor '{}'", t.name);
            w.write_all(&header).map_err(|e| fail(&what(), e))?;
            let mut at = 0u64;
            source.for_each_piece(i, PIECE, &mut |piece| {
                let Some(sealer) = sealers[i].as_ref() else {
                    return w.write_all(piece).map_err(|e| fail(&what(), e));
                };
                // Sealed again, as in the first pass (same key, nonces and chunks).
                for part in piece.chunks(PIECE) {
                    scratch.clear();
                    scratch.extend_from_slice(part);
                    sealer.seal(at, &mut scratch);
                    at += part.len() as u64;
                    w.write_all(&scratch).map_err(|e| fail(&what(), e))?;
                }
                Ok(())
            })?;
            done += t.nbytes;
            progress(done, data_bytes);
        }
        w.write_all(&[0; 8]).map_err(|e| fail("end marker", e))?;
        Ok(())
    })?;
    if let Staged::Local(file) = &staged {
        debug_assert_eq!(
            std::fs::metadata(file.path()).map(|m| m.len()).ok(),
            Some(total)
        );
    }
    settle(
        source,
        staged,
        out,
        false,
        &Default::default(),
        &options.secret,
    )
}

/// Convert `source` to `format` (`"plaid"`, `"safetensors"` or `"tensorizer"`) at `out`
/// with `options`: their key or passphrase encrypts a plaid or tensorizer output;
/// safetensors has no encryption, and asking for it with a key is `InvalidArgument`.
pub fn to_format(
    source: &Deserializer,
    out: &Path,
    format: &str,
    options: WriteOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    match format {
        "plaid" => to_plaid(source, out, options, progress),
        "safetensors" if options.encrypts() => Err(Error::invalid(
            "safetensors files cannot be encrypted: write plaid or tensorizer with a key",
        )),
        "safetensors" => to_safetensors(source, out, progress),
        "tensorizer" => to_tensorizer_with(source, out, &options, progress),
        other => Err(Error::invalid(format!(
            "unknown output format '{other}' (plaid, safetensors or tensorizer)"
        ))),
    }
}

/// Writes a converted file's bytes; the second argument names what failed.
type StagedWrite<'a> =
    dyn FnMut(&mut dyn Write, &dyn Fn(&str, std::io::Error) -> Error) -> Result<()> + 'a;

/// Under a temporary name beside `out`: run `write` on a buffered writer (with `fail` to
/// name what failed), flush and fsync. Returns the temporary path, to check and publish.
fn write_staged(out: &Path, write: &mut StagedWrite<'_>) -> Result<Staged> {
    let target = out.display().to_string();
    let fail = |what: &str, e: std::io::Error| Error::io(format!("writing {target}: {what}"), e);
    let staged = staging(out)?;
    let path = match &staged {
        Staged::Local(file) => file.path(),
        #[cfg(feature = "remote")]
        Staged::Remote(_) => {
            // Uploaded in parts as written; the object appears on finish.
            let upload = crate::remote::Upload::create(&target, &Default::default())?;
            let mut w = std::io::BufWriter::with_capacity(8 << 20, upload);
            write(&mut w, &fail)?;
            let upload = w
                .into_inner()
                .map_err(|e| fail("uploading", e.into_error()))?;
            upload.finish()?;
            return Ok(staged);
        }
        #[cfg(not(feature = "remote"))]
        Staged::Remote(_) => {
            return Err(Error::Unsupported(format!(
                "{target}: this build of plaid writes no URLs (the `remote` feature is off)"
            )))
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| fail("opening the temporary file", e))?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, &file);
    write(&mut w, &fail)?;
    w.flush().map_err(|e| fail("flush", e))?;
    drop(w);
    file.sync_all().map_err(|e| fail("fsync", e))?;
    Ok(staged)
}

/// Open the written file (verifying it, where it has checksums) and compare every tensor
/// (and the metadata, where the format holds it) with the source.
fn check(
    source: &Deserializer,
    out: &Path,
    with_metadata: bool,
    storage: &crate::options::StorageOptions,
    secret: &crate::crypto::Secret,
) -> Result<()> {
    // The file was just written with these limits: whatever they are, it is read back.
    let mut secret = secret.clone();
    secret.set_kdf_limits(
        crate::format::plaid::MAX_KDF_MEMORY,
        crate::format::plaid::MAX_KDF_PASSES,
    )?;
    let options = ReadOptions {
        storage: storage.clone(),
        secret,
        ..Default::default()
    };
    let written = Deserializer::open(out, options)?;
    written.verify()?;
    let differ = |what: String| {
        Error::invalid(format!(
            "{}: the converted file differs from {}: {what}",
            written.name(),
            source.name()
        ))
    };
    if written.tensors().len() != source.tensors().len() {
        return Err(differ("tensor count".into()));
    }
    if with_metadata && written.metadata() != source.metadata() {
        return Err(differ("metadata".into()));
    }
    if source.mappable().is_err() {
        // Compared below from raw reads: verify the source as a whole first.
        source.verify()?;
    }
    for (i, t) in source.tensors().iter().enumerate() {
        let j = written.find(&t.name)?;
        let w = &written.tensors()[j];
        let kept_path = w.path == t.path || written.format() == crate::Format::Safetensors;
        if (w.dtype, &w.shape) != (t.dtype, &t.shape)
            || !kept_path
            || !same_bytes(&written, j, source, i)?
        {
            return Err(differ(format!("tensor '{}'", t.name)));
        }
    }
    Ok(())
}

/// Whether tensor `i` of `a` and tensor `j` of `b` hold the same bytes: compared in place
/// where both files are in memory (verified views), else read raw in pieces (both files
/// verified as a whole before).
fn same_bytes(a: &Deserializer, i: usize, b: &Deserializer, j: usize) -> Result<bool> {
    let clear = a.tensors()[i].encryption.is_none() && b.tensors()[j].encryption.is_none();
    if a.mappable().is_ok() && b.mappable().is_ok() && clear {
        return Ok(a.view(i)? == b.view(j)?);
    }
    let len = a.tensors()[i].nbytes;
    if len != b.tensors()[j].nbytes {
        return Ok(false);
    }
    let size = len.min(PIECE as u64) as usize;
    let (mut x, mut y) = (vec![0u8; size], vec![0u8; size]);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(size as u64) as usize;
        a.read_stored(i, at, &mut x[..n])?;
        b.read_stored(j, at, &mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}
