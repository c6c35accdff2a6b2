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
}
