//! The routing kernels (`burn_moe::kernels`) against the plain-Rust reference (`burn_moe::routing`,
//! `burn_moe::balance`) and, on wgpu (lavapipe in CI), the WGSL shaders against the portable
//! tensor-op path on the same device: ties, k = 1 and k = experts, one token, token counts that
//! are not multiples of the workgroup sizes, 256 experts, NaN logits.
//!
//! Decisions (indices, positions, counts) must be identical; float outputs agree to 1e-6 (gates,
//! Loss-Free bias); BIP prices are exact selections and must be bitwise equal.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_moe::balance::{LossFreeUpdate, bip, loss_free, quantile};
use burn_moe::kernels::{self, GateRule, KernelPath};
use burn_moe::moe::ScoreFunction;
use burn_moe::routing::capacity::admit;
use burn_moe::routing::scores::scores_from_logits;
use burn_moe::routing::{GroupLimit, GroupScore, RoutingRule, plan_routing};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn float2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn float1(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

fn int2(values: Vec<i64>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap()
}

/// Logits on a coarse grid (many exact ties) or standard normal.
fn logits(n: usize, m: usize, coarse: bool, seed: u64) -> Vec<f32> {
    if coarse {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n * m)
            .map(|_| rng.random_range(0..3) as f32 * 0.5)
            .collect()
    } else {
        normal_vec(n * m, seed)
    }
}

struct GateCase {
    n: usize,
    m: usize,
    k: usize,
    coarse: bool,
    sigmoid: bool,
    normalize: bool,
    offset: bool,
    random_second: bool,
    group_limit: Option<GroupLimit>,
}

fn gate_cases() -> Vec<GateCase> {
    let c = |n, m, k, coarse, sigmoid, normalize, offset, random_second| GateCase {
        n,
        m,
        k,
        coarse,
        sigmoid,
        normalize,
        offset,
        random_second,
        group_limit: None,
    };
    let grouped = |case: GateCase, groups, top_groups, score| GateCase {
        group_limit: Some(GroupLimit {
            groups,
            top_groups,
            score,
        }),
        ..case
    };
    vec![
        // Group-limited routing: DeepSeek-V3's form (sigmoid, offset, sum of the top two),
        // V2's (softmax, max), one kept group, all groups kept, 32 groups, coarse ties.
        grouped(
            c(200, 16, 4, false, true, true, true, false),
            4,
            2,
            GroupScore::TopTwoSum,
        ),
        grouped(
            c(150, 24, 2, false, false, false, true, false),
            6,
            3,
            GroupScore::Max,
        ),
        grouped(
            c(90, 16, 2, true, false, false, false, false),
            8,
            1,
            GroupScore::TopTwoSum,
        ),
        grouped(
            c(64, 8, 3, false, true, false, true, false),
            2,
            2,
            GroupScore::Max,
        ),
        grouped(
            c(40, 64, 2, true, true, false, true, false),
            32,
            3,
            GroupScore::TopTwoSum,
        ),
        c(1, 4, 1, false, false, false, false, false),
        c(1, 8, 8, false, true, true, true, false),
        c(100, 16, 2, true, false, false, false, false),
        c(300, 16, 2, false, true, true, true, false),
        c(257, 8, 2, false, false, true, false, true),
        c(130, 256, 2, false, false, false, true, false),
        c(65, 256, 1, true, true, false, true, false),
        c(33, 16, 16, true, false, true, true, false),
    ]
}

