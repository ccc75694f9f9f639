//! [`Moe`]: the layer users drop into their models in place of an FFN.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor};

use crate::balance::{BalancerConfig, losses};
use crate::dist::{Collective, ExpertShard};
use crate::error::{MoeError, Result};
use crate::moe::router::Routed;
use crate::moe::{ExpertFfn, MoeConfig, MoeOutput, Router, RouterOutput, Routing, TokenDispatcher};

/// Draws every lazily initialised weight of a module (Burn draws a weight when it is first
/// read): weights drawn at `init` come from the seed of that moment, alike in every process.
pub(crate) struct DrawWeights;

impl ModuleVisitor for DrawWeights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// A Mixture-of-Experts FFN layer; build it with [`MoeConfig::init`].
#[derive(Module, Debug)]
pub struct Moe {
    /// Router weights.
    pub router: Router,
    /// The routed experts, weights stacked `[experts, ..]`.
    pub experts: ExpertFfn,
    /// Shared experts applied to every token (`None` when `num_shared_experts = 0`).
    pub shared: Option<ExpertFfn>,
    /// Per-token gate of the shared experts' output, `sigmoid(x w)` (`None` unless
    /// `shared_expert_gate`).
    pub shared_gate: Option<Linear>,
    /// Offset balancer state `[experts]`: Loss-Free bias `b` or BIP dual prices `q` (zeros for
    /// the other balancers). Not trained by the optimizer; saved and loaded with the record.
    pub balancer_state: Param<Tensor<1>>,
    /// The config the layer was built from.
    #[module(skip)]
    pub config: MoeConfig,
    /// Expert parallel: the experts this rank holds and where the others are (`None`: all
    /// routed experts are here). Set with [`expert_parallel`](Self::expert_parallel).
    #[module(skip)]
    pub parallel: Option<ExpertShard>,
}

impl Moe {
    pub(crate) fn new(config: MoeConfig, device: &Device) -> Self {
        let shared = (config.num_shared_experts > 0).then(|| {
            let width = config.num_shared_experts * config.d_ff_shared.unwrap_or(config.d_ff);
            ExpertFfn::new(1, config.d_model, width, config.activation, device)
        });
        Moe {
            router: Router::new(&config, device),
            experts: ExpertFfn::new(
                config.num_experts,
                config.d_model,
                config.d_ff,
                config.activation,
                device,
            ),
            shared,
            shared_gate: config.shared_expert_gate.then(|| {
                LinearConfig::new(config.d_model, 1)
                    .with_bias(false)
                    .init(device)
            }),
            balancer_state: Param::from_tensor(Tensor::zeros([config.num_experts], device))
                .set_require_grad(false),
            config,
            parallel: None,
        }
    }

    /// This layer as rank `shard.rank`'s part of an expert-parallel layer: it keeps the routed
    /// experts the placement gives that rank (`experts` then holds those, in expert order) and
    /// sends every other assignment to the rank holding its expert. Call its forward and
    /// backward passes inside [`with_collective`](crate::dist::with_collective), on every rank
    /// of the placement, with the same shapes; CPU backends only (the exchange goes through
    /// host memory). Build every rank's layer from the same weights (the same seed). Its record
    /// holds this rank's experts only: save the one-process form
    /// ([`gather_experts`](Self::gather_experts)), as training checkpoints do.
    ///
    /// # Errors
    /// The layer is already expert-parallel or on a GPU device; the placement is for another
    /// expert count.
    pub fn expert_parallel(mut self, shard: ExpertShard) -> Result<Self> {
        if self.parallel.is_some() {
            return Err(MoeError::Config(
                "the layer is already expert-parallel: gather its experts first".into(),
            ));
        }
        if crate::kernels::is_gpu(&self.experts.w_in.val().device()) {
            return Err(MoeError::Config(
                "expert parallel moves rows through host memory and runs on the CPU backends \
                 (flex, ndarray) only"
                    .into(),
            ));
        }
        let shard = ExpertShard::new(shard.placement, self.config.num_experts, shard.rank)?;
        self.experts = shard.shard(&self.experts);
        self.parallel = Some(shard);
        Ok(self)
    }

    /// The one-process form of an expert-parallel layer: every routed expert, gathered from the
    /// ranks (call it on every rank; every rank gets them). A layer that is not
    /// expert-parallel comes back as it is.
    ///
    /// # Errors
    /// A collective failing.
    pub fn gather_experts(mut self, comm: &dyn Collective) -> Result<Self> {
        if let Some(shard) = self.parallel.take() {
            self.experts = shard.gather(&self.experts, comm)?;
        }
        Ok(self)
    }

