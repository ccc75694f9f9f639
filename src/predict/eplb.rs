//! DeepSeek's expert-parallel load balancer (EPLB) policy, the baseline beside our
//! [`place`](super::placement::place): replica counts by load per replica, then balanced
//! packing of the copies onto ranks; in its hierarchical form (ranks grouped into nodes,
//! experts into groups) expert groups are packed onto nodes first, so that a token's experts
//! stay within a node, and replication and packing then run inside each node.

use super::placement::{Placement, check_problem, replica_counts};
use crate::error::{MoeError, Result};

/// EPLB's placement of experts with predicted `loads` on `devices` ranks with `replicas` extra
/// copies. With `nodes > 1` it is hierarchical: the experts form `groups` consecutive groups,
/// `groups` and `devices` must be multiples of `nodes` and `replicas` of `nodes` too.
pub fn eplb(
    loads: &[f64],
    devices: usize,
    replicas: usize,
    nodes: usize,
    groups: usize,
) -> Result<Placement> {
    check_problem(loads, devices, replicas)?;
    let m = loads.len();
    if nodes <= 1 {
        let experts: Vec<usize> = (0..m).collect();
        return Ok(pack_node(loads, &experts, replicas, devices, 0, devices));
    }
    let divides = |a: usize, b: usize| a > 0 && b.is_multiple_of(a);
    let fits = divides(groups, m)
        && divides(nodes, groups)
        && divides(nodes, devices)
        && replicas.is_multiple_of(nodes);
    if !fits {
        return Err(MoeError::Input(format!(
            "hierarchical EPLB needs nodes ({nodes}) dividing the expert groups ({groups}), the \
             ranks ({devices}) and the replicas ({replicas}), and groups dividing the {m} experts"
        )));
    }
    let per_group = m / groups;
    let group_loads: Vec<f64> = (0..groups)
        .map(|g| loads[g * per_group..(g + 1) * per_group].iter().sum())
        .collect();
    let node_of_group = balanced_packing(&group_loads, nodes);
    let ranks_per_node = devices / nodes;
    let mut copies = vec![Vec::new(); m];
    for node in 0..nodes {
        let experts: Vec<usize> = (0..m)
            .filter(|&j| node_of_group[j / per_group] == node)
            .collect();
        let part = pack_node(
            loads,
            &experts,
            replicas / nodes,
            devices,
            node * ranks_per_node,
            ranks_per_node,
        );
        for &j in &experts {
            copies[j] = part.copies[j].clone();
        }
    }
    Ok(Placement { devices, copies })
}

/// Replicates `experts` with `replicas` extra copies and packs the copies onto ranks
/// `first..first + ranks` (of `devices`); experts not listed get no copies.
fn pack_node(
    loads: &[f64],
    experts: &[usize],
    replicas: usize,
    devices: usize,
    first: usize,
    ranks: usize,
) -> Placement {
    // EPLB does not cap the copies of one expert.
    let node_loads: Vec<f64> = experts.iter().map(|&j| loads[j]).collect();
    let count = replica_counts(&node_loads, replicas, usize::MAX);
    let physical: Vec<usize> = (0..experts.len())
        .flat_map(|i| std::iter::repeat_n(i, count[i]))
        .collect();
    let weights: Vec<f64> = physical
        .iter()
        .map(|&i| loads[experts[i]] / count[i] as f64)
        .collect();
    let rank_of = balanced_packing(&weights, ranks);
    let mut copies = vec![Vec::new(); loads.len()];
    for (p, &i) in physical.iter().enumerate() {
        copies[experts[i]].push(first + rank_of[p]);
    }
    copies.iter_mut().for_each(|c| c.sort_unstable());
    Placement { devices, copies }
}

/// EPLB's balanced packing: items in decreasing weight, each to the lightest pack that still
/// has room, every pack holding `ceil(n / packs)` items at most. Returns each item's pack.
fn balanced_packing(weights: &[f64], packs: usize) -> Vec<usize> {
    let room = weights.len().div_ceil(packs);
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let (mut load, mut items) = (vec![0.0f64; packs], vec![0usize; packs]);
    let mut pack_of = vec![0; weights.len()];
    for i in order {
        let p = (0..packs)
            .filter(|&p| items[p] < room)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .unwrap_or(0);
        load[p] += weights[i];
        items[p] += 1;
        pack_of[i] = p;
    }
    pack_of
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicates_by_load_per_copy_and_packs_the_heaviest_first() {
        // 4 experts + 2 replicas on 2 ranks (3 slots). Copies: 12 gets two (6 per copy), then
        // the largest per copy is 6 (expert 0's) vs 5: expert 0 gets a third (4 per copy).
        // Copies 5, 4, 4, 4, 2, 1: 5 -> r0, 4 -> r1, 4 -> r1, 4 -> r0, 2 -> r1, 1 -> r0:
        // loads 10 and 10.
        let loads = [12.0, 5.0, 2.0, 1.0];
        let p = eplb(&loads, 2, 2, 1, 1).unwrap();
        assert_eq!(p.copies[0].len(), 3);
        assert_eq!(p.device_loads(&loads), vec![10.0, 10.0]);
    }

    #[test]
    fn may_put_two_copies_of_an_expert_on_one_rank() {
        // EPLB does not forbid it (ours does): 3 copies of a hot expert on 2 ranks.
        let loads = [30.0, 1.0, 1.0, 1.0];
        let p = eplb(&loads, 2, 2, 1, 1).unwrap();
        assert_eq!(p.copies[0].len(), 3);
        let mut ranks = p.copies[0].clone();
        ranks.dedup();
        assert_eq!(ranks.len(), 2);
    }

    #[test]
    fn hierarchical_keeps_each_group_on_one_node() {
        let loads: Vec<f64> = (0..16).map(|j| (j * 7 % 11) as f64 + 1.0).collect();
        let p = eplb(&loads, 8, 4, 2, 4).unwrap();
        for g in 0..4 {
            let nodes: Vec<usize> = (g * 4..(g + 1) * 4)
                .flat_map(|j| p.copies[j].iter().map(|&r| r / 4))
                .collect();
            assert!(nodes.iter().all(|&n| n == nodes[0]), "group {g}: {nodes:?}");
        }
        let slots: usize = p.copies.iter().map(Vec::len).sum();
        assert_eq!(slots, 20);
        assert!(eplb(&loads, 8, 3, 2, 4).is_err());
        assert!(eplb(&loads, 8, 4, 3, 4).is_err());
    }
}