/// The kernels' top-k against `plan_routing` on host scores.
fn check_gate_topk(device: &Device, path: KernelPath, what: &str) {
    for (i, case) in gate_cases().iter().enumerate() {
        let (n, m, k) = (case.n, case.m, case.k);
        let l = logits(n, m, case.coarse, 100 + i as u64);
        let offset: Vec<f32> = if case.offset {
            normal_vec(m, 200 + i as u64)
                .iter()
                .map(|v| v * 0.05)
                .collect()
        } else {
            vec![0.0; m]
        };
        let draws: Vec<f32> = {
            let mut rng = StdRng::seed_from_u64(300 + i as u64);
            (0..n).map(|_| rng.random()).collect()
        };
        let score_fn = if case.sigmoid {
            ScoreFunction::Sigmoid
        } else {
            ScoreFunction::Softmax
        };
        let scores = scores_from_logits(&l, m, score_fn);
        let rule = RoutingRule {
            top_k: k,
            groups: 1,
            capacity_factor: None,
            random_second: case.random_second,
            group_limit: case.group_limit,
        };
        let plan = plan_routing(
            &scores,
            Some(&offset),
            n,
            m,
            &rule,
            case.random_second.then_some(&draws[..]),
        )
        .unwrap();
        let top = kernels::gate_topk(
            float2(l, [n, m], device),
            float1(offset, device),
            case.random_second.then(|| float1(draws.clone(), device)),
            GateRule {
                top_k: k,
                sigmoid: case.sigmoid,
                normalize: case.normalize,
                group_limit: case.group_limit,
            },
            path,
        )
        .unwrap();
        let indices = ints(top.indices);
        let expected: Vec<i64> = plan.choices.iter().map(|&c| c as i64).collect();
        assert_eq!(indices, expected, "{what} case {i}: indices");
        let used: Vec<bool> = ints(top.used).iter().map(|&u| u == 1).collect();
        assert_eq!(used, plan.used, "{what} case {i}: used");
        let mut gates_ref: Vec<f32> = plan
            .choices
            .iter()
            .enumerate()
            .map(|(a, &e)| scores[(a / k) * m + e as usize])
            .collect();
        if case.normalize {
            for row in gates_ref.chunks_mut(k) {
                let s: f32 = row.iter().sum();
                row.iter_mut().for_each(|g| *g /= s);
            }
        }
        assert_close(
            &format!("{what} case {i}: gates"),
            &host(top.gates),
            &gates_ref,
            1e-6,
            1e-5,
        );
    }
}

/// Positions by the plain rule: per group, rank-major then token order, one counter per expert.
fn reference_positions(
    choices: &[u32],
    used: &[bool],
    k: usize,
    m: usize,
    groups: usize,
) -> (Vec<i64>, Vec<i64>) {
    let n = choices.len() / k;
    let s = n / groups;
    let mut positions = vec![-1i64; n * k];
    let mut requested = vec![0i64; groups * m];
    for g in 0..groups {
        for r in 0..k {
            for t in g * s..(g + 1) * s {
                let a = t * k + r;
                if used[a] {
                    let e = choices[a] as usize;
                    positions[a] = requested[g * m + e];
                    requested[g * m + e] += 1;
                }
            }
        }
    }
    (positions, requested)
}

fn check_histogram(device: &Device, path: KernelPath, what: &str) {
    // (tokens, k, experts, groups, capacity)
    let cases = [
        (1, 1, 4, 1, None),
        (1, 2, 2, 1, Some(1)),
        (300, 2, 16, 1, Some(40)),
        (1000, 2, 16, 4, Some(20)),
        (777, 1, 8, 7, None),
        (200, 2, 256, 2, Some(1)),
        (64, 4, 4, 2, Some(3)),
        (50, 3, 3, 1, None),
    ];
    for (i, &(n, k, m, groups, capacity)) in cases.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(400 + i as u64);
        // Skewed choices so that capacity binds; some 2nd choices switched off.
        let choices: Vec<u32> = (0..n * k)
            .map(|_| (rng.random::<f32>().powi(3) * m as f32) as u32 % m as u32)
            .collect();
        let used: Vec<bool> = (0..n * k)
            .map(|a| a % k == 0 || rng.random::<f32>() > 0.2)
            .collect();
        let hist = kernels::expert_histogram(
            int2(choices.iter().map(|&c| c as i64).collect(), [n, k], device),
            int2(used.iter().map(|&u| u as i64).collect(), [n, k], device),
            m,
            groups,
            capacity,
            path,
        )
        .unwrap();
        let (positions, requested) = reference_positions(&choices, &used, k, m, groups);
        assert_eq!(
            ints(hist.positions.clone()),
            positions,
            "{what} case {i}: positions"
        );
        assert_eq!(
            ints(hist.requested),
            requested,
            "{what} case {i}: requested"
        );
        let admitted: Vec<i64> = requested
            .iter()
            .map(|&r| capacity.map_or(r, |c| r.min(c as i64)))
            .collect();
        assert_eq!(ints(hist.admitted), admitted, "{what} case {i}: admitted");
        // Capacity dropping in token order: the same assignments as the reference admission.
        let reference = admit(&choices, &used, k, m, groups, capacity);
        let got: Vec<bool> = ints(hist.positions)
            .iter()
            .map(|&p| p >= 0 && capacity.is_none_or(|c| (p as usize) < c))
            .collect();
        assert_eq!(
            got, reference.admitted,
            "{what} case {i}: admitted assignments"
        );
    }
}

