//! Flags several subcommands share, each defined once: `--backend`, `--preset`, `--balancer`.
//! Their values are listed in `--help`, and a typo gets a suggestion.

use burn_moe::BackendKind;
use burn_moe::balance::BalancerConfig;
use burn_moe::model::Preset;
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};

/// The backend every computing subcommand takes.
#[derive(Debug, Clone, Copy, Args)]
pub struct BackendFlag {
    /// Backend: flex (CPU), ndarray (CPU) or wgpu (any GPU: Vulkan, Metal, DX12, WebGPU).
    #[arg(
        long = "backend",
        value_name = "BACKEND",
        default_value = "flex",
        value_parser = PossibleValuesParser::new(["flex", "ndarray", "wgpu"])
            .try_map(|s| s.parse::<BackendKind>())
    )]
    pub kind: BackendKind,
}

/// Parser of `--preset`: its values in `--help`, suggestions for typos.
pub fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    PossibleValuesParser::new(["tiny", "small"]).try_map(|s| s.parse::<Preset>())
}

/// Parser of `--balancer`: a name of [`BalancerConfig::NAMES`] with optional parameters
/// (`bip:t=4`); an unknown name gets the closest known one as a suggestion.
pub fn parse_balancer(value: &str) -> Result<BalancerConfig, String> {
    value.parse().map_err(|e: burn_moe::MoeError| {
        let name = value.split(':').next().unwrap_or(value);
        match closest(name, &BalancerConfig::NAMES) {
            Some(near) if !BalancerConfig::NAMES.contains(&name) => {
                format!("{e}\n  tip: a similar balancer exists: '{near}'")
            }
            _ => e.to_string(),
        }
    })
}

/// The candidate within edit distance 3 of `word` with the smallest distance.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("bip", "bip"), 0);
        assert_eq!(edit_distance("bpi", "bip"), 2);
        assert_eq!(edit_distance("los-free", "loss-free"), 1);
        assert_eq!(edit_distance("", "qb"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_balancer_typo_gets_a_suggestion() {
        let err = parse_balancer("los-free").unwrap_err();
        assert!(
            err.contains("similar balancer exists: 'loss-free'"),
            "{err}"
        );
        let err = parse_balancer("bip:t=0").unwrap_err();
        assert!(!err.contains("similar"), "{err}");
        assert!(parse_balancer("bip-noclamp:t=4").is_ok());
    }
}
