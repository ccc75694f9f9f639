//! `burn-moe simulate`: routing and balancing alone on a synthetic, drifting, skewed router.

use clap::Args;

use super::args::{BackendFlag, parse_balancer};

use burn_moe::balance::BalancerConfig;
use burn_moe::balance::simulate::{SimulationConfig, simulate};
use burn_moe::moe::ScoreFunction;

/// Options of `burn-moe simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Routed experts.
    #[arg(long, default_value_t = 16)]
    pub experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// Tokens per step.
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
    /// Tokens per sequence (sequence-wise aux loss).
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Balancer: none, aux, gshard-aux, seq-aux, loss-free, loss-free-prop, bip, bip-noclamp,
    /// bip-lagged, qb, qb-hist; parameters may follow, e.g. bip:t=4, qb-hist:bins=500,ema=0.5.
    #[arg(long, default_value = "bip", value_parser = parse_balancer)]
    pub balancer: BalancerConfig,
    /// Loss-Free update rate u (overrides the default 1e-3).
    #[arg(long)]
    pub rate: Option<f64>,
    /// BIP dual iterations T per step (overrides the default 1).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Aux-loss weight alpha (overrides the balancer's default).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Router z-loss weight (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub z_loss: f64,
    /// Score function: softmax or sigmoid.
    #[arg(long, default_value = "softmax")]
    pub score: ScoreFunction,
    /// Router SGD learning rate for loss balancers.
    #[arg(long, default_value_t = 1.0)]
    pub router_lr: f64,
    #[command(flatten)]
    pub backend: BackendFlag,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print only the final JSON summary line.
    #[arg(long)]
    pub json: bool,
}

/// Applies the command-line overrides to the named balancer.
fn balancer(args: &SimulateArgs) -> BalancerConfig {
    let mut b = args.balancer.clone();
    match &mut b {
        BalancerConfig::Aux { alpha }
        | BalancerConfig::GShardAux { alpha }
        | BalancerConfig::SeqAux { alpha } => {
            *alpha = args.alpha.unwrap_or(*alpha);
        }
        BalancerConfig::LossFree { rate, .. } => *rate = args.rate.unwrap_or(*rate),
        BalancerConfig::Bip { iterations, .. } => {
            *iterations = args.iterations.unwrap_or(*iterations)
        }
        BalancerConfig::None | BalancerConfig::Quantile { .. } => {}
    }
    b
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let config = SimulationConfig {
        experts: args.experts,
        top_k: args.top_k,
        tokens: args.tokens,
        seq_len: args.seq_len,
        steps: args.steps,
        balancer: balancer(args),
        z_loss_weight: args.z_loss,
        score_function: args.score,
        router_lr: args.router_lr,
        seed: args.seed,
        ..SimulationConfig::new(BalancerConfig::None)
    };
    config.balancer.validate()?;
    let device = args.backend.kind.device(false)?;
    if !args.json {
        println!(
            "simulate: {} experts, top-{}, {} tokens/step, {} steps, balancer {}, backend {}",
            config.experts,
            config.top_k,
            config.tokens,
            config.steps,
            burn_moe::balance::BalancerSummary(&config.balancer),
            args.backend.kind
        );
    }
    let report = simulate(&config, &device, |step, maxvio| {
        if !args.json {
            println!("step {step:>5}  MaxVio {maxvio:.4}");
        }
    })?;
    if !args.json {
        println!(
            "\nfirst-step MaxVio {:.4}  AvgMaxVio {:.4}  SupMaxVio {:.4}  last-10 MaxVio {:.4}  global {:.4}  {:.2} ms/step",
            report.first_step_maxvio,
            report.avg_maxvio,
            report.sup_maxvio,
            report.last_10_avg_maxvio,
            report.global_maxvio,
            report.mean_step_ms
        );
    }
    let mut summary = serde_json::to_value(&report)?;
    if let Some(obj) = summary.as_object_mut() {
        obj.remove("maxvio");
        obj.insert("backend".into(), args.backend.kind.to_string().into());
        obj.insert("experts".into(), config.experts.into());
        obj.insert("top_k".into(), config.top_k.into());
        obj.insert("tokens".into(), config.tokens.into());
        obj.insert("steps".into(), config.steps.into());
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
