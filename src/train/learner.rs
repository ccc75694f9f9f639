//! burn-train integration (feature `learner`): [`MoeLm`] as a [`TrainStep`] and
//! [`InferenceStep`], the MoE numbers as burn-train metrics, and the text data as a burn
//! [`Dataset`] with its [`Batcher`].
//!
//! With burn-train's `SupervisedTraining` the dashboard, metric loggers and checkpointing come
//! from burn-train; `burn-moe train` has what burn-train does not: exact resume of the data
//! order and the balancer state, expert-load traces, the balancer study.
//!
//! The offset balancers (Loss-Free, BIP, quantile) keep state that the optimizer must not
//! touch: [`TrainStep::step`] hands each layer's state change to [`TrainStep::optimize`] as an
//! entry of the gradients under the state's parameter id, and `optimize` takes it out before
//! the optimizer step and applies it after. Under gradient accumulation the changes of the
//! accumulated batches add up.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::tensor::{Device, ExecutionError, Tensor};
use burn_train::metric::state::{FormatOptions, NumericMetricState};
use burn_train::metric::{
    Adaptor, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};

use crate::balance::metrics::BalanceMetrics;
use crate::data::Batch;
use crate::model::{Ffn, MoeLm};

/// Windows of `seq_len + 1` bytes of a text, one dataset item each, starting every `stride`
/// bytes.
#[derive(Debug, Clone)]
pub struct TextWindows {
    bytes: Arc<Vec<u8>>,
    seq_len: usize,
    stride: usize,
}

impl TextWindows {
    /// The windows of `bytes` (for example `TextData::train`); `stride = seq_len` tiles the
    /// text without overlap.
    pub fn new(bytes: Vec<u8>, seq_len: usize, stride: usize) -> Self {
        TextWindows {
            bytes: Arc::new(bytes),
            seq_len,
            stride: stride.max(1),
        }
    }
}

impl Dataset<Vec<u8>> for TextWindows {
    fn get(&self, index: usize) -> Result<Vec<u8>, DatasetError> {
        let start = index * self.stride;
        self.bytes
            .get(start..start + self.seq_len + 1)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                DatasetError::new(std::io::Error::other(format!(
                    "window {index} is past the text's end"
                )))
            })
    }

    fn len(&self) -> usize {
        match self.bytes.len().checked_sub(self.seq_len + 1) {
            Some(room) => room / self.stride + 1,
            None => 0,
        }
    }
}

/// Stacks byte windows into a [`Batch`] of inputs and next-byte targets.
#[derive(Debug, Clone, Default)]
pub struct LmBatcher;

impl Batcher<Vec<u8>, Batch> for LmBatcher {
    fn batch(&self, items: Vec<Vec<u8>>, device: &Device) -> Batch {
        Batch::from_windows(items.iter().map(Vec::as_slice), device)
    }
}

/// What a step gives burn-train: the language-model loss and the batch's MoE numbers.
#[derive(Debug)]
pub struct MoeStepOutput {
    /// Mean next-token cross-entropy `[1]` (without the balancing loss).
    pub loss: Tensor<1>,
    /// The batch's MoE numbers, the input of every [`MoeMetric`].
    pub moe: MoeMetricInput,
}

impl ItemLazy for MoeStepOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        Ok(self) // the MoE numbers are host values already; the loss is read by LossMetric
    }
}

impl Adaptor<LossInput> for MoeStepOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// The input of [`MoeMetric`]: one batch's MoE numbers.
#[derive(Debug, Clone, Copy)]
pub struct MoeMetricInput {
    /// Balance of the batch, averaged over the MoE layers (dead experts: summed).
    pub balance: BalanceMetrics,
    /// The balancing loss added to the training loss, summed over the layers (0 when none).
    pub balance_loss: f64,
    /// Tokens in the batch.
    pub tokens: usize,
}

impl Adaptor<MoeMetricInput> for MoeStepOutput {
    fn adapt(&self) -> MoeMetricInput {
        self.moe
    }
}

/// Which MoE number a [`MoeMetric`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeMetricKind {
    /// MaxVio of the requested loads, `max_j load_j / mean load - 1`, mean over layers.
    MaxVio,
    /// Dropped assignments over all assignments (capacity), mean over layers.
    Dropped,
    /// The balancing loss (aux and z-loss terms) summed over layers.
    BalanceLoss,
    /// Experts that received no token in the batch, summed over layers.
    DeadExperts,
}