fn check_loss_free(device: &Device, path: KernelPath, what: &str) {
    for (i, &(m, groups)) in [(4, 1), (16, 3), (256, 2), (300, 1)].iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(500 + i as u64);
        let counts: Vec<i64> = (0..groups * m).map(|_| rng.random_range(0..50)).collect();
        let bias: Vec<f32> = normal_vec(m, 600 + i as u64)
            .iter()
            .map(|v| v * 0.01)
            .collect();
        let totals: Vec<usize> = (0..m)
            .map(|e| (0..groups).map(|g| counts[g * m + e] as usize).sum())
            .collect();
        for update in [LossFreeUpdate::Sign, LossFreeUpdate::Proportional] {
            let expected = loss_free::update_bias(&bias, &totals, 1e-3, update);
            let got = kernels::loss_free_update(
                float1(bias.clone(), device),
                int2(counts.clone(), [groups, m], device),
                1e-3,
                update,
                path,
            )
            .unwrap();
            assert_close(
                &format!("{what} case {i} {update:?}"),
                &host(got),
                &expected,
                1e-7,
                1e-6,
            );
        }
    }
}

/// Softmax scores `[n, m]` of seeded logits and a small per-expert offset (BIP's `q`, QB's `b`).
fn scores_and_offset(n: usize, m: usize, coarse: bool, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let scores = scores_from_logits(&logits(n, m, coarse, seed), m, ScoreFunction::Softmax);
    let offset = normal_vec(m, seed + 100).iter().map(|v| v * 0.01).collect();
    (scores, offset)
}

fn check_bip(device: &Device, path: KernelPath, what: &str) {
    // (tokens, experts, k, iterations, clamp, coarse)
    let cases = [
        (1, 4, 1, 1, true, false),
        (64, 8, 2, 1, true, true),
        (300, 16, 2, 2, false, false),
        (257, 16, 4, 3, true, true),
        (40, 8, 8, 1, true, false),
        (129, 256, 2, 1, false, false),
    ];
    for (i, &(n, m, k, iterations, clamp, coarse)) in cases.iter().enumerate() {
        let (scores, q0) = scores_and_offset(n, m, coarse, 700 + i as u64);
        let expected = bip::dual_prices(&scores, &q0, n, m, k, iterations, clamp);
        let got = kernels::bip_dual(
            float2(scores, [n, m], device),
            float1(q0, device),
            k,
            iterations,
            clamp,
            path,
        )
        .unwrap();
        assert_eq!(host(got), expected, "{what} case {i}: prices");
    }
}

/// QB's bias update against `balance::quantile::quantile_bias`: exact and histogram
/// estimators, with and without EMA. Selections and counts are exact; only the centring mean
/// is summed in another order, hence the 1e-6 tolerance (a wrong selection or count moves a
/// bias by the gap between two scores or a fraction of a bin, ~1e-4 here).
fn check_qb(device: &Device, path: KernelPath, what: &str) {
    use burn_moe::balance::QuantileEstimator::{Exact, Histogram};
    // (tokens, experts, k, estimator, ema, coarse)
    let cases = [
        (1, 4, 1, Exact, 0.0, false),
        (64, 8, 2, Exact, 0.0, true),
        (300, 16, 2, Histogram { bins: 1000 }, 0.0, false),
        (257, 16, 4, Histogram { bins: 64 }, 0.5, true),
        (40, 8, 8, Exact, 0.9, false),
        (129, 256, 2, Histogram { bins: 4096 }, 0.0, false),
        (513, 64, 8, Exact, 0.0, false),
    ];
    for (i, &(n, m, k, estimator, ema, coarse)) in cases.iter().enumerate() {
        let (scores, b0) = scores_and_offset(n, m, coarse, 1700 + i as u64);
        let expected = quantile::quantile_bias(&scores, &b0, m, k, estimator, ema);
        let got = kernels::qb_update(
            float2(scores, [n, m], device),
            float1(b0, device),
            k,
            estimator,
            ema,
            path,
        )
        .unwrap();
        assert_close(
            &format!("{what} case {i} {estimator:?}"),
            &host(got),
            &expected,
            1e-6,
            0.0,
        );
    }
}

