//! Opening a file and loading its tensors.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::format::{self, Format, Index, TensorInfo};
use crate::options::ReadOptions;
use crate::pipeline::{self, LoadStats, ProgressFn};
use crate::sink::{Destination, HostArena, Placement, Sinks, View};
use crate::source::{read_exact, FileSource, Mappable, Metered, MultiSource, ReadAhead, Source};

/// The folder a sharded checkpoint's shards must resolve inside (symlinks followed): the
/// index's own folder, or for a Hugging Face cache snapshot (`models--NAME/snapshots/REV/`,
/// whose files are symlinks into the model's `blobs` folder) that model's cache folder, or `chosen`.
fn shard_root(dir: &Path, chosen: Option<&Path>) -> Result<std::path::PathBuf> {
    let canonical = |p: &Path| {
        p.canonicalize()
            .map_err(|e| Error::io(format!("resolving {}", p.display()), e))
    };
    if let Some(root) = chosen {
        return canonical(root);
    }
    let dir = canonical(dir)?;
    let parent = dir.parent();
    let in_cache = parent.and_then(Path::file_name) == Some("snapshots".as_ref())
        && parent
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("models--"));
    Ok(match (in_cache, parent.and_then(Path::parent)) {
        (true, Some(model)) => model.to_path_buf(),
        _ => dir,
    })
}

/// An error unless `file`, symlinks followed, lies inside `root`: a downloaded checkpoint
/// must not make the loader read files elsewhere on the machine.
fn inside(file: &Path, root: &Path) -> Result<()> {
    let resolved = file
        .canonicalize()
        .map_err(|e| Error::io(format!("opening {}", file.display()), e))?;
    if resolved.starts_with(root) {
        return Ok(());
    }
    Err(Error::io(
        format!("opening {}", file.display()),
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the shard resolves outside {} (a symlink out of the checkpoint's folder; \
                 plaid_read_options_set_shard_root names another folder to allow)",
                root.display()
            ),
        ),
    ))
}

/// Opens a sharded checkpoint's shard by the name its index gives.
type ShardOpener<'o> = dyn Fn(&str) -> Result<Box<dyn Source>> + Sync + 'o;

/// An open model file: its tensor list is known, its data is read on [`Deserializer::load`].
///
/// A deserializer is `Send + Sync`; `load` may be called any number of times, from any
/// thread, into different destinations.
pub struct Deserializer {
    source: Box<dyn Source>,
    index: Index,
    /// Tensor positions sorted by name, for [`Deserializer::find`].
    by_name: Vec<u32>,
    options: ReadOptions,
    /// Tensors whose zero-copy view has been verified.
    view_verified: Vec<AtomicBool>,
    /// Zero pages that views of zero-filled tensors point into (mapped on first use; they
    /// cost no memory).
    zeros: OnceLock<memmap2::Mmap>,
    /// Destinations reached through staging buffers (device memory), with their pinned
    /// buffers, kept between loads.
    sinks: Sinks,
    /// Bytes read from the source since it was opened (its header excepted).
    bytes_read: Arc<AtomicU64>,
}

impl std::fmt::Debug for Deserializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deserializer")
            .field("source", &self.source.name())
            .field("tensors", &self.index.tensors.len())
            .field("options", &self.options)
            .finish()
    }
}

