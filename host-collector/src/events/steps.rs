//! The step metrics of stored records, fed by the dispatcher: every record's steps, each
//! step's histogram looked up once (not a label `String` and a map lookup per step), and the
//! steps JSON read with borrowed names (no `String` per step) when nothing else needs it.

use std::borrow::Cow;

use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::store::StepView;

/// What the metrics use of one step of the stored JSON (`outcome` required, as by
/// [`StepView`], but not kept).
#[derive(Deserialize)]
struct StepTime<'a> {
    #[serde(borrow)]
    step: Cow<'a, str>,
    #[allow(dead_code)]
    outcome: serde::de::IgnoredAny,
    elapsed_us: u32,
}

pub(super) struct StepMetrics {
    metrics: Metrics,
    /// The histograms seen so far, by step name (seven steps: a list is quicker than a map).
    histograms: Vec<(Box<str>, Histogram)>,
}

impl StepMetrics {
    pub(super) fn new(metrics: Metrics) -> StepMetrics {
        StepMetrics {
            metrics,
            histograms: Vec::new(),
        }
    }

    fn observe_one(&mut self, step: &str, elapsed_us: u32) {
        let i = match self.histograms.iter().position(|(s, _)| **s == *step) {
            Some(i) => i,
            None => {
                let h = self.metrics.step_histogram(step);
                self.histograms.push((step.into(), h));
                self.histograms.len() - 1
            }
        };
        self.histograms[i].1.observe(f64::from(elapsed_us) / 1e6);
    }

    /// The steps of one record, as [`Metrics::observe_steps`] does.
    pub(super) fn observe(&mut self, steps: &[StepView]) {
        for s in steps {
            self.observe_one(&s.step, s.elapsed_us);
        }
    }

    /// The steps of one record from its stored JSON (JSON that does not parse: no steps, as
    /// for the events).
    pub(super) fn observe_json(&mut self, json: &str) {
        let mut fast = [("", 0); FAST_STEPS];
        if let Some(n) = scan(json, &mut fast) {
            for &(step, us) in &fast[..n] {
                self.observe_one(step, us);
            }
        } else if let Ok(steps) = serde_json::from_str::<Vec<StepTime>>(json) {
            for s in &steps {
                self.observe_one(&s.step, s.elapsed_us);
            }
        }
    }
}

/// Most steps [`scan`] takes (a record has seven; more go to serde).
const FAST_STEPS: usize = 16;

/// The (step, elapsed_us) pairs of steps JSON in exactly the form the collector writes it
/// (`convert::row_text`: `[{"step":"…","outcome":"…","elapsed_us":N},…]`, no escapes) into
/// `out`, and how many; `None` for anything else (escapes, spaces, other keys or order, a
/// number that is not a u32, more than [`FAST_STEPS`]), which serde then reads. Parsing the
/// JSON was most of the dispatcher's time per record with `--metrics`.
pub(super) fn scan<'a>(json: &'a str, out: &mut [(&'a str, u32); FAST_STEPS]) -> Option<usize> {
    if json.contains('\\') {
        return None;
    }
    let mut rest = json.strip_prefix('[')?;
    let mut n = 0;
    if let Some(r) = rest.strip_prefix(']') {
        return r.is_empty().then_some(0);
    }
    loop {
        rest = rest.strip_prefix("{\"step\":\"")?;
        let (step, r) = rest.split_once('"')?;
        let r = r.strip_prefix(",\"outcome\":\"")?;
        let (_, r) = r.split_once('"')?;
        let r = r.strip_prefix(",\"elapsed_us\":")?;
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        // serde reads "007" as an error: so does this.
        if digits == 0 || (digits > 1 && r.starts_with('0')) {
            return None;
        }
        let us: u32 = r[..digits].parse().ok()?;
        let r = r[digits..].strip_prefix('}')?;
        *out.get_mut(n)? = (step, us);
        n += 1;
        if let Some(r) = r.strip_prefix(',') {
            rest = r;
        } else {
            return (r == "]").then_some(n);
        }
    }
}
