//! The MoE layer, in four named stages: route ([`Router`]) -> dispatch ([`TokenDispatcher`]) ->
//! experts ([`ExpertFfn`], routed and shared) -> combine ([`TokenDispatcher::combine`]).

mod config;
mod device_routing;
mod dispatcher;
mod experts;
mod layer;
mod output;
mod readback;
pub mod reference;
pub(crate) mod router;

pub use config::{ExpertActivation, MoeConfig, ScoreFunction};
pub use dispatcher::{DeviceRouting, TokenDispatcher};
pub use experts::ExpertFfn;
pub(crate) use layer::DrawWeights;
pub use layer::Moe;
pub use output::{ExpertCounts, HostRouting, MoeOutput, RouterOutput, Routing};
pub(crate) use readback::count_read;
pub use readback::host_reads;
pub use router::Router;
