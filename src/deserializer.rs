//! Opening a file and loading its tensors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::format::{self, Format, Index, TensorInfo};
use crate::options::ReadOptions;
use crate::pipeline::{self, LoadStats, ProgressFn};
use crate::sink::{Destination, HostArena, Placement, Sinks};
use crate::source::{read_exact, FileSource, Mappable, MultiSource, ReadAhead, Source};

/// An open model file: its tensor list is known, its data is read on [`Deserializer::load`].
///
/// A deserializer is `Send + Sync`; `load` may be called any number of times, from any
/// thread, into different destinations.
pub struct Deserializer {
    source: Box<dyn Source>,
    index: Index,
    by_name: HashMap<String, usize>,
    options: ReadOptions,
    /// Tensors whose zero-copy view has been verified.
    view_verified: Vec<AtomicBool>,
    /// Zero pages that views of zero-filled tensors point into (mapped on first use; they
    /// cost no memory).
    zeros: OnceLock<memmap2::Mmap>,
    /// Destinations reached through staging buffers (device memory), with their pinned
    /// buffers, kept between loads.
    sinks: Sinks,
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
    /// Open the file at `path` and read its header.
    pub fn open(path: impl AsRef<Path>, options: ReadOptions) -> Result<Deserializer> {
        let path = path.as_ref();
        let text = path.to_string_lossy();
        if let Some(scheme) = ["http://", "https://", "s3://"]
            .iter()
            .find(|s| text.starts_with(*s))
        {
            return Err(Error::Unsupported(format!(
                "{text}: {scheme} sources are not supported by this build"
            )));
        }
        let source = FileSource::open_with(path, options.direct_io)?.copy_from_map(options.mmap);
        let mut prefix = vec![0u8; source.len().min(64) as usize];
        read_exact(&source, 0, &mut prefix)?;
        if format::safetensors::sniff_sharded(&prefix, source.len()) {
            return Deserializer::open_sharded(path, &source, options);
        }
        Deserializer::from_file(Box::new(source), options)
    }

    /// A sharded safetensors checkpoint, opened through its index: the shards are laid end
    /// to end as one source and their tensors joined into one index.
    fn open_sharded(
        path: &Path,
        index_file: &FileSource,
        options: ReadOptions,
    ) -> Result<Deserializer> {
        let mut bytes = vec![0u8; index_file.len() as usize];
        read_exact(index_file, 0, &mut bytes)?;
        let shard_index = format::safetensors::parse_shard_index(index_file.name(), &bytes)?;
        let dir = crate::serializer::parent_dir(path);
        let mut parts: Vec<Box<dyn Source>> = Vec::new();
        let mut indexes = Vec::new();
        for shard in &shard_index.shards {
            let part = FileSource::open_with(&dir.join(shard), options.direct_io)?
                .copy_from_map(options.mmap);
            indexes.push(format::safetensors::read_index(&ReadAhead::for_source(
                &part,
            ))?);
            parts.push(Box::new(part));
        }
        let source = MultiSource::new(index_file.name(), parts);
        let bases: Vec<u64> = (0..shard_index.shards.len())
            .map(|k| source.base(k))
            .collect();
        let index = format::safetensors::join_shards(
            index_file.name(),
            &shard_index,
            indexes,
            &bases,
            source.len(),
        )?;
        Ok(Deserializer::with_index(Box::new(source), index, options))
    }

    /// Read the header of any [`Source`], in any format plaid reads (detected from the
    /// first bytes), through a read-ahead window: a header that fits it costs one read.
    /// A sharded checkpoint's index cannot be opened this way (a source is one file):
    /// [`Error::Unsupported`]. The file-only options (`mmap`, `direct_io`) do not apply.
    pub fn from_source(source: Box<dyn Source>, options: ReadOptions) -> Result<Deserializer> {
        let mut prefix = vec![0u8; source.len().min(64) as usize];
        let ahead = ReadAhead::for_source(source.as_ref());
        read_exact(&ahead, 0, &mut prefix)?;
        if format::safetensors::sniff_sharded(&prefix, source.len()) {
            return Err(Error::Unsupported(format!(
                "{}: a sharded checkpoint's index names other files; open it by path, not as a source",
                source.name()
            )));
        }
        let index = format::read_index(&ahead)?;
        drop(ahead);
        Ok(Deserializer::with_index(source, index, options))
    }