fn check_nan(device: &Device, path: KernelPath, what: &str) {
    let (n, m) = (70, 8);
    let mut l = normal_vec(n * m, 900);
    l[5 * m + 3] = f32::NAN;
    l[69 * m] = f32::INFINITY;
    let top = kernels::gate_topk(
        float2(l, [n, m], device),
        Tensor::zeros([m], device),
        None,
        GateRule::top_k(2),
        path,
    )
    .unwrap();
    let indices = ints(top.indices);
    for t in 0..n {
        let bad = t == 5 || t == 69;
        assert_eq!(
            indices[t * 2..t * 2 + 2].iter().all(|&i| i == -1),
            bad,
            "{what}: token {t}"
        );
        assert!(bad || indices[t * 2..t * 2 + 2].iter().all(|&i| i >= 0));
    }
}

fn check_all(device: &Device, path: KernelPath, what: &str) {
    check_gate_topk(device, path, what);
    check_histogram(device, path, what);
    check_loss_free(device, path, what);
    check_bip(device, path, what);
    check_qb(device, path, what);
    check_nan(device, path, what);
}

#[test]
fn portable_path_matches_reference_on_cpu_backends() {
    check_all(&ndarray(false), KernelPath::Auto, "ndarray");
    check_all(
        &burn_moe::BackendKind::Flex.device(false).unwrap(),
        KernelPath::Auto,
        "flex",
    );
}

#[test]
fn wgsl_kernels_match_reference_and_portable_path_on_wgpu() {
    let Some(device) = wgpu_device(false) else {
        return;
    };
    check_all(&device, KernelPath::Wgsl, "wgpu wgsl");
    check_all(&device, KernelPath::Portable, "wgpu portable");
}

#[test]
fn wgsl_path_is_refused_on_cpu_devices_and_bad_inputs_are_reported() {
    let device = ndarray(false);
    let l = float2(vec![0.0; 8], [2, 4], &device);
    let err = kernels::gate_topk(
        l.clone(),
        Tensor::zeros([4], &device),
        None,
        GateRule::top_k(1),
        KernelPath::Wgsl,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("wgpu"), "{err}");
    let err = kernels::gate_topk(
        l.clone(),
        Tensor::zeros([4], &device),
        None,
        GateRule::top_k(5),
        KernelPath::Auto,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("top_k"), "{err}");
    let err = kernels::gate_topk(
        l,
        Tensor::zeros([3], &device),
        None,
        GateRule::top_k(1),
        KernelPath::Auto,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("offset"), "{err}");
    let idx = int2(vec![0; 6], [3, 2], &device);
    let err = kernels::expert_histogram(idx.clone(), idx, 4, 2, None, KernelPath::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("groups"), "{err}");
}

