//! `arca-netstack -- PROGRAM ARGS`: the guest-side network stack as its own binary (the
//! same as `arca-monitor netstack`); `arca-monitor run --isolate --net stack` starts it.

use std::process::ExitCode;

fn main() -> ExitCode {
    cli_log::init("ARCA_LOG", "warn");
    arca_netstack::main_with(std::env::args_os().skip(1).collect())
}
