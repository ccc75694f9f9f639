//! `burn-moe demo`: the layer on synthetic, clustered tokens.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use clap::Args;

use super::args::BackendFlag;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use burn_moe::balance::metrics::max_vio;
use burn_moe::moe::{MoeConfig, ScoreFunction};

/// Options of `burn-moe demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub backend: BackendFlag,
    /// Print one JSON summary line instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Routed experts.
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// Tokens per call (batch 1 x seq tokens).
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
    /// Token width.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    /// Expert hidden width.
    #[arg(long, default_value_t = 128)]
    pub d_ff: usize,
    /// Capacity factor; omit for dropless.
    #[arg(long)]
    pub capacity_factor: Option<f64>,
    /// Score function: softmax or sigmoid.
    #[arg(long, default_value = "softmax")]
    pub score: ScoreFunction,
    /// Shared experts.
    #[arg(long, default_value_t = 0)]
    pub shared: usize,
    /// Timed forward calls (after one warm-up call).
    #[arg(long, default_value_t = 5)]
    pub calls: usize,
    /// Seed of the weights and the synthetic tokens.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Tokens drawn around a few cluster centres with skewed popularity, so routing is uneven the
/// way real text makes it.
fn clustered_tokens(tokens: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let clusters = 6;
    let centres: Vec<f32> = (0..clusters * d)
        .map(|_| rng.random_range(-1.5..1.5))
        .collect();
    let mut out = Vec::with_capacity(tokens * d);
    for _ in 0..tokens {
        // Cluster c has weight 2^-c: a long tail.
        let mut c = 0;
        while c + 1 < clusters && rng.random::<f32>() < 0.5 {
            c += 1;
        }
        out.extend((0..d).map(|i| centres[c * d + i] + rng.random_range(-0.5..0.5)));
    }
    out
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let device = args.backend.kind.device(false)?;
    device.seed(args.seed);
    let config = MoeConfig::new(args.d_model, args.d_ff, args.experts)
        .with_top_k(args.top_k)
        .with_score_function(args.score)
        .with_normalize_gates(args.top_k > 1)
        .with_capacity_factor(args.capacity_factor)
        .with_num_shared_experts(args.shared);
    config.validate()?;
    burn_moe::memory::check_fits(
        4.0 * config.param_count() + config.activation_bytes(args.tokens),
        "the demo layer and its tokens",
    )?;
    let moe = config.init(&device);
    let x = clustered_tokens(args.tokens, args.d_model, args.seed);
    let input = || {
        Tensor::<3>::from_data(
            TensorData::new(x.clone(), [1, args.tokens, args.d_model]),
            &device,
        )
    };

    if !args.json {
        println!(
            "burn-moe demo: {} tokens, d_model {}, {} experts, top-{}, {}, backend {}",
            args.tokens,
            args.d_model,
            args.experts,
            args.top_k,
            match args.capacity_factor {
                Some(cf) => format!("capacity factor {cf}"),
                None => "dropless".into(),
            },
            args.backend.kind
        );
    }
    let warm = Instant::now();
    // The first call checks the input and the routing (clear errors); the timed ones do not.
    let out = moe.try_forward(input())?;
    let _ = out.output.clone().into_data(); // wait for the device
    let warm_ms = warm.elapsed().as_secs_f64() * 1e3;

    let mut times = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let t = Instant::now();
        let o = moe.forward(input());
        let _ = o.output.into_data().try_into_vec_as::<f32>();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median_ms = times.get(times.len() / 2).copied();

    let plan = out.routing.plan().unwrap();
    if args.json {
        let summary = serde_json::json!({
            "backend": args.backend.kind.to_string(),
            "tokens": args.tokens,
            "experts": args.experts,
            "top_k": args.top_k,
            "requested": plan.requested_counts,
            "computed": plan.computed_counts,
            "max_vio": max_vio(&plan.requested_counts),
            "capacity": plan.capacity,
            "dropped_assignments": plan.dropped_assignments(),
            "dropped_tokens": plan.dropped_tokens,
            "warmup_ms": warm_ms,
            "median_ms": median_ms,
            "tokens_per_s": median_ms.map(|m| args.tokens as f64 / (m / 1e3)),
        });
        println!("{summary}");
        return Ok(());
    }
    println!("warm-up call (includes kernel compilation on wgpu): {warm_ms:.1} ms");
    let total: usize = plan.computed_counts.iter().sum();
    println!("\nexpert  requested  computed  share");
    for (e, (r, c)) in plan
        .requested_counts
        .iter()
        .zip(&plan.computed_counts)
        .enumerate()
    {
        let share = if total > 0 {
            *c as f64 / total as f64
        } else {
            0.0
        };
        println!(
            "{e:>6}  {r:>9}  {c:>8}  {:>5.1}%  {}",
            share * 100.0,
            "#".repeat((share * 60.0) as usize)
        );
    }
    println!(
        "\nMaxVio (requested) {:.3}   capacity {}   dropped assignments {} ({:.2}%)   dropped tokens {}",
        max_vio(&plan.requested_counts),
        plan.capacity.map_or("none".into(), |c| c.to_string()),
        plan.dropped_assignments(),
        100.0 * plan.dropped_assignments() as f64 / (args.tokens * args.top_k) as f64,
        plan.dropped_tokens,
    );
    if let Some(median) = median_ms {
        println!(
            "forward: median {median:.2} ms over {} calls, {:.0} tokens/s",
            times.len(),
            args.tokens as f64 / (median / 1e3)
        );
    }
    Ok(())
}
