//! Routing and balancing alone on a synthetic router: the fast way to compare and tune
//! balancers. No experts are computed and nothing but the balancer learns.
//!
//! Tokens come from a mixture of clusters whose popularity is skewed and drifts from step to
//! step (a seeded random walk), so a router with fixed weights sends most tokens to a few
//! experts and the hot experts change over time. Offset balancers (Loss-Free, BIP) update their
//! state every step; loss balancers (aux, GShard aux, sequence-wise aux, z-loss) take one SGD
//! step of their loss on the router weights, the only way they act.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::balance::BalancerConfig;
use crate::balance::metrics::{MaxVioTracker, max_vio};
use crate::error::{MoeError, Result};
use crate::moe::{MoeConfig, ScoreFunction};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// Routed experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Tokens per step (one batch).
    pub tokens: usize,
    /// Tokens per sequence (for the sequence-wise aux loss); must divide `tokens`.
    pub seq_len: usize,
    /// Steps (batches).
    pub steps: usize,
    /// The balancer under test.
    pub balancer: BalancerConfig,
    /// Router z-loss weight (0: off).
    pub z_loss_weight: f64,
    /// Router score function.
    pub score_function: ScoreFunction,
    /// Token width of the synthetic router.
    pub d_model: usize,
    /// SGD learning rate of the router for loss balancers.
    pub router_lr: f64,
    /// Seed of the router weights and the token stream.
    pub seed: u64,
}

impl SimulationConfig {
    /// Defaults: 16 experts, top-2, 4096 tokens of sequences of 256, 200 steps, softmax,
    /// `d_model` 32, router learning rate 1.0.
    pub fn new(balancer: BalancerConfig) -> Self {
        SimulationConfig {
            experts: 16,
            top_k: 2,
            tokens: 4096,
            seq_len: 256,
            steps: 200,
            balancer,
            z_loss_weight: 0.0,
            score_function: ScoreFunction::Softmax,
            d_model: 32,
            router_lr: 1.0,
            seed: 0,
        }
    }
}

/// Per-step MaxVio and its summary.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// Balancer description.
    pub balancer: String,
    /// MaxVio of each step's requested loads.
    pub maxvio: Vec<f64>,
    /// MaxVio of step 1.
    pub first_step_maxvio: f64,
    /// Mean MaxVio over the steps (AvgMaxVio).
    pub avg_maxvio: f64,
    /// Largest MaxVio over the steps (SupMaxVio).
    pub sup_maxvio: f64,
    /// Mean MaxVio of the last 10 steps.
    pub last_10_avg_maxvio: f64,
    /// MaxVio of the loads summed over all steps.
    pub global_maxvio: f64,
    /// Mean wall time of one step (routing plus balancer update), first step excluded.
    pub mean_step_ms: f64,
}

/// Draws every lazily initialised float parameter of a module.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// The drifting, skewed token stream.
struct TokenStream {
    rng: StdRng,
    centres: Vec<f32>,
    popularity: Vec<f64>,
    d: usize,
}

impl TokenStream {
    const CLUSTERS: usize = 12;

    fn new(d: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_7043);
        let centres = (0..Self::CLUSTERS * d)
            .map(|_| rng.random_range(-1.0f32..1.0) * 1.5)
            .collect();
        let popularity = (0..Self::CLUSTERS)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        TokenStream {
            rng,
            centres,
            popularity,
            d,
        }
    }

    /// One batch `[tokens * d]`; then the popularity takes one random-walk step.
    fn next_batch(&mut self, tokens: usize) -> Vec<f32> {
        let weights: Vec<f64> = self.popularity.iter().map(|p| p.exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut out = Vec::with_capacity(tokens * self.d);
        for _ in 0..tokens {
            let mut u = self.rng.random::<f64>() * total;
            let c = weights.iter().position(|w| {
                u -= w;
                u <= 0.0
            });
            let c = c.unwrap_or(Self::CLUSTERS - 1);
            for i in 0..self.d {
                out.push(self.centres[c * self.d + i] + self.rng.random_range(-0.5f32..0.5));
            }
        }
        for p in &mut self.popularity {
            *p += self.rng.random_range(-0.05..0.05);
        }
        out
    }
}

