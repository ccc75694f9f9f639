//! The layer against a plain-Rust loop over the formulas of `docs/algorithms.md`, written
//! here independently of the crate's routing code, on random inputs and weights (ndarray).

mod common;

use burn::tensor::Tensor;
use burn_moe::moe::{ExpertActivation, ExpertFfn, Moe, MoeConfig, ScoreFunction};
use common::*;

/// Host copy of one stack of FFN weights, in math layout.
struct FfnWeights {
    f: usize,
    w_in: Vec<f32>,           // [e, d, f]
    w_gate: Option<Vec<f32>>, // [e, d, f]
    w_out: Vec<f32>,          // [e, f, d]
}

/// Host copy of every weight.
struct Weights {
    d: usize,
    m: usize,
    gate: Vec<f32>, // [d, m]
    routed: FfnWeights,
    shared: Option<FfnWeights>,
}

fn ffn_weights(e: &ExpertFfn) -> FfnWeights {
    FfnWeights {
        f: e.w_in.dims()[2],
        w_in: host(e.w_in.val()),
        w_gate: e.w_gate.as_ref().map(|w| host(w.val())),
        w_out: host(e.w_out.val()),
    }
}

fn weights(moe: &Moe) -> Weights {
    Weights {
        d: moe.config.d_model,
        m: moe.config.num_experts,
        gate: host(moe.router.gate.weight.val()),
        routed: ffn_weights(&moe.experts),
        shared: moe.shared.as_ref().map(ffn_weights),
    }
}

/// Expert `e` of a stack on one token: `x -> d_ff -> d`.
fn ffn(x: &[f32], e: usize, w: &FfnWeights) -> Vec<f64> {
    let (d, f) = (x.len(), w.f);
    let mut hidden = vec![0.0f64; f];
    for (h, hv) in hidden.iter_mut().enumerate() {
        let mut up = 0.0f64;
        let mut gate = 0.0f64;
        for i in 0..d {
            up += x[i] as f64 * w.w_in[e * d * f + i * f + h] as f64;
            if let Some(g) = &w.w_gate {
                gate += x[i] as f64 * g[e * d * f + i * f + h] as f64;
            }
        }
        *hv = match w.w_gate {
            Some(_) => gate / (1.0 + (-gate).exp()) * up,
            None => 0.5 * up * (1.0 + libm::erf(up / std::f64::consts::SQRT_2)),
        };
    }
    (0..d)
        .map(|o| {
            (0..f)
                .map(|h| hidden[h] * w.w_out[e * f * d + h * d + o] as f64)
                .sum()
        })
        .collect()
}

struct Reference {
    choices: Vec<u32>,
    admitted: Vec<bool>,
    counts: Vec<usize>,
    dropped_tokens: usize,
    output: Vec<f32>,
}

