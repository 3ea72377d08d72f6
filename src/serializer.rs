//! Writing a file, atomically: everything goes to a temporary file beside the target,
//! which is synced and renamed over the target only when complete. A URL target
//! (`s3://`, `gs://`, `az://`) is written with a multipart upload that is completed only
//! when the whole file is written, and aborted otherwise.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::crypto::{Sealer, TAG_LEN};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::checksum::{block_count, crc32c};
use crate::format::plaid::{self, check_text, PlannedTensor, MAX_RANK, MAX_TENSORS};
use crate::format::{flatten_path, TensorOrigin};
use crate::fs::{check_target, parent_dir, remove_stale_temporaries, sync_parent, Temporary};
use crate::options::WriteOptions;

/// What a finished write did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub data_bytes: u64,
    /// Length of the file.
    pub file_length: u64,
    /// Time spent computing checksums (on other threads, while the data is written).
    pub checksum_time: Duration,
    /// Time from the start of `finish` until the file was in place.
    pub write_time: Duration,
}

struct PendingTensor<'a> {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: Data<'a>,
    origin: TensorOrigin,
}

/// Where a tensor's bytes are.
enum Data<'a> {
    /// In host memory, borrowed.
    Host(&'a [u8]),
    /// In device memory on a CUDA device, copied out through pinned buffers while writing.
    Cuda { device: i32, address: u64, len: u64 },
    /// Tensor `index` of another open file, read in pieces while writing (a conversion
    /// from a URL).
    Read {
        source: &'a crate::deserializer::Deserializer,
        index: usize,
        len: u64,
    },
}

impl Data<'_> {
    fn len(&self) -> u64 {
        match self {
            Data::Host(bytes) => bytes.len() as u64,
            Data::Cuda { len, .. } | Data::Read { len, .. } => *len,
        }
    }

    fn host(&self) -> &[u8] {
        match self {
            Data::Host(bytes) => bytes,
            Data::Cuda { .. } | Data::Read { .. } => &[],
        }
    }
}

/// Collects tensors (borrowed, not copied) and metadata, then writes them in one go.
///
/// Dropping a serializer without calling [`Serializer::finish`] writes nothing and
/// removes its temporary file; the target path is untouched.
pub struct Serializer<'a> {
    target: PathBuf,
    output: Output,
    options: WriteOptions,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    metadata: BTreeMap<String, String>,
}

/// The file being written: where the bytes go until `finish` puts it in place.
enum Output {
    /// A temporary file beside the target, renamed over it at the end.
    File(Temporary),
    /// An object store upload, completed at the end (boxed: it is large).
    #[cfg(feature = "remote")]
    Remote(Box<crate::remote::Upload>),
}

