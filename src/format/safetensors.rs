//! Hugging Face safetensors: an 8-byte little-endian header length, a JSON header, then
//! the data. Validated the way the safetensors library validates it: the header size
//! limit, known dtypes, shapes matching the byte ranges, and byte ranges that cover the
//! data exactly, in order, without gaps or overlaps.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Checksum, Format, Index, Name, Shape, TensorInfo};
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
        "F8_E4M3FNUZ" => (DType::F8E4M3FNUZ, 1),
        "F8_E5M2FNUZ" => (DType::F8E5M2FNUZ, 1),
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
    let mut header = Vec::new();
    header.try_reserve_exact(header_len as usize).map_err(|_| {
        fail(
            0,
            format!("cannot allocate the {header_len}-byte header: out of memory"),
        )
    })?;
    header.resize(header_len as usize, 0);
    read_exact(source, 8, &mut header)?;
    // Parsed straight into what plaid keeps, counting as it goes (never a generic JSON
    // tree, which costs many times the header): a hostile header costs a small multiple of
    // its size, within the limits below.
    let parsed = parse_header(&header).map_err(|e| {
        let kind = if e.is_syntax() || e.is_eof() {
            "the header is not valid JSON: "
        } else {
            "the header is not a valid safetensors header: "
        };
        fail(8, format!("{kind}{e}"))
    })?;
    drop(header);
    refuse_duplicates(&parsed.tensors).map_err(|detail| fail(8, detail))?;

    let metadata = parsed.metadata;
    let mut tensors: Vec<(u64, u64, TensorInfo)> = Vec::new();
    tensors
        .try_reserve_exact(parsed.tensors.len())
        .map_err(|_| fail(8, "cannot allocate the tensor list: out of memory".into()))?;
    for raw in parsed.tensors {
        let RawTensor {
            name,
            dtype: dtype_name,
            shape,
            offsets: (begin, end),
        } = raw;
        let bad = |what: &str| fail(8, format!("tensor '{name}': {what}"));
        let (dtype, per_unit) = dtype(&dtype_name).ok_or_else(|| {
            Error::Unsupported(format!(
                "{file}: tensor '{name}' has dtype {dtype_name}, which plaid cannot represent"
            ))
        })?;
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
                encryption: None,
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

/// Refuse a name given to two tensors (found by sorting positions, not with a set of
/// copied names: an index of many small entries stays a small multiple of its header).
fn refuse_duplicates(tensors: &[RawTensor]) -> std::result::Result<(), String> {
    let mut order: Vec<u32> = Vec::new();
    order
        .try_reserve_exact(tensors.len())
        .map_err(|_| "no memory to compare the tensor names".to_string())?;
    // At most MAX_TENSORS, checked while parsing.
    order.extend(0..tensors.len() as u32);
    order.sort_unstable_by(|&a, &b| tensors[a as usize].name.cmp(&tensors[b as usize].name));
    match order
        .windows(2)
        .find(|pair| tensors[pair[0] as usize].name == tensors[pair[1] as usize].name)
    {
        Some(pair) => Err(format!(
            "the header is not a valid safetensors header: tensor '{}' appears twice",
            tensors[pair[0] as usize].name
        )),
        None => Ok(()),
    }
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
    // Parsed straight into its maps (no generic JSON tree): a small multiple of the file.
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let (map, metadata) = de::Deserializer::deserialize_map(&mut parser, ShardIndexVisitor)
        .and_then(|parsed| parser.end().map(|()| parsed))
        .map_err(|e| fail(format!("the shard index is not valid: {e}")))?;
    let map = map.ok_or_else(|| fail("the shard index has no weight_map object".into()))?;
    for (tensor, shard) in &map {
        if shard.is_empty() || shard.contains(['/', '\\', '\0']) || shard == "." || shard == ".." {
            return Err(fail(format!(
                "weight_map entry '{}' is not a file name in the index's directory",
                tensor.escape_debug()
            )));
        }
    }
    let mut shards: Vec<String> = map.values().cloned().collect();
    shards.sort();
    shards.dedup();
    Ok(ShardIndex {
        shards,
        weight_map: map,
        metadata,
    })
}

/// The parts of a shard index plaid keeps: `weight_map` (tensor to shard file name) and
/// `metadata` (values as text: strings as they are, anything else as its JSON).
type ParsedShardIndex = (Option<BTreeMap<String, String>>, BTreeMap<String, String>);

struct ShardIndexVisitor;

impl<'de> Visitor<'de> for ShardIndexVisitor {
    type Value = ParsedShardIndex;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object with a weight_map")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let (mut weights, mut metadata) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                // Anything given twice is refused: which one a reader keeps would decide
                // which shard it reads a tensor from.
                "weight_map" | "metadata"
                    if (key == "weight_map" && weights.is_some())
                        || (key == "metadata" && metadata.is_some()) =>
                {
                    return Err(de::Error::custom(format!("{key} appears twice")));
                }
                "weight_map" => {
                    let parsed = map.next_value_seed(UniqueMap::<String>::new(
                        "weight_map",
                        "a file name",
                        MAX_TENSORS,
                    ))?;
                    weights = Some(parsed);
                }
                "metadata" => {
                    let raw =
                        map.next_value_seed(UniqueMap::<Box<serde_json::value::RawValue>>::new(
                            "metadata",
                            "JSON",
                            MAX_METADATA_ENTRIES,
                        ))?;
                    let metadata = metadata.insert(BTreeMap::new());
                    for (k, v) in raw {
                        let text = serde_json::from_str::<String>(v.get())
                            .unwrap_or_else(|_| v.get().trim().to_owned());
                        metadata.insert(k, text);
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((weights, metadata.unwrap_or_default()))
    }
}

/// A JSON object of at most `most` keys, each once, parsed into a map: `__metadata__`
/// (strings), `weight_map` (file names), an index's `metadata` (any JSON, kept as text).
struct UniqueMap<V> {
    what: &'static str,
    /// What each value must be, for the message.
    expected: &'static str,
    most: usize,
    value: std::marker::PhantomData<V>,
}

impl<V> UniqueMap<V> {
    fn new(what: &'static str, expected: &'static str, most: usize) -> Self {
        UniqueMap {
            what,
            expected,
            most,
            value: std::marker::PhantomData,
        }
    }
}

impl<'de, V: de::Deserialize<'de>> DeserializeSeed<'de> for UniqueMap<V> {
    type Value = BTreeMap<String, V>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, V: de::Deserialize<'de>> Visitor<'de> for UniqueMap<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to be an object", self.what)
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let what = self.what;
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.len() >= self.most {
                return Err(de::Error::custom(format!(
                    "{what} has more than {} entries, plaid's limit",
                    self.most
                )));
            }
            let value: V = map.next_value().map_err(|e| {
                de::Error::custom(format!(
                    "{what} entry '{}' is not {} ({e})",
                    key.escape_debug(),
                    self.expected
                ))
            })?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{what} names '{}' twice",
                    key.escape_debug()
                )));
            }
            out.insert(key, value);
        }
        Ok(out)
    }
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
            match index.weight_map.get(t.name.as_str()) {
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
            seen.insert(t.name.to_string());
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

/// Most tensors a safetensors header may declare (as plaid's own format).
pub const MAX_TENSORS: usize = 1 << 20;
/// Most dimensions a safetensors tensor may have (as plaid's own format).
pub const MAX_RANK: usize = 64;
/// Most `__metadata__` entries.
pub const MAX_METADATA_ENTRIES: usize = 1 << 16;

/// One tensor entry of a header, as written.
/// Short names, dtypes and shapes are held inline: no allocation of their own.
struct RawTensor {
    name: Name,
    dtype: Name,
    shape: Shape,
    offsets: (u64, u64),
}

/// A header, as written.
struct RawHeader {
    tensors: Vec<RawTensor>,
    metadata: BTreeMap<String, String>,
}

/// Parse a header's JSON into its entries, refusing duplicate names and what exceeds the
/// limits as soon as it is seen.
fn parse_header(bytes: &[u8]) -> std::result::Result<RawHeader, serde_json::Error> {
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let header = de::Deserializer::deserialize_map(&mut parser, HeaderVisitor)?;
    parser.end()?;
    Ok(header)
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the header to be a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
        let mut tensors: Vec<RawTensor> = Vec::new();
        let mut metadata = None;
        while let Some(name) = map.next_key::<String>()? {
            if name == "__metadata__" {
                if metadata.is_some() {
                    return Err(de::Error::custom("__metadata__ appears twice"));
                }
                metadata = Some(map.next_value_seed(UniqueMap::<String>::new(
                    "__metadata__",
                    "a string",
                    MAX_METADATA_ENTRIES,
                ))?);
                continue;
            }
            if tensors.len() >= MAX_TENSORS {
                return Err(de::Error::custom(format!(
                    "more than {MAX_TENSORS} tensors, plaid's limit"
                )));
            }
            let tensor = map.next_value_seed(TensorSeed { name: name.into() })?;
            tensors.push(tensor);
        }
        Ok(RawHeader {
            tensors,
            metadata: metadata.unwrap_or_default(),
        })
    }
}

