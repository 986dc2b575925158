//! One line of the figures table.

use std::fmt;
use std::time::Duration;

use crate::ledger::Counts;

/// The outcome of one scenario on one backend.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario's short name.
    pub scenario: &'static str,
    /// The backend, e.g. `redis`.
    pub backend: &'static str,
    /// What the counts were.
    pub counts: Counts,
    /// From the end of the fault until the consumer had caught up (or the first event after
    /// the fault was handled, where the scenario says so).
    pub recovery: Option<Duration>,
    /// Anything else worth a column: dead letters, peak memory, warnings seen.
    pub notes: String,
}

impl Row {
    /// The Markdown table header matching [`Row`]'s `Display`.
    pub const HEADER: &'static str = "| scenario | backend | sent | acknowledged | received | lost | duplicates | recovered in | notes |\n|---|---|---|---|---|---|---|---|---|";

    /// Whether nothing acknowledged was lost.
    pub fn passed(&self) -> bool {
        self.counts.lost == 0
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let recovery = match self.recovery {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "–".to_owned(),
        };
        write!(
            f,
            "| {} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
            self.scenario,
            self.backend,
            c.attempts,
            c.acked,
            c.received,
            c.lost,
            c.duplicates,
            recovery,
            self.notes
        )
    }
}
