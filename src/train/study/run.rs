//! The study's runs: one per balancer and seed, trained (or reused), then evaluated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use super::report::{StudyReport, summarize};
use crate::balance::{BalancerConfig, BalancerSummary};
use crate::dist::Solo;
use crate::error::{MoeError, Result};
use crate::train::{Progress, RunDir, RunManifest, TrainStart, evaluate, train};

/// What the study runs.
#[derive(Debug, Clone)]
pub struct StudyConfig {
    /// The run every balancer shares; its `model.moe.balancer` is replaced per run.
    pub base: RunManifest,
    /// `(name, balancer)` pairs; `name` is also the run directory under the study directory
    /// (`name-s<seed>` with several seeds).
    pub balancers: Vec<(String, BalancerConfig)>,
    /// Seeds of the runs (weights, data order, every draw); empty: the base run's seed alone.
    pub seeds: Vec<u64>,
    /// Validation batches of the final evaluation (MaxVio_global, drop rates).
    pub eval_batches: usize,
    /// Capacity factors at which to report the drop rate a capacity limit would cause.
    pub capacity_factors: Vec<f64>,
    /// Validation loss for "steps to target"; `None`: the worst final validation loss of the
    /// study, the loosest level every run reaches.
    pub target_loss: Option<f64>,
    /// Steps at which MaxVio is reported.
    pub maxvio_steps: Vec<u64>,
    /// Retrain runs that are already complete instead of reusing them.
    pub fresh: bool,
}

/// One balancer's results.
#[derive(Debug, Clone, Serialize)]
pub struct BalancerResult {
    /// Run name (the balancer's name on the command line).
    pub name: String,
    /// The balancer with its parameters.
    pub balancer: String,
    /// Seed of the run.
    pub seed: u64,
    /// Steps trained.
    pub steps: u64,
    /// Validation cross-entropy after the last step (the final evaluation's batches).
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub val_ppl: f64,
    /// Mean over training steps of the per-batch MaxVio (averaged over MoE layers).
    pub avg_maxvio: f64,
    /// Largest per-batch MaxVio over training.
    pub sup_maxvio: f64,
    /// `(step, MaxVio)` at the requested steps.
    pub maxvio_at: Vec<(u64, f64)>,
    /// MaxVio of the loads summed over the validation set, averaged over MoE layers.
    pub maxvio_global: f64,
    /// `(capacity factor, drop rate)`: assignments a capacity limit would drop on validation.
    pub drop_rate: Vec<(f64, f64)>,
    /// Share of the training assignments the run's own capacity dropped (0 when dropless).
    pub train_drop_rate: f64,
    /// Seconds of training (including the periodic evaluations and checkpoints).
    pub wall_seconds: f64,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Median seconds of one training step (forward, backward, optimizer, balancer update);
    /// robust to the odd slow step when the machine is shared.
    pub median_step_seconds: f64,
    /// First evaluation step whose validation loss is at or below the study's target.
    pub steps_to_target: Option<u64>,
    /// `steps_to_target * median_step_seconds`.
    pub seconds_to_target: Option<f64>,
    /// Per-step training loss.
    #[serde(skip)]
    pub train_loss: Vec<(u64, f64)>,
    /// Per-step MaxVio.
    #[serde(skip)]
    pub maxvio: Vec<(u64, f64)>,
    /// Validation loss at each evaluation.
    #[serde(skip)]
    pub val_curve: Vec<(u64, f64)>,
}

/// The per-step records of a run's `metrics.jsonl`; a resumed run may repeat steps, and the
/// later record wins.
struct Curves {
    train_loss: BTreeMap<u64, f64>,
    maxvio: BTreeMap<u64, f64>,
    val_loss: BTreeMap<u64, f64>,
    step_seconds: BTreeMap<u64, f64>,
    dropped: BTreeMap<u64, f64>,
}

