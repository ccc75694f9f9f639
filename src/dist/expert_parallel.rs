//! Expert parallel: each rank holds some of a layer's routed experts (a [`Placement`]: expert
//! -> ranks, with replicas of hot experts) and its shard of the batch. A layer call routes its
//! own tokens, sorts their assignments by expert (the dispatcher's buffer), sends each
//! expert's rows to the ranks holding it (a replicated expert's rows split evenly between its
//! copies, in copy order), runs its experts on the rows it received with one grouped matmul,
//! and sends the results back the same way; the backward pass retraces both exchanges.

use burn::tensor::{Int, Tensor, TensorData};

use super::exchange::{current_collective, exchange_rows};
use crate::error::{MoeError, Result};
use crate::grouped::GroupOffsets;
use crate::moe::ExpertFfn;
use crate::moe::router::read_as;
use crate::predict::placement::Placement;

/// This rank's part of an expert-parallel layer: the placement and the experts it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertShard {
    /// Which ranks hold which expert.
    pub placement: Placement,
    /// This process's rank.
    pub rank: usize,
}

/// How one layer call's rows move (host values, from every rank's per-expert counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExchangePlan {
    /// The sorted buffer's rows in the order they are sent (rank after rank, each rank's slots
    /// in its order).
    pub send_order: Vec<i64>,
    /// Rows sent to each rank.
    pub send_rows: Vec<usize>,
    /// Rows received from each rank.
    pub recv_rows: Vec<usize>,
    /// For each row of the experts' input (slot after slot, each slot's rows source after
    /// source), its row in the received buffer.
    pub slot_order: Vec<i64>,
    /// `[slots + 1]`: each local slot's rows of the experts' input.
    pub slot_offsets: Vec<i64>,
}

impl ExpertShard {
    /// Errors unless `placement` puts each of `experts` experts on at least one of its ranks,
    /// never twice on one rank, and gives `rank` (one of its ranks) at least one expert.
    pub fn new(placement: Placement, experts: usize, rank: usize) -> Result<Self> {
        let bad = |m: String| Err(MoeError::Config(format!("expert placement: {m}")));
        let ranks = placement.devices;
        if placement.copies.len() != experts {
            return bad(format!(
                "it places {} experts, the layer has {experts}",
                placement.copies.len()
            ));
        }
        if rank >= ranks {
            return bad(format!("rank {rank} is not one of its {ranks} ranks"));
        }
        for (e, holders) in placement.copies.iter().enumerate() {
            if holders.is_empty() {
                return bad(format!("expert {e} is on no rank"));
            }
            for (i, &r) in holders.iter().enumerate() {
                if r >= ranks {
                    return bad(format!("expert {e} is on rank {r} of {ranks}"));
                }
                if holders[..i].contains(&r) {
                    return bad(format!("expert {e} has two copies on rank {r}"));
                }
            }
        }
        if let Some(idle) = (0..ranks).find(|&r| slots(&placement, r).is_empty()) {
            return bad(format!("rank {idle} holds no expert"));
        }
        Ok(ExpertShard { placement, rank })
    }

    /// The experts this rank holds, in slot order (ascending).
    pub fn local_experts(&self) -> Vec<usize> {
        slots(&self.placement, self.rank)
            .into_iter()
            .map(|(e, _)| e)
            .collect()
    }

    /// The exchange of one call, from every rank's computed rows per expert (`counts[s][e]`).
    pub(crate) fn plan(&self, counts: &[Vec<usize>]) -> ExchangePlan {
        let ranks = self.placement.devices;
        let all_slots: Vec<_> = (0..ranks).map(|r| slots(&self.placement, r)).collect();
        // Rows of source `s` for slot `(e, q)`: copy q's share of expert e's rows.
        let share = |s: usize, (e, q): (usize, usize)| {
            let c = self.placement.copies[e].len();
            chunk(counts[s][e], q, c)
        };
        let mine = &counts[self.rank];
        let mut first = vec![0usize; mine.len()];
        for e in 1..mine.len() {
            first[e] = first[e - 1] + mine[e - 1];
        }
        let mut send_order = Vec::new();
        let mut send_rows = vec![0; ranks];
        for (r, slots) in all_slots.iter().enumerate() {
            for &slot in slots {
                let rows = share(self.rank, slot);
                send_order.extend(
                    (first[slot.0] + rows.start..first[slot.0] + rows.end).map(|v| v as i64),
                );
                send_rows[r] += rows.len();
            }
        }
        let local = &all_slots[self.rank];
        let recv_rows: Vec<usize> = (0..ranks)
            .map(|s| local.iter().map(|&slot| share(s, slot).len()).sum())
            .collect();
        // Where each (source, slot) block starts in the received buffer.
        let mut at = 0usize;
        let mut starts = vec![vec![0usize; local.len()]; ranks];
        for (s, row) in starts.iter_mut().enumerate() {
            for (j, &slot) in local.iter().enumerate() {
                row[j] = at;
                at += share(s, slot).len();
            }
        }
        let mut slot_order = Vec::with_capacity(at);
        let mut slot_offsets = vec![0i64];
        for (j, &slot) in local.iter().enumerate() {
            for (s, row) in starts.iter().enumerate() {
                let n = share(s, slot).len();
                slot_order.extend((row[j]..row[j] + n).map(|v| v as i64));
            }
            slot_offsets.push(slot_order.len() as i64);
        }
        ExchangePlan {
            send_order,
            send_rows,
            recv_rows,
            slot_order,
            slot_offsets,
        }
    }

