//! `burn-moe train`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;

use super::args::{BackendFlag, parse_balancer, preset_parser};
use super::parallel::MpiArgs;
use indicatif::{ProgressBar, ProgressStyle};

use burn_moe::BackendKind;
use burn_moe::balance::BalancerConfig;
use burn_moe::dist::{Collective, ranks_from_launcher};
use burn_moe::model::{MoeLmConfig, Preset};
use burn_moe::train::{Progress, RunDir, RunManifest, TrainConfig, TrainStart, train};

/// Options of `burn-moe train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub backend: BackendFlag,
    /// Model size: tiny or small.
    #[arg(long, default_value = "tiny", value_parser = preset_parser())]
    pub preset: Preset,
    #[command(flatten)]
    pub run: RunArgs,
    /// Run directory for checkpoints, trace and metrics.
    #[arg(long, default_value = "runs/moe-lm")]
    pub out: PathBuf,
    /// Continue the run in this directory from its latest checkpoint (other model and data
    /// options are taken from the run; --steps may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Total training steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Transformer blocks (default: the preset's).
    #[arg(long)]
    pub layers: Option<usize>,
    /// A MoE FFN in every N-th block (others dense).
    #[arg(long, default_value_t = 1)]
    pub moe_every: usize,
    /// Make the first block dense.
    #[arg(long)]
    pub dense_first: bool,
    /// Load balancer: none, aux, gshard-aux, seq-aux, loss-free, loss-free-prop, bip,
    /// bip-noclamp, bip-lagged, qb, qb-hist; parameters may follow, e.g. bip:t=4.
    #[arg(long, default_value = "none", value_parser = parse_balancer)]
    pub balancer: BalancerConfig,
    /// Router z-loss weight (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub z_loss: f64,
    /// Validate every N steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Replace the run already in `--out` (its checkpoints, trace and metrics are deleted when
    /// the new run starts). Without it a non-empty `--out` is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Print only a final JSON summary line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mpi: MpiArgs,
}

/// Data, batch and model-shape options shared by `train` and `study`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Text file to train on (UTF-8); default: the embedded generated corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Seed of the weights, the data order and every random draw.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Routed experts per MoE layer (default: the preset's).
    #[arg(long)]
    pub experts: Option<usize>,
    /// Experts per token (default: the preset's).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Hidden width of each routed expert (default: the preset's; a quarter of it with 4x the
    /// experts and top-k is DeepSeekMoE's fine-grained split).
    #[arg(long)]
    pub expert_width: Option<usize>,
    /// Shared experts applied to every token, each of the routed experts' width (default 0).
    #[arg(long)]
    pub shared_experts: Option<usize>,
    /// Expert capacity factor in training (omit for dropless).
    #[arg(long)]
    pub capacity_factor: Option<f64>,
    /// Group-limited routing: the routed experts form this many groups (must divide
    /// --experts), and each token chooses inside its best --top-groups of them (DeepSeek-V3).
    #[arg(long, default_value_t = 1)]
    pub expert_groups: usize,
    /// Groups each token keeps under group-limited routing.
    #[arg(long, default_value_t = 1)]
    pub top_groups: usize,
}

impl RunArgs {
    /// The preset's model with the expert shape and capacity overridden where given.
    pub(super) fn model(&self, preset: Preset) -> MoeLmConfig {
        let mut model = preset.config(self.seq_len.max(64));
        model.moe.num_experts = self.experts.unwrap_or(model.moe.num_experts);
        model.moe.top_k = self.top_k.unwrap_or(model.moe.top_k);
        model.moe.d_ff = self.expert_width.unwrap_or(model.moe.d_ff);
        model.moe.num_shared_experts = self.shared_experts.unwrap_or(model.moe.num_shared_experts);
        model.moe.capacity_factor = self.capacity_factor;
        model.moe.expert_groups = self.expert_groups;
        model.moe.top_groups = self.top_groups;
        model
    }

    /// Training settings of these options for `steps` steps.
    pub(super) fn train(&self, steps: u64) -> TrainConfig {
        TrainConfig::new()
            .with_steps(steps)
            .with_batch_size(self.batch_size)
            .with_seq_len(self.seq_len)
            .with_lr(self.lr)
            .with_warmup_steps(self.warmup)
            .with_seed(self.seed)
    }
}

/// Progress: a bar on a terminal, plain lines otherwise, nothing with `--json`.
pub(super) struct Bar(Option<ProgressBar>);