    /// Moves the experts to another placement (re-placement; call it on every rank): each rank
    /// ends up with the experts `shard` gives it, whichever rank held them before.
    ///
    /// # Errors
    /// As [`gather_experts`](Self::gather_experts) and
    /// [`expert_parallel`](Self::expert_parallel).
    pub fn replace_experts(self, shard: ExpertShard, comm: &dyn Collective) -> Result<Self> {
        self.gather_experts(comm)?.expert_parallel(shard)
    }

    /// Routes every token to its experts and combines their outputs.
    ///
    /// Training behaviour (noisy gating, random routing, the balancer's proposed state) is on
    /// when `x` lives on an autodiff device, as with Burn's `Dropout`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`
    /// - output.output: `[batch, seq, d_model]`
    ///
    /// The call makes no device-to-host read: the routing stays on the device
    /// (`output.routing`, read back only when asked). On wgpu without a capacity the experts'
    /// blocks are sized from one small read of the per-expert counts. A token with a NaN or
    /// infinite router logit is routed nowhere and its output is NaN; reading the routing
    /// ([`Routing::host`](crate::moe::Routing::host)) reports it, and
    /// [`try_forward`](Self::try_forward) checks it.
    ///
    /// # Panics
    /// When `x` is not `d_model` wide, holds no token, or holds a token count the local
    /// `groups` do not divide; when the routing kernels cannot run (`kernel_path` `Wgsl` on a
    /// device that is not wgpu, more tokens than [`MAX_TOKENS`](crate::kernels::MAX_TOKENS)).
    /// [`try_forward`](Self::try_forward) returns these as errors.
    pub fn forward(&self, x: Tensor<3>) -> MoeOutput {
        self.forward_checked(x)
            .unwrap_or_else(|e| panic!("Moe::forward: {e}"))
    }

    /// [`forward`](Self::forward), with its panics as errors, and the routing read back once
    /// to check every router logit is finite (one device-to-host read per call: use `forward`
    /// where that read costs).
    ///
    /// # Errors
    /// [`MoeError::Input`] for a wrong width, an empty batch or a token count the groups do not
    /// divide; [`MoeError::NonFinite`] for a NaN or infinite router logit, naming the token; a
    /// kernel or device failure.
    pub fn try_forward(&self, x: Tensor<3>) -> Result<MoeOutput> {
        let out = self.forward_checked(x)?;
        out.routing.host()?;
        Ok(out)
    }

    fn forward_checked(&self, x: Tensor<3>) -> Result<MoeOutput> {
        let [batch, seq, d_model] = x.dims();
        let routed = self.route_checked(x.clone(), x.device().is_autodiff())?;
        let x = x.reshape([batch * seq, d_model]);

        let dispatcher = TokenDispatcher::new(&routed.routing.device);
        let sorted = dispatcher.dispatch(x.clone());
        let expert_out = match &self.parallel {
            None => dispatcher.run_experts(&self.experts, sorted),
            Some(shard) => shard.run_experts(&self.experts, sorted, dispatcher.groups())?,
        };
        let mut y = dispatcher.combine(expert_out, routed.gates);
        if let Some(shared) = &self.shared {
            let mut s: Tensor<2> = shared.forward(x.clone().unsqueeze_dim(0)).squeeze_dim(0);
            if let Some(gate) = &self.shared_gate {
                s = s * sigmoid(gate.forward(x)).expand([batch * seq, d_model]);
            }
            y = y + s;
        }
        Ok(MoeOutput {
            output: y.reshape([batch, seq, d_model]),
            balance_loss: routed.balance_loss,
            routing: routed.routing,
        })
    }

    /// The routing stage alone: logits, scores, gates, the routing and the balancing loss, with
    /// no expert compute. `training` turns on noise, random routing and the balancer's proposed
    /// state. Reads nothing back.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`
    /// - logits, scores: `[batch * seq, experts]`; gates: `[batch * seq, top_k]`
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn route(&self, x: Tensor<3>, training: bool) -> RouterOutput {
        self.route_checked(x, training)
            .unwrap_or_else(|e| panic!("Moe::route: {e}"))
    }

