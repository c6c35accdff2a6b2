//! Bounded waits: poll a condition until it holds or a deadline passes. Nothing here waits
//! without a bound.

use std::time::{Duration, Instant};

/// Polls `cond` every `every` until it holds (true) or `deadline` passes (false); `cond` is
/// checked once more at the deadline.
fn poll_until(deadline: Instant, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(Instant::now() + limit, Duration::from_millis(10), cond)
}

/// Polls `cond` every 2 ms until it holds or `deadline` passes.
///
/// # Errors
/// `deadline` passed; the message names `what`.
pub fn wait_for(what: &str, deadline: Instant, cond: impl FnMut() -> bool) -> Result<(), String> {
    if poll_until(deadline, Duration::from_millis(2), cond) {
        Ok(())
    } else {
        Err(format!("timed out waiting for {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_the_condition_holds_or_at_its_limit() {
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let err = wait_for(
            "nothing",
            Instant::now() + Duration::from_millis(20),
            || false,
        );
        assert_eq!(err, Err("timed out waiting for nothing".to_owned()));
    }
}