/// Offset balancers from the same logits on wgpu and ndarray: the scores (softmax on each
/// device) differ in their last bits, yet the prices (BIP after T dual iterations, QB after one
/// update) route every token to the same experts. A price set exactly on a value leaves tokens
/// on exact ties, which those last bits decide.
#[test]
fn offset_balancers_route_the_same_on_wgpu_and_ndarray_from_the_same_logits() {
    use burn::tensor::activation::softmax;
    use burn_moe::balance::QuantileEstimator;
    let Some(gpu) = wgpu_device(false) else {
        return;
    };
    let cpu = ndarray(false);
    // (tokens, experts, k, BIP iterations, clamp)
    let cases = [
        (4096, 64, 2, 1, true),
        (4096, 64, 2, 4, false),
        (2048, 16, 2, 8, true),
        (1024, 16, 4, 2, false),
    ];
    for (case, &(n, m, k, iterations, clamp)) in cases.iter().enumerate() {
        // Skewed logits: a few experts are everyone's favourites, so the prices matter.
        let l: Vec<f32> = normal_vec(n * m, 3000 + case as u64)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 2.0 * ((i % m) < 3) as u8 as f32)
            .collect();
        let route = |device: &Device| {
            let logits = float2(l.clone(), [n, m], device);
            let scores = softmax(logits.clone(), 1);
            let auto = KernelPath::Auto;
            let q = kernels::bip_dual(
                scores.clone(),
                Tensor::zeros([m], device),
                k,
                iterations,
                clamp,
                auto,
            )
            .unwrap();
            let bip = kernels::gate_topk(logits.clone(), q.neg(), None, GateRule::top_k(k), auto)
                .unwrap();
            let b = kernels::qb_update(
                scores,
                Tensor::zeros([m], device),
                k,
                QuantileEstimator::Exact,
                0.0,
                auto,
            )
            .unwrap();
            let qb = kernels::gate_topk(logits, b, None, GateRule::top_k(k), auto).unwrap();
            (ints(bip.indices), ints(qb.indices))
        };
        let (on_gpu, on_cpu) = (route(&gpu), route(&cpu));
        let differ = |a: &[i64], b: &[i64]| a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ(&on_gpu.0, &on_cpu.0),
            0,
            "case {case}: BIP choices that differ"
        );
        assert_eq!(
            differ(&on_gpu.1, &on_cpu.1),
            0,
            "case {case}: QB choices that differ"
        );
    }
}

