//! Data- and expert-parallel training over MPI, end to end: the `burn-moe` binary (and the
//! `expert_parallel` example) launched by `mpirun` on 2 and 4 ranks (flex backend) against one
//! process, resume across rank counts, re-placement with replicas, and the clear failures
//! (ranks disagreeing, a batch or experts the ranks do not divide, a dead or hung rank).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_burn-moe");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-moe-mpi-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The training options every run here shares (tiny preset, 8 sequences of 32 tokens).
fn run_args(out: &Path, steps: u64, balancer: &str) -> Vec<String> {
    let out = out.display().to_string();
    let steps = steps.to_string();
    [
        "train",
        "--backend",
        "flex",
        "--preset",
        "tiny",
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--eval-every",
        "1000",
        "--checkpoint-every",
        "5",
        "--json",
        "--balancer",
        balancer,
        "--steps",
        &steps,
        "--out",
        &out,
    ]
    .map(String::from)
    .to_vec()
}

/// `mpirun` with the settings that keep a job on this machine (as root too, more ranks than
/// cores allowed).
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &ranks.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    cmd
}

/// Runs `args` on `ranks` ranks (1: a plain process, no launcher).
fn train(ranks: usize, args: &[String]) -> Output {
    let mut cmd = if ranks == 1 {
        Command::new(BIN)
    } else {
        let mut c = mpirun(ranks);
        c.arg(BIN);
        c
    };
    let out = cmd
        .args(args)
        .output()
        .expect("mpirun is installed (libopenmpi-dev openmpi-bin)");
    assert!(
        out.status.success(),
        "{ranks} ranks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `(step, train_loss)` of each step line of a run's metrics.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v["train_loss"].as_f64()?)))
        .collect()
}

fn assert_same_losses(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: step counts differ");
    for (&(s, x), &(t, y)) in a.iter().zip(b) {
        assert_eq!(s, t, "{what}");
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "{what}: step {s} loss {x} vs {y}"
        );
    }
}

#[test]
fn data_parallel_trains_as_one_process() {
    let dir = temp_dir("equal");
    // Loss-Free (balancer state from the summed counts) and quantile balancing (from the
    // gathered scores).
    for balancer in ["loss-free", "qb"] {
        let one = dir.join(format!("{balancer}-1"));
        train(1, &run_args(&one, 20, balancer));
        let reference = losses(&one);
        assert_eq!(reference.len(), 20);
        for ranks in [2, 4] {
            let run = dir.join(format!("{balancer}-{ranks}"));
            train(ranks, &run_args(&run, 20, balancer));
            assert_same_losses(
                &losses(&run),
                &reference,
                &format!("{balancer}, {ranks} ranks"),
            );
            // Rank 0 wrote the trace of the whole batch: the same token counts.
            let trace = |r: &Path| std::fs::read_to_string(r.join("trace.jsonl")).unwrap();
            assert_eq!(trace(&run).lines().count(), trace(&one).lines().count());
        }
    }
}

#[test]
fn a_checkpoint_of_4_ranks_resumes_on_2_and_on_1() {
    let dir = temp_dir("resume");
    let straight = dir.join("straight");
    train(1, &run_args(&straight, 15, "loss-free"));
    let four = dir.join("four");
    train(4, &run_args(&four, 10, "loss-free"));
    let expected = losses(&straight);
    for ranks in [2, 1] {
        let copy = dir.join(format!("on-{ranks}"));
        let resumed = resume_copy(&four, &copy, ranks, 15, &[]);
        assert_same_losses(&resumed, &expected, &format!("4 ranks, then {ranks}"));
    }
}

/// Copies the run `from` to `copy`, resumes the copy on `ranks` ranks to `steps` steps (with
/// `extra` options) and returns its losses.
fn resume_copy(
    from: &Path,
    copy: &Path,
    ranks: usize,
    steps: u64,
    extra: &[&str],
) -> Vec<(u64, f64)> {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(copy)
        .status()
        .unwrap();
    assert!(status.success());
    let mut args: Vec<String> = ["train", "--backend", "flex", "--json", "--steps"]
        .map(String::from)
        .to_vec();
    args.extend([
        steps.to_string(),
        "--resume".into(),
        copy.display().to_string(),
    ]);
    train(ranks, &with(args, extra));
    losses(copy)
}

