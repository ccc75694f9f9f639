//! Load balancing, chosen by [`BalancerConfig`]: loss terms (Switch, GShard, sequence-wise aux
//! losses, router z-loss) and selection offsets kept as layer state (Loss-Free bias, BIP dual
//! prices). Formulas: `ALGORITHMS.md` section 3.

pub mod bip;
pub mod loss_free;
pub mod losses;
pub mod metrics;
pub mod simulate;

use std::fmt;
use std::str::FromStr;

use burn::config::Config;

use crate::error::{MoeError, Result, ensure_config};
use crate::routing::RoutingPlan;

/// How Loss-Free balancing moves its bias after a batch.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LossFreeUpdate {
    /// `b_j += u * sign(c_mean - c_j)` (the paper's default, with sigmoid scores).
    Sign,
    /// `b_j += u * (c_mean - c_j) / c_mean`: the error divided by the mean load, so `u` does not
    /// depend on the batch size.
    Proportional,
}

/// When BIP balancing updates its dual prices `q` relative to routing the current batch.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BipOrder {
    /// Run the dual iterations on the current batch, then route it with the new `q` (balanced
    /// from the first step; uses the batch's other tokens to route each token).
    UpdateThenRoute,
    /// Route with the previous `q`, then update it from this batch (no token sees its batch).
    RouteThenUpdate,
}

/// The load-balancing method of a layer.
#[derive(Config, Debug, PartialEq)]
pub enum BalancerConfig {
    /// No balancing.
    None,
    /// Switch aux loss `alpha * m * sum_j f_j P_j` (`f_j`: top-1 fraction, `P_j`: mean score).
    Aux {
        /// Loss weight (Switch: 1e-2).
        alpha: f64,
    },
    /// GShard aux loss, per group `(1/m) sum_j (c_j / S) * mean_gate_j`, averaged over groups.
    GShardAux {
        /// Loss weight.
        alpha: f64,
    },
    /// DeepSeek-V3 sequence-wise aux loss, averaged over the sequences of the batch.
    SeqAux {
        /// Loss weight (DeepSeek-V3: 1e-4).
        alpha: f64,
    },
    /// Loss-Free balancing: select with `s + b`, update `b` after each training batch.
    LossFree {
        /// Update rate `u` (paper: 1e-3).
        rate: f64,
        /// Sign or proportional update.
        update: LossFreeUpdate,
    },
    /// BIP-based balancing: select with `s - q`, `q` from `iterations` dual iterations per batch.
    Bip {
        /// Dual iterations per training batch, `T >= 1`.
        iterations: usize,
        /// Clamp the prices at zero (`max(0, .)`); off is the "quantile balancing" form.
        clamp: bool,
        /// Update-then-route or route-then-update.
        order: BipOrder,
    },
}

impl BalancerConfig {
    /// Names accepted by [`FromStr`], each with the defaults of its paper.
    pub const NAMES: [&'static str; 9] = [
        "none",
        "aux",
        "gshard-aux",
        "seq-aux",
        "loss-free",
        "loss-free-prop",
        "bip",
        "bip-noclamp",
        "bip-lagged",
    ];

    /// Checks the parameters: weights and rates finite and positive, `T >= 1`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            BalancerConfig::None => Ok(()),
            BalancerConfig::Aux { alpha }
            | BalancerConfig::GShardAux { alpha }
            | BalancerConfig::SeqAux { alpha } => {
                ensure_config(alpha.is_finite() && alpha >= 0.0, || {
                    format!("balancer alpha must be a finite number >= 0, got {alpha}")
                })
            }
            BalancerConfig::LossFree { rate, .. } => {
                ensure_config(rate.is_finite() && rate > 0.0, || {
                    format!("loss-free rate must be a finite number > 0, got {rate}")
                })
            }
            BalancerConfig::Bip { iterations, .. } => ensure_config(iterations >= 1, || {
                "bip iterations (T) must be at least 1".into()
            }),
        }
    }

    /// True for the balancers that keep per-expert state and shift selection with it.
    pub fn has_state(&self) -> bool {
        matches!(
            self,
            BalancerConfig::LossFree { .. } | BalancerConfig::Bip { .. }
        )
    }
}

impl FromStr for BalancerConfig {
    type Err = MoeError;

    fn from_str(s: &str) -> Result<Self> {
        let bip = |clamp, order| BalancerConfig::Bip {
            iterations: 1,
            clamp,
            order,
        };
        Ok(match s {
            "none" => BalancerConfig::None,
            "aux" => BalancerConfig::Aux { alpha: 1e-2 },
            "gshard-aux" => BalancerConfig::GShardAux { alpha: 1e-2 },
            "seq-aux" => BalancerConfig::SeqAux { alpha: 1e-4 },
            "loss-free" => BalancerConfig::LossFree {
                rate: 1e-3,
                update: LossFreeUpdate::Sign,
            },
            "loss-free-prop" => BalancerConfig::LossFree {
                rate: 1e-3,
                update: LossFreeUpdate::Proportional,
            },
            "bip" => bip(true, BipOrder::UpdateThenRoute),
            "bip-noclamp" => bip(false, BipOrder::UpdateThenRoute),
            "bip-lagged" => bip(true, BipOrder::RouteThenUpdate),
            other => {
                return Err(MoeError::Config(format!(
                    "unknown balancer `{other}`: expected one of {}",
                    Self::NAMES.join(", ")
                )));
            }
        })
    }
}

