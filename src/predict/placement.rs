//! Expert placement: put a layer's experts (and replicas of the hottest) on the ranks of an
//! expert-parallel group so that the busiest rank carries as little as possible.
//!
//! Every rank holds `ceil((m + R) / D)` slots for `m` experts plus `R` replicas on `D` ranks,
//! and a replicated expert's tokens are split evenly between its copies. Three policies share
//! that model: [`Placement::contiguous`] (expert `j` on rank `j / (m / D)`, no replicas: what
//! an expert-parallel layer does by default), DeepSeek's EPLB ([`eplb`](super::eplb)), and
//! ours, [`place`]:
//! 1. replica counts: each of the `R` replicas goes to the expert with the largest load per
//!    copy, never more copies than ranks;
//! 2. packing: copies in decreasing load per copy, each to the least loaded rank with a free
//!    slot that holds no other copy of the same expert (longest processing time first);
//! 3. refinement: move a copy to a rank with a free slot, or swap two copies of different
//!    ranks, while that lowers the mean over the given load rows (the steps the placement
//!    should serve) of the busiest rank's load: a placement for the steps as they fluctuate,
//!    not only for their mean.

use serde::{Deserialize, Serialize};

use crate::error::{MoeError, Result};
use crate::predict::LoadPredictor;
use crate::telemetry::loads::LayerLoads;

/// Which ranks hold which expert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Ranks.
    pub devices: usize,
    /// `copies[j]`: the ranks holding expert `j` (its load is split evenly between them).
    pub copies: Vec<Vec<usize>>,
}

impl Placement {
    /// Expert `j` on rank `j * D / m` (consecutive blocks), no replicas.
    pub fn contiguous(experts: usize, devices: usize) -> Self {
        Placement {
            devices,
            copies: (0..experts).map(|j| vec![j * devices / experts]).collect(),
        }
    }

    /// Each rank's load for per-expert `loads`.
    pub fn device_loads(&self, loads: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.devices];
        for (copies, &l) in self.copies.iter().zip(loads) {
            for &d in copies {
                out[d] += l / copies.len() as f64;
            }
        }
        out
    }

    /// The straggler factor: the busiest rank's load over the mean rank load (1 is perfect).
    pub fn imbalance(&self, loads: &[f64]) -> f64 {
        let d = self.device_loads(loads);
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let max = d.iter().copied().fold(0.0, f64::max);
        if mean > 0.0 { max / mean } else { 1.0 }
    }
}

/// Checks a placement problem: at least one rank and expert, finite loads >= 0, replicas
/// that fit (at most `m * (D - 1)`, none on one rank).
pub(crate) fn check_problem(loads: &[f64], devices: usize, replicas: usize) -> Result<()> {
    let m = loads.len();
    if devices == 0 || m == 0 {
        return Err(MoeError::Input(format!(
            "placement needs at least one rank and one expert, got {devices} and {m}"
        )));
    }
    if replicas > m.saturating_mul(devices - 1) {
        return Err(MoeError::Input(format!(
            "{replicas} replicas do not fit: {m} experts on {devices} ranks take at most {} \
             (one copy of an expert per rank)",
            m * (devices - 1)
        )));
    }
    if let Some(j) = loads.iter().position(|l| !l.is_finite() || *l < 0.0) {
        return Err(MoeError::Input(format!(
            "predicted load of expert {j} is {}; loads must be finite and >= 0",
            loads[j]
        )));
    }
    Ok(())
}

/// Copies per expert: one each, then each of `replicas` more to the expert with the largest
/// load per copy (ties to the lower index), at most `cap` copies of one expert.
pub(crate) fn replica_counts(loads: &[f64], replicas: usize, cap: usize) -> Vec<usize> {
    let mut copies = vec![1usize; loads.len()];
    for _ in 0..replicas {
        let per_copy = |j: usize| loads[j] / copies[j] as f64;
        if let Some(j) = (0..loads.len())
            .filter(|&j| copies[j] < cap)
            .max_by(|&a, &b| per_copy(a).total_cmp(&per_copy(b)).then(b.cmp(&a)))
        {
            copies[j] += 1;
        }
    }
    copies
}

