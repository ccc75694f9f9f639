//! Invalid inputs to every subcommand. Each must end with a non-zero exit and a clear `error:`
//! on stderr, never a panic or an abort, and must leave an existing run untouched.

use std::path::{Path, PathBuf};

use crate::support::*;

/// Writes `bytes` to `dir/name` and returns the path as a string.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// A trace line.
fn rec(step: u64, layer: u64, counts: &[u64]) -> String {
    format!(
        "{{\"step\":{step},\"layer\":{layer},\"requested\":{counts:?},\"computed\":{counts:?}}}\n"
    )
}

/// A copy of the run `good` named `name`, changed by `edit`.
fn broken_run(root: &Path, good: &Path, name: &str, edit: impl FnOnce(&Path)) -> String {
    let dir = root.join(name);
    copy_dir(good, &dir);
    edit(&dir);
    dir.to_str().unwrap().to_string()
}

fn latest(dir: &Path) -> PathBuf {
    dir.join(std::fs::read_to_string(dir.join("latest")).unwrap().trim())
}

fn flip_middle(path: &Path, n: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = bytes.len() / 2 - n.min(bytes.len() / 2) / 2;
    for b in bytes.iter_mut().skip(start).take(n) {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("run.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors_and_leave_runs_untouched() {
    let root = temp_dir("campaign");
    let good = root.join("good");
    let trained = train_tiny(&good, 6, &["--checkpoint-every", "3", "--eval-every", "3"]);
    assert!(trained.ok(), "{}", trained.stderr);
    let g = good.to_str().unwrap().to_string();
    let trace = good.join("trace.jsonl").to_str().unwrap().to_string();

    // Data files.
    let missing = root.join("missing.txt").to_str().unwrap().to_string();
    let empty = file(&root, "empty.txt", b"");
    let binary = file(
        &root,
        "binary.bin",
        &[0xff, 0xfe, 0x00, 0x81, 0xc3, 0x28, 0xa0, 0xa1],
    );
    let short = file(&root, "short.txt", b"too short for a window");
    let a_dir = root.to_str().unwrap().to_string();
    let text = "All the world's a stage, and all the men and women merely players. ".repeat(200);
    let data = file(&root, "data.txt", text.as_bytes());

    // A run on a data file that changed afterwards.
    let data_run = root.join("data-run");
    let trained = train_tiny(&data_run, 3, &["--data", &data]);
    assert!(trained.ok(), "{}", trained.stderr);
    std::fs::write(&data, text.replace("stage", "STAGE")).unwrap();
    let data_run = data_run.to_str().unwrap().to_string();

    // Broken copies of the good run.
    let corrupt_model = broken_run(&root, &good, "corrupt-model", |d| {
        flip_middle(&latest(d).join("model.bpk"), 4000)
    });
    let corrupt_optim = broken_run(&root, &good, "corrupt-optim", |d| {
        flip_middle(&latest(d).join("optim.bpk"), 4000)
    });
    let no_sums = broken_run(&root, &good, "no-checksums", |d| {
        std::fs::remove_file(latest(d).join("checksums.json")).unwrap()
    });
    let bad_latest = broken_run(&root, &good, "bad-latest", |d| {
        std::fs::write(d.join("latest"), "../../../etc").unwrap()
    });
    let zero_batch = broken_run(&root, &good, "zero-batch", |d| {
        edit_manifest(d, |v| v["train"]["batch_size"] = 0.into())
    });
    let huge_experts = broken_run(&root, &good, "huge-experts", |d| {
        edit_manifest(d, |v| {
            v["model"]["moe"]["num_experts"] = 1_000_000_000u64.into()
        })
    });
    let garbage_manifest = broken_run(&root, &good, "garbage-manifest", |d| {
        std::fs::write(d.join("run.json"), "{ not json").unwrap()
    });
    let empty_dir = root.join("empty-dir");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let empty_dir = empty_dir.to_str().unwrap().to_string();

    // Traces.
    let huge_layer = file(
        &root,
        "huge-layer.jsonl",
        rec(1, 1_000_000_000_000, &[3, 1]).as_bytes(),
    );
    let mut garbage_middle = rec(1, 0, &[3, 1]);
    garbage_middle.push_str("garbage\n");
    garbage_middle.push_str(&rec(2, 0, &[2, 2]));
    let garbage_middle = file(&root, "garbage.jsonl", garbage_middle.as_bytes());
    let expert_change = file(
        &root,
        "experts-change.jsonl",
        (rec(1, 0, &[3, 1]) + &rec(2, 0, &[1, 1, 2])).as_bytes(),
    );
    let backwards = file(
        &root,
        "backwards.jsonl",
        (rec(2, 0, &[3, 1]) + &rec(1, 0, &[1, 3])).as_bytes(),
    );
    let no_experts = file(&root, "no-experts.jsonl", rec(1, 0, &[]).as_bytes());
    let short_trace: String = (1..=5).map(|s| rec(s, 0, &[3, 1, 2, 2])).collect();
    let short_trace = file(&root, "short.jsonl", short_trace.as_bytes());
    let empty_trace = file(&root, "empty.jsonl", b"");

    let out = root.join("new").to_str().unwrap().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let train_new = |extra: &[&str]| {
        let mut v = s(&["train", "--out", &out, "--steps", "2"]);
        v.extend(s(TINY));
        v.extend(s(extra));
        v
    };

    let cases: Vec<(&str, Vec<String>)> = vec![
        // train: bad sizes and values
        ("train steps 0", train_new(&["--steps", "0"])),
        ("train batch 0", train_new(&["--batch-size", "0"])),
        ("train seq-len 0", train_new(&["--seq-len", "0"])),
        ("train seq-len huge", train_new(&["--seq-len", "100000000"])),
        ("train lr negative", train_new(&["--lr", "-1"])),
        ("train lr nan", train_new(&["--lr", "nan"])),
        ("train lr inf", train_new(&["--lr", "inf"])),
        ("train experts 0", train_new(&["--experts", "0"])),
        ("train experts 1e9", train_new(&["--experts", "1000000000"])),
        ("train experts 5000", train_new(&["--experts", "5000"])),
        ("train top-k 0", train_new(&["--top-k", "0"])),
        ("train top-k > experts", train_new(&["--top-k", "99"])),
        (
            "train batch 1e9",
            train_new(&["--batch-size", "1000000000"]),
        ),
        ("train layers 0", train_new(&["--layers", "0"])),
        ("train layers 1e9", train_new(&["--layers", "1000000000"])),
        (
            "train no MoE layer",
            train_new(&["--moe-every", "3", "--layers", "2"]),
        ),
        ("train moe-every 0", train_new(&["--moe-every", "0"])),
        ("train capacity 0", train_new(&["--capacity-factor", "0"])),
        (
            "train expert groups not dividing",
            train_new(&["--expert-groups", "3"]),
        ),
        (
            "train top groups > groups",
            train_new(&["--expert-groups", "2", "--top-groups", "3"]),
        ),
        (
            "train capacity negative",
            train_new(&["--capacity-factor", "-1"]),
        ),
        (
            "train capacity nan",
            train_new(&["--capacity-factor", "nan"]),
        ),
        ("train balancer unknown", train_new(&["--balancer", "nope"])),
        ("train expert width 0", train_new(&["--expert-width", "0"])),
        (
            "train balancer parameter unknown",
            train_new(&["--balancer", "qb:bins=10"]),
        ),
        (
            "train balancer ema out of range",
            train_new(&["--balancer", "qb:ema=1"]),
        ),
        ("train z-loss negative", train_new(&["--z-loss", "-1"])),
        ("train z-loss nan", train_new(&["--z-loss", "nan"])),
        ("train eval-every 0", train_new(&["--eval-every", "0"])),
        (
            "train checkpoint-every 0",
            train_new(&["--checkpoint-every", "0"]),
        ),
        ("train backend unknown", train_new(&["--backend", "cuda"])),
        ("train preset unknown", train_new(&["--preset", "huge"])),
        ("train steps negative", train_new(&["--steps", "-5"])),
        ("train steps not a number", train_new(&["--steps", "many"])),
        // train: bad data
        ("train data missing", train_new(&["--data", &missing])),
        ("train data empty", train_new(&["--data", &empty])),
        ("train data binary", train_new(&["--data", &binary])),
        ("train data too short", train_new(&["--data", &short])),
        ("train data is a directory", train_new(&["--data", &a_dir])),
        // train: run directories
        (
            "train into an existing run",
            s(&["train", "--out", &g, "--steps", "2"]),
        ),
        (
            "train out is a file",
            s(&["train", "--out", &empty, "--steps", "2"]),
        ),
        (
            "resume behind the run",
            s(&["train", "--resume", &g, "--steps", "3"]),
        ),
        ("resume a finished run", s(&["train", "--resume", &g])),
        (
            "resume with overwrite",
            s(&["train", "--resume", &g, "--overwrite"]),
        ),
        ("resume missing", s(&["train", "--resume", &missing])),
        ("resume empty dir", s(&["train", "--resume", &empty_dir])),
        (
            "resume corrupt model",
            s(&["train", "--resume", &corrupt_model, "--steps", "9"]),
        ),
        (
            "resume corrupt optim",
            s(&["train", "--resume", &corrupt_optim, "--steps", "9"]),
        ),
        (
            "resume without checksums",
            s(&["train", "--resume", &no_sums, "--steps", "9"]),
        ),
        (
            "resume bad latest",
            s(&["train", "--resume", &bad_latest, "--steps", "9"]),
        ),
        (
            "resume zero batch",
            s(&["train", "--resume", &zero_batch, "--steps", "9"]),
        ),
        (
            "resume huge experts",
            s(&["train", "--resume", &huge_experts, "--steps", "9"]),
        ),
        (
            "resume garbage manifest",
            s(&["train", "--resume", &garbage_manifest, "--steps", "9"]),
        ),
        (
            "resume changed data",
            s(&["train", "--resume", &data_run, "--steps", "6"]),
        ),
        // eval
        ("eval missing", s(&["eval", "--checkpoint", &missing])),
        ("eval empty dir", s(&["eval", "--checkpoint", &empty_dir])),
        (
            "eval batches 0",
            s(&["eval", "--checkpoint", &g, "--batches", "0"]),
        ),
        (
            "eval corrupt model",
            s(&["eval", "--checkpoint", &corrupt_model]),
        ),
        (
            "eval without checksums",
            s(&["eval", "--checkpoint", &no_sums]),
        ),
        ("eval bad latest", s(&["eval", "--checkpoint", &bad_latest])),
        ("eval zero batch", s(&["eval", "--checkpoint", &zero_batch])),
        (
            "eval huge experts",
            s(&["eval", "--checkpoint", &huge_experts]),
        ),
        (
            "eval garbage manifest",
            s(&["eval", "--checkpoint", &garbage_manifest]),
        ),
        ("eval changed data", s(&["eval", "--checkpoint", &data_run])),
        (
            "eval data missing",
            s(&["eval", "--checkpoint", &g, "--data", &missing]),
        ),
        (
            "eval data binary",
            s(&["eval", "--checkpoint", &g, "--data", &binary]),
        ),
        (
            "eval data too short",
            s(&["eval", "--checkpoint", &g, "--data", &short]),
        ),
        (
            "eval backend unknown",
            s(&["eval", "--checkpoint", &g, "--backend", "cuda"]),
        ),
        // generate
        (
            "generate missing",
            s(&["generate", "--checkpoint", &missing]),
        ),
        (
            "generate corrupt model",
            s(&["generate", "--checkpoint", &corrupt_model]),
        ),
        (
            "generate temperature negative",
            s(&["generate", "--checkpoint", &g, "--temperature", "-1"]),
        ),
        (
            "generate temperature nan",
            s(&["generate", "--checkpoint", &g, "--temperature", "nan"]),
        ),
        (
            "generate top-p 0",
            s(&["generate", "--checkpoint", &g, "--top-p", "0"]),
        ),
        (
            "generate top-p 2",
            s(&["generate", "--checkpoint", &g, "--top-p", "2"]),
        ),
        // demo
        (
            "demo d-model 2^62",
            s(&["demo", "--d-model", "4611686018427387904"]),
        ),
        ("demo d-model 0", s(&["demo", "--d-model", "0"])),
        ("demo d-ff 0", s(&["demo", "--d-ff", "0"])),
        ("demo experts 0", s(&["demo", "--experts", "0"])),
        ("demo experts 5000", s(&["demo", "--experts", "5000"])),
        ("demo top-k 0", s(&["demo", "--top-k", "0"])),
        ("demo tokens 0", s(&["demo", "--tokens", "0"])),
        (
            "demo tokens 1e12",
            s(&["demo", "--tokens", "1000000000000"]),
        ),
        (
            "demo capacity negative",
            s(&["demo", "--capacity-factor", "-1"]),
        ),
        // simulate
        ("simulate experts 0", s(&["simulate", "--experts", "0"])),
        (
            "simulate experts 1e9",
            s(&["simulate", "--experts", "1000000000"]),
        ),
        ("simulate top-k 0", s(&["simulate", "--top-k", "0"])),
        (
            "simulate top-k > experts",
            s(&["simulate", "--top-k", "17"]),
        ),
        ("simulate tokens 0", s(&["simulate", "--tokens", "0"])),
        (
            "simulate tokens 1e12",
            s(&["simulate", "--tokens", "1000000000000", "--seq-len", "1"]),
        ),
        ("simulate seq-len 0", s(&["simulate", "--seq-len", "0"])),
        (
            "simulate seq-len not dividing",
            s(&["simulate", "--seq-len", "3"]),
        ),
        ("simulate steps 0", s(&["simulate", "--steps", "0"])),
        (
            "simulate rate negative",
            s(&["simulate", "--balancer", "loss-free", "--rate", "-1"]),
        ),
        (
            "simulate rate nan",
            s(&["simulate", "--balancer", "loss-free", "--rate", "nan"]),
        ),
        (
            "simulate iterations 0",
            s(&["simulate", "--balancer", "bip", "--iterations", "0"]),
        ),
        (
            "simulate alpha negative",
            s(&["simulate", "--balancer", "aux", "--alpha", "-1"]),
        ),
        (
            "simulate z-loss negative",
            s(&["simulate", "--z-loss", "-1"]),
        ),
        (
            "simulate router-lr nan",
            s(&["simulate", "--balancer", "aux", "--router-lr", "nan"]),
        ),
        (
            "simulate balancer unknown",
            s(&["simulate", "--balancer", "nope"]),
        ),
        (
            "simulate qb-hist bins 1",
            s(&["simulate", "--balancer", "qb-hist:bins=1"]),
        ),
        (
            "simulate qb-hist bins too many",
            s(&["simulate", "--balancer", "qb-hist:bins=5000"]),
        ),
        (
            "simulate bip t not a number",
            s(&["simulate", "--balancer", "bip:t=x"]),
        ),
        (
            "simulate score unknown",
            s(&["simulate", "--score", "tanh"]),
        ),
        // analyze
        ("analyze missing", s(&["analyze", &missing, "--no-plots"])),
        ("analyze empty", s(&["analyze", &empty_trace, "--no-plots"])),
        ("analyze binary", s(&["analyze", &binary, "--no-plots"])),
        (
            "analyze garbage middle",
            s(&["analyze", &garbage_middle, "--no-plots"]),
        ),
        (
            "analyze huge layer",
            s(&["analyze", &huge_layer, "--no-plots"]),
        ),
        (
            "analyze expert count change",
            s(&["analyze", &expert_change, "--no-plots"]),
        ),
        (
            "analyze steps backwards",
            s(&["analyze", &backwards, "--no-plots"]),
        ),
        (
            "analyze no experts",
            s(&["analyze", &no_experts, "--no-plots"]),
        ),
        ("analyze a directory", s(&["analyze", &a_dir, "--no-plots"])),
        (
            "analyze windows 0",
            s(&["analyze", &trace, "--windows", "0", "--no-plots"]),
        ),
        (
            "analyze dead-window 0",
            s(&["analyze", &trace, "--dead-window", "0", "--no-plots"]),
        ),
        (
            "analyze factor nan",
            s(&["analyze", &trace, "--factor", "nan", "--no-plots"]),
        ),
        (
            "analyze factor negative",
            s(&["analyze", &trace, "--factor", "-1", "--no-plots"]),
        ),
        (
            "analyze labels mismatch",
            s(&["analyze", &trace, "--labels", "a,b", "--no-plots"]),
        ),
        // predict
        ("predict missing", s(&["predict", &missing, "--no-plots"])),
        ("predict empty", s(&["predict", &empty_trace, "--no-plots"])),
        (
            "predict huge layer",
            s(&["predict", &huge_layer, "--no-plots"]),
        ),
        (
            "predict window 0",
            s(&[
                "predict",
                &short_trace,
                "--window",
                "0",
                "--horizon",
                "1",
                "--no-plots",
            ]),
        ),
        (
            "predict horizon 0",
            s(&["predict", &short_trace, "--horizon", "0", "--no-plots"]),
        ),
        (
            "predict stride 0",
            s(&["predict", &short_trace, "--stride", "0", "--no-plots"]),
        ),
        (
            "predict trace too short",
            s(&["predict", &short_trace, "--horizon", "100", "--no-plots"]),
        ),
        (
            "predict order of two",
            s(&[
                "predict",
                &short_trace,
                "--method",
                "arima",
                "--order",
                "1,2",
                "--no-plots",
            ]),
        ),
        (
            "predict order too large",
            s(&[
                "predict",
                &short_trace,
                "--method",
                "arima",
                "--order",
                "1000000,1,1",
                "--no-plots",
            ]),
        ),
        (
            "predict arima window too short",
            s(&[
                "predict",
                &short_trace,
                "--method",
                "arima",
                "--window",
                "10",
                "--horizon",
                "1",
                "--no-plots",
            ]),
        ),
        (
            "predict arima trace too short",
            s(&[
                "predict",
                &short_trace,
                "--method",
                "arima",
                "--horizon",
                "1",
                "--no-plots",
            ]),
        ),
        (
            "predict lstm without training trace",
            s(&["predict", &short_trace, "--method", "lstm", "--no-plots"]),
        ),
        // place
        ("place devices 0", s(&["place", &trace, "--devices", "0"])),
        (
            "place devices 2^62",
            s(&["place", &trace, "--devices", "4611686018427387904"]),
        ),
        (
            "place devices > experts",
            s(&["place", &trace, "--devices", "9"]),
        ),
        (
            "place window 0",
            s(&["place", &trace, "--devices", "2", "--window", "0"]),
        ),
        (
            "place horizon 0",
            s(&["place", &trace, "--devices", "2", "--horizon", "0"]),
        ),
        (
            "place replicas > experts",
            s(&["place", &trace, "--devices", "2", "--replicas", "99"]),
        ),
        (
            "place trace too short",
            s(&["place", &short_trace, "--devices", "2"]),
        ),
        ("place missing", s(&["place", &missing, "--devices", "2"])),
        (
            "place huge layer",
            s(&["place", &huge_layer, "--devices", "2"]),
        ),
        // study
        (
            "study steps 0",
            s(&["study", "--out", &out, "--steps", "0", "--preset", "tiny"]),
        ),
        (
            "study balancer unknown",
            s(&[
                "study",
                "--out",
                &out,
                "--steps",
                "2",
                "--balancers",
                "nope",
            ]),
        ),
        (
            "study no balancers",
            s(&["study", "--out", &out, "--steps", "2", "--balancers", ""]),
        ),
        (
            "study training capacity nan",
            s(&[
                "study",
                "--out",
                &out,
                "--steps",
                "2",
                "--preset",
                "tiny",
                "--capacity-factor",
                "nan",
            ]),
        ),
        (
            "study seed twice",
            s(&[
                "study", "--out", &out, "--steps", "2", "--preset", "tiny", "--seeds", "1,1",
            ]),
        ),
        (
            "study capacity negative",
            s(&[
                "study",
                "--out",
                &out,
                "--steps",
                "2",
                "--capacity-factors",
                "-1",
            ]),
        ),
        (
            "study eval-batches 0",
            s(&[
                "study",
                "--out",
                &out,
                "--steps",
                "2",
                "--eval-batches",
                "0",
            ]),
        ),
        (
            "study target nan",
            s(&[
                "study",
                "--out",
                &out,
                "--steps",
                "2",
                "--target-loss",
                "nan",
            ]),
        ),
        (
            "study data missing",
            s(&["study", "--out", &out, "--steps", "2", "--data", &missing]),
        ),
        (
            "study into a train run",
            s(&[
                "study",
                "--out",
                &g,
                "--steps",
                "2",
                "--preset",
                "tiny",
                "--balancers",
                "none",
            ]),
        ),
        // anything else
        ("unknown subcommand", s(&["frobnicate"])),
        ("no subcommand", s(&[])),
    ];

    let protected = [good.clone(), root.join("data-run")];
    let before: Vec<_> = protected.iter().map(|d| snapshot(d)).collect();
    let (mut clean, mut panics, mut silent) = (Vec::new(), Vec::new(), Vec::new());
    for (label, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&args);
        let one_line = o.stderr.lines().any(|l| l.starts_with("error:"));
        if o.panicked() {
            panics.push(format!("{label}: {}", o.stderr.trim()));
        } else if o.ok() || !one_line {
            silent.push(format!(
                "{label}: exit {:?}, stdout `{}`, stderr `{}`",
                o.code,
                o.stdout.trim(),
                o.stderr.trim()
            ));
        } else {
            clean.push(*label);
        }
    }
    eprintln!(
        "campaign: {} inputs, {} clean errors, {} panics, {} accepted or unclear",
        cases.len(),
        clean.len(),
        panics.len(),
        silent.len()
    );
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
    assert!(
        silent.is_empty(),
        "not a clear error:\n{}",
        silent.join("\n")
    );
    for (dir, snap) in protected.iter().zip(&before) {
        assert!(snapshot(dir) == *snap, "{} was changed", dir.display());
    }
    assert!(
        !root.join("new").join("run.json").exists(),
        "a refused run wrote a manifest"
    );
    std::fs::remove_dir_all(&root).ok();
}
