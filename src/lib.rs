//! rayhead: PID 1 for the head container of a KubeRay cluster with GCS fault
//! tolerance.
//!
//! `main.rs` only calls [`cli::main`]; everything else lives here so that
//! tests drive the same code the binary runs.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod dev;
pub mod exit;
pub mod http_client;
pub mod init;
pub mod logging;
pub mod memory;
pub mod private_dir;
pub mod probe;
#[cfg(test)]
mod proptests;
pub mod ray;
pub mod redact;
pub mod redis;
pub mod state;
pub mod storage;
pub mod sys;
pub mod time;