/// Our placement of experts on `devices` ranks with `replicas` extra copies, for the loads in
/// `scenarios`: rows of per-expert loads the placement should serve, e.g. the recent steps
/// shifted to the predicted mean (a single row: one predicted load vector). The replica counts
/// and the packing use the rows' mean; the refinement lowers the mean over the rows of the
/// busiest rank's load (see the module documentation).
pub fn place(scenarios: &[Vec<f64>], devices: usize, replicas: usize) -> Result<Placement> {
    let Some(first) = scenarios.first() else {
        return Err(MoeError::Input(
            "placement needs at least one row of loads".into(),
        ));
    };
    let m = first.len();
    for row in scenarios {
        if row.len() != m {
            return Err(MoeError::Input(format!(
                "placement rows have {} and {m} experts",
                row.len()
            )));
        }
        check_problem(row, devices, replicas)?;
    }
    let loads: Vec<f64> = (0..m)
        .map(|j| scenarios.iter().map(|r| r[j]).sum::<f64>() / scenarios.len() as f64)
        .collect();
    let copies_of = replica_counts(&loads, replicas, devices);
    // Copies (expert, load per copy), heaviest first.
    let mut shards: Vec<(usize, f64)> = (0..m)
        .flat_map(|j| (0..copies_of[j]).map(move |_| j))
        .map(|j| (j, loads[j] / copies_of[j] as f64))
        .collect();
    shards.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let slots = (m + replicas).div_ceil(devices);
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); devices];
    let mut load = vec![0.0f64; devices];
    for (j, l) in shards {
        let best = (0..devices)
            .filter(|&d| held[d].len() < slots && !held[d].contains(&j))
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .ok_or_else(|| MoeError::Input("no rank has a free slot".into()))?;
        held[best].push(j);
        load[best] += l;
    }
    let shares: Vec<Vec<f64>> = scenarios
        .iter()
        .map(|r| (0..m).map(|j| r[j] / copies_of[j] as f64).collect())
        .collect();
    refine(&mut held, &shares, slots);
    let mut copies = vec![Vec::new(); m];
    for (d, h) in held.iter().enumerate() {
        for &j in h {
            copies[j].push(d);
        }
    }
    copies.iter_mut().for_each(|c| c.sort_unstable());
    Ok(Placement { devices, copies })
}

/// Local search over `held` (each rank's experts, one entry per copy; `shares[s][j]`: a copy
/// of expert `j`'s load in row `s`): while moving one copy to a rank with a free slot, or
/// swapping two copies of different ranks, lowers the mean over the rows of the busiest
/// rank's load, make the best such change.
fn refine(held: &mut [Vec<usize>], shares: &[Vec<f64>], slots: usize) {
    let (ranks, rows) = (held.len(), shares.len());
    let rank_load = |h: &[usize]| -> Vec<f64> {
        (0..rows)
            .map(|s| h.iter().map(|&j| shares[s][j]).sum())
            .collect()
    };
    let mut loads: Vec<Vec<f64>> = held.iter().map(|h| rank_load(h)).collect();
    // The objective after ranks `a` and `b` change to the loads `la` and `lb`.
    let score = |loads: &[Vec<f64>], a: usize, b: usize, la: &[f64], lb: &[f64]| {
        (0..rows)
            .map(|s| {
                (0..ranks)
                    .filter(|&d| d != a && d != b)
                    .map(|d| loads[d][s])
                    .fold(la[s].max(lb[s]), f64::max)
            })
            .sum::<f64>()
            / rows as f64
    };
    let mut current = score(&loads, 0, 0, &loads[0], &loads[0]);
    for _ in 0..ranks * slots * 8 {
        // (objective, rank a, its copy, rank b, its copy or None for a move)
        let mut best: Option<(f64, usize, usize, usize, Option<usize>)> = None;
        for a in 0..ranks {
            for (ia, &j) in held[a].iter().enumerate() {
                for b in (0..ranks).filter(|&b| b != a && !held[b].contains(&j)) {
                    let mut options: Vec<Option<usize>> = Vec::new();
                    if held[b].len() < slots {
                        options.push(None);
                    }
                    options.extend(
                        (0..held[b].len())
                            .filter(|&ib| !held[a].contains(&held[b][ib]))
                            .map(Some),
                    );
                    for ib in options {
                        let back = ib.map(|ib| held[b][ib]);
                        let delta = |s: usize| shares[s][j] - back.map_or(0.0, |i| shares[s][i]);
                        let la: Vec<f64> = (0..rows).map(|s| loads[a][s] - delta(s)).collect();
                        let lb: Vec<f64> = (0..rows).map(|s| loads[b][s] + delta(s)).collect();
                        let value = score(&loads, a, b, &la, &lb);
                        if value < best.map_or(current, |x| x.0) - 1e-12 {
                            best = Some((value, a, ia, b, ib));
                        }
                    }
                }
            }
        }
        let Some((value, a, ia, b, ib)) = best else {
            return;
        };
        let j = held[a].swap_remove(ia);
        if let Some(ib) = ib {
            let i = held[b].swap_remove(ib);
            held[a].push(i);
        }
        held[b].push(j);
        loads[a] = rank_load(&held[a]);
        loads[b] = rank_load(&held[b]);
        current = value;
    }
}

