//! Converting between formats. The source's tensors are read through zero-copy views of
//! its mapping (verified as per its read options), so a conversion holds no copy of the
//! model in memory beyond the page cache; the output is written under a temporary name,
//! read back and compared byte for byte, and only then renamed into place.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::deserializer::Deserializer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::options::{ReadOptions, WriteOptions};
use crate::serializer::{parent_dir, sync_parent, Serializer};

/// The safetensors name of `dtype`, and how many stored values one plaid element holds
/// (2 for packed 4-bit floats).
fn safetensors_dtype(dtype: DType) -> Option<(&'static str, u64)> {
    Some(match dtype {
        DType::Bool => ("BOOL", 1),
        DType::U8 => ("U8", 1),
        DType::I8 => ("I8", 1),
        DType::I16 => ("I16", 1),
        DType::U16 => ("U16", 1),
        DType::I32 => ("I32", 1),
        DType::U32 => ("U32", 1),
        DType::I64 => ("I64", 1),
        DType::U64 => ("U64", 1),
        DType::F16 => ("F16", 1),
        DType::BF16 => ("BF16", 1),
        DType::F32 => ("F32", 1),
        DType::F64 => ("F64", 1),
        DType::C64 => ("C64", 1),
        DType::F8E4M3FN => ("F8_E4M3", 1),
        DType::F8E5M2 => ("F8_E5M2", 1),
        DType::F8E8M0FNU => ("F8_E8M0", 1),
        DType::F4E2M1FNx2 => ("F4", 2),
        _ => return None,
    })
}

/// Write every tensor and the metadata of `source` as a plaid file at `out`, calling
/// `progress(bytes_written, total)` as it goes, then check the result.
pub fn to_plaid(
    source: &Deserializer,
    out: &Path,
    options: WriteOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    // Written beside the target under a temporary name, checked, then renamed into place:
    // a conversion that fails its check leaves the target as it was.
    let staged = staging(out)?;
    let mut writer = Serializer::create(&staged, options)?;
    for (i, t) in source.tensors().iter().enumerate() {
        writer.add_tensor(&t.name, t.dtype, &t.shape, source.view(i)?)?;
    }
    for (key, value) in source.metadata() {
        writer.set_metadata(key, value)?;
    }
    writer.finish_with_progress(progress)?;
    check(source, &staged)?;
    publish(staged, out)
}

/// A temporary path beside `out` (removed when dropped, unless published).
fn staging(out: &Path) -> Result<tempfile::TempPath> {
    let dir = parent_dir(out);
    tempfile::Builder::new()
        .prefix(".plaid-convert.")
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map(tempfile::NamedTempFile::into_temp_path)
        .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))
}

/// Rename a checked file into place and make the rename durable.
fn publish(staged: tempfile::TempPath, out: &Path) -> Result<()> {
    let target = out.display().to_string();
    staged
        .persist(out)
        .map_err(|e| Error::io(format!("writing {target}: renaming into place"), e.error))?;
    sync_parent(out).map_err(|e| Error::io(format!("writing {target}: fsync of the directory"), e))
}

/// Write every tensor and the metadata of `source` as a safetensors file at `out`
/// (`__metadata__` holding the metadata), atomically, then check the result. Tensors
/// of dtypes safetensors cannot hold are refused before anything is written.
pub fn to_safetensors(
    source: &Deserializer,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut header = Map::new();
    if !source.metadata().is_empty() {
        let metadata: Map<String, Value> = source
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(metadata));
    }
    let mut at = 0u64;
    for t in source.tensors() {
        let (name, per_unit) = safetensors_dtype(t.dtype).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor '{}' has dtype {}, which safetensors cannot hold",
                source.name(),
                t.name,
                t.dtype
            ))
        })?;
        let mut shape = t.shape.clone();
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
        if t.name == "__metadata__" {
            return Err(Error::Unsupported(format!(
                "{}: a tensor named '__metadata__' cannot be stored in safetensors",
                source.name()
            )));
        }
        header.insert(
            t.name.clone(),
            json!({"dtype": name, "shape": shape, "data_offsets": [at, at + t.nbytes]}),
        );
        at += t.nbytes;
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).map_err(Error::invalid)?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let target = out.display().to_string();
    let fail = |what: &str, e: std::io::Error| Error::io(format!("writing {target}: {what}"), e);
    let staged = staging(out)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&staged)
        .map_err(|e| fail("opening the temporary file", e))?;
    {
        let mut w = std::io::BufWriter::with_capacity(8 << 20, &file);
        w.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|()| w.write_all(&text))
            .map_err(|e| fail("header", e))?;
        let mut done = 0;
        for (i, t) in source.tensors().iter().enumerate() {
            w.write_all(source.view(i)?)
                .map_err(|e| fail(&format!("tensor '{}'", t.name), e))?;
            done += t.nbytes;
            progress(done, at);
        }
        w.flush().map_err(|e| fail("flush", e))?;
    }
    file.sync_all().map_err(|e| fail("fsync", e))?;
    drop(file);
    check(source, &staged)?;
    publish(staged, out)
}

/// Open the written file (verifying it, where it has checksums) and compare every tensor
/// and the metadata with the source.
fn check(source: &Deserializer, out: &Path) -> Result<()> {
    let written = Deserializer::open(out, ReadOptions::default())?;
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
    if written.metadata() != source.metadata() {
        return Err(differ("metadata".into()));
    }
    for (i, t) in source.tensors().iter().enumerate() {
        let j = written.find(&t.name)?;
        let w = &written.tensors()[j];
        if (w.dtype, &w.shape) != (t.dtype, &t.shape) || written.view(j)? != source.view(i)? {
            return Err(differ(format!("tensor '{}'", t.name)));
        }
    }
    Ok(())
}
