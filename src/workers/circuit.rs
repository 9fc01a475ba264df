//! The circuit of one target sector, as one process sees it: closed while the sector answers;
//! open after a retryable failure (a connection error, a timeout, 408, 429, 5xx). While it is
//! open the worker sends one entry at a time (the probe) after each back-off, and the other
//! entries wait without attempts; the first answer closes it.

/// Consecutive retryable failures of a target; zero while the circuit is closed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Circuit {
    failures: u32,
}

/// What an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The first failure: the circuit opened.
    Opened,
    /// The sector answered after failures: the circuit closed.
    Closed,
    /// Nothing changed.
    Same,
}

impl Circuit {
    pub fn is_open(self) -> bool {
        self.failures > 0
    }

    /// Consecutive failures so far.
    pub fn failures(self) -> u32 {
        self.failures
    }

    /// Entries to claim at a time: one probe while open.
    pub fn batch(self, batch: u32) -> u32 {
        if self.is_open() { 1 } else { batch }
    }

    /// A retryable failure.
    pub fn failed(&mut self) -> Change {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            Change::Opened
        } else {
            Change::Same
        }
    }

    /// The sector answered (it accepted, or refused for good: either way it is reachable).
    pub fn answered(&mut self) -> Change {
        let was_open = self.is_open();
        self.failures = 0;
        if was_open {
            Change::Closed
        } else {
            Change::Same
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_on_a_failure_probes_one_at_a_time_and_closes_on_an_answer() {
        let mut c = Circuit::default();
        assert_eq!(c.batch(16), 16);
        assert_eq!(c.answered(), Change::Same);
        assert_eq!(c.failed(), Change::Opened);
        assert_eq!(c.failed(), Change::Same);
        assert_eq!((c.is_open(), c.failures(), c.batch(16)), (true, 2, 1));
        assert_eq!(c.answered(), Change::Closed);
        assert_eq!((c.is_open(), c.batch(16)), (false, 16));
    }
}