/// A short human-readable description, e.g. `bip(T=1, clamp=true, UpdateThenRoute)`.
pub struct BalancerSummary<'a>(pub &'a BalancerConfig);

impl fmt::Display for BalancerSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            BalancerConfig::None => write!(f, "none"),
            BalancerConfig::Aux { alpha } => write!(f, "aux(alpha={alpha})"),
            BalancerConfig::GShardAux { alpha } => write!(f, "gshard-aux(alpha={alpha})"),
            BalancerConfig::SeqAux { alpha } => write!(f, "seq-aux(alpha={alpha})"),
            BalancerConfig::LossFree { rate, update } => {
                write!(f, "loss-free({update:?}, u={rate})")
            }
            BalancerConfig::Bip {
                iterations,
                clamp,
                order,
            } => {
                write!(f, "bip(T={iterations}, clamp={clamp}, {order:?})")
            }
        }
    }
}

/// Selection offset of an offset balancer, and the state it proposes after this batch.
pub(crate) struct OffsetStep {
    /// Added to the scores for selection (`b`, or `-q`).
    pub offset: Option<Vec<f32>>,
    /// New state computed before routing (BIP update-then-route).
    pending: Option<Vec<f32>>,
}

/// The shapes the offset balancers need.
pub(crate) struct BatchShape {
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
}

/// Before routing: the offset to select with. In training, BIP update-then-route first runs its
/// dual iterations on this batch's scores.
pub(crate) fn offset_before_routing(
    config: &BalancerConfig,
    state: Option<&[f32]>,
    scores: &[f32],
    shape: &BatchShape,
    training: bool,
) -> OffsetStep {
    let Some(state) = state else {
        return OffsetStep {
            offset: None,
            pending: None,
        };
    };
    match *config {
        BalancerConfig::LossFree { .. } => OffsetStep {
            offset: Some(state.to_vec()),
            pending: None,
        },
        BalancerConfig::Bip {
            iterations,
            clamp,
            order,
        } => {
            let q = if training && order == BipOrder::UpdateThenRoute {
                bip::dual_prices(
                    scores,
                    state,
                    shape.tokens,
                    shape.experts,
                    shape.top_k,
                    iterations,
                    clamp,
                )
            } else {
                state.to_vec()
            };
            let offset = q.iter().map(|v| -v).collect();
            let pending = (training && order == BipOrder::UpdateThenRoute).then_some(q);
            OffsetStep {
                offset: Some(offset),
                pending,
            }
        }
        _ => OffsetStep {
            offset: None,
            pending: None,
        },
    }
}

/// After routing, in training: the new balancer state.
pub(crate) fn state_after_routing(
    config: &BalancerConfig,
    state: Option<&[f32]>,
    step: OffsetStep,
    scores: &[f32],
    plan: &RoutingPlan,
    training: bool,
) -> Option<Vec<f32>> {
    let state = state.filter(|_| training)?;
    match *config {
        BalancerConfig::LossFree { rate, update } => Some(loss_free::update_bias(
            state,
            &plan.requested_counts,
            rate as f32,
            update,
        )),
        BalancerConfig::Bip {
            iterations,
            clamp,
            order: BipOrder::RouteThenUpdate,
        } => Some(bip::dual_prices(
            scores,
            state,
            plan.tokens,
            plan.experts,
            plan.top_k,
            iterations,
            clamp,
        )),
        BalancerConfig::Bip { .. } => step.pending,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_validates() {
        for name in BalancerConfig::NAMES {
            let b: BalancerConfig = name.parse().unwrap();
            assert!(b.validate().is_ok(), "{name}");
        }
        let err = "magic".parse::<BalancerConfig>().unwrap_err().to_string();
        assert!(err.contains("unknown balancer `magic`") && err.contains("loss-free"));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let lf = BalancerConfig::LossFree {
            rate: -1e-3,
            update: LossFreeUpdate::Sign,
        };
        assert!(lf.validate().unwrap_err().to_string().contains("rate"));
        let lf = BalancerConfig::LossFree {
            rate: 0.0,
            update: LossFreeUpdate::Sign,
        };
        assert!(lf.validate().is_err());
        let bip = BalancerConfig::Bip {
            iterations: 0,
            clamp: true,
            order: BipOrder::UpdateThenRoute,
        };
        assert!(
            bip.validate()
                .unwrap_err()
                .to_string()
                .contains("iterations")
        );
        assert!(BalancerConfig::Aux { alpha: f64::NAN }.validate().is_err());
        assert!(BalancerConfig::Aux { alpha: -1.0 }.validate().is_err());
    }
}
