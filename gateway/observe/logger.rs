//! The process log: env_logger (`RUST_LOG`, default `info`) with Pingora's lines that are not errors of
//! a request demoted to debug. Pingora logs `failed to acquire reusable stream` at ERROR when a pooled
//! upstream connection is still held by its idle watcher at the moment a request wants it; the request
//! then opens a new connection (pingora-core `connectors::reused_stream` returns `None`), so nothing
//! failed, and under load the line came once per such request.

use log::{Level, Log, Metadata, Record};

/// Messages (by target and exact text) that are logged at debug level instead of their own.
const DEMOTED: &[(&str, &str)] = &[(
    "pingora_core::connectors",
    "failed to acquire reusable stream",
)];

/// Whether `record` is one of the `DEMOTED` lines, at a level above debug.
fn demoted(record: &Record) -> bool {
    record.level() < Level::Debug
        && DEMOTED.iter().any(|(target, text)| {
            record.target() == *target
                && record
                    .args()
                    .as_str()
                    .is_some_and(|message| message == *text)
        })
}

struct Demoting {
    inner: env_logger::Logger,
}

impl Log for Demoting {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !demoted(record) {
            self.inner.log(record);
            return;
        }
        let debug = Metadata::builder()
            .level(Level::Debug)
            .target(record.target())
            .build();
        if self.inner.enabled(&debug) {
            self.inner.log(
                &Record::builder()
                    .metadata(debug)
                    .args(*record.args())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Install the process logger.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Demoting { inner })).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_messages_are_demoted() {
        let record = |level, target, args| {
            let demoted = demoted(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(args)
                    .build(),
            );
            demoted
        };
        assert!(record(
            Level::Error,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream")
        ));
        assert!(!record(
            Level::Error,
            "pingora_core::connectors",
            format_args!("connect failed")
        ));
        assert!(!record(
            Level::Error,
            "gateway::proxy",
            format_args!("failed to acquire reusable stream")
        ));
    }
}
