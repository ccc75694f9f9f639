//! The run directory: manifest, atomic checkpoints, trace and metrics.
//!
//! ```text
//! DIR/run.json                 what was trained and how (model config, train config, data)
//! DIR/ckpt-00000200/model.bpk  weights and balancer state (Burn record)
//! DIR/ckpt-00000200/optim.bpk  AdamW moments
//! DIR/ckpt-00000200/state.json step and progress counters
//! DIR/latest                   name of the newest complete checkpoint
//! DIR/trace.jsonl              expert loads, one record per step per MoE layer
//! DIR/metrics.jsonl            training and validation losses
//! DIR/.lock                    held (an OS file lock) by the process writing the run
//! ```
//!
//! A checkpoint directory is written completely, its files' sizes and SHA-256 digests go to
//! `checksums.json` beside them, then `latest` is replaced atomically (write a temporary file,
//! sync, rename) to name it, then older checkpoints are removed. A run killed at any moment
//! leaves `latest` naming a complete checkpoint; loading verifies every file against its digest.
//!
//! One process writes a run directory at a time: [`RunDir::lock`] takes an exclusive lock on
//! `DIR/.lock` (released by the OS on exit or crash). A new run refuses a directory that holds
//! anything unless it was opened [`with_overwrite`](RunDir::with_overwrite), and then the old
//! run's files are removed (`latest` first) before the new `run.json` is written, so two runs'
//! files never mix.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    FileDigest, load_module, save_module_atomic, write_bytes_atomic, write_then_rename,
};
use crate::error::{MoeError, Result};
use crate::model::MoeLm;
use crate::train::RunManifest;

/// Progress saved with each checkpoint. The data order and every random draw of step `s` are
/// functions of `(train.seed, s)`, so `step` is the whole RNG and data-position state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    /// Training tokens seen.
    pub tokens_seen: u64,
    /// Seconds of training so far.
    pub train_seconds: f64,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    overwrite: bool,
}

/// The exclusive right to write a run directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// The checkpoint files whose digests `checksums.json` records, in the order they are written.
const CHECKPOINT_FILES: [&str; 3] = ["model.bpk", "optim.bpk", "state.json"];

/// The names a run writes into its directory (everything but `.lock`).
fn is_run_file(name: &str) -> bool {
    matches!(
        name,
        "run.json" | "latest" | "trace.jsonl" | "metrics.jsonl" | "analysis"
    ) || name.starts_with("ckpt-")
        || name.contains(".tmp")
}

pub(crate) fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> MoeError {
    MoeError::Io(format!("{what} {}: {e}", path.display()))
}

