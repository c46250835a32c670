//! The end of a run of several experiments (`petmesh-dev chaos all`): one row per experiment
//! with its verdict, duration and key figures, as a table and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

/// One experiment's outcome.
pub(super) struct Row {
    /// The experiment's name on the command line.
    pub name: &'static str,
    pub passed: bool,
    /// From the start of its cluster to its verdict.
    pub duration: Duration,
    /// Its key figures (or the error that stopped it).
    pub key: Vec<(String, String)>,
    /// Its whole JSON document, as `--json` writes it for one experiment.
    pub json: serde_json::Value,
}

/// The summary table: experiment, verdict, duration, key figures (`name: value; …`).
pub(super) fn table(rows: &[Row]) -> String {
    let mut out = String::from("chaos: summary\n");
    let _ = writeln!(
        out,
        "{:<18} {:<7} {:>9}  key figures",
        "experiment", "verdict", "duration"
    );
    for row in rows {
        let key = row
            .key
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            out,
            "{:<18} {:<7} {:>7.0} s  {key}",
            row.name,
            verdict(row.passed),
            row.duration.as_secs_f64()
        );
    }
    let failed = rows.iter().filter(|row| !row.passed).count();
    let _ = writeln!(
        out,
        "{} ({} of {} passed)",
        verdict(failed == 0),
        rows.len() - failed,
        rows.len()
    );
    out
}

/// One JSON document for several experiments: the overall verdict, the summary rows, and
/// each experiment's own document.
pub(super) fn json(rows: &[Row]) -> serde_json::Value {
    serde_json::json!({
        "verdict": verdict(rows.iter().all(|row| row.passed)),
        "summary": rows.iter().map(|row| serde_json::json!({
            "experiment": row.name,
            "verdict": verdict(row.passed),
            "durationSecs": row.duration.as_secs_f64(),
            "key": row.key.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
        "experiments": rows.iter().map(|row| row.json.clone()).collect::<Vec<_>>(),
    })
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "PASS"
    } else {
        "FAIL"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &'static str, passed: bool) -> Row {
        Row {
            name,
            passed,
            duration: Duration::from_secs(42),
            key: vec![("latency p99".into(), "12.5 ms".into())],
            json: serde_json::json!({ "experiment": name }),
        }
    }

    #[test]
    fn the_table_has_a_row_per_experiment_and_fails_if_one_failed() {
        let table = table(&[row("node-kill", true), row("slow-consumers", false)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[2].starts_with("node-kill") && lines[2].contains("PASS"));
        assert!(lines[2].contains("42 s") && lines[2].contains("latency p99: 12.5 ms"));
        assert!(lines[3].starts_with("slow-consumers") && lines[3].contains("FAIL"));
        assert_eq!(lines[4], "FAIL (1 of 2 passed)");
    }

    #[test]
    fn the_json_holds_the_summary_and_every_experiment() {
        let json = json(&[row("node-kill", true), row("order-burst", true)]);
        assert_eq!(json["verdict"], "PASS");
        assert_eq!(json["summary"][1]["experiment"], "order-burst");
        assert_eq!(json["summary"][0]["key"]["latency p99"], "12.5 ms");
        assert_eq!(json["experiments"][0]["experiment"], "node-kill");
    }
}
