//! The study's report: mean and spread over seeds, the Markdown tables, chart smoothing.

use serde::Serialize;

use super::run::BalancerResult;

/// Mean and sample standard deviation over seeds (0 for one seed).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds.
    pub std: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        let v: Vec<f64> = values.collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Spread {
            mean,
            std: var.sqrt(),
        }
    }
}

/// One balancer over all its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SeedSummary {
    /// Balancer name.
    pub name: String,
    /// Seeds run.
    pub seeds: usize,
    /// Final validation loss.
    pub val_loss: Spread,
    /// AvgMaxVio over training.
    pub avg_maxvio: Spread,
    /// SupMaxVio over training.
    pub sup_maxvio: Spread,
    /// `(step, MaxVio)` at the requested steps.
    pub maxvio_at: Vec<(u64, Spread)>,
    /// MaxVio_global on validation.
    pub maxvio_global: Spread,
    /// `(capacity factor, drop rate)` on validation.
    pub drop_rate: Vec<(f64, Spread)>,
    /// Share of training assignments dropped.
    pub train_drop_rate: Spread,
    /// Median step seconds.
    pub median_step_seconds: Spread,
}

/// The whole study.
#[derive(Debug, Clone, Serialize)]
pub struct StudyReport {
    /// Validation loss used for `steps_to_target`.
    pub target_loss: f64,
    /// One entry per run: balancers in the order asked, seeds in order within each.
    pub results: Vec<BalancerResult>,
    /// One entry per balancer: mean and spread over its seeds.
    pub summary: Vec<SeedSummary>,
}

/// One balancer's runs as mean and spread over seeds.
pub(super) fn summarize<'a>(
    name: &str,
    runs: impl Iterator<Item = &'a BalancerResult> + Clone,
) -> SeedSummary {
    let spread = |f: &dyn Fn(&BalancerResult) -> f64| Spread::of(runs.clone().map(f));
    let first = runs.clone().next();
    SeedSummary {
        name: name.to_string(),
        seeds: runs.clone().count(),
        val_loss: spread(&|r| r.val_loss),
        avg_maxvio: spread(&|r| r.avg_maxvio),
        sup_maxvio: spread(&|r| r.sup_maxvio),
        maxvio_at: first.map_or(Vec::new(), |f| {
            f.maxvio_at
                .iter()
                .enumerate()
                .map(|(i, &(step, _))| {
                    (
                        step,
                        spread(&|r| r.maxvio_at.get(i).map_or(f64::NAN, |m| m.1)),
                    )
                })
                .collect()
        }),
        maxvio_global: spread(&|r| r.maxvio_global),
        drop_rate: first.map_or(Vec::new(), |f| {
            f.drop_rate
                .iter()
                .enumerate()
                .map(|(i, &(cf, _))| (cf, spread(&|r| r.drop_rate[i].1)))
                .collect()
        }),
        train_drop_rate: spread(&|r| r.train_drop_rate),
        median_step_seconds: spread(&|r| r.median_step_seconds),
    }
}

impl StudyReport {
    /// The comparison as Markdown: one row per run, then, with several seeds, one row per
    /// balancer with mean ± standard deviation over its seeds.
    pub fn markdown(&self, maxvio_steps: &[u64], capacity_factors: &[f64]) -> String {
        let mut head =
            String::from("| balancer | seed | val loss | val ppl | AvgMaxVio | SupMaxVio |");
        head += &balance_columns(maxvio_steps, capacity_factors);
        head += &format!(
            " dropped in training | wall s | median step ms | steps (s) to val {:.3} |\n",
            self.target_loss
        );
        let mut md = with_rule(head);
        for r in &self.results {
            md += &format!(
                "| {} | {} | {:.4} | {:.3} | {:.3} | {:.3} |",
                r.name, r.seed, r.val_loss, r.val_ppl, r.avg_maxvio, r.sup_maxvio
            );
            for s in maxvio_steps {
                match r.maxvio_at.iter().find(|(t, _)| t == s) {
                    Some((_, v)) => md += &format!(" {v:.3} |"),
                    None => md += " - |",
                }
            }
            md += &format!(" {:.3} |", r.maxvio_global);
            for (_, d) in &r.drop_rate {
                md += &format!(" {:.2}% |", 100.0 * d);
            }
            md += &format!(
                " {:.2}% | {:.0} | {:.1} |",
                100.0 * r.train_drop_rate,
                r.wall_seconds,
                1e3 * r.median_step_seconds
            );
            match (r.steps_to_target, r.seconds_to_target) {
                (Some(s), Some(t)) => md += &format!(" {s} ({t:.0}) |\n"),
                _ => md += " not reached |\n",
            }
        }
        if self.summary.iter().any(|s| s.seeds > 1) {
            md += &self.summary_markdown(maxvio_steps, capacity_factors);
        }
        md
    }

    fn summary_markdown(&self, maxvio_steps: &[u64], capacity_factors: &[f64]) -> String {
        let mut head = String::from("| balancer | seeds | val loss | AvgMaxVio | SupMaxVio |");
        head += &balance_columns(maxvio_steps, capacity_factors);
        head += " dropped in training | median step ms |\n";
        let mut md = format!(
            "\nMean ± standard deviation over seeds:\n\n{}",
            with_rule(head)
        );
        let cell = |s: Spread, digits: usize, scale: f64| {
            format!(
                " {:.*} ± {:.*} |",
                digits,
                scale * s.mean,
                digits,
                scale * s.std
            )
        };
        for r in &self.summary {
            md += &format!("| {} | {} |", r.name, r.seeds);
            md += &cell(r.val_loss, 4, 1.0);
            md += &cell(r.avg_maxvio, 3, 1.0);
            md += &cell(r.sup_maxvio, 3, 1.0);
            for s in maxvio_steps {
                match r.maxvio_at.iter().find(|(t, _)| t == s) {
                    Some(&(_, v)) => md += &cell(v, 3, 1.0),
                    None => md += " - |",
                }
            }
            md += &cell(r.maxvio_global, 3, 1.0);
            for &(_, d) in &r.drop_rate {
                md += &cell(d, 2, 100.0);
            }
            md += &cell(r.train_drop_rate, 2, 100.0);
            md += &cell(r.median_step_seconds, 1, 1e3);
            md += "\n";
        }
        md
    }
}

/// The head cells both tables share: MaxVio at each step, global MaxVio, drops per capacity.
fn balance_columns(maxvio_steps: &[u64], capacity_factors: &[f64]) -> String {
    let mut cols: String = maxvio_steps
        .iter()
        .map(|s| format!(" MaxVio@{s} |"))
        .collect();
    cols += " MaxVio_global |";
    for cf in capacity_factors {
        cols += &format!(" drop@cf{cf:.2} |");
    }
    cols
}

/// A Markdown table head followed by its rule line.
fn with_rule(head: String) -> String {
    let cols = head.matches('|').count() - 1;
    format!("{head}|{}\n", "---|".repeat(cols))
}
