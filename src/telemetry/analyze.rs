//! Balance over time and the transient/stable phase rule (`docs/algorithms.md`).
//!
//! Per layer and step: MaxVio, coefficient of variation, min/max load ratio, dead experts
//! (no token over the last `dead_window` steps), and for each window `w` the sliding variance
//! `(1/w) sum (x - mean)^2` and range `max - min` of every expert's load proportion, averaged
//! over the experts.
//!
//! # Phase rule
//! Training starts in a transient state where expert loads fluctuate and settles into a stable
//! state. The switch is read off the short-window variance:
//! 1. `v_t` = the `short_window` (10) sliding variance, averaged over experts and layers;
//! 2. `s_t` = the trailing mean of `v` over `smooth_window` (100) steps;
//! 3. the stable level `L` = the median of `s` over the last `tail_fraction` (1/4) of the run,
//!    and the threshold `factor * L` (factor 2);
//! 4. the switch is the first step after which `s` stays at or below the threshold to the end.
//!
//! The signal is causal (it could run during training), so the detected step lags the true
//! switch by up to `short_window + smooth_window` steps: it marks the point from which the run is
//! known to be stable. The rule assumes the last quarter of the run is stable; a run that never
//! settles reports a switch inside that last quarter or none.

use serde::Serialize;

use crate::telemetry::loads::LayerLoads;

/// Settings of [`analyze_layer`] and [`detect_phase_switch`].
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyzeConfig {
    /// Sliding windows for the variance and range of each expert's proportion.
    pub windows: Vec<usize>,
    /// An expert is dead at a step when it got no token in the last `dead_window` steps.
    pub dead_window: usize,
    /// Window of the variance the phase rule reads.
    pub short_window: usize,
    /// Trailing smoothing of that variance.
    pub smooth_window: usize,
    /// Threshold as a multiple of the stable level.
    pub factor: f64,
    /// Share of the run, at its end, that defines the stable level.
    pub tail_fraction: f64,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            windows: vec![10, 100],
            dead_window: 100,
            short_window: 10,
            smooth_window: 100,
            factor: 2.0,
            tail_fraction: 0.25,
        }
    }
}

/// Balance of one layer at one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    /// Training step.
    pub step: u64,
    /// `(max c - mean c) / mean c`.
    pub max_vio: f32,
    /// Standard deviation of the counts over their mean.
    pub cv: f32,
    /// Smallest count over the largest.
    pub min_max: f32,
    /// Experts with no token in the last `dead_window` steps (0 before that many steps).
    pub dead: usize,
    /// Per window (same order as the config): mean over experts of the sliding variance of the
    /// proportion, `None` until the window is full.
    pub window_variance: Vec<Option<f32>>,
    /// Per window: mean over experts of the sliding range of the proportion.
    pub window_range: Vec<Option<f32>>,
}

/// Per-step balance of a layer.
pub fn analyze_layer(layer: &LayerLoads, config: &AnalyzeConfig) -> Vec<StepStats> {
    let (n, m) = (layer.len(), layer.experts);
    let windows: Vec<WindowStats> = config
        .windows
        .iter()
        .map(|&w| WindowStats::compute(layer, w))
        .collect();
    // Steps since each expert last got a token.
    let mut idle = vec![0usize; m];
    (0..n)
        .map(|t| {
            let counts = layer.count_row(t);
            let total: f64 = counts.iter().map(|&c| c as f64).sum();
            let mean = total / m as f64;
            let max = counts.iter().copied().max().unwrap_or(0) as f64;
            let min = counts.iter().copied().min().unwrap_or(0) as f64;
            let var = counts
                .iter()
                .map(|&c| (c as f64 - mean).powi(2))
                .sum::<f64>()
                / m as f64;
            for (i, &c) in idle.iter_mut().zip(counts) {
                *i = if c == 0 { *i + 1 } else { 0 };
            }
            let ratio = |a: f64, b: f64| if b > 0.0 { (a / b) as f32 } else { 0.0 };
            StepStats {
                step: layer.steps[t],
                max_vio: ratio(max - mean, mean),
                cv: ratio(var.sqrt(), mean),
                min_max: ratio(min, max),
                dead: idle.iter().filter(|&&i| i >= config.dead_window).count(),
                window_variance: windows.iter().map(|w| w.variance[t]).collect(),
                window_range: windows.iter().map(|w| w.range[t]).collect(),
            }
        })
        .collect()
}

