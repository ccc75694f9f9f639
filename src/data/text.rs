//! Byte-level text data and its batches.

use std::ops::Range;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::default_corpus;
use crate::error::{MoeError, Result};

/// Size of the embedded default corpus in bytes.
const DEFAULT_CORPUS_BYTES: usize = 3 << 20;

/// Training and validation bytes of one text.
#[derive(Debug, Clone)]
pub struct TextData {
    /// The first `1 - val_fraction` of the text.
    pub train: Vec<u8>,
    /// The last `val_fraction` of the text.
    pub val: Vec<u8>,
    /// Where the text came from, for messages.
    pub source: String,
}

/// Inputs and next-token targets, `[batch, seq]` each.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids (bytes).
    pub inputs: Tensor<2, Int>,
    /// The ids one position later.
    pub targets: Tensor<2, Int>,
}

impl TextData {
    /// The embedded default corpus (3 MiB, generated from `seed`), split 90/10.
    pub fn default_corpus(seed: u64) -> Self {
        let text = default_corpus(DEFAULT_CORPUS_BYTES, seed);
        Self::split(text.into_bytes(), 0.1, "embedded default corpus".into())
    }

    /// Reads a UTF-8 text file and splits it 90/10 (train first, validation last).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| MoeError::Io(format!("cannot read data file {}: {e}", path.display())))?;
        if bytes.is_empty() {
            return Err(MoeError::Input(format!(
                "data file {} is empty",
                path.display()
            )));
        }
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(MoeError::Input(format!(
                "data file {} is not UTF-8 text: invalid byte at offset {}",
                path.display(),
                e.valid_up_to()
            )));
        }
        Ok(Self::split(bytes, 0.1, path.display().to_string()))
    }

    /// The file at `path`, or the embedded default corpus generated from `seed` when `None`.
    pub fn from_file_or_default(path: Option<&Path>, seed: u64) -> Result<Self> {
        match path {
            Some(path) => Self::from_file(path),
            None => Ok(Self::default_corpus(seed)),
        }
    }

    fn split(bytes: Vec<u8>, val_fraction: f64, source: String) -> Self {
        let cut = bytes.len() - (bytes.len() as f64 * val_fraction) as usize;
        TextData {
            val: bytes[cut..].to_vec(),
            train: bytes[..cut].to_vec(),
            source,
        }
    }

    /// Errors unless both splits hold at least one window of `seq_len + 1` bytes.
    pub fn check_seq_len(&self, seq_len: usize) -> Result<()> {
        let shortest = self.train.len().min(self.val.len());
        if seq_len == 0 || shortest < seq_len + 1 {
            return Err(MoeError::Input(format!(
                "seq-len {seq_len} does not fit the data from {}: the train split has {} bytes and \
                 the validation split {} (each needs at least seq-len + 1)",
                self.source,
                self.train.len(),
                self.val.len()
            )));
        }
        Ok(())
    }

    /// Rows `rows` (a rank's shard; `0..batch` for all) of the training batch of `step`:
    /// `batch` random windows drawn from a generator seeded with `(seed, step)` alone, so step
    /// `s` sees the same data in a fresh and a resumed run, on any number of ranks.
    pub fn train_batch(
        &self,
        step: u64,
        batch: usize,
        seq_len: usize,
        seed: u64,
        rows: Range<usize>,
        device: &Device,
    ) -> Batch {
        let mut rng = StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let last_start = self.train.len() - seq_len - 1;
        let starts: Vec<usize> = (0..batch)
            .map(|_| rng.random_range(0..=last_start))
            .collect();
        let windows = starts[rows].iter().map(|&s| &self.train[s..=s + seq_len]);
        Batch::from_windows(windows, device)
    }

    /// Consecutive validation batches covering the validation split from its start (at most
    /// `max_batches`; the tail that does not fill a batch is left out).
    pub fn val_batches(
        &self,
        batch: usize,
        seq_len: usize,
        max_batches: usize,
        device: &Device,
    ) -> Vec<Batch> {
        let per_batch = batch * seq_len;
        let available = (self.val.len() - 1) / per_batch;
        (0..available
            .min(max_batches)
            .max(usize::from(self.val.len() > seq_len)))
            .map(|b| {
                let rows = batch
                    .min((self.val.len() - 1 - b * per_batch) / seq_len)
                    .max(1);
                let starts: Vec<usize> = (0..rows).map(|r| b * per_batch + r * seq_len).collect();
                Batch::from_windows(starts.iter().map(|&s| &self.val[s..=s + seq_len]), device)
            })
            .collect()
    }
}

impl Batch {
    /// Inputs and next-byte targets from windows of `seq_len + 1` bytes each (all of one
    /// length): row `r` is window `r` without its last byte, its targets without its first.
    pub fn from_windows<'a>(windows: impl Iterator<Item = &'a [u8]>, device: &Device) -> Self {
        let (mut inputs, mut targets, mut rows, mut seq_len) = (Vec::new(), Vec::new(), 0, 0);
        for w in windows {
            seq_len = w.len() - 1;
            inputs.extend(w[..seq_len].iter().map(|&b| b as i64));
            targets.extend(w[1..].iter().map(|&b| b as i64));
            rows += 1;
        }
        let shape = [rows, seq_len];
        Batch {
            inputs: Tensor::from_data(TensorData::new(inputs, shape), device),
            targets: Tensor::from_data(TensorData::new(targets, shape), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> TextData {
        TextData::split(text.as_bytes().to_vec(), 0.1, "test".into())
    }

    #[test]
    fn targets_are_inputs_shifted_by_one_and_batches_repeat() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        let d = data(&"abcdefghij".repeat(20));
        let b = d.train_batch(3, 2, 5, 7, 0..2, &device);
        let i = b.inputs.into_data().try_into_vec_as::<i64>().unwrap();
        let t = b.targets.into_data().try_into_vec_as::<i64>().unwrap();
        assert_eq!(i[1..5], t[0..4]);
        let again = d.train_batch(3, 2, 5, 7, 0..2, &device).inputs.into_data();
        assert_eq!(again.try_into_vec_as::<i64>().unwrap(), i);
    }

    #[test]
    fn rank_shards_concatenate_to_the_whole_batch() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        let d = data(&"abcdefghijklmnopqrstuvwxyz".repeat(20));
        let rows = |r| {
            d.train_batch(5, 4, 6, 9, r, &device)
                .inputs
                .into_data()
                .try_into_vec_as::<i64>()
                .unwrap()
        };
        let whole = rows(0..4);
        assert_eq!([rows(0..2), rows(2..4)].concat(), whole);
        assert_eq!(rows(3..4), whole[18..]);
    }

    #[test]
    fn seq_len_must_fit_both_splits() {
        let d = data(&"x".repeat(100)); // val: 10 bytes
        assert!(d.check_seq_len(9).is_ok());
        assert!(
            d.check_seq_len(10)
                .unwrap_err()
                .to_string()
                .contains("seq-len 10")
        );
    }
}
