//! Saving and loading without ever leaving a half-written file behind.

use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::error::{MoeError, Result};

/// Writes `path` through `write`, which fills a temporary file beside it; the temporary file is
/// synced, then renamed over `path`. A crash mid-write leaves the old file intact.
pub fn write_then_rename(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(name);
    let io =
        |what: &str, e: std::io::Error| MoeError::Io(format!("{what} {}: {e}", path.display()));
    write(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_then_rename(path, |tmp| {
        std::fs::write(tmp, bytes)
            .map_err(|e| MoeError::Io(format!("writing {}: {e}", tmp.display())))
    })
}

/// Writes `module`'s record (weights and balancer state) to `path` atomically.
pub fn save_module_atomic<M: Module>(module: M, path: &Path) -> Result<()> {
    write_then_rename(path, |tmp| {
        module
            .save_file(tmp)
            .map_err(|e| MoeError::Io(format!("writing {}: {e:?}", path.display())))
    })
}

/// Loads a record written by [`save_module_atomic`] into `module` (built with the same config).
pub fn load_module<M: Module>(module: M, path: &Path) -> Result<M> {
    if !path.is_file() {
        return Err(MoeError::Io(format!(
            "checkpoint {} does not exist or is not a file",
            path.display()
        )));
    }
    module.try_load_file(path).map_err(|e| {
        MoeError::Io(format!(
            "loading {}: {e:?} (corrupt file, or a different config?)",
            path.display()
        ))
    })
}

/// Size and SHA-256 of a file: what a checkpoint records of each of its files, and what a run
/// records of its data file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

impl FileDigest {
    /// Reads `path` and digests it.
    pub fn of_file(path: &Path) -> Result<Self> {
        use sha2::Digest;
        use std::io::Read;
        let mut file = std::fs::File::open(path)
            .map_err(|e| MoeError::Io(format!("reading {}: {e}", path.display())))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| MoeError::Io(format!("reading {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(FileDigest { bytes, sha256 })
    }

    /// Errors, naming the file, unless `path` still has this size and digest.
    pub fn verify(&self, path: &Path) -> Result<()> {
        let now = Self::of_file(path)?;
        if now != *self {
            return Err(MoeError::Io(format!(
                "{} is corrupt or was changed: {} bytes with SHA-256 {}, but {} bytes with \
                 SHA-256 {} were recorded when it was written",
                path.display(),
                now.bytes,
                now.sha256,
                self.bytes,
                self.sha256
            )));
        }
        Ok(())
    }
}
