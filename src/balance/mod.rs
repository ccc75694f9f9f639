//! Load balancing, chosen by [`BalancerConfig`]: loss terms (Switch, GShard, sequence-wise aux
//! losses, router z-loss) and selection offsets kept as layer state (Loss-Free bias, BIP dual
//! prices, quantile-balancing bias). Formulas and sources: `docs/algorithms.md`.

pub mod bip;
mod config;
pub mod loss_free;
pub mod losses;
pub mod metrics;
mod offset;
pub mod quantile;
pub mod simulate;

pub use config::{BalancerConfig, BalancerSummary, BipOrder, LossFreeUpdate};
pub(crate) use offset::{BatchShape, offset_before_routing, state_after_routing};
pub use quantile::QuantileEstimator;
