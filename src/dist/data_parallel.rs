//! The data-parallel step: every rank holds the whole model and trains on its shard of each
//! global batch; gradients are averaged over the ranks in buckets, and the balancers see the
//! whole batch's routing, so every rank keeps the same weights and routes alike.

use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData, Transaction};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Collective;
use crate::balance::{BalancerConfig, BipOrder, loss_free};
use crate::error::{MoeError, Result};
use crate::model::MoeLmConfig;
use crate::moe::reference::route_reference;
use crate::moe::router::read_f32;
use crate::moe::{ExpertCounts, Moe, MoeOutput};

/// Gradient values per all-reduce call (4 MiB of `f32`): large enough to amortise a message's
/// latency, small enough not to double the gradients' memory at once.
pub const BUCKET_VALUES: usize = 1 << 20;

/// Errors unless `ranks` processes can train `model` data-parallel on global batches of
/// `batch_size` sequences of `seq_len` tokens: the batch splits evenly, each rank's share
/// splits into the layer's local groups, and no balancer needs the whole batch before routing.
pub fn check_data_parallel(
    model: &MoeLmConfig,
    batch_size: usize,
    seq_len: usize,
    ranks: usize,
) -> Result<()> {
    let bad = |m: String| Err(MoeError::Distributed(m));
    if ranks == 0 || !batch_size.is_multiple_of(ranks) {
        return bad(format!(
            "{ranks} ranks do not divide the batch of {batch_size} sequences: pass a \
             --batch-size that is a multiple of the rank count"
        ));
    }
    let tokens = batch_size / ranks * seq_len;
    if !tokens.is_multiple_of(model.moe.groups) {
        return bad(format!(
            "each rank's {tokens} tokens do not split into the layer's {} local groups",
            model.moe.groups
        ));
    }
    if ranks > 1
        && let BalancerConfig::Bip {
            order: BipOrder::UpdateThenRoute,
            ..
        } = model.moe.balancer
    {
        return bad(
            "BIP update-then-route prices each batch before routing it, which needs the whole \
             batch on every rank; use route-then-update (bip-lagged) for data parallel"
                .into(),
        );
    }
    Ok(())
}

/// Mixed into a rank's seed of its step draws (rank 0's are one process's).
const RANK_MIX: u64 = 0xA076_1D64_78BD_642F;

/// The seed of this rank's random draws of a step whose one-process seed is `seed`: rank 0
/// draws what one process would, the others their own.
pub fn rank_seed(seed: u64, comm: &dyn Collective) -> u64 {
    seed ^ (comm.rank() as u64).wrapping_mul(RANK_MIX)
}

/// This rank's rows of a global batch of `batch` sequences (the ranks divide it evenly).
pub fn shard(batch: usize, comm: &dyn Collective) -> Range<usize> {
    let per_rank = batch / comm.size();
    comm.rank() * per_rank..(comm.rank() + 1) * per_rank
}

/// Errors unless every rank runs the same run (a digest of `run`'s JSON) from the same step.
pub fn check_same_run<T: Serialize>(comm: &dyn Collective, run: &T, step: u64) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let text = serde_json::to_vec(run)
        .map_err(|e| MoeError::Input(format!("cannot serialise the run: {e}")))?;
    let digest = Sha256::digest(&text);
    let mine = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
    let all = comm.gather_u64(&[mine, step])?;
    let all: Vec<&[u64]> = all.chunks(2).collect();
    if let Some(r) = all.iter().position(|v| *v != all[0]) {
        return Err(MoeError::Distributed(format!(
            "ranks disagree on the run: rank 0 has configuration {:016x} at step {}, rank {r} \
             has {:016x} at step {}; start every rank with the same arguments and run directory",
            all[0][0], all[0][1], all[r][0], all[r][1]
        )));
    }
    Ok(())
}

