//! Saving and loading modules without ever leaving a half-written file behind.

use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::error::{MoeError, Result};

/// Writes `module`'s record (weights and balancer state) to `path` atomically: to a temporary
/// file beside it, synced, then renamed over `path`. A crash mid-write leaves the old file intact.
pub fn save_module_atomic<M: Module>(module: M, path: &Path) -> Result<()> {
    let tmp = temp_path(path);
    let io = |what: &str, e: &dyn std::fmt::Display| {
        MoeError::Io(format!("{what} {}: {e}", path.display()))
    };
    module
        .save_file(&tmp)
        .map_err(|e| io("writing", &format!("{e:?}")))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing", &e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", &e))?;
    Ok(())
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

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}
