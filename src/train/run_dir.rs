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
//! ```
//!
//! A checkpoint directory is written completely, then `latest` is replaced atomically (write a
//! temporary file, sync, rename) to name it, then older checkpoints are removed. A run killed at
//! any moment leaves `latest` naming a complete checkpoint.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_module, save_module_atomic, write_bytes_atomic, write_then_rename};
use crate::error::{MoeError, Result};
use crate::model::{MoeLm, MoeLmConfig};
use crate::train::TrainConfig;

/// What a run trains: enough to rebuild the model and resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunManifest {
    /// The model.
    pub model: MoeLmConfig,
    /// The training settings.
    pub train: TrainConfig,
    /// The data file, or `None` for the embedded default corpus.
    pub data: Option<PathBuf>,
}

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
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> MoeError {
    MoeError::Io(format!("{what} {}: {e}", path.display()))
}

impl RunDir {
    /// A run directory at `root` (created if missing).
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| io_err("creating run directory", root, e))?;
        Ok(RunDir {
            root: root.to_path_buf(),
        })
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

    /// Reads `run.json`.
    pub fn manifest(&self) -> Result<RunManifest> {
        let path = self.root.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err("reading", &path, e))?;
        serde_json::from_str(&text).map_err(|e| io_err("parsing", &path, e))
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
        Ok(self.root.join(name.trim()))
    }

    /// Loads the newest checkpoint's weights (with balancer state) into `model`.
    pub fn load_checkpoint(&self, model: MoeLm) -> Result<(MoeLm, CheckpointState)> {
        let dir = self.latest_checkpoint()?;
        let model = load_module(model, &dir.join("model.bpk"))?;
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err("reading", &path, e))?;
        let state = serde_json::from_str(&text).map_err(|e| io_err("parsing", &path, e))?;
        Ok((model, state))
    }

    /// Loads the newest checkpoint's optimizer state into `optim`.
    pub fn load_optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let path = self.latest_checkpoint()?.join("optim.bpk");
        optim
            .load(&path)
            .map_err(|e| io_err("loading", &path, format!("{e:?} (corrupt checkpoint?)")))
    }

    /// Builds the run's model on `device` and loads its newest checkpoint into it.
    pub fn load_model(&self, device: &Device) -> Result<(MoeLm, CheckpointState)> {
        self.load_checkpoint(self.manifest()?.model.init(device)?)
    }
}