/// The layer's routing (WGSL kernels on wgpu, tensor ops on ndarray) against the plain-Rust
/// reference on the same scores, held balancer state and draws, in training (balancer updates,
/// random routing) and inference: choices, drops, gates, the proposed state and the entropy.
#[test]
fn layer_routes_as_the_host_reference() {
    use burn_moe::balance::BalancerConfig;
    use burn_moe::moe::MoeConfig;
    use burn_moe::moe::reference::{mean_entropy, route_reference};
    let configs = vec![
        MoeConfig::new(16, 16, 8)
            .with_capacity_factor(Some(1.0))
            .with_groups(2),
        MoeConfig::new(16, 16, 8)
            .with_top_k(1)
            .with_score_function(ScoreFunction::Sigmoid)
            .with_normalize_gates(true)
            .with_routed_scaling_factor(2.5)
            .with_balancer("loss-free-prop".parse().unwrap()),
        MoeConfig::new(16, 16, 16)
            .with_balancer("bip".parse().unwrap())
            .with_capacity_factor(Some(1.25)),
        MoeConfig::new(16, 16, 8).with_balancer(BalancerConfig::Bip {
            iterations: 2,
            clamp: false,
            order: burn_moe::balance::BipOrder::RouteThenUpdate,
        }),
        MoeConfig::new(16, 16, 8)
            .with_random_routing(true)
            .with_balancer("qb-hist".parse().unwrap()),
        MoeConfig::new(16, 16, 16)
            .with_expert_groups(4)
            .with_top_groups(2)
            .with_top_k(3)
            .with_noisy_gating(true)
            .with_capacity_factor(Some(0.8)),
    ];
    let mut devices = vec![("ndarray", ndarray(false))];
    if let Some(d) = wgpu_device(false) {
        devices.push(("wgpu", d));
    }
    for (i, cfg) in configs.into_iter().enumerate() {
        for (name, device) in &devices {
            device.seed(3);
            let mut moe = cfg.init(device);
            let x = |seed| tensor3(normal_vec(4 * 25 * 16, seed), [4, 25, 16], device);
            // A first training call moves the offset balancers' state away from zero.
            let first = moe.route(x(39), true).routing;
            moe = moe.update_balancer(&first).unwrap();
            for training in [false, true] {
                let what = format!("config {i} on {name}, training {training}");
                let out = moe.route(x(40 + i as u64), training);
                // The counts-only read first (the full read would fill its cache).
                let counts = out.routing.counts().unwrap();
                let got = out.routing.host().unwrap();
                assert_eq!(counts.requested, got.plan.requested_counts, "{what}");
                assert_eq!(counts.computed, got.plan.computed_counts, "{what}");
                let scores = host(out.scores.clone());
                let m = moe.config.num_experts;
                let state = moe.balancer_state_values().unwrap();
                let (plan, state_after) = route_reference(
                    &moe.config,
                    &scores,
                    Some(&state),
                    got.draws.as_deref(),
                    training,
                )
                .unwrap();
                assert!(plan.requested_counts.iter().sum::<usize>() > 0, "{what}");
                assert!(
                    (got.entropy - mean_entropy(&scores, m)).abs() < 1e-4,
                    "{what}"
                );
                match (&out.routing.balancer_state, &state_after) {
                    (Some(a), Some(b)) => {
                        assert_close(&format!("{what}: state"), &host(a.clone()), b, 1e-6, 1e-5)
                    }
                    (None, None) => {}
                    (a, b) => panic!("{what}: state {:?} vs reference {b:?}", a.is_some()),
                }
                if got.plan != plan {
                    // BIP prices sit exactly on a token's selection value, so scores computed
                    // by the device and the host reference's prices (ulps apart) may break
                    // such ties differently. Every difference must be such a tie.
                    let prices = state_after.filter(|_| training).unwrap_or(state);
                    assert_only_ties_differ(&plan, &got.plan, &scores, &prices, &what);
                    continue;
                }
                // Gates: the chosen scores, normalised when asked, times the scaling factor.
                let k = moe.config.top_k;
                let mut want = Vec::with_capacity(plan.tokens * k);
                for t in 0..plan.tokens {
                    let chosen = &plan.choices[t * k..(t + 1) * k];
                    let raw: Vec<f32> =
                        chosen.iter().map(|&e| scores[t * m + e as usize]).collect();
                    let sum: f32 = raw.iter().sum();
                    let norm = moe.config.normalize_gates || moe.config.random_routing;
                    let scale = moe.config.routed_scaling_factor as f32;
                    want.extend(raw.iter().map(|g| scale * if norm { g / sum } else { *g }));
                }
                assert_close(
                    &format!("{what}: gates"),
                    &host(out.gates),
                    &want,
                    1e-6,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn layer_reports_nan_logits_on_the_kernel_path() {
    use burn_moe::moe::MoeConfig;
    let device = ndarray(false);
    let moe = MoeConfig::new(4, 8, 4).init(&device);
    let mut x = normal_vec(2 * 3 * 4, 1);
    x[7] = f32::NAN;
    // The forward pass reads nothing back: the bad token's output is NaN, the others' are
    // not, and reading the routing reports the token.
    let out = moe.forward(tensor3(x, [2, 3, 4], &device));
    let y = host(out.output.clone());
    assert!(y[4..8].iter().all(|v| v.is_nan()), "{y:?}");
    assert!(y[..4].iter().chain(&y[8..]).all(|v| v.is_finite()), "{y:?}");
    let err = out.routing.plan().unwrap_err();
    assert!(
        matches!(err, burn_moe::MoeError::NonFinite { token: 1, .. }),
        "{err}"
    );
}

/// Asserts that the two plans choose differently only where the BIP selection values
/// `score - price` of the experts involved are within 1e-5 of the token's k-th best, and for at
/// most 2% of tokens.
fn assert_only_ties_differ(
    h: &burn_moe::routing::RoutingPlan,
    d: &burn_moe::routing::RoutingPlan,
    scores: &[f32],
    q: &[f32],
    what: &str,
) {
    let (m, k, n) = (h.experts, h.top_k, h.tokens);
    let mut differing = 0;
    for t in 0..n {
        let mut a: Vec<u32> = h.choices[t * k..(t + 1) * k].to_vec();
        let mut b: Vec<u32> = d.choices[t * k..(t + 1) * k].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            continue;
        }
        differing += 1;
        let v: Vec<f32> = (0..m).map(|j| scores[t * m + j] - q[j]).collect();
        let mut sorted = v.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let kth = sorted[k - 1];
        for j in a
            .iter()
            .chain(&b)
            .filter(|j| !(a.contains(j) && b.contains(j)))
        {
            let gap = (v[*j as usize] - kth).abs();
            assert!(
                gap < 1e-5,
                "{what}: token {t} expert {j} is {gap} from the k-th value"
            );
        }
    }
    assert!(
        differing * 50 <= n,
        "{what}: {differing} of {n} tokens routed differently"
    );
}
