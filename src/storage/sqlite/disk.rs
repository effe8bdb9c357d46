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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_sits_beside_the_database() {
        assert_eq!(
            reserve_path(Path::new("data/gifts.db")),
            Path::new("data/gifts.db.reserve")
        );
    }

    #[test]
    fn free_bytes_are_those_of_the_databases_volume() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(&dir.path().join("gifts.db")).expect("a volume");
        let stat = rustix::fs::statvfs(dir.path()).unwrap();
        let expected = stat.f_bavail * stat.f_frsize;
        // Other processes write to the volume between the two readings.
        assert!(
            free.abs_diff(expected) <= expected / 100 + (64 << 20),
            "{free} free bytes, statvfs says {expected}"
        );
        assert!(free > 0);
        assert_eq!(
            free_bytes(Path::new("gifts.db")),
            None,
            "no directory named"
        );
    }

    #[test]
    fn the_reserve_is_written_once_with_its_size_and_then_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gifts.db");
        ensure_reserve(&db);
        let reserve = reserve_path(&db);
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1_048_576);
        std::fs::write(&reserve, b"kept").unwrap();
        ensure_reserve(&db);
        assert_eq!(std::fs::read(&reserve).unwrap(), b"kept");
    }
}
