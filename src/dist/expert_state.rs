//! The training state of expert-parallel layers: each rank's experts are its slots of the full
//! `[experts, ..]` weights, with their gradients and optimizer state. Checkpoints hold the full
//! tensors (gathered from the ranks), so a run resumes on any rank count, one process included.

use std::convert::Infallible;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Int, Tensor, TensorData};

use super::Collective;
use super::expert_parallel::{ExpertShard, slots};
use crate::error::{MoeError, Result};
use crate::moe::router::read_f32;
use crate::moe::{ExpertFfn, Moe};

/// The stacked weights of an [`ExpertFfn`]: `w_in`, `w_gate` (when SwiGLU), `w_out`.
fn weights(experts: &ExpertFfn) -> Vec<&Param<Tensor<3>>> {
    let mut w = vec![&experts.w_in];
    w.extend(&experts.w_gate);
    w.push(&experts.w_out);
    w
}

/// The experts with each stacked weight replaced by `f(weight)`.
fn map_weights<E>(
    experts: &ExpertFfn,
    mut f: impl FnMut(&Param<Tensor<3>>) -> std::result::Result<Param<Tensor<3>>, E>,
) -> std::result::Result<ExpertFfn, E> {
    Ok(ExpertFfn {
        w_in: f(&experts.w_in)?,
        w_gate: experts.w_gate.as_ref().map(&mut f).transpose()?,
        w_out: f(&experts.w_out)?,
    })
}

/// A parameter with `w`'s id holding `value` as a new leaf of the autodiff graph (trained,
/// as `w`, when `w` is).
fn leaf(w: &Param<Tensor<3>>, value: Tensor<3>) -> Param<Tensor<3>> {
    let train = w.val().is_require_grad();
    Param::initialized(w.id, value.detach()).set_require_grad(train)
}