    /// Checks `x`'s shape against the layer: `Ok` when [`forward`](Self::forward) takes it.
    pub fn check_input(&self, dims: [usize; 3]) -> Result<()> {
        let [batch, seq, d_model] = dims;
        let tokens = batch * seq;
        if d_model != self.config.d_model {
            return Err(MoeError::Input(format!(
                "input width is {d_model}, the layer expects d_model = {}",
                self.config.d_model
            )));
        }
        if tokens == 0 {
            return Err(MoeError::Input(format!(
                "empty batch: input shape [{batch}, {seq}, {d_model}]"
            )));
        }
        if !tokens.is_multiple_of(self.config.groups) {
            return Err(MoeError::Input(format!(
                "{tokens} tokens (batch {batch} x seq {seq}) are not divisible into groups = {}",
                self.config.groups
            )));
        }
        Ok(())
    }

    fn route_checked(&self, x: Tensor<3>, training: bool) -> Result<RouterOutput> {
        self.check_input(x.dims())?;
        let [batch, seq, d_model] = x.dims();
        let state = self
            .config
            .balancer
            .has_state()
            .then(|| self.balancer_state.val());
        let Routed {
            logits,
            scores,
            routing,
        } = self.router.route(
            x.reshape([batch * seq, d_model]),
            &self.config,
            state,
            training,
        )?;
        let indices = routing.device.indices.clone();
        let gates = self.gates(scores.clone(), indices.clone());
        let balance_loss = self.balance_loss(&logits, &scores, indices, seq);
        Ok(RouterOutput {
            logits,
            scores,
            gates,
            balance_loss,
            routing,
        })
    }

    /// Applies the balancer state a training call proposed (`routing.balancer_state`, from
    /// [`forward`](Self::forward) or [`route`](Self::route)); a no-op for balancers without
    /// state and for eval-mode calls. Call it once per training step, like the optimizer step.
    /// Errors when the routing comes from a layer with another expert count.
    pub fn update_balancer(mut self, routing: &Routing) -> Result<Self> {
        let m = self.config.num_experts;
        let theirs = routing.device.admitted.dims()[1];
        let state_len = routing.balancer_state.as_ref().map_or(m, |s| s.dims()[0]);
        if theirs != m || state_len != m {
            return Err(MoeError::Input(format!(
                "update_balancer: the routing comes from a layer with {} experts, this layer \
                 has {m} (pass each layer its own routing)",
                if theirs != m { theirs } else { state_len }
            )));
        }
        if let Some(state) = &routing.balancer_state {
            let value = state.clone().detach().set_require_grad(false);
            self.balancer_state = self.balancer_state.map(|_| value);
        }
        Ok(self)
    }

    /// The balancer state `[experts]` on the host.
    pub fn balancer_state_values(&self) -> Result<Vec<f32>> {
        crate::moe::count_read();
        self.balancer_state
            .val()
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| MoeError::Backend(format!("reading the balancer state: {e:?}")))
    }

    /// Sum of the configured loss terms, or `None`.
    fn balance_loss(
        &self,
        logits: &Tensor<2>,
        scores: &Tensor<2>,
        indices: Tensor<2, Int>,
        seq_len: usize,
    ) -> Option<Tensor<1>> {
        let scores = scores.clone();
        let aux = match self.config.balancer {
            BalancerConfig::Aux { alpha } => Some(losses::switch_aux(scores, indices, alpha)),
            BalancerConfig::GShardAux { alpha } => Some(losses::gshard_aux(
                scores,
                indices,
                self.config.groups,
                alpha,
            )),
            BalancerConfig::SeqAux { alpha } => {
                Some(losses::seq_aux(scores, indices, seq_len, alpha))
            }
            _ => None,
        };
        let z = (self.config.z_loss_weight > 0.0)
            .then(|| losses::z_loss(logits.clone(), self.config.z_loss_weight));
        match (aux, z) {
            (Some(a), Some(z)) => Some(a + z),
            (a, z) => a.or(z),
        }
    }

    /// Gate weights `[tokens, k]` of the chosen experts, taken from the device scores so the
    /// router gets gradients (a token whose index is -1, a non-finite logit, reads expert 0); normalised over the chosen experts when configured (always for
    /// GShard random routing, whose rule is stated on normalised gates), then multiplied by
    /// `routed_scaling_factor`.
    fn gates(&self, scores: Tensor<2>, indices: Tensor<2, Int>) -> Tensor<2> {
        let m = self.config.num_experts as i64;
        let mut gates = scores.gather(1, indices.clamp(0, m - 1));
        if self.config.normalize_gates || self.config.random_routing {
            gates = gates.clone() / gates.sum_dim(1);
        }
        if self.config.routed_scaling_factor != 1.0 {
            gates = gates * self.config.routed_scaling_factor;
        }
        gates
    }
}
