//! The command line under bad inputs, kills and repeated runs: a table-driven campaign of
//! invalid inputs to every subcommand, kill -9 at random moments of training followed by
//! resume, and same-seed runs that must repeat themselves on the CPU backends.

#[path = "../common/mod.rs"]
mod common;

mod campaign;
mod cli;
mod crash;
mod repeat;
mod support;
