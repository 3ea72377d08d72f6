use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

use super::map::Mapping;
use super::{past_end, slice_range, BytesFn, Mappable, Source, SourceHints};
use crate::error::{Error, Result};

/// Offsets, lengths and addresses of `O_DIRECT` reads are multiples of this.
const DIRECT_ALIGN: usize = 4096;
/// Size of the per-thread aligned bounce buffer for destinations that are not aligned.
const BOUNCE_LEN: usize = 8 << 20;
/// Reads shorter than this use `pread` even when copying from the mapping is on: for
/// headers and tiny tensors a system call is cheaper than faulting pages in.
const MAP_COPY_MIN: usize = 64 << 10;

thread_local! {
    /// Reused by every direct read on this thread that needs it; freed with the thread.
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A local file, read by copying out of a guarded memory map of it (the default), with
/// `pread`, or with `O_DIRECT` reads that bypass the page cache.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    /// A second descriptor opened with `O_DIRECT`, where the file system allows it.
    direct: Option<File>,
    /// Whether reads copy out of the mapping.
    copy_from_map: bool,
    /// The file mapped on first use; `None` inside where it cannot be mapped.
    map: OnceLock<Option<Mapping>>,
    name: String,
    len: u64,
}

impl FileSource {
    /// Open `path` for buffered reading.
    pub fn open(path: &Path) -> Result<FileSource> {
        FileSource::open_with(path, false)
    }

