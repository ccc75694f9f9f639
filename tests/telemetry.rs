//! Trace files end to end: reading (truncated, malformed, inconsistent, large), the phase rule
//! on a synthetic trace with a known switch, charts on disk, and the `analyze`, `predict` and
//! `place` commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn_moe::telemetry::analyze::{AnalyzeConfig, detect_phase_switch};
use burn_moe::telemetry::loads::{LoadKind, RunLoads};
use burn_moe::telemetry::plots::{LineChart, Series, line_chart, load_heatmap};
use burn_moe::telemetry::trace::{TraceRecord, TraceWriter};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-moe-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 2-layer, 8-expert trace whose loads jitter by 60% until `switch`, then by 3%.
fn synthetic_trace(path: &Path, steps: u64, switch: u64) {
    let mut w = TraceWriter::append(path).unwrap();
    let mut state = 99u64;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for step in 1..=steps {
        let amp = if step < switch { 0.6 } else { 0.03 };
        let records: Vec<TraceRecord> = (0..2)
            .map(|layer| {
                let requested: Vec<usize> = (0..8)
                    .map(|j| {
                        ((100 + 20 * j) as f64 * (1.0 + amp * (2.0 * uniform() - 1.0))) as usize
                    })
                    .collect();
                TraceRecord {
                    step,
                    layer,
                    computed: requested.clone(),
                    requested,
                }
            })
            .collect();
        w.write_step(&records).unwrap();
    }
}