    /// A file `open` made a source of (not a sharded index): its header through the
    /// read-ahead window, as [`Deserializer::from_source`] reads it.
    fn from_file(source: Box<dyn Source>, options: ReadOptions) -> Result<Deserializer> {
        let index = format::read_index(&ReadAhead::for_source(source.as_ref()))?;
        Ok(Deserializer::with_index(source, index, options))
    }

    fn with_index(source: Box<dyn Source>, index: Index, options: ReadOptions) -> Deserializer {
        let by_name = index
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.index))
            .collect();
        let view_verified = index
            .tensors
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        Deserializer {
            source,
            index,
            by_name,
            options,
            view_verified,
            zeros: OnceLock::new(),
            sinks: Sinks::default(),
        }
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
        self.by_name
            .get(name)
            .copied()
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

    /// The one way into the pipeline for every kind of load.
    fn run_load<'a>(
        &self,
        placement: &mut dyn Placement<'a>,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<LoadStats> {
        pipeline::load(
            self.source.as_ref(),
            &self.index,
            &self.options,
            &self.sinks,
            placement,
            progress,
        )
    }

    /// The sizes of the tensors `wanted` selects (`None` for the others), in file order.
    fn selected_sizes(&self, wanted: &mut dyn FnMut(&TensorInfo) -> bool) -> Vec<Option<u64>> {
        self.index
            .tensors
            .iter()
            .map(|t| wanted(t).then_some(t.nbytes))
            .collect()
    }

    /// Read and verify every block of every tensor, holding at most one chunk per worker.
    pub fn verify(&self) -> Result<LoadStats> {
        pipeline::verify_all(self.source.as_ref(), &self.index, &self.options, None)
    }

    /// [`Deserializer::verify`], reporting progress as [`Deserializer::load_with_progress`].
    pub fn verify_with_progress(&self, progress: &ProgressFn<'_>) -> Result<LoadStats> {
        pipeline::verify_all(
            self.source.as_ref(),
            &self.index,
            &self.options,
            Some(progress),
        )
    }

    /// Read one tensor into a new vector (verified as per the options).
    pub fn read_tensor(&self, index: usize) -> Result<Vec<u8>> {
        let tensor = self
            .tensor(index)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", self.name())))?;
        let mut bytes = vec![0u8; usize::try_from(tensor.nbytes).map_err(Error::invalid)?];
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
    /// 64-byte aligned, the pages faulted in by the workers as they write them (on huge
    /// pages unless [`ReadOptions::huge_pages`] turned them off), verified as per the
    /// options. The arena frees the
    /// memory when dropped.
    /// Progress is reported to `progress`, if given, as [`Deserializer::load_with_progress`]
    /// does.
    pub fn load_to_host(
        &self,
        wanted: &mut dyn FnMut(&TensorInfo) -> bool,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<HostArena> {
        let sizes = self.selected_sizes(wanted);
        let mut arena = HostArena::allocate(&sizes, self.options.huge_pages)?;
        let mut buffers = arena.buffers();
        let mut placement = |t: &TensorInfo| {
            Ok(buffers[t.index]
                .take()
                .map_or(Destination::Skip, Destination::Host))
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
        let sizes = self.selected_sizes(wanted);
        let arena = crate::cuda::CudaArena::allocate(device, &sizes)?;
        let mut placement = |t: &TensorInfo| {
            Ok(match arena.tensor(t.index) {
                Some((address, capacity)) => Destination::Cuda {
                    device,
                    address,
                    capacity,
                },
                None => Destination::Skip,
            })
        };
        self.run_load(&mut placement, progress)?;
        Ok(arena)
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
            pipeline::verify_lent(self.source.as_ref(), &self.index, &pending, &self.options)
                .map_err(|e| self.mapped_error(e))?;
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
            pipeline::verify_lent(
                self.source.as_ref(),
                &self.index,
                &[(tensor, stored)],
                &self.options,
            )
            .map_err(|e| self.mapped_error(e))?;
            self.view_verified[index].store(true, Ordering::Release);
        }
        self.check_mapped()?;
        Ok(bytes)
    }

    /// Tensor `index`'s bytes in place, unverified.
    fn raw_view(&self, index: usize) -> Result<&[u8]> {
        let tensor = self
            .tensor(index)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor #{index}", self.name())))?;
        if tensor.zero_fill {
            return Ok(&self.zero_pages()?[..tensor.nbytes as usize]);
        }
        self.mappable()?
            .view(tensor.offset, tensor.nbytes)
            .map_err(|e| e.in_tensor(&tensor.name))
    }

    /// The source's mapping capability, or why views are impossible.
    fn mappable(&self) -> Result<&dyn Mappable> {
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
