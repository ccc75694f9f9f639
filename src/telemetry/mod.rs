//! Expert-load telemetry: the per-step trace written during training.

pub mod trace;
