//! The training loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use serde::Serialize;

use crate::balance::metrics::max_vio;
use crate::dist::{
    Collective, ExpertParallel, Solo, average_model_gradients, check_data_parallel, check_same_run,
    rank_seed, shard, sync_routing, with_collective,
};
use crate::error::{MoeError, Result};
use crate::model::MoeLm;
use crate::telemetry::trace::{TraceRecord, TraceWriter, truncate_after};
use crate::train::expert_run::ExpertRun;
use crate::train::{CheckpointState, EvalReport, RunDir, RunManifest, evaluate, learning_rate};

/// The final summary of a run (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Steps completed (in total, across resumes).
    pub steps: u64,
    /// Mean training cross-entropy of the last 10 steps.
    pub final_train_loss: f64,
    /// Cross-entropy of the first step of this invocation.
    pub first_train_loss: f64,
    /// Validation cross-entropy at the end.
    pub val_loss: f64,
    /// Validation perplexity.
    pub val_ppl: f64,
    /// Mean over steps (and MoE layers) of the per-batch MaxVio, this invocation.
    pub avg_maxvio: f64,
    /// Training tokens per second, this invocation.
    pub tokens_per_s: f64,
    /// The run directory.
    pub out_dir: String,
    /// True when stopped early by Ctrl-C (a checkpoint was written).
    pub interrupted: bool,
}

/// How a run reports progress.
pub trait Progress {
    /// After each step.
    fn step(&mut self, step: u64, total: u64, loss: f64, tokens_per_s: f64, maxvio: f64);
    /// A message (evaluation results, checkpoints).
    fn message(&mut self, text: &str);
}

impl Progress for () {
    fn step(&mut self, _: u64, _: u64, _: f64, _: f64, _: f64) {}
    fn message(&mut self, _: &str) {}
}

/// Mixes the run seed and a step into the seed of that step's random draws.
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^ (z >> 29)
}

/// How a training invocation starts.
#[derive(Debug, Clone)]
pub enum TrainStart {
    /// A new run: writes `run.json` from the manifest into an empty directory, or into one
    /// whose run it replaces when the [`RunDir`] allows overwriting.
    Fresh(Box<RunManifest>),
    /// Continue the run in the directory from its latest checkpoint, optionally to a new total
    /// step count.
    Resume {
        /// New total steps (`None`: the run's own).
        steps: Option<u64>,
    },
}

