//! Every command with a `--seed` repeats itself on the CPU backends; offset balancers route on
//! wgpu as on ndarray, and repeat there too.

use crate::support::*;

/// The JSON summary line of `args`, without the fields that are timings.
fn summary(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.ok(), "{args:?}: {}", o.stderr);
    let line = o.stdout.lines().last().unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    strip_timings(&mut v);
    v
}

fn strip_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| {
                !(k.contains("ms")
                    || k.contains("seconds")
                    || k.contains("per_s")
                    || k == "out_dir")
            });
            map.values_mut().for_each(strip_timings);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_timings),
        _ => {}
    }
}

#[test]
fn simulate_runs_every_balancer_and_repeats_itself_on_the_cpu_backends() {
    for backend in ["flex", "ndarray"] {
        for balancer in burn_moe::balance::BalancerConfig::NAMES {
            let args = [
                "simulate",
                "--balancer",
                balancer,
                "--steps",
                "5",
                "--tokens",
                "1024",
                "--seed",
                "3",
                "--backend",
                backend,
                "--json",
            ];
            assert_eq!(summary(&args), summary(&args), "{backend} {balancer}");
        }
    }
}

/// The offset balancers on wgpu: two processes give the same routing, and the same as ndarray
/// (the router logits differ in their last bits between the backends; prices set between
/// values keep tokens off exact ties). 64 experts, 20 steps, as in the issue that found it.
#[test]
fn offset_balancers_route_on_wgpu_as_on_ndarray_and_repeat() {
    if crate::common::wgpu_device(false).is_none() {
        return;
    }
    for (balancer, experts) in [
        ("bip", "64"),
        ("bip-noclamp", "64"),
        ("qb", "64"),
        ("qb-hist", "64"),
        ("loss-free", "16"),
    ] {
        let args = |backend| {
            [
                "simulate",
                "--balancer",
                balancer,
                "--experts",
                experts,
                "--top-k",
                "2",
                "--tokens",
                "4096",
                "--steps",
                "20",
                "--seed",
                "7",
                "--backend",
                backend,
                "--json",
            ]
        };
        let strip_backend = |mut v: serde_json::Value| {
            v.as_object_mut().map(|m| m.remove("backend"));
            v
        };
        let first = summary(&args("wgpu"));
        assert_eq!(first, summary(&args("wgpu")), "{balancer}: two wgpu runs");
        assert_eq!(
            strip_backend(first),
            strip_backend(summary(&args("ndarray"))),
            "{balancer}: wgpu vs ndarray"
        );
    }
}

#[test]
fn train_generate_and_demo_repeat_themselves() {
    let root = temp_dir("repeat");
    let (a, b) = (root.join("a"), root.join("b"));
    for dir in [&a, &b] {
        let o = train_tiny(dir, 5, &["--seed", "9"]);
        assert!(o.ok(), "{}", o.stderr);
    }
    assert_eq!(train_losses(&a), train_losses(&b));
    let generate = |dir: &std::path::Path, extra: &[&str]| {
        let d = dir.to_str().unwrap();
        let mut args = vec![
            "generate",
            "--checkpoint",
            d,
            "--prompt",
            "To be",
            "--max-tokens",
            "40",
            "--seed",
            "5",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.ok(), "{}", o.stderr);
        o.stdout
    };
    assert_eq!(generate(&a, &[]), generate(&b, &[]));
    let json: serde_json::Value = serde_json::from_str(generate(&a, &["--json"]).trim()).unwrap();
    assert_eq!(json["bytes"], 40);
    assert_eq!(json["prompt"], "To be");

    // A run written before the layer had its group-limit, scaling and shared-gate fields:
    // it evaluates as it did and resumes.
    let old = root.join("old");
    copy_dir(&a, &old);
    let manifest = old.join("run.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    for key in [
        "routed_scaling_factor",
        "expert_groups",
        "top_groups",
        "group_score",
        "shared_expert_gate",
    ] {
        v["model"]["moe"].as_object_mut().unwrap().remove(key);
    }
    std::fs::write(&manifest, serde_json::to_string(&v).unwrap()).unwrap();
    let eval = |dir: &std::path::Path| {
        let o = run(&["eval", "--checkpoint", dir.to_str().unwrap(), "--json"]);
        assert!(o.ok(), "{}", o.stderr);
        o.stdout
    };
    assert_eq!(eval(&a), eval(&old));
    let resumed = run(&[
        "train",
        "--resume",
        old.to_str().unwrap(),
        "--steps",
        "6",
        "--json",
    ]);
    assert!(resumed.ok(), "{}", resumed.stderr);
    assert!(!json["generated"].as_str().unwrap_or("").is_empty());
    for backend in ["flex", "ndarray"] {
        let demo = || {
            let o = run(&[
                "demo",
                "--backend",
                backend,
                "--tokens",
                "512",
                "--calls",
                "1",
                "--seed",
                "4",
            ]);
            assert!(o.ok(), "{}", o.stderr);
            // Routing statistics, not timings.
            o.stdout
                .lines()
                .filter(|l| !l.contains("ms") && !l.contains("tokens/s"))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(demo(), demo(), "{backend}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn study_repeats_itself() {
    let root = temp_dir("repeat-study");
    let run_study = |name: &str| {
        let out = root.join(name);
        let o = run(&[
            "study",
            "--out",
            out.to_str().unwrap(),
            "--preset",
            "tiny",
            "--steps",
            "4",
            "--balancers",
            "none,bip",
            "--eval-every",
            "2",
            "--eval-batches",
            "2",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--seed",
            "5",
            "--no-plots",
            "--json",
        ]);
        assert!(o.ok(), "{}", o.stderr);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap())
                .unwrap();
        strip_timings(&mut v);
        v
    };
    assert_eq!(run_study("a"), run_study("b"));
    std::fs::remove_dir_all(&root).ok();
}

/// DeepSeekMoE's fine-grained layout from the command line: many narrow experts, a larger
/// top-k and a shared expert, balanced by QB, with a capacity; the run records what it trained
/// and each step's dropped share.
#[test]
fn fine_grained_group_limited_experts_with_a_shared_expert_train() {
    let dir = temp_dir("fine-grained");
    let o = train_tiny(
        &dir,
        3,
        &[
            "--experts",
            "32",
            "--top-k",
            "8",
            "--expert-width",
            "32",
            "--shared-experts",
            "1",
            "--balancer",
            "qb-hist:bins=200",
            "--capacity-factor",
            "1.0",
            "--expert-groups",
            "4",
            "--top-groups",
            "2",
        ],
    );
    assert!(o.ok(), "{}", o.stderr);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    let moe = &run["model"]["moe"];
    assert_eq!(
        (
            moe["num_experts"].as_u64(),
            moe["top_k"].as_u64(),
            moe["d_ff"].as_u64()
        ),
        (Some(32), Some(8), Some(32))
    );
    assert_eq!(moe["num_shared_experts"].as_u64(), Some(1));
    assert_eq!(moe["capacity_factor"].as_f64(), Some(1.0));
    assert_eq!(
        (moe["expert_groups"].as_u64(), moe["top_groups"].as_u64()),
        (Some(4), Some(2))
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"dropped\""))
            .count(),
        3,
        "each step logs its dropped share"
    );
    assert_eq!(
        moe["balancer"]["Quantile"]["estimator"]["Histogram"]["bins"].as_u64(),
        Some(200)
    );
    assert_eq!(train_losses(&dir).len(), 3);
    std::fs::remove_dir_all(&dir).ok();
}
