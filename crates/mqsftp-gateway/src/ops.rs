//! The simple operations: list, stat, remove, mkdir, rename. Each confines its paths to the device root, runs
//! on the shared SFTP session, and reports failures with the device-relative path.

use std::sync::Arc;

use mqsftp_proto::{confine, Entry, EntryKind, ErrorCode, RelPath, MAX_LIST_PAGE};
use russh_sftp::protocol::{FileAttributes, StatusCode};
use tracing::warn;

use crate::policy::Access;
use crate::server::{confine_file, path_failure, Failure, OpResult, Shared};
use crate::store::{Channel, StoreError, StoreSession};

/// Suffix of the temporary files of uploads in progress; they are hidden from listings.
pub(crate) const PART_SUFFIX: &str = ".mqsftp-part";

pub(crate) async fn session(shared: &Shared) -> Result<Arc<StoreSession>, Failure> {
    shared.store.session().await.map_err(|e| {
        warn!(error = %e, "store unavailable");
        (e.code(), e.device_message(""))
    })
}

/// Turns an SFTP error on `store_path` into a failure naming `rel`; drops a broken session.
pub(crate) async fn sftp_failure(
    shared: &Shared,
    op: &'static str,
    store_path: &str,
    rel: &str,
    source: russh_sftp::client::error::Error,
) -> Failure {
    let generic =
        matches!(&source, russh_sftp::client::error::Error::Status(s) if s.status_code == StatusCode::Failure);
    let e = StoreError::Sftp { op, path: store_path.to_string(), source };
    warn!(error = %e, "store operation failed");
    shared.store.note_error(&e).await;
    if generic {
        if let Ok(sftp) = shared.store.session().await {
            if let Some(f) = file_system_failure(&sftp, parent(store_path), rel).await {
                return f;
            }
        }
    }
    (e.code(), e.device_message(rel))
}

/// `SSH_FX_FAILURE` is all OpenSSH's sftp-server says for ENOSPC, EROFS and many more; the file system's
/// statistics (`statvfs@openssh.com`) tell a full or read-only store apart, so the device gets `storage_full` or
/// `permission_denied` instead of `internal`. `None` when they show neither (or the server lacks the extension).
pub(crate) async fn file_system_failure(sftp: &StoreSession, store_dir: &str, rel: &str) -> Option<Failure> {
    /// `SSH2_FXE_STATVFS_ST_RDONLY` in OpenSSH's PROTOCOL file.
    const READ_ONLY: u64 = 0x1;
    let probe = tokio::time::timeout(std::time::Duration::from_secs(5), sftp.fs_info(store_dir)).await;
    let Ok(Ok(Some(st))) = probe else { return None };
    if st.flags & READ_ONLY != 0 {
        return Some((ErrorCode::PermissionDenied, format!("the store is read-only: cannot write {rel}")));
    }
    // Less than one (default-sized) chunk free is as full as nothing free: the next write fails the same way.
    if st.blocks_avail.saturating_mul(st.fragment_size.max(1)) < 64 * 1024 {
        return Some((ErrorCode::StorageFull, format!("the store is full: no space left to write {rel}")));
    }
    None
}

/// The entry for `attrs`, named `name`.
pub(crate) fn entry(name: String, attrs: &FileAttributes) -> Entry {
    let t = attrs.file_type();
    let kind = if t.is_dir() {
        EntryKind::Dir
    } else if t.is_file() {
        EntryKind::File
    } else if t.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    };
    Entry { name, size: attrs.size.unwrap_or(0), mtime: attrs.mtime.map(u64::from), kind }
}

fn any_path(path: &str) -> Result<RelPath, Failure> {
    confine(path).map_err(|e| path_failure(&e))
}

pub(crate) async fn list(
    shared: &Shared,
    access: &Access,
    path: &str,
    offset: u64,
    limit: Option<u32>,
) -> Result<OpResult, Failure> {
    let rel = any_path(path)?;
    let limit = limit.unwrap_or(MAX_LIST_PAGE).clamp(1, MAX_LIST_PAGE) as usize;
    let store_path = access.path_of(&rel);
    let sftp = session(shared).await?;
    check_resolved(shared, (&sftp, Channel::Main), access, &store_path, rel.as_str()).await?;
    let dir = match sftp.list_dir(store_path.as_str()).await {
        Ok(d) => d,
        // A device that has never uploaded has no root yet: its root is empty, not missing.
        Err(russh_sftp::client::error::Error::Status(s))
            if rel.is_root() && s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
        {
            return Ok(OpResult::Listing { entries: Vec::new(), next: None })
        }
        Err(e) => return Err(sftp_failure(shared, "list", &store_path, rel.as_str(), e).await),
    };
    let mut entries: Vec<Entry> = dir
        .filter(|e| {
            let n = e.file_name();
            n != "." && n != ".." && !n.ends_with(PART_SUFFIX)
        })
        .map(|e| entry(e.file_name(), &e.metadata()))
        .collect();
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(entries.len());
    let end = start.saturating_add(limit).min(entries.len());
    let next = (end < entries.len()).then_some(end as u64);
    let page = entries.drain(start..end).collect();
    Ok(OpResult::Listing { entries: page, next })
}

