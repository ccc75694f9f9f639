//! The one error type of the crate: every bad config or input ends here, never in a panic.

use thiserror::Error;

/// Everything that can go wrong when building or running a MoE layer.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MoeError {
    /// A configuration value is out of its valid range.
    #[error("invalid MoE config: {0}")]
    Config(String),
    /// An input tensor has the wrong rank, width or size.
    #[error("invalid input: {0}")]
    Input(String),
    /// The router produced NaN or infinite logits (usually NaN/Inf in the input or the weights).
    #[error(
        "router logits are not finite: {count} non-finite values, first at token {token}, expert {expert} \
         (check the layer input and router weights for NaN/Inf)"
    )]
    NonFinite {
        /// Number of non-finite logits.
        count: usize,
        /// Token index of the first one.
        token: usize,
        /// Expert index of the first one.
        expert: usize,
    },
    /// A file could not be read or written.
    #[error("file error: {0}")]
    Io(String),
    /// The requested backend could not be created.
    #[error("backend unavailable: {0}")]
    Backend(String),
    /// A multi-process run failed: ranks disagree, a rank stopped answering, MPI is missing.
    #[error("distributed run: {0}")]
    Distributed(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = MoeError> = std::result::Result<T, E>;

/// Returns `Err(MoeError::Config(..))` unless `ok` holds.
pub(crate) fn ensure_config(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(MoeError::Config(msg()))
    }
}
