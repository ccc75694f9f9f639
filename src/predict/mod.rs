//! Expert-load prediction (`docs/algorithms.md`): predict every expert's load proportion for
//! the next `H` steps from the steps so far, and measure the error by sliding the prediction
//! point along a trace.
//!
//! Error: the mean absolute error of the predicted proportions, averaged over the experts and
//! the horizon, per layer, then over layers (our reading of the paper's "average error rate"),
//! reported separately for prediction points in the transient and in the stable state.

pub mod arima;
pub mod eplb;
pub mod lstm;
pub mod placement;

use serde::Serialize;

use crate::telemetry::loads::{LayerLoads, RunLoads};
use arima::{Arima, ArimaOrder};

/// Predicts a layer's load proportions.
pub trait LoadPredictor {
    /// A short name for reports, e.g. `sw-avg(W=100)`.
    fn name(&self) -> String;
    /// Proportions `[horizon * experts]` for rows `origin..origin + horizon`, seeing only rows
    /// `..origin` of `layer`.
    fn predict(&self, layer: &LayerLoads, origin: usize, horizon: usize) -> Vec<f32>;
    /// Per-expert forecasts so far that could not use the method and fell back to the window
    /// mean, and all per-expert forecasts: `(fell_back, total)`. `None` for methods that never
    /// fall back.
    fn fallbacks(&self) -> Option<(usize, usize)> {
        None
    }
}

/// Sliding-window average: the mean of the last `window` steps, held flat.
#[derive(Debug, Clone, Copy)]
pub struct SlidingWindowAverage {
    /// Steps averaged.
    pub window: usize,
}

impl LoadPredictor for SlidingWindowAverage {
    fn name(&self) -> String {
        format!("sw-avg(W={})", self.window)
    }

    fn predict(&self, layer: &LayerLoads, origin: usize, horizon: usize) -> Vec<f32> {
        let mean = window_mean(layer, origin, self.window);
        (0..horizon).flat_map(|_| mean.iter().copied()).collect()
    }
}

/// Mean proportions of rows `origin - window..origin` (fewer at the start of a trace).
pub fn window_mean(layer: &LayerLoads, origin: usize, window: usize) -> Vec<f32> {
    let m = layer.experts;
    let from = origin.saturating_sub(window.max(1));
    let rows = (origin - from).max(1) as f64;
    let mut mean = vec![0.0f64; m];
    for t in from..origin {
        for (acc, &p) in mean.iter_mut().zip(layer.row(t)) {
            *acc += p as f64;
        }
    }
    mean.iter().map(|v| (v / rows) as f32).collect()
}

/// ARIMA per expert, fitted on the last `window` steps at every prediction point.
#[derive(Debug, Clone)]
pub struct ArimaPredictor {
    /// Orders (the paper: 5, 1, 5).
    pub order: ArimaOrder,
    /// Steps the model is fitted on.
    pub window: usize,
    /// Fit a constant (for `d >= 1` a drift; the usual choice is a constant for `d = 0` only).
    pub constant: bool,
    /// Forecasts that fell back to the window mean, and all forecasts.
    counts: std::cell::Cell<(usize, usize)>,
}

impl ArimaPredictor {
    /// ARIMA of `order` fitted on the last `window` steps.
    pub fn new(order: ArimaOrder, window: usize, constant: bool) -> Self {
        ArimaPredictor {
            order,
            window,
            constant,
            counts: Default::default(),
        }
    }
}

impl LoadPredictor for ArimaPredictor {
    fn name(&self) -> String {
        let o = self.order;
        let c = if self.constant { "; constant" } else { "" };
        format!("arima({},{},{}; W={}{c})", o.p, o.d, o.q, self.window)
    }

