//! Reading the JSON log lines of the petmesh binaries: finding the addresses they listen on,
//! and rendering lines for humans.
//!
//! Nodes and balancers log one JSON object per line (tracing's JSON format with the event's
//! fields flattened into the object). The harness learns their addresses from the log rather
//! than choosing ports up front, because a process binding port 0 itself is the only way to
//! get a port without a race. Both log one `listening` line once bound: a node with `addr`,
//! a balancer with `addr` and `admin_addr`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::{Map, Value};

/// The `message` of the line a process logs once its listeners are bound.
const LISTENING: &str = "listening";

/// The address in a node's `listening` line (its `addr` field), `None` for any other line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    listening_field(line, "addr")
}

/// The address in field `field` of a `listening` line; `None` for any other line, and for a
/// `listening` line whose field is missing or not a socket address (poem logs one too, with
/// `socket://` in front, and it must not count).
///
/// Accepts the event's fields flattened (`{"message":"listening","addr":...}`, what our
/// binaries emit) and nested (`{"fields":{"message":...,"addr":...}}`, tracing's default), so
/// a change of log layout doesn't silently break every test.
pub fn listening_field(line: &str, field: &str) -> Option<SocketAddr> {
    let object = parse(line)?;
    let fields = match object.get("fields") {
        Some(Value::Object(fields)) if fields.contains_key("message") => fields,
        _ => &object,
    };
    if fields.get("message")?.as_str()? != LISTENING {
        return None;
    }
    fields.get(field)?.as_str()?.parse().ok()
}

/// A JSON log line as `HH:MM:SS.mmm LEVEL target: message key=value ...`; any other line is
/// returned unchanged.
pub fn render(line: &str) -> String {
    let Some(mut object) = parse(line) else {
        return line.to_owned();
    };
    if let Some(Value::Object(fields)) = object.remove("fields") {
        object.extend(fields);
    }
    let mut out = String::new();
    if let Some(Value::String(timestamp)) = object.remove("timestamp") {
        // `2024-05-01T12:34:56.789012Z` → `12:34:56.789`: the date is noise on a terminal.
        let time = timestamp
            .split_once('T')
            .map_or(timestamp.as_str(), |(_, t)| t);
        let _ = write!(out, "{} ", time.get(..12).unwrap_or(time));
    }
    if let Some(Value::String(level)) = object.remove("level") {
        let _ = write!(out, "{level:>5} ");
    }
    if let Some(Value::String(target)) = object.remove("target") {
        let _ = write!(out, "{target}: ");
    }
    if let Some(message) = object.remove("message") {
        out.push_str(&plain(&message));
    }
    // Span context is long and mostly repeats the request id, which is in the fields anyway.
    object.remove("span");
    object.remove("spans");
    for (key, value) in &object {
        let _ = write!(out, " {key}={}", plain(value));
    }
    out
}

/// Parses a line as a JSON object.
fn parse(line: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(line.trim()).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// Strings without their quotes, anything else as compact JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENING_LINE: &str = r#"{"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","message":"listening","addr":"127.0.0.1:41234","target":"petmesh_node::startup"}"#;

    #[test]
    fn listening_addr_reads_the_flattened_line() {
        assert_eq!(
            listening_addr(LISTENING_LINE),
            Some("127.0.0.1:41234".parse().unwrap())
        );
    }

    #[test]
    fn listening_addr_reads_nested_fields_too() {
        let line =
            r#"{"level":"INFO","fields":{"message":"listening","addr":"[::1]:8080"},"target":"x"}"#;
        assert_eq!(listening_addr(line), Some("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn listening_addr_ignores_other_lines() {
        for line in [
            r#"{"level":"INFO","message":"connected to redis","addr":"127.0.0.1:6379"}"#,
            r#"{"level":"INFO","message":"listening"}"#,
            r#"{"level":"INFO","message":"listening","addr":"not an address"}"#,
            // poem's own line, which follows the node's.
            r#"{"level":"INFO","message":"listening","addr":"socket://127.0.0.1:8080","target":"poem::server"}"#,
            "listening on 127.0.0.1:8080",
            "",
            "[1,2]",
        ] {
            assert_eq!(listening_addr(line), None, "{line}");
        }
    }

    #[test]
    fn listening_field_reads_any_named_address() {
        let line = r#"{"level":"INFO","message":"listening","addr":"127.0.0.1:1","admin_addr":"127.0.0.1:2"}"#;
        assert_eq!(
            listening_field(line, "admin_addr"),
            Some("127.0.0.1:2".parse().unwrap())
        );
        assert_eq!(
            listening_field(line, "addr"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(listening_field(LISTENING_LINE, "admin_addr"), None);
    }

    #[test]
    fn render_puts_the_usual_parts_first_and_fields_after() {
        assert_eq!(
            render(LISTENING_LINE),
            "03:04:05.678  INFO petmesh_node::startup: listening addr=127.0.0.1:41234"
        );
        let line = r#"{"level":"WARN","fields":{"message":"slow","ms":1200},"target":"t","span":{"name":"r"}}"#;
        assert_eq!(render(line), " WARN t: slow ms=1200");
    }

    #[test]
    fn render_keeps_other_lines() {
        assert_eq!(render("thread 'main' panicked"), "thread 'main' panicked");
    }
}