/// Trains the run in `dir` on `device` (made autodiff here). `stop`, when set (Ctrl-C), ends
/// the run after the current step with a checkpoint.
///
/// `comm` is the run's ranks ([`Solo`](crate::dist::Solo) for one process): each rank trains
/// on its shard of every global batch of `batch_size` sequences, gradients are averaged over
/// the ranks and the balancers see the whole batch's routing, so the ranks keep one model;
/// rank 0 alone writes the run directory and reports progress. `experts` spreads the MoE
/// layers' experts over the ranks (expert parallel; checkpoints still hold the whole model,
/// so a run resumes on any rank count).
pub fn train(
    dir: &RunDir,
    start: TrainStart,
    device: &Device,
    stop: Option<Arc<AtomicBool>>,
    progress: &mut dyn Progress,
    comm: &dyn Collective,
    experts: &ExpertParallel,
) -> Result<TrainSummary> {
    let device = device.clone().autodiff();
    let lead = comm.rank() == 0;
    let lock = lead.then(|| dir.lock()).transpose()?;
    let (manifest, resume_to) = match start {
        TrainStart::Fresh(m) => {
            let mut m = *m;
            m.validate()?;
            m.resolve_data()?;
            (m, None)
        }
        TrainStart::Resume { steps } => (dir.manifest()?, Some(steps)),
    };
    let mut config = manifest.train.clone();
    let data = manifest.load_data()?;
    manifest.check_training_fits()?;
    check_data_parallel(
        &manifest.model,
        config.batch_size,
        config.seq_len,
        comm.size(),
    )?;

    device.seed(config.seed);
    let mut model = manifest.model.init(&device)?;
    let mut optim = config.optimizer();
    let mut state = CheckpointState {
        step: 0,
        tokens_seen: 0,
        train_seconds: 0.0,
    };
    let mut manifest = manifest;
    if let Some(steps) = resume_to {
        (model, state) = dir.load_checkpoint(model)?;
        optim = dir.load_optimizer(optim)?;
        let total = steps.unwrap_or(config.steps);
        if total <= state.step {
            return Err(MoeError::Input(format!(
                "the run in {} is already at step {}{}; pass --steps N with N > {} to train further",
                dir.root().display(),
                state.step,
                match steps {
                    Some(s) => format!(", so --steps {s} has nothing to train"),
                    None => " (finished)".into(),
                },
                state.step
            )));
        }
        config.steps = total;
        manifest.train.steps = total;
        if lead {
            truncate_after(&dir.trace_path(), state.step)?;
            truncate_after(&dir.metrics_path(), state.step)?;
        }
        progress.message(&format!("resumed from step {}", state.step));
    } else if let Some(lock) = &lock {
        dir.prepare_fresh(lock)?;
    }
    check_same_run(comm, &manifest, state.step)?;
    // Expert parallel: the ranks that share one set of experts (`group`) and those that hold
    // the same experts in the other groups (`peers`).
    let ep_comms = ExpertRun::split(experts, comm)?;
    let (group, peers): (&dyn Collective, &dyn Collective) = match &ep_comms {
        Some((g, p)) => (g.as_ref(), p.as_ref()),
        None => (comm, &Solo),
    };
    let mut expert_run = ExpertRun::new(experts, &model, group)?;
    if let Some(ep) = &expert_run {
        (model, optim) = ep.shard(model, optim, config.optimizer(), group.rank())?;
    }
    // Rank 0 writes the run: the manifest (fresh, or resumed with a new step count), the trace
    // and the metrics.
    let (mut trace, mut metrics) = if lead {
        dir.write_manifest(&manifest)?;
        (
            Some(TraceWriter::append(&dir.trace_path())?),
            Some(TraceWriter::append(&dir.metrics_path())?),
        )
    } else {
        (None, None)
    };
    let rows = shard(config.batch_size, comm);

    let started = Instant::now();
    let seconds_before = state.train_seconds;
    let tokens_per_step = (config.batch_size * config.seq_len) as u64;
    let (mut first_loss, mut recent, mut maxvio_sum, mut steps_run) = (None, Vec::new(), 0.0, 0u64);
    let mut interrupted = false;
    let mut last_eval = None;
    let mut traffic = comm.traffic();
    // The exchanges of expert-parallel layers go to the group.
    let eval = with_collective(group, || -> Result<EvalReport> {
        while state.step < config.steps {
            let step = state.step + 1;
            let step_started = Instant::now();
            // Each rank draws its own noise; rank 0 draws what one process would.
            device.seed(rank_seed(step_seed(config.seed, step), comm));
            let batch = data.train_batch(
                step,
                config.batch_size,
                config.seq_len,
                config.seed,
                rows.clone(),
                &device,
            );
            let mut out = model.forward(batch.inputs)?;
            let balance = out.balance_loss();
            let ce = MoeLm::cross_entropy(out.logits, batch.targets);
            let loss = match balance {
                Some(b) => ce.clone() + b,
                None => ce.clone(),
            };
            // The global batch's loss: the mean of the ranks' (equal) shards' losses.
            let mut ce_sum = [ce.into_scalar::<f32>()];
            comm.sum_f32(&mut ce_sum)?;
            let ce_value = ce_sum[0] as f64 / comm.size() as f64;
            if !ce_value.is_finite() {
                return Err(MoeError::Input(format!(
                    "training diverged: loss is {ce_value} at step {step}"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let layers: Vec<_> = model.moe_layers().collect();
            let grads = average_model_gradients(comm, group, peers, &model, &layers, grads)?;
            let counts = sync_routing(comm, &layers, &mut out.moe)?;
            let lr = learning_rate(
                step,
                config.steps,
                config.warmup_steps,
                config.lr,
                config.min_lr_fraction,
            );
            model = optim.step(lr, model, grads);
            model = model.update_balancers(&out.moe)?;

            // The global batch's per-expert counts (the step's one read of each layer's routing,
            // `2 m + 1` values, summed over the ranks): the trace and the progress line.
            let records: Vec<TraceRecord> = counts
                .into_iter()
                .enumerate()
                .map(|(layer, c)| TraceRecord {
                    step,
                    layer,
                    requested: c.requested,
                    computed: c.computed,
                })
                .collect();
            if let Some(trace) = &mut trace {
                trace.write_step(&records)?;
            }
            let maxvio = records.iter().map(|r| max_vio(&r.requested)).sum::<f64>()
                / records.len().max(1) as f64;
            // Share of the step's assignments its capacity dropped, over all MoE layers.
            let (requested, computed) = records.iter().fold((0, 0), |(a, b), r| {
                (
                    a + r.requested.iter().sum::<usize>(),
                    b + r.computed.iter().sum::<usize>(),
                )
            });
            let dropped = (requested - computed.min(requested)) as f64 / requested.max(1) as f64;

            state.step = step;
            state.tokens_seen += tokens_per_step;
            steps_run += 1;
            maxvio_sum += maxvio;
            first_loss.get_or_insert(ce_value);
            recent.push(ce_value);
            if recent.len() > 10 {
                recent.remove(0);
            }
            let step_seconds = step_started.elapsed().as_secs_f64();
            let elapsed = started.elapsed().as_secs_f64();
            let tps = (steps_run * tokens_per_step) as f64 / elapsed.max(1e-9);
            progress.step(step, config.steps, ce_value, tps, maxvio);
            let mut line = serde_json::json!({"step": step, "train_loss": ce_value, "lr": lr,
                "maxvio": maxvio, "dropped": dropped, "seconds": step_seconds});
            if let Some(ep) = &mut expert_run {
                line["straggler"] = ep.observe(&records).into();
            }
            if comm.size() > 1 {
                let sent = comm.traffic();
                line["all_reduce_bytes"] = (sent.all_reduce - traffic.all_reduce).into();
                line["all_gather_bytes"] = (sent.all_gather - traffic.all_gather).into();
                line["all_to_all_bytes"] = (sent.all_to_all - traffic.all_to_all).into();
                traffic = sent;
            }
            if let Some(metrics) = &mut metrics {
                metrics.write_lines(&[line])?;
            }

            // Stop when any rank was asked to: every rank takes the same decision.
            let mut stops = [u64::from(
                stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)),
            )];
            comm.sum_u64(&mut stops)?;
            interrupted = stops[0] > 0;
            let last = step == config.steps || interrupted;
            if step.is_multiple_of(config.eval_every) || last {
                let report = evaluate(
                    &model.valid(),
                    &data,
                    config.batch_size,
                    config.seq_len,
                    config.eval_batches,
                )?;
                progress.message(&format!(
                    "step {step}: val loss {:.4}, ppl {:.2}, MaxVio_global {:.3}",
                    report.loss,
                    report.perplexity,
                    report.mean_maxvio_global()
                ));
                if let Some(metrics) = &mut metrics {
                    metrics.write_lines(&[serde_json::json!({"step": step,
                        "val_loss": report.loss, "val_ppl": report.perplexity})])?;
                }
                last_eval = Some(report);
            }
            if step.is_multiple_of(config.checkpoint_every) || last {
                // Expert parallel: every rank sends its experts and their state; rank 0 writes the
                // whole model.
                let full = match &expert_run {
                    Some(ep) => Some(ep.gather(&model, &optim, config.optimizer(), group)?),
                    None => None,
                };
                if lead {
                    let (m, o) = full.as_ref().map_or((&model, &optim), |(m, o)| (m, o));
                    state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
                    dir.save_checkpoint(m, o, state)?;
                    progress.message(&format!(
                        "step {step}: checkpoint saved in {}",
                        dir.root().display()
                    ));
                }
            }
            if let Some(ep) = &mut expert_run
                && !last
                && let Some(message) =
                    ep.maybe_replace(step, &mut model, &mut optim, || config.optimizer(), group)?
            {
                progress.message(&message);
            }
            if interrupted {
                break;
            }
        }
        Ok(match last_eval.take() {
            Some(e) => e,
            None => evaluate(
                &model.valid(),
                &data,
                config.batch_size,
                config.seq_len,
                config.eval_batches,
            )?,
        })
    })?;
    drop(lock);
    Ok(TrainSummary {
        steps: state.step,
        final_train_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        first_train_loss: first_loss.unwrap_or(f64::NAN),
        val_loss: eval.loss,
        val_ppl: eval.perplexity,
        avg_maxvio: maxvio_sum / steps_run.max(1) as f64,
        tokens_per_s: (steps_run * tokens_per_step) as f64
            / started.elapsed().as_secs_f64().max(1e-9),
        out_dir: dir.root().display().to_string(),
        interrupted,
    })
}
