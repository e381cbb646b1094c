//! The served directory: path confinement and the file system calls behind the SFTP requests.
//!
//! Confinement is done by resolving every path ourselves, one component at a time, from the canonical root:
//! `..` may not climb above `/` (refused, like a path outside the root), and a symbolic link is followed only
//! when its canonical target is inside the root (otherwise: permission denied). The final component is opened
//! with `O_NOFOLLOW`, so it is never a link that appeared after the check. Clients cannot create symbolic
//! links (`SSH_FXP_SYMLINK` is refused), so only someone with local access to the root could race the check;
//! that is the limit of this design (OpenSSH uses a kernel chroot instead).
//!
//! Errors map to SFTP status codes the way OpenSSH's `sftp-server` maps errno (`errno_to_portable`), and the
//! messages sent to clients never contain host paths.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timestamps, CWD};
use rustix::io::Errno;

use crate::{OpenFiles, SftpdError};

/// A request that failed: the status code and the message for the client.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: StatusCode,
    pub(crate) message: String,
}

impl Fail {
    pub(crate) fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The status OpenSSH would send for this error, with the system's message (which names no path).
    pub(crate) fn io(e: io::Error) -> Self {
        let mut message = e.to_string();
        if let Some(at) = message.find(" (os error") {
            message.truncate(at);
        }
        Self { code: status_of(&e), message }
    }

    fn outside() -> Self {
        Self::new(StatusCode::PermissionDenied, "permission denied: the path leads outside the served directory")
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Self::io(e)
    }
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Self::io(e.into())
    }
}

/// OpenSSH's `errno_to_portable`.
fn status_of(e: &io::Error) -> StatusCode {
    match Errno::from_io_error(e) {
        Some(Errno::NOENT | Errno::NOTDIR | Errno::BADF | Errno::LOOP) => StatusCode::NoSuchFile,
        Some(Errno::PERM | Errno::ACCESS | Errno::FAULT) => StatusCode::PermissionDenied,
        Some(Errno::NAMETOOLONG | Errno::INVAL) => StatusCode::BadMessage,
        Some(Errno::NOSYS) => StatusCode::OpUnsupported,
        Some(_) => StatusCode::Failure,
        None => match e.kind() {
            io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        },
    }
}

/// How to treat the last component of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// It must exist; a symbolic link is followed (stat, open, opendir, setstat).
    Follow,
    /// It need not exist and is never followed (lstat, remove, rmdir, rename).
    NoFollow,
    /// It may be missing (it is about to be created); an existing link is followed if it stays inside the root,
    /// a dangling one is refused (open with CREATE, mkdir).
    Create,
}

/// The served directory.
#[derive(Debug)]
pub(crate) struct Root {
    /// Canonical (absolute, no links).
    dir: PathBuf,
    /// The files open in any session, by device and inode, when open files may not be renamed or removed
    /// ([`OpenFiles::Locked`]); `None` when they may.
    locked: Option<OpenCounts>,
}

/// How many handles are open on each file (device, inode), in all sessions.
type OpenCounts = Arc<Mutex<HashMap<(u64, u64), usize>>>;

/// A file open in some session while [`OpenFiles::Locked`] is in force: counted until dropped (when its handle is
/// closed, or its session ends).
#[derive(Debug)]
pub(crate) struct OpenLock {
    key: (u64, u64),
    locked: OpenCounts,
}