fn read_curves(path: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MoeError::Io(format!("reading {}: {e}", path.display())))?;
    let mut curves = Curves {
        train_loss: BTreeMap::new(),
        maxvio: BTreeMap::new(),
        val_loss: BTreeMap::new(),
        step_seconds: BTreeMap::new(),
        dropped: BTreeMap::new(),
    };
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| MoeError::Io(format!("parsing {} line {}: {e}", path.display(), n + 1)))?;
        let Some(step) = v["step"].as_u64() else {
            continue;
        };
        for (key, map) in [
            ("train_loss", &mut curves.train_loss),
            ("maxvio", &mut curves.maxvio),
            ("val_loss", &mut curves.val_loss),
            ("seconds", &mut curves.step_seconds),
            ("dropped", &mut curves.dropped),
        ] {
            if let Some(x) = v[key].as_f64() {
                map.insert(step, x);
            }
        }
    }
    Ok(curves)
}

fn same_run(a: &RunManifest, b: &RunManifest) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Trains (or reuses) the run of one balancer and returns its finished run directory.
fn train_one(
    dir: &Path,
    manifest: RunManifest,
    device: &Device,
    fresh: bool,
    progress: &mut dyn Progress,
) -> Result<RunDir> {
    if !fresh && dir.join("run.json").exists() {
        let run = RunDir::open(dir)?;
        let existing = run.manifest()?;
        if !same_run(&existing, &manifest) {
            return Err(MoeError::Config(format!(
                "{} holds a different run (other model, data or settings); pass --fresh to \
                 replace it or choose another --out",
                dir.display()
            )));
        }
        if run.latest_checkpoint().is_ok() {
            let (_, state) = run.load_model(device)?;
            if state.step >= manifest.train.steps {
                progress.message(&format!(
                    "{}: complete ({} steps), reusing it",
                    dir.display(),
                    state.step
                ));
            } else {
                train(
                    &run,
                    TrainStart::Resume { steps: None },
                    device,
                    None,
                    progress,
                    &Solo,
                    &Default::default(),
                )?;
            }
            return Ok(run);
        }
        // No checkpoint yet: start over.
    }
    // The study's own directory: a changed setup was refused above unless `fresh`.
    let run = RunDir::create(dir)?.with_overwrite(true);
    train(
        &run,
        TrainStart::Fresh(Box::new(manifest)),
        device,
        None,
        progress,
        &Solo,
        &Default::default(),
    )?;
    Ok(run)
}

