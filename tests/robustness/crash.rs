//! kill -9 at random moments of a training run, then eval and resume: every killed run must end
//! with the losses and expert-load trace of the run that was never interrupted.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

const STEPS: u64 = 24;
const OPTIONS: &[&str] = &["--checkpoint-every", "4", "--eval-every", "8"];

fn trace(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("trace.jsonl")).unwrap_or_default()
}

#[test]
fn killed_runs_evaluate_and_resume_to_the_uninterrupted_run() {
    let root = temp_dir("crash");
    let reference = root.join("reference");
    let started = Instant::now();
    let o = train_tiny(&reference, STEPS, OPTIONS);
    assert!(o.ok(), "{}", o.stderr);
    let full = started.elapsed();
    let (want_losses, want_trace) = (train_losses(&reference), trace(&reference));
    assert_eq!(want_losses.len() as u64, STEPS);

    let mut rng = StdRng::seed_from_u64(20261125);
    let (mut resumed, mut restarted, mut completed) = (0, 0, 0);
    let trials = 10;
    for trial in 0..trials {
        let dir = root.join(format!("trial-{trial}"));
        let mut child = spawn_tiny(&dir, STEPS, OPTIONS);
        std::thread::sleep(full.mul_f64(rng.random_range(0.02..1.0)));
        child.kill().ok(); // SIGKILL
        let status = child.wait().unwrap();
        let d = dir.to_str().unwrap();
        if status.success() {
            completed += 1;
        } else if dir.join("latest").exists() {
            let e = run_for(
                &["eval", "--checkpoint", d, "--batches", "2"],
                Duration::from_secs(300),
            );
            assert!(e.ok(), "trial {trial}: eval after a kill: {}", e.stderr);
            let r = run(&["train", "--resume", d]);
            assert!(r.ok(), "trial {trial}: resume: {}", r.stderr);
            resumed += 1;
        } else {
            // Killed before its first checkpoint: resume says so, a new run starts over.
            let r = run(&["train", "--resume", d]);
            assert!(!r.ok() && !r.panicked(), "trial {trial}: {}", r.stderr);
            let mut extra = OPTIONS.to_vec();
            extra.push("--overwrite");
            let o = train_tiny(&dir, STEPS, &extra);
            assert!(o.ok(), "trial {trial}: restart: {}", o.stderr);
            restarted += 1;
        }
        assert_eq!(train_losses(&dir), want_losses, "trial {trial}: losses");
        assert!(trace(&dir) == want_trace, "trial {trial}: trace differs");
    }
    eprintln!(
        "crash trials: {trials}; resumed {resumed}, restarted (killed before the first \
         checkpoint) {restarted}, finished before the kill {completed}; all match the \
         uninterrupted run"
    );
    assert!(resumed > 0, "no trial was killed after a checkpoint");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn two_writers_never_share_a_run_directory() {
    let root = temp_dir("lock");
    let dir = root.join("run");
    // Long enough that the second writer arrives while the first one trains.
    let mut first = spawn_tiny(&dir, 120, &[]);
    // Wait until the first process holds the directory.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("run.json").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = train_tiny(&dir, 120, &["--overwrite"]);
    let first_status = first.wait().unwrap();
    assert!(first_status.success(), "the first run was disturbed");
    assert!(!second.ok() && !second.panicked(), "{}", second.stderr);
    assert!(second.stderr.contains("in use"), "{}", second.stderr);
    let losses = train_losses(&dir);
    assert_eq!(losses.len(), 120, "one run's lines, once each");
    std::fs::remove_dir_all(&root).ok();
}
