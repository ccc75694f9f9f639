//! An LSTM load predictor built with Burn: trained on one run's trace, it maps the last
//! `window` steps of a layer's proportions to the mean proportions of the next `horizon` steps
//! (held flat over the horizon, like the window average it is compared with).
//!
//! Inputs and targets are scaled by the expert count (a balanced expert is 1); the output is a
//! correction added to the input window's mean, so an untrained model starts as a window average.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Lstm, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{MoeError, Result};
use crate::predict::LoadPredictor;
use crate::telemetry::loads::{LayerLoads, RunLoads};

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct LstmTraining {
    /// Input steps.
    pub window: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Optimizer steps.
    pub iterations: usize,
    /// Samples per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the weights and of the sampled prediction points.
    pub seed: u64,
}

impl Default for LstmTraining {
    fn default() -> Self {
        LstmTraining {
            window: 64,
            hidden: 32,
            iterations: 300,
            batch: 32,
            lr: 3e-3,
            seed: 7,
        }
    }
}

/// The network: an LSTM over the window and a linear head on its last hidden state.
#[derive(Module, Debug)]
pub struct LoadLstm {
    lstm: Lstm,
    head: Linear,
}

impl LoadLstm {
    /// `x: [batch, window, experts]` (scaled proportions) -> `[batch, experts]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, w, m] = x.dims();
        let (_, state) = self.lstm.forward(x.clone(), None);
        let base = x.sum_dim(1).reshape([b, m]).div_scalar(w as f32);
        base + self.head.forward(state.hidden)
    }
}

/// A trained LSTM for one horizon and expert count.
pub struct LstmPredictor {
    model: LoadLstm,
    device: Device,
    /// Steps the model predicts.
    pub horizon: usize,
    /// Experts per layer it was trained on.
    pub experts: usize,
    /// Input steps.
    pub window: usize,
    /// Final training loss (mean squared error of the scaled proportions).
    pub final_loss: f64,
}

/// Scaled input window `[window * m]` ending before `origin` (the first row repeats at the start
/// of a trace).
fn input_window(layer: &LayerLoads, origin: usize, window: usize) -> Vec<f32> {
    let m = layer.experts;
    (0..window)
        .flat_map(|i| {
            let t = (origin + i).saturating_sub(window);
            layer
                .row(t.min(origin.saturating_sub(1)))
                .iter()
                .map(move |p| p * m as f32)
        })
        .collect()
}

fn target_mean(layer: &LayerLoads, origin: usize, horizon: usize) -> Vec<f32> {
    let m = layer.experts;
    let mut acc = vec![0.0f32; m];
    for t in origin..origin + horizon {
        for (a, p) in acc.iter_mut().zip(layer.row(t)) {
            *a += p * m as f32 / horizon as f32;
        }
    }
    acc
}

/// Trains on every layer of `run`; `progress` is called every 50 iterations with the loss.
pub fn train(
    run: &RunLoads,
    horizon: usize,
    settings: &LstmTraining,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<LstmPredictor> {
    let experts = run.layers[0].experts;
    if run.layers.iter().any(|l| l.experts != experts) {
        return Err(MoeError::Input(
            "the LSTM needs the same expert count in every layer".into(),
        ));
    }
    let usable: Vec<&LayerLoads> = run
        .layers
        .iter()
        .filter(|l| l.len() > settings.window + horizon)
        .collect();
    if usable.is_empty() {
        return Err(MoeError::Input(format!(
            "the training trace needs more than window + horizon = {} steps",
            settings.window + horizon
        )));
    }
    let device = device.clone().autodiff();
    device.seed(settings.seed);
    let mut model = LoadLstm {
        lstm: LstmConfig::new(experts, settings.hidden, true).init(&device),
        head: LinearConfig::new(settings.hidden, experts).init(&device),
    };
    // Start as the window mean: a zero head.
    model.head.weight = model.head.weight.map(|w| w.zeros_like().require_grad());
    model.head.bias = model
        .head
        .bias
        .map(|b| b.map(|t| t.zeros_like().require_grad()));
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let (w, b) = (settings.window, settings.batch);
    let mut final_loss = f64::NAN;
    for it in 0..settings.iterations {
        let mut xs = Vec::with_capacity(b * w * experts);
        let mut ys = Vec::with_capacity(b * experts);
        for _ in 0..b {
            let layer = usable[rng.random_range(0..usable.len())];
            let origin = rng.random_range(w..=layer.len() - horizon);
            xs.extend(input_window(layer, origin, w));
            ys.extend(target_mean(layer, origin, horizon));
        }
        let x = Tensor::<3>::from_data(TensorData::new(xs, [b, w, experts]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(ys, [b, experts]), &device);
        let diff = model.forward(x) - y;
        let loss = (diff.clone() * diff).mean();
        final_loss = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(settings.lr, model, grads);
        if (it + 1) % 50 == 0 || it + 1 == settings.iterations {
            progress(it + 1, final_loss);
        }
    }
    Ok(LstmPredictor {
        model,
        device,
        horizon,
        experts,
        window: w,
        final_loss,
    })
}

impl LoadPredictor for LstmPredictor {
    fn name(&self) -> String {
        format!("lstm(W={}, H={})", self.window, self.horizon)
    }

    fn predict(&self, layer: &LayerLoads, origin: usize, horizon: usize) -> Vec<f32> {
        let m = layer.experts;
        let x = Tensor::<3>::from_data(
            TensorData::new(
                input_window(layer, origin, self.window),
                [1, self.window, m],
            ),
            &self.device,
        );
        let mean: Vec<f32> = self
            .model
            .forward(x)
            .detach()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_else(|_| vec![1.0; m]);
        let mean: Vec<f32> = mean.iter().map(|v| (v / m as f32).max(0.0)).collect();
        (0..horizon).flat_map(|_| mean.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::{EvalConfig, SlidingWindowAverage, evaluate};

    /// Loads that switch between two patterns every 40 steps: the next steps are predictable
    /// from the phase of the pattern, which a window mean cannot see.
    fn alternating(steps: usize, offset: usize) -> RunLoads {
        let m = 2;
        let counts: Vec<u32> = (0..steps)
            .flat_map(|t| {
                if ((t + offset) / 40).is_multiple_of(2) {
                    [700u32, 300]
                } else {
                    [300, 700]
                }
            })
            .collect();
        RunLoads {
            layers: vec![LayerLoads::from_counts(
                (1..=steps as u64).collect(),
                m,
                counts,
            )],
            records: steps,
            skipped: vec![],
        }
    }

    #[test]
    fn learns_a_pattern_the_window_mean_misses() {
        let train_run = alternating(2000, 0);
        let test_run = alternating(600, 13);
        let settings = LstmTraining {
            window: 48,
            hidden: 16,
            iterations: 250,
            batch: 16,
            lr: 1e-2,
            seed: 1,
        };
        let device = Device::flex();
        let lstm = train(&train_run, 10, &settings, &device, |_, _| {}).unwrap();
        let cfg = EvalConfig {
            horizon: 10,
            stride: 7,
            min_history: 48,
        };
        let lstm_err = evaluate(&lstm, &test_run, None, &cfg).stable.unwrap();
        let sw_err = evaluate(&SlidingWindowAverage { window: 48 }, &test_run, None, &cfg)
            .stable
            .unwrap();
        assert!(
            lstm_err < 0.5 * sw_err,
            "lstm {lstm_err}, window mean {sw_err}"
        );
    }
}
