//! Hugging Face checkpoints in and out: the MoE blocks of Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE
//! and DeepSeek-V3 from their safetensors files (read through burn-store) into a [`Moe`], and
//! back.
//!
//! ```no_run
//! use std::path::Path;
//! use burn::tensor::Device;
//! use burn_moe::hf::{HfFamily, load_moe};
//!
//! let dir = Path::new("Qwen3-30B-A3B");
//! let (family, config) = HfFamily::read_config(&dir.join("config.json")).unwrap();
//! // One file, or a directory of shards: only this block's tensors are read.
//! let moe = load_moe(dir, "model.layers.0.mlp.", family, &config, &Device::flex()).unwrap();
//! ```
//!
//! [`Moe`]: crate::Moe

mod export;
mod family;
mod import;

pub use export::{HfExpertLayout, save_moe};
pub use family::HfFamily;
pub use import::{HfTensors, load_moe, load_moe_from};
