//! The MoE language model: it learns, resumes exactly, and rejects bad data and checkpoints.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use burn_moe::BackendKind;
use burn_moe::dist::Solo;
use burn_moe::model::{MoeLmConfig, Preset};
use burn_moe::train::{
    Progress, RunDir, RunManifest, TrainConfig, TrainStart, TrainSummary, train,
};
use common::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-moe-lm-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn manifest(model: MoeLmConfig, steps: u64, data: Option<PathBuf>) -> RunManifest {
    let train = TrainConfig::new()
        .with_steps(steps)
        .with_batch_size(8)
        .with_seq_len(32)
        .with_warmup_steps(5)
        .with_eval_every(1000)
        .with_eval_batches(2)
        .with_checkpoint_every(10);
    // Unresolved: `train` resolves the data path (and reports a bad one).
    RunManifest {
        model,
        train,
        data,
        data_digest: None,
    }
}

fn run(dir: &Path, start: TrainStart, device: &Device) -> burn_moe::Result<TrainSummary> {
    train(
        &RunDir::create(dir)?,
        start,
        device,
        None,
        &mut (),
        &Solo,
        &Default::default(),
    )
}

#[test]
fn tiny_preset_learns_on_every_backend() {
    for (backend, device) in devices(false) {
        let dir = temp_dir(&format!("learn-{backend}"));
        let m = manifest(Preset::Tiny.config(32), 40, None);
        let s = run(&dir, TrainStart::Fresh(Box::new(m)), &device).unwrap();
        eprintln!(
            "{backend}: train loss {:.3} -> {:.3}, val loss {:.3}, {:.0} tokens/s",
            s.first_train_loss, s.final_train_loss, s.val_loss, s.tokens_per_s
        );
        // ln(256) = 5.55 is a uniform guess; the embedded corpus is far from uniform.
        assert!(
            s.first_train_loss > 5.0,
            "{backend}: starts near uniform, got {}",
            s.first_train_loss
        );
        assert!(
            s.final_train_loss < 3.6,
            "{backend}: after 40 steps got {}",
            s.final_train_loss
        );
        assert!(s.val_loss < 3.8, "{backend}: val loss {}", s.val_loss);
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Raises the stop flag after a given step, as the Ctrl-C handler does.
struct StopAt {
    step: u64,
    flag: Arc<AtomicBool>,
}

impl Progress for StopAt {
    fn step(&mut self, step: u64, _: u64, _: f64, _: f64, _: f64) {
        if step == self.step {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn message(&mut self, _: &str) {}
}

fn small_model() -> MoeLmConfig {
    let mut m = Preset::Tiny.config(32);
    m.moe = m
        .moe
        .clone()
        .with_balancer("loss-free".parse().unwrap())
        .with_capacity_factor(Some(1.25));
    m
}

fn trace_steps(dir: &Path) -> Vec<u64> {
    burn_moe::telemetry::trace::TraceReader::open(&dir.join("trace.jsonl"))
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| r.layer == 0)
        .map(|r| r.step)
        .collect()
}

fn final_params(dir: &Path, device: &Device) -> Vec<Vec<f32>> {
    let run = RunDir::open(dir).unwrap();
    let (model, state) = run.load_model(device).unwrap();
    assert_eq!(state.step, 20);
    let mut out = vec![host(model.tokens.weight.val())];
    for moe in model.moe_layers() {
        out.push(host(moe.router.gate.weight.val()));
        out.push(host(moe.experts.w_in.val()));
        out.push(moe.balancer_state_values().unwrap());
    }
    out
}

#[test]
fn resume_matches_an_uninterrupted_run() {
    for (backend, device) in devices(false) {
        let straight = temp_dir(&format!("straight-{backend}"));
        let resumed = temp_dir(&format!("resumed-{backend}"));
        run(
            &straight,
            TrainStart::Fresh(Box::new(manifest(small_model(), 20, None))),
            &device,
        )
        .unwrap();
        // Interrupted at step 10 (as Ctrl-C does), then resumed.
        let stop = Arc::new(AtomicBool::new(false));
        let mut stopper = StopAt {
            step: 10,
            flag: stop.clone(),
        };
        let fresh = TrainStart::Fresh(Box::new(manifest(small_model(), 20, None)));
        let first = train(
            &RunDir::create(&resumed).unwrap(),
            fresh,
            &device,
            Some(stop),
            &mut stopper,
            &Solo,
            &Default::default(),
        )
        .unwrap();
        assert!(first.interrupted && first.steps == 10);
        run(&resumed, TrainStart::Resume { steps: None }, &device).unwrap();
        let (a, b) = (
            final_params(&straight, &device),
            final_params(&resumed, &device),
        );
        for (pa, pb) in a.iter().zip(&b) {
            match backend {
                BackendKind::Wgpu => assert_close(&format!("{backend} resume"), pb, pa, 1e-4, 1e-3),
                _ => {
                    let differ = pa
                        .iter()
                        .zip(pb)
                        .filter(|(x, y)| x.to_bits() != y.to_bits())
                        .count();
                    assert_eq!(
                        differ,
                        0,
                        "{backend}: {differ} of {} values differ after resume",
                        pa.len()
                    );
                }
            }
        }
        assert_eq!(trace_steps(&resumed), (1..=20).collect::<Vec<_>>());
        std::fs::remove_dir_all(&straight).ok();
        std::fs::remove_dir_all(&resumed).ok();
    }
}

#[test]
fn corrupted_checkpoint_is_a_clear_error() {
    let device = ndarray(false);
    let dir = temp_dir("corrupt");
    run(
        &dir,
        TrainStart::Fresh(Box::new(manifest(small_model(), 10, None))),
        &device,
    )
    .unwrap();
    let run_dir = RunDir::open(&dir).unwrap();
    let ckpt = run_dir.latest_checkpoint().unwrap();
    let bytes = std::fs::read(ckpt.join("model.bpk")).unwrap();
    std::fs::write(ckpt.join("model.bpk"), &bytes[..bytes.len() / 2]).unwrap();
    let model = run_dir.manifest().unwrap().model.init(&device).unwrap();
    let err = match run_dir.load_checkpoint(model) {
        Ok(_) => panic!("a truncated model.bpk must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("model.bpk"), "{err}");
    let err = run(&dir, TrainStart::Resume { steps: Some(20) }, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.bpk"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_data_is_a_clear_error() {
    let device = ndarray(false);
    let dir = temp_dir("bad-data");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(PathBuf, &[u8], &str)> = vec![
        (dir.join("missing.txt"), b"", "cannot read"),
        (dir.join("empty.txt"), b"", "is empty"),
        (
            dir.join("latin1.txt"),
            b"caf\xe9 au lait, encore du caf\xe9",
            "not UTF-8",
        ),
        (
            dir.join("short.txt"),
            b"far too short for a window",
            "does not fit",
        ),
    ];
    for (path, bytes, expected) in cases {
        if !path.ends_with("missing.txt") {
            std::fs::write(&path, bytes).unwrap();
        }
        let m = manifest(small_model(), 5, Some(path.clone()));
        let err = run(&dir.join("run"), TrainStart::Fresh(Box::new(m)), &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{}: `{err}` should say `{expected}`",
            path.display()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The what-if drop rate from requested loads equals what a capacity limit really drops.
#[test]
fn drop_rate_at_capacity_matches_real_dropping() {
    let device = ndarray(false);
    let data = burn_moe::data::TextData::from_file_or_default(None, 3).unwrap();
    let mut cfg = Preset::Tiny.config(32);
    cfg.n_layers = 1; // a later layer's input would depend on the first layer's drops
    let eval = |capacity: Option<f64>| {
        let mut cfg = cfg.clone();
        cfg.moe.capacity_factor = capacity;
        device.seed(9);
        let model = cfg.init(&device).unwrap();
        burn_moe::train::evaluate(&model, &data, 8, 32, 4).unwrap()
    };
    let dropless = eval(None);
    assert_eq!(dropless.drop_rate, vec![0.0]);
    for cf in [0.5, 1.0, 1.25] {
        let real = eval(Some(cf)).drop_rate[0];
        let what_if = dropless.drop_rate_at(cf, cfg.moe.top_k);
        assert!(
            (real - what_if).abs() < 1e-12,
            "cf {cf}: {real} vs {what_if}"
        );
    }
    assert!(dropless.drop_rate_at(0.5, cfg.moe.top_k) > 0.0);
}

/// The study trains one run per balancer, reuses finished runs, and refuses a changed setup.
#[test]
fn study_compares_balancers_and_reuses_runs() {
    use burn_moe::train::study::{StudyConfig, run_study};
    let dir = temp_dir("study");
    let device = ndarray(false);
    let mut base = manifest(Preset::Tiny.config(32), 12, None);
    base.train.eval_every = 4;
    let config = StudyConfig {
        base,
        balancers: vec![
            ("none".into(), "none".parse().unwrap()),
            ("bip".into(), "bip".parse().unwrap()),
        ],
        seeds: vec![],
        eval_batches: 4,
        capacity_factors: vec![1.0, 1.25],
        target_loss: None,
        maxvio_steps: vec![1, 10, 100],
        fresh: false,
    };
    let report = run_study(&dir, &config, &device, &mut ()).unwrap();
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert_eq!(r.steps, 12);
        assert_eq!(r.maxvio.len(), 12, "{}: one MaxVio per step", r.name);
        assert_eq!(
            r.val_curve.iter().map(|p| p.0).collect::<Vec<_>>(),
            [4, 8, 12]
        );
        // Step 100 is past the end: only steps 1 and 10 are reported.
        assert_eq!(r.maxvio_at.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 10]);
        assert!(
            r.drop_rate[0].1 >= r.drop_rate[1].1,
            "{}: more capacity, fewer drops",
            r.name
        );
        assert!(r.median_step_seconds > 0.0 && r.val_loss.is_finite());
    }
    // The default target is the worst final validation loss: every run reaches it.
    assert!(report.results.iter().all(|r| r.steps_to_target.is_some()));
    // BIP balances from the first step; no balancing does not.
    let (none, bip) = (&report.results[0], &report.results[1]);
    assert!(
        bip.avg_maxvio < none.avg_maxvio,
        "{} vs {}",
        bip.avg_maxvio,
        none.avg_maxvio
    );

    let metrics = std::fs::read_to_string(dir.join("bip/metrics.jsonl")).unwrap();
    let again = run_study(&dir, &config, &device, &mut ()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("bip/metrics.jsonl")).unwrap(),
        metrics,
        "a finished run is reused, not retrained"
    );
    assert_eq!(again.results[1].val_loss, bip.val_loss);

    let mut changed = config.clone();
    changed.base.train.seed += 1;
    let err = run_study(&dir, &changed, &device, &mut ()).unwrap_err();
    assert!(err.to_string().contains("--fresh"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// With several seeds, one run per balancer and seed, and the summary is their mean and
/// sample standard deviation; a capacity limit shows up as tokens dropped in training.
#[test]
fn study_runs_every_seed_and_summarizes_the_spread() {
    use burn_moe::train::study::{StudyConfig, run_study};
    let dir = temp_dir("study-seeds");
    let device = ndarray(false);
    let mut model = Preset::Tiny.config(32);
    model.moe.capacity_factor = Some(1.0);
    let mut base = manifest(model, 4, None);
    base.train.eval_every = 4;
    let config = StudyConfig {
        base,
        balancers: vec![("none".into(), "none".parse().unwrap())],
        seeds: vec![3, 4],
        eval_batches: 2,
        capacity_factors: vec![1.0],
        target_loss: None,
        maxvio_steps: vec![1],
        fresh: false,
    };
    let report = run_study(&dir, &config, &device, &mut ()).unwrap();
    assert_eq!(
        report.results.iter().map(|r| r.seed).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(dir.join("none-s3/run.json").exists() && dir.join("none-s4/run.json").exists());
    let (a, b) = (report.results[0].val_loss, report.results[1].val_loss);
    assert_ne!(a, b, "different seeds, different runs");
    let s = &report.summary[0];
    assert_eq!(s.seeds, 2);
    assert!((s.val_loss.mean - (a + b) / 2.0).abs() < 1e-12);
    assert!((s.val_loss.std - (a - b).abs() / 2f64.sqrt()).abs() < 1e-12);
    for r in &report.results {
        assert!(
            r.train_drop_rate > 0.0 && r.train_drop_rate < 1.0,
            "capacity 1.0 without balancing drops: {}",
            r.train_drop_rate
        );
    }
    // Step 10 is past the end of these runs: its column is `-` in both tables, and every row
    // has as many cells as its header.
    let table = report.markdown(&[1, 10], &config.capacity_factors);
    assert!(table.contains("Mean ± standard deviation") && table.contains("| none | 2 |"));
    for block in table.split("\n\n").filter(|b| b.contains("| balancer |")) {
        let rows: Vec<&str> = block.lines().filter(|l| l.starts_with('|')).collect();
        let cells = |l: &str| l.matches('|').count();
        assert!(
            rows.iter().all(|r| cells(r) == cells(rows[0])),
            "ragged table:\n{block}"
        );
    }
    let err = run_study(
        &dir,
        &StudyConfig {
            seeds: vec![5, 5],
            ..config
        },
        &device,
        &mut (),
    )
    .unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
