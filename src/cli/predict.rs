//! `burn-moe predict`: load prediction along a trace, evaluated against what the trace did next.
//! The predictors are shared with `burn-moe place`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use burn_moe::BackendKind;
use burn_moe::predict::arima::ArimaOrder;
use burn_moe::predict::lstm::{self, LstmTraining};
use burn_moe::predict::{
    ArimaPredictor, EvalConfig, LoadPredictor, PredictionReport, SlidingWindowAverage, evaluate,
};
use burn_moe::telemetry::analyze::{AnalyzeConfig, detect_phase_switch};
use burn_moe::telemetry::loads::{LoadKind, RunLoads};
use burn_moe::telemetry::plots::{LineChart, Series, line_chart};

/// Prediction methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Mean of the last W steps, held flat.
    SwAvg,
    /// ARIMA(p,d,q) per expert, fitted on the last W steps.
    Arima,
    /// An LSTM trained on another run's trace (`--train-trace`).
    Lstm,
}

/// Options of `burn-moe predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Trace to predict along.
    pub trace: PathBuf,
    /// Predictor.
    #[arg(long, value_enum, default_value = "sw-avg")]
    pub method: Method,
    /// Steps to predict; several give one report each.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize])]
    pub horizon: Vec<usize>,
    /// History the predictor sees: SW-Avg's window (default 100), ARIMA's fitting window
    /// (default 500), the LSTM's input steps (default 64).
    #[arg(long)]
    pub window: Option<usize>,
    /// ARIMA orders p,d,q.
    #[arg(long, value_delimiter = ',', default_values_t = [5usize, 1, 5])]
    pub order: Vec<usize>,
    /// Fit ARIMA with a constant also when d >= 1 (a drift); by default only when d = 0.
    #[arg(long)]
    pub constant: bool,
    /// Steps between prediction points.
    #[arg(long, default_value_t = 10)]
    pub stride: usize,
    /// The LSTM's training trace (another run).
    #[arg(long)]
    pub train_trace: Option<PathBuf>,
    /// LSTM optimizer steps.
    #[arg(long, default_value_t = 300)]
    pub lstm_iterations: usize,
    /// First stable step (default: the phase rule of `burn-moe analyze`).
    #[arg(long)]
    pub switch: Option<u64>,
    /// Directory for the predicted-vs-actual chart (default: `analysis/` beside the trace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip the chart.
    #[arg(long)]
    pub no_plots: bool,
    /// Print one JSON summary instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn read(path: &Path) -> anyhow::Result<RunLoads> {
    let run = RunLoads::read(path, LoadKind::Requested)
        .with_context(|| format!("reading {}", path.display()))?;
    if !run.skipped.is_empty() {
        eprintln!("{}: skipped a truncated last record", path.display());
    }
    Ok(run)
}

fn arima_order(order: &[usize]) -> anyhow::Result<ArimaOrder> {
    let [p, d, q] = order[..] else {
        anyhow::bail!("--order takes three numbers p,d,q, got {order:?}");
    };
    anyhow::ensure!(
        p <= 50 && d <= 3 && q <= 50,
        "--order {p},{d},{q} is out of range: p and q at most 50, d at most 3"
    );
    Ok(ArimaOrder { p, d, q })
}

/// Rows of history the first prediction point of `method` needs.
pub(super) fn min_history(method: Method, window: Option<usize>, order: &[usize]) -> usize {
    match method {
        Method::SwAvg => 1,
        Method::Arima => arima_order(order).map_or(50, |o| o.min_series()),
        Method::Lstm => window.unwrap_or(64),
    }
}

fn switch_step(run: &RunLoads, given: Option<u64>) -> Option<u64> {
    given.or_else(|| detect_phase_switch(&run.layers, &AnalyzeConfig::default()).step)
}