/// A burn-train numeric metric of the MoE layers; averaged over the epoch by tokens.
#[derive(Clone)]
pub struct MoeMetric {
    kind: MoeMetricKind,
    name: MetricName,
    state: NumericMetricState,
}

impl MoeMetric {
    /// The metric reporting `kind`.
    pub fn new(kind: MoeMetricKind) -> Self {
        let name = match kind {
            MoeMetricKind::MaxVio => "MoE MaxVio",
            MoeMetricKind::Dropped => "MoE Dropped",
            MoeMetricKind::BalanceLoss => "MoE Balance Loss",
            MoeMetricKind::DeadExperts => "MoE Dead Experts",
        };
        MoeMetric {
            kind,
            name: Arc::new(name.to_string()),
            state: NumericMetricState::default(),
        }
    }

    fn format(&self) -> FormatOptions {
        let format = FormatOptions::new(self.name.clone());
        match self.kind {
            MoeMetricKind::Dropped => format.unit("%").precision(2),
            MoeMetricKind::DeadExperts => format.precision(1),
            _ => format.precision(3),
        }
    }
}

impl Metric for MoeMetric {
    type Input = MoeMetricInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(
        &mut self,
        item: &MoeMetricInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, burn::tensor::TensorReadError> {
        let value = match self.kind {
            MoeMetricKind::MaxVio => item.balance.max_vio,
            MoeMetricKind::Dropped => 100.0 * item.balance.drop_rate,
            MoeMetricKind::BalanceLoss => item.balance_loss,
            MoeMetricKind::DeadExperts => item.balance.dead_experts as f64,
        };
        self.state.update(value, item.tokens);
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, burn::tensor::TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: (self.kind == MoeMetricKind::Dropped).then(|| "%".to_string()),
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for MoeMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

impl MoeLm {
    /// Forward pass, loss and MoE numbers of one batch; the layers' outputs for the balancers.
    fn learner_forward(&self, batch: Batch) -> (Tensor<1>, MoeStepOutput, Vec<crate::MoeOutput>) {
        let tokens = batch.inputs.dims().iter().product();
        // burn-train's steps cannot return errors: a bad batch or a diverged router is fatal.
        let out = self
            .forward(batch.inputs)
            .unwrap_or_else(|e| panic!("MoE language model forward failed: {e}"));
        let balance = out.balance_loss();
        let ce = MoeLm::cross_entropy(out.logits, batch.targets);
        let (loss, balance_loss) = match balance {
            Some(b) => (ce.clone() + b.clone(), b.into_scalar::<f32>() as f64),
            None => (ce.clone(), 0.0),
        };
        let layers: Vec<BalanceMetrics> = out
            .moe
            .iter()
            .map(|o| BalanceMetrics::from_routing(&o.routing))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("reading the MoE routing failed: {e}"));
        let item = MoeStepOutput {
            loss: ce,
            moe: MoeMetricInput {
                balance: BalanceMetrics::mean_over_layers(&layers),
                balance_loss,
                tokens,
            },
        };
        (loss, item, out.moe)
    }
}

impl TrainStep for MoeLm {
    type Input = Batch;
    type Output = MoeStepOutput;

    fn step(&self, batch: Batch) -> TrainOutput<MoeStepOutput> {
        let (loss, item, outputs) = self.learner_forward(batch);
        let mut grads = GradientsParams::from_grads(loss.backward(), self);
        for (moe, out) in self.moe_layers().zip(&outputs) {
            if let Some(state) = &out.routing.balancer_state {
                let old = moe.balancer_state.val();
                let new = state.clone().detach();
                grads.register(moe.balancer_state.id, (new - old).inner());
            }
        }
        TrainOutput { grads, item }
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        mut grads: GradientsParams,
    ) -> Self {
        let changes: Vec<Option<Tensor<1>>> = self
            .moe_layers()
            .map(|moe| grads.remove::<1>(moe.balancer_state.id))
            .collect();
        optim.step(lr, self, grads).apply_balancer_changes(changes)
    }

    /// Several devices: each proposed a change from the same state; the mean is applied.
    fn optimize_multi(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        mut grads: MultiGradientsParams,
    ) -> Self {
        let devices = grads.grads.len().max(1) as f64;
        let changes: Vec<Option<Tensor<1>>> = self
            .moe_layers()
            .map(|moe| {
                grads
                    .remove::<1>(moe.balancer_state.id)
                    .map(|(sum, _)| sum / devices)
            })
            .collect();
        optim
            .step_multi(lr, self, grads)
            .apply_balancer_changes(changes)
    }
}

impl MoeLm {
    /// Adds `changes[i]` (inner-backend tensors) to the `i`-th MoE layer's balancer state.
    fn apply_balancer_changes(mut self, changes: Vec<Option<Tensor<1>>>) -> Self {
        let mut changes = changes.into_iter();
        for block in &mut self.blocks {
            if let Ffn::Moe(moe) = &mut block.ffn
                && let Some(Some(change)) = changes.next()
            {
                let state = moe.balancer_state.val();
                let change = Tensor::from_inner(change).to_device(&state.device());
                let updated = (state + change).detach().set_require_grad(false);
                moe.balancer_state = moe.balancer_state.clone().map(|_| updated);
            }
        }
        self
    }
}

impl InferenceStep for MoeLm {
    type Input = Batch;
    type Output = MoeStepOutput;

    fn step(&self, batch: Batch) -> MoeStepOutput {
        self.learner_forward(batch).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendKind;
    use crate::model::Preset;
    use burn::data::dataloader::batcher::Batcher;
    use burn::optim::AdamWConfig;
    use burn::tensor::Int;

    fn batch(device: &Device) -> Batch {
        let text: Vec<u8> = (0..2000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
        let windows = TextWindows::new(text, 16, 16);
        let items = (0..4).map(|i| windows.get(i).unwrap()).collect();
        LmBatcher.batch(items, device)
    }

    #[test]
    fn windows_tile_the_text_and_the_batcher_shifts_targets() {
        let w = TextWindows::new(b"abcdefghij".to_vec(), 3, 3);
        assert_eq!(w.len(), 3); // starts 0, 3, 6: each needs 4 bytes
        assert_eq!(w.get(2).unwrap(), b"ghij".to_vec());
        assert!(w.get(3).is_err());
        assert_eq!(TextWindows::new(b"abc".to_vec(), 3, 1).len(), 0);
        let device = BackendKind::Ndarray.device(false).unwrap();
        let b = LmBatcher.batch(vec![b"abcd".to_vec(), b"efgh".to_vec()], &device);
        let ids = |t: Tensor<2, Int>| t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        assert_eq!(ids(b.inputs), vec![97, 98, 99, 101, 102, 103]);
        assert_eq!(ids(b.targets), vec![98, 99, 100, 102, 103, 104]);
    }

    #[test]
    fn a_learner_step_applies_the_balancer_state_and_reports_the_batch() {
        let device = BackendKind::Ndarray.device(true).unwrap();
        let mut config = Preset::Tiny.config(16);
        config.moe.balancer = "loss-free".parse().unwrap();
        let model = config.init(&device).unwrap();
        let out = TrainStep::step(&model, batch(&device));
        assert_eq!(out.item.moe.tokens, 64);
        assert!(out.item.moe.balance.max_vio >= 0.0);
        let before: Vec<Vec<f32>> = model
            .moe_layers()
            .map(|m| m.balancer_state_values().unwrap())
            .collect();
        // What the layers proposed, from the same forward pass.
        let proposed: Vec<Vec<f32>> = model
            .forward(batch(&device).inputs)
            .unwrap()
            .moe
            .into_iter()
            .map(|o| {
                let state = o.routing.balancer_state.unwrap();
                state.into_data().try_into_vec_as::<f32>().unwrap()
            })
            .collect();
        let mut optim = AdamWConfig::new().init();
        let lr = ModuleLearningRate::from(1e-3);
        let model = model.optimize(&mut optim, lr, out.grads);
        for ((layer, old), new) in model.moe_layers().zip(&before).zip(&proposed) {
            let got = layer.balancer_state_values().unwrap();
            assert_ne!(&got, old, "the state moved");
            for (g, p) in got.iter().zip(new) {
                assert!((g - p).abs() < 1e-6, "state {got:?} != proposed {new:?}");
            }
        }
    }
}
