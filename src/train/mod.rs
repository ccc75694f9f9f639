//! Training, evaluation and generation for [`MoeLm`](crate::model::MoeLm).

mod config;
mod eval;
mod expert_run;
mod generate;
#[cfg(feature = "learner")]
pub mod learner;
mod manifest;
mod run_dir;
mod schedule;
pub mod study;
mod trainer;

pub use config::TrainConfig;
pub use eval::{EvalReport, evaluate};
pub use generate::{SamplingConfig, generate};
pub use manifest::RunManifest;
pub use run_dir::{CheckpointState, RunDir, RunLock};
pub use schedule::learning_rate;
pub use trainer::{Progress, TrainStart, TrainSummary, train};
