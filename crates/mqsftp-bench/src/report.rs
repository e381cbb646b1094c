//! The results: figures (with every sample), targets checked against them, the table and the JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key for scripts (`get_mbps`, `latency_p50_ms`, …).
    pub key: String,
    /// What it is, for the table.
    pub label: String,
    /// The figure: the median of `samples` when there are several.
    pub value: f64,
    pub unit: &'static str,
    /// Every run's value (one per `--runs`), when the figure is a median.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

/// A target of issue 6, checked against the figures of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared, e.g. `get / sftp get`.
    pub name: String,
    /// The measured value: a ratio, or an absolute figure.
    pub value: f64,
    pub unit: &'static str,
    /// The bound, e.g. `>= 0.80`.
    pub bound: String,
    pub pass: bool,
}

/// Everything one benchmark run found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Settings of the run and the machine's load when it started.
    pub setup: serde_json::Map<String, serde_json::Value>,
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
    /// Notes printed under the table (e.g. what the many-devices run saw fail).
    pub notes: Vec<String>,
}

impl Report {
    pub fn setup(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.setup.insert(key.to_string(), value.into());
    }

    /// Adds a figure that is the median of `samples`.
    pub fn median(&mut self, key: &str, label: &str, unit: &'static str, samples: Vec<f64>) -> Option<f64> {
        let value = median(&samples)?;
        let samples = if samples.len() > 1 { samples } else { Vec::new() };
        self.figures.push(Figure { key: key.into(), label: label.into(), value, unit, samples });
        Some(value)
    }

    /// Adds a single figure.
    pub fn figure(&mut self, key: &str, label: &str, unit: &'static str, value: f64) {
        self.figures.push(Figure { key: key.into(), label: label.into(), value, unit, samples: Vec::new() });
    }

    /// The value of figure `key`, if measured.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.key == key).map(|f| f.value)
    }

    /// Target: `a / b >= min` (both figures must have been measured).
    pub fn ratio_at_least(&mut self, a: &str, b: &str, min: f64) {
        if let (Some(x), Some(y)) = (self.get(a), self.get(b)) {
            let value = if y > 0.0 { x / y } else { 0.0 };
            self.targets.push(Target {
                name: format!("{a} / {b}"),
                value,
                unit: "x",
                bound: format!(">= {min:.2}"),
                pass: value >= min,
            });
        }
    }

    /// Target: figure `key <= max`.
    pub fn at_most(&mut self, key: &str, max: f64) {
        if let Some(f) = self.figures.iter().find(|f| f.key == key) {
            let target = Target {
                name: key.to_string(),
                value: f.value,
                unit: f.unit,
                bound: format!("<= {max} {}", f.unit),
                pass: f.value <= max,
            };
            self.targets.push(target);
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\nmqsftp benchmark");
        for (k, v) in &self.setup {
            let _ = writeln!(s, "  {k}: {v}");
        }
        let _ = writeln!(s, "\n{:<58} {:>12} {:<6} samples", "figure", "value", "unit");
        for f in &self.figures {
            let samples: Vec<String> = f.samples.iter().map(|v| fmt_value(*v)).collect();
            let _ = writeln!(s, "{:<58} {:>12} {:<6} {}", f.label, fmt_value(f.value), f.unit, samples.join(" "));
        }
        let _ = writeln!(s, "\n{:<58} {:>12} {:<14} result", "target", "value", "bound");
        for t in &self.targets {
            let value = format!("{} {}", fmt_value(t.value), t.unit);
            let verdict = if t.pass { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "{:<58} {:>12} {:<14} {verdict}", t.name, value, t.bound);
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(500.0));
        assert_eq!(percentile(&v, 99.0), Some(990.0));
        assert_eq!(percentile(&v, 100.0), Some(1000.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn targets_compare_figures_of_the_run() {
        let mut r = Report::default();
        r.figure("get_mbps", "get", "MB/s", 400.0);
        r.figure("sftp_get_mbps", "sftp get", "MB/s", 450.0);
        r.figure("latency_p50_ms", "p50", "ms", 2.5);
        r.ratio_at_least("get_mbps", "sftp_get_mbps", 0.8);
        r.at_most("latency_p50_ms", 2.0);
        r.ratio_at_least("put_mbps", "sftp_put_mbps", 0.8); // not measured: no target row
        assert_eq!(r.targets.len(), 2);
        assert!(r.targets[0].pass && (r.targets[0].value - 400.0 / 450.0).abs() < 1e-9);
        assert!(!r.targets[1].pass);
        assert!(r.table().contains("FAIL") && r.table().contains("PASS"));
    }
}
