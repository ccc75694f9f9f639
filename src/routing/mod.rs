//! Routing decisions on the host: scores, top-k selection, GShard's 2nd-expert rule, capacity and
//! local groups. These are plain-Rust, backend-free functions over `[tokens, experts]` rows, so
//! every backend makes the same decisions from the same router logits.

pub mod capacity;
pub mod plan;
pub mod scores;
pub mod topk;

pub use plan::{RoutingPlan, RoutingRule, plan_from_positions, plan_routing};
