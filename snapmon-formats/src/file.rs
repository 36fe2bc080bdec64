//! Opening a store file to read it: without following a final symlink and without blocking,
//! and only a regular file or block device, so a FIFO or character device planted under an
//! image's name never stalls the reader.

use std::{
    fs::File,
    io,
    os::unix::ffi::OsStrExt,
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
                .map(|t| crate::text::escape_bytes(t.as_os_str().as_bytes()))
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
