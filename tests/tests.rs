//! The integration tests: one binary, one shared harness (`util`).

mod util;

mod cli;
mod pid1;