/// `key` of each step line of a run's metrics.
fn metric(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["train_loss"].is_f64())
        .map(|v| v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}")))
        .collect()
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The layer itself: forward outputs, input, router and expert gradients of 2 and 4 ranks
/// equal one process's, with and without a capacity, with replicas, after a re-placement,
/// and with ranks that receive no token (the `expert_parallel` example checks them).
#[test]
fn the_expert_parallel_layer_equals_one_process() {
    let example = Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/expert_parallel");
    assert!(
        example.is_file(),
        "{} is built by cargo test --features mpi",
        example.display()
    );
    for ranks in [2, 4] {
        let out = mpirun(ranks).arg(&example).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{ranks} ranks: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.matches("expert parallel = one process").count(),
            4,
            "{stdout}"
        );
    }
}

/// Expert-parallel training (contiguous on 2 ranks; re-placed every 5 steps with 2 replicas
/// on 4; two groups of 2 ranks from a `place --write` file, re-placed from ARIMA forecasts)
/// trains as one process does.
#[test]
fn expert_parallel_training_equals_one_process() {
    let dir = temp_dir("ep");
    let one = dir.join("one");
    train(1, &run_args(&one, 20, "loss-free"));
    let reference = losses(&one);
    let two = dir.join("two");
    train(
        2,
        &with(run_args(&two, 20, "loss-free"), &["--expert-parallel", "2"]),
    );
    assert_same_losses(&losses(&two), &reference, "2 expert-parallel ranks");
    assert!(metric(&two, "all_to_all_bytes").iter().all(|&b| b > 0.0));
    let moved = dir.join("moved");
    let args = with(
        run_args(&moved, 20, "loss-free"),
        &[
            "--expert-parallel",
            "4",
            "--replace-every",
            "5",
            "--replace-window",
            "5",
            "--replicas",
            "2",
        ],
    );
    train(4, &args);
    assert_same_losses(
        &losses(&moved),
        &reference,
        "4 ranks, re-placed with replicas",
    );
    // The straggler factor: the busiest rank's expert rows over the mean, >= 1.
    assert!(metric(&moved, "straggler").iter().all(|&f| f >= 1.0));

    let file = dir.join("placement.json");
    let place = Command::new(BIN)
        .arg("place")
        .arg(one.join("trace.jsonl"))
        .args([
            "--devices",
            "2",
            "--replicas",
            "1",
            "--window",
            "5",
            "--horizon",
            "5",
        ])
        .args(["--stride", "5", "--json", "--write"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        place.status.success(),
        "{}",
        String::from_utf8_lossy(&place.stderr)
    );
    let placed = dir.join("placed");
    let file = file.display().to_string();
    let args = with(
        run_args(&placed, 20, "loss-free"),
        &[
            "--expert-parallel",
            "2",
            "--placement",
            &file,
            "--replace-every",
            "7",
            "--replace-window",
            "30",
            "--replace-method",
            "arima",
            "--replace-order",
            "2,0,1",
        ],
    );
    train(4, &args);
    assert_same_losses(
        &losses(&placed),
        &reference,
        "4 ranks in 2 groups, placement file, ARIMA re-placement",
    );
}

#[test]
fn an_expert_parallel_checkpoint_resumes_on_other_rank_counts() {
    let dir = temp_dir("ep-resume");
    let straight = dir.join("straight");
    train(1, &run_args(&straight, 15, "loss-free"));
    let four = dir.join("four");
    train(
        4,
        &with(
            run_args(&four, 10, "loss-free"),
            &["--expert-parallel", "4"],
        ),
    );
    let expected = losses(&straight);
    for (ranks, extra) in [(2, vec!["--expert-parallel", "2"]), (1, vec![])] {
        let copy = dir.join(format!("on-{ranks}"));
        let resumed = resume_copy(&four, &copy, ranks, 15, &extra);
        assert_same_losses(&resumed, &expected, &format!("4 ranks, then {ranks}"));
    }
}

#[test]
fn expert_parallel_setups_that_cannot_work_are_refused() {
    let dir = temp_dir("ep-refused");
    let mut cmd = mpirun(2);
    cmd.arg(BIN).args(with(
        run_args(&dir.join("a"), 5, "none"),
        &["--expert-parallel", "4"],
    ));
    let err = failing(cmd);
    assert!(
        err.contains("--expert-parallel 4 does not divide the run's 2 ranks"),
        "{err}"
    );

    let mut args = with(
        run_args(&dir.join("b"), 5, "none"),
        &["--expert-parallel", "3"],
    );
    let at = args.iter().position(|a| a == "--batch-size").unwrap();
    args[at + 1] = "6".into();
    let mut cmd = mpirun(3);
    cmd.arg(BIN).args(args);
    let err = failing(cmd);
    assert!(
        err.contains("3 expert-parallel ranks do not divide the 8 experts"),
        "{err}"
    );

    let file = dir.join("p.json");
    std::fs::write(&file, r#"{"devices": 4, "layers": [[[0],[1],[2],[3],[0],[1],[2],[3]], [[0],[1],[2],[3],[0],[1],[2],[3]]]}"#).unwrap();
    let file = file.display().to_string();
    let mut cmd = mpirun(2);
    cmd.arg(BIN).args(with(
        run_args(&dir.join("c"), 5, "none"),
        &["--expert-parallel", "2", "--placement", &file],
    ));
    let err = failing(cmd);
    assert!(
        err.contains("layer 0 is for 4 ranks, an expert-parallel group has 2"),
        "{err}"
    );
}

fn failing(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ranks_that_disagree_or_do_not_divide_the_batch_are_refused() {
    let dir = temp_dir("refused");
    let mut cmd = mpirun(1);
    let mut a = run_args(&dir.join("a"), 5, "loss-free");
    a.extend(["--seed".into(), "1".into()]);
    let mut b = run_args(&dir.join("a"), 5, "loss-free");
    b.extend(["--seed".into(), "2".into()]);
    cmd.arg(BIN).args(&a).args([":", "-np", "1", BIN]).args(&b);
    assert!(failing(cmd).contains("ranks disagree on the run"));

    let mut cmd = mpirun(3);
    cmd.arg(BIN).args(run_args(&dir.join("b"), 5, "loss-free"));
    assert!(failing(cmd).contains("3 ranks do not divide the batch of 8 sequences"));

    let mut cmd = mpirun(2);
    cmd.arg(BIN).args(run_args(&dir.join("c"), 5, "bip"));
    assert!(failing(cmd).contains("use route-then-update (bip-lagged)"));
}

/// Starts a long 2-rank run (with `extra` options) and returns it once it has trained a few
/// steps, with the pid of its rank 1.
fn long_run(dir: &Path, extra: &[&str]) -> (Child, u32) {
    let mut cmd = mpirun(2);
    let mut args = with(run_args(dir, 1_000_000, "none"), extra);
    args.extend(["--rank-timeout".into(), "5".into()]);
    cmd.arg(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
        let steps = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        if steps.lines().count() >= 3
            && let Some(pid) = rank_pid(dir, 1)
        {
            return (child, pid);
        }
    }
    child.kill().ok();
    child.wait().ok();
    panic!("the run did not train 3 steps within 120 s");
}

/// The pid of the rank `rank` process training into `dir`.
fn rank_pid(dir: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let has = |bytes: &[u8], s: &str| bytes.split(|&b| b == 0).any(|w| w == s.as_bytes());
        (has(&cmdline, BIN) && has(&cmdline, &dir) && has(&environ, &want)).then_some(pid)
    })
}

/// Waits for the job to end (at most 60 s) and returns its stderr.
fn ends_with_error(mut child: Child) -> String {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("the job did not end within 60 s of losing a rank");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_killed_rank_ends_the_job() {
    let dir = temp_dir("killed");
    let (child, pid) = long_run(&dir, &[]);
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let err = ends_with_error(child);
    assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
}

/// Expert parallel here: the survivor may be waiting in an all-to-all as well as in an
/// all-reduce.
#[test]
fn a_hung_rank_ends_the_job_after_the_rank_timeout() {
    let dir = temp_dir("hung");
    let (child, pid) = long_run(&dir, &["--expert-parallel", "2"]);
    let status = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let err = ends_with_error(child);
    assert!(
        err.contains("rank 0 of 2 waited") && err.contains("one of them has died or hung"),
        "{err}"
    );
}
