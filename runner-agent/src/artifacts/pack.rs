//! Packing the files `artifacts: paths` names into a tar archive, and
//! unpacking an archive into a workspace, refusing anything that would
//! leave it.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ring::digest::{Context, SHA256};

/// Why packing or unpacking failed. The message goes to the job's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A pattern does not parse.
    #[error("artifact pattern `{pattern}` is not a valid glob: {detail}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        detail: String,
    },
    /// A path would leave the workspace.
    #[error("{0}")]
    Escapes(String),
    /// The archive is over the size limit.
    #[error("the artifacts are over the limit of {limit} bytes (agent flag --max-artifact-bytes); make `paths` narrower or use `exclude`")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PackError {
    let what = what.into();
    move |source| PackError::Io { what, source }
}

/// A packed archive on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Files (and links) in it.
    pub entries: usize,
}

pub(crate) fn globset(patterns: &[String]) -> Result<GlobSet, PackError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let trimmed = pattern.trim_end_matches('/');
        let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
        let glob = Glob::new(trimmed).map_err(|e| PackError::Pattern {
            pattern: pattern.clone(),
            detail: e.kind().to_string(),
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| PackError::Pattern {
        pattern: patterns.join(", "),
        detail: e.to_string(),
    })
}

/// Whether `rel` or one of its parent directories matches `set` (a
/// pattern naming a directory takes everything under it).
pub(crate) fn matches(set: &GlobSet, rel: &Path) -> bool {
    rel.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .any(|a| set.is_match(a))
}

/// Where a link at `link` (relative to the workspace) pointing to `target`
/// lands, relative to the workspace; `None` when it leaves it.
fn link_destination(link: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    let base = link.parent().unwrap_or(Path::new(""));
    for component in base.components().chain(target.components()) {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A writer that hashes and counts what goes through it, and stops at a limit.
struct Hashing<W> {
    inner: W,
    hasher: Context,
    len: u64,
    limit: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "over the artifact size limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs the files of `workspace` matching `paths` but not `exclude` into
/// a tar archive at `out` (outside the workspace), at most `limit` bytes.
/// Symbolic links are stored as links, and refused if they point out of
/// the workspace. Blocking: run it on a blocking thread.
pub fn pack(
    workspace: &Path,
    paths: &[String],
    exclude: &[String],
    out: &Path,
    limit: u64,
) -> Result<Packed, PackError> {
    let include = globset(paths)?;
    let exclude = globset(exclude)?;
    let file = File::create(out).map_err(io_err(format!("cannot create {}", out.display())))?;
    let writer = Hashing {
        inner: BufWriter::with_capacity(256 << 10, file),
        hasher: Context::new(&SHA256),
        len: 0,
        limit,
    };
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    let mut entries = 0;
    let too_large = |e: &io::Error| e.kind() == io::ErrorKind::FileTooLarge;
    for entry in walkdir::WalkDir::new(workspace)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| PackError::Io {
            what: format!("cannot read the workspace {}", workspace.display()),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(workspace)
            .expect("walkdir stays under its root")
            .to_owned();
        if rel.as_os_str().is_empty() || entry.file_type().is_dir() {
            continue;
        }
        if !matches(&include, &rel) || matches(&exclude, &rel) {
            continue;
        }
        if entry.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())
                .map_err(io_err(format!("cannot read link {}", rel.display())))?;
            if link_destination(&rel, &target).is_none() {
                return Err(PackError::Escapes(format!(
                    "artifact `{}` is a symbolic link to `{}`, outside the workspace; refusing to upload it",
                    rel.display(),
                    target.display()
                )));
            }
        } else if !entry.file_type().is_file() {
            continue;
        }
        let added = tar.append_path_with_name(entry.path(), &rel);
        if let Err(e) = added {
            if too_large(&e) {
                return Err(PackError::TooLarge { limit });
            }
            return Err(PackError::Io {
                what: format!("cannot pack {}", rel.display()),
                source: e,
            });
        }
        entries += 1;
    }
    let writer = tar.into_inner().map_err(|e| {
        if too_large(&e) {
            PackError::TooLarge { limit }
        } else {
            PackError::Io {
                what: "cannot finish the archive".into(),
                source: e,
            }
        }
    })?;
    let Hashing {
        mut inner,
        hasher,
        len,
        ..
    } = writer;
    inner.flush().map_err(io_err("cannot write the archive"))?;
    Ok(Packed {
        path: out.to_owned(),
        size: len,
        sha256: hex::encode(hasher.finish().as_ref()),
        entries,
    })
}

/// Unpacks the tar archive `archive` into `workspace`. Refuses the whole
/// archive, before writing anything, if an entry would land outside the
/// workspace: an absolute path, a `..` component, a link (symbolic or
/// hard) pointing out, or a path through a link. Blocking.
pub fn unpack(archive: &Path, workspace: &Path) -> Result<usize, PackError> {
    let open = || File::open(archive).map_err(io_err(format!("cannot open {}", archive.display())));
    // First pass: check every entry.
    let mut links: Vec<PathBuf> = Vec::new();
    {
        let mut tar = tar::Archive::new(open()?);
        for entry in tar.entries().map_err(io_err("cannot read the archive"))? {
            let entry = entry.map_err(io_err("cannot read the archive"))?;
            let path = entry
                .path()
                .map_err(io_err("cannot read the archive"))?
                .into_owned();
            let safe = path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if !safe {
                return Err(PackError::Escapes(format!(
                    "archive entry `{}` would be written outside the workspace; refusing the archive",
                    path.display()
                )));
            }
            if let Some(link) = links.iter().find(|l| path.starts_with(l) && path != **l) {
                return Err(PackError::Escapes(format!(
                    "archive entry `{}` goes through the link `{}`; refusing the archive",
                    path.display(),
                    link.display()
                )));
            }
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(io_err("cannot read the archive"))?
                    .unwrap_or_default()
                    .into_owned();
                let lands = if kind.is_hard_link() {
                    // Hard link names are relative to the archive's root.
                    link_destination(Path::new("x"), &target)
                } else {
                    link_destination(&path, &target)
                };
                if lands.is_none() {
                    return Err(PackError::Escapes(format!(
                        "archive entry `{}` is a link to `{}`, outside the workspace; refusing the archive",
                        path.display(),
                        target.display()
                    )));
                }
                links.push(path);
            }
        }
    }
    // Second pass: unpack (tar's own checks stay on as a second line).
    let mut tar = tar::Archive::new(open()?);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    let mut count = 0;
    for entry in tar.entries().map_err(io_err("cannot read the archive"))? {
        let mut entry = entry.map_err(io_err("cannot read the archive"))?;
        let unpacked = entry
            .unpack_in(workspace)
            .map_err(io_err("cannot unpack the archive"))?;
        if !unpacked {
            return Err(PackError::Escapes(
                "an archive entry would be written outside the workspace; refusing the archive".into(),
            ));
        }
        count += 1;
    }
    Ok(count)
}

