//! `burn-moe eval` and `generate`: a trained run's checkpoint, evaluated or sampled.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use burn::module::Module;
use clap::Args;

use super::args::BackendFlag;
use burn_moe::data::TextData;
use burn_moe::train::{RunDir, SamplingConfig, evaluate, generate};

/// Options of `burn-moe eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory written by `burn-moe train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Evaluate on this text file's validation split (default: the run's data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendFlag,
    /// Validation batches (of the run's batch size and seq-len).
    #[arg(long, default_value_t = 32)]
    pub batches: usize,
    /// Print only a JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    let dir = RunDir::open(&args.checkpoint)?;
    let manifest = dir.manifest()?;
    let device = args.backend.kind.device(false)?;
    let (model, state) = dir.load_model(&device)?;
    anyhow::ensure!(args.batches >= 1, "--batches must be at least 1");
    let data = match &args.data {
        Some(path) => TextData::from_file(path)?,
        None => manifest.load_data()?,
    };
    data.check_seq_len(manifest.train.seq_len)?;
    let report = evaluate(
        &model,
        &data,
        manifest.train.batch_size,
        manifest.train.seq_len,
        args.batches,
    )
    .context("evaluating")?;
    if !args.json {
        println!(
            "checkpoint at step {} on {}: {} tokens",
            state.step, data.source, report.tokens
        );
        println!(
            "loss {:.4}  perplexity {:.3}",
            report.loss, report.perplexity
        );
        for (l, (g, d)) in report
            .maxvio_global
            .iter()
            .zip(&report.drop_rate)
            .enumerate()
        {
            println!(
                "MoE layer {l}: MaxVio_global {g:.4}  MaxVio_batch {:.4}  drop rate {:.4}",
                report.maxvio_batch[l], d
            );
        }
    }
    let mut json = serde_json::to_value(&report)?;
    json["step"] = state.step.into();
    json["val_loss"] = report.loss.into();
    json["val_ppl"] = report.perplexity.into();
    println!("{json}");
    Ok(())
}

/// Options of `burn-moe generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Run directory written by `burn-moe train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub backend: BackendFlag,
    /// Print one JSON line (prompt and generated text) when done instead of streaming.
    #[arg(long)]
    pub json: bool,
}

pub fn run_generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let dir = RunDir::open(&args.checkpoint)?;
    let device = args.backend.kind.device(false)?;
    let (model, _) = dir.load_model(&device)?;
    let sampling = SamplingConfig {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    if args.json {
        let mut bytes = Vec::new();
        generate(&model.valid(), &args.prompt, sampling, |byte| {
            bytes.push(byte)
        })?;
        let text = String::from_utf8_lossy(&bytes);
        println!(
            "{}",
            serde_json::json!({ "prompt": args.prompt, "generated": text, "bytes": bytes.len() })
        );
        return Ok(());
    }
    let mut stdout = std::io::stdout();
    print!("{}", args.prompt);
    let mut pending = Vec::new(); // bytes of a UTF-8 character not yet complete
    generate(&model.valid(), &args.prompt, sampling, |byte| {
        pending.push(byte);
        match std::str::from_utf8(&pending) {
            Ok(s) => {
                print!("{s}");
                pending.clear();
            }
            Err(e) if e.error_len().is_some() => {
                print!("{}", String::from_utf8_lossy(&pending));
                pending.clear();
            }
            Err(_) => {} // incomplete: wait for the next byte
        }
        stdout.flush().ok();
    })?;
    println!();
    Ok(())
}
