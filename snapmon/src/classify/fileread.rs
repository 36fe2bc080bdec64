//! Classify stage, file access: every read the classifier makes of a store file opens it
//! here, so the reads can later move off the event loop as one unit. Opened without
//! following a final symlink and without blocking, and only a regular file or block device
//! is read: a FIFO or character device planted under an image's name never stalls the agent.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// What was found at a path instead of a readable file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The final component is a symlink (its target, when readable).
    #[error("a symlink to {0}")]
    Symlink(String),
    /// A FIFO, socket, character device or directory: never read.
    #[error("not a regular file or block device ({0})")]
    NotRegular(&'static str),
}

impl OpenError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, OpenError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        match e {
            OpenError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "other"
    }
}

/// Open `path` read-only for classification: `O_NONBLOCK|O_NOFOLLOW`, then an fstat check.
pub fn open(path: &Path) -> Result<File, OpenError> {
    open_with(path, false)
}

/// [`open`], read-write when `write` (recover's in-place fix): the same refusals.
pub fn open_with(path: &Path, write: bool) -> Result<File, OpenError> {
    // Refuse what lstat already shows without opening it: opening a FIFO, even without
    // blocking, completes a writer's pending open, and opening a device can have effects.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let ft = m.file_type();
        if !(ft.is_file() || ft.is_block_device() || ft.is_symlink()) {
            return Err(OpenError::NotRegular(kind_name(ft)));
        }
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path);
    let f = match f {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink: ELOOP. Say where it points.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let to = std::fs::read_link(path)
                .map(|t| crate::event::Bytes::from_path(&t).display())
                .unwrap_or_else(|_| "?".into());
            return Err(OpenError::Symlink(to));
        }
        Err(e) => return Err(e.into()),
    };
    let ft = f.metadata()?.file_type();
    if ft.is_file() || ft.is_block_device() {
        Ok(f)
    } else {
        Err(OpenError::NotRegular(kind_name(ft)))
    }
}

/// LVM writes PVs with O_DIRECT; a buffered read racing such a write can leave stale pages
/// in the device's page cache for good. Drop them before reading a block device.
pub fn drop_stale_pages(f: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if f.metadata()?.file_type().is_block_device() {
        // SAFETY: an advisory call on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

/// Up to `n` bytes from the current position (the start, for a fresh descriptor).
pub fn prefix_of(f: &mut File, n: u64) -> io::Result<Vec<u8>> {
    drop_stale_pages(f)?;
    let mut buf = Vec::new();
    f.by_ref().take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Up to `n` bytes from the start of the file at `path`.
pub fn read_prefix(path: &Path, n: u64) -> io::Result<Vec<u8>> {
    prefix_of(&mut open(path)?, n)
}

/// `len` bytes at `off` (fewer at end of file).
pub fn read_at(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_symlinks_and_dirs_are_refused_without_blocking() {
        let d = crate::testutil::TmpDir::new("fileread");
        let fifo = d.path("vm.qcow2");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would hang here.
        assert!(matches!(open(&fifo), Err(OpenError::NotRegular("fifo"))));
        std::fs::write(d.path("real"), b"QFI\xfb").unwrap();
        std::os::unix::fs::symlink(d.path("real"), d.path("link")).unwrap();
        match open(&d.path("link")) {
            Err(OpenError::Symlink(to)) => assert!(to.ends_with("/real"), "{to}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            open(&d.0),
            Err(OpenError::NotRegular("directory"))
        ));
        assert!(open(&d.path("missing")).unwrap_err().is_not_found());
        assert_eq!(read_prefix(&d.path("real"), 2).unwrap(), b"QF");
        let f = open(&d.path("real")).unwrap();
        assert_eq!(read_at(&f, 2, 10).unwrap(), b"I\xfb");
    }
}
