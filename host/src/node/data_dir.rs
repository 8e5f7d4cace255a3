//! The node's data dir holds every agent's state: the KV store with its snapshots, the
//! agents' private files, the control socket. Only the node's own user may read or change
//! it, so it is created owner-only (0700), a data dir other users can write to is refused
//! (they could replace the store or plant files an agent then reads), and one they can read
//! is warned about at start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Bits that let other users (group or other) write to a directory.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// A data dir the node cannot use.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create the data dir {}: {source}; set [node] data_dir or --data-dir to a writable folder", .dir.display())]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect the data dir {}: {source}", .dir.display())]
    Inspect {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the data dir {} is not a directory; set [node] data_dir or --data-dir to a folder", .dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("the data dir {} has mode {mode:04o}: other users can write to it, so they could replace the node's KV store or an agent's files; run `chmod go-w {}` (better: `chmod 700 {}`) and start again", .dir.display(), .dir.display(), .dir.display())]
    WritableByOthers { dir: PathBuf, mode: u32 },
}

/// Creates the data dir owner-only if it is missing, and checks an existing one: refused
/// when others can write to it, a warning when they can read or enter it. Its mode is
/// returned for tests and logs.
pub fn prepare(dir: &Path) -> Result<u32, DataDirError> {
    // With the mode given at creation (not a chmod after), there is no moment at which the
    // new directory is open to others; missing parents are created owner-only too.
    crate::private_dir::create_missing(dir).map_err(|source| DataDirError::Create {
        dir: dir.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(dir).map_err(|source| DataDirError::Inspect {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & WRITABLE_BY_OTHERS != 0 {
        return Err(DataDirError::WritableByOthers {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    if mode & crate::private_dir::OPEN_TO_OTHERS != 0 {
        tracing::warn!(
            "the data dir {} has mode {mode:04o}: other users can list or enter it. The node creates its files owner-only (kv.redb 0600, files/ 0700), but `chmod 700 {}` keeps others out of it entirely",
            dir.display(),
            dir.display()
        );
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_data_dir_and_its_missing_parents_are_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("parent/data");
        assert_eq!(prepare(&dir).unwrap(), 0o700);
        assert_eq!(mode_of(&tmp.path().join("parent")), 0o700);
    }

    #[test]
    fn a_data_dir_others_can_write_to_is_refused_naming_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = prepare(tmp.path()).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "the data dir {0} has mode {mode:04o}: other users can write to it, so they could replace the node's KV store or an agent's files; run `chmod go-w {0}` (better: `chmod 700 {0}`) and start again",
                    tmp.path().display()
                )
            );
        }
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            prepare(tmp.path()).unwrap(),
            0o755,
            "readable: a warning only"
        );
    }
}
