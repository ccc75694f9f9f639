//! `run.json`: what a run trains, on which data, with which settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::FileDigest;
use crate::data::TextData;
use crate::error::{MoeError, Result};
use crate::model::MoeLmConfig;
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
