//! The balancer study: one model trained once per balancer and seed — same seeds, data order
//! and step count for every balancer — then compared on quality (validation loss), balance
//! (MaxVio, drops) and speed; with several seeds, as mean and standard deviation over seeds.

mod report;
mod run;

pub use report::{SeedSummary, Spread, StudyReport};
pub use run::{BalancerResult, StudyConfig, run_study};
