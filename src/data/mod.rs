//! Training text: byte-level tokens, the embedded default corpus, train/validation split and
//! batches that are a pure function of (seed, step), so a resumed run sees the same data.

mod corpus;
mod text;

pub use corpus::default_corpus;
pub use text::{Batch, TextData};