/// Runs the simulation on `device`; `progress(step, maxvio)` is called after every step.
pub fn simulate(
    config: &SimulationConfig,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<SimulationReport> {
    if config.steps == 0 {
        return Err(MoeError::Config("simulate needs at least 1 step".into()));
    }
    if config.seq_len == 0 || !config.tokens.is_multiple_of(config.seq_len) {
        return Err(MoeError::Config(format!(
            "seq_len {} must divide tokens {}",
            config.seq_len, config.tokens
        )));
    }
    if config.tokens == 0 {
        return Err(MoeError::Config(
            "simulate needs at least 1 token per step".into(),
        ));
    }
    let moe_config = MoeConfig::new(config.d_model, 1, config.experts)
        .with_top_k(config.top_k)
        .with_score_function(config.score_function)
        .with_balancer(config.balancer.clone())
        .with_z_loss_weight(config.z_loss_weight);
    moe_config.validate()?;
    crate::memory::check_fits(
        moe_config.activation_bytes(config.tokens) + 4.0 * moe_config.param_count(),
        "simulating this many tokens and experts",
    )?;
    let learns_by_loss = config.z_loss_weight > 0.0
        || matches!(
            config.balancer,
            BalancerConfig::Aux { .. }
                | BalancerConfig::GShardAux { .. }
                | BalancerConfig::SeqAux { .. }
        );
    let device = if learns_by_loss {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    // The router weights come from ndarray's seeded generator on every backend, so a backend
    // changes the timings, never the routing problem.
    // Loss balancers train the router: its weights must be tracked from the start.
    #[allow(deprecated)]
    let init_device = if learns_by_loss {
        Device::ndarray().autodiff()
    } else {
        Device::ndarray()
    };
    init_device.seed(config.seed);
    moe_config.validate()?;
    let moe = moe_config.init(&init_device);
    // Parameters are initialised lazily, on the device they are first used on: draw them here,
    // from the seeded generator, before moving them (otherwise `fork` re-targets the draw to
    // `device`, whose generator is not seeded, and the routing problem changes from run to run).
    moe.visit(&mut Materialize);
    let mut moe = moe.fork(&device);
    let mut optim = SgdConfig::new().init();
    let mut stream = TokenStream::new(config.d_model, config.seed);
    let mut tracker = MaxVioTracker::default();
    let mut step_ms = Vec::with_capacity(config.steps);
    let batch = config.tokens / config.seq_len;

    for step in 0..config.steps {
        let x = stream.next_batch(config.tokens);
        let started = Instant::now();
        let x = Tensor::<3>::from_data(
            TensorData::new(x, [batch, config.seq_len, config.d_model]),
            &device,
        );
        let out = moe.route(x, true);
        let counts = out.routing.plan()?.requested_counts.clone();
        moe = moe.update_balancer(&out.routing)?;
        if let Some(loss) = out.balance_loss {
            let grads = GradientsParams::from_grads(loss.backward(), &moe);
            moe = optim.step(config.router_lr, moe, grads);
            moe.router.gate.weight.val().into_data(); // finish the step before timing it
        }
        step_ms.push(started.elapsed().as_secs_f64() * 1e3);
        tracker.record(&counts);
        progress(step + 1, max_vio(&counts));
    }

    let steps = tracker.per_step();
    let tail = &steps[steps.len().saturating_sub(10)..];
    let timed = &step_ms[1.min(step_ms.len() - 1)..];
    Ok(SimulationReport {
        balancer: crate::balance::BalancerSummary(&config.balancer).to_string(),
        maxvio: steps.to_vec(),
        first_step_maxvio: steps[0],
        avg_maxvio: tracker.average(),
        sup_maxvio: tracker.supremum(),
        last_10_avg_maxvio: tail.iter().sum::<f64>() / tail.len() as f64,
        global_maxvio: tracker.global(),
        mean_step_ms: timed.iter().sum::<f64>() / timed.len() as f64,
    })
}
