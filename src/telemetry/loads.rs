//! Expert-load series: a trace read into per-layer load proportions, one row per step.

use std::path::Path;

use crate::error::{MoeError, Result};
use crate::telemetry::trace::TraceReader;

/// Layer indices a trace may name: far more MoE layers than any model has.
pub const MAX_LAYERS: usize = 1 << 16;

/// Which count of a trace record to analyse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// Tokens each expert was asked to take (the routing decision; the default).
    Requested,
    /// Tokens each expert computed after capacity.
    Computed,
}

/// One MoE layer's load proportions over the steps of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerLoads {
    /// Training step of each row, increasing.
    pub steps: Vec<u64>,
    /// Experts of the layer.
    pub experts: usize,
    /// `proportions[row * experts + j]`: expert `j`'s share of the step's tokens (rows sum to 1;
    /// a step with no tokens is all zeros).
    pub proportions: Vec<f32>,
    /// `counts[row * experts + j]`: the raw token counts.
    pub counts: Vec<u32>,
}

impl LayerLoads {
    /// Steps recorded.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when no step was recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The proportions of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.proportions[i * self.experts..(i + 1) * self.experts]
    }

    /// The counts of row `i`.
    pub fn count_row(&self, i: usize) -> &[u32] {
        &self.counts[i * self.experts..(i + 1) * self.experts]
    }

    /// Builds a layer from rows of counts (for tests and synthetic traces).
    pub fn from_counts(steps: Vec<u64>, experts: usize, counts: Vec<u32>) -> Self {
        let mut layer = LayerLoads {
            steps: Vec::new(),
            experts,
            proportions: Vec::new(),
            counts: Vec::new(),
        };
        for (s, row) in steps.into_iter().zip(counts.chunks_exact(experts)) {
            layer.push(s, row);
        }
        layer
    }

    fn push(&mut self, step: u64, counts: &[u32]) {
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        self.steps.push(step);
        self.counts.extend_from_slice(counts);
        self.proportions.extend(counts.iter().map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f32 / total as f32
            }
        }));
    }
}

/// A whole trace as load proportions, per MoE layer.
#[derive(Debug, Clone)]
pub struct RunLoads {
    /// Layers in index order (indices missing from the trace are skipped).
    pub layers: Vec<LayerLoads>,
    /// Records read.
    pub records: usize,
    /// Line numbers of skipped records (a truncated last line).
    pub skipped: Vec<usize>,
}

impl RunLoads {
    /// Reads `path` record by record (the file is streamed; memory holds one `u32` and one `f32`
    /// per expert per step per layer). Errors: unreadable file, a malformed record that is not
    /// the last line, a layer whose expert count changes, steps out of order, an empty trace.
    pub fn read(path: &Path, kind: LoadKind) -> Result<Self> {
        let mut reader = TraceReader::open(path)?;
        // Keyed by the record's layer index: a corrupt index (say 10^12) costs one entry, not
        // 10^12 empty layers.
        let mut layers: std::collections::BTreeMap<usize, LayerLoads> = Default::default();
        let mut records = 0;
        for record in reader.by_ref() {
            let r = record?;
            records += 1;
            let counts: Vec<u32> = match kind {
                LoadKind::Requested => &r.requested,
                LoadKind::Computed => &r.computed,
            }
            .iter()
            .map(|&c| c.min(u32::MAX as usize) as u32)
            .collect();
            if r.layer >= MAX_LAYERS {
                return Err(MoeError::Input(format!(
                    "trace {}: step {} names layer {}, more than any model has (at most {}); \
                     is the file corrupt?",
                    path.display(),
                    r.step,
                    r.layer,
                    MAX_LAYERS - 1
                )));
            }
            if counts.is_empty() {
                return Err(MoeError::Input(format!(
                    "trace {}: step {} layer {} has no experts",
                    path.display(),
                    r.step,
                    r.layer
                )));
            }
            let layer = layers.entry(r.layer).or_insert_with(|| LayerLoads {
                steps: Vec::new(),
                experts: counts.len(),
                proportions: Vec::new(),
                counts: Vec::new(),
            });
            if counts.len() != layer.experts {
                return Err(MoeError::Input(format!(
                    "trace {}: layer {} has {} experts at step {} but {} before",
                    path.display(),
                    r.layer,
                    counts.len(),
                    r.step,
                    layer.experts
                )));
            }
            if layer.steps.last().is_some_and(|&last| r.step <= last) {
                return Err(MoeError::Input(format!(
                    "trace {}: layer {} step {} comes after step {}; steps must increase",
                    path.display(),
                    r.layer,
                    r.step,
                    layer.steps.last().copied().unwrap_or(0)
                )));
            }
            layer.push(r.step, &counts);
        }
        let layers: Vec<LayerLoads> = layers.into_values().collect();
        if layers.is_empty() {
            return Err(MoeError::Input(format!(
                "trace {} holds no records",
                path.display()
            )));
        }
        Ok(RunLoads {
            layers,
            records,
            skipped: reader.skipped,
        })
    }
}
