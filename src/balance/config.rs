//! [`BalancerConfig`]: which balancer a layer uses, its parameters, and its names on the command
//! line (`name:key=value,...`).

use std::fmt;
use std::str::FromStr;

use burn::config::Config;

use super::QuantileEstimator;
use super::quantile;
use crate::error::{MoeError, Result, ensure_config};

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
        /// Clamp the expert prices at zero (`max(0, .)`); off is the quantile-balancing dual
        /// step. Token prices are never clamped (every token takes exactly k experts).
        clamp: bool,
        /// Update-then-route or route-then-update.
        order: BipOrder,
    },
    /// Quantile balancing: select with `s + b`; after each training batch `b` is minus each
    /// expert's (1 - k/m) quantile of `s_ij - a_i` (`a_i`: token i's (k+1)-th `s + b`), centred.
    Quantile {
        /// Exact quantile or the histogram estimator.
        estimator: QuantileEstimator,
        /// Weight of the previous bias, `b <- ema * b_old + (1 - ema) * b_new`, in `[0, 1)`;
        /// 0 (the default of `qb`) uses each batch's bias as it is.
        ema: f64,
    },
}

impl BalancerConfig {
    /// Names accepted by [`FromStr`], each with the defaults of its paper (parameters can follow
    /// a colon, see [`FromStr`]).
    pub const NAMES: [&'static str; 11] = [
        "none",
        "aux",
        "gshard-aux",
        "seq-aux",
        "loss-free",
        "loss-free-prop",
        "bip",
        "bip-noclamp",
        "bip-lagged",
        "qb",
        "qb-hist",
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
            BalancerConfig::Quantile { estimator, ema } => {
                ensure_config((0.0..1.0).contains(&ema), || {
                    format!("qb ema must be a number in [0, 1), got {ema}")
                })?;
                match estimator {
                    QuantileEstimator::Histogram { bins } => {
                        ensure_config((2..=quantile::MAX_BINS).contains(&bins), || {
                            format!(
                                "qb histogram bins must be in 2..={}, got {bins}",
                                quantile::MAX_BINS
                            )
                        })
                    }
                    QuantileEstimator::Exact => Ok(()),
                }
            }
        }
    }

    /// True for the balancers that keep per-expert state and shift selection with it.
    pub fn has_state(&self) -> bool {
        matches!(
            self,
            BalancerConfig::LossFree { .. }
                | BalancerConfig::Bip { .. }
                | BalancerConfig::Quantile { .. }
        )
    }
}

impl FromStr for BalancerConfig {
    type Err = MoeError;

    /// A name of [`BalancerConfig::NAMES`], optionally followed by parameters,
    /// `name:key=value,key=value`: `alpha` (aux losses), `u` (Loss-Free), `t` (BIP iterations),
    /// `bins` (`qb-hist`), `ema` (QB). E.g. `bip:t=4`, `qb-hist:bins=500,ema=0.5`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let mut balancer = Self::named(name)?;
        for pair in params.split(',').filter(|p| !p.is_empty()) {
            balancer.set(name, pair)?;
        }
        balancer.validate()?;
        Ok(balancer)
    }
}

impl BalancerConfig {
    /// The balancer of a name of [`Self::NAMES`], with its paper's defaults.
    fn named(name: &str) -> Result<Self> {
        let bip = |clamp, order| BalancerConfig::Bip {
            iterations: 1,
            clamp,
            order,
        };
        let qb = |estimator| BalancerConfig::Quantile {
            estimator,
            ema: 0.0,
        };
        Ok(match name {
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
            "qb" => qb(QuantileEstimator::Exact),
            "qb-hist" => qb(QuantileEstimator::Histogram { bins: 1000 }),
            other => {
                return Err(MoeError::Config(format!(
                    "unknown balancer `{other}`: expected one of {}",
                    Self::NAMES.join(", ")
                )));
            }
        })
    }

    /// Applies one `key=value` parameter of balancer `name`.
    fn set(&mut self, name: &str, pair: &str) -> Result<()> {
        let bad = |what: &str| MoeError::Config(format!("balancer `{name}`: {what}"));
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(&format!("parameter `{pair}` is not key=value")))?;
        let number = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| bad(&format!("`{key}` needs a number, got `{v}`")))
        };
        let count = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad(&format!("`{key}` needs a whole number, got `{v}`")))
        };
        match (self, key.trim()) {
            (
                BalancerConfig::Aux { alpha }
                | BalancerConfig::GShardAux { alpha }
                | BalancerConfig::SeqAux { alpha },
                "alpha",
            ) => *alpha = number(value)?,
            (BalancerConfig::LossFree { rate, .. }, "u") => *rate = number(value)?,
            (BalancerConfig::Bip { iterations, .. }, "t") => *iterations = count(value)?,
            (
                BalancerConfig::Quantile {
                    estimator: QuantileEstimator::Histogram { bins },
                    ..
                },
                "bins",
            ) => *bins = count(value)?,
            (BalancerConfig::Quantile { ema, .. }, "ema") => *ema = number(value)?,
            (_, key) => {
                return Err(bad(&format!(
                    "unknown parameter `{key}` (alpha: aux losses, u: loss-free, t: bip, \
                     bins: qb-hist, ema: qb)"
                )));
            }
        }
        Ok(())
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
            BalancerConfig::Quantile { estimator, ema } => match estimator {
                QuantileEstimator::Exact => write!(f, "qb(exact, ema={ema})"),
                QuantileEstimator::Histogram { bins } => write!(f, "qb(hist B={bins}, ema={ema})"),
            },
        }
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
    fn parameters_follow_the_name() {
        let parse = |s: &str| s.parse::<BalancerConfig>();
        assert_eq!(
            parse("bip:t=4").unwrap(),
            BalancerConfig::Bip {
                iterations: 4,
                clamp: true,
                order: BipOrder::UpdateThenRoute
            }
        );
        assert_eq!(
            parse("qb-hist:bins=500,ema=0.5").unwrap(),
            BalancerConfig::Quantile {
                estimator: QuantileEstimator::Histogram { bins: 500 },
                ema: 0.5
            }
        );
        assert_eq!(
            parse("aux:alpha=1e-3").unwrap(),
            BalancerConfig::Aux { alpha: 1e-3 }
        );
        assert_eq!(
            parse("loss-free:u=0.01").unwrap(),
            BalancerConfig::LossFree {
                rate: 0.01,
                update: LossFreeUpdate::Sign
            }
        );
        for (bad, says) in [
            ("qb:bins=10", "unknown parameter `bins`"),
            ("bip:t", "not key=value"),
            ("bip:t=two", "whole number"),
            ("bip:t=0", "at least 1"),
            ("qb:ema=1.5", "ema"),
            ("aux:alpha=nan", "alpha"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
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
        let qb = |estimator, ema| BalancerConfig::Quantile { estimator, ema };
        assert!(
            qb(QuantileEstimator::Exact, 1.0)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("ema")
        );
        assert!(qb(QuantileEstimator::Exact, f64::NAN).validate().is_err());
        let bins = |bins| qb(QuantileEstimator::Histogram { bins }, 0.0).validate();
        assert!(bins(1).unwrap_err().to_string().contains("bins"));
        assert!(bins(quantile::MAX_BINS + 1).is_err());
        assert!(bins(quantile::MAX_BINS).is_ok());
    }
}