fn reference(cfg: &MoeConfig, w: &Weights, x: &[f32], draws: Option<&[f32]>) -> Reference {
    let (d, m, k) = (w.d, w.m, cfg.top_k);
    let n = x.len() / d;
    let mut choices = vec![0u32; n * k];
    let mut gates = vec![0.0f64; n * k];
    let mut used = vec![true; n * k];
    for t in 0..n {
        let xt = &x[t * d..(t + 1) * d];
        let logits: Vec<f64> = (0..m)
            .map(|j| {
                (0..d)
                    .map(|i| xt[i] as f64 * w.gate[i * m + j] as f64)
                    .sum()
            })
            .collect();
        let scores: Vec<f64> = match cfg.score_function {
            ScoreFunction::Softmax => {
                let z: f64 = logits.iter().map(|l| l.exp()).sum();
                logits.iter().map(|l| l.exp() / z).collect()
            }
            ScoreFunction::Sigmoid => logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect(),
        };
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a])); // stable: ties keep lower index
        let chosen_sum: f64 = order[..k].iter().map(|&j| scores[j]).sum();
        for r in 0..k {
            choices[t * k + r] = order[r] as u32;
            let s = scores[order[r]];
            gates[t * k + r] = if cfg.normalize_gates || cfg.random_routing {
                s / chosen_sum
            } else {
                s
            };
        }
        if let Some(u) = draws {
            used[t * k + 1] = 2.0 * gates[t * k + 1] > u[t] as f64;
        }
    }
    // Capacity per group; first choices before second choices, token order inside each rank.
    let group = n / cfg.groups;
    let cap = cfg
        .capacity_factor
        .map(|cf| (cf * (k * group) as f64 / m as f64).ceil() as usize);
    let mut admitted = vec![false; n * k];
    let mut counts = vec![0usize; m];
    for g in 0..cfg.groups {
        let mut fill = vec![0usize; m];
        for r in 0..k {
            for t in g * group..(g + 1) * group {
                let e = choices[t * k + r] as usize;
                if used[t * k + r] && cap.is_none_or(|c| fill[e] < c) {
                    fill[e] += 1;
                    counts[e] += 1;
                    admitted[t * k + r] = true;
                }
            }
        }
    }
    let mut output = vec![0.0f32; n * d];
    let mut dropped_tokens = 0;
    for t in 0..n {
        let xt = &x[t * d..(t + 1) * d];
        let mut y = vec![0.0f64; d];
        if !(0..k).any(|r| admitted[t * k + r]) {
            dropped_tokens += 1;
        }
        for r in (0..k).filter(|&r| admitted[t * k + r]) {
            let e = choices[t * k + r] as usize;
            let out = ffn(xt, e, &w.routed);
            y.iter_mut()
                .zip(out)
                .for_each(|(a, b)| *a += gates[t * k + r] * b);
        }
        if let Some(shared) = &w.shared {
            let out = ffn(xt, 0, shared);
            y.iter_mut().zip(out).for_each(|(a, b)| *a += b);
        }
        output[t * d..(t + 1) * d]
            .iter_mut()
            .zip(y)
            .for_each(|(o, v)| *o = v as f32);
    }
    Reference {
        choices,
        admitted,
        counts,
        dropped_tokens,
        output,
    }
}

/// Runs `cfg` on random weights and input and compares with the reference.
fn check(name: &str, cfg: MoeConfig, batch: usize, seq: usize, training: bool, seed: u64) {
    let device = ndarray(training);
    device.seed(seed);
    let moe = cfg.init(&device);
    let x = normal_vec(batch * seq * cfg.d_model, seed + 1);
    let out = moe.forward(tensor3(x.clone(), [batch, seq, cfg.d_model], &device));
    let w = weights(&moe);
    let r = reference(&cfg, &w, &x, out.routing.host().unwrap().draws.as_deref());
    let plan = out.routing.plan().unwrap();
    assert_eq!(plan.choices, r.choices, "{name}: chosen experts");
    assert_eq!(plan.admitted, r.admitted, "{name}: admitted assignments");
    assert_eq!(plan.computed_counts, r.counts, "{name}: computed counts");
    assert_eq!(
        plan.dropped_tokens, r.dropped_tokens,
        "{name}: dropped tokens"
    );
    assert_close(name, &host(out.output), &r.output, 1e-5, 1e-4);
}

#[test]
fn top1_softmax_with_capacity_drops_in_token_order() {
    let cfg = MoeConfig::new(16, 24, 8)
        .with_top_k(1)
        .with_capacity_factor(Some(1.0));
    check("top1", cfg, 2, 32, false, 11);
}

#[test]
fn top2_softmax_dropless_normalised() {
    let cfg = MoeConfig::new(16, 24, 8).with_normalize_gates(true);
    check("top2", cfg, 3, 20, false, 12);
}

#[test]
fn top3_sigmoid_normalised_with_capacity() {
    let cfg = MoeConfig::new(12, 20, 6)
        .with_top_k(3)
        .with_score_function(ScoreFunction::Sigmoid)
        .with_normalize_gates(true)
        .with_capacity_factor(Some(1.25));
    check("top3 sigmoid", cfg, 2, 25, false, 13);
}

