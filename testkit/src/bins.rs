//! Where the workspace's binaries are: next to the running test, bench or example executable
//! (Cargo's profile directory), built there with `$CARGO` when a caller asks for it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::child::Proc;

/// Cargo's output directory for the running executable's profile (`target/release` for
/// `target/release/deps/daisy-…`).
///
/// # Errors
/// The executable's path has no such parent.
pub fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let dir = if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// Runs `$CARGO build --quiet ARGS` into the target directory and profile of `dir` (a
/// [`profile_dir`]), bounded to `limit`.
///
/// # Errors
/// The build failed or timed out, or `dir` does not name a profile directory.
pub fn cargo_build(dir: &Path, args: &[&str], limit: Duration) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = dir
        .parent()
        .ok_or_else(|| format!("{} has no target directory", dir.display()))?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(target);
    match dir.file_name().and_then(OsStr::to_str) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Err(format!("cannot tell the profile of {}", dir.display())),
    }
    let mut build = Proc::spawn("cargo build", &mut cmd)?;
    let status = build.wait(Instant::now() + limit)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build {} failed: {status}", args.join(" ")))
    }
}

/// The monitor binary to run: `ARCA_MONITOR_BIN` if set (a long soak runs from copies so
/// that rebuilding meanwhile cannot disturb it), else `arca-monitor` in the running
/// executable's [`profile_dir`], where Cargo builds it for the monitor's own tests and
/// `cargo test --workspace` for everyone's.
///
/// # Panics
/// The running executable lies outside any directory (it cannot: it has a path).
pub fn monitor_bin() -> PathBuf {
    std::env::var_os("ARCA_MONITOR_BIN").map_or_else(
        || {
            profile_dir()
                .expect("the running executable lies in a directory")
                .join("arca-monitor")
        },
        PathBuf::from,
    )
}