impl std::fmt::Debug for Serializer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serializer")
            .field("target", &self.target)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl<'a> Serializer<'a> {
    /// Prepare to write `path`. The temporary file is created now, so an unwritable
    /// directory fails here rather than at the end.
    ///
    /// `path` may be a URL of object storage (`s3://bucket/key`, `gs://...`, `az://...`),
    /// configured from the environment and the write options' storage options: the
    /// multipart upload is started now (bad credentials fail here), its parts are sent
    /// while `finish` produces the file, and the object appears only when `finish`
    /// succeeds; dropping the serializer or a failed `finish` aborts the upload.
    pub fn create(path: impl AsRef<Path>, options: WriteOptions) -> Result<Serializer<'a>> {
        let target = path.as_ref().to_path_buf();
        let shown = target.display().to_string();
        if shown.is_empty() {
            return Err(Error::invalid("the path is empty"));
        }
        // Passphrase limits readers refuse are refused now, not after the tensors came.
        options.kdf()?;
        if crate::url::is_url(&shown) {
            #[cfg(feature = "remote")]
            return Ok(Serializer {
                output: Output::Remote(Box::new(crate::remote::Upload::create(
                    &shown,
                    &options.storage,
                )?)),
                target,
                options,
                tensors: Vec::new(),
                names: HashSet::new(),
                metadata: BTreeMap::new(),
            });
            #[cfg(not(feature = "remote"))]
            return Err(Error::Unsupported(format!(
                "{shown}: this build of plaid writes no URLs (the `remote` feature is off)"
            )));
        }
        let names_a_directory = shown.ends_with('/') || target.is_dir();
        let file_name = match target.file_name() {
            Some(name) if !names_a_directory => name,
            _ => {
                let e = std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory");
                return Err(Error::io(format!("creating {shown}"), e));
            }
        };
        check_target(&target)?;
        let dir = parent_dir(&target).to_path_buf();
        // The temporary name adds a dot, a random part and a suffix: keep it within the
        // 255 bytes file systems allow whatever the target's length.
        let mut stem = file_name.to_string_lossy().into_owned();
        while stem.len() > 200 {
            stem.pop();
        }
        let prefix = format!(".{stem}.");
        remove_stale_temporaries(&dir, &prefix);
        let temp = Temporary::new(&dir, &prefix)?;
        Ok(Serializer {
            target,
            output: Output::File(temp),
            options,
            tensors: Vec::new(),
            names: HashSet::new(),
            metadata: BTreeMap::new(),
        })
    }

    /// Add a tensor. `data` is borrowed until [`Serializer::finish`] and must hold exactly
    /// `product(shape) * dtype.size()` bytes.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &'a [u8],
    ) -> Result<()> {
        self.add_tensor_with_origin(name, dtype, shape, data, TensorOrigin::default())
    }

    /// [`Serializer::add_tensor`], recording where the tensor came from (its role, module
    /// index and path, as tensorizer files carry them). A path must be a JSON array of
    /// strings and non-negative integers whose components, joined by dots, are `name`.
    pub fn add_tensor_with_origin(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &'a [u8],
        origin: TensorOrigin,
    ) -> Result<()> {
        self.add(name, dtype, shape, Data::Host(data), origin)
    }

    /// Add tensor `index` of `source`, read in pieces while the file is written (for a
    /// source whose bytes are not in memory, such as a URL): memory stays at one piece.
    pub(crate) fn add_tensor_read(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        origin: TensorOrigin,
        source: &'a crate::deserializer::Deserializer,
        index: usize,
    ) -> Result<()> {
        let len = source
            .tensor(index)
            .map(|t| t.nbytes)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", source.name())))?;
        self.add(
            name,
            dtype,
            shape,
            Data::Read { source, index, len },
            origin,
        )
    }

    /// Add a tensor that lives in device memory: `nbytes` (product(shape) * dtype size)
    /// bytes at `address` on CUDA device `device`, which must stay valid and unchanged
    /// until [`Serializer::finish`]. `finish` copies it to the host through two pinned
    /// buffers while writing, so a model on the GPU is written without staging it first.
    pub fn add_tensor_cuda(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        device: i32,
        address: u64,
    ) -> Result<()> {
        let len = dtype.nbytes(shape).ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{name}': shape {shape:?} overflows 64 bits"
            ))
        })?;
        if address == 0 && len > 0 {
            return Err(Error::invalid(format!(
                "tensor '{name}': device address is NULL"
            )));
        }
        crate::cuda::init().map_err(|e| e.in_tensor(name))?;
        let data = Data::Cuda {
            device,
            address,
            len,
        };
        self.add(name, dtype, shape, data, TensorOrigin::default())
    }

    fn add(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: Data<'a>,
        origin: TensorOrigin,
    ) -> Result<()> {
        check_text(name, "tensor name").map_err(Error::invalid)?;
        check_origin(name, &origin)?;
        if self.names.contains(name) {
            return Err(Error::invalid(format!("tensor '{name}' was already added")));
        }
        if self.tensors.len() >= MAX_TENSORS {
            return Err(Error::invalid(format!("more than {MAX_TENSORS} tensors")));
        }
        if shape.len() > MAX_RANK {
            return Err(Error::invalid(format!(
                "tensor '{name}': rank {} exceeds the limit of {MAX_RANK}",
                shape.len()
            )));
        }
        let nbytes = dtype.nbytes(shape).ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{name}': shape {shape:?} overflows 64 bits"
            ))
        })?;
        if nbytes != data.len() {
            return Err(Error::invalid(format!(
                "tensor '{name}': shape {shape:?} of {dtype} needs {nbytes} bytes but {} were given",
                data.len()
            )));
        }
        self.names.insert(name.to_owned());
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            data,
            origin,
        });
        Ok(())
    }

    /// Record where the tensor called `name` (already added) came from: its role, module
    /// index and path, as [`Serializer::add_tensor_with_origin`] does.
    pub fn set_origin(&mut self, name: &str, origin: TensorOrigin) -> Result<()> {
        check_origin(name, &origin)?;
        let tensor = self
            .tensors
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::NotFound(format!("no tensor '{name}' was added")))?;
        tensor.origin = origin;
        Ok(())
    }

    /// Set a metadata entry (replacing an earlier value of `key`).
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        check_text(key, "metadata key").map_err(Error::invalid)?;
        if value.contains('\0') {
            return Err(Error::invalid(format!(
                "metadata value of '{key}' contains a NUL byte"
            )));
        }
        self.metadata.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Number of tensors added so far.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Checksum, lay out and write everything, sync, and rename into place. When an error
    /// is returned the target is untouched, except when only the final sync of the
    /// directory failed: the complete new file is then in place but may not be durable.
    pub fn finish(self) -> Result<WriteStats> {
        self.finish_with_progress(&mut |_, _| {})
    }

    /// [`Serializer::finish`], calling `progress(bytes_written, total_bytes)` after each
    /// tensor is written.
    #[cfg_attr(not(feature = "remote"), allow(clippy::infallible_destructuring_match))]
    pub fn finish_with_progress(self, progress: &mut dyn FnMut(u64, u64)) -> Result<WriteStats> {
        let temp = match self.output {
            Output::File(temp) => temp,
            #[cfg(feature = "remote")]
            Output::Remote(upload) => {
                return finish_remote(
                    &self.tensors,
                    &self.metadata,
                    &self.options,
                    *upload,
                    progress,
                )
            }
        };
        let started = Instant::now();
        let block_size = self.options.checksum_block_size;
        let (passes, memory) = self.options.kdf()?;
        let sealer = self
            .options
            .secret
            .sealer(self.options.cipher, passes, memory)?;
        let encryption = sealer.as_ref().map(|s| &s.header);
        let plan = |crcs: Vec<Vec<u32>>, tags: Vec<Vec<u8>>| planned(&self.tensors, crcs, tags);
        // The checksums (and tags) are fixed-width in the header, so the layout is known
        // before they are: tensor data is written while other threads compute them, and
        // the header last. Gaps between tensors are left as holes, which read as zeros.
        let zeros = self
            .tensors
            .iter()
            .map(|t| vec![0u32; block_count(t.data.len(), block_size) as usize])
            .collect();
        let draft = plaid::layout(
            &plan(zeros, no_tags(&self.tensors, block_size, sealer.is_some())),
            &self.metadata,
            self.options.alignment,
            block_size,
            encryption,
        )?;

        let target = self.target.display().to_string();
        let fail =
            |what: &str, e: std::io::Error| Error::io(format!("writing {target}: {what}"), e);
        let file = temp.as_file();
        let checksum_threads = self.options.worker_threads().saturating_sub(1).max(1);
        let (crcs, tags, checksum_time) = if let Some(sealer) = &sealer {
            // Encrypted: each piece is sealed (on every core) before it is written, and
            // its CRCs are those of the stored bytes.
            let started = Instant::now();
            let threads = self.options.worker_threads();
            let mut crcs = Vec::with_capacity(self.tensors.len());
            let mut tags = Vec::with_capacity(self.tensors.len());
            for (i, (tensor, &offset)) in self.tensors.iter().zip(&draft.offsets).enumerate() {
                let mut out = DataWriter::new(file, draft.file_length, &mut *progress, &fail);
                let (c, t) =
                    seal_tensor(i, tensor, sealer, block_size, threads, &mut |at, bytes| {
                        out.write(&tensor.name, bytes, offset + at)
                    })?;
                crcs.push(c);
                tags.push(t);
            }
            (crcs, tags, started.elapsed())
        } else {
            let (crcs, checksum_time) = std::thread::scope(|scope| {
                let checksums = scope.spawn(|| {
                    let started = Instant::now();
                    let crcs = block_checksums(&self.tensors, block_size, checksum_threads);
                    (crcs, started.elapsed())
                });
                let out = DataWriter::new(file, draft.file_length, progress, &fail);
                let written = write_data(out, &self.tensors, &draft, block_size);
                let (mut crcs, time) = checksums
                    .join()
                    .map_err(|_| Error::invalid("computing checksums failed"))?;
                // Tensors copied from device memory were checksummed as they were written.
                for (i, device_crcs) in written? {
                    crcs[i] = device_crcs;
                }
                Ok::<_, Error>((crcs, time))
            })?;
            (
                crcs,
                no_tags(&self.tensors, block_size, false),
                checksum_time,
            )
        };
        let layout = plaid::layout(
            &plan(crcs, tags),
            &self.metadata,
            self.options.alignment,
            block_size,
            encryption,
        )?;
        if layout.head.len() != draft.head.len() || layout.offsets != draft.offsets {
            return Err(Error::invalid(
                "internal error: the header changed size once checksums were known",
            ));
        }
        file.write_all_at(&layout.head, 0)
            .map_err(|e| fail("header", e))?;
        file.set_len(layout.file_length)
            .map_err(|e| fail("setting the length", e))?;
        if self.options.sync {
            file.sync_all().map_err(|e| fail("fsync", e))?;
        }
        check_target(&self.target)?;
        temp.persist(&self.target)
            .map_err(|e| fail("renaming the temporary file into place", e))?;
        if self.options.sync {
            sync_parent(&self.target).map_err(|e| fail("fsync of the directory", e))?;
        }
        Ok(WriteStats {
            tensors: self.tensors.len(),
            data_bytes: self.tensors.iter().map(|t| t.data.len()).sum(),
            file_length: layout.file_length,
            checksum_time,
            write_time: started.elapsed(),
        })
    }
}