    /// Runs the experts of an expert-sorted buffer on the ranks that hold them: `experts` are
    /// this rank's (slot order), `groups` the buffer's per-expert rows over all experts.
    ///
    /// # Shapes
    /// - x, output: `[rows, d_model]`, rows sorted by expert as `groups` says (rows past the
    ///   last expert's come out zero)
    ///
    /// # Errors
    /// Outside [`with_collective`](super::with_collective), or a collective failing; one small
    /// read of the offsets.
    pub fn run_experts(
        &self,
        experts: &ExpertFfn,
        x: Tensor<2>,
        groups: &GroupOffsets,
    ) -> Result<Tensor<2>> {
        let [rows, d] = x.dims();
        let device = x.device();
        crate::moe::count_read();
        let offsets = read_as::<i64>(Some(groups.offsets.clone().into_data()))?;
        let m = self.placement.copies.len();
        let local: Vec<u64> = offsets.windows(2).map(|w| (w[1] - w[0]) as u64).collect();
        let all = current_collective(|comm| {
            if comm.size() != self.placement.devices {
                return Err(MoeError::Distributed(format!(
                    "the expert placement is for {} ranks, the collective of \
                     with_collective has {}",
                    self.placement.devices,
                    comm.size()
                )));
            }
            comm.gather_u64(&local)
        })??;
        let counts: Vec<Vec<usize>> = all
            .chunks(m)
            .map(|c| c.iter().map(|&v| v as usize).collect())
            .collect();
        let plan = self.plan(&counts);
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let as_ints = |v: &[usize]| ints(v.iter().map(|&r| r as i64).collect());
        let (send_rows, recv_rows) = (as_ints(&plan.send_rows), as_ints(&plan.recv_rows));
        let received = exchange_rows(
            x.select(0, ints(plan.send_order.clone())),
            send_rows.clone(),
            recv_rows.clone(),
        );
        let input = received.select(0, ints(plan.slot_order.clone()));
        let local_groups = GroupOffsets {
            offsets: ints(plan.slot_offsets.clone()),
            max_rows: None,
        };
        let out = experts.forward_grouped(input, &local_groups);
        let back = out.select(0, ints(inverse(&plan.slot_order, plan.slot_order.len())));
        let returned = exchange_rows(back, recv_rows, send_rows);
        // Each sorted row reads its result; rows no expert computed read the zero row.
        let padded = Tensor::cat(vec![returned, Tensor::zeros([1, d], &device)], 0);
        Ok(padded.select(0, ints(inverse(&plan.send_order, rows))))
    }
}

/// `inv[p[i]] = i`, and `p.len()` (the index of a zero row) where no `i` maps.
fn inverse(p: &[i64], len: usize) -> Vec<i64> {
    let mut inv = vec![p.len() as i64; len];
    for (i, &row) in p.iter().enumerate() {
        inv[row as usize] = i as i64;
    }
    inv
}

/// Rank `rank`'s slots: `(expert, copy index)` for each expert it holds, in expert order.
pub(super) fn slots(placement: &Placement, rank: usize) -> Vec<(usize, usize)> {
    placement
        .copies
        .iter()
        .enumerate()
        .filter_map(|(e, holders)| holders.iter().position(|&r| r == rank).map(|q| (e, q)))
        .collect()
}

