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