/// Averages `grads` of `model` over the ranks: the gradients are read in one transfer,
/// summed in buckets of [`BUCKET_VALUES`] values, divided by the rank count and put back.
/// The identity on one rank.
pub fn average_gradients<M: Module>(
    comm: &dyn Collective,
    model: &M,
    mut grads: GradientsParams,
) -> Result<GradientsParams> {
    if comm.size() == 1 {
        return Ok(grads);
    }
    let mut gather = Flatten {
        grads: &grads,
        tensors: Vec::new(),
    };
    model.visit(&mut gather);
    let mut transaction = Transaction::default();
    for t in gather.tensors {
        transaction = transaction.register(t);
    }
    let data = transaction
        .try_execute()
        .map_err(|e| MoeError::Backend(format!("gradient read-back failed: {e:?}")))?;
    let mut flat = Vec::new();
    for d in data {
        flat.extend(read_f32(Some(d))?);
    }
    for bucket in flat.chunks_mut(BUCKET_VALUES) {
        comm.sum_f32(bucket)?;
    }
    let scale = 1.0 / comm.size() as f32;
    flat.iter_mut().for_each(|v| *v *= scale);
    let mut scatter = Unflatten {
        grads: &mut grads,
        flat: &flat,
        offset: 0,
    };
    model.visit(&mut scatter);
    Ok(grads)
}

/// Each gradient of the module, flattened, in visiting order.
struct Flatten<'a> {
    grads: &'a GradientsParams,
    tensors: Vec<Tensor<1>>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let n = g.shape().num_elements();
            self.tensors.push(g.reshape([n]));
        }
    }
}

/// Puts the averaged values back, in the same order.
struct Unflatten<'a> {
    grads: &'a mut GradientsParams,
    flat: &'a [f32],
    offset: usize,
}

impl ModuleVisitor for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let shape = g.shape();
            let n = shape.num_elements();
            let values = self.flat[self.offset..self.offset + n].to_vec();
            self.offset += n;
            let averaged = Tensor::<1>::from_data(TensorData::new(values, [n]), &g.device());
            self.grads.register::<D>(param.id, averaged.reshape(shape));
        }
    }
}

/// Makes the routing of one data-parallel step global: returns each MoE layer's per-expert
/// counts summed over the ranks, and replaces each output's proposed balancer state by the
/// one the whole global batch proposes (Loss-Free from the summed counts; BIP and quantile
/// balancing from every rank's router scores, gathered in rank order), so that every rank
/// applies the same state. `layers[i]` is the MoE layer that produced `outputs[i]`.
pub fn sync_routing(
    comm: &dyn Collective,
    layers: &[&Moe],
    outputs: &mut [MoeOutput],
) -> Result<Vec<ExpertCounts>> {
    let local: Vec<ExpertCounts> = outputs
        .iter()
        .map(|o| o.routing.counts())
        .collect::<Result<_>>()?;
    let mut summed: Vec<u64> = local
        .iter()
        .flat_map(|c| c.requested.iter().chain(&c.computed))
        .map(|&c| c as u64)
        .collect();
    comm.sum_u64(&mut summed)?;
    let mut values = summed.into_iter().map(|c| c as usize);
    let global: Vec<ExpertCounts> = local
        .iter()
        .map(|c| ExpertCounts {
            requested: values.by_ref().take(c.requested.len()).collect(),
            computed: values.by_ref().take(c.computed.len()).collect(),
        })
        .collect();
    if comm.size() == 1 {
        return Ok(global);
    }
    for ((moe, out), counts) in layers.iter().zip(outputs.iter_mut()).zip(&global) {
        if out.routing.balancer_state.is_none() {
            continue;
        }
        let state = moe.balancer_state_values()?;
        let new_state = match moe.config.balancer {
            BalancerConfig::LossFree { rate, update } => {
                loss_free::update_bias(&state, &counts.requested, rate as f32, update)
            }
            _ => global_state(comm, moe, out, &state)?,
        };
        let device: Device = moe.balancer_state.val().device();
        let n = new_state.len();
        out.routing.balancer_state =
            Some(Tensor::from_data(TensorData::new(new_state, [n]), &device));
    }
    Ok(global)
}

