//! The process log: env_logger (`RUST_LOG`, default `info`) with Pingora's lines that are not errors of
//! a request demoted to debug. Pingora logs `failed to acquire reusable stream` at ERROR when a pooled
//! upstream connection is still held by its idle watcher at the moment a request wants it; the request
//! then opens a new connection (pingora-core `connectors::reused_stream` returns `None`), so nothing
//! failed, and under load the line came once per such request. The new process of an upgrade logs `No
//! incoming socket transfer, sleep 1s and try again` at ERROR while it waits for the old one to hand its
//! sockets over, which is the expected order: it becomes an info line.

use log::{Level, Log, Metadata, Record};

/// Messages (by target and the start of their text) logged at a lower level than their own.
const DEMOTED: &[(&str, &str, Level)] = &[
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
        Level::Debug,
    ),
    (
        "pingora_core::server::transfer_fd",
        "No incoming socket transfer",
        Level::Info,
    ),
];

/// The lower level of `record` if it is one of the `DEMOTED` lines at a level above it.
fn demoted(record: &Record) -> Option<Level> {
    DEMOTED.iter().find_map(|&(target, text, level)| {
        let matches = record.level() < level
            && record.target() == target
            && match record.args().as_str() {
                Some(message) => message.starts_with(text),
                // Formatted only for the listed targets, which log rarely.
                None => record.args().to_string().starts_with(text),
            };
        matches.then_some(level)
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
        let Some(level) = demoted(record) else {
            self.inner.log(record);
            return;
        };
        let lower = Metadata::builder()
            .level(level)
            .target(record.target())
            .build();
        if self.inner.enabled(&lower) {
            self.inner.log(
                &Record::builder()
                    .metadata(lower)
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
        fn record(level: Level, target: &str, args: std::fmt::Arguments) -> Option<Level> {
            demoted(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(args)
                    .build(),
            )
        }
        assert_eq!(
            record(
                Level::Error,
                "pingora_core::connectors",
                format_args!("failed to acquire reusable stream")
            ),
            Some(Level::Debug)
        );
        let interval = std::time::Duration::from_secs(1);
        let waiting = record(
            Level::Error,
            "pingora_core::server::transfer_fd",
            format_args!("No incoming socket transfer, sleep {interval:?} and try again"),
        );
        assert_eq!(waiting, Some(Level::Info));
        assert_eq!(
            record(
                Level::Error,
                "pingora_core::server::transfer_fd",
                format_args!("Error accepting socket transfer: EBADF")
            ),
            None
        );
        assert_eq!(
            record(
                Level::Error,
                "pingora_core::connectors",
                format_args!("connect failed")
            ),
            None
        );
        assert_eq!(
            record(
                Level::Error,
                "gateway::proxy",
                format_args!("failed to acquire reusable stream")
            ),
            None
        );
    }
}
