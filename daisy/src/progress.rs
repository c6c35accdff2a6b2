//! The progress display of both binaries, on stderr when it is a terminal. Amounts and rates
//! are decimal, like `--rate` and the summaries' `mbps`: the rate is always MB/s (10^6
//! bytes per second), so the three can be compared at a glance.

use std::fmt::Write as _;
use std::io::{self, IsTerminal};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// With a known total: amount, bar, rate, time left.
const WITH_TOTAL: &str = "{decimal_bytes}/{decimal_total_bytes} {wide_bar} {mbps} eta {eta}";
/// Without a total (input from a pipe, or a receiver before it learns the size).
const WITHOUT_TOTAL: &str = "{spinner} {decimal_bytes} {mbps}";

/// A display on stderr when `on` and stderr is a terminal; a bar when `total` is known.
pub(crate) fn on_stderr(on: bool, total: Option<u64>) -> Option<ProgressBar> {
    if !on || !io::stderr().is_terminal() {
        return None;
    }
    Some(with_target(total, ProgressDrawTarget::stderr()))
}

/// A display drawing to `target`.
pub(crate) fn with_target(total: Option<u64>, target: ProgressDrawTarget) -> ProgressBar {
    let b = ProgressBar::with_draw_target(total, target);
    b.set_style(style(total.is_some()));
    b
}

/// Turns a spinner into a bar once the total is known.
pub(crate) fn set_total(b: &ProgressBar, total: u64) {
    b.set_length(total);
    b.set_style(style(true));
}

fn style(total: bool) -> ProgressStyle {
    let template = if total { WITH_TOTAL } else { WITHOUT_TOTAL };
    // The templates are constants; a failure would show in the tests below.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("mbps", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&mbps_text(s.per_sec()));
        })
}

/// A rate in bytes per second as MB/s text.
fn mbps_text(bytes_per_sec: f64) -> String {
    let mut t = String::new();
    let v = if bytes_per_sec.is_finite() {
        bytes_per_sec / 1e6
    } else {
        0.0
    };
    let _ = write!(t, "{v:.1} MB/s");
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A terminal that records what is drawn.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Screen(Arc<Mutex<String>>);

    impl Screen {
        pub(crate) fn text(&self) -> String {
            self.0.lock().map(|s| s.clone()).unwrap_or_default()
        }
        fn put(&self, s: &str) {
            if let Ok(mut t) = self.0.lock() {
                t.push_str(s);
            }
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.put(s);
            self.put("\n");
            Ok(())
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.put(s);
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            self.put("\n");
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A display drawing onto a fresh [`Screen`].
    pub(crate) fn on_screen(total: Option<u64>) -> (ProgressBar, Screen) {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        (with_target(total, target), screen)
    }

    #[test]
    fn rates_are_decimal_megabytes_per_second() {
        assert_eq!(mbps_text(12_345_678.0), "12.3 MB/s");
        assert_eq!(mbps_text(0.0), "0.0 MB/s");
        assert_eq!(mbps_text(f64::INFINITY), "0.0 MB/s");
    }

    #[test]
    fn the_bar_shows_decimal_amounts_and_mb_per_second() {
        let (b, screen) = on_screen(Some(4_000_000));
        b.set_position(1_500_000);
        b.abandon();
        let t = screen.text();
        assert!(t.contains("1.50 MB/4.00 MB"), "{t:?}");
        assert!(t.contains(" MB/s"), "{t:?}");
        assert!(!t.contains("MiB") && !t.contains("KiB"), "{t:?}");
    }

    #[test]
    fn a_spinner_becomes_a_bar_once_the_total_is_known() {
        let (b, screen) = on_screen(None);
        b.set_position(2_000_000);
        b.abandon();
        let before = screen.text();
        assert!(
            before.contains("2.00 MB") && !before.contains("2.00 MB/"),
            "{before:?}"
        );
        let (b, screen) = on_screen(None);
        set_total(&b, 8_000_000);
        b.set_position(2_000_000);
        b.abandon();
        let after = screen.text();
        assert!(after.contains("2.00 MB/8.00 MB"), "{after:?}");
        assert!(after.contains(" MB/s"), "{after:?}");
    }
}
