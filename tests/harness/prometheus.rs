//! Reading Prometheus text exposition in tests.

/// The sum of every sample of `name` whose labels include all of `labels` (0 when
/// there is none). Histograms are read through their `_count` / `_sum` series.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, sample) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| sample.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// True when some sample of `name` with `labels` is exported (even at zero).
pub fn exported(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().filter(|l| !l.starts_with('#')).any(|line| {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let metric = series.split_once('{').map_or(series, |(m, _)| m);
        metric == name
            && labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
    })
}

/// `GET url` (a service's `/metrics`) as text.
pub async fn scrape(url: &str) -> String {
    crate::http()
        .get(url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# TYPE tern_x counter\n\
        tern_x{a=\"1\",b=\"2\"} 3\n\
        tern_x{a=\"1\",b=\"3\"} 4\n\
        tern_x_total 7\n\
        tern_y 1.5\n";

    #[test]
    fn sums_matching_series() {
        assert_eq!(value(SAMPLE, "tern_x", &[("a", "1")]), 7.0);
        assert_eq!(value(SAMPLE, "tern_x", &[("b", "3")]), 4.0);
        assert_eq!(value(SAMPLE, "tern_x", &[("b", "9")]), 0.0);
        assert_eq!(value(SAMPLE, "tern_y", &[]), 1.5);
        assert!(exported(SAMPLE, "tern_x_total", &[]));
        assert!(!exported(SAMPLE, "tern_z", &[]));
    }
}
