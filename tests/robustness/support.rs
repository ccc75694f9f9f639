//! Running the `burn-moe` binary and looking at what it left on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one invocation did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A panic or an abort instead of an error.
    pub fn panicked(&self) -> bool {
        self.code.is_none()
            || self.code == Some(101)
            || self.stderr.contains("panicked")
            || self.stderr.contains("memory allocation")
            || self.stderr.contains("capacity overflow")
    }
}

/// The binary, with logging quiet and no colour.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burn-moe"));
    cmd.args(args)
        .env("RUST_LOG", "error")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `burn-moe ARGS` to the end (at most `limit`; a hang fails the test).
pub fn run_for(args: &[&str], limit: Duration) -> Outcome {
    let mut child = command(args).spawn().expect("start burn-moe");
    let started = Instant::now();
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!("burn-moe {args:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Runs `burn-moe ARGS` with a 10-minute limit.
pub fn run(args: &[&str]) -> Outcome {
    run_for(args, Duration::from_secs(600))
}

/// A fresh, empty directory for this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-moe-cli-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` (but the lock file) with its contents.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Copies a run directory (one level of checkpoint subdirectories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `train` options of a run that takes a few seconds.
pub const TINY: &[&str] = &[
    "--preset",
    "tiny",
    "--batch-size",
    "4",
    "--seq-len",
    "32",
    "--warmup",
    "2",
];

/// The arguments of a tiny training run of `steps` steps into `out`.
pub fn tiny_args(out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--out", out.to_str().unwrap(), "--steps"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(steps.to_string());
    args.extend(TINY.iter().chain(extra).map(|s| s.to_string()));
    args
}

/// Starts a tiny training run in the background, its output discarded.
pub fn spawn_tiny(out: &Path, steps: u64, extra: &[&str]) -> std::process::Child {
    let args = tiny_args(out, steps, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start burn-moe")
}

/// Trains a tiny run of `steps` steps into `out` and returns the outcome.
pub fn train_tiny(out: &Path, steps: u64, extra: &[&str]) -> Outcome {
    let args = tiny_args(out, steps, extra);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `(step, train_loss)` of every training line of a run's metrics, as written.
pub fn train_losses(dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("train_loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["train_loss"].to_string()))
        .collect()
}
