use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{past_end, Source};
use crate::error::{Error, Result};

/// A local file read with `pread`.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    name: String,
    len: u64,
}

impl FileSource {
    /// Open `path` for reading.
    pub fn open(path: &Path) -> Result<FileSource> {
        let name = path.display().to_string();
        let opening = |e| Error::io(format!("opening {name}"), e);
        // Checked before opening: opening a FIFO would block until a writer appears.
        let kind = std::fs::metadata(path).map_err(opening)?.file_type();
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
        let file = File::open(path).map_err(opening)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading the size of {name}"), e))?;
        Ok(FileSource {
            file,
            name,
            len: meta.len(),
        })
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                // The file shrank after it was opened.
                Ok(0) => return Err(past_end(&self.name, at, offset, buf.len())),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        format!(
                            "reading {} bytes at offset {at} of {}",
                            buf.len() - done,
                            self.name
                        ),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}