/// The balancer state the whole global batch proposes, from every rank's scores (and
/// random-routing draws), by the host rules the layer's kernels follow.
fn global_state(
    comm: &dyn Collective,
    moe: &Moe,
    out: &MoeOutput,
    state: &[f32],
) -> Result<Vec<f32>> {
    let scores = moe.config.score_function.apply(out.routing.logits.clone());
    let read = |t: Tensor<1>| read_f32(Some(t.into_data()));
    let n = scores.shape().num_elements();
    let scores = comm.gather_f32(&read(scores.reshape([n]))?)?;
    let draws = match &out.routing.draws {
        Some(d) => Some(comm.gather_f32(&read(d.clone())?)?),
        None => None,
    };
    let (_, new_state) =
        route_reference(&moe.config, &scores, Some(state), draws.as_deref(), true)?;
    new_state.ok_or_else(|| {
        MoeError::Distributed("the balancer proposed no state for a training step".into())
    })
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Distribution;

    use super::*;
    use crate::dist::{Solo, Traffic};

    /// Rank 0 of two, whose peer's values are `offset + index`.
    struct Pair {
        offset: f32,
    }

    impl Collective for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
            values
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += self.offset + i as f32);
            Ok(())
        }
        fn sum_u64(&self, values: &mut [u64]) -> Result<()> {
            values.iter_mut().for_each(|v| *v *= 2);
            Ok(())
        }
        fn gather_f32(&self, values: &[f32]) -> Result<Vec<f32>> {
            Ok([values, values].concat())
        }
        fn gather_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
            Ok([values, values].concat())
        }
        fn exchange_f32(&self, _: &[f32], _: &[usize], _: &[usize]) -> Result<Vec<f32>> {
            Err(MoeError::Distributed(
                "this test double does not exchange".into(),
            ))
        }
        fn split(&self, _: usize) -> Result<Box<dyn Collective>> {
            Err(MoeError::Distributed(
                "this test double does not split".into(),
            ))
        }
        fn traffic(&self) -> Traffic {
            Traffic::default()
        }
        fn abort(&self, code: i32) -> ! {
            panic!("abort {code}")
        }
    }

    #[test]
    fn shards_are_consecutive_and_cover_the_batch() {
        assert_eq!(shard(8, &Solo), 0..8);
        assert_eq!(shard(8, &Pair { offset: 0.0 }), 0..4);
        assert_eq!(rank_seed(7, &Solo), 7);
    }

    #[test]
    fn gradients_are_averaged_parameter_by_parameter_in_visiting_order() {
        #[allow(deprecated)]
        let device = Device::ndarray().autodiff();
        let layer: Linear = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::random([4, 3], Distribution::Default, &device);
        let loss = layer.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        let read = |g: &GradientsParams, id, d: usize| -> Vec<f32> {
            if d == 2 {
                read_f32(Some(g.get::<2>(id).unwrap().into_data())).unwrap()
            } else {
                read_f32(Some(g.get::<1>(id).unwrap().into_data())).unwrap()
            }
        };
        let bias = layer.bias.as_ref().unwrap().id;
        let (w0, b0) = (read(&grads, layer.weight.id, 2), read(&grads, bias, 1));
        let averaged = average_gradients(&Pair { offset: 1.0 }, &layer, grads).unwrap();
        let (w1, b1) = (
            read(&averaged, layer.weight.id, 2),
            read(&averaged, bias, 1),
        );
        // The weight comes first (6 values), then the bias: the peer's values are 1 + index.
        for (i, (a, b)) in w0.iter().zip(&w1).enumerate() {
            assert!((b - (a + 1.0 + i as f32) / 2.0).abs() < 1e-6);
        }
        for (i, (a, b)) in b0.iter().zip(&b1).enumerate() {
            assert!((b - (a + 7.0 + i as f32) / 2.0).abs() < 1e-6);
        }
        assert_eq!(averaged.get::<2>(layer.weight.id).unwrap().dims(), [3, 2]);
    }

    #[test]
    fn a_batch_the_ranks_cannot_share_is_refused() {
        let model = crate::model::Preset::Tiny.config(32);
        assert!(check_data_parallel(&model, 8, 32, 4).is_ok());
        let err = check_data_parallel(&model, 8, 32, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 ranks do not divide the batch of 8"),
            "{err}"
        );
        let mut bip = model.clone();
        bip.moe.balancer = "bip".parse().unwrap();
        assert!(check_data_parallel(&bip, 8, 32, 2).is_err());
        assert!(check_data_parallel(&bip, 8, 32, 1).is_ok());
        let mut grouped = model;
        grouped.moe.groups = 3;
        assert!(check_data_parallel(&grouped, 8, 32, 2).is_err());
    }
}
