//! Reading a file someone handed the host (a component, a manifest, the node config) with a
//! bound on its size, decided before any of it is read.
//!
//! A path can name anything: a multi-GiB file, `/dev/zero` (endless), a FIFO (blocks the
//! reader until a writer comes), a directory. `std::fs::read` would try to hold all of it
//! in memory. Here the file is opened without blocking, must be a regular file, must not
//! claim more than the limit, and is read through `take(limit + 1)`, so a file that grows
//! while it is read is refused too instead of being read to its new end.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read. Callers wrap it with what the file was and the setting that
/// bounds it, so the message can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A device, FIFO, socket or directory: nothing a size can be known of in advance.
    #[error("it is not a regular file (it is {kind})")]
    NotRegular { kind: &'static str },
    /// Bigger than the limit: `size` from its metadata, or `limit + 1` when it grew past
    /// the limit while it was being read.
    #[error("it is {} ({size} bytes), more than the limit of {} ({limit} bytes){}",
        crate::units::format_bytes(*size), crate::units::format_bytes(*limit),
        if *grew { ", which it grew past while being read" } else { "" })]
    TooLarge { size: u64, limit: u64, grew: bool },
}

/// The whole of the regular file at `path`, if it holds at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes
    // nothing for a regular file. The type is checked on the opened file (fstat), so the
    // path cannot be swapped between the check and the read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(BoundedReadError::NotRegular { kind: kind(&meta) });
    }
    if meta.len() > limit {
        return Err(BoundedReadError::TooLarge {
            size: meta.len(),
            limit,
            grew: false,
        });
    }
    read_at_most(file, meta.len(), limit)
}

/// Reads `file` (`expected` bytes long when it was checked) through `take(limit + 1)`.
fn read_at_most(file: File, expected: u64, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(BoundedReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
            grew: true,
        });
    }
    Ok(bytes)
}

/// The UTF-8 text of the regular file at `path`, if it holds at most `limit` bytes.
pub fn read_to_string(path: &Path, limit: u64) -> Result<String, BoundedReadError> {
    let bytes = read(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        BoundedReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text ({e})"),
        ))
    })
}

/// What a non-regular file is, in words.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_within_the_limit_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read(&path, 5).unwrap(), b"12345");
        assert_eq!(read_to_string(&path, 5).unwrap(), "12345");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_by_its_size_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        // 1 TiB that takes no disk space: reading it would take minutes and all memory.
        File::create(&path).unwrap().set_len(1 << 40).unwrap();
        let started = std::time::Instant::now();
        let e = read(&path, 1 << 20).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            e.to_string(),
            "it is 1TiB (1099511627776 bytes), more than the limit of 1MiB (1048576 bytes)"
        );
    }

    #[test]
    fn a_file_that_grew_past_the_limit_while_it_was_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        // Checked at 10 bytes, 100 by the time it is read.
        let e = read_at_most(File::open(&path).unwrap(), 10, 10).unwrap_err();
        assert!(
            matches!(
                e,
                BoundedReadError::TooLarge {
                    size: 11,
                    limit: 10,
                    grew: true
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RWXU).unwrap();
        for (path, kind) in [
            (Path::new("/dev/zero"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
        ] {
            let e = read(path, 1 << 20).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("it is not a regular file (it is {kind})"),
                "{}",
                path.display()
            );
        }
    }
}