    /// Falls back to the window mean for an expert whose window is too short or that cannot be
    /// fitted (counted in [`fallbacks`](LoadPredictor::fallbacks)); forecasts are clamped to
    /// `[0, 1]`.
    fn predict(&self, layer: &LayerLoads, origin: usize, horizon: usize) -> Vec<f32> {
        let m = layer.experts;
        let from = origin.saturating_sub(self.window);
        let fallback = window_mean(layer, origin, self.window);
        let mut out = vec![0.0f32; horizon * m];
        for j in 0..m {
            let series: Vec<f64> = (from..origin).map(|t| layer.row(t)[j] as f64).collect();
            let forecast =
                Arima::fit(&series, self.order, self.constant).map(|a| a.forecast(horizon));
            let (fell_back, total) = self.counts.get();
            self.counts
                .set((fell_back + usize::from(forecast.is_none()), total + 1));
            for h in 0..horizon {
                let v = forecast
                    .as_ref()
                    .map_or(fallback[j] as f64, |f| f[h].clamp(0.0, 1.0));
                out[h * m + j] = v as f32;
            }
        }
        out
    }

    fn fallbacks(&self) -> Option<(usize, usize)> {
        Some(self.counts.get())
    }
}

/// Where to put prediction points when evaluating.
#[derive(Debug, Clone, Copy)]
pub struct EvalConfig {
    /// Steps predicted.
    pub horizon: usize,
    /// Rows between prediction points.
    pub stride: usize,
    /// Rows of history the first prediction point needs.
    pub min_history: usize,
}

/// Errors of one predictor on one run, as fractions (multiply by 100 for %).
#[derive(Debug, Clone, Serialize)]
pub struct PredictionReport {
    /// Predictor name.
    pub method: String,
    /// Steps predicted.
    pub horizon: usize,
    /// Per layer: mean error over transient-state prediction points (`None`: no such point).
    pub transient_per_layer: Vec<Option<f64>>,
    /// Per layer: mean error over stable-state prediction points.
    pub stable_per_layer: Vec<Option<f64>>,
    /// Mean over layers of the transient errors.
    pub transient: Option<f64>,
    /// Mean over layers of the stable errors.
    pub stable: Option<f64>,
    /// Prediction points in each state (summed over layers).
    pub points: [usize; 2],
    /// Per-expert forecasts that fell back to the window mean, and all forecasts (methods that
    /// can fall back only).
    pub fallbacks: Option<(usize, usize)>,
}