pub(super) fn predictor(
    args: &PredictArgs,
    horizon: usize,
    experts: usize,
) -> anyhow::Result<Box<dyn LoadPredictor>> {
    Ok(match args.method {
        Method::SwAvg => Box::new(SlidingWindowAverage {
            window: args.window.unwrap_or(100),
        }),
        Method::Arima => {
            let order = arima_order(&args.order)?;
            let window = args.window.unwrap_or(500);
            anyhow::ensure!(
                window >= order.min_series(),
                "ARIMA({},{},{}) needs a fitting window of at least {} steps, got --window {window}",
                order.p,
                order.d,
                order.q,
                order.min_series()
            );
            Box::new(ArimaPredictor::new(
                order,
                window,
                args.constant || order.d == 0,
            ))
        }
        Method::Lstm => {
            let path = args
                .train_trace
                .as_ref()
                .context("--method lstm needs --train-trace (another run's trace)")?;
            let train_run = read(path)?;
            anyhow::ensure!(
                train_run.layers.iter().all(|l| l.experts == experts),
                "{} has a different expert count than the evaluated trace ({experts})",
                path.display()
            );
            let settings = LstmTraining {
                window: args.window.unwrap_or(64),
                iterations: args.lstm_iterations,
                ..LstmTraining::default()
            };
            let device = BackendKind::Flex.device(false)?;
            let quiet = args.json;
            let model = lstm::train(&train_run, horizon, &settings, &device, |it, loss| {
                if !quiet {
                    eprintln!("lstm H={horizon}: iteration {it}, loss {loss:.5}");
                }
            })?;
            Box::new(model)
        }
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.3}%", 100.0 * x))
}

pub fn run_predict(args: &PredictArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.horizon.iter().all(|&h| h >= 1) && args.stride >= 1,
        "--horizon and --stride must be at least 1"
    );
    anyhow::ensure!(args.window != Some(0), "--window must be at least 1");
    let run = read(&args.trace)?;
    let experts = run.layers[0].experts;
    let switch = switch_step(&run, args.switch);
    let mut reports: Vec<PredictionReport> = Vec::new();
    let mut plots = Vec::new();
    for &h in &args.horizon {
        let p = predictor(args, h, experts)?;
        let min_history = min_history(args.method, args.window, &args.order);
        let cfg = EvalConfig {
            horizon: h,
            stride: args.stride,
            min_history,
        };
        let report = evaluate(p.as_ref(), &run, switch, &cfg);
        anyhow::ensure!(
            report.points != [0, 0],
            "{}: {} steps are too few to predict {h} steps after a history of {min_history} \
             (use a shorter --horizon or --window, or a longer trace)",
            args.trace.display(),
            run.layers.iter().map(|l| l.len()).max().unwrap_or(0)
        );
        if let Some((fell_back, total)) = report.fallbacks {
            anyhow::ensure!(
                fell_back < total,
                "{}: no forecast could be fitted (all {total} fell back to the window mean)",
                report.method
            );
            if fell_back > 0 && !args.json {
                eprintln!(
                    "note: {fell_back} of {total} {} forecasts could not be fitted and used the \
                     window mean",
                    report.method
                );
            }
        }
        if !args.no_plots && h == args.horizon[0] {
            let out = args.out.clone().unwrap_or_else(|| {
                args.trace
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("analysis")
            });
            std::fs::create_dir_all(&out)?;
            plots.extend(prediction_chart(&out, &run, p.as_ref(), h)?);
        }
        reports.push(report);
    }
    if args.json {
        let out = serde_json::json!({
            "trace": args.trace, "phase_switch_step": switch, "reports": reports, "plots": plots
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} layers x {experts} experts, stable from step {}",
        args.trace.display(),
        run.layers.len(),
        switch.map_or("?".into(), |s| s.to_string())
    );
    println!(
        "{:<28} {:>7} {:>12} {:>12} {:>16}",
        "method", "horizon", "transient", "stable", "points (tr/st)"
    );
    for r in &reports {
        println!(
            "{:<28} {:>7} {:>12} {:>12} {:>16}",
            r.method,
            r.horizon,
            pct(r.transient),
            pct(r.stable),
            format!("{}/{}", r.points[0], r.points[1])
        );
    }
    for p in &plots {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// Layer 0's three busiest experts: actual proportion, and the prediction from points spread
/// along the trace.
fn prediction_chart(
    out: &Path,
    run: &RunLoads,
    p: &dyn LoadPredictor,
    horizon: usize,
) -> anyhow::Result<Vec<PathBuf>> {
    let layer = &run.layers[0];
    let (n, m) = (layer.len(), layer.experts);
    let mut totals: Vec<(usize, f64)> = (0..m)
        .map(|j| (j, (0..n).map(|t| layer.row(t)[j] as f64).sum()))
        .collect();
    totals.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut series = Vec::new();
    for &(j, _) in totals.iter().take(3) {
        series.push(Series {
            label: format!("expert {j}, actual"),
            points: (0..n)
                .map(|t| (layer.steps[t] as f64, layer.row(t)[j] as f64))
                .collect(),
        });
        let mut predicted = Vec::new();
        let points = 6;
        for k in 1..=points {
            let origin = k * n.saturating_sub(horizon) / (points + 1);
            if origin == 0 || origin + horizon > n {
                continue;
            }
            let pred = p.predict(layer, origin, horizon);
            predicted.extend(
                (0..horizon).map(|h| (layer.steps[origin + h] as f64, pred[h * m + j] as f64)),
            );
            predicted.push((f64::NAN, f64::NAN)); // break the line between segments
        }
        series.push(Series {
            label: format!("expert {j}, {}", p.name()),
            points: predicted,
        });
    }
    let name = p.name().replace(['(', ')', ';', ' ', ',', '='], "_");
    Ok(line_chart(
        &out.join(format!("predicted_vs_actual_{name}")),
        &LineChart {
            title: format!(
                "layer 0: load proportion, actual vs {} (H = {horizon})",
                p.name()
            ),
            x_label: "step".into(),
            y_label: "load proportion".into(),
            series,
            marker: None,
            log_y: false,
        },
    )?)
}
