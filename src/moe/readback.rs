//! Counting the layer's reads from the device to the host.
//!
//! Each read stalls the device queue until everything before it has run; the layer aims at none
//! in its forward and backward passes. The count is per thread (the thread that calls the
//! layer), so tests running in parallel do not see each other's reads.

use std::cell::Cell;

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Device-to-host reads the MoE layers made on this thread since it started.
pub fn host_reads() -> u64 {
    READS.with(Cell::get)
}

/// Records one read (call it right before reading device data back).
pub(crate) fn count_read() {
    READS.with(|r| r.set(r.get() + 1));
}
