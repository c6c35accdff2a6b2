//! A per-session bound on warnings caused by the guest.
//!
//! A hostile guest can make the monitor log once per malformed frame or bad
//! pipe; without a bound it would flood the host's logs. [`WarnLimiter`] lets
//! through at most [`WARNS_PER_WINDOW`] warnings per [`WINDOW`] and counts the
//! rest; the caller logs "N more suppressed" when the next window opens (or
//! when the session ends). It is sans-IO: time comes in as an argument.

use std::time::{Duration, Instant};

/// Length of one rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Warnings let through per window.
pub const WARNS_PER_WINDOW: u32 = 10;

/// Counts warnings per window; see the module docs.
#[derive(Debug)]
pub struct WarnLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

/// What to do with one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Log this warning.
    pub log: bool,
    /// Warnings suppressed in the window that just closed: log one line
    /// saying so (before this warning), when non-zero.
    pub suppressed_before: u64,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl WarnLimiter {
    /// A limiter with nothing counted yet.
    pub fn new() -> Self {
        Self {
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Counts one warning at `now` and says whether to log it.
    pub fn handle_warning(&mut self, now: Instant) -> Verdict {
        let mut suppressed_before = 0;
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            suppressed_before = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < WARNS_PER_WINDOW {
            self.in_window += 1;
            Verdict {
                log: true,
                suppressed_before,
            }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Verdict {
                log: false,
                suppressed_before,
            }
        }
    }

    /// Warnings suppressed and not yet reported (call when the session ends,
    /// and log them if non-zero).
    pub fn poll_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_counts_the_rest() {
        let mut l = WarnLimiter::new();
        let t0 = Instant::now();
        for _ in 0..WARNS_PER_WINDOW {
            assert_eq!(
                l.handle_warning(t0),
                Verdict {
                    log: true,
                    suppressed_before: 0
                }
            );
        }
        for _ in 0..1000 {
            assert!(!l.handle_warning(t0 + Duration::from_secs(1)).log);
        }
        // The next window reports the 1000 suppressed and logs again.
        assert_eq!(
            l.handle_warning(t0 + WINDOW),
            Verdict {
                log: true,
                suppressed_before: 1000
            }
        );
        assert_eq!(l.poll_suppressed(), 0);
        for _ in 0..WARNS_PER_WINDOW + 3 {
            l.handle_warning(t0 + WINDOW);
        }
        assert_eq!(l.poll_suppressed(), 4);
        assert_eq!(l.poll_suppressed(), 0);
    }
}