/// Sliding variance and range of every expert's proportion, averaged over the experts.
struct WindowStats {
    variance: Vec<Option<f32>>,
    range: Vec<Option<f32>>,
}

impl WindowStats {
    fn compute(layer: &LayerLoads, w: usize) -> Self {
        let (n, m) = (layer.len(), layer.experts);
        let mut variance = vec![0.0f64; n];
        let mut range = vec![0.0f64; n];
        let mut column = vec![0.0f64; n];
        for j in 0..m {
            for (t, c) in column.iter_mut().enumerate() {
                *c = layer.proportions[t * m + j] as f64;
            }
            let (sum, sq) = prefix_sums(&column);
            let (maxes, mins) = sliding_extremes(&column, w);
            for t in (w.max(1) - 1)..n {
                let lo = t + 1 - w.max(1);
                let s = sum[t + 1] - sum[lo];
                let s2 = sq[t + 1] - sq[lo];
                let mean = s / w as f64;
                variance[t] += (s2 / w as f64 - mean * mean).max(0.0);
                range[t] += maxes[t] - mins[t];
            }
        }
        let defined = |t: usize| t + 1 >= w.max(1);
        WindowStats {
            variance: (0..n)
                .map(|t| defined(t).then(|| (variance[t] / m as f64) as f32))
                .collect(),
            range: (0..n)
                .map(|t| defined(t).then(|| (range[t] / m as f64) as f32))
                .collect(),
        }
    }
}

fn prefix_sums(x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0.0; x.len() + 1];
    let mut sq = vec![0.0; x.len() + 1];
    for (i, &v) in x.iter().enumerate() {
        sum[i + 1] = sum[i] + v;
        sq[i + 1] = sq[i] + v * v;
    }
    (sum, sq)
}

/// Max and min of each trailing window of `w` values (monotonic queues, linear time).
fn sliding_extremes(x: &[f64], w: usize) -> (Vec<f64>, Vec<f64>) {
    use std::collections::VecDeque;
    let w = w.max(1);
    let (mut maxq, mut minq) = (VecDeque::new(), VecDeque::new());
    let (mut maxes, mut mins) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    for (t, &v) in x.iter().enumerate() {
        while maxq.back().is_some_and(|&i: &usize| x[i] <= v) {
            maxq.pop_back();
        }
        while minq.back().is_some_and(|&i: &usize| x[i] >= v) {
            minq.pop_back();
        }
        maxq.push_back(t);
        minq.push_back(t);
        while maxq.front().is_some_and(|&i| i + w <= t) {
            maxq.pop_front();
        }
        while minq.front().is_some_and(|&i| i + w <= t) {
            minq.pop_front();
        }
        maxes[t] = x[maxq[0]];
        mins[t] = x[minq[0]];
    }
    (maxes, mins)
}

/// Where the run turns stable, and the signal the rule read.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSwitch {
    /// First step of the stable state, `None` if the run has too few steps to tell.
    pub step: Option<u64>,
    /// Stable level `L` of the smoothed signal.
    pub stable_level: f64,
    /// `factor * L`.
    pub threshold: f64,
    /// `(step, s_t)` for every step where the smoothed signal is defined.
    #[serde(skip)]
    pub signal: Vec<(u64, f64)>,
}

