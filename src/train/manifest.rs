//! `run.json`: what a run trains, on which data, with which settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::FileDigest;
use crate::data::TextData;
use crate::error::{MoeError, Result};
use crate::model::MoeLmConfig;
use crate::moe::MoeConfig;
use crate::train::TrainConfig;
use crate::train::run_dir::io_err;

/// What a run trains: enough to rebuild the model and resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunManifest {
    /// The model.
    pub model: MoeLmConfig,
    /// The training settings.
    pub train: TrainConfig,
    /// The data file (an absolute path), or `None` for the embedded default corpus.
    pub data: Option<PathBuf>,
    /// Size and digest of the data file when the run started; resume and eval refuse a file
    /// that no longer matches.
    #[serde(default)]
    pub data_digest: Option<FileDigest>,
}

impl RunManifest {
    /// Errors, before anything is allocated, when the run's weights, optimizer state and
    /// activations would not fit in the memory this machine has.
    pub(crate) fn check_training_fits(&self) -> Result<()> {
        let (m, t) = (&self.model, &self.train);
        let tokens = t.batch_size as f64 * t.seq_len as f64;
        let d = m.d_model() as f64;
        let moe = &m.moe;
        // Per token per block: attention and norms (~16 d), the routed experts' hidden activations
        // (3 k d_ff), the router scores (2 m); plus the output logits. Autodiff keeps them all.
        let per_token = m.n_layers as f64
            * (16.0 * d + 3.0 * moe.top_k as f64 * moe.d_ff as f64 + 2.0 * moe.num_experts as f64)
            + 2.0 * m.vocab_size as f64;
        // Weights, gradients and AdamW's two moments: four copies of the parameters.
        let bytes = 4.0 * (4.0 * m.param_count() + tokens * per_token);
        crate::memory::check_fits(bytes, "training this model with this batch")
    }

    /// A manifest for `data` (resolved to an absolute path and digested).
    pub fn new(model: MoeLmConfig, train: TrainConfig, data: Option<&Path>) -> Result<Self> {
        let mut m = RunManifest {
            model,
            train,
            data: data.map(Path::to_path_buf),
            data_digest: None,
        };
        m.resolve_data()?;
        Ok(m)
    }

    /// Makes the data path absolute and records its size and digest (once; a manifest that
    /// already has a digest is left as it is).
    pub fn resolve_data(&mut self) -> Result<()> {
        if let Some(path) = &self.data
            && self.data_digest.is_none()
        {
            let abs = std::fs::canonicalize(path)
                .map_err(|e| io_err("cannot read data file", path, e))?;
            self.data_digest = Some(FileDigest::of_file(&abs)?);
            self.data = Some(abs);
        }
        Ok(())
    }

    /// Gives the layer-config fields a `run.json` written before they existed (group-limited
    /// routing, routed scaling, the shared-expert gate, ...) their defaults, so older runs still
    /// evaluate and resume; fields present are left as they are.
    pub fn fill_new_defaults(json: &mut serde_json::Value) {
        let Some(moe) = json
            .get_mut("model")
            .and_then(|m| m.get_mut("moe"))
            .and_then(|m| m.as_object_mut())
        else {
            return; // not a manifest: parsing reports it
        };
        if let Ok(serde_json::Value::Object(defaults)) =
            serde_json::to_value(MoeConfig::new(1, 1, 1))
        {
            for (key, value) in defaults {
                moe.entry(key).or_insert(value);
            }
        }
    }

    /// Checks the model and training settings (a hand-edited `run.json` may hold anything).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        if self.train.seq_len > self.model.max_seq_len {
            return Err(MoeError::Config(format!(
                "seq-len {} exceeds the model's max_seq_len {}",
                self.train.seq_len, self.model.max_seq_len
            )));
        }
        Ok(())
    }

    /// The run's data: the recorded file, verified against its recorded size and digest, or the
    /// embedded corpus.
    pub fn load_data(&self) -> Result<TextData> {
        if let (Some(path), Some(digest)) = (&self.data, &self.data_digest) {
            digest.verify(path).map_err(|e| {
                MoeError::Input(format!(
                    "the run's data file changed since the run started ({e}); restore it, or \
                     start a new run"
                ))
            })?;
        }
        let data = TextData::from_file_or_default(self.data.as_deref(), self.train.seed)?;
        data.check_seq_len(self.train.seq_len)?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn a_manifest_from_before_the_group_fields_loads_with_their_defaults() {
        let mut model = Preset::Tiny.config(64);
        model.moe.top_k = 3;
        let manifest = RunManifest::new(model, TrainConfig::new(), None).unwrap();
        let mut json = serde_json::to_value(&manifest).unwrap();
        let moe = json["model"]["moe"].as_object_mut().unwrap();
        for key in [
            "routed_scaling_factor",
            "expert_groups",
            "top_groups",
            "group_score",
            "shared_expert_gate",
        ] {
            assert!(moe.remove(key).is_some(), "{key}");
        }
        assert!(serde_json::from_value::<RunManifest>(json.clone()).is_err());
        RunManifest::fill_new_defaults(&mut json);
        let back: RunManifest = serde_json::from_value(json).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&manifest).unwrap()
        );
        // Not a manifest: left for the parser to reject.
        let mut other = serde_json::json!({ "model": 3 });
        RunManifest::fill_new_defaults(&mut other);
        assert_eq!(other, serde_json::json!({ "model": 3 }));
    }
}