/// SHA-256 of a file, lowercase hex. Blocking.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn packs_what_the_patterns_name_and_unpacks_it_elsewhere() {
        let ws = tempfile::tempdir().unwrap();
        write(&ws.path().join("dist/app"), b"binary");
        write(&ws.path().join("dist/deep/tree/file.txt"), b"nested");
        write(&ws.path().join("dist/skip.log"), b"left out");
        write(&ws.path().join("src/main.rs"), b"not named");
        write(&ws.path().join("report.xml"), b"<xml/>");
        symlink("app", ws.path().join("dist/app-link")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("a.tar");
        let packed = pack(
            ws.path(),
            &["dist/".into(), "*.xml".into()],
            &["**/*.log".into()],
            &archive,
            1 << 20,
        )
        .unwrap();
        assert_eq!(packed.entries, 4);
        assert_eq!(packed.sha256, sha256_file(&archive).unwrap());
        assert_eq!(packed.size, std::fs::metadata(&archive).unwrap().len());

        let dest = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&archive, dest.path()).unwrap(), 4);
        assert_eq!(
            std::fs::read(dest.path().join("dist/deep/tree/file.txt")).unwrap(),
            b"nested"
        );
        assert_eq!(
            std::fs::read(dest.path().join("dist/app-link")).unwrap(),
            b"binary"
        );
        assert!(!dest.path().join("dist/skip.log").exists());
        assert!(!dest.path().join("src").exists());
    }

    #[test]
    fn a_link_pointing_out_of_the_workspace_is_not_uploaded() {
        let ws = tempfile::tempdir().unwrap();
        write(&ws.path().join("dist/ok"), b"ok");
        symlink("/etc/passwd", ws.path().join("dist/passwd")).unwrap();
        symlink("../../outside", ws.path().join("dist/up")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = pack(
            ws.path(),
            &["dist".into()],
            &[],
            &out.path().join("a.tar"),
            1 << 20,
        )
        .unwrap_err();
        assert!(err.to_string().contains("outside the workspace"), "{err}");
    }

    #[test]
    fn an_archive_over_the_limit_is_refused_naming_the_limit() {
        let ws = tempfile::tempdir().unwrap();
        write(&ws.path().join("big"), &vec![7u8; 100_000]);
        let out = tempfile::tempdir().unwrap();
        let err = pack(ws.path(), &["big".into()], &[], &out.path().join("a.tar"), 50_000).unwrap_err();
        assert!(matches!(err, PackError::TooLarge { limit: 50_000 }), "{err}");
    }

    /// A hand-made archive, as a hostile or broken server could send.
    fn archive_with(entries: &[(&str, tar::EntryType, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(File::create(file.path()).unwrap());
        for (path, kind, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            let data: &[u8] = if kind.is_file() { b"pwned" } else { b"" };
            header.set_size(data.len() as u64);
            // set_path refuses `..`; write the raw name as an attacker would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.finish().unwrap();
        file
    }

    #[test]
    fn zip_slip_and_links_out_are_refused_on_extraction() {
        let cases: Vec<Vec<(&str, tar::EntryType, &str)>> = vec![
            vec![("../escape.txt", tar::EntryType::Regular, "")],
            vec![("/tmp/abs.txt", tar::EntryType::Regular, "")],
            vec![("a/../../escape.txt", tar::EntryType::Regular, "")],
            vec![("link", tar::EntryType::Symlink, "/etc")],
            vec![("dir/link", tar::EntryType::Symlink, "../../..")],
            vec![
                ("link", tar::EntryType::Symlink, "sub"),
                ("link/file", tar::EntryType::Regular, ""),
            ],
            vec![("hard", tar::EntryType::Link, "../outside")],
        ];
        for entries in cases {
            let archive = archive_with(&entries);
            let root = tempfile::tempdir().unwrap();
            let ws = root.path().join("ws");
            std::fs::create_dir(&ws).unwrap();
            let err = unpack(archive.path(), &ws).expect_err(&format!("{entries:?} must be refused"));
            assert!(err.to_string().contains("refusing the archive"), "{err}");
            // Nothing was written, inside or out.
            assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0, "{entries:?}");
            assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "{entries:?}");
        }
    }
}