/// Write every tensor's bytes at its offset with large positional writes, reporting
/// progress every 64 MiB. Tensors in device memory are copied out through pinned buffers
/// and checksummed on the way; their block CRCs are returned, by tensor position.
fn write_data(
    mut out: DataWriter<'_>,
    tensors: &[PendingTensor<'_>],
    layout: &plaid::Layout,
    block_size: u64,
) -> Result<Vec<(usize, Vec<u32>)>> {
    const PIECE: usize = 64 << 20;
    let mut device_crcs = Vec::new();
    for (i, (tensor, &offset)) in tensors.iter().zip(&layout.offsets).enumerate() {
        match tensor.data {
            Data::Host(bytes) => {
                let mut at = offset;
                for piece in bytes.chunks(PIECE) {
                    out.write(&tensor.name, piece, at)?;
                    at += piece.len() as u64;
                }
            }
            Data::Cuda { .. } | Data::Read { .. } => {
                // Whole checksum blocks per piece (both are powers of two).
                let chunk = usize::try_from(block_size.max(16 << 20)).unwrap_or(16 << 20);
                let block = usize::try_from(block_size).unwrap_or(usize::MAX);
                let len = tensor.data.len();
                let mut crcs = Vec::with_capacity(block_count(len, block_size) as usize);
                stream_out(&tensor.data, chunk, &mut |at, bytes| {
                    crcs.extend(bytes.chunks(block).map(crc32c));
                    out.write(&tensor.name, bytes, offset + at)
                })
                .map_err(|e| e.in_tensor(&tensor.name))?;
                device_crcs.push((i, crcs));
            }
        }
    }
    Ok(device_crcs)
}

/// Writes tensor data at its offsets in the file being written, naming the tensor and the
/// offset of a failed write, and reports progress after each piece.
struct DataWriter<'a> {
    file: &'a File,
    file_length: u64,
    progress: &'a mut dyn FnMut(u64, u64),
    fail: &'a dyn Fn(&str, std::io::Error) -> Error,
}

