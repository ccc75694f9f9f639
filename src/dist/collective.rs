//! [`Collective`]: the collective operations of a multi-process run, and [`Solo`], the one
//! process.

use std::time::Duration;

use crate::error::Result;

/// Payload bytes one rank has contributed to collectives so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes summed over the ranks (all-reduce).
    pub all_reduce: u64,
    /// Bytes gathered from every rank (all-gather).
    pub all_gather: u64,
    /// Bytes sent to the other ranks (all-to-all, expert parallel).
    pub all_to_all: u64,
}

/// The collectives of a run over `size()` ranks. Every rank calls the same operations in the
/// same order with the same lengths; a rank that stops answering ends the job with an error
/// (in bounded time, see [`MpiComm`](crate::dist::MpiComm)), never a hang.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Ranks in the run.
    fn size(&self) -> usize;
    /// Replaces `values` by their element-wise sum over the ranks.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Replaces `values` by their element-wise sum over the ranks.
    fn sum_u64(&self, values: &mut [u64]) -> Result<()>;
    /// Every rank's `values` (the same length on every rank), concatenated in rank order.
    fn gather_f32(&self, values: &[f32]) -> Result<Vec<f32>>;
    /// Every rank's `values` (the same length on every rank), concatenated in rank order.
    fn gather_u64(&self, values: &[u64]) -> Result<Vec<u64>>;
    /// All-to-all with varying counts: `send` holds `send_counts[r]` values for each rank `r`
    /// in rank order; returns the `recv_counts[r]` values each rank `r` sent this one, in rank
    /// order. Every rank's `send_counts[me]` equals `me`'s `recv_counts[them]`.
    fn exchange_f32(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>>;
    /// The ranks that pass the same `color` as this one, as a collective of their own (in
    /// their order here). Every rank calls it.
    fn split(&self, color: usize) -> Result<Box<dyn Collective>>;
    /// What this rank has sent so far (all collectives split from one world together).
    fn traffic(&self) -> Traffic;
    /// Ends the whole job now with exit `code` (one rank's error must not leave the others
    /// waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// A run of one process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_u64(&self, _: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn gather_f32(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }
    fn gather_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
        Ok(values.to_vec())
    }
    fn exchange_f32(&self, send: &[f32], sc: &[usize], rc: &[usize]) -> Result<Vec<f32>> {
        if sc != [send.len()] || rc != sc {
            return Err(crate::error::MoeError::Distributed(format!(
                "one process exchanges with itself only: send counts {sc:?}, receive counts \
                 {rc:?} for {} values",
                send.len()
            )));
        }
        Ok(send.to_vec())
    }
    fn split(&self, _: usize) -> Result<Box<dyn Collective>> {
        Ok(Box::new(Solo))
    }
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The number of processes an MPI launcher (`mpirun`, `mpiexec`, `srun`) started this one
/// among, read from the environment it sets; `None` when no launcher started it.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// The ranks of this process's run: MPI's world when an MPI launcher started it (feature
/// `mpi`; `timeout`: see [`MpiComm::from_launcher`](crate::dist::MpiComm::from_launcher)),
/// else [`Solo`].
///
/// # Errors
/// Started by a launcher among several processes in a build without the `mpi` feature (the
/// message says how to build with it); MPI failing to start.
pub fn ranks_from_launcher(timeout: Duration) -> Result<Box<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if let Some(comm) = super::MpiComm::from_launcher(timeout)? {
        return Ok(Box::new(comm));
    }
    #[cfg(not(feature = "mpi"))]
    if let Some(n) = launcher_world_size().filter(|&n| n > 1) {
        let _ = timeout;
        return Err(crate::error::MoeError::Distributed(format!(
            "an MPI launcher started this process as one of {n} ranks, but this build of \
             burn-moe has no MPI: build it with `cargo build --release --features mpi` (needs \
             MPI and libclang, e.g. apt-get install libopenmpi-dev openmpi-bin libclang-dev \
             pkg-config)"
        )));
    }
    Ok(Box::new(Solo))
}