impl RunDir {
    /// A run directory at `root` (created if missing).
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| io_err("creating run directory", root, e))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            overwrite: false,
        })
    }

    /// Lets a new run replace a run already in the directory (its files are removed when the
    /// new run starts). Without it a new run refuses a directory that holds anything.
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Takes the directory's write lock, or errors at once when another process holds it.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("opening lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(MoeError::Io(format!(
                "run directory {} is in use by another burn-moe process (it holds {}); wait \
                 for it to finish or choose another directory",
                self.root.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err("locking", &path, e)),
        }
    }

    /// Makes the (locked) directory ready for a new run: refuses one that holds anything unless
    /// overwriting, then removes the old run's files, `latest` first.
    pub(crate) fn prepare_fresh(&self, _lock: &RunLock) -> Result<()> {
        let entries: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| io_err("listing", &self.root, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != ".lock")
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        if !self.overwrite {
            let mut shown: Vec<&str> = entries.iter().map(String::as_str).take(5).collect();
            shown.sort_unstable();
            return Err(MoeError::Io(format!(
                "run directory {} is not empty (it holds {}{}); pass --overwrite to replace the \
                 run in it, --resume to continue it, or choose another directory",
                self.root.display(),
                shown.join(", "),
                if entries.len() > 5 { ", ..." } else { "" }
            )));
        }
        let remove = |name: &str| {
            let path = self.root.join(name);
            let res = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match res {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_err("removing the old run's", &path, e))
                }
                _ => Ok(()),
            }
        };
        remove("latest")?;
        for name in entries.iter().filter(|n| is_run_file(n)) {
            remove(name)?;
        }
        Ok(())
    }

    /// An existing run directory.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("run.json").is_file() {
            return Err(MoeError::Io(format!(
                "{} is not a burn-moe run directory (no run.json)",
                root.display()
            )));
        }
        Ok(RunDir {
            root: root.to_path_buf(),
            overwrite: false,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The trace file.
    pub fn trace_path(&self) -> PathBuf {
        self.root.join("trace.jsonl")
    }

    /// The metrics file.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// Writes `run.json`.
    pub fn write_manifest(&self, manifest: &RunManifest) -> Result<()> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| MoeError::Io(e.to_string()))?;
        write_bytes_atomic(&self.root.join("run.json"), &json)
    }

    /// Reads and validates `run.json`.
    pub fn manifest(&self) -> Result<RunManifest> {
        let path = self.root.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err("reading", &path, e))?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| io_err("parsing", &path, e))?;
        RunManifest::fill_new_defaults(&mut json);
        let manifest: RunManifest =
            serde_json::from_value(json).map_err(|e| io_err("parsing", &path, e))?;
        manifest
            .validate()
            .map_err(|e| io_err("invalid settings in", &path, e))?;
        Ok(manifest)
    }

    /// Saves a complete checkpoint and points `latest` at it.
    pub fn save_checkpoint(
        &self,
        model: &MoeLm,
        optim: &ModuleOptimizer,
        state: CheckpointState,
    ) -> Result<()> {
        let name = format!("ckpt-{:08}", state.step);
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        save_module_atomic(model.clone(), &dir.join("model.bpk"))?;
        let optim_path = dir.join("optim.bpk");
        write_then_rename(&optim_path, |tmp| {
            optim
                .save(tmp)
                .map_err(|e| io_err("writing", &optim_path, format!("{e:?}")))
        })?;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| MoeError::Io(e.to_string()))?;
        write_bytes_atomic(&dir.join("state.json"), &json)?;
        let mut sums = std::collections::BTreeMap::new();
        for file in CHECKPOINT_FILES {
            sums.insert(file, FileDigest::of_file(&dir.join(file))?);
        }
        let json = serde_json::to_vec_pretty(&sums).map_err(|e| MoeError::Io(e.to_string()))?;
        write_bytes_atomic(&dir.join("checksums.json"), &json)?;
        write_bytes_atomic(&self.root.join("latest"), name.as_bytes())?;
        // Only now is the older checkpoint unneeded.
        for entry in std::fs::read_dir(&self.root)
            .map_err(|e| io_err("listing", &self.root, e))?
            .flatten()
        {
            let n = entry.file_name().to_string_lossy().to_string();
            if n.starts_with("ckpt-") && n != name {
                std::fs::remove_dir_all(entry.path()).ok();
            }
        }
        Ok(())
    }

    /// The newest complete checkpoint's directory.
    pub fn latest_checkpoint(&self) -> Result<PathBuf> {
        let latest = self.root.join("latest");
        let name = std::fs::read_to_string(&latest)
            .map_err(|e| io_err("reading (no checkpoint saved yet?)", &latest, e))?;
        let name = name.trim();
        let valid = name
            .strip_prefix("ckpt-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            return Err(MoeError::Io(format!(
                "{} is corrupt: it should name a checkpoint directory ckpt-NNNNNNNN",
                latest.display()
            )));
        }
        Ok(self.root.join(name))
    }

    /// Errors, naming the file, unless every checkpoint file in `files` of `dir` matches the digest
    /// recorded in `checksums.json`.
    fn verify(dir: &Path, files: &[&str]) -> Result<()> {
        let sums_path = dir.join("checksums.json");
        let text = std::fs::read_to_string(&sums_path)
            .map_err(|e| io_err("reading (incomplete checkpoint?)", &sums_path, e))?;
        let sums: std::collections::BTreeMap<String, FileDigest> =
            serde_json::from_str(&text).map_err(|e| io_err("parsing", &sums_path, e))?;
        for file in files {
            let digest = sums.get(*file).ok_or_else(|| {
                MoeError::Io(format!(
                    "{} records no digest of {file}",
                    sums_path.display()
                ))
            })?;
            digest.verify(&dir.join(file))?;
        }
        Ok(())
    }

    /// Loads the newest checkpoint's weights (with balancer state) into `model`.
    pub fn load_checkpoint(&self, model: MoeLm) -> Result<(MoeLm, CheckpointState)> {
        let dir = self.latest_checkpoint()?;
        Self::verify(&dir, &["model.bpk", "state.json"])?;
        let model = load_module(model, &dir.join("model.bpk"))?;
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err("reading", &path, e))?;
        let state = serde_json::from_str(&text).map_err(|e| io_err("parsing", &path, e))?;
        Ok((model, state))
    }

    /// Loads the newest checkpoint's optimizer state into `optim`.
    pub fn load_optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let dir = self.latest_checkpoint()?;
        Self::verify(&dir, &["optim.bpk"])?;
        let path = dir.join("optim.bpk");
        optim
            .load(&path)
            .map_err(|e| io_err("loading", &path, format!("{e:?} (corrupt checkpoint?)")))
    }

    /// Builds the run's model on `device` and loads its newest checkpoint into it.
    pub fn load_model(&self, device: &Device) -> Result<(MoeLm, CheckpointState)> {
        self.load_checkpoint(self.manifest()?.model.init(device)?)
    }
}