/// One tensor's entry: `dtype`, `shape`, `data_offsets` (other fields are ignored).
struct TensorSeed {
    name: Name,
}

impl<'de> DeserializeSeed<'de> for TensorSeed {
    type Value = RawTensor;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<RawTensor, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TensorSeed {
    type Value = RawTensor;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tensor '{}' to be an object", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawTensor, A::Error> {
        let name = self.name;
        let bad = |what: &str| de::Error::custom(format!("tensor '{name}': {what}"));
        let (mut dtype, mut shape, mut offsets) = (None, None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                // A field given twice is refused, as the safetensors library refuses it:
                // which of the two a reader keeps would decide which bytes it reads.
                "dtype" | "shape" | "data_offsets"
                    if match field.as_str() {
                        "dtype" => dtype.is_some(),
                        "shape" => shape.is_some(),
                        _ => offsets.is_some(),
                    } =>
                {
                    return Err(bad(&format!("{field} appears twice")));
                }
                "dtype" => {
                    let value: String = map
                        .next_value()
                        .map_err(|_| bad("the dtype is not a string"))?;
                    dtype = Some(Name::from(value));
                }
                "shape" => shape = Some(map.next_value_seed(ShapeSeed { name: &name })?),
                "data_offsets" => {
                    let pair: Shape = map.next_value_seed(NumbersSeed {
                        name: &name,
                        what: "data_offsets",
                        most: 2,
                    })?;
                    if pair.len() != 2 {
                        return Err(bad("data_offsets is not a pair"));
                    }
                    offsets = Some((pair[0], pair[1]));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RawTensor {
            dtype: dtype.ok_or_else(|| bad("no dtype string"))?,
            shape: shape.ok_or_else(|| bad("no shape array"))?,
            offsets: offsets.ok_or_else(|| bad("data_offsets is not a pair"))?,
            name,
        })
    }
}

/// A shape: at most [`MAX_RANK`] non-negative integers.
struct ShapeSeed<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Shape, D::Error> {
        NumbersSeed {
            name: self.name,
            what: "the shape (a dimension)",
            most: MAX_RANK,
        }
        .deserialize(d)
    }
}

/// An array of at most `most` non-negative integers.
struct NumbersSeed<'a> {
    name: &'a str,
    what: &'static str,
    most: usize,
}

impl<'de> DeserializeSeed<'de> for NumbersSeed<'_> {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Shape, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for NumbersSeed<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tensor '{}': {} to be an array of non-negative integers",
            self.name, self.what
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Shape, A::Error> {
        let mut out = Shape::new();
        loop {
            let next = seq.next_element::<u64>().map_err(|_| {
                de::Error::custom(format!(
                    "tensor '{}': a value of {} is not a non-negative integer",
                    self.name, self.what
                ))
            })?;
            let Some(value) = next else { break };
            if out.len() >= self.most {
                return Err(de::Error::custom(format!(
                    "tensor '{}': {} has more than {} values",
                    self.name, self.what, self.most
                )));
            }
            out.push(value);
        }
        Ok(out)
    }
}
