//! [`MpiComm`]: the collectives over the ranks of an MPI job (rsmpi), with a watchdog that
//! ends a rank whose collective waits too long, so a dead or hung rank stops the job with a
//! clear message instead of a hang.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::Count;
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Color, Communicator, SimpleCommunicator};

use super::{Collective, Traffic};
use crate::error::{MoeError, Result};

/// Largest element count of one MPI message (counts are `i32`).
const MAX_MESSAGE: usize = i32::MAX as usize;

/// The world communicator of an MPI job. Not `Send` (MPI communicators are not, on OpenMPI):
/// create and use it on the thread that trains.
pub struct MpiComm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    watchdog: Arc<Watch>,
    /// Shared by the world and the communicators split from it.
    traffic: Rc<Cell<Traffic>>,
    // The world's: finalizes MPI when dropped (declared last so it outlives the
    // communicator). `None` for a split communicator, which must be dropped before the world.
    _universe: Option<Universe>,
}

/// What the watchdog thread watches: the collective in flight and when it began.
struct Watch {
    /// Milliseconds since `origin` when the current collective began; 0: none in flight.
    since_ms: AtomicU64,
    op: Mutex<&'static str>,
    origin: Instant,
}

impl MpiComm {
    /// Initialises MPI when an MPI launcher started this process (see
    /// [`launcher_world_size`](super::launcher_world_size)); `None` otherwise. A collective
    /// that waits more than `timeout` for the other ranks ends this process with exit code 3
    /// and a message naming the rank and the operation.
    pub fn from_launcher(timeout: Duration) -> Result<Option<Self>> {
        if super::launcher_world_size().is_none() {
            return Ok(None);
        }
        let universe = mpi::initialize().ok_or_else(|| {
            MoeError::Distributed("MPI was already initialised in this process".into())
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watchdog = Arc::new(Watch {
            since_ms: AtomicU64::new(0),
            op: Mutex::new(""),
            origin: Instant::now(),
        });
        let watch = Arc::clone(&watchdog);
        std::thread::Builder::new()
            .name("mpi-watchdog".into())
            .spawn(move || watch.run(rank, size, timeout))
            .map_err(|e| MoeError::Distributed(format!("cannot start the watchdog: {e}")))?;
        Ok(Some(MpiComm {
            world,
            rank,
            size,
            watchdog,
            traffic: Rc::new(Cell::new(Traffic::default())),
            _universe: Some(universe),
        }))
    }

    /// Runs `f` as the collective `op`, under the watchdog.
    fn watched<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        if let Ok(mut current) = self.watchdog.op.lock() {
            *current = op;
        }
        let now = self.watchdog.origin.elapsed().as_millis() as u64;
        self.watchdog.since_ms.store(now.max(1), Ordering::SeqCst);
        let out = f();
        self.watchdog.since_ms.store(0, Ordering::SeqCst);
        out
    }

    fn count(&self, f: impl FnOnce(&mut Traffic)) {
        let mut t = self.traffic.get();
        f(&mut t);
        self.traffic.set(t);
    }
}

impl Watch {
    fn run(&self, rank: usize, size: usize, timeout: Duration) {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let since = self.since_ms.load(Ordering::SeqCst);
            if since == 0 {
                continue;
            }
            let waited = (self.origin.elapsed().as_millis() as u64).saturating_sub(since);
            if waited > timeout.as_millis() as u64 {
                let op = self.op.lock().map(|o| *o).unwrap_or("a collective");
                eprintln!(
                    "error: distributed run: rank {rank} of {size} waited {:.0} s in {op} for the \
                     other ranks: one of them has died or hung; stopping this rank (the limit is \
                     --rank-timeout)",
                    waited as f64 / 1000.0
                );
                std::process::exit(3);
            }
        }
    }
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        sum(self, values);
        self.count(|t| t.all_reduce += 4 * values.len() as u64);
        Ok(())
    }
    fn sum_u64(&self, values: &mut [u64]) -> Result<()> {
        sum(self, values);
        self.count(|t| t.all_reduce += 8 * values.len() as u64);
        Ok(())
    }
    fn gather_f32(&self, values: &[f32]) -> Result<Vec<f32>> {
        let out = gather(self, values)?;
        self.count(|t| t.all_gather += 4 * values.len() as u64);
        Ok(out)
    }
    fn gather_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
        let out = gather(self, values)?;
        self.count(|t| t.all_gather += 8 * values.len() as u64);
        Ok(out)
    }
    fn exchange_f32(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>> {
        let counts = |c: &[usize], what: &str| -> Result<(Vec<Count>, Vec<Count>)> {
            if c.len() != self.size {
                return Err(MoeError::Distributed(format!(
                    "all-to-all: {} {what} counts for {} ranks",
                    c.len(),
                    self.size
                )));
            }
            let mut displs = Vec::with_capacity(c.len());
            let mut at = 0usize;
            for &n in c {
                displs.push(at);
                at += n;
            }
            if at > MAX_MESSAGE {
                return Err(MoeError::Distributed(format!(
                    "an all-to-all of {at} values exceeds MPI's 2^31-1 elements"
                )));
            }
            let cast = |v: &[usize]| v.iter().map(|&x| x as Count).collect();
            Ok((cast(c), cast(&displs)))
        };
        let (sc, sd) = counts(send_counts, "send")?;
        let (rc, rd) = counts(recv_counts, "receive")?;
        if send_counts.iter().sum::<usize>() != send.len() {
            return Err(MoeError::Distributed(format!(
                "all-to-all: send counts {send_counts:?} do not add up to {} values",
                send.len()
            )));
        }
        let mut out = vec![0f32; recv_counts.iter().sum()];
        self.watched("all-to-all", || {
            let sendbuf = Partition::new(send, &sc[..], &sd[..]);
            let mut recvbuf = PartitionMut::new(&mut out[..], &rc[..], &rd[..]);
            self.world.all_to_all_varcount_into(&sendbuf, &mut recvbuf);
        });
        let mine = send_counts[self.rank];
        self.count(|t| t.all_to_all += 4 * (send.len() - mine) as u64);
        Ok(out)
    }
    fn split(&self, color: usize) -> Result<Box<dyn Collective>> {
        let color = Color::with_value(i32::try_from(color).map_err(|_| {
            MoeError::Distributed(format!("communicator color {color} is out of range"))
        })?);
        let sub = self
            .watched("communicator split", || self.world.split_by_color(color))
            .ok_or_else(|| MoeError::Distributed("MPI refused to split the ranks".into()))?;
        Ok(Box::new(MpiComm {
            rank: sub.rank() as usize,
            size: sub.size() as usize,
            world: sub,
            watchdog: Arc::clone(&self.watchdog),
            traffic: Rc::clone(&self.traffic),
            _universe: None,
        }))
    }
    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
    fn abort(&self, code: i32) -> ! {
        // The whole job, whichever communicator this is.
        SimpleCommunicator::world().abort(code)
    }
}

/// Element-wise sum over the ranks, in place, in messages of at most 2^31-1 values.
fn sum<T: mpi::datatype::Equivalence + Copy>(comm: &MpiComm, values: &mut [T]) {
    comm.watched("all-reduce", || {
        for chunk in values.chunks_mut(MAX_MESSAGE) {
            let send = chunk.to_vec();
            comm.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    });
}

fn gather<T: mpi::datatype::Equivalence + Copy + Default>(
    comm: &MpiComm,
    values: &[T],
) -> Result<Vec<T>> {
    if values.len().saturating_mul(comm.size) > MAX_MESSAGE {
        return Err(MoeError::Distributed(format!(
            "an all-gather of {} values from each of {} ranks exceeds MPI's 2^31-1 elements",
            values.len(),
            comm.size
        )));
    }
    let mut out = vec![T::default(); values.len() * comm.size];
    comm.watched("all-gather", || {
        comm.world.all_gather_into(values, &mut out[..])
    });
    Ok(out)
}
