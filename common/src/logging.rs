//! Logging set-up shared by the operator and the sidecar: one filter syntax, one JSON shape.

use std::io::IsTerminal;

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, the event's fields at its top level.
    Json,
}

/// The filter for `level` (tracing `EnvFilter` syntax, e.g. `info` or `info,kube=debug`), or
/// `info` when it does not parse — a typo in a log level must not stop a process from starting.
pub fn filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Sends the process's logs to stderr, filtered by `level`, in `format`. Stderr, because stdout
/// carries what a command prints as its result (`handover-operator crd`, `cookie inspect`). A
/// second call does nothing (a logger is already installed).
pub fn init_logging(level: &str, format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level)).with_ansi(ansi).with_writer(std::io::stderr);
    let _already_installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_level_that_does_not_parse_falls_back_to_info() {
        assert_eq!(filter("debug").to_string(), "debug");
        assert_eq!(filter("[").to_string(), "info");
    }
}
