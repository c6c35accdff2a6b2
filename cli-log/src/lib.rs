//! Diagnostics set-up shared by the workspace's binaries, so every one of them behaves alike:
//!
//! - `tracing` events go to stderr, filtered by an environment variable (`ARCA_LOG` by
//!   convention) in [`EnvFilter`] syntax (`warn`, `daisy=debug,info`), or by the program's
//!   default when it is unset or empty.
//! - An invalid value is not silently replaced: one line on stderr says it was ignored, why,
//!   and which filter is used instead.
//! - ANSI colour only when stderr is a terminal and `NO_COLOR` is unset
//!   (<https://no-color.org>; this crate treats an empty `NO_COLOR` as set too).
//!
//! A program's normal output (summaries, progress) is not diagnostics and does not go
//! through here. The decisions are pure functions ([`choose_filter`], [`use_colour`]) so they
//! are tested without touching the process environment.
//!
//! ```no_run
//! cli_log::init("ARCA_LOG", "warn");
//! ```
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter to run with, and what to tell the user about their setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChoice {
    /// Directives in [`EnvFilter`] syntax.
    pub directives: String,
    /// A one-line warning (without program name) when the variable's value was ignored.
    pub warning: Option<String>,
}

/// Picks the filter from the variable `env_var`'s `value`: the value when it parses, else
/// `default` (with a warning naming the variable, the value and the parse error). Unset or
/// empty (after trimming) means `default`, silently.
pub fn choose_filter(env_var: &str, value: Option<&OsStr>, default: &str) -> FilterChoice {
    let fallback = |warning: Option<String>| FilterChoice {
        directives: default.to_owned(),
        warning,
    };
    let Some(raw) = value else {
        return fallback(None);
    };
    let Some(text) = raw.to_str() else {
        return fallback(Some(format!(
            "{env_var}={raw:?} ignored (not UTF-8); using {default:?}"
        )));
    };
    if text.trim().is_empty() {
        return fallback(None);
    }
    match parse(text) {
        Ok(_) => FilterChoice {
            directives: text.to_owned(),
            warning: None,
        },
        Err(e) => fallback(Some(format!(
            "{env_var}={text:?} ignored ({e}); using {default:?}"
        ))),
    }
}

/// Whether to colour diagnostics: only on a terminal, and only without `NO_COLOR`.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none()
}

fn parse(directives: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::builder().parse(directives)
}

/// Installs the process-wide `tracing` subscriber on stderr, filtered by `env_var` (see the
/// crate docs), and prints the warning if that variable was ignored. `default_filter` must
/// be valid [`EnvFilter`] syntax (a bad one falls back to `warn`). Does nothing if a
/// subscriber is already installed.
pub fn init(env_var: &str, default_filter: &str) {
    let choice = choose_filter(
        env_var,
        std::env::var_os(env_var).as_deref(),
        default_filter,
    );
    if let Some(w) = &choice.warning {
        eprintln!("{}: warning: {w}", program_name());
    }
    let filter = parse(&choice.directives).unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// The running program's file name, for message prefixes.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map_or_else(
            || "program".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn choose(value: Option<&str>) -> FilterChoice {
        choose_filter("ARCA_LOG", value.map(OsStr::new), "warn")
    }

    #[test]
    fn unset_or_empty_uses_the_default_quietly() {
        for v in [None, Some(""), Some("  ")] {
            assert_eq!(
                choose(v),
                FilterChoice {
                    directives: "warn".into(),
                    warning: None
                },
                "{v:?}"
            );
        }
    }

    #[test]
    fn a_valid_value_is_used() {
        for v in [
            "debug",
            "daisy=trace,warn",
            "info,arca_monitor::relay=debug",
        ] {
            assert_eq!(
                choose(Some(v)),
                FilterChoice {
                    directives: v.into(),
                    warning: None
                }
            );
        }
    }

    #[test]
    fn an_invalid_value_is_ignored_with_a_one_line_warning() {
        for v in ["daisy=loud", "info,=debug[", "[{x"] {
            let c = choose(Some(v));
            assert_eq!(c.directives, "warn", "{v:?}");
            let w = c.warning.unwrap_or_else(|| panic!("no warning for {v:?}"));
            assert!(w.starts_with(&format!("ARCA_LOG={v:?} ignored (")), "{w}");
            assert!(w.ends_with("using \"warn\""), "{w}");
            assert!(!w.contains('\n'), "{w}");
        }
    }

    #[test]
    fn a_non_utf8_value_is_ignored_with_a_warning() {
        use std::os::unix::ffi::OsStringExt;
        let v = OsString::from_vec(vec![b'd', 0xff]);
        let c = choose_filter("ARCA_LOG", Some(&v), "info");
        assert_eq!(c.directives, "info");
        assert!(c.warning.is_some_and(|w| w.contains("not UTF-8")));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}