pub(crate) async fn stat(shared: &Shared, access: &Access, path: &str) -> Result<OpResult, Failure> {
    let rel = any_path(path)?;
    let store_path = access.path_of(&rel);
    let sftp = session(shared).await?;
    check_resolved(shared, (&sftp, Channel::Main), access, &store_path, rel.as_str()).await?;
    match sftp.metadata(store_path.as_str()).await {
        Ok(m) => Ok(OpResult::Stat(entry(rel.file_name().unwrap_or("").to_string(), &m))),
        Err(e) => Err(sftp_failure(shared, "stat", &store_path, rel.as_str(), e).await),
    }
}

pub(crate) async fn remove(shared: &Shared, access: &Access, path: &str) -> Result<OpResult, Failure> {
    let rel = confine_file(path).map_err(|(_, m)| (ErrorCode::PermissionDenied, format!("cannot remove: {m}")))?;
    let store_path = access.path_of(&rel);
    let sftp = session(shared).await?;
    // Removing a symlink removes the link, never its target, so only the directory it is in must be inside.
    check_resolved(shared, (&sftp, Channel::Main), access, parent(&store_path), rel.as_str()).await?;
    let meta = match sftp.symlink_metadata(store_path.as_str()).await {
        Ok(m) => m,
        Err(e) => return Err(sftp_failure(shared, "stat", &store_path, rel.as_str(), e).await),
    };
    if meta.file_type().is_dir() {
        if let Err(e) = sftp.remove_dir(store_path.as_str()).await {
            let has_entries = sftp
                .list_dir(store_path.as_str())
                .await
                .map(|mut d| d.any(|e| e.file_name() != "." && e.file_name() != ".."))
                .unwrap_or(false);
            if has_entries {
                return Err((ErrorCode::NotEmpty, format!("directory not empty: {}", rel.as_str())));
            }
            return Err(sftp_failure(shared, "remove directory", &store_path, rel.as_str(), e).await);
        }
    } else if let Err(e) = sftp.remove_file(store_path.as_str()).await {
        return Err(sftp_failure(shared, "remove", &store_path, rel.as_str(), e).await);
    }
    Ok(OpResult::Done)
}

pub(crate) async fn mkdir(shared: &Shared, access: &Access, path: &str) -> Result<OpResult, Failure> {
    let rel = confine_file(path).map_err(
        |(c, m)| {
            if c == ErrorCode::IsDirectory {
                (ErrorCode::Exists, m)
            } else {
                (c, m)
            }
        },
    )?;
    let sftp = session(shared).await?;
    let store_path = access.path_of(&rel);
    check_resolved(shared, (&sftp, Channel::Main), access, &store_path, rel.as_str()).await?;
    // The device root itself is created on demand, so that a new device can make its first directory.
    ensure_dir(shared, &sftp, &access.root, "").await?;
    if sftp.try_exists(store_path.as_str()).await.unwrap_or(false) {
        return Err((ErrorCode::Exists, format!("already exists: {}", rel.as_str())));
    }
    match sftp.create_dir(store_path.as_str()).await {
        Ok(()) => Ok(OpResult::Done),
        Err(e) => Err(sftp_failure(shared, "mkdir", &store_path, rel.as_str(), e).await),
    }
}

pub(crate) async fn rename(
    shared: &Shared,
    access: &Access,
    from: &str,
    to: &str,
    overwrite: bool,
) -> Result<OpResult, Failure> {
    let (from_rel, to_rel) = (confine_file(from)?, confine_file(to)?);
    let (from_path, to_path) = (access.path_of(&from_rel), access.path_of(&to_rel));
    if from_rel == to_rel {
        return Ok(OpResult::Done);
    }
    let sftp = session(shared).await?;
    // A rename moves the link itself, so the directories it moves between must be inside.
    check_resolved(shared, (&sftp, Channel::Main), access, parent(&from_path), from_rel.as_str()).await?;
    check_resolved(shared, (&sftp, Channel::Main), access, parent(&to_path), to_rel.as_str()).await?;
    if let Err(e) = sftp.symlink_metadata(from_path.as_str()).await {
        return Err(sftp_failure(shared, "stat", &from_path, from_rel.as_str(), e).await);
    }
    move_into_place(shared, &sftp, (&from_path, &to_path), to_rel.as_str(), overwrite).await?;
    Ok(OpResult::Done)
}

