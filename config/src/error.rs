//! Errors that say where a bad value came from, which field it was in, and what is wrong with it.

use std::fmt;

/// One problem with one field of one input.
///
/// `origin` is where the input came from (`gantry.toml`, `docker container blog-1 label
/// gantry.weight`, `etcd key /gantry/routers/api @ rev 42`), `field` is the dotted path inside
/// it (`services.web.backends[1].url`), `reason` says what is wrong in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub origin: String,
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(origin: impl Into<String>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.origin.is_empty(), self.field.is_empty()) {
            (false, false) => write!(f, "{}: {}: {}", self.origin, self.field, self.reason),
            (false, true) => write!(f, "{}: {}", self.origin, self.reason),
            (true, false) => write!(f, "{}: {}", self.field, self.reason),
            (true, true) => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one input. Validation keeps going after the first error so that a user
/// fixes a file in one pass, not one error per run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn push(&mut self, origin: &str, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError::new(origin, field, reason));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Errors) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when nothing was reported, the collected errors otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Errors> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

impl From<ConfigError> for Errors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}
