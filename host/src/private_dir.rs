//! Directories only the node's user may enter: the data dir, the KV store's folder, the
//! agents' private files. A leaf module, so the store and the agents can make them without
//! depending on the node.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of a directory the node creates for itself: the owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Bits that give other users any access to a directory (list, enter, write).
pub const OPEN_TO_OTHERS: u32 = 0o077;

/// Creates `dir` and its missing parents owner-only. The mode is given at creation, not by
/// a chmod after, so a new directory is never open to others; an existing one is left as
/// it is.
pub fn create_missing(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Like [`create_missing`], and takes group and other access away from `dir` if it already
/// existed with them (for directories that are the node's own, such as an agent's files).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    create_missing(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & OPEN_TO_OTHERS != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !OPEN_TO_OTHERS))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_private_dir_that_was_open_to_others_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("files");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir.join("agent")).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!((mode_of(&dir), mode_of(&dir.join("agent"))), (0o700, 0o700));
    }
}
