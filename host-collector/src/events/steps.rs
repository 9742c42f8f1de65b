//! The step metrics of stored records, fed by the dispatcher: every record's steps, each
//! step's histogram looked up once (not a label `String` and a map lookup per step), and the
//! steps JSON read with borrowed names (no `String` per step) when nothing else needs it.

use std::borrow::Cow;

use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::store::StepView;

/// What the metrics use of one step of the stored JSON (`outcome` is skipped).
#[derive(Deserialize)]
struct StepTime<'a> {
    #[serde(borrow)]
    step: Cow<'a, str>,
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
        if let Ok(steps) = serde_json::from_str::<Vec<StepTime>>(json) {
            for s in &steps {
                self.observe_one(&s.step, s.elapsed_us);
            }
        }
    }
}
