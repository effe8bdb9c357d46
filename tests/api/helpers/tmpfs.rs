//! A small tmpfs of the test's own, to run a store out of space.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::*;

/// A small tmpfs of the test's own, to run a store out of disk space;
/// unmounted when dropped. Needs root (`mount`): elsewhere the test is
/// skipped with a printed reason, and fails under `CI=true`.
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `16m`), or reports why it cannot.
    pub fn mount(size: &str, test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self {
                path: dir.path().to_owned(),
                _dir: dir,
            }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but a tmpfs cannot be mounted: {why}"
                );
                skipped(&format!(
                    "{test}: cannot mount a tmpfs here ({why}); run as root"
                ));
                None
            }
        }
    }

    /// Fills the file system with a file `filler` until no byte is left.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("filler")).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        while file.write_all(&chunk[..1]).is_ok() {}
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
