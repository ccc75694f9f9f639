//! Past one process: the collectives a multi-process run needs ([`Collective`]), for one
//! process ([`Solo`]) or for the ranks of an MPI job ([`MpiComm`], cargo feature `mpi`), and
//! the data-parallel step built on them ([`average_gradients`], [`sync_routing`]), and expert
//! parallel ([`ExpertShard`]: experts spread over the ranks, rows moved by [`exchange_rows`]).

mod collective;
mod data_parallel;
mod exchange;
mod expert_parallel;
mod expert_state;
mod layout;
#[cfg(feature = "mpi")]
mod mpi;

pub use collective::{Collective, Solo, Traffic, launcher_world_size, ranks_from_launcher};
pub use data_parallel::{
    BUCKET_VALUES, average_gradients, check_data_parallel, check_same_run, rank_seed, shard,
    sync_routing,
};
pub use exchange::{Exchange, current_collective, exchange_rows, with_collective};
pub use expert_parallel::ExpertShard;
pub use expert_state::{average_model_gradients, gather_optimizer, shard_optimizer};
pub use layout::{ExpertParallel, read_placement};
#[cfg(feature = "mpi")]
pub use mpi::MpiComm;
