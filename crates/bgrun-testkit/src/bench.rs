//! What every bgrun benchmark shares: its command line, its rows (each bgrun figure beside a
//! "raw" one measured in the same run, and their ratio) and the JSON that `cargo xtask bench`
//! merges into `target/bench/latest.json`.

use std::time::Duration;

use serde_json::{json, Value};

/// A benchmark's command line: `[--quick] [--out FILE] [--only ID,ID]` (cargo's own `--bench`
/// is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BenchOptions {
    /// A smaller run.
    pub quick: bool,
    /// Where to write the rows as JSON.
    pub out: Option<String>,
    /// Only these rows (for profiling one).
    pub only: Option<String>,
}

impl BenchOptions {
    /// Reads the process's arguments.
    pub fn from_args() -> Self {
        let mut options = Self::default();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--out" => options.out = args.next(),
                "--only" => options.only = args.next(),
                _ => {}
            }
        }
        options
    }

    /// Whether row `id` is to be measured.
    pub fn runs(&self, id: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.split(',').any(|one| one == id))
    }

    /// Prints the benchmark's title line, with the machine's core count.
    pub fn announce(&self, title: &str) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let quick = if self.quick { ", quick" } else { "" };
        println!("{title}, {cores} cores{quick}");
    }

    /// Writes `rows` to `--out`, when given.
    pub fn write(&self, rows: &[Value]) -> std::io::Result<()> {
        match &self.out {
            Some(out) => std::fs::write(out, serde_json::to_string_pretty(rows)?),
            None => Ok(()),
        }
    }
}

/// One row: prints it and returns its JSON
/// (`{"id", "store", "metric", "value", "raw", "ratio"}`).
pub fn row(id: &str, store: &str, metric: &str, value: f64, raw: f64) -> Value {
    let ratio = if raw == 0.0 { 0.0 } else { value / raw };
    println!(
        "{id:<4} {store:<8} {metric:<18} bgrun {value:>14.1}   raw {raw:>14.1}   ratio {ratio:>6.2}"
    );
    json!({"id": id, "store": store, "metric": metric, "value": round(value),
        "raw": round(raw), "ratio": round(ratio)})
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The `p` quantile (0..=1) of `samples`, in microseconds (sorts them).
pub fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank].as_secs_f64() * 1e6
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_the_ratio_and_quantiles_pick_ranks() {
        let value = row("X1", "sqlite", "p50_us", 3.0, 2.0);
        assert_eq!(value["ratio"], 1.5);
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&mut samples, 0.5), 51.0);
        assert_eq!(percentile_us(&mut samples, 0.99), 99.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let only = BenchOptions {
            only: Some("P4,P6".into()),
            ..BenchOptions::default()
        };
        assert!(only.runs("P6") && !only.runs("P5"));
    }
}
