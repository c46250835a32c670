//! The tracing subscriber: JSON lines for machines, pretty output for people.

use serde::Deserialize;
use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, event fields flattened to the top level.
    Json,
    /// Human-readable, multi-line.
    Pretty,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as `info` or
/// `petmesh_node=debug,info`; `RUST_LOG`, when set, wins.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stdout);
    // A second init (tests, tools) keeps the first subscriber, hence `try_init`.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
}

/// Whether `level` is a valid filter directive (for configuration validation).
pub fn is_valid_level(level: &str) -> bool {
    EnvFilter::try_new(level).is_ok()
}
