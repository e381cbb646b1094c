//! Removes the temporary files of uploads that nobody finished: a gateway that crashed (or was killed) leaves
//! them behind, and no task of any gateway will expire them. Every gateway sweeps at start and then every half
//! `upload_expiry`; a file is removed once it has not been written for `upload_expiry`, the same rule a running
//! upload applies to itself (so a sweep never removes a live upload, which keeps its file fresh).

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::ops::PART_SUFFIX;
use crate::server::Shared;
use crate::store::StoreSession;

/// How deep below the directory of device roots the sweep looks.
const MAX_DEPTH: usize = 32;

/// Sweeps once; returns how many stale temporary files were removed.
pub(crate) async fn sweep(shared: &Shared) -> usize {
    let bases = shared.policy.get().root_dirs();
    let sftp = match shared.store.session().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "sweep skipped: store unavailable");
            return 0;
        }
    };
    let expiry = shared.cfg.transfer.upload_expiry;
    let mut removed = 0;
    let mut dirs: Vec<(String, usize)> = bases.into_iter().map(|b| (b, 0)).collect();
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = sftp.list_dir(dir.as_str()).await else { continue };
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{dir}/{name}");
            let meta = e.metadata();
            if meta.file_type().is_dir() {
                if depth < MAX_DEPTH {
                    dirs.push((path, depth + 1));
                }
            } else if name.ends_with(PART_SUFFIX) && stale(meta.mtime, expiry) && remove(&sftp, &path).await {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        info!(removed, "removed the temporary files of abandoned uploads");
    }
    removed
}

fn stale(mtime: Option<u32>, expiry: Duration) -> bool {
    let Some(mtime) = mtime else { return false };
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(mtime));
    SystemTime::now().duration_since(written).map(|age| age >= expiry).unwrap_or(false)
}

async fn remove(sftp: &StoreSession, path: &str) -> bool {
    match sftp.remove_file(path).await {
        Ok(()) => true,
        Err(e) => {
            warn!(%path, error = %e, "could not remove an abandoned temporary file");
            false
        }
    }
}
