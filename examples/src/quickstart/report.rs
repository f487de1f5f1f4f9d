//! What a run did ([`Report`]): the counts, the promises checked against them
//! ([`Report::problems`]), and how they are printed.

use std::time::Duration;

/// What happened, counted from the database, the topic and the inbox's metrics.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub database: String,
    pub broker: String,
    pub committed: usize,
    pub rolled_back: usize,
    /// Distinct orders of this run found on the topic.
    pub published: usize,
    /// Reservation rows written by the handler for this run.
    pub handled: usize,
    /// Distinct orders among those rows (less than `handled` would be a double effect).
    pub handled_distinct: usize,
    /// Messages the inbox recognised as already handled.
    pub duplicates_skipped: u64,
    pub dead_lettered: u64,
    /// Rolled-back orders that reached the topic or the handler (must be 0).
    pub rolled_back_seen: usize,
    pub elapsed: Duration,
}

impl Report {
    /// The promises, checked: every committed order published and handled once, nothing from
    /// a rolled-back one, the deliberate duplicate skipped and the hostile message dead-lettered.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.published != self.committed {
            p.push(format!("published {} != committed {}", self.published, self.committed));
        }
        if self.handled != self.committed || self.handled_distinct != self.committed {
            p.push(format!(
                "handled {} ({} distinct) != committed {}",
                self.handled, self.handled_distinct, self.committed
            ));
        }
        if self.duplicates_skipped < 1 {
            p.push("the deliberate duplicate was not skipped".into());
        }
        if self.dead_lettered < 1 {
            p.push("the hostile message was not dead-lettered".into());
        }
        if self.rolled_back_seen > 0 {
            p.push(format!("{} rolled-back orders were seen", self.rolled_back_seen));
        }
        p
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "database          {}", self.database)?;
        writeln!(f, "broker            {}", self.broker)?;
        writeln!(f, "orders committed  {}", self.committed)?;
        writeln!(f, "orders rolled back {} (none of them may appear below)", self.rolled_back)?;
        writeln!(f, "published         {}   (distinct orders on the topic)", self.published)?;
        writeln!(f, "handled           {}   (reservation rows; {} distinct)", self.handled, self.handled_distinct)?;
        writeln!(f, "duplicates skipped {}  (one order delivered twice on purpose)", self.duplicates_skipped)?;
        writeln!(f, "dead-lettered     {}   (one hostile message on purpose)", self.dead_lettered)?;
        writeln!(f, "rolled back seen  {}", self.rolled_back_seen)?;
        write!(f, "took              {:.1} s", self.elapsed.as_secs_f64())
    }
}

impl Report {
    pub(super) fn with_database(mut self, d: &str) -> Self {
        self.database = d.to_owned();
        self
    }
}
