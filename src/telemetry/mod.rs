//! Expert-load telemetry: the per-step trace written during training, its analysis (balance
//! over time, phase switch) and charts.

pub mod analyze;
pub mod loads;
#[cfg(feature = "plots")]
pub mod plots;
pub mod trace;