/// Runs the study in `out` (one run directory per balancer) on `device`.
pub fn run_study(
    out: &Path,
    config: &StudyConfig,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<StudyReport> {
    if config.balancers.is_empty() {
        return Err(MoeError::Config(
            "the study needs at least one balancer".into(),
        ));
    }
    for (i, (name, b)) in config.balancers.iter().enumerate() {
        b.validate()?;
        if config.balancers[..i].iter().any(|(n, _)| n == name) {
            return Err(MoeError::Config(format!(
                "balancer `{name}` is listed twice"
            )));
        }
    }
    if let Some(cf) = config
        .capacity_factors
        .iter()
        .find(|cf| !(cf.is_finite() && **cf > 0.0))
    {
        return Err(MoeError::Config(format!(
            "capacity factors must be finite and > 0, got {cf}"
        )));
    }
    if config.eval_batches == 0 {
        return Err(MoeError::Config("eval-batches must be at least 1".into()));
    }
    if let Some(t) = config.target_loss.filter(|t| !(t.is_finite() && *t > 0.0)) {
        return Err(MoeError::Config(format!(
            "the target loss must be a finite number > 0, got {t}"
        )));
    }
    if let Some((name, _)) = config
        .balancers
        .iter()
        .find(|(n, _)| n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.'))
    {
        return Err(MoeError::Config(format!(
            "`{name}` cannot name a run directory"
        )));
    }
    let train_cfg = &config.base.train;
    let top_k = config.base.model.moe.top_k;
    let seeds = match config.seeds.as_slice() {
        [] => vec![train_cfg.seed],
        seeds => seeds.to_vec(),
    };
    if let Some(i) = (1..seeds.len()).find(|&i| seeds[..i].contains(&seeds[i])) {
        return Err(MoeError::Config(format!(
            "seed {} is listed twice",
            seeds[i]
        )));
    }
    let runs: Vec<_> = config
        .balancers
        .iter()
        .flat_map(|b| seeds.iter().map(move |&seed| (b, seed)))
        .collect();
    let mut results = Vec::new();
    for (i, ((name, balancer), seed)) in runs.iter().enumerate() {
        let run_name = match seeds.len() {
            1 => name.clone(),
            _ => format!("{name}-s{seed}"),
        };
        progress.message(&format!(
            "[{}/{}] {run_name}: {}",
            i + 1,
            runs.len(),
            BalancerSummary(balancer)
        ));
        let mut manifest = config.base.clone();
        manifest.model.moe.balancer = (*balancer).clone();
        manifest.train.seed = *seed;
        let data = manifest.load_data()?;
        let dir: PathBuf = out.join(&run_name);
        let run = train_one(&dir, manifest, device, config.fresh, progress)?;

        let (model, state) = run.load_model(device)?;
        let eval = evaluate(
            &model.valid(),
            &data,
            train_cfg.batch_size,
            train_cfg.seq_len,
            config.eval_batches,
        )?;
        let curves = read_curves(&run.metrics_path())?;
        let maxvio: Vec<(u64, f64)> = curves.maxvio.into_iter().collect();
        let values = || maxvio.iter().map(|&(_, v)| v);
        let result = BalancerResult {
            name: name.clone(),
            balancer: BalancerSummary(balancer).to_string(),
            seed: *seed,
            steps: state.step,
            val_loss: eval.loss,
            val_ppl: eval.perplexity,
            avg_maxvio: values().sum::<f64>() / maxvio.len().max(1) as f64,
            sup_maxvio: values().fold(0.0, f64::max),
            maxvio_at: config
                .maxvio_steps
                .iter()
                .filter_map(|&s| maxvio.iter().find(|&&(t, _)| t == s).copied())
                .collect(),
            maxvio_global: eval.mean_maxvio_global(),
            drop_rate: config
                .capacity_factors
                .iter()
                .map(|&cf| (cf, eval.drop_rate_at(cf, top_k)))
                .collect(),
            train_drop_rate: curves.dropped.values().sum::<f64>()
                / curves.dropped.len().max(1) as f64,
            wall_seconds: state.train_seconds,
            tokens_per_s: state.tokens_seen as f64 / state.train_seconds.max(1e-9),
            median_step_seconds: median(curves.step_seconds.values().copied().collect()),
            steps_to_target: None,
            seconds_to_target: None,
            train_loss: curves.train_loss.into_iter().collect(),
            maxvio,
            val_curve: curves.val_loss.into_iter().collect(),
        };
        progress.message(&format!(
            "{run_name}: val loss {:.4} (ppl {:.3}), AvgMaxVio {:.3}, MaxVio_global {:.3}, {:.0} s",
            result.val_loss,
            result.val_ppl,
            result.avg_maxvio,
            result.maxvio_global,
            result.wall_seconds
        ));
        results.push(result);
    }
    let target_loss = config.target_loss.unwrap_or_else(|| {
        results
            .iter()
            .filter_map(|r| r.val_curve.last().map(|&(_, l)| l))
            .fold(f64::NEG_INFINITY, f64::max)
    });
    for r in &mut results {
        r.steps_to_target = r
            .val_curve
            .iter()
            .find(|&&(_, l)| l <= target_loss)
            .map(|&(s, _)| s);
        r.seconds_to_target = r.steps_to_target.map(|s| s as f64 * r.median_step_seconds);
    }
    let summary = config
        .balancers
        .iter()
        .map(|(name, _)| summarize(name, results.iter().filter(|r| &r.name == name)))
        .collect();
    Ok(StudyReport {
        target_loss,
        results,
        summary,
    })
}

/// Median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        0.5 * (values[mid - 1] + values[mid])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_records_win_and_val_lines_are_separate() {
        let path = std::env::temp_dir().join(format!("burn-moe-curves-{}", std::process::id()));
        std::fs::write(
            &path,
            "{\"step\":1,\"train_loss\":5.0,\"maxvio\":2.0}\n\
             {\"step\":2,\"train_loss\":4.0,\"maxvio\":1.0}\n\
             {\"step\":2,\"val_loss\":4.5,\"val_ppl\":90.0}\n\
             {\"step\":2,\"train_loss\":3.9,\"maxvio\":0.9}\n",
        )
        .unwrap();
        let c = read_curves(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(c.train_loss.get(&2), Some(&3.9));
        assert_eq!(c.maxvio.get(&1), Some(&2.0));
        assert_eq!(c.val_loss.len(), 1);
    }
}
