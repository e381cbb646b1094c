//! Atomic, no-clobber file writes with the right mode from the first byte.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::PkiError;

/// Mode of private keys.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of certificates, public keys and config files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories this crate creates (they hold private keys).
pub(crate) const DIR_MODE: u32 = 0o700;

/// Whether a file holds a secret; decides its mode and how a clash is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A private key: mode 0600, a clash is [`PkiError::ExistingKey`].
    Secret,
    /// Anything else: mode 0644, a clash is [`PkiError::ExistingFile`].
    Public,
}

impl Kind {
    fn mode(self) -> u32 {
        match self {
            Kind::Secret => SECRET_MODE,
            Kind::Public => PUBLIC_MODE,
        }
    }

    /// The error for `path` already existing.
    pub(crate) fn exists_error(self, path: &Path) -> PkiError {
        match self {
            Kind::Secret => PkiError::ExistingKey(path.to_path_buf()),
            Kind::Public => PkiError::ExistingFile(path.to_path_buf()),
        }
    }
}

/// Fails with the matching "refusing to replace" error when something (even a dangling symlink)
/// is at `path`.
pub(crate) fn ensure_absent(path: &Path, kind: Kind) -> Result<(), PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(kind.exists_error(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PkiError::io("check", path, e)),
    }
}

/// Creates `dir` and its missing parents with mode 0700. Returns the topmost directory it created,
/// if any, so that a failed operation can remove what it made.
pub(crate) fn create_dir_all(dir: &Path) -> Result<Option<PathBuf>, PkiError> {
    let mut first_missing = None;
    let mut probe = Some(dir);
    while let Some(p) = probe {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        first_missing = Some(p.to_path_buf());
        probe = p.parent();
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| PkiError::io("create directory", dir, e))?;
    Ok(first_missing)
}

/// A temporary file that is deleted when dropped unless it was [`Temp::persist`]ed.
struct Temp {
    path: PathBuf,
    done: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `contents` to the new file `path`, atomically and without replacing anything.
///
/// The bytes go to a temporary file in the same directory, created with the final mode (so a
/// private key is never readable by others, not even briefly), synced, then hard-linked to `path`.
/// Unlike `rename`, `link` fails when `path` appeared in the meantime, so a concurrent writer's
/// file is never clobbered. On file systems without hard links it falls back to `rename` after
/// checking that `path` is absent. Either way readers see no file or the whole file.
pub(crate) fn write_new(path: &Path, contents: &[u8], kind: Kind) -> Result<(), PkiError> {
    let (parent, temp) = temp_file(path, contents, kind)?;
    match fs::hard_link(&temp.path, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(kind.exists_error(path)),
        Err(_) => {
            ensure_absent(path, kind)?;
            fs::rename(&temp.path, path).map_err(|e| PkiError::io("create", path, e))?;
        }
    }
    // After a link the temporary name still exists and the guard removes it; after a rename it is
    // already gone and the removal is a harmless no-op.
    drop(temp);
    sync_dir(&parent)
}

/// The directory of `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A new uniquely named file beside `path` (`.NAME.PID.N.SUFFIX`), not yet created.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}.{}.{n}.{suffix}", std::process::id()))
}

