//! The state of one compilation: every error found so far (all are reported at once), why it runs, the
//! previous runtime (whose live backend state unchanged backends keep), and the file as parsed.

use super::{ConfigError, GatewayConfig};
use crate::runtime::Runtime;

/// Why the config is being compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `gateway validate`: a missing certificate marked `self_signed_if_missing` is fine (it would be generated).
    Validate,
    /// Serving: every certificate must load.
    Run,
}

pub(super) struct Compiler<'a> {
    pub(super) errors: Vec<ConfigError>,
    pub(super) mode: Mode,
    pub(super) previous: Option<&'a Runtime>,
    /// The file as parsed: for what compiling alone cannot tell (which variable an empty value came from).
    pub(super) config: &'a GatewayConfig,
}

impl Compiler<'_> {
    pub(super) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }
}
