//! A small GPT-style decoder whose FFNs are MoE layers: byte-level, causal, tied head.

mod block;
mod config;
mod lm;

pub use block::{Block, Ffn};
pub use config::{MoeLmConfig, NormKind, Preset};
pub use lm::{LmOutput, MoeLm};