impl Deserializer {
    /// Open the file at `path` and read its header. `path` may also be a URL: `http://`,
    /// `https://`, `s3://bucket/key`, `gs://bucket/key` or `az://container/key`, configured
    /// from the environment and the read options' storage options; the object's ETag is
    /// pinned now, so an object replaced during a load fails it rather than mixing versions.
    pub fn open(path: impl AsRef<Path>, options: ReadOptions) -> Result<Deserializer> {
        let path = path.as_ref();
        let text = path.to_string_lossy();
        if crate::url::is_url(&text) {
            return Deserializer::open_url(&text, options);
        }
        let source = FileSource::open_with(path, options.direct_io)?.copy_from_map(options.mmap);
        // A sharded checkpoint's shards open beside its index, inside the shard root.
        let dir = crate::fs::parent_dir(path).to_path_buf();
        let given_root = options.shard_root.clone();
        // Resolved on the first shard: a file that is not an index never pays for it.
        let root = std::sync::OnceLock::new();
        let (direct_io, mmap) = (options.direct_io, options.mmap);
        let open_shard = move |shard: &str| -> Result<Box<dyn Source>> {
            let file = dir.join(shard);
            let root = match root.get() {
                Some(root) => root,
                None => {
                    let resolved = shard_root(&dir, given_root.as_deref())?;
                    root.get_or_init(|| resolved)
                }
            };
            inside(&file, root)?;
            Ok(Box::new(
                FileSource::open_with(&file, direct_io)?.copy_from_map(mmap),
            ))
        };
        Deserializer::open_source(Box::new(source), Some(&open_shard), options)
    }

    /// The one way every source is opened: its first bytes, read through a read-ahead
    /// window that then serves the header, tell a sharded checkpoint's index (its shards
    /// opened by `open_shard`, where the kind of source has a way to) from a file in any
    /// format plaid reads.
    fn open_source(
        source: Box<dyn Source>,
        open_shard: Option<&ShardOpener<'_>>,
        options: ReadOptions,
    ) -> Result<Deserializer> {
        let index = {
            let ahead = ReadAhead::for_source(source.as_ref());
            let mut prefix = vec![0u8; source.len().min(64) as usize];
            read_exact(&ahead, 0, &mut prefix)?;
            if format::safetensors::sniff_sharded(&prefix, source.len()) {
                let Some(open_shard) = open_shard else {
                    return Err(Error::Unsupported(format!(
                        "{}: a sharded checkpoint's index names other files; open it by path, not as a source",
                        source.name()
                    )));
                };
                drop(ahead);
                return Deserializer::open_sharded(source.as_ref(), open_shard, options);
            }
            format::read_index(&ahead)?
        };
        Deserializer::with_index(source, index, options)
    }

    #[cfg(feature = "remote")]
    fn open_url(url: &str, options: ReadOptions) -> Result<Deserializer> {
        use crate::remote::{Client, Location};
        let location = Location::parse(url)?;
        let client = Client::new(&location, &options.storage)?;
        let source = client.open(&location)?;
        // The shards are resolved beside the index and read through its client.
        let open_shard = |shard: &str| -> Result<Box<dyn Source>> {
            Ok(Box::new(client.open(&location.sibling(shard)?)?))
        };
        Deserializer::open_source(Box::new(source), Some(&open_shard), options)
    }

    #[cfg(not(feature = "remote"))]
    fn open_url(url: &str, _options: ReadOptions) -> Result<Deserializer> {
        Err(Error::Unsupported(format!(
            "{url}: this build of plaid reads no URLs (the `remote` feature is off)"
        )))
    }