impl ExpertShard {
    /// This rank's slots of the full experts `[experts, ..]`, as parameters with the full
    /// ones' ids (so the optimizer keeps one state per parameter).
    pub fn shard(&self, full: &ExpertFfn) -> ExpertFfn {
        let local: Vec<i64> = self.local_experts().iter().map(|&e| e as i64).collect();
        let pick = |w: &Param<Tensor<3>>| {
            let t = w.val();
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(local.clone(), [local.len()]),
                &t.device(),
            );
            Ok::<_, Infallible>(leaf(w, t.select(0, idx)))
        };
        let Ok(local) = map_weights(full, pick);
        local
    }

    /// The full experts `[experts, ..]` from every rank's slots (each expert from its first
    /// copy), on every rank; the parameters keep `local`'s ids. `local` is this rank's
    /// [`shard`](Self::shard).
    ///
    /// # Errors
    /// A collective failing.
    pub fn gather(&self, local: &ExpertFfn, comm: &dyn Collective) -> Result<ExpertFfn> {
        let m = self.placement.copies.len();
        map_weights(local, |w| {
            let t = w.val();
            let [_, a, b] = t.dims();
            let device = t.device();
            let values = self.gather_rows(read_f32(Some(t.into_data()))?, a * b, comm)?;
            let full = Tensor::from_data(TensorData::new(values, [m, a, b]), &device);
            Ok(leaf(w, full))
        })
    }

    /// Every expert's row (of `per` values) from the ranks' slot rows `local` (this rank's,
    /// slot order): each expert from its first copy.
    fn gather_rows(
        &self,
        mut local: Vec<f32>,
        per: usize,
        comm: &dyn Collective,
    ) -> Result<Vec<f32>> {
        let ranks = self.placement.devices;
        let per_rank: Vec<_> = (0..ranks).map(|r| slots(&self.placement, r)).collect();
        let most = per_rank.iter().map(Vec::len).max().unwrap_or(0);
        local.resize(most * per, 0.0);
        let all = comm.gather_f32(&local)?;
        let mut out = vec![0f32; self.placement.copies.len() * per];
        for (e, holders) in self.placement.copies.iter().enumerate() {
            let r = holders[0];
            let j = per_rank[r].iter().position(|&(x, _)| x == e).unwrap_or(0);
            let from = (r * most + j) * per;
            out[e * per..(e + 1) * per].copy_from_slice(&all[from..from + per]);
        }
        Ok(out)
    }

    /// This rank's slot rows of every expert's rows `full` (`per` values each).
    fn local_rows(&self, full: &[f32], per: usize) -> Vec<f32> {
        self.local_experts()
            .iter()
            .flat_map(|&e| full[e * per..(e + 1) * per].iter().copied())
            .collect()
    }

    /// The gradients of this rank's experts for the mean loss over all ranks. `group`: the
    /// ranks of this placement (the exchange's); `peers`: the ranks of the other groups that
    /// hold the same experts ([`Solo`](super::Solo) when there is one group). A replicated
    /// expert's copies each saw part of the group's tokens, so their gradients are summed in
    /// the group (one all-reduce over the replicated experts' values only); each group's
    /// experts saw its tokens, so the gradients are then summed over the peers; every expert
    /// gradient is divided by the rank count, as
    /// [`average_gradients`](super::average_gradients) divides the others'.
    ///
    /// # Errors
    /// A collective failing.
    pub fn average_gradients(
        &self,
        local: &ExpertFfn,
        grads: &mut GradientsParams,
        group: &dyn Collective,
        peers: &dyn Collective,
    ) -> Result<()> {
        let m = self.placement.copies.len();
        let replicated: Vec<usize> = (0..m)
            .filter(|&e| self.placement.copies[e].len() > 1)
            .collect();
        let mine = self.local_experts();
        let scale = 1.0 / (group.size() * peers.size()) as f32;
        for w in weights(local) {
            let Some(g) = grads.remove::<3>(w.id) else {
                continue;
            };
            let [n, a, b] = g.dims();
            let per = a * b;
            let mut values = read_f32(Some(g.clone().into_data()))?;
            if !replicated.is_empty() {
                let at = |e: usize| replicated.iter().position(|&x| x == e);
                let mut sums = vec![0f32; replicated.len() * per];
                for (j, &e) in mine.iter().enumerate() {
                    if let Some(i) = at(e) {
                        sums[i * per..(i + 1) * per]
                            .copy_from_slice(&values[j * per..(j + 1) * per]);
                    }
                }
                group.sum_f32(&mut sums)?;
                for (j, &e) in mine.iter().enumerate() {
                    if let Some(i) = at(e) {
                        values[j * per..(j + 1) * per]
                            .copy_from_slice(&sums[i * per..(i + 1) * per]);
                    }
                }
            }
            if peers.size() > 1 {
                peers.sum_f32(&mut values)?;
            }
            values.iter_mut().for_each(|v| *v *= scale);
            let g = Tensor::<3>::from_data(TensorData::new(values, [n, a, b]), &g.device());
            grads.register::<3>(w.id, g);
        }
        Ok(())
    }
}

/// Averages a model's gradients over the ranks (`comm`): the experts of its expert-parallel
/// `layers` as [`ExpertShard::average_gradients`] says (with its `group` and `peers`), every
/// other parameter with [`average_gradients`](super::average_gradients).
///
/// # Errors
/// A collective failing.
pub fn average_model_gradients<M: Module>(
    comm: &dyn Collective,
    group: &dyn Collective,
    peers: &dyn Collective,
    model: &M,
    layers: &[&Moe],
    mut grads: GradientsParams,
) -> Result<GradientsParams> {
    let mut experts = GradientsParams::new();
    for layer in layers.iter().filter(|l| l.parallel.is_some()) {
        for w in weights(&layer.experts) {
            if let Some(g) = grads.remove::<3>(w.id) {
                experts.register::<3>(w.id, g);
            }
        }
    }
    let mut grads = super::average_gradients(comm, model, grads)?;
    for layer in layers {
        if let Some(shard) = &layer.parallel {
            shard.average_gradients(&layer.experts, &mut experts, group, peers)?;
            for w in weights(&layer.experts) {
                if let Some(g) = experts.remove::<3>(w.id) {
                    grads.register::<3>(w.id, g);
                }
            }
        }
    }
    Ok(grads)
}

