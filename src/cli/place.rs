//! `burn-moe place`: expert placement from predicted loads, scored on what the trace did next
//! against round-robin and an oracle placement.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use burn_moe::predict::placement::{Placement, place};

use super::predict::{Method, PredictArgs, min_history, predictor, read};

/// Options of `burn-moe place`.
#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// Trace to place along.
    pub trace: PathBuf,
    /// Devices.
    #[arg(long)]
    pub devices: usize,
    /// Extra copies of the hottest experts.
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// Predictor of the loads the placement is made for.
    #[arg(long, value_enum, default_value = "sw-avg")]
    pub method: Method,
    /// Predictor window (as in `predict`).
    #[arg(long)]
    pub window: Option<usize>,
    /// ARIMA orders p,d,q.
    #[arg(long, value_delimiter = ',', default_values_t = [5usize, 1, 5])]
    pub order: Vec<usize>,
    /// Steps a placement stays in use.
    #[arg(long, default_value_t = 100)]
    pub horizon: usize,
    /// Steps between re-placements.
    #[arg(long, default_value_t = 50)]
    pub stride: usize,
    /// The LSTM's training trace.
    #[arg(long)]
    pub train_trace: Option<PathBuf>,
    /// Print one JSON summary instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct PlacementRow {
    layer: usize,
    points: usize,
    /// Mean over steps of max device load / mean device load.
    predicted: f64,
    round_robin: f64,
    oracle: f64,
}

pub fn run_place(args: &PlaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices >= 1, "--devices must be at least 1");
    anyhow::ensure!(args.window != Some(0), "--window must be at least 1");
    anyhow::ensure!(
        args.horizon >= 1 && args.stride >= 1,
        "--horizon and --stride must be >= 1"
    );
    let run = read(&args.trace)?;
    let experts = run.layers[0].experts;
    if let Some(l) = run
        .layers
        .iter()
        .find(|l| l.experts + args.replicas < args.devices)
    {
        anyhow::bail!(
            "--devices {} is more than the {} experts (+ {} replicas) of a layer: every device \
             must hold at least one expert",
            args.devices,
            l.experts,
            args.replicas
        );
    }
    let predict_args = PredictArgs {
        trace: args.trace.clone(),
        method: args.method,
        horizon: vec![args.horizon],
        window: args.window,
        order: args.order.clone(),
        constant: false,
        stride: args.stride,
        train_trace: args.train_trace.clone(),
        lstm_iterations: 300,
        switch: None,
        out: None,
        no_plots: true,
        json: args.json,
    };
    let p = predictor(&predict_args, args.horizon, experts)?;
    let min_history =
        min_history(args.method, args.window, &args.order).max(args.window.unwrap_or(100).min(100));
    let mut rows = Vec::new();
    for (l, layer) in run.layers.iter().enumerate() {
        let m = layer.experts;
        let rr = Placement::round_robin(m, args.devices);
        let mut row = PlacementRow {
            layer: l,
            ..PlacementRow::default()
        };
        let mut origin = min_history;
        while origin + args.horizon <= layer.len() {
            let pred = p.predict(layer, origin, args.horizon);
            let mean_over = |v: &[f32], rows: usize, j: usize| {
                (0..rows).map(|h| v[h * m + j] as f64).sum::<f64>() / rows as f64
            };
            let predicted: Vec<f64> = (0..m).map(|j| mean_over(&pred, args.horizon, j)).collect();
            let future: Vec<f32> = (origin..origin + args.horizon)
                .flat_map(|t| layer.row(t).iter().copied())
                .collect();
            let actual_mean: Vec<f64> = (0..m)
                .map(|j| mean_over(&future, args.horizon, j))
                .collect();
            let from_prediction = place(&predicted, args.devices, args.replicas)?;
            let oracle = place(&actual_mean, args.devices, args.replicas)?;
            let score = |pl: &Placement| {
                (0..args.horizon)
                    .map(|h| {
                        let loads: Vec<f64> = future[h * m..(h + 1) * m]
                            .iter()
                            .map(|&v| v as f64)
                            .collect();
                        pl.imbalance(&loads)
                    })
                    .sum::<f64>()
                    / args.horizon as f64
            };
            row.predicted += score(&from_prediction);
            row.round_robin += score(&rr);
            row.oracle += score(&oracle);
            row.points += 1;
            origin += args.stride;
        }
        anyhow::ensure!(
            row.points > 0,
            "layer {l}: the trace has too few steps for horizon {}",
            args.horizon
        );
        let n = row.points as f64;
        row.predicted /= n;
        row.round_robin /= n;
        row.oracle /= n;
        rows.push(row);
    }
    let mean = |f: fn(&PlacementRow) -> f64| rows.iter().map(f).sum::<f64>() / rows.len() as f64;
    let overall = [
        mean(|r| r.predicted),
        mean(|r| r.round_robin),
        mean(|r| r.oracle),
    ];
    if args.json {
        let out = serde_json::json!({
            "trace": args.trace, "devices": args.devices, "replicas": args.replicas,
            "method": p.name(), "horizon": args.horizon, "layers": rows,
            "mean": {"predicted": overall[0], "round_robin": overall[1], "oracle": overall[2]},
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "max/mean device load over the next {} steps, {} devices, {} replicas, placement every {} steps",
        args.horizon, args.devices, args.replicas, args.stride
    );
    println!(
        "{:>5} {:>7} {:>22} {:>12} {:>8}",
        "layer",
        "points",
        format!("from {}", p.name()),
        "round-robin",
        "oracle"
    );
    for r in &rows {
        println!(
            "{:>5} {:>7} {:>22.3} {:>12.3} {:>8.3}",
            r.layer, r.points, r.predicted, r.round_robin, r.oracle
        );
    }
    println!(
        "{:>5} {:>7} {:>22.3} {:>12.3} {:>8.3}",
        "mean", "", overall[0], overall[1], overall[2]
    );
    Ok(())
}
