//! The `burn-moe` command line.

mod demo;
mod simulate;
mod train;

use clap::{Parser, Subcommand};

pub use demo::DemoArgs;
pub use simulate::SimulateArgs;
pub use train::{EvalArgs, GenerateArgs, TrainArgs};

/// Mixture-of-Experts layers on any GPU (wgpu) or CPU (ndarray, flex).
#[derive(Debug, Parser)]
#[command(name = "burn-moe", version, about)]
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
    /// Show the wgpu adapter this machine offers, if any.
    Devices,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run_train(&args),
        Command::Eval(args) => train::run_eval(&args),
        Command::Generate(args) => train::run_generate(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Devices => {
            match burn_moe::device::probe_wgpu_adapter() {
                Ok(a) => println!("wgpu: {a}"),
                Err(e) => println!("wgpu: unavailable: {e}"),
            }
            println!("ndarray: available (CPU)\nflex: available (CPU)");
            Ok(())
        }
    }
}
