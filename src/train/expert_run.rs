//! The expert-parallel side of a training run: sharding the model and its optimizer state,
//! the full state for checkpoints, the per-step straggler factor, and re-placement from the
//! live loads.

use std::collections::VecDeque;

use burn::optim::ModuleOptimizer;

use crate::dist::{Collective, ExpertParallel, ExpertShard, gather_optimizer, shard_optimizer};
use crate::error::{MoeError, Result};
use crate::model::MoeLm;
use crate::predict::SlidingWindowAverage;
use crate::predict::placement::{Placement, place_predicted};
use crate::telemetry::loads::LayerLoads;
use crate::telemetry::trace::TraceRecord;

/// A rank's expert-parallel group and its peers in the other groups.
pub(crate) type GroupAndPeers = (Box<dyn Collective>, Box<dyn Collective>);

/// An expert-parallel run's placements and recent loads.
pub(crate) struct ExpertRun {
    options: ExpertParallel,
    placements: Vec<Placement>,
    /// Per layer, the last `window` steps' computed rows per expert.
    recent: Vec<VecDeque<Vec<f64>>>,
}

impl ExpertRun {
    /// The run's ranks as expert-parallel groups of `options.ranks` consecutive ranks (each
    /// holding every expert once) and, for each rank, its peers: the ranks of the other groups
    /// that hold the same experts. `None` when expert parallel is off.
    ///
    /// # Errors
    /// A group size that does not divide the rank count; a collective failing.
    pub fn split(options: &ExpertParallel, comm: &dyn Collective) -> Result<Option<GroupAndPeers>> {
        let e = options.ranks;
        if e == 0 {
            return Ok(None);
        }
        if !comm.size().is_multiple_of(e) {
            return Err(MoeError::Distributed(format!(
                "--expert-parallel {e} does not divide the run's {} ranks into groups",
                comm.size()
            )));
        }
        let group = comm.split(comm.rank() / e)?;
        let peers = comm.split(comm.rank() % e)?;
        Ok(Some((group, peers)))
    }

    /// Checks the options against the model and the expert-parallel group; `None` when off.
    pub fn new(
        options: &ExpertParallel,
        model: &MoeLm,
        group: &dyn Collective,
    ) -> Result<Option<Self>> {
        let ranks = group.size();
        if !options.enabled() {
            return Ok(None);
        }
        let layers = model.moe_layers().count();
        let experts = model
            .moe_layers()
            .next()
            .map_or(0, |l| l.config.num_experts);
        let placements = options.placements(layers, experts, ranks)?;
        Ok(Some(ExpertRun {
            options: options.clone(),
            placements,
            recent: vec![VecDeque::new(); layers],
        }))
    }

    /// Makes the full model's MoE layers expert-parallel (this rank's experts) and cuts a full
    /// optimizer state (a resumed checkpoint's; a fresh one holds none) to match.
    pub fn shard(
        &self,
        model: MoeLm,
        optim: ModuleOptimizer,
        fresh: ModuleOptimizer,
        rank: usize,
    ) -> Result<(MoeLm, ModuleOptimizer)> {
        let model = model.map_moe_layers(|i, layer| {
            let shard =
                ExpertShard::new(self.placements[i].clone(), layer.config.num_experts, rank)?;
            layer.expert_parallel(shard)
        })?;
        let layers: Vec<_> = model.moe_layers().collect();
        let optim = shard_optimizer(&optim, fresh, &layers)?;
        Ok((model, optim))
    }

    /// The full model and optimizer state (what one process would hold), on every rank.
    pub fn gather(
        &self,
        model: &MoeLm,
        optim: &ModuleOptimizer,
        fresh: ModuleOptimizer,
        comm: &dyn Collective,
    ) -> Result<(MoeLm, ModuleOptimizer)> {
        let layers: Vec<_> = model.moe_layers().collect();
        let optim = gather_optimizer(optim, fresh, &layers, comm)?;
        let model = model
            .clone()
            .map_moe_layers(|_, l| l.gather_experts(comm))?;
        Ok((model, optim))
    }

    /// Records a step's global per-expert counts; returns its straggler factor: the busiest
    /// rank's expert rows over the mean, averaged over the layers.
    pub fn observe(&mut self, records: &[TraceRecord]) -> f64 {
        let mut sum = 0.0;
        for (i, r) in records.iter().enumerate() {
            let loads: Vec<f64> = r.computed.iter().map(|&c| c as f64).collect();
            sum += self.placements[i].imbalance(&loads);
            let window = &mut self.recent[i];
            window.push_back(loads);
            while window.len() > self.options.window.max(1) {
                window.pop_front();
            }
        }
        sum / records.len().max(1) as f64
    }

    /// A placement for the next `horizon` steps of a layer from its window's loads, by the
    /// options' predictor (the window's mean by default).
    fn place(
        &self,
        window: &VecDeque<Vec<f64>>,
        horizon: usize,
        ranks: usize,
    ) -> Result<Placement> {
        let experts = window.front().map_or(0, Vec::len);
        let counts = window.iter().flatten().map(|&c| c as u32).collect();
        let layer = LayerLoads::from_counts((0..window.len() as u64).collect(), experts, counts);
        let mean = SlidingWindowAverage {
            window: self.options.window,
        };
        let predictor = self.options.predictor.as_deref().unwrap_or(&mean);
        let (placement, _) = place_predicted(
            predictor,
            &layer,
            layer.len(),
            horizon,
            self.options.window,
            ranks,
            self.options.replicas,
        )?;
        Ok(placement)
    }

    /// At every `replace_every`-th step: places each layer anew from its window's loads and
    /// moves the experts and their optimizer state there. Returns a message for the progress
    /// output when it did.
    pub fn maybe_replace(
        &mut self,
        step: u64,
        model: &mut MoeLm,
        optim: &mut ModuleOptimizer,
        fresh: impl Fn() -> ModuleOptimizer,
        comm: &dyn Collective,
    ) -> Result<Option<String>> {
        let every = self.options.replace_every;
        if every == 0 || !step.is_multiple_of(every) {
            return Ok(None);
        }
        let next = self
            .recent
            .iter()
            .map(|window| self.place(window, every as usize, comm.size()))
            .collect::<Result<Vec<_>>>()?;
        // The straggler factor on the window's steps, before and after.
        let factor = |p: &[Placement]| {
            let mut total = 0.0;
            for (placement, rows) in p.iter().zip(&self.recent) {
                total += rows.iter().map(|l| placement.imbalance(l)).sum::<f64>()
                    / rows.len().max(1) as f64;
            }
            total / p.len().max(1) as f64
        };
        let (before, after) = (factor(&self.placements), factor(&next));
        let steps = self.recent.first().map_or(0, VecDeque::len);
        // Through the one-process form: gather everything, cut it to the new placement.
        let (full_model, full_optim) = self.gather(model, optim, fresh(), comm)?;
        self.placements = next;
        (*model, *optim) = self.shard(full_model, full_optim, fresh(), comm.rank())?;
        Ok(Some(format!(
            "step {step}: experts re-placed from the last {steps} steps' loads: straggler \
             factor on those steps {before:.3} -> {after:.3}"
        )))
    }
}
