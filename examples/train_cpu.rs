//! CPU-only training of the tiny MoE language model with BIP balancing, printing the expert
//! balance of each MoE layer at the end.
//!
//! `cargo run --release --example train_cpu -- [flex|ndarray] [steps]`

use burn_moe::BackendKind;
use burn_moe::data::TextData;
use burn_moe::dist::Solo;
use burn_moe::model::Preset;
use burn_moe::train::{RunDir, RunManifest, TrainConfig, TrainStart, evaluate, train};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let backend: BackendKind = args.next().unwrap_or("flex".into()).parse()?;
    let steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let device = backend.device(false)?;
    let mut model = Preset::Tiny.config(64);
    model.moe.balancer = "bip".parse()?;
    let train_config = TrainConfig::new().with_steps(steps).with_eval_every(50);
    let manifest = RunManifest {
        model,
        train: train_config.clone(),
        data: None,
        data_digest: None,
    };
    let dir = RunDir::create(std::path::Path::new("runs/example-cpu"))?.with_overwrite(true);
    let summary = train(
        &dir,
        TrainStart::Fresh(Box::new(manifest)),
        &device,
        None,
        &mut (),
        &Solo,
        &Default::default(),
    )?;
    println!(
        "{backend}: train loss {:.3} -> {:.3}, val loss {:.3}, {:.0} tokens/s",
        summary.first_train_loss, summary.final_train_loss, summary.val_loss, summary.tokens_per_s
    );
    let (model, _) = dir.load_model(&device)?;
    let data = TextData::default_corpus(train_config.seed);
    let report = evaluate(&model, &data, 16, 64, 16)?;
    for (layer, maxvio) in report.maxvio_global.iter().enumerate() {
        println!("MoE layer {layer}: MaxVio_global {maxvio:.3}");
    }
    Ok(())
}
