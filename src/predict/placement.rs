//! Expert placement: assign a layer's experts (and replicas of the hottest) to devices so that
//! the most loaded device carries as little as possible.
//!
//! Each device holds `ceil((m + R) / D)` slots. The `R` hottest experts get one extra replica
//! each, and a replicated expert's load is split evenly between its copies (the dispatcher
//! alternates between them). Assignment is longest-processing-time first: shards in decreasing
//! load, each to the least loaded device with a free slot that does not already hold a copy of
//! the same expert.

use serde::Serialize;

use crate::error::{MoeError, Result};

/// Which devices hold which expert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Devices.
    pub devices: usize,
    /// `copies[j]`: the devices holding expert `j` (its load is split evenly between them).
    pub copies: Vec<Vec<usize>>,
}

impl Placement {
    /// Expert `j` on device `j mod D`, no replicas.
    pub fn round_robin(experts: usize, devices: usize) -> Self {
        Placement {
            devices,
            copies: (0..experts).map(|j| vec![j % devices]).collect(),
        }
    }

    /// Each device's load for per-expert `loads`.
    pub fn device_loads(&self, loads: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.devices];
        for (copies, &l) in self.copies.iter().zip(loads) {
            for &d in copies {
                out[d] += l / copies.len() as f64;
            }
        }
        out
    }

    /// Most loaded device over the mean device load (1 is perfect).
    pub fn imbalance(&self, loads: &[f64]) -> f64 {
        let d = self.device_loads(loads);
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let max = d.iter().copied().fold(0.0, f64::max);
        if mean > 0.0 { max / mean } else { 1.0 }
    }
}

/// Places experts with predicted `loads` on `devices` devices with `replicas` extra copies.
pub fn place(loads: &[f64], devices: usize, replicas: usize) -> Result<Placement> {
    let m = loads.len();
    if devices == 0 || m == 0 {
        return Err(MoeError::Input(format!(
            "placement needs at least one device and one expert, got {devices} and {m}"
        )));
    }
    if replicas > m || (replicas > 0 && devices < 2) {
        return Err(MoeError::Input(format!(
            "{replicas} replicas need at most {m} experts' worth and at least 2 devices ({devices})"
        )));
    }
    if let Some(j) = loads.iter().position(|l| !l.is_finite() || *l < 0.0) {
        return Err(MoeError::Input(format!(
            "predicted load of expert {j} is {}; loads must be finite and >= 0",
            loads[j]
        )));
    }
    let mut by_load: Vec<usize> = (0..m).collect();
    by_load.sort_by(|&a, &b| loads[b].total_cmp(&loads[a]).then(a.cmp(&b)));
    let mut copies_of = vec![1usize; m];
    for &j in &by_load[..replicas] {
        copies_of[j] = 2;
    }
    // Shards (expert, load per copy), heaviest first.
    let mut shards: Vec<(usize, f64)> = (0..m)
        .flat_map(|j| (0..copies_of[j]).map(move |_| j))
        .map(|j| (j, loads[j] / copies_of[j] as f64))
        .collect();
    shards.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let slots = (m + replicas).div_ceil(devices);
    let mut used = vec![0usize; devices];
    let mut load = vec![0.0f64; devices];
    let mut copies = vec![Vec::new(); m];
    for (j, l) in shards {
        let best = (0..devices)
            .filter(|&d| used[d] < slots && !copies[j].contains(&d))
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .ok_or_else(|| MoeError::Input("no device has a free slot".into()))?;
        used[best] += 1;
        load[best] += l;
        copies[j].push(best);
    }
    Ok(Placement { devices, copies })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_cases() {
        // 6 experts, 2 devices, 3 slots each. LPT: 4 -> d0, 3 -> d1, 3 -> d1, 2 -> d0, 2 -> d0,
        // 2 -> d1: loads 8 and 8. Round robin: {4, 3, 2} = 9 and {3, 2, 2} = 7.
        let loads = [4.0, 3.0, 3.0, 2.0, 2.0, 2.0];
        let p = place(&loads, 2, 0).unwrap();
        assert_eq!(p.device_loads(&loads), vec![8.0, 8.0]);
        assert_eq!(p.imbalance(&loads), 1.0);
        let rr = Placement::round_robin(6, 2);
        assert_eq!(rr.device_loads(&loads), vec![9.0, 7.0]);
        assert!((rr.imbalance(&loads) - 9.0 / 8.0).abs() < 1e-12);

        // One very hot expert. Without replicas each device has 2 slots: 10 -> d0, 1 -> d1,
        // 1 -> d1, and the last 1 must go to d0: 11 and 2. With one replica (3 slots each) the
        // hot expert is split 5 / 5: 5 + 1 + 1 = 7 and 5 + 1 = 6.
        let loads = [10.0, 1.0, 1.0, 1.0];
        let p = place(&loads, 2, 0).unwrap();
        assert_eq!(p.device_loads(&loads), vec![11.0, 2.0]);
        let p = place(&loads, 2, 1).unwrap();
        assert_eq!(p.copies[0].len(), 2);
        assert_eq!(p.device_loads(&loads), vec![7.0, 6.0]);
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(place(&[1.0], 0, 0).is_err());
        assert!(place(&[1.0, f64::NAN], 2, 0).is_err());
        assert!(place(&[1.0, 2.0], 1, 1).is_err());
        assert!(place(&[1.0, 2.0], 2, 3).is_err());
    }
}
