//! Trains the tiny MoE language model with burn-train's learner: its dashboard (in a terminal;
//! plain progress lines otherwise), metric files and checkpoints, with the MoE metrics (MaxVio,
//! dropped assignments, balancing loss, dead experts) beside the loss.
//!
//! `cargo run --release --example train_learner -- [steps] [out-dir] [balancer]`
//! (defaults: 200 steps, `runs/learner`, `bip-noclamp:t=4`; the embedded default corpus).

use std::path::PathBuf;

use burn::data::dataloader::DataLoaderBuilder;
use burn::optim::AdamWConfig;
use burn_moe::BackendKind;
use burn_moe::data::TextData;
use burn_moe::model::Preset;
use burn_moe::train::learner::{LmBatcher, MoeMetric, MoeMetricKind, TextWindows};
use burn_train::metric::LossMetric;
use burn_train::{Learner, SupervisedTraining};

const BATCH: usize = 16;
const SEQ_LEN: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let steps: usize = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("steps `{s}`: {e}"))?,
        None => 200,
    };
    if steps == 0 {
        return Err("steps must be at least 1".into());
    }
    let out = PathBuf::from(args.next().unwrap_or_else(|| "runs/learner".into()));
    let balancer = args.next().unwrap_or_else(|| "bip-noclamp:t=4".into());

    let device = BackendKind::Flex.device(true)?; // autodiff: training
    let mut config = Preset::Tiny.config(SEQ_LEN);
    config.moe.balancer = balancer.parse()?;
    let model = config.init(&device)?;

    // One epoch of `steps` batches of non-overlapping windows; validation on 8 batches.
    let data = TextData::default_corpus(42);
    let needed = steps * BATCH * SEQ_LEN + 1;
    if data.train.len() < needed {
        return Err(format!(
            "{steps} steps need {needed} training bytes, the corpus has {}",
            data.train.len()
        )
        .into());
    }
    let train = TextWindows::new(data.train[..needed].to_vec(), SEQ_LEN, SEQ_LEN);
    let valid_bytes = (8 * BATCH * SEQ_LEN + 1).min(data.val.len());
    let valid = TextWindows::new(data.val[..valid_bytes].to_vec(), SEQ_LEN, SEQ_LEN);
    let loader = |seed: Option<u64>| {
        let builder = DataLoaderBuilder::new(LmBatcher)
            .batch_size(BATCH)
            .set_device(device.clone());
        match seed {
            Some(s) => builder.shuffle(s),
            None => builder,
        }
    };
    let train_loader = loader(Some(42)).build(train);
    let valid_loader = loader(None).build(valid);

    let moe_metrics = || {
        [
            MoeMetricKind::MaxVio,
            MoeMetricKind::Dropped,
            MoeMetricKind::BalanceLoss,
            MoeMetricKind::DeadExperts,
        ]
        .map(MoeMetric::new)
    };
    let mut training = SupervisedTraining::new(&out, train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_default_checkpointers()
        .num_epochs(1)
        .summary();
    for (train_metric, valid_metric) in moe_metrics().into_iter().zip(moe_metrics()) {
        training = training
            .metric_train_numeric(train_metric)
            .metric_valid_numeric(valid_metric);
    }
    let optimizer = AdamWConfig::new().with_weight_decay(0.01).init();
    let result = training.launch(Learner::new(model, optimizer, 3e-3));
    if let Some(error) = result.error {
        return Err(format!("training failed: {error}").into());
    }
    println!(
        "trained {steps} steps; metrics and checkpoints in {}",
        out.display()
    );
    Ok(())
}