    /// Open `path`; with `direct`, aligned reads bypass the page cache (`O_DIRECT`) where
    /// the file system supports it, and fall back to buffered reads where it does not.
    pub fn open_with(path: &Path, direct: bool) -> Result<FileSource> {
        let mut source = FileSource::open_buffered(path)?;
        if direct {
            // Refused (EINVAL) by file systems without direct I/O, such as tmpfs. Opened
            // without blocking and kept only if it is the very file opened first (the path
            // may name something else by now).
            let same = |f: &File| {
                use std::os::unix::fs::MetadataExt;
                match (f.metadata(), source.file.metadata()) {
                    (Ok(a), Ok(b)) => a.is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                }
            };
            source.direct = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT | libc::O_NONBLOCK)
                .open(path)
                .ok()
                .filter(same);
        }
        Ok(source)
    }

    /// Copy reads out of a memory map of the file (on by default) instead of `pread`.
    /// Ignored for reads that go through `O_DIRECT`.
    pub fn copy_from_map(mut self, on: bool) -> FileSource {
        self.copy_from_map = on;
        self
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The file's guarded mapping, made on first use.
    fn mapping(&self) -> Option<&Mapping> {
        self.map
            .get_or_init(|| Mapping::new(&self.file, self.len))
            .as_ref()
    }

    /// The mapping's bytes at `offset..offset + len`, if they are mapped, trusted and all in
    /// the page cache (a cold range is read with `pread`).
    fn mapped_range(&self, offset: u64, len: usize) -> Option<(&Mapping, usize)> {
        let map = self.mapping()?;
        let start = usize::try_from(offset).ok()?;
        if start.checked_add(len)? > map.len() || map.damaged() || !map.resident(start, len) {
            return None;
        }
        Some((map, start))
    }

    /// Whether the file still reaches `end`. Bytes of a mapping past the file's end read
    /// as zeros within the last page (and fault beyond it), so every copy out of the
    /// mapping is followed by this check.
    fn still_reaches(&self, end: u64) -> bool {
        self.file.metadata().is_ok_and(|m| m.len() >= end)
    }

    fn shrank(&self, offset: u64, len: usize) -> Error {
        let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        Error::format(
            &self.name,
            offset,
            format!(
                "the file shrank to {now} bytes while {len} bytes at offset {offset} were read from its mapping"
            ),
        )
    }

    fn open_buffered(path: &Path) -> Result<FileSource> {
        let name = path.display().to_string();
        let opening = |e| Error::io(format!("opening {name}"), e);
        // Opened without blocking (opening a FIFO would wait for a writer forever), then its
        // type checked on the descriptor itself: checking the path first and opening it
        // after would race with whoever replaces the path in between.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(opening)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading the size of {name}"), e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            return Err(opening(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            )));
        }
        if !kind.is_file() {
            return Err(opening(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        // Reads of a regular file never block anyway; the flag is cleared so that the
        // descriptor behaves as any other.
        // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns; no memory is involved.
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok(FileSource {
            file,
            direct: None,
            copy_from_map: true,
            map: OnceLock::new(),
            name,
            len: meta.len(),
        })
    }

    /// One buffered `pread` (retried when interrupted): 0 at the end of the file.
    fn read_buffered(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(buf.len(), offset, e)),
            }
        }
    }

    /// `O_DIRECT` reads: straight into `buf` where it is page-aligned, else through the
    /// thread's aligned bounce buffer. Whatever is left at an unaligned offset (the tail
    /// at the end of the file) is read buffered. `Ok(false)`: the file system refused
    /// direct I/O before anything was read; the caller reads buffered instead.
    fn read_direct(&self, direct: &File, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            if !at.is_multiple_of(DIRECT_ALIGN as u64) {
                super::read_exact(self, at, &mut buf[done..])?;
                return Ok(true);
            }
            let dest = &mut buf[done..];
            let result = if (dest.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
                && dest.len() >= DIRECT_ALIGN
            {
                let whole = dest.len() / DIRECT_ALIGN * DIRECT_ALIGN;
                direct.read_at(&mut dest[..whole], at)
            } else {
                BOUNCE.with(|bounce| {
                    let mut bounce = bounce.borrow_mut();
                    if bounce.len() < BOUNCE_LEN + DIRECT_ALIGN {
                        bounce.resize(BOUNCE_LEN + DIRECT_ALIGN, 0);
                    }
                    let skip = bounce.as_ptr().align_offset(DIRECT_ALIGN);
                    let want = dest.len().min(BOUNCE_LEN);
                    let aligned =
                        &mut bounce[skip..skip + want.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN];
                    let n = direct.read_at(aligned, at)?;
                    let n = n.min(want);
                    dest[..n].copy_from_slice(&aligned[..n]);
                    Ok(n)
                })
            };
            match result {
                Ok(0) => return Err(past_end(&self.name, at, offset, buf.len())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && done == 0 => return Ok(false),
                Err(e) => return Err(self.read_error(buf.len() - done, at, e)),
            }
        }
        Ok(true)
    }

    fn read_error(&self, len: usize, at: u64, e: io::Error) -> Error {
        Error::io(
            format!("reading {len} bytes at offset {at} of {}", self.name),
            e,
        )
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn hints(&self) -> SourceHints {
        SourceHints::local()
    }

    /// With `O_DIRECT`, reads at aligned offsets fill the whole buffer (aligned requests,
    /// the unaligned tail buffered); otherwise one `pread`, which may be short.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if let Some(direct) = &self.direct {
            let end = offset.saturating_add(buf.len() as u64);
            if offset.is_multiple_of(DIRECT_ALIGN as u64)
                && end <= self.len
                && self.read_direct(direct, offset, buf)?
            {
                return Ok(buf.len());
            }
        }
        self.read_buffered(offset, buf)
    }

    fn mappable(&self) -> Option<&dyn Mappable> {
        Some(self)
    }
}

impl Mappable for FileSource {
    fn with_bytes(&self, offset: u64, len: usize, f: &mut BytesFn<'_>) -> Option<Result<()>> {
        if self.direct.is_some() || !self.copy_from_map || len < MAP_COPY_MIN {
            return None;
        }
        let (map, start) = self.mapped_range(offset, len)?;
        let result = f(&map.bytes()[start..start + len]);
        map.release(start, len);
        if map.damaged() || !self.still_reaches(offset + len as u64) {
            // The file shrank under the mapping: the caller reads instead, which reports
            // the truncation with the offset where the data now ends.
            return None;
        }
        Some(result)
    }

    fn view(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let map = self.mapping().ok_or_else(|| {
            Error::Unsupported(format!("{}: this file cannot be memory-mapped", self.name))
        })?;
        self.check_mapped()?;
        // A file already shorter than when it was opened would fault on access.
        let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if now < self.len {
            return Err(self.shrank(0, map.len()));
        }
        slice_range(map.bytes(), offset, len)
            .ok_or_else(|| past_end(&self.name, map.len() as u64, offset, len as usize))
    }

    fn check_mapped(&self) -> Result<()> {
        match self.map.get() {
            Some(Some(map)) if map.damaged() => Err(self.shrank(0, map.len())),
            _ => Ok(()),
        }
    }
}
