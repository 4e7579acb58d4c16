//! When a backend's check results flip its state: a pure state machine, one per backend.

/// Consecutive check results of one backend, folded into up or down.
///
/// An up backend goes down only after `1 + retries` failed checks in a row; a down
/// backend (and one never seen yet) comes up on its first successful check.
#[derive(Debug, Clone)]
pub(crate) struct Debounce {
    retries: u32,
    up: bool,
    /// Failed checks in a row since the backend was last up.
    failures: u32,
}

/// What one check result means for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It is up; `changed` when it was down until now.
    Up { changed: bool },
    /// Failed while up, within its retries: still up, check again after `retry_delay`.
    /// `attempt` counts the failures so far (1 for the first).
    Retry { attempt: u32 },
    /// It is down; `changed` when it was up until now.
    Down { changed: bool },
}

impl Debounce {
    /// A backend not seen yet: down until its first successful check.
    pub(crate) fn new(retries: u32) -> Self {
        Self { retries, up: false, failures: 0 }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Failed checks in a row since the backend was last up.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// True when the next check retries a failure of an up backend.
    pub(crate) fn retrying(&self) -> bool {
        self.up && self.failures > 0
    }

    pub(crate) fn on_result(&mut self, ok: bool) -> Decision {
        if ok {
            let changed = !self.up;
            self.up = true;
            self.failures = 0;
            return Decision::Up { changed };
        }
        if !self.up {
            return Decision::Down { changed: false };
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures > self.retries {
            self.up = false;
            self.failures = 0;
            return Decision::Down { changed: true };
        }
        Decision::Retry { attempt: self.failures }
    }
}

#[cfg(test)]
mod tests {
    use super::Decision::{Down, Retry, Up};
    use super::*;

    fn run(d: &mut Debounce, results: &[bool]) -> Vec<Decision> {
        results.iter().map(|&ok| d.on_result(ok)).collect()
    }

    #[test]
    fn first_success_marks_up_at_once() {
        let mut d = Debounce::new(3);
        assert!(!d.retrying());
        assert_eq!(run(&mut d, &[true, true]), [Up { changed: true }, Up { changed: false }]);
    }

    #[test]
    fn failures_before_the_first_success_stay_down_without_retries() {
        let mut d = Debounce::new(2);
        assert_eq!(run(&mut d, &[false, false]), [Down { changed: false }; 2]);
        assert!(!d.retrying());
        assert_eq!(d.on_result(true), Up { changed: true });
    }

    #[test]
    fn up_goes_down_after_one_plus_retries_failures_in_a_row() {
        let mut d = Debounce::new(2);
        d.on_result(true);
        assert_eq!(d.on_result(false), Retry { attempt: 1 });
        assert!(d.retrying());
        assert_eq!(d.on_result(false), Retry { attempt: 2 });
        assert_eq!(d.on_result(false), Down { changed: true });
        assert!(!d.retrying(), "a down backend is checked at the interval");
        assert_eq!(run(&mut d, &[false, false]), [Down { changed: false }; 2]);
    }

    #[test]
    fn a_success_between_failures_starts_the_count_over() {
        let mut d = Debounce::new(1);
        let got = run(&mut d, &[true, false, true, false, false]);
        assert_eq!(
            got,
            [Up { changed: true }, Retry { attempt: 1 }, Up { changed: false }, Retry { attempt: 1 }, Down { changed: true }]
        );
    }

    #[test]
    fn down_comes_back_after_one_success() {
        let mut d = Debounce::new(5);
        d.on_result(true);
        for _ in 0..6 {
            d.on_result(false);
        }
        assert_eq!(d.on_result(true), Up { changed: true });
        assert_eq!(d.on_result(false), Retry { attempt: 1 }, "the full count again");
    }

    #[test]
    fn zero_retries_goes_down_on_the_first_failure() {
        let mut d = Debounce::new(0);
        assert_eq!(run(&mut d, &[true, false]), [Up { changed: true }, Down { changed: true }]);
    }

    #[test]
    fn huge_retries_do_not_overflow() {
        let mut d = Debounce::new(u32::MAX);
        d.on_result(true);
        for _ in 0..1000 {
            assert!(matches!(d.on_result(false), Retry { .. }));
        }
    }
}
