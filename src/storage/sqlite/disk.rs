//! The disk-space reserve and the free-space check.

use std::path::{Path, PathBuf};

use super::RESERVE_BYTES;

pub(super) fn reserve_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reserve");
    PathBuf::from(name)
}

/// Bytes free for unprivileged writes on the volume holding `path`.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Writes the reserve file if it is missing and there is room (best effort).
pub(super) fn ensure_reserve(path: &Path) {
    let reserve = reserve_path(path);
    if reserve.exists() {
        return;
    }
    let written = std::fs::write(&reserve, vec![0u8; RESERVE_BYTES])
        .and_then(|()| std::fs::File::open(&reserve)?.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&reserve);
        tracing::warn!(path = %reserve.display(), error = %e, "cannot write the disk-space reserve");
    }
}