/// Writes `contents` into a new temporary file beside `path`, with the final mode, synced.
fn temp_file(path: &Path, contents: &[u8], kind: Kind) -> Result<(PathBuf, Temp), PkiError> {
    let (file, temp) = loop {
        let temp_path = sibling(path, "tmp");
        match OpenOptions::new().write(true).create_new(true).mode(kind.mode()).open(&temp_path) {
            Ok(f) => break (f, Temp { path: temp_path, done: false }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(PkiError::io("create", temp_path, e)),
        }
    };
    fill(file, contents, kind).map_err(|e| PkiError::io("write", &temp.path, e))?;
    Ok((parent_of(path), temp))
}

/// Writes `contents` to `path`, atomically replacing what is there (readers see the old file or
/// the new one, never a mix). Used for the files that change over a PKI's life: the CRL, the
/// certificate index, and a key being encrypted.
pub(crate) fn replace(path: &Path, contents: &[u8], kind: Kind) -> Result<(), PkiError> {
    let mut r = Replacements::default();
    r.stage(path.to_path_buf(), contents, kind)?;
    r.commit()
}

/// Several files replaced together: all are written to temporary files first, then renamed into
/// place one after the other; if a rename fails, the files already replaced get their old
/// contents back (kept as hard-linked backups until the end), so it is all or nothing short of a
/// crash in the middle of the renames.
#[derive(Default)]
pub(crate) struct Replacements {
    staged: Vec<(PathBuf, Temp)>,
}

impl Replacements {
    /// Writes the new contents of `path` to a temporary file beside it.
    pub(crate) fn stage(&mut self, path: PathBuf, contents: &[u8], kind: Kind) -> Result<(), PkiError> {
        let (_, temp) = temp_file(&path, contents, kind)?;
        self.staged.push((path, temp));
        Ok(())
    }

    /// Renames every staged file into place, or none.
    pub(crate) fn commit(mut self) -> Result<(), PkiError> {
        // (target, backup of the old file if there was one)
        let mut done: Vec<(PathBuf, Option<Temp>)> = Vec::new();
        let result = (|| {
            for (path, temp) in &mut self.staged {
                let backup = match fs::symlink_metadata(&*path) {
                    Ok(_) => {
                        let b = sibling(path, "old");
                        fs::hard_link(&*path, &b).map_err(|e| PkiError::io("back up", &*path, e))?;
                        Some(Temp { path: b, done: false })
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(PkiError::io("check", &*path, e)),
                };
                fs::rename(&temp.path, &*path).map_err(|e| PkiError::io("replace", &*path, e))?;
                temp.done = true;
                done.push((path.clone(), backup));
            }
            Ok(())
        })();
        if result.is_err() {
            for (path, backup) in done.iter_mut().rev() {
                match backup {
                    Some(b) => {
                        // Restored, or (if even that fails) the backup stays for the administrator.
                        let _ = fs::rename(&b.path, &*path);
                        b.done = true;
                    }
                    None => {
                        let _ = fs::remove_file(&*path);
                    }
                }
            }
        }
        let dirs: std::collections::BTreeSet<PathBuf> = self.staged.iter().map(|(p, _)| parent_of(p)).collect();
        // Dropping `done` removes the backups of a successful commit.
        drop(done);
        result?;
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// Writes and syncs the file, and sets its exact mode (the umask may have narrowed it; a public
/// file should still be 0644, and a key exactly 0600).
fn fill(mut file: File, contents: &[u8], kind: Kind) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(kind.mode()))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes the directory entries created in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| PkiError::io("sync directory", dir, e))
}

/// Reads a whole UTF-8 file; a missing file is reported by `missing`.
pub(crate) fn read_to_string(path: &Path, missing: impl FnOnce(PathBuf) -> PkiError) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => missing(path.to_path_buf()),
        _ => PkiError::io("read", path, e),
    })
}

/// Files written so far by one operation, removed again if the operation fails part-way, so that
/// it either writes everything or nothing.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    written: Vec<PathBuf>,
    created_dir: Option<PathBuf>,
    committed: bool,
}

impl Batch {
    /// A batch that also removes `created_dir` (if it is then empty) on failure.
    pub(crate) fn new(created_dir: Option<PathBuf>) -> Self {
        Self { written: Vec::new(), created_dir, committed: false }
    }

    /// Writes one new file, remembering it for the rollback.
    pub(crate) fn write(&mut self, path: PathBuf, contents: &[u8], kind: Kind) -> Result<(), PkiError> {
        write_new(&path, contents, kind)?;
        self.written.push(path);
        Ok(())
    }

    /// Creates a directory (mode 0700) inside the batch's directory, if missing.
    pub(crate) fn create_dir(&mut self, path: &Path) -> Result<(), PkiError> {
        let created = create_dir_all(path)?;
        if self.created_dir.is_none() {
            self.created_dir = created;
        }
        Ok(())
    }

    /// Keeps everything and returns the files written, in order.
    pub(crate) fn commit(mut self) -> Vec<PathBuf> {
        self.committed = true;
        std::mem::take(&mut self.written)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for path in self.written.iter().rev() {
            let _ = fs::remove_file(path);
        }
        if let Some(dir) = &self.created_dir {
            // Only empty directories go: remove_dir fails on anything we did not write.
            remove_empty_dirs(dir);
        }
    }
}

/// Removes `dir` and the empty directories below it, bottom-up; leaves anything non-empty.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn write_new_never_replaces_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        write_new(&path, b"first", Kind::Secret).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_new(&path, b"second", Kind::Secret).unwrap_err();
        assert!(matches!(&err, PkiError::ExistingKey(p) if p == &path), "{err:?}");
        let err = write_new(&path, b"second", Kind::Public).unwrap_err();
        assert!(matches!(&err, PkiError::ExistingFile(p) if p == &path), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names(tmp.path()), ["k"]);
    }

    #[test]
    fn unfinished_batch_removes_what_it_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("theirs"), "x").unwrap();
        let dir = tmp.path().join("new").join("deeper");
        {
            let mut batch = Batch::new(create_dir_all(&dir).unwrap());
            batch.write(dir.join("a"), b"a", Kind::Public).unwrap();
            batch.create_dir(&dir.join("sub")).unwrap();
            batch.write(dir.join("sub").join("b"), b"b", Kind::Secret).unwrap();
            // Dropped without commit, as on an error return.
        }
        assert_eq!(names(tmp.path()), ["theirs"]);

        let mut batch = Batch::new(create_dir_all(&dir).unwrap());
        batch.write(dir.join("a"), b"a", Kind::Public).unwrap();
        assert_eq!(batch.commit(), [dir.join("a")]);
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"a");
    }
}
