//! proptest strategies for every wire type.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use arca_wire::{
    Answer, Answers, ConnId, ErrorCode, FamilyHint, Frame, Handle, ListenerId, MembershipOp,
    Message, MessageType, PipeInfo, RequestId, SocketOption, MAX_ANSWERS,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;

/// A proptest config with `default_cases` cases, unless `PROPTEST_CASES` is set (for long runs,
/// for example `PROPTEST_CASES=1000000 cargo test --release -p arca-wire --test hostile`).
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        ..Config::default()
    }
}

pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
            |(ip, port, flowinfo, scope_id)| SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope_id
            ))
        ),
    ]
}

/// Assigned codes and arbitrary numbers (which decode to `Unknown` when unassigned).
pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        select(ErrorCode::ALL.to_vec()),
        any::<u16>().prop_map(ErrorCode::from_u16),
    ]
}

pub fn socket_option() -> impl Strategy<Value = SocketOption> {
    prop_oneof![
        select(SocketOption::ALL.map(|(o, _)| o).to_vec()),
        any::<u16>().prop_map(SocketOption::from_u16),
    ]
}

pub fn handle() -> impl Strategy<Value = Handle> {
    prop_oneof![
        any::<u32>().prop_map(|id| Handle::Listener(ListenerId(id))),
        any::<u32>().prop_map(|id| Handle::Connection(ConnId(id))),
        any::<u32>().prop_map(|id| Handle::Udp(ConnId(id))),
    ]
}

pub fn pipe() -> impl Strategy<Value = PipeInfo> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(shm_offset, cap_to_monitor, cap_to_guest)| PipeInfo {
            shm_offset,
            cap_to_monitor,
            cap_to_guest,
        },
    )
}

/// Every known message with arbitrary field values (never `Unknown`).
pub fn message() -> impl Strategy<Value = Message> {
    let listener = any::<u32>().prop_map(ListenerId);
    let conn = any::<u32>().prop_map(ConnId);
    prop_oneof![
        (any::<u32>(), any::<u16>(), any::<u16>()).prop_map(|(magic, version, flags)| {
            Message::Hello {
                magic,
                version,
                flags,
            }
        }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(version, flags)| Message::HelloOk { version, flags }),
        (error_code(), any::<u16>(), any::<u16>()).prop_map(|(code, min_version, max_version)| {
            Message::HelloErr {
                code,
                min_version,
                max_version,
            }
        }),
        handle().prop_map(|handle| Message::Close { handle }),
        Just(Message::CloseOk),
        error_code().prop_map(|code| Message::CloseErr { code }),
        (handle(), socket_option(), any::<u64>()).prop_map(|(handle, option, value)| {
            Message::SetOption {
                handle,
                option,
                value,
            }
        }),
        Just(Message::SetOptionOk),
        error_code().prop_map(|code| Message::SetOptionErr { code }),
        (socket_addr(), any::<u32>())
            .prop_map(|(addr, backlog)| Message::ListenRequest { addr, backlog }),
        (listener.clone(), socket_addr())
            .prop_map(|(listener, local)| Message::ListenOk { listener, local }),
        error_code().prop_map(|code| Message::ListenErr { code }),
        (socket_addr(), any::<u32>())
            .prop_map(|(addr, timeout_ms)| Message::ConnectRequest { addr, timeout_ms }),
        (conn.clone(), pipe(), socket_addr(), socket_addr()).prop_map(
            |(conn, pipe, local, peer)| Message::ConnectOk {
                conn,
                pipe,
                local,
                peer
            }
        ),
        error_code().prop_map(|code| Message::ConnectErr { code }),
        listener
            .clone()
            .prop_map(|listener| Message::AcceptRequest { listener }),
        (listener, conn, pipe(), socket_addr(), socket_addr()).prop_map(
            |(listener, conn, pipe, local, peer)| Message::IncomingConnection {
                listener,
                conn,
                pipe,
                local,
                peer
            }
        ),
        error_code().prop_map(|code| Message::AcceptErr { code }),
        (socket_addr(), any::<u32>()).prop_map(|(addr, flags)| Message::UdpBind { addr, flags }),
        (any::<u32>(), pipe(), socket_addr()).prop_map(|(id, pipe, local)| Message::UdpBindOk {
            socket: ConnId(id),
            pipe,
            local
        }),
        error_code().prop_map(|code| Message::UdpBindErr { code }),
        (any::<u32>(), socket_addr()).prop_map(|(id, addr)| Message::UdpConnect {
            socket: ConnId(id),
            addr
        }),
        socket_addr().prop_map(|local| Message::UdpConnectOk { local }),
        error_code().prop_map(|code| Message::UdpConnectErr { code }),
        (any::<u32>(), any::<bool>(), socket_addr(), any::<u32>()).prop_map(
            |(id, join, group, interface)| Message::Membership {
                socket: ConnId(id),
                op: if join {
                    MembershipOp::Join
                } else {
                    MembershipOp::Leave
                },
                group,
                interface: Ipv4Addr::from(interface),
            }
        ),
        Just(Message::MembershipOk),
        error_code().prop_map(|code| Message::MembershipErr { code }),
        (
            "[a-zA-Z_][a-zA-Z0-9_-]{0,20}(\\.[a-zA-Z][a-zA-Z0-9-]{0,20}){0,6}\\.?",
            0u8..3
        )
            .prop_map(|(name, family)| Message::Resolve {
                family: [FamilyHint::Any, FamilyHint::V4, FamilyHint::V6][usize::from(family)],
                name: name.parse().expect("the pattern makes host names"),
            }),
        prop::collection::vec((socket_addr(), any::<u32>()), 0..=MAX_ANSWERS).prop_map(|list| {
            Message::ResolveOk {
                answers: Answers::new(
                    list.into_iter()
                        .map(|(a, ttl)| Answer { addr: a.ip(), ttl }),
                ),
            }
        }),
        error_code().prop_map(|code| Message::ResolveErr { code }),
        (error_code(), any::<u8>()).prop_map(|(code, rejected_type)| Message::Error {
            code,
            rejected_type
        }),
    ]
}

pub fn frame() -> impl Strategy<Value = Frame> {
    (any::<u32>(), message()).prop_map(|(id, message)| Frame::new(RequestId(id), message))
}

/// A known message type.
pub fn known_type() -> impl Strategy<Value = MessageType> {
    select(MessageType::ALL.to_vec())
}

/// Splits `len` bytes into chunks: the cut points come from `cuts` (taken modulo `len + 1`).
pub fn chunk_bounds(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}
