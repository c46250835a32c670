//! Reading the Prometheus text format in tests.

/// The value of one series in a `/metrics` body, written exactly as the exposition writes it:
/// `petmesh_node_draining` or `petmesh_node_dependency_up{dependency="redis"}` (labels in the
/// order the exporter sorts them). `None` when the series is absent.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_series_by_its_exact_name_and_labels() {
        let text = "# HELP x y\nx_total 3\nx_total{a=\"1\"} 4.5\nx_total_more 9\n";
        assert_eq!(value(text, "x_total"), Some(3.0));
        assert_eq!(value(text, r#"x_total{a="1"}"#), Some(4.5));
        assert_eq!(value(text, "x"), None);
    }
}
