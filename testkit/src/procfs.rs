//! What `/proc` and the resource limits say about a process: open descriptors, resident
//! memory, the descriptor limit, and the TCP and UDP sockets of a network namespace (to know
//! when a server listens, also inside another namespace, without connecting to it).

/// Descriptors open in process `pid` (`"self"` for this one).
pub fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    fd_count("self")
}

/// Resident memory of a process, from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: everything resident.
    pub total: u64,
    /// `RssAnon`: private heap and stacks.
    pub anon: u64,
    /// `RssShmem`: resident pages of shared mappings (the guests' regions).
    pub shmem: u64,
}

/// The resident memory of `pid`, or `None` once it is gone.
pub fn rss(pid: u32) -> Option<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:").unwrap_or(0),
        shmem: field("RssShmem:").unwrap_or(0),
    })
}

/// Raises this process's descriptor limit to at least `want` (children
/// inherit it). Root may raise the hard limit too. Returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let set = |cur: u64, max: u64| {
        let l = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: `l` is a valid rlimit read by the call only.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 }
    };
    if lim.rlim_max < want && set(want, want) {
        return want;
    }
    let new = want.min(lim.rlim_max);
    if set(new, lim.rlim_max) {
        new
    } else {
        lim.rlim_cur
    }
}

/// A TCP socket from `/proc/<pid>/net/tcp{,6}`: local port, remote port, state
/// (`0x0A` listen, `0x01` established).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    /// Local port.
    pub local_port: u16,
    /// Remote port.
    pub remote_port: u16,
    /// Kernel state number.
    pub state: u8,
}

/// Kernel TCP state: listening.
pub const TCP_LISTEN: u8 = 0x0A;
/// Kernel TCP state: established.
pub const TCP_ESTABLISHED: u8 = 0x01;

fn port_of(addr: &str) -> Option<u16> {
    u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok()
}

/// The TCP sockets of the network namespace `pid` lives in (`None`: this process's).
pub fn tcp_sockets(pid: Option<u32>) -> Vec<TcpEntry> {
    let base = match pid {
        Some(p) => format!("/proc/{p}/net"),
        None => "/proc/self/net".to_owned(),
    };
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("{base}/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(l), Some(r), Some(st)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            if let (Some(local_port), Some(remote_port), Ok(state)) =
                (port_of(l), port_of(r), u8::from_str_radix(st, 16))
            {
                out.push(TcpEntry {
                    local_port,
                    remote_port,
                    state,
                });
            }
        }
    }
    out
}

/// Whether something in `pid`'s network namespace listens on TCP `port`.
pub fn tcp_listening(pid: Option<u32>, port: u16) -> bool {
    tcp_sockets(pid)
        .iter()
        .any(|e| e.local_port == port && e.state == TCP_LISTEN)
}

/// Whether a UDP socket in `pid`'s network namespace is bound to `port`.
pub fn udp_bound(pid: Option<u32>, port: u16) -> bool {
    let base = match pid {
        Some(p) => format!("/proc/{p}/net"),
        None => "/proc/self/net".to_owned(),
    };
    ["udp", "udp6"].iter().any(|file| {
        std::fs::read_to_string(format!("{base}/{file}")).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                line.split_whitespace()
                    .nth(1)
                    .and_then(port_of)
                    .is_some_and(|p| p == port)
            })
        })
    })
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`; `None` once it
/// is gone or the file cannot be read.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)?;
    parse_stat_cpu(&text, ticks)
}

/// User + system time from the text of a `/proc/PID/stat`, whose clock ticks `ticks` times a
/// second. The command name (field 2) sits in parentheses and may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`: `utime` and `stime` are fields 14
/// and 15 of the line.
pub fn parse_stat_cpu(text: &str, ticks: u64) -> Option<std::time::Duration> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    // After the name: field 3 (state) is the first; utime is field 14, the 12th here.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let total = utime.checked_add(stime)?;
    let nanos = u128::from(total) * 1_000_000_000 / u128::from(ticks);
    Some(std::time::Duration::from_nanos(u64::try_from(nanos).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_sees_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_listening(None, port));
        let pid = std::process::id();
        assert!(tcp_listening(Some(pid), port));
        drop(l);
        assert!(!tcp_listening(None, port));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(udp_bound(None, u.local_addr().unwrap().port()));
    }
    #[test]
    fn stat_cpu_counts_fields_after_the_last_parenthesis() {
        // A name with spaces and a ')' of its own; utime 250, stime 50 ticks at 100 Hz.
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 \
                    12345 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat_cpu(line, 100),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(parse_stat_cpu("4242 (short) S 1 2 3", 100), None);
        assert_eq!(parse_stat_cpu("no parenthesis at all", 100), None);
    }

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        // Work until the kernel has charged 100 ms more (the machine may be busy, so wall
        // time says little), bounded to 20 s.
        let pid = std::process::id();
        let before = cpu_time(pid).expect("own stat");
        let want = before + std::time::Duration::from_millis(100);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut now = before;
        while now < want && start.elapsed() < std::time::Duration::from_secs(20) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            now = cpu_time(pid).expect("own stat");
        }
        assert!(
            now >= want,
            "{before:?} -> {now:?} in {:?}",
            start.elapsed()
        );
    }
}
