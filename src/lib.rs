//! burn-moe: Mixture-of-Experts layers for [Burn](https://burn.dev), on any GPU through wgpu or on
//! the CPU (ndarray, flex).
//!
//! ```no_run
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn_moe::moe::MoeConfig;
//!
//! let device = Device::flex();
//! let moe = MoeConfig::new(64, 128, 8).with_top_k(2).init(&device);
//! let x = Tensor::<3>::random([4, 16, 64], Distribution::Normal(0.0, 1.0), &device);
//! let out = moe.forward(x);
//! println!("tokens per expert: {:?}", out.routing.counts().unwrap().computed);
//! ```

#![warn(missing_docs)]

pub mod balance;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod grouped;
pub mod hf;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod moe;
pub mod predict;
pub mod routing;
pub mod telemetry;
#[cfg(test)]
mod test_rng;
pub mod train;

pub use device::BackendKind;

/// The README's Rust examples, compiled (and run unless marked `no_run`) as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use error::{MoeError, Result};
pub use moe::{Moe, MoeConfig, MoeOutput};
