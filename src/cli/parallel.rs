//! The options of `burn-moe train` under mpirun: the rank timeout, expert parallel, placement
//! and re-placement.

use std::path::PathBuf;
use std::rc::Rc;

use clap::Args;

use super::predict::{Method, PredictArgs, predictor};
use burn_moe::dist::{ExpertParallel, read_placement};
use burn_moe::predict::LoadPredictor;

/// Multi-rank options of `burn-moe train`.
#[derive(Debug, Args)]
pub struct MpiArgs {
    /// Under mpirun: seconds a rank waits for the others in one collective before it ends the
    /// job (a rank has died or hung).
    #[arg(long, default_value_t = 300)]
    pub rank_timeout: u64,
    /// Under mpirun: spread each MoE layer's routed experts over groups of this many
    /// consecutive ranks (a divisor of the rank count; every group holds all the experts, each
    /// rank trains on its shard of the batch). 0: data parallel only.
    #[arg(long, default_value_t = 0)]
    pub expert_parallel: usize,
    /// With --expert-parallel: the experts' ranks per MoE layer, from `burn-moe place --write`
    /// (default: contiguous blocks of experts).
    #[arg(long, requires = "expert_parallel")]
    pub placement: Option<PathBuf>,
    /// With --expert-parallel: re-place the experts every N steps for the load the
    /// --replace-method predicts from the last --replace-window steps, moving weights and
    /// optimizer state (0: never).
    #[arg(long, default_value_t = 0, requires = "expert_parallel")]
    pub replace_every: u64,
    /// Steps of load history a re-placement predicts from (and whose fluctuations it serves).
    #[arg(long, default_value_t = 100, requires = "replace_every")]
    pub replace_window: usize,
    /// Replicas of hot experts a re-placement may add (each on its own rank).
    #[arg(long, default_value_t = 0, requires = "replace_every")]
    pub replicas: usize,
    /// The load predictor of a re-placement, as in `burn-moe predict` (fitted on the
    /// --replace-window last steps).
    #[arg(long, value_enum, default_value = "sw-avg", requires = "replace_every")]
    pub replace_method: Method,
    /// ARIMA orders p,d,q of `--replace-method arima`.
    #[arg(long, value_delimiter = ',', default_values_t = [5usize, 1, 5], requires = "replace_every")]
    pub replace_order: Vec<usize>,
    /// Another run's trace, to train the LSTM of `--replace-method lstm` on.
    #[arg(long, requires = "replace_every")]
    pub replace_train_trace: Option<PathBuf>,
}

impl MpiArgs {
    /// The expert-parallel options of a model with `experts` routed experts per layer.
    ///
    /// # Errors
    /// An unreadable placement file; a re-placement predictor that cannot be built.
    pub fn expert_parallel(&self, experts: usize) -> anyhow::Result<ExpertParallel> {
        Ok(ExpertParallel {
            ranks: self.expert_parallel,
            placement: self.placement.as_deref().map(read_placement).transpose()?,
            replace_every: self.replace_every,
            window: self.replace_window,
            replicas: self.replicas,
            predictor: replacement_predictor(self, experts)?,
        })
    }
}

/// The predictor of `--replace-every` (`None` when off), as `burn-moe predict` builds it,
/// fitted on the `--replace-window` last steps.
fn replacement_predictor(
    args: &MpiArgs,
    experts: usize,
) -> anyhow::Result<Option<Rc<dyn LoadPredictor>>> {
    if args.replace_every == 0 {
        return Ok(None);
    }
    let predict = PredictArgs {
        trace: PathBuf::new(),
        method: args.replace_method,
        horizon: vec![args.replace_every as usize],
        window: Some(args.replace_window),
        order: args.replace_order.clone(),
        constant: false,
        stride: 1,
        train_trace: args.replace_train_trace.clone(),
        lstm_iterations: 300,
        switch: None,
        out: None,
        no_plots: true,
        json: true,
    };
    // Its messages name `predict`'s options; here they are the --replace-* ones.
    let p = predictor(&predict, args.replace_every as usize, experts).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            format!("{e:#}")
                .replace("--window", "--replace-window")
                .replace("--method", "--replace-method")
                .replace("--train-trace", "--replace-train-trace")
        )
    })?;
    Ok(Some(Rc::from(p)))
}
