//! Driving real `daisy-send`, `daisy-recv` and `arca-monitor` processes from the end-to-end
//! tests (`tests/daisy.rs`) and the Daisy benchmark (`benches/daisy.rs`).
//!
//! - [`Bins`]: the binaries next to the running test or bench executable, built with `$CARGO`
//!   ([`cargo_build`]) when missing.
//! - [`Summary`]: the `daisy-send: summary k=v …` / `daisy-recv: summary k=v …` line.
//!
//! The children themselves are [`Proc`](crate::child::Proc)s; [`crate::procfs`] tells when
//! they listen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bins::{cargo_build, profile_dir};

/// The three binaries the Daisy tests and benchmark run.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `daisy-send`.
    pub send: PathBuf,
    /// `daisy-recv`.
    pub recv: PathBuf,
    /// `arca-monitor`.
    pub monitor: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, whether or not they exist.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            send: dir.join("daisy-send"),
            recv: dir.join("daisy-recv"),
            monitor: dir.join("arca-monitor"),
        }
    }

    /// Whether all three exist.
    pub fn exist(&self) -> bool {
        [&self.send, &self.recv, &self.monitor]
            .iter()
            .all(|p| p.is_file())
    }

    /// The binaries next to the running executable; when one is missing, builds them with
    /// `$CARGO build [--release] -p daisy -p arca-monitor --bins` into the same target
    /// directory and profile (bounded to `limit`).
    ///
    /// # Errors
    /// The build failed, timed out, or did not produce them.
    pub fn locate_or_build(limit: Duration) -> Result<Bins, String> {
        let dir = profile_dir()?;
        let bins = Bins::in_dir(&dir);
        if bins.exist() {
            return Ok(bins);
        }
        eprintln!("daisy binaries missing in {}: building them", dir.display());
        cargo_build(
            &dir,
            &["-p", "daisy", "-p", "arca-monitor", "--bins"],
            limit,
        )?;
        if bins.exist() {
            Ok(bins)
        } else {
            Err(format!(
                "cargo build succeeded but {} lacks daisy-send, daisy-recv or arca-monitor",
                dir.display()
            ))
        }
    }
}

/// The fields of a Daisy summary line: `<role>: summary k=v k=v …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    role: String,
    fields: BTreeMap<String, String>,
}

impl Summary {
    /// The last summary line of `role` (`daisy-send`, `daisy-recv`) in `text`.
    ///
    /// # Errors
    /// No such line, or a field that is not `key=value`.
    pub fn parse(role: &str, text: &str) -> Result<Summary, String> {
        let tag = format!("{role}: summary ");
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.find(&tag).map(|at| &l[at + tag.len()..]))
            .ok_or_else(|| format!("no `{tag}` line in:\n{text}"))?;
        let mut fields = BTreeMap::new();
        for kv in line.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("summary field `{kv}` is not key=value in `{line}`"))?;
            fields.insert(k.to_owned(), v.to_owned());
        }
        Ok(Summary {
            role: role.to_owned(),
            fields,
        })
    }

    /// A field as text.
    ///
    /// # Errors
    /// The field is missing.
    pub fn text(&self, key: &str) -> Result<&str, String> {
        self.fields
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("{} summary has no `{key}`: {:?}", self.role, self.fields))
    }

    /// A field as an integer.
    ///
    /// # Errors
    /// Missing or not an integer.
    pub fn u64(&self, key: &str) -> Result<u64, String> {
        let v = self.text(key)?;
        v.parse()
            .map_err(|e| format!("{} summary `{key}={v}`: {e}", self.role))
    }

    /// A field as a number.
    ///
    /// # Errors
    /// Missing or not a number.
    pub fn f64(&self, key: &str) -> Result<f64, String> {
        let v = self.text(key)?;
        v.parse()
            .map_err(|e| format!("{} summary `{key}={v}`: {e}", self.role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_parses_the_last_line() {
        let text = "progress\n\
            daisy-recv: summary bytes=1 packets=1 sha256=aa\n\
            noise\n\
            daisy-recv: summary bytes=4380 packets=3 repaired=0 duplicates=2 rejected=7 \
            seconds=0.5 mbps=8.76 sha256=abcd\n";
        let s = Summary::parse("daisy-recv", text).unwrap();
        assert_eq!(s.u64("bytes").unwrap(), 4380);
        assert_eq!(s.u64("rejected").unwrap(), 7);
        assert!((s.f64("mbps").unwrap() - 8.76).abs() < 1e-9);
        assert_eq!(s.text("sha256").unwrap(), "abcd");
        assert!(s.u64("nope").is_err());
        assert!(s.u64("sha256").is_err());
        assert!(Summary::parse("daisy-send", text).is_err());
        assert!(Summary::parse("daisy-recv", "daisy-recv: summary bytes").is_err());
    }
}