    /// A sharded safetensors checkpoint, opened through its index (read from
    /// `index_file`): the shards, opened by `open_shard` (several at once: for remote
    /// stores each costs a round trip), are laid end to end as one source and their
    /// tensors joined into one index.
    fn open_sharded(
        index_file: &dyn Source,
        open_shard: &ShardOpener<'_>,
        options: ReadOptions,
    ) -> Result<Deserializer> {
        let mut bytes = crate::error::zeroed(index_file.len(), index_file.name())?;
        read_exact(index_file, 0, &mut bytes)?;
        let shard_index = format::safetensors::parse_shard_index(index_file.name(), &bytes)?;
        let count = shard_index.shards.len();
        type Opened = parking_lot::Mutex<Option<(Box<dyn Source>, Index)>>;
        let opened: Vec<Opened> = (0..count).map(|_| parking_lot::Mutex::new(None)).collect();
        let threads = count.clamp(1, 16);
        crate::pool::for_each(
            shard_index.shards.iter().enumerate(),
            threads,
            |(k, shard)| {
                let part = open_shard(shard)?;
                let index = format::safetensors::read_index(&ReadAhead::for_source(part.as_ref()))?;
                *opened[k].lock() = Some((part, index));
                Ok(())
            },
        )?;
        let mut parts: Vec<Box<dyn Source>> = Vec::with_capacity(count);
        let mut indexes = Vec::with_capacity(count);
        for slot in opened {
            let (part, index) = slot
                .into_inner()
                .ok_or_else(|| Error::invalid("internal error: a shard was not opened"))?;
            parts.push(part);
            indexes.push(index);
        }
        let source = MultiSource::new(index_file.name(), parts);
        let bases: Vec<u64> = (0..count).map(|k| source.base(k)).collect();
        let index = format::safetensors::join_shards(
            index_file.name(),
            &shard_index,
            indexes,
            &bases,
            source.len(),
        )?;
        Deserializer::with_index(Box::new(source), index, options)
    }

    /// Read the header of any [`Source`], in any format plaid reads (detected from the
    /// first bytes), through a read-ahead window: a header that fits it costs one read.
    /// A sharded checkpoint's index cannot be opened this way (a source is one file):
    /// [`Error::Unsupported`]. The file-only options (`mmap`, `direct_io`) do not apply.
    pub fn from_source(source: Box<dyn Source>, options: ReadOptions) -> Result<Deserializer> {
        Deserializer::open_source(source, None, options)
    }

