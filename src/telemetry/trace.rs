//! Expert-load traces.
//!
//! # Format
//! A trace is a text file of JSON lines, one record per training step per MoE layer:
//!
//! ```text
//! {"step":12,"layer":0,"requested":[130,97,...],"computed":[128,97,...]}
//! ```
//!
//! `step` counts from 1, `layer` is the index among the model's MoE layers, `requested` holds
//! the tokens each expert was asked to take and `computed` those it computed after capacity
//! (equal when dropless). Records are appended and flushed every step, so a killed run leaves
//! at most a truncated last line, which [`TraceReader`] reports and skips.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{MoeError, Result};

/// One step of one MoE layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Training step, from 1.
    pub step: u64,
    /// MoE layer index.
    pub layer: usize,
    /// Tokens each expert was asked to take.
    pub requested: Vec<usize>,
    /// Tokens each expert computed.
    pub computed: Vec<usize>,
}

/// Appends JSON lines (trace records, or any serialisable values) to a file.
pub struct TraceWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl TraceWriter {
    /// Opens `path` for appending, creating it if needed.
    pub fn append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| MoeError::Io(format!("opening trace {}: {e}", path.display())))?;
        Ok(TraceWriter {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    /// Writes the records of one step and flushes them to the file.
    pub fn write_step(&mut self, records: &[TraceRecord]) -> Result<()> {
        self.write_lines(records)
    }

    /// Writes any serialisable values, one JSON line each, and flushes them to the file.
    pub fn write_lines<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| {
            MoeError::Io(format!("writing trace {}: {e}", self.path.display()))
        };
        for r in records {
            serde_json::to_writer(&mut self.out, r).map_err(|e| err(&e))?;
            self.out.write_all(b"\n").map_err(|e| err(&e))?;
        }
        self.out.flush().map_err(|e| err(&e))
    }
}

/// Streams the records of a trace file in bounded memory.
pub struct TraceReader {
    lines: std::io::Lines<BufReader<File>>,
    line_no: usize,
    path: PathBuf,
    /// Lines that could not be parsed (a truncated last record), with their line numbers.
    pub skipped: Vec<usize>,
}

impl TraceReader {
    /// Opens a trace file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| MoeError::Io(format!("opening trace {}: {e}", path.display())))?;
        Ok(TraceReader {
            lines: BufReader::new(file).lines(),
            line_no: 0,
            path: path.to_path_buf(),
            skipped: Vec::new(),
        })
    }
}

impl Iterator for TraceReader {
    type Item = Result<TraceRecord>;

    /// The next record. A line that does not parse is skipped (and counted in `skipped`) only
    /// when it is the last line of the file (a run killed mid-write); anywhere else it is an
    /// error naming the line.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => {
                    return Some(Err(MoeError::Io(format!(
                        "reading trace {}: {e}",
                        self.path.display()
                    ))));
                }
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<TraceRecord>(&line) {
                Ok(r) => return Some(Ok(r)),
                Err(e) => {
                    let is_last = self.lines.next().is_none();
                    if is_last {
                        log::warn!(
                            "trace {}: skipping truncated last record (line {})",
                            self.path.display(),
                            self.line_no
                        );
                        self.skipped.push(self.line_no);
                        return None;
                    }
                    return Some(Err(MoeError::Input(format!(
                        "trace {} line {}: not a trace record: {e}",
                        self.path.display(),
                        self.line_no
                    ))));
                }
            }
        }
    }
}

/// Keeps only the lines whose `step` is at most `last_step` (used when a run resumes from a
/// checkpoint, for the trace and the metrics file alike), rewriting the file atomically: the
/// kept lines go to a new temporary file that replaces `path`. A truncated last line (a run
/// killed mid-write) is dropped; any other line without a `step` is an error.
pub fn truncate_after(path: &Path, last_step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| MoeError::Io(format!("reading {}: {e}", path.display())))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut keep = String::new();
    for (i, line) in lines.iter().enumerate() {
        let step = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        match step {
            Some(s) if s <= last_step => {
                keep.push_str(line);
                keep.push('\n');
            }
            Some(_) => {}
            None if i + 1 == lines.len() => {} // killed mid-write
            None => {
                return Err(MoeError::Input(format!(
                    "{} line {}: not a JSON record with a step",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    crate::checkpoint::write_bytes_atomic(path, keep.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_truncated_tail_and_corrupt_middle() {
        let dir = std::env::temp_dir().join(format!("burn-moe-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.jsonl");
        let rec = |step| TraceRecord {
            step,
            layer: 0,
            requested: vec![3, 1],
            computed: vec![2, 1],
        };
        let mut w = TraceWriter::append(&path).unwrap();
        w.write_step(&[rec(1), rec(2), rec(3)]).unwrap();
        drop(w);
        // A run killed mid-write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"step\":4,\"layer\":0,\"requ").unwrap();
        let mut reader = TraceReader::open(&path).unwrap();
        let got: Vec<_> = reader.by_ref().map(|r| r.unwrap().step).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(reader.skipped, vec![4]);
        let steps = |p: &Path| -> Vec<u64> {
            TraceReader::open(p)
                .unwrap()
                .map(|r| r.unwrap().step)
                .collect()
        };
        truncate_after(&path, 2).unwrap();
        assert_eq!(steps(&path), vec![1, 2]);
        // A temporary file left by a killed run is replaced, never appended to.
        let stale = dir.join(format!("trace.jsonl.tmp-{}", std::process::id()));
        std::fs::write(
            &stale,
            "{\"step\":1,\"layer\":0,\"requested\":[],\"computed\":[]}\n",
        )
        .unwrap();
        truncate_after(&path, 2).unwrap();
        assert_eq!(steps(&path), vec![1, 2]);
        // Metrics lines (other fields, same `step`) are truncated the same way.
        let metrics = dir.join("metrics.jsonl");
        std::fs::write(
            &metrics,
            "{\"step\":1,\"train_loss\":3.0}\n{\"step\":2,\"val_loss\":2.0}\n{\"step\":3,\"train_loss\":1.0}\n{\"st",
        )
        .unwrap();
        truncate_after(&metrics, 2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&metrics).unwrap(),
            "{\"step\":1,\"train_loss\":3.0}\n{\"step\":2,\"val_loss\":2.0}\n"
        );
        // Garbage in the middle is an error, not silently skipped.
        std::fs::write(
            &path,
            "garbage\n{\"step\":1,\"layer\":0,\"requested\":[],\"computed\":[]}\n",
        )
        .unwrap();
        assert!(TraceReader::open(&path).unwrap().next().unwrap().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
