//! The `burn-moe` command line.

mod analyze;
mod args;
mod demo;
mod eval;
mod parallel;
mod place;
mod predict;
mod simulate;
mod study;
mod train;

use clap::{Parser, Subcommand};

pub use analyze::AnalyzeArgs;
pub use demo::DemoArgs;
pub use eval::{EvalArgs, GenerateArgs};
pub use place::PlaceArgs;
pub use predict::PredictArgs;
pub use simulate::SimulateArgs;
pub use study::StudyArgs;
pub use train::TrainArgs;

/// Mixture-of-Experts layers on any GPU (wgpu) or CPU (ndarray, flex).
#[derive(Debug, Parser)]
#[command(
    name = "burn-moe",
    version,
    about,
    subcommand_required = true,
    arg_required_else_help = false
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a MoE language model (default: the tiny preset on the embedded corpus).
    Train(TrainArgs),
    /// Evaluate a trained run: loss, perplexity, expert balance.
    Eval(EvalArgs),
    /// Generate text from a trained run.
    Generate(GenerateArgs),
    /// Run a MoE layer on synthetic tokens and print routing statistics and timings.
    Demo(DemoArgs),
    /// Route a synthetic, drifting, skewed token stream with a balancer and report MaxVio.
    Simulate(SimulateArgs),
    /// Expert-load analysis of training traces: balance over time, the transient/stable phase
    /// switch, charts.
    Analyze(AnalyzeArgs),
    /// Predict expert loads along a trace (sliding-window average, ARIMA, LSTM) and measure the
    /// error in the transient and stable states.
    Predict(PredictArgs),
    /// Place experts on ranks from predicted loads (ours and EPLB); compare with the contiguous
    /// placement and an oracle, or write a placement file.
    Place(PlaceArgs),
    /// Train the same model once per balancer and compare quality, balance and speed.
    Study(StudyArgs),
    /// Show the wgpu adapter this machine offers, if any.
    Devices(DevicesArgs),
}

/// Options of `burn-moe devices`.
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run_train(&args),
        Command::Eval(args) => eval::run_eval(&args),
        Command::Generate(args) => eval::run_generate(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Analyze(args) => analyze::run(&args),
        Command::Predict(args) => predict::run_predict(&args),
        Command::Place(args) => place::run_place(&args),
        Command::Study(args) => study::run(&args),
        Command::Devices(args) => {
            let wgpu = burn_moe::device::probe_wgpu_adapter();
            if args.json {
                let wgpu = match &wgpu {
                    Ok(a) => serde_json::json!({ "available": true, "adapter": a.to_string() }),
                    Err(e) => serde_json::json!({ "available": false, "error": e.to_string() }),
                };
                let cpu = serde_json::json!({ "available": true });
                println!(
                    "{}",
                    serde_json::json!({ "wgpu": wgpu, "ndarray": cpu, "flex": cpu })
                );
                return Ok(());
            }
            match wgpu {
                Ok(a) => println!("wgpu: {a}"),
                Err(e) => println!("wgpu: unavailable: {e}"),
            }
            println!("ndarray: available (CPU)\nflex: available (CPU)");
            Ok(())
        }
    }
}