    fn with_index(
        source: Box<dyn Source>,
        index: Index,
        options: ReadOptions,
    ) -> Result<Deserializer> {
        // Names, paths and metadata reach C as NUL-terminated strings: a NUL inside one is a
        // malformed file, whatever the format allows.
        let nul = |what: String| {
            Err(Error::format(
                source.name(),
                0,
                format!("{what} holds a NUL byte, which no name can hold"),
            ))
        };
        for t in &index.tensors {
            if t.name.contains('\0') {
                return nul(format!("the name of tensor #{}", t.index));
            }
            if t.path.as_deref().is_some_and(|p| p.contains('\0')) {
                return nul(format!("the path of tensor #{}", t.index));
            }
        }
        if let Some((key, _)) = index
            .metadata
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return nul(format!(
                "the metadata entry #{}",
                index.metadata.keys().position(|k| k == key).unwrap_or(0)
            ));
        }
        // Positions sorted by name: 4 bytes a tensor, where a map of copied names would
        // cost more than the smallest header entries themselves.
        let mut by_name: Vec<u32> = Vec::new();
        by_name
            .try_reserve_exact(index.tensors.len())
            .map_err(|_| Error::format(source.name(), 0, "no memory for the name index"))?;
        by_name.extend(0..index.tensors.len() as u32);
        by_name.sort_unstable_by(|&a, &b| {
            index.tensors[a as usize]
                .name
                .cmp(&index.tensors[b as usize].name)
        });
        let view_verified = index
            .tensors
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        let bytes_read = Arc::new(AtomicU64::new(0));
        Ok(Deserializer {
            source: Box::new(Metered::new(source, Arc::clone(&bytes_read))),
            bytes_read,
            index,
            by_name,
            options,
            view_verified,
            zeros: OnceLock::new(),
            sinks: Sinks::new(crate::cuda::staging_sink),
        })
    }

    /// This deserializer with only the tensors `wanted` chooses, renumbered in file order
    /// (indices, `find` and loads see only those): to convert or serve part of a file.
    pub fn retain(mut self, wanted: &dyn Fn(&TensorInfo) -> bool) -> Deserializer {
        self.index.tensors.retain(|t| wanted(t));
        for (i, t) in self.index.tensors.iter_mut().enumerate() {
            t.index = i;
        }
        let tensors = &self.index.tensors;
        self.by_name = (0..tensors.len() as u32).collect();
        self.by_name
            .sort_unstable_by(|&a, &b| tensors[a as usize].name.cmp(&tensors[b as usize].name));
        self.view_verified = tensors.iter().map(|_| AtomicBool::new(false)).collect();
        self
    }

    /// The bytes read from the file (or object, or shards) by loads, verifications and
    /// reads since it was opened, its header excepted: what the storage delivered, block
    /// rounding and the gaps read through included (bytes copied from a mapping in place
    /// count; zero-copy views do not).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The file's name, as used in messages.
    pub fn name(&self) -> &str {
        self.source.name()
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        self.index.format
    }

    /// The file's format version.
    pub fn format_version(&self) -> u32 {
        self.index.version
    }

    /// Length of the file in bytes.
    pub fn file_length(&self) -> u64 {
        self.index.file_length
    }

    /// Alignment of tensor data in the file.
    pub fn alignment(&self) -> u64 {
        self.index.alignment
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.index.tensors
    }

    /// The tensor at `index`, if any.
    pub fn tensor(&self, index: usize) -> Option<&TensorInfo> {
        self.index.tensors.get(index)
    }

    /// The position of the tensor called `name`.
    pub fn find(&self, name: &str) -> Result<usize> {
        let tensors = &self.index.tensors;
        self.by_name
            .binary_search_by(|&i| tensors[i as usize].name.as_str().cmp(name))
            .ok()
            .map(|found| self.by_name[found] as usize)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor named '{name}'", self.name())))
    }

    /// The model's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.index.metadata
    }

    /// The options this deserializer reads with.
    pub fn options(&self) -> &ReadOptions {
        &self.options
    }

    /// Load tensors into the destinations chosen by `placement`. Returns when every byte
    /// has landed and been verified (unless verification is off).
    pub fn load<'a>(&self, placement: &mut dyn Placement<'a>) -> Result<LoadStats> {
        self.run_load(placement, None)
    }

    /// [`Deserializer::load`], reporting progress to `progress` from the workers (never
    /// two reports at once; at most one per the options' progress interval, and always a
    /// last one when every byte has landed). An error returned by `progress` stops the
    /// load with that error; destinations may then hold partial data.
    pub fn load_with_progress<'a>(
        &self,
        placement: &mut dyn Placement<'a>,
        progress: &ProgressFn<'_>,
    ) -> Result<LoadStats> {
        self.run_load(placement, Some(progress))
    }

    /// What the pipeline reads: this file's source and index, and the options' settings.
    fn input(&self) -> pipeline::Input<'_> {
        pipeline::Input {
            source: self.source.as_ref(),
            index: &self.index,
            settings: self.options.load_settings(),
        }
    }

    /// The one way into the pipeline for every kind of load.
    fn run_load<'a>(
        &self,
        placement: &mut dyn Placement<'a>,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<LoadStats> {
        pipeline::load(&self.input(), &self.sinks, placement, progress)
    }

    /// Read and verify every block of every tensor, holding at most one chunk per worker.
    /// An encrypted plaid file verifies without its key (its CRCs cover the stored bytes);
    /// with the key, every block is authenticated too. tensorizer's hashes cover the
    /// plaintext: its encrypted files need the key.
    pub fn verify(&self) -> Result<LoadStats> {
        self.verify_tensors(&|_| true, None)
    }

    /// [`Deserializer::verify`], reporting progress as [`Deserializer::load_with_progress`].
    pub fn verify_with_progress(&self, progress: &ProgressFn<'_>) -> Result<LoadStats> {
        self.verify_tensors(&|_| true, Some(progress))
    }

    /// [`Deserializer::verify_with_progress`] of the tensors `wanted` chooses only: the
    /// others are not read (beyond gaps between small tensors read through).
    pub fn verify_tensors(
        &self,
        wanted: &dyn Fn(&TensorInfo) -> bool,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<LoadStats> {
        pipeline::verify_all(&self.input(), wanted, progress)
    }

    /// Read one tensor into a new vector (verified as per the options).
    pub fn read_tensor(&self, index: usize) -> Result<Vec<u8>> {
        let tensor = self
            .tensor(index)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", self.name())))?;
        let mut bytes = crate::error::zeroed(
            tensor.nbytes,
            format_args!("{}: tensor '{}'", self.name(), tensor.name),
        )?;
        let mut buffer = Some(bytes.as_mut_slice());
        self.load(&mut |t: &TensorInfo| {
            Ok(match buffer.take() {
                Some(b) if t.index == index => Destination::Host(b),
                other => {
                    buffer = other;
                    Destination::Skip
                }
            })
        })?;
        Ok(bytes)
    }

    /// Load the tensors that `wanted` selects (all, for `|_| true`) into one host
    /// allocation made by plaid, the way a `load_file` call gives fresh arrays: each tensor
    /// 64-byte aligned, the pages faulted in by the workers as they write them (4 KiB
    /// pages unless [`ReadOptions::huge_pages`] asked for huge ones), verified as per the
    /// options. The arena frees the
    /// memory when dropped.
    /// Progress is reported to `progress`, if given, as [`Deserializer::load_with_progress`]
    /// does.
    pub fn load_to_host(
        &self,
        wanted: &mut dyn FnMut(&TensorInfo) -> bool,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<HostArena> {
        self.load_views_to_host(&mut |t| Ok(wanted(t).then(View::whole)), progress)
    }

    /// [`Deserializer::load_to_host`] of views: `views` gives each tensor's [`View`] (a
    /// slice, another dtype), `None` to skip it; each arena buffer holds its view's bytes.
    /// An error from `views`, or a view that does not fit its tensor, stops the load
    /// before anything is allocated or read.
    pub fn load_views_to_host(
        &self,
        views: &mut dyn FnMut(&TensorInfo) -> Result<Option<View>>,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<HostArena> {
        let (views, sizes) = self.views(views)?;
        let mut arena = HostArena::allocate(&sizes, self.options.huge_pages)?;
        let mut buffers = arena.buffers();
        let mut placement = |t: &TensorInfo| {
            Ok(match (buffers[t.index].take(), views[t.index]) {
                (Some(buffer), Some(view)) => viewed(view, Destination::Host(buffer)),
                _ => Destination::Skip,
            })
        };
        self.run_load(&mut placement, progress)?;
        drop(buffers);
        Ok(arena)
    }

    /// Load the tensors that `wanted` selects into one allocation on CUDA device `device`
    /// made by plaid (each tensor 256-byte aligned), the way a `load_file(device="cuda")`
    /// call gives fresh tensors; [`CudaArena::tensor`] gives each one's device address.
    /// The memory is freed when the arena is dropped.
    pub fn load_to_cuda(
        &self,
        device: i32,
        wanted: &mut dyn FnMut(&TensorInfo) -> bool,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<crate::cuda::CudaArena> {
        self.load_views_to_cuda(device, &mut |t| Ok(wanted(t).then(View::whole)), progress)
    }

    /// [`Deserializer::load_to_cuda`] of views, as [`Deserializer::load_views_to_host`].
    pub fn load_views_to_cuda(
        &self,
        device: i32,
        views: &mut dyn FnMut(&TensorInfo) -> Result<Option<View>>,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<crate::cuda::CudaArena> {
        let (views, sizes) = self.views(views)?;
        let arena = crate::cuda::CudaArena::allocate(device, &sizes)?;
        let mut placement = |t: &TensorInfo| {
            Ok(match (arena.tensor(t.index), views[t.index]) {
                (Some((address, capacity)), Some(view)) => viewed(
                    view,
                    Destination::Cuda {
                        device,
                        address,
                        capacity,
                    },
                ),
                _ => Destination::Skip,
            })
        };
        self.run_load(&mut placement, progress)?;
        Ok(arena)
    }

    /// Each tensor's view (`None`: skipped) and the bytes it needs, every view checked.
    #[allow(clippy::type_complexity)]
    fn views(
        &self,
        views: &mut dyn FnMut(&TensorInfo) -> Result<Option<View>>,
    ) -> Result<(Vec<Option<View>>, Vec<Option<u64>>)> {
        let mut chosen = Vec::with_capacity(self.index.tensors.len());
        let mut sizes = Vec::with_capacity(self.index.tensors.len());
        for t in &self.index.tensors {
            let view = views(t)?;
            let size = match &view {
                Some(view) => Some(pipeline::received(t, view)?.1),
                None => None,
            };
            chosen.push(view);
            sizes.push(size);
        }
        Ok((chosen, sizes))
    }

    /// Bytes of pinned host memory this deserializer holds for staging copies to devices
    /// (two buffers of one request per staging lane and device, kept between loads).
    pub fn pinned_staging_bytes(&self) -> usize {
        self.sinks.pinned_bytes()
    }

    /// Map the file for zero-copy views ([`Deserializer::view`]). With verification on and
    /// [`ReadOptions::verify_views_up_front`], every tensor not yet verified is verified
    /// now, in parallel; otherwise mapping costs no read at all and each view is verified
    /// on first access. Calling it again is cheap.
    pub fn map(&self) -> Result<()> {
        let views = (0..self.index.tensors.len())
            .map(|i| self.raw_view(i))
            .collect::<Result<Vec<_>>>()?;
        if self.options.verify && self.options.verify_views_up_front {
            let pending: Vec<(&TensorInfo, &[u8])> = self
                .index
                .tensors
                .iter()
                .zip(views)
                .filter(|(t, _)| !self.view_verified[t.index].load(Ordering::Acquire))
                .map(|(t, bytes)| (t, &bytes[..t.stored_len() as usize]))
                .collect();
            pipeline::verify_lent(&self.input(), &pending).map_err(|e| self.mapped_error(e))?;
            self.check_mapped()?;
            for (t, _) in pending {
                self.view_verified[t.index].store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// A read-only view of tensor `index`'s bytes inside a memory map of the file: no
    /// copy at all. The view lives as long as the deserializer. With verification on, a
    /// tensor is verified on its first view (unless [`Deserializer::map`] verified it).
    /// A tensor the file stores no bytes for (a tensorizer meta tensor) is a view of
    /// zero pages. The shards of a sharded checkpoint are each mapped.
    ///
    /// If another process truncates the file while it is mapped, the bytes past the new
    /// end read as zeros instead of raising `SIGBUS`, and every later call to `view`
    /// returns a [`Error::Format`] error saying that the file shrank.
    pub fn view(&self, index: usize) -> Result<&[u8]> {
        let bytes = self.raw_view(index)?;
        let tensor = &self.index.tensors[index];
        if self.options.verify && !self.view_verified[index].load(Ordering::Acquire) {
            let stored = &bytes[..tensor.stored_len() as usize];
            pipeline::verify_lent(&self.input(), &[(tensor, stored)])
                .map_err(|e| self.mapped_error(e))?;
            self.view_verified[index].store(true, Ordering::Release);
        }
        self.check_mapped()?;
        Ok(bytes)
    }

    /// Run `f` over tensor `index`'s bytes in order: in one piece, in place and verified,
    /// where the source lends its bytes; else in pieces of up to `piece` bytes read
    /// straight from the source, unverified (conversions check their output against a
    /// verified load of the source afterwards), so that host memory stays at one piece.
    pub(crate) fn for_each_piece(
        &self,
        index: usize,
        piece: usize,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let tensor = self
            .tensor(index)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", self.name())))?;
        if self.source.mappable().is_some() && tensor.encryption.is_none() {
            return f(self.view(index)?);
        }
        self.source.begin();
        let total = tensor.nbytes;
        let mut buffer = vec![0u8; (total.min(piece.max(1) as u64)) as usize];
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(buffer.len() as u64) as usize;
            self.read_stored(index, at, &mut buffer[..n])?;
            f(&buffer[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Tensor `index`'s bytes from `offset` into `buf`, read raw (unverified): zeros for a
    /// zero-filled tensor.
    pub(crate) fn read_stored(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let tensor = self
            .tensor(index)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", self.name())))?;
        if offset.saturating_add(buf.len() as u64) > tensor.nbytes {
            return Err(Error::invalid(format!(
                "{}: bytes {offset}..+{} are past the end of tensor '{}'",
                self.name(),
                buf.len(),
                tensor.name
            )));
        }
        if tensor.zero_fill {
            buf.fill(0);
            return Ok(());
        }
        if let Some(mut decrypt) =
            crate::crypto::Decrypt::of(self.name(), tensor, &self.options.secret)?
        {
            return decrypt.read(self.source.as_ref(), tensor, offset, buf);
        }
        read_exact(self.source.as_ref(), tensor.offset + offset, buf)
            .map_err(|e| e.in_tensor(&tensor.name))
    }

    /// Tensor `index`'s bytes in place, unverified.
    fn raw_view(&self, index: usize) -> Result<&[u8]> {
        let tensor = self
            .tensor(index)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", self.name())))?;
        if tensor.zero_fill {
            return Ok(&self.zero_pages()?[..tensor.nbytes as usize]);
        }
        self.options.secret.check_clear(self.name(), tensor)?;
        if tensor.encryption.is_some() {
            return Err(Error::Unsupported(format!(
                "{}: tensor '{}' is encrypted: a view would show its ciphertext; load it instead",
                self.name(),
                tensor.name
            )));
        }
        self.mappable()?
            .view(tensor.offset, tensor.nbytes)
            .map_err(|e| e.in_tensor(&tensor.name))
    }

    /// The source's mapping capability, or why views are impossible.
    pub(crate) fn mappable(&self) -> Result<&dyn Mappable> {
        self.source.mappable().ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: this source cannot be memory-mapped (zero-copy views need a file or memory)",
                self.name()
            ))
        })
    }

    /// An error if the mapping's bytes can no longer be trusted (the file shrank).
    fn check_mapped(&self) -> Result<()> {
        self.source
            .mappable()
            .map_or(Ok(()), |map| map.check_mapped())
    }

    /// A verification error on mapped bytes, unless the file shrank under the mapping
    /// (whose zeros made the checksums fail): then that is the error.
    fn mapped_error(&self, e: Error) -> Error {
        let shrank = self.source.mappable().map_or(Ok(()), |map| {
            map.check_mapped().and_then(|()| map.view(0, 0).map(drop))
        });
        match shrank {
            Err(shrank) => shrank,
            Ok(()) => e,
        }
    }

    /// Read-only zero pages as long as the largest zero-filled tensor.
    fn zero_pages(&self) -> Result<&[u8]> {
        if let Some(map) = self.zeros.get() {
            return Ok(map);
        }
        let len = self
            .index
            .tensors
            .iter()
            .filter(|t| t.zero_fill)
            .map(|t| t.nbytes)
            .max()
            .unwrap_or(0)
            .max(1);
        let len = usize::try_from(len).map_err(|_| {
            Error::Unsupported(format!(
                "{}: a zero-filled tensor is too large to map",
                self.name()
            ))
        })?;
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_anon()
            .and_then(memmap2::MmapMut::make_read_only)
            .map_err(|e| Error::io(format!("{}: mapping zero pages", self.name()), e))?;
        Ok(self.zeros.get_or_init(|| map))
    }
}

/// `to`, receiving `view` (itself where the view is the whole tensor as stored).
fn viewed(view: View, to: Destination<'_>) -> Destination<'_> {
    if view.is_whole() {
        to
    } else {
        Destination::View(view, Box::new(to))
    }
}
