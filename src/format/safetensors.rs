//! Hugging Face safetensors: an 8-byte little-endian header length, a JSON header, then
//! the data. Validated the way the safetensors library validates it: the header size
//! limit, known dtypes, shapes matching the byte ranges, and byte ranges that cover the
//! data exactly, in order, without gaps or overlaps.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Checksum, Format, Index, TensorInfo};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::{read_exact, Source};

/// Largest header safetensors itself accepts (`MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Whether the first bytes of a file look like safetensors: a header length that fits
/// the file and the limit, followed by the opening brace of a JSON object.
pub fn sniff(prefix: &[u8], file_len: u64) -> bool {
    if prefix.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    (2..=MAX_HEADER_LEN).contains(&n) && n <= file_len.saturating_sub(8) && prefix[8] == b'{'
}

/// A safetensors dtype name as plaid's dtype, and how many elements one stored unit holds
/// (2 for `F4`, which packs two 4-bit values per byte).
fn dtype(name: &str) -> Option<(DType, u64)> {
    Some(match name {
        "BOOL" => (DType::Bool, 1),
        "U8" => (DType::U8, 1),
        "I8" => (DType::I8, 1),
        "I16" => (DType::I16, 1),
        "U16" => (DType::U16, 1),
        "I32" => (DType::I32, 1),
        "U32" => (DType::U32, 1),
        "I64" => (DType::I64, 1),
        "U64" => (DType::U64, 1),
        "F16" => (DType::F16, 1),
        "BF16" => (DType::BF16, 1),
        "F32" => (DType::F32, 1),
        "F64" => (DType::F64, 1),
        "C64" => (DType::C64, 1),
        "F8_E4M3" => (DType::F8E4M3FN, 1),
        "F8_E5M2" => (DType::F8E5M2, 1),
        "F8_E8M0" => (DType::F8E8M0FNU, 1),
        "F4" => (DType::F4E2M1FNx2, 2),
        _ => return None,
    })
}

/// Read and validate a safetensors header.
pub fn read_index(source: &dyn Source) -> Result<Index> {
    let file = source.name();
    let file_len = source.len();
    let fail = |offset: u64, detail: String| Error::format(file, offset, detail);
    if file_len < 8 {
        return Err(fail(
            file_len,
            format!("truncated: {file_len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    read_exact(source, 0, &mut len_bytes)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(fail(
            0,
            // The value is not quoted: for a file that is not safetensors at all these are
            // its first 8 bytes, which messages must not leak.
            format!(
                "the header length (the first 8 bytes) exceeds safetensors' limit of {MAX_HEADER_LEN} bytes"
            ),
        ));
    }
    let data_start = 8 + header_len;
    if data_start > file_len {
        return Err(fail(
            file_len,
            format!("truncated: the header length (the first 8 bytes) runs past the end of the {file_len}-byte file"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    read_exact(source, 8, &mut header)?;
    let json: Value = serde_json::from_slice(&header)
        .map_err(|e| fail(8, format!("the header is not valid JSON: {e}")))?;
    let Value::Object(entries) = json else {
        return Err(fail(8, "the header is not a JSON object".into()));
    };

    let mut metadata = BTreeMap::new();
    let mut tensors: Vec<(u64, u64, TensorInfo)> = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            let Value::Object(pairs) = entry else {
                return Err(fail(8, "__metadata__ is not an object".into()));
            };
            for (key, value) in pairs {
                let Value::String(value) = value else {
                    return Err(fail(
                        8,
                        format!("__metadata__ value of '{key}' is not a string"),
                    ));
                };
                metadata.insert(key, value);
            }
            continue;
        }
        let bad = |what: &str| fail(8, format!("tensor '{name}': {what}"));
        let Value::Object(fields) = entry else {
            return Err(bad("not an object"));
        };
        let dtype_name = fields
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no dtype string"))?;
        let (dtype, per_unit) = dtype(dtype_name).ok_or_else(|| {
            Error::Unsupported(format!(
                "{file}: tensor '{name}' has dtype {dtype_name}, which plaid cannot represent"
            ))
        })?;
        let shape: Vec<u64> = fields
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape array"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad("a dimension is not a non-negative integer"))
            })
            .collect::<Result<_>>()?;
        let offsets = fields
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("data_offsets is not a pair"))?;
        let begin = offsets[0].as_u64().ok_or_else(|| bad("bad data_offsets"))?;
        let end = offsets[1].as_u64().ok_or_else(|| bad("bad data_offsets"))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad("the shape overflows"))?;
        // F4 packs two values per byte: plaid's dtype counts bytes, so the last dimension
        // is halved (and must be even).
        let mut plaid_shape = shape.clone();
        if per_unit > 1 {
            match plaid_shape.last_mut() {
                Some(last) if *last % per_unit == 0 => *last /= per_unit,
                _ => return Err(bad("an F4 tensor's last dimension must be even")),
            }
        }
        let nbytes = (elements / per_unit)
            .checked_mul(dtype.size())
            .ok_or_else(|| bad("the tensor's size overflows"))?;
        if end < begin || end - begin != nbytes {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] hold {} bytes, but {dtype_name} {shape:?} needs {nbytes}",
                end.wrapping_sub(begin)
            )));
        }
        let offset = data_start
            .checked_add(begin)
            .ok_or_else(|| bad("data_offsets overflow"))?;
        tensors.push((
            begin,
            end,
            TensorInfo {
                name,
                dtype,
                shape: plaid_shape,
                nbytes,
                index: 0,
                offset,
                checksum: Checksum::None,
                zero_fill: false,
                role: Default::default(),
                module_index: 0,
                path: None,
            },
        ));
    }
    // Every byte of the data section belongs to exactly one tensor, in order.
    tensors.sort_by_key(|(begin, end, _)| (*begin, *end));
    let mut cursor = 0u64;
    for (begin, end, t) in &tensors {
        if *begin != cursor {
            let what = if *begin < cursor {
                "overlaps the previous tensor"
            } else {
                "leaves a gap after the previous tensor"
            };
            return Err(fail(
                data_start + begin,
                format!("tensor '{}' (data_offsets [{begin}, {end}]) {what}", t.name),
            ));
        }
        cursor = *end;
    }
    let data_len = file_len - data_start;
    if cursor != data_len {
        return Err(fail(
            data_start + cursor.min(data_len),
            if cursor > data_len {
                format!("truncated: the tensors need {cursor} bytes of data but the file holds {data_len}")
            } else {
                format!(
                    "{} bytes after the last tensor belong to none",
                    data_len - cursor
                )
            },
        ));
    }
    let tensors = tensors
        .into_iter()
        .enumerate()
        .map(|(index, (_, _, mut t))| {
            t.index = index;
            t
        })
        .collect();
    Ok(safetensors_index(tensors, metadata, file_len))
}