/// Applies the phase rule (module docs) to the layers of one run.
pub fn detect_phase_switch(layers: &[LayerLoads], config: &AnalyzeConfig) -> PhaseSwitch {
    let rows = layers.iter().map(LayerLoads::len).min().unwrap_or(0);
    let mut v = vec![0.0f64; rows];
    for layer in layers {
        let w = WindowStats::compute(layer, config.short_window);
        for (acc, x) in v.iter_mut().zip(&w.variance) {
            *acc += x.unwrap_or(f32::NAN) as f64 / layers.len() as f64;
        }
    }
    let first = config.short_window.max(1) - 1;
    let smooth = config.smooth_window.max(1);
    let steps = layers.first().map(|l| &l.steps[..rows]).unwrap_or(&[]);
    let mut signal = Vec::new();
    for t in (first + smooth - 1)..rows {
        let s = v[t + 1 - smooth..=t].iter().sum::<f64>() / smooth as f64;
        signal.push((steps[t], s));
    }
    if signal.is_empty() {
        return PhaseSwitch {
            step: None,
            stable_level: f64::NAN,
            threshold: f64::NAN,
            signal,
        };
    }
    let tail =
        ((signal.len() as f64 * config.tail_fraction).ceil() as usize).clamp(1, signal.len());
    let mut tail_values: Vec<f64> = signal[signal.len() - tail..].iter().map(|p| p.1).collect();
    tail_values.sort_by(f64::total_cmp);
    let stable_level = tail_values[tail_values.len() / 2];
    let threshold = config.factor * stable_level;
    let step = match signal.iter().rposition(|p| p.1 > threshold) {
        None => signal[0].0,
        Some(i) if i + 1 < signal.len() => signal[i + 1].0,
        Some(_) => signal[signal.len() - 1].0,
    };
    PhaseSwitch {
        step: Some(step),
        stable_level,
        threshold,
        signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer whose loads jitter by `big` until `switch`, then by `small`.
    fn synthetic(steps: usize, switch: usize, big: f64, small: f64) -> LayerLoads {
        let m = 8;
        let mut counts = Vec::new();
        let mut rng = crate::test_rng::TestRng::new(12345);
        let mut uniform = || rng.uniform();
        for t in 0..steps {
            let amp = if t < switch { big } else { small };
            for _ in 0..m {
                counts.push((1000.0 * (1.0 + amp * (2.0 * uniform() - 1.0))) as u32);
            }
        }
        LayerLoads::from_counts((1..=steps as u64).collect(), m, counts)
    }

    #[test]
    fn window_stats_match_a_direct_computation() {
        let layer = synthetic(50, 20, 0.5, 0.05);
        let cfg = AnalyzeConfig {
            windows: vec![7],
            ..AnalyzeConfig::default()
        };
        let stats = analyze_layer(&layer, &cfg);
        assert!(stats[5].window_variance[0].is_none());
        for t in [6, 30, 49] {
            let (mut var, mut range) = (0.0f64, 0.0f64);
            for j in 0..8 {
                let xs: Vec<f64> = (t - 6..=t).map(|r| layer.row(r)[j] as f64).collect();
                let mean = xs.iter().sum::<f64>() / 7.0;
                var += xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0;
                let max = xs.iter().copied().fold(f64::MIN, f64::max);
                let min = xs.iter().copied().fold(f64::MAX, f64::min);
                range += max - min;
            }
            let got_v = stats[t].window_variance[0].unwrap() as f64;
            let got_r = stats[t].window_range[0].unwrap() as f64;
            assert!((got_v - var / 8.0).abs() < 1e-7, "variance at {t}");
            assert!((got_r - range / 8.0).abs() < 1e-6, "range at {t}");
        }
    }

    #[test]
    fn step_metrics_and_dead_experts() {
        let counts = vec![6, 2, 0, 0, /* */ 2, 2, 2, 2, /* */ 4, 4, 0, 0];
        let layer = LayerLoads::from_counts(vec![1, 2, 3], 4, counts);
        let cfg = AnalyzeConfig {
            dead_window: 1,
            ..AnalyzeConfig::default()
        };
        let s = analyze_layer(&layer, &cfg);
        assert_eq!(s[0].max_vio, 2.0); // mean 2, max 6
        assert_eq!(s[1].max_vio, 0.0);
        assert_eq!(s[1].cv, 0.0);
        assert_eq!(s[0].min_max, 0.0);
        assert_eq!(s[1].min_max, 1.0);
        assert_eq!((s[0].dead, s[1].dead, s[2].dead), (2, 0, 2));
    }

    #[test]
    fn phase_switch_is_found_after_the_known_switch() {
        for switch in [300, 700, 1200] {
            let layer = synthetic(2000, switch, 0.6, 0.03);
            let found = detect_phase_switch(std::slice::from_ref(&layer), &AnalyzeConfig::default())
                .step
                .unwrap() as usize;
            // Causal windows: found within short + smooth windows after the switch.
            assert!(
                found > switch && found <= switch + 112,
                "switch at {switch}, found {found}"
            );
        }
        // Stable from the start: the switch is the first defined step.
        let layer = synthetic(1000, 0, 0.6, 0.03);
        let found = detect_phase_switch(&[layer], &AnalyzeConfig::default())
            .step
            .unwrap();
        assert!(found <= 120, "found {found}");
    }
}
