//! Files and directories private to their user, for everything the server
//! and the agent create: directories 0700, files 0600.
//!
//! The mode is set with `set_permissions` after creation, not only passed
//! to `open`/`mkdir`, so the process umask can neither widen nor narrow it.
//! A directory that already exists is left as it is (an operator may have
//! made it on purpose); a file this module writes is always made 0600.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory created here.
pub const DIR_MODE: u32 = 0o700;

/// Mode of every file created here.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents, each with mode 0700. Existing
/// directories are not changed.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut current = Some(path);
    while let Some(dir) = current {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            break;
        }
        missing.push(dir.to_owned());
        current = dir.parent();
    }
    for dir in missing.iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?,
            // Made by someone else meanwhile: theirs, left alone.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Opens `path` for writing, creating or truncating it, with mode 0600
/// (also when it existed with another mode).
pub fn create_file(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Writes `contents` to `path` with mode 0600.
pub fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = create_file(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes an existing file 0600, or creates it empty with that mode (for a
/// file another library then opens, such as a database).
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private_whatever_the_umask() {
        let root = tempfile::tempdir().unwrap();
        // An existing parent keeps its mode.
        std::fs::set_permissions(root.path(), Permissions::from_mode(0o755)).unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(dir)), DIR_MODE, "{dir}");
        }
        assert_eq!(mode(root.path()), 0o755);
        create_dir_all(&deep).unwrap();

        let file = deep.join("f");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write_file(&file, b"new").unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        assert_eq!(std::fs::read(&file).unwrap(), b"new");

        let db = deep.join("db");
        ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), FILE_MODE);
        std::fs::write(&db, "kept").unwrap();
        std::fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), FILE_MODE);
        assert_eq!(std::fs::read(&db).unwrap(), b"kept", "not truncated");
    }
}