#[test]
fn top_k_equal_to_experts_is_dense() {
    let cfg = MoeConfig::new(8, 8, 4).with_top_k(4);
    check("k=m", cfg, 1, 9, false, 14);
}

#[test]
fn local_groups_have_their_own_capacity() {
    let cfg = MoeConfig::new(16, 16, 8)
        .with_groups(4)
        .with_capacity_factor(Some(1.0));
    check("groups", cfg, 4, 16, false, 15);
}

#[test]
fn tight_capacity_drops_whole_tokens() {
    let cfg = MoeConfig::new(8, 8, 4)
        .with_top_k(1)
        .with_capacity_factor(Some(0.25));
    check("tight capacity", cfg.clone(), 1, 40, false, 16);
    let device = ndarray(false);
    device.seed(16);
    let moe = cfg.init(&device);
    let out = moe.forward(tensor3(normal_vec(40 * 8, 17), [1, 40, 8], &device));
    assert_eq!(out.routing.plan().unwrap().capacity, Some(3));
    assert!(
        out.routing.plan().unwrap().dropped_tokens >= 40 - 4 * 3,
        "capacity 3 per expert keeps at most 12 of 40 tokens"
    );
}

#[test]
fn gshard_random_routing_of_the_second_expert() {
    let cfg = MoeConfig::new(16, 16, 8)
        .with_random_routing(true)
        .with_capacity_factor(Some(2.0));
    check("random routing", cfg.clone(), 2, 32, true, 18);
    // Over many tokens some 2nd experts are skipped and most are kept (2 * g2 is often > 0.5).
    let device = ndarray(true);
    device.seed(19);
    let moe = cfg.init(&device);
    let out = moe.forward(tensor3(normal_vec(512 * 16, 20), [4, 128, 16], &device));
    let skipped = out
        .routing
        .plan()
        .unwrap()
        .used
        .iter()
        .filter(|u| !**u)
        .count();
    assert!(
        skipped > 0 && skipped < 512,
        "skipped {skipped} of 512 second experts"
    );
    let draws = out.routing.host().unwrap().draws.clone().unwrap();
    assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
    // Eval mode never skips.
    let eval = cfg.init(&ndarray(false));
    let out = eval.forward(tensor3(
        normal_vec(64 * 16, 21),
        [1, 64, 16],
        &ndarray(false),
    ));
    assert!(out.routing.plan().unwrap().used.iter().all(|u| *u));
}

#[test]
fn shared_experts_with_gelu() {
    let cfg = MoeConfig::new(12, 16, 6)
        .with_num_shared_experts(2)
        .with_d_ff_shared(Some(8))
        .with_activation(ExpertActivation::Gelu)
        .with_capacity_factor(Some(1.0));
    check("shared gelu", cfg, 2, 18, false, 22);
}

#[test]
fn many_experts_top2() {
    let cfg = MoeConfig::new(8, 8, 64).with_normalize_gates(true);
    check("64 experts", cfg, 2, 64, false, 23);
}

#[test]
fn noisy_gating_adds_scaled_noise_in_training_only() {
    let cfg = MoeConfig::new(8, 8, 4).with_noisy_gating(true);
    let x = normal_vec(64 * 8, 30);
    let logits_of = |training: bool| {
        let device = ndarray(training);
        device.seed(31);
        let moe = cfg.init(&device);
        let out = moe.route(tensor3(x.clone(), [1, 64, 8], &device), training);
        let clean = moe
            .router
            .gate
            .forward(tensor3(x.clone(), [1, 64, 8], &device));
        let noise_scale = burn::tensor::activation::softplus(
            moe.router
                .noise
                .as_ref()
                .unwrap()
                .forward(tensor3(x.clone(), [1, 64, 8], &device)),
            1.0,
        );
        (host(out.logits), host(clean), host(noise_scale))
    };
    let (eval, clean, _) = logits_of(false);
    assert_close(
        "eval logits are the clean logits",
        &eval,
        &clean,
        1e-6,
        1e-6,
    );
    let (train, clean, scale) = logits_of(true);
    // (noisy - clean) / scale must look like N(0, 1) draws.
    let z: Vec<f64> = train
        .iter()
        .zip(&clean)
        .zip(&scale)
        .map(|((t, c), s)| ((t - c) / s) as f64)
        .collect();
    let mean = z.iter().sum::<f64>() / z.len() as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
    assert!(
        mean.abs() < 0.2 && (var - 1.0).abs() < 0.3,
        "noise mean {mean}, variance {var}"
    );
}