impl<'a> DataWriter<'a> {
    fn new(
        file: &'a File,
        file_length: u64,
        progress: &'a mut dyn FnMut(u64, u64),
        fail: &'a dyn Fn(&str, std::io::Error) -> Error,
    ) -> Self {
        DataWriter {
            file,
            file_length,
            progress,
            fail,
        }
    }

    /// `bytes` of the tensor `name` at `to` in the file.
    fn write(&mut self, name: &str, bytes: &[u8], to: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, to)
            .map_err(|e| (self.fail)(&format!("tensor '{name}' at offset {to}"), e))?;
        (self.progress)(to + bytes.len() as u64, self.file_length);
        Ok(())
    }
}

/// Hand the bytes of a tensor not in host memory (device memory, another file) to `f` in
/// order, in pieces of `chunk` bytes (a multiple of the checksum block size) or, for a
/// file whose bytes are in memory, in one piece; `f` gets each piece's offset in the tensor.
fn stream_out(
    data: &Data<'_>,
    chunk: usize,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    match *data {
        Data::Host(bytes) => {
            let mut at = 0u64;
            for piece in bytes.chunks(chunk.max(1)) {
                f(at, piece)?;
                at += piece.len() as u64;
            }
            Ok(())
        }
        Data::Cuda {
            device,
            address,
            len,
        } => crate::cuda::copy_from_device(device, address, len, chunk, f),
        Data::Read { source, index, .. } => {
            let mut at = 0u64;
            source.for_each_piece(index, chunk, &mut |piece| {
                f(at, piece)?;
                at += piece.len() as u64;
                Ok(())
            })
        }
    }
}

