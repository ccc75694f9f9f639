//! `burn-moe place`: expert placement from predicted loads, ours and DeepSeek's EPLB from the
//! same prediction, scored by the straggler factor of what the trace did next, against the
//! contiguous placement and an oracle that knew the loads.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use burn_moe::checkpoint::write_bytes_atomic;
use burn_moe::predict::eplb::eplb;
use burn_moe::predict::placement::{Placement, place, place_predicted};

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
    /// Nodes the ranks form, for EPLB's hierarchical policy (1: its global policy).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Expert groups EPLB's hierarchical policy keeps within a node.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Write our placement from the prediction at the end of the trace (the loads ahead of the
    /// last step) to this JSON file: per layer, the ranks of each expert.
    #[arg(long)]
    pub write: Option<PathBuf>,
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

/// One layer's straggler factors: the mean over steps of the busiest rank's tokens over the
/// mean rank's.
#[derive(Debug, Default, Serialize)]
struct PlacementRow {
    layer: usize,
    points: usize,
    contiguous: f64,
    /// EPLB's policy on the prediction.
    eplb: f64,
    /// Ours on the prediction.
    ours: f64,
    /// Ours on the loads that came.
    oracle: f64,
}

pub fn run_place(args: &PlaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices >= 1, "--devices must be at least 1");
    anyhow::ensure!(
        args.nodes >= 1 && args.groups >= 1,
        "--nodes and --groups must be >= 1"
    );
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
    let window = args.window.unwrap_or(100);
    let mut rows = Vec::new();
    for (l, layer) in run.layers.iter().enumerate() {
        let m = layer.experts;
        let contiguous = Placement::contiguous(m, args.devices);
        let mut row = PlacementRow {
            layer: l,
            ..PlacementRow::default()
        };
        let mut origin = min_history;
        while origin + args.horizon <= layer.len() {
            let (ours, predicted) = place_predicted(
                p.as_ref(),
                layer,
                origin,
                args.horizon,
                window,
                args.devices,
                args.replicas,
            )?;
            let theirs = eplb(
                &predicted,
                args.devices,
                args.replicas,
                args.nodes,
                args.groups,
            )?;
            // The steps that came: what every placement is scored on, and the oracle's rows.
            let coming: Vec<Vec<f64>> = (origin..origin + args.horizon)
                .map(|t| layer.row(t).iter().map(|&v| v as f64).collect())
                .collect();
            let oracle = place(&coming, args.devices, args.replicas)?;
            let score = |pl: &Placement| {
                coming.iter().map(|loads| pl.imbalance(loads)).sum::<f64>() / args.horizon as f64
            };
            row.contiguous += score(&contiguous);
            row.eplb += score(&theirs);
            row.ours += score(&ours);
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
        row.contiguous /= n;
        row.eplb /= n;
        row.ours /= n;
        row.oracle /= n;
        rows.push(row);
    }
    if let Some(path) = &args.write {
        let layers = run
            .layers
            .iter()
            .map(|layer| {
                let (ours, _) = place_predicted(
                    p.as_ref(),
                    layer,
                    layer.len(),
                    1,
                    window,
                    args.devices,
                    args.replicas,
                )?;
                Ok(ours.copies)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let file = serde_json::json!({
            "devices": args.devices, "replicas": args.replicas, "method": p.name(),
            "trace": args.trace, "steps": run.layers[0].len(), "layers": layers,
        });
        write_bytes_atomic(path, serde_json::to_string_pretty(&file)?.as_bytes())?;
        if !args.json {
            eprintln!("placement written to {}", path.display());
        }
    }
    let mean = |f: fn(&PlacementRow) -> f64| rows.iter().map(f).sum::<f64>() / rows.len() as f64;
    let overall = [
        mean(|r| r.contiguous),
        mean(|r| r.eplb),
        mean(|r| r.ours),
        mean(|r| r.oracle),
    ];
    if args.json {
        let out = serde_json::json!({
            "trace": args.trace, "devices": args.devices, "replicas": args.replicas,
            "method": p.name(), "horizon": args.horizon, "layers": rows,
            "mean": {"contiguous": overall[0], "eplb": overall[1], "ours": overall[2],
                "oracle": overall[3]},
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "straggler factor (busiest rank / mean rank) over the next {} steps, {} ranks, {} \
         replicas, placement every {} steps from {}",
        args.horizon,
        args.devices,
        args.replicas,
        args.stride,
        p.name()
    );
    println!(
        "{:>5} {:>7} {:>11} {:>8} {:>8} {:>8}",
        "layer", "points", "contiguous", "EPLB", "ours", "oracle"
    );
    let line = |name: &str, points: &str, v: [f64; 4]| {
        println!(
            "{name:>5} {points:>7} {:>11.3} {:>8.3} {:>8.3} {:>8.3}",
            v[0], v[1], v[2], v[3]
        );
    };
    for r in &rows {
        let values = [r.contiguous, r.eplb, r.ours, r.oracle];
        line(&r.layer.to_string(), &r.points.to_string(), values);
    }
    line("mean", "", overall);
    Ok(())
}