/// The layer's gradients (input, every expert weight, router) against Burn's autodiff through
/// a plain form of the same function: per expert, its tokens' rows times slices of the stacked
/// weights, gated and added back to their tokens.
fn plain_layer(moe: &Moe, x: Tensor<2>, plan: &burn_moe::routing::RoutingPlan) -> Tensor<2> {
    let [tokens, d] = x.dims();
    let k = plan.top_k;
    let device = x.device();
    let scores = burn::tensor::activation::softmax(moe.router.gate.forward(x.clone()), 1);
    let mut y = Tensor::<2>::zeros([tokens, d], &device);
    let w =
        |p: &burn::module::Param<Tensor<3>>, e: usize| p.val().narrow(0, e, 1).squeeze_dim::<2>(0);
    for (e, assigned) in plan.expert_assignments.iter().enumerate() {
        if assigned.is_empty() {
            continue;
        }
        let rows: Vec<i64> = assigned.iter().map(|&a| (a as usize / k) as i64).collect();
        let cols: Vec<i64> = vec![e as i64; rows.len()];
        let idx = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(v, [n]),
                &device,
            )
        };
        let (rows, n) = (idx(rows), assigned.len());
        let xe = x.clone().select(0, rows.clone());
        let up = xe.clone().matmul(w(&moe.experts.w_in, e));
        let gate = xe.matmul(w(moe.experts.w_gate.as_ref().unwrap(), e));
        let out = (burn::tensor::activation::silu(gate) * up).matmul(w(&moe.experts.w_out, e));
        let g = scores
            .clone()
            .select(0, rows.clone())
            .gather(1, idx(cols).reshape([n, 1]));
        y = y.select_assign(0, rows, out * g, burn::tensor::IndexingUpdateOp::Add);
    }
    y
}

#[test]
fn gradients_match_a_plain_per_expert_form() {
    let device = ndarray(true);
    for (name, cfg) in [
        (
            "capacity",
            MoeConfig::new(12, 20, 6).with_capacity_factor(Some(1.0)),
        ),
        ("dropless top-3", MoeConfig::new(12, 20, 6).with_top_k(3)),
    ] {
        device.seed(5);
        let moe = cfg.init(&device);
        let x = normal_vec(2 * 30 * 12, 6);
        let grads_of = |plain: bool| {
            let input = tensor3(x.clone(), [2, 30, 12], &device).require_grad();
            let out = moe.forward(input.clone());
            let y = if plain {
                plain_layer(
                    &moe,
                    input.clone().reshape([60, 12]),
                    out.routing.plan().unwrap(),
                )
            } else {
                out.output.reshape([60, 12])
            };
            let grads = (y.clone() * y).sum().backward();
            let g = |t: Tensor<3>| host(t.grad(&grads).unwrap());
            vec![
                host(input.grad(&grads).unwrap()),
                g(moe.experts.w_in.val()),
                g(moe.experts.w_out.val()),
                g(moe.experts.w_gate.as_ref().unwrap().val()),
                host(moe.router.gate.weight.val().grad(&grads).unwrap()),
            ]
        };
        let layer = grads_of(false);
        let plain = grads_of(true);
        for (i, (a, b)) in layer.iter().zip(&plain).enumerate() {
            assert!(
                a.iter().any(|v| *v != 0.0),
                "{name}: gradient {i} is all zero"
            );
            assert_close(&format!("{name} grad {i}"), a, b, 1e-5, 1e-4);
        }
    }
}