/// Bytes a sealed piece holds at most: the buffer an encrypted write copies into.
const SEAL_PIECE: usize = 32 << 20;

/// Stream tensor `index` encrypted (`docs/FORMAT.md` 13.3): each piece of whole blocks is
/// copied into one buffer, its blocks sealed and checksummed on `threads` threads, and
/// handed to `f` with its offset in the tensor. Returns the CRC-32C of each stored block
/// and the tags, concatenated.
fn seal_tensor(
    index: usize,
    tensor: &PendingTensor<'_>,
    sealer: &Sealer,
    block_size: u64,
    threads: usize,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let len = tensor.data.len();
    let blocks = block_count(len, block_size) as usize;
    let mut crcs = vec![0u32; blocks];
    let mut tags = vec![[0u8; TAG_LEN]; blocks];
    let aad = crate::crypto::tensor_aad(index, len, tensor.dtype, &tensor.shape, &tensor.name);
    let block = usize::try_from(block_size).unwrap_or(usize::MAX);
    let piece = (SEAL_PIECE / block).max(1) * block;
    let mut buffer = Vec::new();
    stream_out(&tensor.data, piece, &mut |at, bytes| {
        // Pieces start at whole blocks; a file lent whole comes as one, cut here.
        for (k, part) in bytes.chunks(piece).enumerate() {
            let part_at = at + (k * piece) as u64;
            buffer.clear();
            buffer.extend_from_slice(part);
            let first = (part_at / block_size) as usize;
            let n = part.len().div_ceil(block);
            let work = buffer
                .chunks_mut(block)
                .zip(tags[first..first + n].iter_mut())
                .zip(crcs[first..first + n].iter_mut())
                .enumerate();
            crate::pool::for_each(work, threads.min(n).max(1), |(j, ((b, tag), crc))| {
                let b_at = part_at + (j * block) as u64;
                sealer.seal(index, &aad, block_size, b_at, b, std::slice::from_mut(tag));
                *crc = crc32c(b);
                Ok(())
            })?;
            f(part_at, &buffer)?;
        }
        Ok(())
    })
    .map_err(|e| e.in_tensor(&tensor.name))?;
    Ok((crcs, tags.concat()))
}