/// The optimizer state of `layers`' experts (expert-parallel ones: this rank's slots) gathered
/// into the full `[experts, ..]` shape on every rank, loaded into `fresh` (an optimizer of the
/// same kind): the state a one-process run would have, for a checkpoint.
///
/// # Errors
/// Ranks whose states differ in structure; a collective failing; a corrupt state.
pub fn gather_optimizer(
    optim: &ModuleOptimizer,
    fresh: ModuleOptimizer,
    layers: &[&Moe],
    comm: &dyn Collective,
) -> Result<ModuleOptimizer> {
    rewrite_state(
        optim,
        fresh,
        layers,
        |shard, values, per| shard.gather_rows(values, per, comm),
        Some(comm),
    )
}

/// The optimizer state of a full checkpoint with `layers`' experts (expert-parallel ones) cut
/// to this rank's slots, loaded into `fresh` (an optimizer of the same kind).
///
/// # Errors
/// A corrupt state.
pub fn shard_optimizer(
    optim: &ModuleOptimizer,
    fresh: ModuleOptimizer,
    layers: &[&Moe],
) -> Result<ModuleOptimizer> {
    rewrite_state(
        optim,
        fresh,
        layers,
        |shard, values, per| Ok(shard.local_rows(&values, per)),
        None,
    )
}

/// Rewrites the state tensors of the expert-parallel layers' expert weights with `f(shard,
/// values, per)` (rows of `per` values), leaving every other entry as it is.
fn rewrite_state(
    optim: &ModuleOptimizer,
    fresh: ModuleOptimizer,
    layers: &[&Moe],
    mut f: impl FnMut(&ExpertShard, Vec<f32>, usize) -> Result<Vec<f32>>,
    check: Option<&dyn Collective>,
) -> Result<ModuleOptimizer> {
    let corrupt = |e: String| MoeError::Io(format!("optimizer state: {e}"));
    let bytes = optim.into_bytes().map_err(|e| corrupt(format!("{e:?}")))?;
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| corrupt(format!("{e:?}")))?;
    let (scalars, metadata) = (reader.scalars().clone(), reader.metadata().clone());
    let mut tensors = Vec::new();
    for t in reader
        .into_tensors()
        .map_err(|e| corrupt(format!("{e:?}")))?
    {
        tensors.push(t.into_parts().map_err(|e| corrupt(format!("{e:?}")))?);
    }
    // Names in a fixed order, so every rank gathers the same tensors in the same order.
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for layer in layers {
        let Some(shard) = &layer.parallel else {
            continue;
        };
        for w in weights(&layer.experts) {
            let id = w.id.val();
            let mine: Vec<usize> = (0..tensors.len())
                .filter(|&i| tensors[i].3 == Some(id))
                .collect();
            if let Some(comm) = check {
                let counts = comm.gather_u64(&[mine.len() as u64])?;
                if counts.iter().any(|&c| c != counts[0]) {
                    return Err(MoeError::Distributed(format!(
                        "ranks hold different optimizer states for an expert weight: {counts:?} \
                         tensors"
                    )));
                }
            }
            for i in mine {
                let (name, dtype, shape, pid, data) = tensors[i].clone();
                if shape.num_dims() != 3 {
                    return Err(corrupt(format!(
                        "{name} has shape {shape:?}, not [experts, a, b]"
                    )));
                }
                let dims = shape.dims::<3>();
                let per = dims[1] * dims[2];
                let values = TensorData::from_bytes(data, shape, dtype)
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| corrupt(format!("{name}: {e:?}")))?;
                let out = f(shard, values, per)?;
                let rows = out.len() / per.max(1);
                let data = TensorData::new(out, [rows, dims[1], dims[2]]).convert_dtype(dtype);
                let (bytes, shape, dtype) = data.into_parts();
                tensors[i] = (name, dtype, shape, pid, bytes);
            }
        }
    }
    let tensors = tensors
        .into_iter()
        .map(|(name, dtype, shape, pid, bytes)| {
            burn_pack::Tensor::new(name, dtype, shape, pid, bytes)
        })
        .collect();
    let mut writer = burn_pack::Writer::new(tensors);
    for (k, v) in &scalars {
        writer = writer.with_scalar(k, *v);
    }
    for (k, v) in &metadata {
        writer = writer.with_metadata(k, v);
    }
    let bytes: Bytes = writer.into_bytes().map_err(|e| corrupt(format!("{e:?}")))?;
    fresh
        .from_bytes(bytes)
        .map_err(|e| corrupt(format!("{e:?}")))
}
