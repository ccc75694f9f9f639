//! Helpers shared by the integration tests: devices, seeded data, host read-back.
#![allow(dead_code)]

use burn::tensor::{Device, Tensor, TensorData};
use burn_moe::BackendKind;
use burn_moe::device::probe_wgpu_adapter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The wgpu device, or `None` (skip) when this machine has no adapter. With
/// `BURN_MOE_REQUIRE_WGPU=1` (set by CI) a missing adapter fails the test instead, so CI can
/// never pass with the wgpu tests silently skipped.
pub fn wgpu_device(autodiff: bool) -> Option<Device> {
    match probe_wgpu_adapter() {
        Ok(adapter) => {
            eprintln!("wgpu adapter: {adapter}");
            Some(
                BackendKind::Wgpu
                    .device(autodiff)
                    .expect("adapter was found"),
            )
        }
        Err(e) if std::env::var("BURN_MOE_REQUIRE_WGPU").as_deref() == Ok("1") => {
            panic!("BURN_MOE_REQUIRE_WGPU=1 but {e}")
        }
        Err(e) => {
            eprintln!("skipping wgpu: {e}");
            None
        }
    }
}

/// Every backend available here, the CPU ones always.
pub fn devices(autodiff: bool) -> Vec<(BackendKind, Device)> {
    let mut out = vec![
        (
            BackendKind::Ndarray,
            BackendKind::Ndarray.device(autodiff).unwrap(),
        ),
        (
            BackendKind::Flex,
            BackendKind::Flex.device(autodiff).unwrap(),
        ),
    ];
    if let Some(d) = wgpu_device(autodiff) {
        out.push((BackendKind::Wgpu, d));
    }
    out
}

pub fn ndarray(autodiff: bool) -> Device {
    BackendKind::Ndarray.device(autodiff).unwrap()
}

/// Standard normal values from a seeded generator (Box-Muller), independent of any backend RNG.
pub fn normal_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

pub fn tensor3(values: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Largest `|a - b| / (atol + rtol * |b|)`; at most 1 means every element is within tolerance.
pub fn worst_error(a: &[f32], b: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (atol + rtol * y.abs()))
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) {
    let w = worst_error(a, b, atol, rtol);
    assert!(
        w <= 1.0,
        "{what}: worst error is {w:.3}x the tolerance (atol {atol}, rtol {rtol})"
    );
}