/// Each tensor's tags before they are known: zeros of the right length when `encrypted`,
/// else none.
fn no_tags(tensors: &[PendingTensor<'_>], block_size: u64, encrypted: bool) -> Vec<Vec<u8>> {
    tensors
        .iter()
        .map(|t| match encrypted {
            true => vec![0u8; block_count(t.data.len(), block_size) as usize * TAG_LEN],
            false => Vec::new(),
        })
        .collect()
}

/// The tensors as the header plans them, with their block checksums and tags.
fn planned(
    tensors: &[PendingTensor<'_>],
    crcs: Vec<Vec<u32>>,
    tags: Vec<Vec<u8>>,
) -> Vec<PlannedTensor> {
    tensors
        .iter()
        .zip(crcs)
        .zip(tags)
        .map(|((t, block_crc32c), block_tags)| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            nbytes: t.data.len(),
            block_crc32c,
            block_tags,
            role: t.origin.role,
            module_index: t.origin.module_index,
            path: t.origin.path.clone(),
        })
        .collect()
}

/// Write the file as one stream into `upload`: the header goes first, so every checksum
/// is computed before (for device tensors, by a first copy out of device memory), then the
/// data in file order, zeros between tensors. The object appears when the upload
/// completes; any failure aborts it.
#[cfg(feature = "remote")]
fn finish_remote(
    tensors: &[PendingTensor<'_>],
    metadata: &BTreeMap<String, String>,
    options: &WriteOptions,
    mut upload: crate::remote::Upload,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteStats> {
    const PIECE: usize = 8 << 20;
    let started = Instant::now();
    let block_size = options.checksum_block_size;
    let chunk = usize::try_from(block_size.max(16 << 20)).unwrap_or(16 << 20);
    let block = usize::try_from(block_size).unwrap_or(usize::MAX);
    let (passes, memory) = options.kdf()?;
    let sealer = options.secret.sealer(options.cipher, passes, memory)?;
    let threads = options.worker_threads();
    let mut tags = no_tags(tensors, block_size, false);
    let mut crcs = match sealer {
        // Encrypted: sealed once for the CRCs and tags of the header, again as sent.
        Some(ref sealer) => {
            let mut crcs = Vec::with_capacity(tensors.len());
            for (i, tensor) in tensors.iter().enumerate() {
                let (c, t) =
                    seal_tensor(i, tensor, sealer, block_size, threads, &mut |_, _| Ok(()))?;
                crcs.push(c);
                tags[i] = t;
            }
            crcs
        }
        None => block_checksums(tensors, block_size, threads),
    };
    for (i, tensor) in tensors.iter().enumerate() {
        if sealer.is_none() && !matches!(tensor.data, Data::Host(_)) {
            let len = tensor.data.len();
            let mut streamed = Vec::with_capacity(block_count(len, block_size) as usize);
            stream_out(&tensor.data, chunk, &mut |_, bytes| {
                streamed.extend(bytes.chunks(block).map(crc32c));
                Ok(())
            })
            .map_err(|e| e.in_tensor(&tensor.name))?;
            crcs[i] = streamed;
        }
    }
    let checksum_time = started.elapsed();
    // What the header records of each encrypted tensor, checked against what is sent.
    let sealed: Vec<(Vec<u32>, Vec<u8>)> = match sealer {
        Some(_) => crcs.iter().cloned().zip(tags.iter().cloned()).collect(),
        None => Vec::new(),
    };
    let layout = plaid::layout(
        &planned(tensors, crcs, tags),
        metadata,
        options.alignment,
        block_size,
        sealer.as_ref().map(|s| &s.header),
    )?;
    let total = layout.file_length;
    let zeros = vec![0u8; 1 << 16];
    let mut at = 0u64;
    let pad = |upload: &mut crate::remote::Upload, at: &mut u64, to: u64| -> Result<()> {
        while *at < to {
            let n = (to - *at).min(zeros.len() as u64) as usize;
            upload.write(&zeros[..n])?;
            *at += n as u64;
        }
        Ok(())
    };
    upload.write(&layout.head)?;
    at += layout.head.len() as u64;
    for (i, (tensor, &offset)) in tensors.iter().zip(&layout.offsets).enumerate() {
        pad(&mut upload, &mut at, offset)?;
        let piece = if matches!(tensor.data, Data::Host(_)) {
            PIECE
        } else {
            chunk
        };
        let mut send = |_, bytes: &[u8]| {
            upload.write(bytes)?;
            at += bytes.len() as u64;
            progress(at, total);
            Ok(())
        };
        match sealer {
            Some(ref sealer) => {
                let sent = seal_tensor(i, tensor, sealer, block_size, threads, &mut send)?;
                if sent != sealed[i] {
                    // The bytes changed between the two passes (device memory written
                    // meanwhile, a source replaced): the header would not match them.
                    return Err(Error::invalid(format!(
                        "tensor '{}' changed while it was being written: the upload is abandoned",
                        tensor.name
                    )));
                }
            }
            None => {
                stream_out(&tensor.data, piece, &mut send).map_err(|e| e.in_tensor(&tensor.name))?
            }
        }
    }
    pad(&mut upload, &mut at, total)?;
    upload.finish()?;
    Ok(WriteStats {
        tensors: tensors.len(),
        data_bytes: tensors.iter().map(|t| t.data.len()).sum(),
        file_length: total,
        checksum_time,
        write_time: started.elapsed(),
    })
}

/// CRC-32C of every block of every tensor, spread over `threads` threads (in runs of 16
/// blocks, so that small blocks do not cost a queue lock each).
fn block_checksums(
    tensors: &[PendingTensor<'_>],
    block_size: u64,
    threads: usize,
) -> Vec<Vec<u32>> {
    let block = usize::try_from(block_size).unwrap_or(usize::MAX);
    let mut crcs: Vec<Vec<u32>> = tensors
        .iter()
        .map(|t| vec![0u32; t.data.host().len().div_ceil(block)])
        .collect();
    let mut work: Vec<(&[u8], &mut u32)> = Vec::new();
    for (t, slots) in tensors.iter().zip(crcs.iter_mut()) {
        work.extend(t.data.host().chunks(block).zip(slots.iter_mut()));
    }
    let runs = work.chunks_mut(16);
    let threads = threads.min(runs.len()).max(1);
    // Nothing in it fails.
    let _ = crate::pool::for_each(runs, threads, |run| {
        for (data, slot) in run.iter_mut() {
            **slot = crc32c(data);
        }
        Ok(())
    });
    crcs
}

/// A path, where `origin` has one, must be a JSON array whose components joined by dots
/// are `name`.
fn check_origin(name: &str, origin: &TensorOrigin) -> Result<()> {
    if let Some(path) = &origin.path {
        check_text(path, "tensor path").map_err(Error::invalid)?;
        let flat = flatten_path(path).map_err(Error::invalid)?;
        if flat != name {
            return Err(Error::invalid(format!(
                "tensor '{name}': its path {path} names '{flat}'"
            )));
        }
    }
    Ok(())
}