/// Our placement for the `horizon` steps of `layer` from `origin` on, and the mean loads
/// `predictor` forecasts for them (what EPLB places by): the last `window` steps before
/// `origin`, shifted to that forecast, are the scenarios it serves ([`scenarios`]).
///
/// # Errors
/// As [`place`].
pub fn place_predicted(
    predictor: &dyn LoadPredictor,
    layer: &LayerLoads,
    origin: usize,
    horizon: usize,
    window: usize,
    devices: usize,
    replicas: usize,
) -> Result<(Placement, Vec<f64>)> {
    let m = layer.experts;
    let rows = predictor.predict(layer, origin, horizon);
    let predicted: Vec<f64> = (0..m)
        .map(|j| (0..horizon).map(|h| rows[h * m + j] as f64).sum::<f64>() / horizon as f64)
        .collect();
    let ours = place(
        &scenarios(layer, origin, window, &predicted),
        devices,
        replicas,
    )?;
    Ok((ours, predicted))
}

/// The load rows our placement serves at `origin`: the last `window` steps before it (fewer at
/// the start), each shifted by the predicted mean minus their own mean, so that they fluctuate
/// as the recent steps did around what the predictor expects.
pub fn scenarios(
    layer: &LayerLoads,
    origin: usize,
    window: usize,
    predicted: &[f64],
) -> Vec<Vec<f64>> {
    let steps: Vec<&[f32]> = (origin.saturating_sub(window)..origin)
        .map(|t| layer.row(t))
        .collect();
    if steps.is_empty() {
        return vec![predicted.to_vec()];
    }
    let n = steps.len() as f64;
    let mean: Vec<f64> = (0..predicted.len())
        .map(|j| steps.iter().map(|r| r[j] as f64).sum::<f64>() / n)
        .collect();
    steps
        .iter()
        .map(|r| {
            (0..predicted.len())
                .map(|j| (predicted[j] + r[j] as f64 - mean[j]).max(0.0))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_cases() {
        // 6 experts, 2 ranks, 3 slots each. LPT: 4 -> r0, 3 -> r1, 3 -> r1, 2 -> r0, 2 -> r0,
        // 2 -> r1: loads 8 and 8. Contiguous: {4, 3, 3} = 10 and {2, 2, 2} = 6.
        let loads = [4.0, 3.0, 3.0, 2.0, 2.0, 2.0];
        let p = place(&[loads.to_vec()], 2, 0).unwrap();
        assert_eq!(p.device_loads(&loads), vec![8.0, 8.0]);
        assert_eq!(p.imbalance(&loads), 1.0);
        let c = Placement::contiguous(6, 2);
        assert_eq!(c.device_loads(&loads), vec![10.0, 6.0]);
        assert!((c.imbalance(&loads) - 10.0 / 8.0).abs() < 1e-12);

        // One very hot expert. Without replicas each rank has 2 slots: 10 -> r0, 1 -> r1,
        // 1 -> r1, and the last 1 must go to r0: 11 and 2. With one replica (3 slots each) the
        // hot expert is split 5 / 5: 5 + 1 + 1 = 7 and 5 + 1 = 6.
        let loads = [10.0, 1.0, 1.0, 1.0];
        let p = place(&[loads.to_vec()], 2, 0).unwrap();
        assert_eq!(p.device_loads(&loads), vec![11.0, 2.0]);
        let p = place(&[loads.to_vec()], 2, 1).unwrap();
        assert_eq!(p.copies[0], vec![0, 1]);
        assert_eq!(p.device_loads(&loads), vec![7.0, 6.0]);
    }

    #[test]
    fn placing_for_the_steps_beats_placing_for_their_mean() {
        // Experts 0 and 1 take turns being hot; their mean is flat. For the mean any pairing
        // is perfect and packing pairs 0 with 2 (3 / 1 on every step); for the steps, 0 and 1
        // belong together (2 / 2).
        let rows = vec![vec![2.0, 0.0, 1.0, 1.0], vec![0.0, 2.0, 1.0, 1.0]];
        let busiest = |p: &Placement| {
            rows.iter()
                .map(|r| p.device_loads(r).into_iter().fold(0.0, f64::max))
                .sum::<f64>()
                / 2.0
        };
        let for_mean = place(&[vec![1.0; 4]], 2, 0).unwrap();
        assert_eq!(busiest(&for_mean), 3.0);
        let for_steps = place(&rows, 2, 0).unwrap();
        assert_eq!(busiest(&for_steps), 2.0);
        assert_eq!(for_steps.copies[0], for_steps.copies[1]);
    }

    #[test]
    fn refinement_fixes_what_greedy_packing_misses() {
        // [7, 6, 5, 4, 4] on 2 ranks x 3 slots: LPT puts 7 -> r0, 6 -> r1, 5 -> r1, 4 -> r0,
        // 4 -> r0 = 15 / 11; swapping the 7 and the 5 gives the optimum 13 / 13.
        let loads = [7.0, 6.0, 5.0, 4.0, 4.0];
        let p = place(&[loads.to_vec()], 2, 0).unwrap();
        let d = p.device_loads(&loads);
        assert_eq!(d, vec![13.0, 13.0]);
    }

    #[test]
    fn replicas_go_to_the_largest_load_per_copy_and_never_share_a_rank() {
        assert_eq!(replica_counts(&[9.0, 4.0, 1.0], 3, 4), vec![3, 2, 1]);
        assert_eq!(replica_counts(&[9.0, 4.0, 1.0], 3, 2), vec![2, 2, 2]);
        let loads = [20.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let p = place(&[loads.to_vec()], 4, 4).unwrap();
        assert_eq!(p.copies[0], vec![0, 1, 2, 3]);
        for c in &p.copies {
            let mut d = c.clone();
            d.dedup();
            assert_eq!(&d, c);
        }
    }

    #[test]
    fn ours_is_never_worse_than_lpt_alone_on_random_loads() {
        let mut rng = crate::test_rng::TestRng::new(7);
        let mut uniform = || rng.uniform();
        for _ in 0..200 {
            let loads: Vec<f64> = (0..16).map(|_| uniform().powi(3) * 100.0).collect();
            let p = place(&[loads.to_vec()], 4, 0).unwrap();
            // LPT without refinement, by hand.
            let mut order: Vec<usize> = (0..16).collect();
            order.sort_by(|&a, &b| loads[b].total_cmp(&loads[a]));
            let mut lpt = [(0.0f64, 0usize); 4];
            for j in order {
                let d = (0..4)
                    .filter(|&d| lpt[d].1 < 4)
                    .min_by(|&a, &b| lpt[a].0.total_cmp(&lpt[b].0))
                    .unwrap();
                lpt[d] = (lpt[d].0 + loads[j], lpt[d].1 + 1);
            }
            let lpt_max = lpt.iter().map(|x| x.0).fold(0.0, f64::max);
            let ours = p.device_loads(&loads).into_iter().fold(0.0, f64::max);
            assert!(ours <= lpt_max + 1e-9, "{ours} > {lpt_max}");
            assert!(p.copies.iter().all(|c| c.len() == 1));
        }
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(place(&[vec![1.0]], 0, 0).is_err());
        assert!(place(&[vec![1.0, f64::NAN]], 2, 0).is_err());
        assert!(place(&[vec![1.0, 2.0]], 1, 1).is_err());
        assert!(place(&[vec![1.0, 2.0]], 2, 3).is_err());
        assert!(place(&[], 2, 0).is_err());
        assert!(place(&[vec![1.0, 2.0], vec![1.0]], 2, 0).is_err());
    }
}
