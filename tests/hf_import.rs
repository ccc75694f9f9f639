//! Hugging Face MoE blocks loaded from safetensors against `transformers` itself: each fixture
//! of `tests/fixtures/hf` (made by `make_fixtures.py` there) holds a tiny random block of one
//! model family, a fixed input and the output `transformers` computed for it.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use burn_moe::BackendKind;
use burn_moe::hf::{HfExpertLayout, HfFamily, HfTensors, load_moe, save_moe};
use burn_moe::kernels::KernelPath;
use burn_moe::moe::MoeConfig;
use common::*;

const PREFIX: &str = "model.layers.0.mlp.";
const FIXTURES: [&str; 7] = [
    "mixtral",
    "mixtral-per-expert",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "deepseek_v3-per-expert",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// The fixture's input and the output `transformers` computed, `[2, 5, hidden]`.
fn input_and_expected(dir: &Path, d: usize, device: &Device) -> (Tensor<3>, Vec<f32>) {
    let file = HfTensors::read(&dir.join("model.safetensors")).unwrap();
    let x = file
        .get("fixture.input", [2, 5, d], "input", device)
        .unwrap();
    let y = file
        .get("fixture.output", [2, 5, d], "output", device)
        .unwrap();
    (x, host(y))
}

fn max_abs_error(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads the fixture's block with `config` and returns the worst absolute error of its
/// output against `transformers`' on `device`.
fn error_of(name: &str, config: &MoeConfig, device: &Device) -> f32 {
    let dir = fixture(name);
    let (family, _) = HfFamily::read_config(&dir.join("config.json")).unwrap();
    let moe = load_moe(
        &dir.join("model.safetensors"),
        PREFIX,
        family,
        config,
        device,
    )
    .unwrap();
    let (x, expected) = input_and_expected(&dir, config.d_model, device);
    let y = host(moe.forward(x).output);
    max_abs_error(&y, &expected)
}

#[test]
fn every_family_matches_transformers_on_every_backend_and_routing_path() {
    let mut cases: Vec<(String, Device)> = vec![
        ("ndarray".into(), ndarray(false)),
        ("flex".into(), BackendKind::Flex.device(false).unwrap()),
    ];
    if let Some(d) = wgpu_device(false) {
        cases.push(("wgpu".into(), d));
    }
    for name in FIXTURES {
        let (family, config) = HfFamily::read_config(&fixture(name).join("config.json")).unwrap();
        assert_eq!(
            family.model_type(),
            name.trim_end_matches("-per-expert"),
            "{name}"
        );
        for (backend, device) in &cases {
            // The routing kernels: WGSL on wgpu (Auto), tensor ops on every device.
            for path in [KernelPath::Auto, KernelPath::Portable] {
                let config = config.clone().with_kernel_path(path);
                let err = error_of(name, &config, device);
                eprintln!("{name} on {backend}, kernel path {path:?}: max |error| {err:.2e}");
                assert!(
                    err <= 1e-5,
                    "{name} on {backend} ({path:?}): max |error| {err}"
                );
            }
        }
    }
}

#[test]
fn the_group_limit_and_the_bias_decide_deepseek_choices() {
    // Without them the same weights route differently and the output moves away.
    let device = ndarray(false);
    let (_, config) = HfFamily::read_config(&fixture("deepseek_v3").join("config.json")).unwrap();
    assert!(error_of("deepseek_v3", &config, &device) <= 1e-5);
    let ungrouped = config.clone().with_expert_groups(1);
    assert!(error_of("deepseek_v3", &ungrouped, &device) > 1e-3);
    let dir = fixture("deepseek_v3");
    let mut moe = load_moe(
        &dir.join("model.safetensors"),
        PREFIX,
        HfFamily::DeepseekV3,
        &config,
        &device,
    )
    .unwrap();
    moe.balancer_state = burn::module::Param::from_tensor(Tensor::zeros([8], &device));
    let (x, expected) = input_and_expected(&dir, config.d_model, &device);
    let y = host(moe.forward(x).output);
    assert!(
        max_abs_error(&y, &expected) > 1e-3,
        "the bias changed no choice"
    );
}

#[test]
fn saving_writes_the_checkpoint_layout_back() {
    let device = ndarray(false);
    let tmp = std::env::temp_dir().join(format!("burn-moe-hf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for (name, layout) in [
        ("mixtral", HfExpertLayout::Stacked),
        ("mixtral-per-expert", HfExpertLayout::PerExpert),
        ("qwen2_moe", HfExpertLayout::Stacked),
        ("deepseek_v3-per-expert", HfExpertLayout::PerExpert),
    ] {
        let dir = fixture(name);
        let (family, config) = HfFamily::read_config(&dir.join("config.json")).unwrap();
        let original = dir.join("model.safetensors");
        let moe = load_moe(&original, PREFIX, family, &config, &device).unwrap();
        let saved = tmp.join(format!("{name}.safetensors"));
        save_moe(&moe, family, PREFIX, layout, &saved).unwrap();
        // Every tensor of the block comes back under its own name, with its values.
        let (a, b) = (
            HfTensors::read(&original).unwrap(),
            HfTensors::read(&saved).unwrap(),
        );
        let block: Vec<&str> = a.names().filter(|n| n.starts_with(PREFIX)).collect();
        assert_eq!(block, b.names().collect::<Vec<_>>(), "{name}: tensor names");
        for n in block {
            let get =
                |f: &HfTensors| -> Vec<f32> { f.raw(n).unwrap().try_to_vec::<f32>().unwrap() };
            assert_eq!(get(&a), get(&b), "{name}: `{n}`");
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn a_checkpoint_that_does_not_fit_names_the_tensor() {
    let device = ndarray(false);
    let dir = fixture("qwen2_moe");
    let weights = dir.join("model.safetensors");
    let (family, config) = HfFamily::read_config(&dir.join("config.json")).unwrap();
    let err = |r: burn_moe::Result<burn_moe::Moe>| r.map(|_| ()).unwrap_err().to_string();

    // A directory is read as the shards of one checkpoint.
    assert!(load_moe(&dir, PREFIX, family, &config, &device).is_ok());
    let e = err(load_moe(
        &weights,
        "model.layers.7.mlp.",
        family,
        &config,
        &device,
    ));
    assert!(
        e.contains("`model.layers.7.mlp.gate.weight` not found"),
        "{e}"
    );
    let mut wide = config.clone();
    wide.d_ff = 5;
    let e = err(load_moe(&weights, PREFIX, family, &wide, &device));
    assert!(
        e.contains("experts.gate_up_proj` has shape [8, 8, 8]"),
        "{e}"
    );
    let no_shared = config.clone().with_num_shared_experts(0);
    let e = err(load_moe(&weights, PREFIX, family, &no_shared, &device));
    assert!(e.contains("shared experts"), "{e}");
    let e = err(load_moe(
        &weights,
        PREFIX,
        HfFamily::Mixtral,
        &config,
        &device,
    ));
    assert!(e.contains("mixtral"), "{e}");
    let e = err(load_moe(
        &dir.join("missing.safetensors"),
        PREFIX,
        family,
        &config,
        &device,
    ));
    assert!(e.contains("no such file or directory"), "{e}");
    let corrupt = std::env::temp_dir().join(format!("burn-moe-corrupt-{}.st", std::process::id()));
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let e = err(load_moe(&corrupt, PREFIX, family, &config, &device));
    assert!(e.contains("not a readable safetensors file"), "{e}");
    std::fs::remove_file(&corrupt).ok();

    let e = HfFamily::from_model_type("llama").unwrap_err().to_string();
    assert!(e.contains("llama") && e.contains("deepseek_v3"), "{e}");
    let e = HfFamily::read_config(&dir.join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.json"), "{e}");
}
