//! Where configuration reads the environment from.
//!
//! Configuration code never calls `std::env::var` directly: it asks an [`Env`].
//! The process uses [`ProcessEnv`]; unit tests hand in a map, so no test ever
//! mutates the process environment (which is unsound with threads, and would
//! make tests depend on each other).

use std::collections::HashMap;

/// A source of environment variables.
pub trait Env {
    /// The variable's value, `Ok(None)` when unset, or an error when it is set
    /// but not valid UTF-8.
    fn var(&self, name: &str) -> Result<Option<String>, NotUnicode>;
}

/// The variable exists but its value is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {0} is not valid UTF-8")]
pub struct NotUnicode(pub String);

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(NotUnicode(name.to_string())),
        }
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        Ok(self.get(name).cloned())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        Ok(self
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string()))
    }
}