/// A safetensors index: no version, no alignment.
fn safetensors_index(
    tensors: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
    len: u64,
) -> Index {
    Index {
        format: Format::Safetensors,
        version: 0,
        tensors,
        metadata,
        alignment: 1,
        file_length: len,
    }
}

/// Largest `model.safetensors.index.json` read.
const MAX_INDEX_LEN: u64 = 64 << 20;

/// Whether `prefix` starts a sharded checkpoint's index (`model.safetensors.index.json`):
/// a JSON object, not a safetensors file.
pub fn sniff_sharded(prefix: &[u8], file_len: u64) -> bool {
    let first = prefix.iter().find(|b| !b.is_ascii_whitespace());
    first == Some(&b'{') && file_len <= MAX_INDEX_LEN && !sniff(prefix, file_len)
}

/// The shards of a sharded checkpoint, from its index: the shard file names (in sorted
/// order), the tensor-to-shard map, and the index's own metadata as strings.
pub struct ShardIndex {
    /// Shard file names, relative to the index's directory, each once, sorted.
    pub shards: Vec<String>,
    /// Tensor name to shard file name.
    pub weight_map: BTreeMap<String, String>,
    /// The index's `metadata` entries, numbers written as text.
    pub metadata: BTreeMap<String, String>,
}

/// Parse a sharded checkpoint's index (`name` is the file, for messages).
pub fn parse_shard_index(name: &str, bytes: &[u8]) -> Result<ShardIndex> {
    let fail = |detail: String| Error::format(name, 0, detail);
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| fail(format!("the shard index is not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| fail("the shard index has no weight_map object".into()))?;
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .filter(|s| !s.is_empty() && !s.contains('/') && !s.contains('\\') && *s != "..")
            .ok_or_else(|| {
                fail(format!(
                    "weight_map entry '{tensor}' is not a file name in the index's directory"
                ))
            })?;
        weight_map.insert(tensor.clone(), shard.to_owned());
    }
    let mut shards: Vec<String> = weight_map.values().cloned().collect();
    shards.sort();
    shards.dedup();
    let mut metadata = BTreeMap::new();
    if let Some(Value::Object(pairs)) = json.get("metadata") {
        for (key, value) in pairs {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            metadata.insert(key.clone(), text);
        }
    }
    Ok(ShardIndex {
        shards,
        weight_map,
        metadata,
    })
}

/// Join the indexes of the shards (each read from its own file, `bases[k]` being where
/// shard `k` starts in the sources laid end to end) into one, checking them against the
/// weight map: every tensor in exactly the shard the map names.
pub fn join_shards(
    name: &str,
    index: &ShardIndex,
    shards: Vec<Index>,
    bases: &[u64],
    total_len: u64,
) -> Result<Index> {
    let mut tensors = Vec::new();
    let mut metadata = index.metadata.clone();
    let mut seen = std::collections::HashSet::new();
    for ((shard_name, shard), &base) in index.shards.iter().zip(shards).zip(bases) {
        for (key, value) in shard.metadata {
            metadata.entry(key).or_insert(value);
        }
        for mut t in shard.tensors {
            match index.weight_map.get(&t.name) {
                Some(s) if s == shard_name => {}
                Some(s) => {
                    return Err(Error::format(
                        name,
                        0,
                        format!(
                            "tensor '{}' is in {shard_name} but the weight map says {s}",
                            t.name
                        ),
                    ))
                }
                None => {
                    return Err(Error::format(
                        name,
                        0,
                        format!(
                            "tensor '{}' of {shard_name} is not in the weight map",
                            t.name
                        ),
                    ))
                }
            }
            seen.insert(t.name.clone());
            t.offset += base;
            t.index = tensors.len();
            tensors.push(t);
        }
    }
    if let Some(missing) = index.weight_map.keys().find(|k| !seen.contains(*k)) {
        return Err(Error::format(
            name,
            0,
            format!(
                "tensor '{missing}' is in the weight map but not in {}",
                index.weight_map[missing]
            ),
        ));
    }
    Ok(safetensors_index(tensors, metadata, total_len))
}
