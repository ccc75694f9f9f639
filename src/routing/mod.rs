//! Routing decisions on the host: scores, top-k selection, GShard's 2nd-expert rule, capacity,
//! local token groups and group-limited expert choice. These are plain-Rust, backend-free functions over `[tokens, experts]` rows, so
//! every backend makes the same decisions from the same router logits.

pub mod capacity;
pub mod groups;
pub mod plan;
pub mod scores;
pub mod topk;

pub use groups::{GroupLimit, GroupScore};
pub use plan::{RoutingPlan, RoutingRule, plan_from_positions, plan_routing};