/// Copy `q` of `c`'s share of `n` rows: consecutive, sizes differing by at most one.
fn chunk(n: usize, q: usize, c: usize) -> std::ops::Range<usize> {
    q * n / c..(q + 1) * n / c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rank's plan, run on tagged rows in one process: each expert's rows from every
    /// source reach exactly its copies, split in order between them, each local slot gets only
    /// its expert's rows, and the way back returns every row to its place.
    #[test]
    fn plans_deliver_every_row_to_one_copy_and_back() {
        let mut rng = crate::test_rng::TestRng::new(7);
        for case in 0..200 {
            let ranks = 1 + rng.below(4);
            let experts = ranks + rng.below(6);
            // Each expert on a random rank, some with a second copy; every rank holds one.
            let mut copies: Vec<Vec<usize>> = (0..experts).map(|e| vec![e % ranks]).collect();
            for holders in copies.iter_mut() {
                if ranks > 1 && rng.below(3) == 0 {
                    let other = (holders[0] + 1 + rng.below(ranks - 1)) % ranks;
                    holders.push(other);
                }
            }
            let placement = Placement {
                devices: ranks,
                copies: copies.clone(),
            };
            let counts: Vec<Vec<usize>> = (0..ranks)
                .map(|_| (0..experts).map(|_| rng.below(5)).collect())
                .collect();
            let shards: Vec<ExpertShard> = (0..ranks)
                .map(|r| ExpertShard::new(placement.clone(), experts, r).unwrap())
                .collect();
            let plans: Vec<ExchangePlan> = shards.iter().map(|s| s.plan(&counts)).collect();
            // Rows tagged (source, expert, index within the expert's rows).
            let rows: Vec<Vec<(usize, usize, usize)>> = (0..ranks)
                .map(|s| {
                    (0..experts)
                        .flat_map(|e| (0..counts[s][e]).map(move |i| (s, e, i)))
                        .collect()
                })
                .collect();
            let mut received = vec![Vec::new(); ranks];
            for (s, plan) in plans.iter().enumerate() {
                assert_eq!(plan.send_order.len(), rows[s].len(), "case {case}");
                let mut at = 0;
                for (r, &n) in plan.send_rows.iter().enumerate() {
                    let block = &plan.send_order[at..at + n];
                    received[r].push(
                        block
                            .iter()
                            .map(|&i| rows[s][i as usize])
                            .collect::<Vec<_>>(),
                    );
                    at += n;
                }
            }
            let mut delivered = std::collections::HashMap::new();
            for (r, plan) in plans.iter().enumerate() {
                for (s, block) in received[r].iter().enumerate() {
                    assert_eq!(block.len(), plan.recv_rows[s], "case {case}");
                }
                let flat: Vec<_> = received[r].concat();
                let local = shards[r].local_experts();
                for (j, &e) in local.iter().enumerate() {
                    let (lo, hi) = (
                        plan.slot_offsets[j] as usize,
                        plan.slot_offsets[j + 1] as usize,
                    );
                    let q = copies[e].iter().position(|&x| x == r).unwrap();
                    for &i in &plan.slot_order[lo..hi] {
                        let (s, expert, idx) = flat[i as usize];
                        assert_eq!(expert, e, "case {case}: rank {r} slot {j}");
                        // Copy q holds the q-th consecutive share of the source's rows.
                        let c = copies[e].len();
                        let n = counts[s][e];
                        assert!(q * n / c <= idx && idx < (q + 1) * n / c, "case {case}");
                        assert!(
                            delivered.insert((s, e, idx), r).is_none(),
                            "case {case}: twice"
                        );
                    }
                }
                // The way back: the slot order inverted, then the send order inverted.
                let inv = inverse(&plan.slot_order, plan.slot_order.len());
                let back: Vec<i64> = inv.iter().map(|&i| plan.slot_order[i as usize]).collect();
                assert_eq!(
                    back,
                    (0..flat.len() as i64).collect::<Vec<_>>(),
                    "case {case}"
                );
            }
            let total: usize = counts.iter().flatten().sum();
            assert_eq!(delivered.len(), total, "case {case}: every row delivered");
            for (s, plan) in plans.iter().enumerate() {
                let unsort = inverse(&plan.send_order, rows[s].len() + 3);
                for (k, &row) in plan.send_order.iter().enumerate() {
                    assert_eq!(unsort[row as usize], k as i64);
                }
                assert!(
                    unsort[rows[s].len()..]
                        .iter()
                        .all(|&z| z == rows[s].len() as i64)
                );
            }
        }
    }

    #[test]
    fn bad_placements_are_refused() {
        let p = |copies: Vec<Vec<usize>>| Placement { devices: 2, copies };
        let err = |copies, experts, rank| {
            ExpertShard::new(p(copies), experts, rank)
                .unwrap_err()
                .to_string()
        };
        assert!(err(vec![vec![0], vec![1]], 3, 0).contains("places 2 experts, the layer has 3"));
        assert!(err(vec![vec![0], vec![]], 2, 0).contains("expert 1 is on no rank"));
        assert!(err(vec![vec![0, 0], vec![1]], 2, 0).contains("two copies on rank 0"));
        assert!(err(vec![vec![0], vec![0]], 2, 1).contains("rank 1 holds no expert"));
        assert!(err(vec![vec![0], vec![1]], 2, 2).contains("rank 2 is not one of its 2"));
        assert!(ExpertShard::new(p(vec![vec![1], vec![0, 1]]), 2, 0).is_ok());
    }
}