/// Mean absolute error of `predictor` at every `stride`-th row of every layer; a point's state
/// is the state of its step (`step < switch_step`: transient).
pub fn evaluate(
    predictor: &dyn LoadPredictor,
    run: &RunLoads,
    switch_step: Option<u64>,
    config: &EvalConfig,
) -> PredictionReport {
    let mut transient_per_layer = Vec::new();
    let mut stable_per_layer = Vec::new();
    let mut points = [0usize; 2];
    for layer in &run.layers {
        let mut sums = [0.0f64; 2];
        let mut counts = [0usize; 2];
        let m = layer.experts;
        let mut origin = config.min_history.max(1);
        while origin + config.horizon <= layer.len() {
            let pred = predictor.predict(layer, origin, config.horizon);
            let err: f64 = (0..config.horizon)
                .flat_map(|h| {
                    let actual = layer.row(origin + h);
                    let p = &pred[h * m..(h + 1) * m];
                    actual.iter().zip(p).map(|(a, b)| (a - b).abs() as f64)
                })
                .sum::<f64>()
                / (config.horizon * m) as f64;
            let state = usize::from(switch_step.is_none_or(|s| layer.steps[origin] >= s));
            sums[state] += err;
            counts[state] += 1;
            origin += config.stride.max(1);
        }
        let mean = |i: usize| (counts[i] > 0).then(|| sums[i] / counts[i] as f64);
        transient_per_layer.push(mean(0));
        stable_per_layer.push(mean(1));
        points[0] += counts[0];
        points[1] += counts[1];
    }
    let over_layers = |v: &[Option<f64>]| {
        let xs: Vec<f64> = v.iter().flatten().copied().collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    PredictionReport {
        method: predictor.name(),
        horizon: config.horizon,
        transient: over_layers(&transient_per_layer),
        stable: over_layers(&stable_per_layer),
        transient_per_layer,
        stable_per_layer,
        points,
        fallbacks: predictor.fallbacks(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_from(series: impl Fn(usize, usize) -> f32, steps: usize, m: usize) -> LayerLoads {
        // Counts scaled from target proportions (rows normalise them again).
        let counts: Vec<u32> = (0..steps)
            .flat_map(|t| {
                (0..m)
                    .map(|j| (1e6 * series(t, j)) as u32)
                    .collect::<Vec<_>>()
            })
            .collect();
        LayerLoads::from_counts((1..=steps as u64).collect(), m, counts)
    }

    fn run_of(layer: LayerLoads) -> RunLoads {
        RunLoads {
            layers: vec![layer],
            records: 0,
            skipped: vec![],
        }
    }

    #[test]
    fn constant_loads_are_predicted_exactly_by_every_method() {
        let run = run_of(layer_from(|_, j| [0.5, 0.3, 0.2][j], 400, 3));
        let cfg = EvalConfig {
            horizon: 50,
            stride: 25,
            min_history: 100,
        };
        let sw = evaluate(&SlidingWindowAverage { window: 10 }, &run, None, &cfg);
        let ar = ArimaPredictor::new(ArimaOrder { p: 5, d: 1, q: 5 }, 100, false);
        let ar = evaluate(&ar, &run, None, &cfg);
        assert!(
            sw.stable.unwrap() < 1e-6 && ar.stable.unwrap() < 1e-5,
            "{sw:?} {ar:?}"
        );
        assert_eq!(sw.transient, None);
    }

    #[test]
    fn drift_and_periodic_loads_favour_arima_over_the_window_mean() {
        // Two experts: a slow linear drift, mirrored so rows sum to 1.
        let drift = run_of(layer_from(
            |t, j| {
                let x = 0.3 + 0.0005 * t as f32;
                if j == 0 { x } else { 1.0 - x }
            },
            600,
            2,
        ));
        let cfg = EvalConfig {
            horizon: 40,
            stride: 20,
            min_history: 200,
        };
        let sw = evaluate(&SlidingWindowAverage { window: 50 }, &drift, None, &cfg);
        // The window mean sits (W + 1) / 2 steps back; the horizon averages (H - 1) / 2 ahead.
        let lag = 0.0005 * ((50.0 + 1.0) / 2.0 + (40.0 - 1.0) / 2.0);
        assert!(
            (sw.stable.unwrap() - lag).abs() < 1e-4,
            "{sw:?}, expected {lag}"
        );
        let ar = ArimaPredictor::new(ArimaOrder { p: 1, d: 1, q: 0 }, 200, true);
        assert!(evaluate(&ar, &drift, None, &cfg).stable.unwrap() < 1e-4);

        let periodic = run_of(layer_from(
            |t, j| {
                let x = 0.5 + 0.2 * (std::f32::consts::TAU * t as f32 / 30.0).sin();
                if j == 0 { x } else { 1.0 - x }
            },
            600,
            2,
        ));
        let sw = evaluate(&SlidingWindowAverage { window: 10 }, &periodic, None, &cfg);
        let ar = ArimaPredictor::new(ArimaOrder { p: 2, d: 0, q: 0 }, 200, true);
        let ar = evaluate(&ar, &periodic, None, &cfg);
        assert!(ar.stable.unwrap() < 0.01, "{ar:?}");
        assert!(sw.stable.unwrap() > 0.05, "{sw:?}");
    }

    #[test]
    fn points_are_split_by_state() {
        let run = run_of(layer_from(|_, _| 0.5, 300, 2));
        let cfg = EvalConfig {
            horizon: 10,
            stride: 10,
            min_history: 10,
        };
        let r = evaluate(&SlidingWindowAverage { window: 5 }, &run, Some(101), &cfg);
        // Origins at rows 10, 20, ..., 290 -> steps 11, 21, ...: 9 before step 101, 20 after.
        assert_eq!(r.points, [9, 20]);
    }
}