/// Renames `from` to `to` (store paths). Without `overwrite` an existing target is never replaced (OpenSSH's
/// plain rename refuses to clobber); with it, the target is replaced atomically by `posix-rename@openssh.com`.
pub(crate) async fn move_into_place(
    shared: &Shared,
    sftp: &StoreSession,
    (from, to): (&str, &str),
    to_rel: &str,
    overwrite: bool,
) -> Result<(), Failure> {
    let result = if overwrite {
        sftp.rename_replacing(from, to).await
    } else {
        if sftp.try_exists(to).await.unwrap_or(false) {
            return Err((ErrorCode::Exists, format!("already exists: {to_rel} (ask to overwrite to replace it)")));
        }
        sftp.rename(from, to).await
    };
    match result {
        Ok(()) => Ok(()),
        // Another writer won the race between the check and the rename.
        Err(_) if !overwrite && sftp.try_exists(to).await.unwrap_or(false) => {
            Err((ErrorCode::Exists, format!("already exists: {to_rel} (ask to overwrite to replace it)")))
        }
        Err(_) if sftp.metadata(to).await.is_ok_and(|m| m.is_dir()) => {
            Err((ErrorCode::IsDirectory, format!("{to_rel} is a directory; a file cannot replace it")))
        }
        Err(e) => Err(sftp_failure(shared, "rename", to, to_rel, e).await),
    }
}

/// Creates `store_dir` and its missing parents (`rel` names it for messages).
pub(crate) async fn ensure_dir(
    shared: &Shared,
    sftp: &StoreSession,
    store_dir: &str,
    rel: &str,
) -> Result<(), Failure> {
    match sftp.create_dir_all(store_dir).await {
        Ok(_) => Ok(()),
        Err((prefix, e)) => Err(sftp_failure(shared, "mkdir", &prefix, rel, e).await),
    }
}

/// The directory part of a store path.
pub(crate) fn parent(store_path: &str) -> &str {
    match store_path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    }
}

/// Resolves symlinks on the server and refuses `store_path` when it, or the nearest part of it that exists, leads
/// outside the device root. Devices cannot make symlinks through mqsftp, but other users of the store can; without
/// this check a link inside a root would hand a device whatever it points at.
///
/// Costs one `realpath` when the path exists and no symlink is on its way (its real path is then the path itself,
/// made absolute from the login directory, and lies inside the root as written, since a device path has no `..`),
/// and one more for each missing last part (checking the part that exists). Only when a real path differs from the
/// path (a symlink, or a root not written in canonical form) is the root resolved too, to compare the two: one
/// more round trip.
pub(crate) async fn check_resolved(
    shared: &Shared,
    (sftp, channel): (&StoreSession, Channel),
    access: &Access,
    store_path: &str,
    rel: &str,
) -> Result<(), Failure> {
    let mut target = sftp.realpath(channel, store_path).await;
    let mut candidate = store_path;
    loop {
        match target {
            Ok(real) if real == sftp.absolute(candidate) => return Ok(()),
            Ok(real) => {
                let root = match sftp.realpath(channel, access.root.as_str()).await {
                    Ok(r) => r,
                    // No root (any more): nothing exists below it, so nothing can lead out.
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(e) => return Err(sftp_failure(shared, "realpath", &access.root, "", e).await),
                };
                let inside = real == root || real.strip_prefix(root.as_str()).is_some_and(|r| r.starts_with('/'));
                if inside {
                    return Ok(());
                }
                warn!(path = %store_path, resolved = %real, root = %root, "a symlink leads outside the device root");
                return Err((
                    ErrorCode::PermissionDenied,
                    format!("{rel} leads outside the device root (through a symbolic link on the store)"),
                ));
            }
            Err(e) if is_not_found(&e) => {
                // Check the part that exists: what will be created below it stays where it resolves.
                if candidate.len() <= access.root.len() {
                    return Ok(());
                }
                candidate = parent(candidate);
                target = sftp.realpath(channel, candidate).await;
            }
            Err(e) => return Err(sftp_failure(shared, "realpath", store_path, rel, e).await),
        }
    }
}

fn is_not_found(e: &russh_sftp::client::error::Error) -> bool {
    matches!(e, russh_sftp::client::error::Error::Status(s) if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile)
}
