//! The process environment, behind a trait.
//!
//! Credential locations such as `env::OPENAI_API_KEY` and the built-in default
//! config read environment variables. They do so through [`Env`] so that tests
//! can hand in a map instead of mutating the process environment (which is
//! `unsafe` in edition 2024 and racy across test threads). [`ProcessEnv`] is the
//! one place allowed to call `std::env::var`.

use std::collections::HashMap;
use std::fmt;

/// A source of environment variables.
pub trait Env: Send + Sync + fmt::Debug {
    /// The value of `name`, or `None` when it is unset or not valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    #[allow(
        clippy::disallowed_methods,
        reason = "the single sanctioned reader of the process environment"
    )]
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables, for tests and embedding.
///
/// `Debug` lists only the names: values may be secrets.
#[derive(Clone, Default)]
pub struct MapEnv(HashMap<String, String>);

impl MapEnv {
    /// An environment holding exactly `vars`.
    #[must_use]
    pub fn new<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

impl fmt::Debug for MapEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}
