//! The embedded default corpus: generated, deterministic text in three distinct "domains" that
//! experts can specialise on, so the crate trains out of the box with no download.
//!
//! - arithmetic: `37 + 58 = 95`, `12 * 7 = 84`;
//! - records: `id=0412; name=Mara Okafor; city=Lisbon; age=37; score=81.5`;
//! - prose from a small grammar: `the quiet river follows a lantern near the old mill.`

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const NAMES: &[&str] = &[
    "Mara", "Ivo", "Lena", "Tomas", "Aiko", "Ravi", "Noor", "Elias", "Sofia", "Kwame",
];
const SURNAMES: &[&str] = &[
    "Okafor", "Lind", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Berg",
];
const CITIES: &[&str] = &[
    "Lisbon", "Oslo", "Nairobi", "Kyoto", "Quito", "Tunis", "Hanoi", "Perth",
];
const ADJ: &[&str] = &[
    "quiet", "old", "bright", "small", "distant", "patient", "green", "heavy", "clever",
];
const NOUN: &[&str] = &[
    "river", "lantern", "mill", "child", "garden", "captain", "letter", "storm", "bridge", "fox",
];
const VERB: &[&str] = &[
    "follows",
    "watches",
    "finds",
    "carries",
    "remembers",
    "crosses",
    "guards",
    "paints",
];
const PREP: &[&str] = &["near", "under", "beyond", "behind", "toward", "inside"];

fn arithmetic(rng: &mut StdRng, out: &mut String) {
    let a: u32 = rng.random_range(0..100);
    let b: u32 = rng.random_range(0..100);
    match rng.random_range(0..3) {
        0 => out.push_str(&format!("{a} + {b} = {}\n", a + b)),
        1 => out.push_str(&format!("{} - {b} = {a}\n", a + b)),
        _ => {
            let (a, b) = (a % 13, b % 13);
            out.push_str(&format!("{a} * {b} = {}\n", a * b));
        }
    }
}

fn record(rng: &mut StdRng, out: &mut String) {
    let pick = |rng: &mut StdRng, v: &[&'static str]| *v.choose(rng).unwrap_or(&"");
    out.push_str(&format!(
        "id={:04}; name={} {}; city={}; age={}; score={:.1}\n",
        rng.random_range(0..10_000),
        pick(rng, NAMES),
        pick(rng, SURNAMES),
        pick(rng, CITIES),
        rng.random_range(18..90),
        rng.random_range(0.0..100.0f32),
    ));
}

fn sentence(rng: &mut StdRng, out: &mut String) {
    let pick = |rng: &mut StdRng, v: &[&'static str]| *v.choose(rng).unwrap_or(&"");
    let (a1, n1, v, p, a2, n2) = (
        pick(rng, ADJ),
        pick(rng, NOUN),
        pick(rng, VERB),
        pick(rng, PREP),
        pick(rng, ADJ),
        pick(rng, NOUN),
    );
    let article = if rng.random_bool(0.5) { "the" } else { "a" };
    out.push_str(&format!(
        "the {a1} {n1} {v} {article} {n2} {p} the {a2} mill.\n"
    ));
}

/// About `bytes` bytes of the default corpus, the same for the same `seed`. Lines of the three
/// domains come in runs of a few lines, like paragraphs of a document.
pub fn default_corpus(bytes: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(bytes + 128);
    while out.len() < bytes {
        let domain = rng.random_range(0..3);
        for _ in 0..rng.random_range(2..8) {
            match domain {
                0 => arithmetic(&mut rng, &mut out),
                1 => record(&mut rng, &mut out),
                _ => sentence(&mut rng, &mut out),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_has_all_domains() {
        let a = default_corpus(20_000, 1);
        assert_eq!(a, default_corpus(20_000, 1));
        assert_ne!(a, default_corpus(20_000, 2));
        assert!(a.len() >= 20_000);
        assert!(a.contains(" = ") && a.contains("city=") && a.contains(" mill.\n"));
        // Arithmetic lines are correct.
        for line in a.lines().filter(|l| l.contains(" + ")) {
            let nums: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|t| t.parse().ok())
                .collect();
            assert_eq!(nums[0] + nums[1], nums[2], "{line}");
        }
    }
}