impl Drop for OpenLock {
    fn drop(&mut self) {
        let mut open = lock(&self.locked);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Root {
    pub(crate) fn open(path: &Path, open_files: OpenFiles) -> Result<Root, SftpdError> {
        let err = |reason: String| SftpdError::Root { path: path.to_path_buf(), reason };
        let md = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !md.is_dir() {
            return Err(err("not a directory".into()));
        }
        let dir = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
        let locked = (open_files == OpenFiles::Locked).then(Arc::default);
        Ok(Root { dir, locked })
    }

    /// Counts `file` as open until the returned lock is dropped, if open files are locked.
    pub(crate) fn lock_open(&self, file: &File) -> Result<Option<OpenLock>, Fail> {
        let Some(locked) = &self.locked else { return Ok(None) };
        let md = file.metadata()?;
        let key = (md.dev(), md.ino());
        *lock(locked).entry(key).or_default() += 1;
        Ok(Some(OpenLock { key, locked: locked.clone() }))
    }

    /// Runs `change` (a rename or remove of the host paths in `paths`, each with the name the client gave it)
    /// unless open files are locked and one of the paths is a file open in some session. The counts stay locked
    /// until `change` is done, so that no file is counted open between the check and the change.
    pub(crate) fn unless_open<T>(
        &self,
        paths: &[(&Path, &str)],
        change: impl FnOnce() -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let Some(locked) = &self.locked else { return change() };
        let open = lock(locked);
        for (path, name) in paths {
            let Ok(md) = std::fs::symlink_metadata(path) else { continue };
            if open.contains_key(&(md.dev(), md.ino())) {
                return Err(Fail::new(
                    StatusCode::Failure,
                    format!("{name} is open: this server does not rename, replace or remove an open file"),
                ));
            }
        }
        change()
    }

    /// The host path of the client's `path` (absolute, or relative to `/`, which is the root).
    pub(crate) fn resolve(&self, path: &str, last: Last) -> Result<PathBuf, Fail> {
        let parts = split(path)?;
        let mut current = self.dir.clone();
        for (i, part) in parts.iter().enumerate() {
            let is_last = i + 1 == parts.len();
            let candidate = current.join(part);
            let md = match std::fs::symlink_metadata(&candidate) {
                Ok(md) => md,
                Err(e) if is_last && last != Last::Follow && e.kind() == io::ErrorKind::NotFound => {
                    return Ok(candidate)
                }
                Err(e) => return Err(e.into()),
            };
            if !md.file_type().is_symlink() || (is_last && last == Last::NoFollow) {
                current = candidate;
                continue;
            }
            current = match std::fs::canonicalize(&candidate) {
                Ok(target) if target.starts_with(&self.dir) => target,
                Ok(_) => return Err(Fail::outside()),
                Err(_) if is_last && last == Last::Create => {
                    return Err(Fail::new(
                        StatusCode::PermissionDenied,
                        "permission denied: will not create through a dangling symbolic link",
                    ))
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(current)
    }

    /// How the client sees the host path `path` (which [`Root::resolve`] returned): `/`-rooted.
    pub(crate) fn client_path(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.dir).unwrap_or(Path::new(""));
        let mut out = String::new();
        for c in rel.components() {
            if let Component::Normal(name) = c {
                out.push('/');
                out.push_str(&name.to_string_lossy());
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// `path` normalised without touching the file system, as the client sees it.
    pub(crate) fn lexical(&self, path: &str) -> Result<String, Fail> {
        Ok(format!("/{}", split(path)?.join("/")))
    }
}

/// The components of a client path below the root; `.` and empty ones dropped, `..` applied.
fn split(path: &str) -> Result<Vec<&str>, Fail> {
    if path.contains('\0') {
        return Err(Fail::new(StatusCode::BadMessage, "the path contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(Fail::outside());
                }
            }
            name => parts.push(name),
        }
    }
    Ok(parts)
}

/// SFTP attributes of a file.
pub(crate) fn attrs(md: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(md.size()),
        uid: Some(md.uid()),
        user: None,
        gid: Some(md.gid()),
        group: None,
        permissions: Some(md.mode()),
        atime: Some(u32::try_from(md.atime()).unwrap_or(0)),
        mtime: Some(u32::try_from(md.mtime()).unwrap_or(0)),
    }
}

/// Opens a regular file the way OpenSSH's `flags_from_portable` does, never following a final symbolic link.
pub(crate) fn open_file(path: &Path, pflags: OpenFlags, attrs: &FileAttributes) -> Result<File, Fail> {
    let mut flags = match (pflags.contains(OpenFlags::READ), pflags.contains(OpenFlags::WRITE)) {
        (true, true) => OFlags::RDWR,
        (false, true) => OFlags::WRONLY,
        _ => OFlags::RDONLY,
    };
    for (sftp, os) in [
        (OpenFlags::APPEND, OFlags::APPEND),
        (OpenFlags::CREATE, OFlags::CREATE),
        (OpenFlags::TRUNCATE, OFlags::TRUNC),
        (OpenFlags::EXCLUDE, OFlags::EXCL),
    ] {
        if pflags.contains(sftp) {
            flags |= os;
        }
    }
    // NONBLOCK: opening a FIFO must not hang a thread; it changes nothing for regular files.
    flags |= OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let mode = Mode::from_raw_mode(attrs.permissions.map_or(0o666, |p| p & 0o7777));
    let file = File::from(rustix::fs::open(path, flags, mode)?);
    if !file.metadata()?.is_file() {
        return Err(Fail::new(StatusCode::Failure, "not a regular file"));
    }
    Ok(file)
}

/// What SETSTAT / FSETSTAT change.
pub(crate) enum Target<'a> {
    Path(&'a Path),
    File(&'a File),
}

/// Applies size, owner, permissions and times, in OpenSSH's order.
pub(crate) fn set_attrs(target: Target<'_>, a: &FileAttributes) -> Result<(), Fail> {
    if let Some(size) = a.size {
        match target {
            Target::File(f) => f.set_len(size)?,
            Target::Path(p) => {
                let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
                File::from(rustix::fs::open(p, flags, Mode::empty())?).set_len(size)?;
            }
        }
    }
    if let Some(perm) = a.permissions {
        let perm = std::fs::Permissions::from_mode(perm & 0o7777);
        match target {
            Target::File(f) => f.set_permissions(perm)?,
            Target::Path(p) => std::fs::set_permissions(p, perm)?,
        }
    }
    if let (Some(atime), Some(mtime)) = (a.atime, a.mtime) {
        let at = |s: u32| rustix::fs::Timespec { tv_sec: i64::from(s), tv_nsec: 0 };
        let times = Timestamps { last_access: at(atime), last_modification: at(mtime) };
        match target {
            Target::File(f) => rustix::fs::futimens(f, &times)?,
            Target::Path(p) => rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW)?,
        }
    }
    if a.uid.is_some() || a.gid.is_some() {
        match target {
            Target::File(f) => std::os::unix::fs::fchown(f, a.uid, a.gid)?,
            Target::Path(p) => std::os::unix::fs::lchown(p, a.uid, a.gid)?,
        }
    }
    Ok(())
}

/// SSH_FXP_RENAME: never replaces an existing target (like OpenSSH, which links and unlinks for that).
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> Result<(), Fail> {
    let exists = || Fail::new(StatusCode::Failure, "the target exists (use posix-rename@openssh.com to replace it)");
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => Err(exists()),
        // A file system without RENAME_NOREPLACE: check, then rename (what OpenSSH does for non-files too).
        Err(Errno::INVAL | Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(exists());
            }
            std::fs::rename(from, to).map_err(Fail::io)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn split_applies_dots_and_refuses_climbing_out() {
        assert_eq!(split("/a/./b//c/../d").unwrap(), vec!["a", "b", "d"]);
        assert_eq!(split("").unwrap(), Vec::<&str>::new());
        assert_eq!(split("a/..").unwrap(), Vec::<&str>::new());
        assert_eq!(split("/..").unwrap_err().code, StatusCode::PermissionDenied);
        assert_eq!(split("a/../../b").unwrap_err().code, StatusCode::PermissionDenied);
        assert_eq!(split("a\0b").unwrap_err().code, StatusCode::BadMessage);
    }

    #[test]
    fn resolve_confines_symlinks() {
        let outer = tempfile::tempdir().unwrap();
        let root_dir = outer.path().join("root");
        std::fs::create_dir_all(root_dir.join("sub")).unwrap();
        std::fs::write(outer.path().join("secret"), "s").unwrap();
        std::fs::write(root_dir.join("sub/f"), "f").unwrap();
        std::os::unix::fs::symlink(outer.path(), root_dir.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", root_dir.join("in")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("nothing"), root_dir.join("dangling")).unwrap();
        let root = Root::open(&root_dir, OpenFiles::Shared).unwrap();
        let canon = std::fs::canonicalize(&root_dir).unwrap();

        assert_eq!(root.resolve("/in/f", Last::Follow).unwrap(), canon.join("sub/f"));
        assert_eq!(root.resolve("in", Last::NoFollow).unwrap(), canon.join("in"));
        assert_eq!(root.resolve("/out/secret", Last::Follow).unwrap_err().code, StatusCode::PermissionDenied);
        assert_eq!(root.resolve("/out", Last::Follow).unwrap_err().code, StatusCode::PermissionDenied);
        assert_eq!(root.resolve("/out/new", Last::Create).unwrap_err().code, StatusCode::PermissionDenied);
        assert_eq!(root.resolve("/out", Last::NoFollow).unwrap(), canon.join("out"));
        assert_eq!(root.resolve("/dangling", Last::Create).unwrap_err().code, StatusCode::PermissionDenied);
        assert_eq!(root.resolve("/dangling", Last::Follow).unwrap_err().code, StatusCode::NoSuchFile);
        assert_eq!(root.resolve("/missing/x", Last::Create).unwrap_err().code, StatusCode::NoSuchFile);
        assert_eq!(root.resolve("/sub/new", Last::Create).unwrap(), canon.join("sub/new"));
        assert_eq!(root.client_path(&canon.join("sub/f")), "/sub/f");
        assert_eq!(root.client_path(&canon), "/");
    }
}
