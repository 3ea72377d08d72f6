//! The atomic-file toolkit every writer uses: a temporary file beside the target that has
//! no name (or a locked one) until it is complete, renamed over the target and made
//! durable; the removal of what killed writers left; the check that a target is a file
//! plaid may replace.

use std::fs::{File, Permissions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// The file a serializer writes before `finish` puts it in place. Where the file system
/// allows (`O_TMPFILE`: ext4, xfs, btrfs, tmpfs), it has no name until then, so a writer
/// killed at any point leaves nothing behind; `persist` links it under a unique locked
/// name beside the target and renames that over the target. Elsewhere it is a named,
/// locked temporary file ([`locked_temporary`]) that the next write removes if its writer
/// died.
pub(crate) enum Temporary {
    /// Unnamed, in `dir`.
    Unnamed {
        file: File,
        dir: std::path::PathBuf,
        prefix: String,
    },
    /// Named; removed when dropped unless persisted.
    Named(NamedTempFile),
}

impl Temporary {
    /// A new temporary file in `dir` (names, where it gets one, start with `prefix`).
    pub(crate) fn new(dir: &Path, prefix: &str) -> Result<Temporary> {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o666)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) => Ok(Temporary::Unnamed {
                file,
                dir: dir.to_path_buf(),
                prefix: prefix.to_owned(),
            }),
            // Not supported by this kernel or file system: a named one.
            Err(_) => locked_temporary(dir, prefix).map(Temporary::Named),
        }
    }

    /// The open file.
    pub(crate) fn as_file(&self) -> &File {
        match self {
            Temporary::Unnamed { file, .. } => file,
            Temporary::Named(temp) => temp.as_file(),
        }
    }

    /// Put the file at `target`, replacing what is there.
    pub(crate) fn persist(self, target: &Path) -> std::io::Result<()> {
        match self {
            Temporary::Named(temp) => temp.persist(target).map(drop).map_err(|e| e.error),
            Temporary::Unnamed { file, dir, prefix } => {
                // Locked before it has a name, so the next writer's cleanup never takes
                // it for a dead writer's file in the moment between link and rename.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
                // SAFETY: flock on a descriptor `file` owns; no memory is involved.
                if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let linked = link_unnamed(&file, &dir, &prefix)?;
                std::fs::rename(&linked, target).inspect_err(|_| {
                    let _ = std::fs::remove_file(&linked);
                })
            }
        }
    }
}

/// Give an `O_TMPFILE` file the name `DIR/PREFIX<random>.partial` and return it.
fn link_unnamed(file: &File, dir: &Path, prefix: &str) -> std::io::Result<std::path::PathBuf> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::ffi::OsStrExt;
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{fd}"))?;
    let mut last = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    for attempt in 0..16u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let name = dir.join(format!("{prefix}{:016x}.partial", hasher.finish()));
        let c_name = std::ffi::CString::new(name.as_os_str().as_bytes())?;
        // SAFETY: both paths are NUL-terminated strings that live through the call; the
        // descriptor is open. Through /proc (no privilege needed), else AT_EMPTY_PATH
        // (which needs CAP_DAC_READ_SEARCH) where /proc is not mounted.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                libc::AT_FDCWD,
                c_name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            ) == 0
                || libc::linkat(
                    fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    c_name.as_ptr(),
                    libc::AT_EMPTY_PATH,
                ) == 0
        };
        if linked {
            return Ok(name);
        }
        last = std::io::Error::last_os_error();
        if last.kind() != std::io::ErrorKind::AlreadyExists {
            break;
        }
    }
    Err(last)
}

/// A new temporary file `PREFIX<random>.partial` in `dir`, locked (`flock`) for as long as
/// it is open: the lock tells a live writer's temporary file from one a killed writer left,
/// which [`remove_stale_temporaries`] removes.
pub(crate) fn locked_temporary(dir: &Path, prefix: &str) -> Result<NamedTempFile> {
    let temp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".partial")
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
    // SAFETY: flock on a descriptor the NamedTempFile owns; no memory is involved.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(temp.as_file()),
            libc::LOCK_EX,
        )
    };
    if locked != 0 {
        return Err(Error::io(
            format!("locking {}", temp.path().display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(temp)
}

/// Remove the temporary files `PREFIX*.partial` in `dir` that no process holds locked: what
/// writers killed before they finished left behind (a live writer keeps its own locked).
/// Best effort: a file that cannot be opened or locked is left alone.
pub(crate) fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) || !name.ends_with(".partial") {
            continue;
        }
        let path = entry.path();
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // Nobody holds it: its writer is gone. Removed while locked, so a writer that
            // would start on the same name now cannot be confused with it.
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// An error unless `target` is absent, a regular file, or a symlink (which the new file
/// replaces: the link itself, never what it points to). A write never replaces a FIFO, a
/// device, a socket or a directory, even run as root (`plaid convert x /dev/null`).
pub(crate) fn check_target(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("checking {}", target.display()), e)),
        Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
        Ok(m) => Err(Error::io(
            format!("writing {}", target.display()),
            std::io::Error::new(
                if m.is_dir() {
                    std::io::ErrorKind::IsADirectory
                } else {
                    std::io::ErrorKind::InvalidInput
                },
                "not a regular file: plaid replaces only regular files (or symlinks)",
            ),
        )),
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Make a rename in `path`'s directory durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}
