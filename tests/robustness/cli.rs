//! The command line explains itself: values in `--help`, suggestions for typos, `--json` alike
//! in every subcommand that reports.

use crate::support::*;

#[test]
fn help_lists_the_values_and_typos_get_suggestions() {
    let help = run(&["train", "--help"]);
    assert!(help.ok(), "{}", help.stderr);
    assert!(
        help.stdout
            .contains("[possible values: flex, ndarray, wgpu]"),
        "{}",
        help.stdout
    );
    assert!(help.stdout.contains("[possible values: tiny, small]"));
    for (args, near) in [
        (&["train", "--backend", "flx"][..], "'flex'"),
        (&["demo", "--backend", "wgp"][..], "'wgpu'"),
        (&["study", "--preset", "smal"][..], "'small'"),
        (&["train", "--balancer", "los-free"][..], "'loss-free'"),
        (&["simulate", "--balancer", "bpi:t=4"][..], "'bip'"),
        (&["study", "--balancers", "none,qbb"][..], "'qb'"),
        (&["predict", "x", "--method", "arma"][..], "'arima'"),
    ] {
        let o = run(args);
        assert!(!o.ok() && !o.panicked(), "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("similar") && o.stderr.contains(near),
            "{args:?}: {}",
            o.stderr
        );
    }
}

#[test]
fn json_gives_one_parsable_line() {
    let parse = |args: &[&str]| -> serde_json::Value {
        let o = run(args);
        assert!(o.ok(), "{args:?}: {}", o.stderr);
        assert_eq!(o.stdout.trim().lines().count(), 1, "{args:?}: {}", o.stdout);
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let devices = parse(&["devices", "--json"]);
    assert_eq!(devices["flex"]["available"], true);
    assert!(devices["wgpu"]["available"].is_boolean());
    let demo = parse(&[
        "demo",
        "--json",
        "--tokens",
        "256",
        "--experts",
        "8",
        "--calls",
        "1",
    ]);
    assert_eq!(demo["requested"].as_array().map(Vec::len), Some(8));
    assert_eq!(demo["backend"], "flex");
}

#[test]
#[cfg(target_os = "linux")] // the Vulkan loader's variables; elsewhere Metal or DX12 answer
fn without_a_vulkan_driver_wgpu_is_refused_with_the_fix_not_run_on_opengl() {
    // Hide every Vulkan driver: wgpu would fall back to an OpenGL adapter (llvmpipe), where the
    // routing kernels are not tested; the CLI must refuse it and name the fix instead.
    let o = command(&["demo", "--backend", "wgpu", "--tokens", "64"])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("run burn-moe");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("OpenGL adapters are not used") && stderr.contains("mesa-vulkan-drivers"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
