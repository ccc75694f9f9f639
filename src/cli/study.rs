//! `burn-moe study`: the same model trained once per balancer, compared in one table and two
//! charts.

use std::path::PathBuf;

use clap::Args;

use super::args::{BackendFlag, parse_balancer, preset_parser};

use burn_moe::checkpoint::write_bytes_atomic;
use burn_moe::model::Preset;
use burn_moe::telemetry::plots::{LineChart, Series, line_chart, moving_average};
use burn_moe::train::RunManifest;
use burn_moe::train::study::{StudyConfig, StudyReport, run_study};

use super::train::{Bar, RunArgs, describe_backend};

/// Options of `burn-moe study`.
#[derive(Debug, Args)]
pub struct StudyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Training steps of every run.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Balancers to compare, comma-separated (names as in `train --balancer`; a name's
    /// parameters stay with it: `qb-hist:bins=500,ema=0.5,aux`).
    #[arg(long, default_value = "none,aux,loss-free,bip,qb")]
    pub balancers: String,
    /// Seeds: every balancer is trained once per seed, and the table adds mean ± standard
    /// deviation over seeds (default: --seed alone).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Model size: tiny or small.
    #[arg(long, default_value = "small", value_parser = preset_parser())]
    pub preset: Preset,
    #[command(flatten)]
    pub backend: BackendFlag,
    /// Study directory: one run directory per balancer, the table and the charts.
    #[arg(long, default_value = "runs/study")]
    pub out: PathBuf,
    /// Validate every N steps (the resolution of "steps to target").
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// Validation batches of the final evaluation.
    #[arg(long, default_value_t = 64)]
    pub eval_batches: usize,
    /// Target validation loss for "steps to target" (default: the worst final validation
    /// loss of the study, which every run reaches).
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Capacity factors at which to report the drop rates a capacity would cause on validation
    /// (what-if; `--capacity-factor` sets the capacity the runs train with).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 1.25])]
    pub capacity_factors: Vec<f64>,
    /// Retrain runs already complete in the study directory (default: reuse them).
    #[arg(long)]
    pub fresh: bool,
    /// Skip the charts.
    #[arg(long)]
    pub no_plots: bool,
    /// Print only the JSON report.
    #[arg(long)]
    pub json: bool,
}

const MAXVIO_STEPS: [u64; 3] = [1, 10, 100];

pub fn run(args: &StudyArgs) -> anyhow::Result<()> {
    let device = args.backend.kind.device(false)?;
    let model = args.run.model(args.preset);
    model.validate()?;
    let train = args
        .run
        .train(args.steps)
        .with_eval_every(args.eval_every)
        .with_checkpoint_every(args.steps.div_ceil(4).max(1));
    train.validate()?;
    let balancers = split_balancers(&args.balancers)
        .into_iter()
        .map(|n| parse_balancer(&n).map(|b| (n, b)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("--balancers: {e}"))?;
    let config = StudyConfig {
        base: RunManifest::new(model, train, args.run.data.as_deref())?,
        balancers,
        seeds: args.seeds.clone(),
        eval_batches: args.eval_batches,
        capacity_factors: args.capacity_factors.clone(),
        target_loss: args.target_loss,
        maxvio_steps: MAXVIO_STEPS.to_vec(),
        fresh: args.fresh,
    };
    anyhow::ensure!(
        !args.out.join("run.json").exists(),
        "{} is a training run directory; give the study a directory of its own",
        args.out.display()
    );
    std::fs::create_dir_all(&args.out)?;
    let mut bar = Bar::new(args.json);
    if !args.json {
        eprintln!(
            "study of {} balancers x {} seeds, {} steps each, on {} ({}), in {}",
            config.balancers.len(),
            config.seeds.len().max(1),
            args.steps,
            args.backend.kind,
            describe_backend(args.backend.kind),
            args.out.display()
        );
    }
    let report = run_study(&args.out, &config, &device, &mut bar)?;
    bar.finish();

    let table = report.markdown(&MAXVIO_STEPS, &args.capacity_factors);
    let json = serde_json::to_string_pretty(&report)?;
    write_bytes_atomic(&args.out.join("study.md"), table.as_bytes())?;
    write_bytes_atomic(&args.out.join("study.json"), json.as_bytes())?;
    let charts = if args.no_plots {
        Vec::new()
    } else {
        draw(&args.out, &report)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{table}");
        println!("written: {}", args.out.join("study.md").display());
        for c in charts {
            println!("chart: {}", c.display());
        }
    }
    Ok(())
}

/// MaxVio over steps (log scale) and validation loss over steps, one line per run.
fn draw(out: &std::path::Path, report: &StudyReport) -> anyhow::Result<Vec<PathBuf>> {
    let seeded = report.summary.iter().any(|s| s.seeds > 1);
    let label = |r: &burn_moe::train::study::BalancerResult| match seeded {
        true => format!("{} s{}", r.name, r.seed),
        false => r.name.clone(),
    };
    let maxvio = LineChart {
        title: "MaxVio per training batch (25-step mean, mean over MoE layers)".into(),
        x_label: "step".into(),
        y_label: "MaxVio".into(),
        series: report
            .results
            .iter()
            .map(|r| Series {
                label: label(r),
                points: moving_average(
                    &r.maxvio
                        .iter()
                        .map(|&(s, v)| (s as f64, v))
                        .collect::<Vec<_>>(),
                    25,
                ),
            })
            .collect(),
        marker: None,
        log_y: true,
    };
    let loss = LineChart {
        title: "Validation loss".into(),
        x_label: "step".into(),
        y_label: "cross-entropy (nats)".into(),
        series: report
            .results
            .iter()
            .map(|r| Series {
                label: label(r),
                points: r.val_curve.iter().map(|&(s, l)| (s as f64, l)).collect(),
            })
            .collect(),
        marker: None,
        log_y: false,
    };
    let mut files = line_chart(&out.join("maxvio"), &maxvio)?;
    files.extend(line_chart(&out.join("val_loss"), &loss)?);
    Ok(files)
}

/// Splits a comma-separated balancer list; a `key=value` piece belongs to the name before it
/// (`qb-hist:bins=500,ema=0.5,aux` is two balancers). Empty pieces are kept so that parsing names them.
fn split_balancers(list: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for piece in list.split(',') {
        match names.last_mut() {
            Some(last) if last.contains(':') && piece.contains('=') && !piece.contains(':') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => names.push(piece.to_string()),
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::split_balancers;

    #[test]
    fn parameters_stay_with_their_balancer() {
        assert_eq!(
            split_balancers("none,bip:t=4,qb-hist:bins=500,ema=0.5,aux"),
            ["none", "bip:t=4", "qb-hist:bins=500,ema=0.5", "aux"]
        );
        assert_eq!(split_balancers("qb"), ["qb"]);
        // A parameter without a name before it stays alone, and parsing rejects it.
        assert_eq!(split_balancers("t=4,qb"), ["t=4", "qb"]);
        assert_eq!(split_balancers("aux,,qb"), ["aux", "", "qb"]);
    }
}