impl Bar {
    pub(super) fn new(quiet: bool) -> Self {
        Bar((!quiet).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        }))
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn step(&mut self, step: u64, total: u64, loss: f64, tps: f64, maxvio: f64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
            bar.set_position(step);
            bar.set_message(format!(
                "loss {loss:.4}  {tps:>7.0} tok/s  MaxVio {maxvio:.3}"
            ));
            if !bar.is_hidden() {
                return;
            }
            // No terminal (CI, a pipe): a plain line now and then.
            if step == 1 || step.is_multiple_of(25) || step == total {
                eprintln!(
                    "step {step}/{total}  loss {loss:.4}  {tps:.0} tok/s  MaxVio {maxvio:.3}"
                );
            }
        }
    }

    fn message(&mut self, text: &str) {
        match &self.0 {
            Some(bar) if !bar.is_hidden() => bar.println(text),
            Some(_) => eprintln!("{text}"),
            None => {}
        }
    }
}

/// Ctrl-C sets the flag; training stops after the current step with a checkpoint.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // second Ctrl-C: stop now
        }
        eprintln!(
            "\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)"
        );
    })
    .is_err()
    {
        log::warn!("could not install the Ctrl-C handler");
    }
    flag
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.mpi.rank_timeout >= 1,
        "--rank-timeout must be at least 1 second"
    );
    let comm = ranks_from_launcher(Duration::from_secs(args.mpi.rank_timeout))?;
    match train_on(args, comm.as_ref()) {
        Err(e) if comm.size() > 1 => {
            // The other ranks may be waiting in a collective: end the job, not just this rank.
            eprintln!("error: rank {} of {}: {e:#}", comm.rank(), comm.size());
            comm.abort(1)
        }
        result => result,
    }
}

fn train_on(args: &TrainArgs, comm: &dyn Collective) -> anyhow::Result<()> {
    // Rank 0 speaks for the run.
    let lead = comm.rank() == 0;
    let device = args.backend.kind.device(false)?;
    let (dir, start, experts) = match &args.resume {
        Some(path) => {
            let dir = RunDir::open(path)?;
            let experts = dir.manifest()?.model.moe.num_experts;
            (dir, TrainStart::Resume { steps: args.steps }, experts)
        }
        None => {
            let mut model = args.run.model(args.preset);
            model.n_layers = args.layers.unwrap_or(model.n_layers);
            model.moe.balancer = args.balancer.clone();
            model.moe.z_loss_weight = args.z_loss;
            model.moe_every = args.moe_every;
            model.dense_first = args.dense_first;
            let train = args
                .run
                .train(args.steps.unwrap_or(200))
                .with_eval_every(args.eval_every)
                .with_checkpoint_every(args.checkpoint_every);
            let experts = model.moe.num_experts;
            let manifest = RunManifest::new(model, train, args.run.data.as_deref())?;
            (
                RunDir::create(&args.out)?.with_overwrite(args.overwrite),
                TrainStart::Fresh(Box::new(manifest)),
                experts,
            )
        }
    };
    let mut bar = Bar::new(args.json || !lead);
    if !args.json && lead {
        let ranks = match (comm.size(), args.mpi.expert_parallel) {
            (1, 0) => String::new(),
            (n, 0) => format!(", data parallel over {n} ranks"),
            (n, e) => format!(", data parallel over {n} ranks, experts spread over groups of {e}"),
        };
        eprintln!(
            "training on {} ({}){ranks}, run directory {}",
            args.backend.kind,
            describe_backend(args.backend.kind),
            dir.root().display()
        );
    }
    let experts = args.mpi.expert_parallel(experts)?;
    let summary = train(
        &dir,
        start,
        &device,
        Some(stop_flag()),
        &mut bar,
        comm,
        &experts,
    )?;
    bar.finish();
    if !lead {
        return Ok(());
    }
    if !args.json {
        println!(
            "done: {} steps, train loss {:.4} (first {:.4}), val loss {:.4}, val ppl {:.2}, AvgMaxVio {:.3}, {:.0} tokens/s",
            summary.steps,
            summary.final_train_loss,
            summary.first_train_loss,
            summary.val_loss,
            summary.val_ppl,
            summary.avg_maxvio,
            summary.tokens_per_s
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

pub(super) fn describe_backend(b: BackendKind) -> String {
    match b {
        BackendKind::Wgpu => burn_moe::device::probe_wgpu_adapter()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        _ => "CPU".into(),
    }
}