#[test]
fn reading_recovers_a_truncated_tail_and_rejects_bad_traces() {
    let dir = temp_dir("loads");
    let path = dir.join("trace.jsonl");
    synthetic_trace(&path, 20, 10);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"step\":21,\"layer\":0,\"reque").unwrap();
    drop(f);
    let run = RunLoads::read(&path, LoadKind::Requested).unwrap();
    assert_eq!(run.layers.len(), 2);
    assert_eq!(run.layers[0].len(), 20);
    assert_eq!(run.skipped, vec![41]);
    let row_sum: f32 = run.layers[1].row(7).iter().sum();
    assert!((row_sum - 1.0).abs() < 1e-5);

    let cases = [
        ("missing", None, "opening trace"),
        ("empty.jsonl", Some(""), "no records"),
        (
            "middle.jsonl",
            Some(
                "{\"step\":1,\"layer\":0,\"requested\":[1],\"computed\":[1]}\nnot json\n{\"step\":2,\"layer\":0,\"requested\":[1],\"computed\":[1]}\n",
            ),
            "line 2",
        ),
        (
            "experts.jsonl",
            Some(
                "{\"step\":1,\"layer\":0,\"requested\":[1,2],\"computed\":[1,2]}\n{\"step\":2,\"layer\":0,\"requested\":[1],\"computed\":[1]}\n",
            ),
            "experts",
        ),
        (
            "order.jsonl",
            Some(
                "{\"step\":2,\"layer\":0,\"requested\":[1],\"computed\":[1]}\n{\"step\":2,\"layer\":0,\"requested\":[1],\"computed\":[1]}\n",
            ),
            "increase",
        ),
    ];
    for (name, content, expected) in cases {
        let p = dir.join(name);
        if let Some(c) = content {
            std::fs::write(&p, c).unwrap();
        }
        let err = RunLoads::read(&p, LoadKind::Requested)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{name}: `{err}` should mention `{expected}`"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_million_records_stream_through() {
    let dir = temp_dir("big");
    let path = dir.join("trace.jsonl");
    {
        let mut w = TraceWriter::append(&path).unwrap();
        let mut batch = Vec::new();
        for step in 1..=250_000u64 {
            for layer in 0..4 {
                let requested: Vec<usize> =
                    (0..8).map(|j| (step as usize + j * layer) % 97).collect();
                batch.push(TraceRecord {
                    step,
                    layer,
                    computed: requested.clone(),
                    requested,
                });
            }
            if batch.len() >= 40_000 {
                w.write_lines(&batch).unwrap();
                batch.clear();
            }
        }
        w.write_lines(&batch).unwrap();
    }
    let run = RunLoads::read(&path, LoadKind::Computed).unwrap();
    assert_eq!(run.records, 1_000_000);
    assert!(run.layers.iter().all(|l| l.len() == 250_000));
    assert_eq!(
        run.layers[3].count_row(249_999)[7],
        ((250_000 + 21) % 97) as u32
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn phase_switch_and_charts_from_a_trace_file() {
    let dir = temp_dir("phase");
    let path = dir.join("trace.jsonl");
    synthetic_trace(&path, 1500, 600);
    let run = RunLoads::read(&path, LoadKind::Requested).unwrap();
    let switch = detect_phase_switch(&run.layers, &AnalyzeConfig::default())
        .step
        .unwrap();
    assert!((601..=712).contains(&switch), "switch at {switch}");

    let mut files = load_heatmap(&dir.join("heat"), &run.layers[0], "layer 0").unwrap();
    files.extend(
        line_chart(
            &dir.join("lines"),
            &LineChart {
                title: "t".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                series: vec![Series {
                    label: "a".into(),
                    points: vec![(1.0, 0.5), (2.0, 0.25), (3.0, 1.0)],
                }],
                marker: Some((2.0, "m".into())),
                log_y: true,
            },
        )
        .unwrap(),
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is {} bytes",
            f.display(),
            bytes.len()
        );
        if f.extension().is_some_and(|e| e == "png") {
            assert_eq!(&bytes[1..4], b"PNG");
        } else {
            assert!(String::from_utf8_lossy(&bytes).contains("<svg"));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn burn_moe(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burn-moe"))
        .args(args)
        .output()
        .expect("run burn-moe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn analyze_predict_and_place_commands() {
    let dir = temp_dir("cli");
    let path = dir.join("trace.jsonl");
    synthetic_trace(&path, 800, 300);
    let trace = path.to_str().unwrap();
    let out_dir = dir.join("charts");
    let (ok, stdout, stderr) = burn_moe(&[
        "analyze",
        trace,
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let switch = v["runs"][0]["phase_switch_step"].as_u64().unwrap();
    assert!((301..=412).contains(&switch), "switch {switch}");
    assert_eq!(v["runs"][0]["layers"].as_array().unwrap().len(), 2);
    assert!(v["plots"].as_array().unwrap().len() >= 8); // 2 heatmaps, variance, MaxVio; x2

    let (ok, stdout, stderr) = burn_moe(&[
        "predict",
        trace,
        "--method",
        "sw-avg",
        "--horizon",
        "20,100",
        "--window",
        "50",
        "--json",
        "--no-plots",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let reports = v["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    // Loads jitter less after the switch, so the stable error is the smaller one.
    let (tr, st) = (
        reports[0]["transient"].as_f64().unwrap(),
        reports[0]["stable"].as_f64().unwrap(),
    );
    assert!(st < 0.5 * tr, "transient {tr}, stable {st}");

    let (ok, stdout, stderr) = burn_moe(&[
        "place",
        trace,
        "--devices",
        "4",
        "--replicas",
        "2",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let mean = |k: &str| v["mean"][k].as_f64().unwrap();
    let (contiguous, ours, theirs, oracle) = (
        mean("contiguous"),
        mean("ours"),
        mean("eplb"),
        mean("oracle"),
    );
    // Placing by the predicted loads beats the contiguous placement; so does placing by the
    // actual loads, which no placement from a prediction beats by much.
    assert!(
        ours < contiguous && theirs < contiguous && oracle < contiguous,
        "ours {ours}, EPLB {theirs}, contiguous {contiguous}, oracle {oracle}"
    );

    // The placement file: every expert of every layer on 1 or 2 of the 4 ranks, 10 copies.
    let file = dir.join("placement.json");
    let (ok, _, stderr) = burn_moe(&[
        "place",
        trace,
        "--devices",
        "4",
        "--replicas",
        "2",
        "--write",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let placed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let layers = placed["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for layer in layers {
        let copies: Vec<Vec<u64>> = serde_json::from_value(layer.clone()).unwrap();
        assert_eq!(copies.len(), 8);
        assert_eq!(copies.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(copies.iter().flatten().all(|&r| r < 4));
    }

    // A reader that goes away (`| head`) ends the command without a panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_burn-moe"))
        .args(["place", trace, "--devices", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (ok, _, stderr) = burn_moe(&["predict", trace, "--method", "lstm"]);
    assert!(!ok && stderr.contains("--train-trace"), "{stderr}");
    let (ok, _, stderr) = burn_moe(&["analyze", dir.join("nope.jsonl").to_str().unwrap()]);
    assert!(!ok && stderr.contains("nope.jsonl"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
