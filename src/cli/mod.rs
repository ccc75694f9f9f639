//! The `burn-moe` command line.

mod demo;
mod simulate;

use clap::{Parser, Subcommand};

pub use demo::DemoArgs;
pub use simulate::SimulateArgs;

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
