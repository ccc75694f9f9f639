//! Memory estimates checked before allocating, so an absurd size is a clear error instead of an
//! abort inside the allocator.

use crate::error::{MoeError, Result};

/// Bytes this machine can still give a process: `MemAvailable` of `/proc/meminfo` on Linux;
/// `None` where that is not known (then nothing is refused).
pub fn available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// A byte count for people: `1.5 GiB`.
pub fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i + 1 == units.len() && v >= 1024.0 {
        return format!("{bytes:.3e} B");
    }
    format!("{v:.1} {}", units[i])
}

/// Errors when `bytes` (an estimate of what `what` needs; computed in `f64`, so sizes that
/// overflow `usize` are caught too) exceeds what the machine has available.
pub fn check_fits(bytes: f64, what: &str) -> Result<()> {
    check_fits_in(bytes, available_bytes(), what)
}

fn check_fits_in(bytes: f64, available: Option<f64>, what: &str) -> Result<()> {
    if !bytes.is_finite() {
        return Err(MoeError::Config(format!(
            "{what}: the sizes are too large to compute"
        )));
    }
    match available {
        Some(avail) if bytes > avail => Err(MoeError::Config(format!(
            "{what} needs about {} of memory (estimate), more than the {} this machine has \
             available; use smaller sizes",
            human_bytes(bytes),
            human_bytes(avail)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_does_not_fit_and_names_both_sizes() {
        assert!(check_fits_in(1e9, Some(2e9), "a layer").is_ok());
        assert!(check_fits_in(1e9, None, "a layer").is_ok());
        let err = check_fits_in(
            3.0 * 1024f64.powi(3),
            Some(2.0 * 1024f64.powi(3)),
            "a layer",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a layer") && err.contains("3.0 GiB") && err.contains("2.0 GiB"));
        assert!(check_fits_in(f64::INFINITY, Some(1.0), "x").is_err());
        assert!(available_bytes().is_none_or(|b| b > 0.0));
        assert_eq!(human_bytes(512.0), "512.0 B");
    }
}
