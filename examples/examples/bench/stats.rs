//! Medians, ranges and the report table.

use serde::Serialize;

/// One figure of the report: repeated samples of the SDK and of its raw baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub id: &'static str,
    pub what: String,
    pub unit: &'static str,
    pub sdk: Vec<f64>,
    pub baseline: Vec<f64>,
    /// True when bigger is better (throughput); false for latency/time/memory.
    pub higher_is_better: bool,
    pub target: String,
    /// The target as a bound on the ratio (sdk/baseline for throughput, sdk/baseline for cost).
    pub ratio_bound: Option<f64>,
    pub note: String,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}

impl Figure {
    pub fn ratio(&self) -> f64 {
        median(&self.sdk) / median(&self.baseline)
    }

    pub fn met(&self) -> Option<bool> {
        let bound = self.ratio_bound?;
        let r = self.ratio();
        Some(if self.higher_is_better { r >= bound } else { r <= bound })
    }
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| id | figure | SDK median (min–max) | baseline median (min–max) | ratio | target | met |\n|---|---|---|---|---|---|---|\n",
    );
    for f in figures {
        let (slo, shi) = range(&f.sdk);
        let (blo, bhi) = range(&f.baseline);
        let met = match f.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        out.push_str(&format!(
            "| {} | {} ({}) | {} ({}–{}) | {} ({}–{}) | {} | {} | {} |\n",
            f.id,
            f.what,
            f.unit,
            fmt(median(&f.sdk)),
            fmt(slo),
            fmt(shi),
            fmt(median(&f.baseline)),
            fmt(blo),
            fmt(bhi),
            fmt(f.ratio()),
            f.target,
            met
        ));
    }
    out
}
