//! An expert-parallel MoE layer over the ranks of an MPI job, checked against the same layer
//! in one process: forward outputs, input gradients, router and expert gradients, with and
//! without a capacity, with replicas of experts, after a re-placement, and with ranks that
//! receive no token.
//!
//! ```text
//! cargo build --release --features mpi --example expert_parallel
//! mpirun -np 4 target/release/examples/expert_parallel
//! ```
//!
//! Every rank builds the same layer (same seed) and the same global batch; it runs its shard
//! of the batch through its part of the expert-parallel layer and the whole batch through the
//! one-process layer, and compares its rows. Exits 1 on the first difference.

use std::time::Duration;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use burn_moe::dist::{
    Collective, ExpertShard, Solo, average_model_gradients, ranks_from_launcher, with_collective,
};
use burn_moe::predict::placement::Placement;
use burn_moe::{BackendKind, Moe, MoeConfig};

const D: usize = 16;
const SEQ: usize = 6;
const ROWS_PER_RANK: usize = 2;

/// Values in [-1, 1) from a seed (the same in every process).
fn values(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let z = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            let z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn read(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

/// The largest `|a - b| / (1 + |b|)`.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

struct Case {
    name: &'static str,
    capacity: Option<f64>,
    /// Router bias towards experts 0 and 1: every token goes there, most ranks get nothing.
    skewed: bool,
}

/// One comparison; returns the largest relative difference.
fn check(
    comm: &dyn Collective,
    device: &Device,
    case: &Case,
    placements: &[Placement],
) -> Result<f32, Box<dyn std::error::Error>> {
    let (n, rank) = (comm.size(), comm.rank());
    let experts = 8;
    let mut config = MoeConfig::new(D, 24, experts).with_top_k(2).with_groups(n);
    config.capacity_factor = case.capacity;
    device.seed(5);
    let mut full: Moe = config.init(device);
    if case.skewed {
        let w = full.router.gate.weight.val();
        let mut bias = vec![0f32; D * experts];
        for row in bias.chunks_mut(experts) {
            row[0] = 40.0;
            row[1] = 30.0;
        }
        let bias = Tensor::<2>::from_data(TensorData::new(bias, [D, experts]), device);
        full.router.gate.weight = Param::from_tensor((w + bias).detach());
    }
    let batch = ROWS_PER_RANK * n;
    let x_all = values(batch * SEQ * D, 1);
    let r_all = values(batch * SEQ * D, 2);
    let tensor = |v: &[f32], rows: usize| {
        Tensor::<3>::from_data(TensorData::new(v.to_vec(), [rows, SEQ, D]), device)
    };
    // One process: the global loss is the mean over the ranks of their losses sum(y_r * r_r).
    let x = tensor(&x_all, batch).require_grad();
    let y = full.forward(x.clone()).output;
    let grads = ((y.clone() * tensor(&r_all, batch)).sum() / n as f32).backward();
    let want_dx = read(x.grad(&grads).expect("dx").reshape([batch, SEQ, D]));
    let want_y = read(y);
    let one = GradientsParams::from_grads(grads, &full);
    let per_rank = ROWS_PER_RANK * SEQ * D;
    let mine = rank * per_rank..(rank + 1) * per_rank;

    let mut layer = full.clone();
    layer.config.groups = 1;
    let mut diff = 0f32;
    for (i, placement) in placements.iter().enumerate() {
        let shard = ExpertShard::new(placement.clone(), experts, rank)?;
        layer = if i == 0 {
            layer.expert_parallel(shard)?
        } else {
            layer.replace_experts(shard, comm)?
        };
        let x = tensor(&x_all[mine.clone()], ROWS_PER_RANK).require_grad();
        let (y, grads) = with_collective(comm, || {
            let y = layer.forward(x.clone()).output;
            let loss = (y.clone() * tensor(&r_all[mine.clone()], ROWS_PER_RANK)).sum();
            (y, loss.backward())
        });
        let dx: Vec<f32> = read(x.grad(&grads).expect("dx"))
            .into_iter()
            .map(|v| v / n as f32)
            .collect();
        // The router's gradients averaged over the ranks, the experts' summed over their
        // copies and scaled alike.
        let layers = [&layer];
        let g = GradientsParams::from_grads(grads, &layer);
        let g = average_model_gradients(comm, comm, &Solo, &layer, &layers, g)?;
        let shard = layer.parallel.clone().expect("expert parallel");
        let router = |g: &GradientsParams, id| {
            g.get::<2>(id)
                .expect("router grad")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let pairs = [
            ("output", read(y), want_y[mine.clone()].to_vec()),
            ("input gradient", dx, want_dx[mine.clone()].to_vec()),
            (
                "router gradient",
                router(&g, layer.router.gate.weight.id),
                router(&one, full.router.gate.weight.id),
            ),
        ];
        let local = shard.local_experts();
        let mut expert_pairs = Vec::new();
        let gates = layer.experts.w_gate.iter().zip(&full.experts.w_gate);
        for (ours, theirs) in [
            (&layer.experts.w_in, &full.experts.w_in),
            (&layer.experts.w_out, &full.experts.w_out),
        ]
        .into_iter()
        .chain(gates)
        {
            let got = read(g.get::<3>(ours.id).expect("expert grad"));
            let all = read(one.get::<3>(theirs.id).expect("expert grad"));
            let per = all.len() / experts;
            let want: Vec<f32> = local
                .iter()
                .flat_map(|&e| all[e * per..(e + 1) * per].to_vec())
                .collect();
            expert_pairs.push(("expert gradient", got, want));
        }
        for (what, got, want) in pairs.into_iter().chain(expert_pairs) {
            let w = worst(&got, &want);
            if w > 1e-5 || w.is_nan() {
                return Err(format!(
                    "{}: placement {i} ({:?}): rank {rank}'s {what} differs from one process by \
                     {w:e}",
                    case.name, placement.copies
                )
                .into());
            }
            diff = diff.max(w);
        }
    }
    Ok(diff)
}

fn main() {
    let comm = match ranks_from_launcher(Duration::from_secs(60)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let (n, rank) = (comm.size(), comm.rank());
    let device = match "flex".parse::<BackendKind>().and_then(|b| b.device(true)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            comm.abort(1)
        }
    };
    // Contiguous; then every expert moved (rotated by one rank) with replicas of experts 0
    // and 1 on two ranks each.
    let experts = 8;
    let contiguous = Placement::contiguous(experts, n);
    let mut moved = contiguous.clone();
    for (e, holders) in moved.copies.iter_mut().enumerate() {
        holders[0] = (holders[0] + 1) % n;
        if e < 2 && n > 1 {
            holders.push((holders[0] + 1) % n);
        }
    }
    let cases = [
        Case {
            name: "dropless",
            capacity: None,
            skewed: false,
        },
        Case {
            name: "capacity 1.0",
            capacity: Some(1.0),
            skewed: false,
        },
        Case {
            name: "capacity 1.5, all tokens to experts 0 and 1",
            capacity: Some(1.5),
            skewed: true,
        },
        Case {
            name: "dropless, all tokens to experts 0 and 1",
            capacity: None,
            skewed: true,
        },
    ];
    for case in &cases {
        match check(&*comm, &device, case, &[contiguous.clone(), moved.clone()]) {
            Ok(diff) => {
                if rank == 0 {
                    println!(
                        "{} ranks, {}: expert parallel = one process (largest difference \
                         {diff:.1e}), contiguous and re-placed with replicas",
                        n, case.name
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                comm.abort(1)
            }
        }
    }
}
