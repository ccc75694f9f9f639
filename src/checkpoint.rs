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
