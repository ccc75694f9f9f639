//! Train the tiny MoE language model on whatever GPU wgpu finds (Vulkan, Metal, DX12), then
//! sample from it. Without a GPU this stops with an error that says what to install.
//!
//! `cargo run --release --example train_gpu -- [steps]`

use burn_moe::BackendKind;
use burn_moe::dist::Solo;
use burn_moe::model::Preset;
use burn_moe::train::{
    RunDir, RunManifest, SamplingConfig, TrainConfig, TrainStart, generate, train,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let adapter = burn_moe::device::probe_wgpu_adapter()?;
    println!("training on {adapter}");
    let device = BackendKind::Wgpu.device(false)?;
    let manifest = RunManifest {
        model: Preset::Tiny.config(64),
        train: TrainConfig::new().with_steps(steps).with_eval_every(50),
        data: None,
        data_digest: None,
    };
    let dir = RunDir::create(std::path::Path::new("runs/example-gpu"))?.with_overwrite(true);
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
        "val loss {:.3}, {:.0} tokens/s",
        summary.val_loss, summary.tokens_per_s
    );

    let (model, _) = dir.load_model(&device)?;
    let sampling = SamplingConfig {
        max_tokens: 120,
        temperature: 0.7,
        top_p: 0.95,
        seed: 1,
    };
    let text = generate(&model, "id=", sampling, |_| {})?;
    println!("id={}", String::from_utf8_lossy(&text));
    Ok(())
}
