//! `burn-moe analyze`: balance over time, the phase switch, and charts, for one or more traces.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use burn_moe::telemetry::analyze::{AnalyzeConfig, StepStats, analyze_layer, detect_phase_switch};
use burn_moe::telemetry::loads::{LoadKind, RunLoads};
use burn_moe::telemetry::plots::{LineChart, Series, line_chart, load_heatmap, moving_average};

/// Options of `burn-moe analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Trace files (`trace.jsonl` of a run directory); several are compared in one MaxVio chart.
    #[arg(required = true)]
    pub traces: Vec<PathBuf>,
    /// A label per trace (default: the run directory's name).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Sliding windows for the variance and range of each expert's load proportion.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100])]
    pub windows: Vec<usize>,
    /// Steps without a token after which an expert counts as dead.
    #[arg(long, default_value_t = 100)]
    pub dead_window: usize,
    /// Phase rule: threshold as a multiple of the stable level.
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// Analyse the counts after capacity instead of the requested ones.
    #[arg(long)]
    pub computed: bool,
    /// Directory for the charts (default: `analysis/` beside the first trace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip the charts.
    #[arg(long)]
    pub no_plots: bool,
    /// Print one JSON summary instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Summary of one layer of one run.
#[derive(Debug, Serialize)]
struct LayerSummary {
    layer: usize,
    experts: usize,
    steps: usize,
    avg_maxvio: f64,
    sup_maxvio: f64,
    last_100_maxvio: f64,
    mean_cv: f64,
    mean_min_max: f64,
    dead_at_end: usize,
    /// Per window: mean over steps of the window variance, in the transient and stable state.
    window_variance_transient: Vec<Option<f64>>,
    window_variance_stable: Vec<Option<f64>>,
    window_range_transient: Vec<Option<f64>>,
    window_range_stable: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct RunSummary {
    path: PathBuf,
    label: String,
    records: usize,
    skipped_lines: Vec<usize>,
    phase_switch_step: Option<u64>,
    stable_level: f64,
    threshold: f64,
    layers: Vec<LayerSummary>,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

fn state_mean(
    stats: &[StepStats],
    switch: Option<u64>,
    stable: bool,
    pick: impl Fn(&StepStats) -> Option<f32>,
) -> Option<f64> {
    let xs: Vec<f64> = stats
        .iter()
        .filter(|s| switch.is_none_or(|w| (s.step >= w) == stable))
        .filter_map(|s| pick(s).map(f64::from))
        .collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn label_of(path: &Path, i: usize, labels: &[String]) -> String {
    labels.get(i).cloned().unwrap_or_else(|| {
        path.parent()
            .and_then(|p| p.file_name())
            .map_or_else(|| format!("run{i}"), |n| n.to_string_lossy().into_owned())
    })
}

pub fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.windows.iter().all(|&w| w >= 1) && args.dead_window >= 1,
        "windows and --dead-window must be at least 1"
    );
    anyhow::ensure!(
        args.factor.is_finite() && args.factor > 0.0,
        "--factor must be a finite number > 0, got {}",
        args.factor
    );
    anyhow::ensure!(
        args.labels.is_empty() || args.labels.len() == args.traces.len(),
        "--labels gives {} labels for {} traces",
        args.labels.len(),
        args.traces.len()
    );
    let config = AnalyzeConfig {
        windows: args.windows.clone(),
        dead_window: args.dead_window,
        factor: args.factor,
        ..AnalyzeConfig::default()
    };
    let kind = if args.computed {
        LoadKind::Computed
    } else {
        LoadKind::Requested
    };
    let out_dir = args.out.clone().unwrap_or_else(|| {
        args.traces[0]
            .parent()
            .unwrap_or(Path::new("."))
            .join("analysis")
    });
    let mut summaries = Vec::new();
    let mut maxvio_series = Vec::new();
    let mut plots = Vec::new();
    for (i, path) in args.traces.iter().enumerate() {
        let label = label_of(path, i, &args.labels);
        let run =
            RunLoads::read(path, kind).with_context(|| format!("reading {}", path.display()))?;
        if !run.skipped.is_empty() && !args.json {
            eprintln!(
                "{}: skipped a truncated last record (line {:?})",
                path.display(),
                run.skipped
            );
        }
        let phase = detect_phase_switch(&run.layers, &config);
        let per_layer: Vec<Vec<StepStats>> = run
            .layers
            .iter()
            .map(|l| analyze_layer(l, &config))
            .collect();
        let mut layers = Vec::new();
        for (l, stats) in per_layer.iter().enumerate() {
            let nw = config.windows.len();
            let by_state = |stable: bool, variance: bool| -> Vec<Option<f64>> {
                (0..nw)
                    .map(|w| {
                        state_mean(stats, phase.step, stable, |s| {
                            if variance {
                                s.window_variance[w]
                            } else {
                                s.window_range[w]
                            }
                        })
                    })
                    .collect()
            };
            let tail = stats.len().saturating_sub(100);
            layers.push(LayerSummary {
                layer: l,
                experts: run.layers[l].experts,
                steps: stats.len(),
                avg_maxvio: mean(stats.iter().map(|s| s.max_vio as f64)),
                sup_maxvio: stats.iter().map(|s| s.max_vio as f64).fold(0.0, f64::max),
                last_100_maxvio: mean(stats[tail..].iter().map(|s| s.max_vio as f64)),
                mean_cv: mean(stats.iter().map(|s| s.cv as f64)),
                mean_min_max: mean(stats.iter().map(|s| s.min_max as f64)),
                dead_at_end: stats.last().map_or(0, |s| s.dead),
                window_variance_transient: by_state(false, true),
                window_variance_stable: by_state(true, true),
                window_range_transient: by_state(false, false),
                window_range_stable: by_state(true, false),
            });
        }
        // MaxVio averaged over layers, smoothed over 10 steps for the chart.
        let rows = per_layer.iter().map(Vec::len).min().unwrap_or(0);
        let raw: Vec<(f64, f64)> = (0..rows)
            .map(|t| {
                let v = mean(per_layer.iter().map(|s| s[t].max_vio as f64));
                (per_layer[0][t].step as f64, v)
            })
            .collect();
        maxvio_series.push(Series {
            label: label.clone(),
            points: moving_average(&raw, 10),
        });
        if !args.no_plots {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            for (l, layer) in run.layers.iter().enumerate() {
                let stem = out_dir.join(format!("{label}_heatmap_layer{l}"));
                plots.extend(load_heatmap(
                    &stem,
                    layer,
                    &format!("{label}: layer {l} expert load (1 = balanced)"),
                )?);
            }
            let series = config
                .windows
                .iter()
                .enumerate()
                .map(|(w, window)| Series {
                    label: format!("variance, w = {window}"),
                    points: (0..rows)
                        .filter_map(|t| {
                            let xs: Vec<f64> = per_layer
                                .iter()
                                .filter_map(|s| s[t].window_variance[w].map(f64::from))
                                .collect();
                            (xs.len() == per_layer.len())
                                .then(|| (per_layer[0][t].step as f64, mean(xs.into_iter())))
                        })
                        .collect(),
                })
                .collect();
            plots.extend(line_chart(
                &out_dir.join(format!("{label}_window_variance")),
                &LineChart {
                    title: format!("{label}: sliding variance of expert load proportions"),
                    x_label: "step".into(),
                    y_label: "mean variance over experts and layers".into(),
                    series,
                    marker: phase
                        .step
                        .map(|s| (s as f64, format!("stable from step {s}"))),
                    log_y: true,
                },
            )?);
        }
        summaries.push(RunSummary {
            path: path.clone(),
            label,
            records: run.records,
            skipped_lines: run.skipped.clone(),
            phase_switch_step: phase.step,
            stable_level: phase.stable_level,
            threshold: phase.threshold,
            layers,
        });
    }
    if !args.no_plots {
        plots.extend(line_chart(
            &out_dir.join("maxvio"),
            &LineChart {
                title: "MaxVio per step (mean over layers, 10-step average)".into(),
                x_label: "step".into(),
                y_label: "MaxVio".into(),
                series: maxvio_series,
                marker: None,
                log_y: false,
            },
        )?);
    }
    if args.json {
        let out = serde_json::json!({ "runs": summaries, "plots": plots });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    for s in &summaries {
        println!(
            "{} ({}): {} records, stable from step {}",
            s.label,
            s.path.display(),
            s.records,
            s.phase_switch_step
                .map_or("(too few steps)".into(), |v| v.to_string())
        );
        println!(
            "{:>5} {:>7} {:>6} {:>9} {:>9} {:>9} {:>7} {:>8} {:>5}  window variance transient -> stable",
            "layer",
            "experts",
            "steps",
            "avgMaxVio",
            "supMaxVio",
            "last100",
            "CV",
            "min/max",
            "dead",
        );
        for l in &s.layers {
            let wv: Vec<String> = config
                .windows
                .iter()
                .enumerate()
                .map(|(w, win)| {
                    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2e}"));
                    format!(
                        "w{win}: {} -> {}",
                        f(l.window_variance_transient[w]),
                        f(l.window_variance_stable[w])
                    )
                })
                .collect();
            println!(
                "{:>5} {:>7} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>7.3} {:>8.3} {:>5}  {}",
                l.layer,
                l.experts,
                l.steps,
                l.avg_maxvio,
                l.sup_maxvio,
                l.last_100_maxvio,
                l.mean_cv,
                l.mean_min_max,
                l.dead_at_end,
                wv.join(", ")
            );
        }
    }
    for p in &plots {
        println!("wrote {}", p.display());
    }
    Ok(())
}
