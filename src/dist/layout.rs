//! [`ExpertParallel`]: how a training run spreads its MoE layers' experts over the ranks, and
//! the placement files `burn-moe place --write` writes and `train --placement` reads.

use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;

use crate::error::{MoeError, Result};
use crate::predict::LoadPredictor;
use crate::predict::placement::Placement;

/// Expert-parallel options of a training run (all off by default: data parallel only).
#[derive(Clone, Default)]
pub struct ExpertParallel {
    /// Spread each MoE layer's routed experts over groups of this many consecutive ranks: 0
    /// for none, else a divisor of the run's rank count. Every rank holds experts and trains
    /// on its shard of the batch; the groups hold the same experts.
    pub ranks: usize,
    /// Each MoE layer's placement (`None`: contiguous, expert `j` on rank `j * ranks / m`).
    pub placement: Option<Vec<Placement>>,
    /// Re-place every N steps from the loads of the last `window` steps (0: never).
    pub replace_every: u64,
    /// Steps of the sliding window whose mean predicts the next steps' loads.
    pub window: usize,
    /// Replicas of hot experts a re-placement may add (each on a rank of its own).
    pub replicas: usize,
    /// The load predictor of a re-placement (`None`: the mean of the window).
    pub predictor: Option<Rc<dyn LoadPredictor>>,
}

impl std::fmt::Debug for ExpertParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertParallel")
            .field("ranks", &self.ranks)
            .field("placement", &self.placement)
            .field("replace_every", &self.replace_every)
            .field("window", &self.window)
            .field("replicas", &self.replicas)
            .field("predictor", &self.predictor.as_ref().map(|p| p.name()))
            .finish()
    }
}

impl ExpertParallel {
    /// Whether the experts are spread over the ranks.
    pub fn enabled(&self) -> bool {
        self.ranks > 0
    }

    /// Each of `layers` MoE layers' placement over the `ranks` of an expert-parallel group,
    /// checked.
    ///
    /// # Errors
    /// A group of another size; contiguous placement with a
    /// rank count that does not divide the experts; a placement file for another rank count,
    /// layer count or expert count.
    pub fn placements(
        &self,
        layers: usize,
        experts: usize,
        ranks: usize,
    ) -> Result<Vec<Placement>> {
        let bad = |m: String| Err(MoeError::Distributed(m));
        if self.ranks != ranks {
            return bad(format!(
                "expert-parallel groups of {} ranks, placements for {ranks}",
                self.ranks
            ));
        }
        if self.replace_every > 0 && self.window == 0 {
            return bad("re-placement needs a window of at least one step".into());
        }
        match &self.placement {
            None => {
                if !experts.is_multiple_of(ranks) || experts < ranks {
                    return bad(format!(
                        "{ranks} expert-parallel ranks do not divide the {experts} experts: \
                         pass a rank count that does, or a --placement file"
                    ));
                }
                Ok(vec![Placement::contiguous(experts, ranks); layers])
            }
            Some(p) if p.len() != layers => bad(format!(
                "the placement file places {} MoE layers, the model has {layers}",
                p.len()
            )),
            Some(p) => {
                for (l, layer) in p.iter().enumerate() {
                    if layer.devices != ranks {
                        return bad(format!(
                            "the placement file's layer {l} is for {} ranks, an expert-parallel group \
                             has {ranks}",
                            layer.devices
                        ));
                    }
                    // The checks do not depend on the rank (every rank's is checked).
                    super::ExpertShard::new(layer.clone(), experts, 0).map_err(|e| {
                        MoeError::Distributed(format!("placement file, layer {l}: {e}"))
                    })?;
                }
                Ok(p.clone())
            }
        }
    }
}

/// The file `burn-moe place --write` writes.
#[derive(Debug, Deserialize)]
struct PlacementFile {
    devices: usize,
    /// Per MoE layer, per expert: the ranks holding it.
    layers: Vec<Vec<Vec<usize>>>,
}

/// Reads a placement file (`burn-moe place --write`): per MoE layer, each expert's ranks.
///
/// # Errors
/// An unreadable or malformed file (the message names it).
pub fn read_placement(path: &Path) -> Result<Vec<Placement>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MoeError::Io(format!("reading the placement {}: {e}", path.display())))?;
    let file: PlacementFile = serde_json::from_str(&text).map_err(|e| {
        MoeError::Io(format!(
            "{} is not a placement file (from burn-moe place --write): {e}",
            path.display()
        ))
    })?;
    Ok(file
        .layers
        .into_iter()
        .map(|copies| Placement {
            devices: file.devices,
            copies,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_needs_ranks_that_divide_the_experts() {
        let ep = ExpertParallel {
            ranks: 4,
            ..Default::default()
        };
        assert_eq!(ep.placements(2, 8, 4).unwrap().len(), 2);
        let err = ep.placements(2, 6, 4).unwrap_err().to_string();
        assert!(err.contains("do not divide the 6 experts"), "{err}");
        let err = ep.placements(2, 8, 2).unwrap_err().to_string();
        assert!(err.contains("groups of 4 ranks, placements for 2"), "{err}");
    }

    #[test]
    fn a_placement_file_is_checked_against_the_model() {
        let dir = std::env::temp_dir().join(format!("burn-moe-placement-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        std::fs::write(&path, r#"{"devices": 2, "layers": [[[0], [1, 0], [1]]]}"#).unwrap();
        let p = read_placement(&path).unwrap();
        let ep = ExpertParallel {
            ranks: 2,
            placement: Some(p),
            ..Default::default()
        };
        assert_eq!(ep.placements(1, 3, 2).unwrap()[0].copies[1], vec![1, 0]);
        let err = ep.placements(2, 3, 2).unwrap_err().to_string();
        assert!(
            err.contains("places 1 MoE layers, the model has 2"),
            "{err}"
        );
        let err = ep.placements(1, 4, 2).unwrap_err().to_string();
        assert!(err.contains("places 3 experts, the layer has 4"), "{err}");
        std::fs::write(&path, r#"{"devices": 2, "layers": [[[0], [2], [1]]]}"#).unwrap();
        let ep = ExpertParallel {
            placement: Some(read_placement(&path).unwrap()),
            ..ep
        };
        let err = ep.placements(1, 3, 2).unwrap_err().to_string();
        assert!(err.contains("expert 1 is on rank 2 of 2"), "{err}");
        std::fs::write(&path, "not json").unwrap();
        let err = read_placement(&path).unwrap_err().to_string();
        assert!(err.contains("is not a placement file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
