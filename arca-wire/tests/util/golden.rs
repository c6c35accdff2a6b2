//! One hand-written frame per message type: the exact bytes PROTOCOL.md shows as that message's
//! example. The bytes are written out field by field, not produced by the encoder under test.

use std::net::{Ipv4Addr, SocketAddr};

use arca_wire::{
    Answer, Answers, ConnId, ErrorCode, FamilyHint, Handle, ListenerId, MembershipOp, Message,
    PipeInfo, RequestId, SocketOption, HELLO_MAGIC, UDP_REUSE_ADDR,
};

/// A golden frame: the name of its example in PROTOCOL.md, the decoded frame and its bytes.
pub struct Golden {
    pub name: &'static str,
    pub request_id: RequestId,
    pub message: Message,
    pub bytes: &'static [u8],
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address parses")
}

/// Copies `bytes` into `out` at `at`, in const evaluation.
const fn put<const N: usize>(mut out: [u8; N], at: usize, bytes: &[u8]) -> [u8; N] {
    let mut i = 0;
    while i < bytes.len() {
        out[at + i] = bytes[i];
        i += 1;
    }
    out
}

/// `Resolve` of `example.com`, request 15: its 255-byte payload is mostly the name field's
/// zero padding, so the frame is written field by field into zeros.
const RESOLVE: [u8; 7 + 255] = {
    let f = [0u8; 262];
    let f = put(f, 0, &[0x50, 0xff, 0x00, 0x0f, 0x00, 0x00, 0x00]); // header: 0x50, len 255, id 15
    let f = put(f, 7, &[0x00]); // family: any
    let f = put(f, 8, &[11]); // name_len 11
    put(f, 9, b"example.com") // name, then 242 zero bytes
};

/// `ResolveOk` with two answers, request 15: 196 bytes of payload, six entries unused.
const RESOLVE_OK: [u8; 7 + 196] = {
    let f = [0u8; 203];
    let f = put(f, 0, &[0x51, 0xc4, 0x00, 0x0f, 0x00, 0x00, 0x00]); // header: 0x51, len 196, id 15
    let f = put(f, 7, &[2, 0, 0, 0]); // count 2, reserved
    let f = put(f, 11, &[4, 0, 0, 0, 0x2c, 0x01, 0x00, 0x00]); // family 4, ttl 300
    let f = put(f, 19, &[93, 184, 216, 34]); // 93.184.216.34, then 12 zero bytes
    let f = put(f, 35, &[6, 0, 0, 0, 0x3c, 0x00, 0x00, 0x00]); // family 6, ttl 60
    put(
        f,
        43,
        &[
            0x26, 0x06, 0x28, 0x00, 0x02, 0x20, 0x00, 0x01, 0x02, 0x48, 0x18, 0x93, 0x25, 0xc8,
            0x19, 0x46,
        ],
    ) // 2606:2800:220:1:248:1893:25c8:1946; six zero entries follow
};

/// Every golden frame, one per message type, in type order.
pub fn all() -> Vec<Golden> {
    vec![
        Golden {
            name: "hello",
            request_id: RequestId(1),
            message: Message::Hello {
                magic: HELLO_MAGIC,
                version: 1,
                flags: 0,
            },
            #[rustfmt::skip]
            bytes: &[
                0x01, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, // header
                0x41, 0x52, 0x43, 0x41, // magic "ARCA"
                0x01, 0x00, // version 1
                0x00, 0x00, // flags 0
            ],
        },
        Golden {
            name: "hello_ok",
            request_id: RequestId(1),
            message: Message::HelloOk {
                version: 1,
                flags: 0,
            },
            #[rustfmt::skip]
            bytes: &[
                0x02, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, // header
                0x01, 0x00, // version 1
                0x00, 0x00, // flags 0
            ],
        },
        Golden {
            name: "hello_err",
            request_id: RequestId(1),
            message: Message::HelloErr {
                code: ErrorCode::Unsupported,
                min_version: 1,
                max_version: 1,
            },
            #[rustfmt::skip]
            bytes: &[
                0x03, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, // header
                0x02, 0x00, // code Unsupported
                0x01, 0x00, // min_version 1
                0x01, 0x00, // max_version 1
            ],
        },
        Golden {
            name: "close",
            request_id: RequestId(9),
            message: Message::Close {
                handle: Handle::Connection(ConnId(5)),
            },
            #[rustfmt::skip]
            bytes: &[
                0x04, 0x05, 0x00, 0x09, 0x00, 0x00, 0x00, // header
                0x02, 0x05, 0x00, 0x00, 0x00, // handle: connection 5
            ],
        },
        Golden {
            name: "close_ok",
            request_id: RequestId(9),
            message: Message::CloseOk,
            #[rustfmt::skip]
            bytes: &[
                0x05, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, // header
            ],
        },
        Golden {
            name: "close_err",
            request_id: RequestId(9),
            message: Message::CloseErr {
                code: ErrorCode::NotFound,
            },
            #[rustfmt::skip]
            bytes: &[
                0x06, 0x02, 0x00, 0x09, 0x00, 0x00, 0x00, // header
                0x04, 0x00, // code NotFound
            ],
        },
        Golden {
            name: "set_option",
            request_id: RequestId(10),
            message: Message::SetOption {
                handle: Handle::Connection(ConnId(5)),
                option: SocketOption::NoDelay,
                value: 1,
            },
            #[rustfmt::skip]
            bytes: &[
                0x08, 0x0f, 0x00, 0x0a, 0x00, 0x00, 0x00, // header
                0x02, 0x05, 0x00, 0x00, 0x00, // handle: connection 5
                0x01, 0x00, // option NoDelay
                0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // value 1
            ],
        },
        Golden {
            name: "set_option_ok",
            request_id: RequestId(10),
            message: Message::SetOptionOk,
            #[rustfmt::skip]
            bytes: &[
                0x09, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, // header
            ],
        },
        Golden {
            name: "set_option_err",
            request_id: RequestId(10),
            message: Message::SetOptionErr {
                code: ErrorCode::Unsupported,
            },
            #[rustfmt::skip]
            bytes: &[
                0x0a, 0x02, 0x00, 0x0a, 0x00, 0x00, 0x00, // header
                0x02, 0x00, // code Unsupported
            ],
        },
        Golden {
            name: "listen_request",
            request_id: RequestId(2),
            message: Message::ListenRequest {
                addr: addr("127.0.0.1:0"),
                backlog: 128,
            },
            #[rustfmt::skip]
            bytes: &[
                0x10, 0x1f, 0x00, 0x02, 0x00, 0x00, 0x00, // header
                0x04, 0x00, 0x00, // addr: family 4, port 0
                0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 127.0.0.1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
                0x80, 0x00, 0x00, 0x00, // backlog 128
            ],
        },
        Golden {
            name: "listen_ok",
            request_id: RequestId(2),
            message: Message::ListenOk {
                listener: ListenerId(1),
                local: addr("127.0.0.1:40000"),
            },
            #[rustfmt::skip]
            bytes: &[
                0x11, 0x1f, 0x00, 0x02, 0x00, 0x00, 0x00, // header
                0x01, 0x00, 0x00, 0x00, // listener 1
                0x04, 0x40, 0x9c, // local: family 4, port 40000
                0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 127.0.0.1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
            ],
        },
        Golden {
            name: "listen_err",
            request_id: RequestId(2),
            message: Message::ListenErr {
                code: ErrorCode::AddrInUse,
            },
            #[rustfmt::skip]
            bytes: &[
                0x12, 0x02, 0x00, 0x02, 0x00, 0x00, 0x00, // header
                0x05, 0x01, // code AddrInUse (0x0105)
            ],
        },
        Golden {
            name: "connect_request",
            request_id: RequestId(3),
            message: Message::ConnectRequest {
                addr: addr("[::1]:8080"),
                timeout_ms: 5000,
            },
            #[rustfmt::skip]
            bytes: &[
                0x14, 0x1f, 0x00, 0x03, 0x00, 0x00, 0x00, // header
                0x06, 0x90, 0x1f, // addr: family 6, port 8080
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ::1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
                0x88, 0x13, 0x00, 0x00, // timeout_ms 5000
            ],
        },
        Golden {
            name: "connect_ok",
            request_id: RequestId(3),
            message: Message::ConnectOk {
                conn: ConnId(7),
                pipe: PipeInfo {
                    shm_offset: 0x1_0000,
                    cap_to_monitor: 32768,
                    cap_to_guest: 32768,
                },
                local: addr("[::1]:50000"),
                peer: addr("[::1]:8080"),
            },
            #[rustfmt::skip]
            bytes: &[
                0x15, 0x4a, 0x00, 0x03, 0x00, 0x00, 0x00, // header
                0x07, 0x00, 0x00, 0x00, // conn 7
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // pipe.shm_offset 0x10000
                0x00, 0x80, 0x00, 0x00, // pipe.cap_to_monitor 32768
                0x00, 0x80, 0x00, 0x00, // pipe.cap_to_guest 32768
                0x06, 0x50, 0xc3, // local: family 6, port 50000
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ::1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
                0x06, 0x90, 0x1f, // peer: family 6, port 8080
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ::1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
            ],
        },
        Golden {
            name: "connect_err",
            request_id: RequestId(3),
            message: Message::ConnectErr {
                code: ErrorCode::ConnectionRefused,
            },
            #[rustfmt::skip]
            bytes: &[
                0x16, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, // header
                0x00, 0x01, // code ConnectionRefused (0x0100)
            ],
        },
        Golden {
            name: "accept_request",
            request_id: RequestId(4),
            message: Message::AcceptRequest {
                listener: ListenerId(1),
            },
            #[rustfmt::skip]
            bytes: &[
                0x18, 0x04, 0x00, 0x04, 0x00, 0x00, 0x00, // header
                0x01, 0x00, 0x00, 0x00, // listener 1
            ],
        },
        Golden {
            name: "incoming_connection",
            request_id: RequestId(4),
            message: Message::IncomingConnection {
                listener: ListenerId(1),
                conn: ConnId(8),
                pipe: PipeInfo {
                    shm_offset: 0x2_0000,
                    cap_to_monitor: 16384,
                    cap_to_guest: 16384,
                },
                local: addr("127.0.0.1:40000"),
                peer: addr("127.0.0.1:51234"),
            },
            #[rustfmt::skip]
            bytes: &[
                0x19, 0x4e, 0x00, 0x04, 0x00, 0x00, 0x00, // header
                0x01, 0x00, 0x00, 0x00, // listener 1
                0x08, 0x00, 0x00, 0x00, // conn 8
                0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, // pipe.shm_offset 0x20000
                0x00, 0x40, 0x00, 0x00, // pipe.cap_to_monitor 16384
                0x00, 0x40, 0x00, 0x00, // pipe.cap_to_guest 16384
                0x04, 0x40, 0x9c, // local: family 4, port 40000
                0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 127.0.0.1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
                0x04, 0x22, 0xc8, // peer: family 4, port 51234
                0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 127.0.0.1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
            ],
        },
        Golden {
            name: "accept_err",
            request_id: RequestId(4),
            message: Message::AcceptErr {
                code: ErrorCode::ConnectionAborted,
            },
            #[rustfmt::skip]
            bytes: &[
                0x1a, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, // header
                0x02, 0x01, // code ConnectionAborted (0x0102)
            ],
        },
        Golden {
            name: "udp_bind",
            request_id: RequestId(12),
            message: Message::UdpBind {
                addr: addr("0.0.0.0:18383"),
                flags: UDP_REUSE_ADDR,
            },
            #[rustfmt::skip]
            bytes: &[
                0x30, 0x1f, 0x00, 0x0c, 0x00, 0x00, 0x00, // header
                0x04, 0xcf, 0x47, // family 4, port 18383
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 0.0.0.0
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
                0x01, 0x00, 0x00, 0x00, // flags: reuse address
            ],
        },
        Golden {
            name: "udp_bind_ok",
            request_id: RequestId(12),
            message: Message::UdpBindOk {
                socket: ConnId(3),
                pipe: PipeInfo {
                    shm_offset: 0x0030_0000,
                    cap_to_monitor: 0x0004_0000,
                    cap_to_guest: 0x0004_0000,
                },
                local: addr("0.0.0.0:18383"),
            },
            #[rustfmt::skip]
            bytes: &[
                0x31, 0x2f, 0x00, 0x0c, 0x00, 0x00, 0x00, // header
                0x03, 0x00, 0x00, 0x00, // socket 3
                0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, // shm_offset 0x300000
                0x00, 0x00, 0x04, 0x00, // cap_to_monitor 256 KiB
                0x00, 0x00, 0x04, 0x00, // cap_to_guest 256 KiB
                0x04, 0xcf, 0x47, // family 4, port 18383
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 0.0.0.0
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
            ],
        },
        Golden {
            name: "udp_bind_err",
            request_id: RequestId(12),
            message: Message::UdpBindErr {
                code: ErrorCode::AddrInUse,
            },
            #[rustfmt::skip]
            bytes: &[
                0x32, 0x02, 0x00, 0x0c, 0x00, 0x00, 0x00, // header
                0x05, 0x01, // code AddrInUse (0x0105)
            ],
        },
        Golden {
            name: "udp_connect",
            request_id: RequestId(13),
            message: Message::UdpConnect {
                socket: ConnId(3),
                addr: addr("127.0.0.1:53"),
            },
            #[rustfmt::skip]
            bytes: &[
                0x34, 0x1f, 0x00, 0x0d, 0x00, 0x00, 0x00, // header
                0x03, 0x00, 0x00, 0x00, // socket 3
                0x04, 0x35, 0x00, // family 4, port 53
                0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 127.0.0.1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
            ],
        },
        Golden {
            name: "udp_connect_ok",
            request_id: RequestId(13),
            message: Message::UdpConnectOk {
                local: addr("127.0.0.1:18383"),
            },
            #[rustfmt::skip]
            bytes: &[
                0x35, 0x1b, 0x00, 0x0d, 0x00, 0x00, 0x00, // header
                0x04, 0xcf, 0x47, // family 4, port 18383
                0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 127.0.0.1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
            ],
        },
        Golden {
            name: "udp_connect_err",
            request_id: RequestId(13),
            message: Message::UdpConnectErr {
                code: ErrorCode::NotFound,
            },
            #[rustfmt::skip]
            bytes: &[
                0x36, 0x02, 0x00, 0x0d, 0x00, 0x00, 0x00, // header
                0x04, 0x00, // code NotFound
            ],
        },
        Golden {
            name: "membership",
            request_id: RequestId(14),
            message: Message::Membership {
                socket: ConnId(3),
                op: MembershipOp::Join,
                group: addr("224.238.0.31:0"),
                interface: Ipv4Addr::new(127, 0, 0, 1),
            },
            #[rustfmt::skip]
            bytes: &[
                0x38, 0x24, 0x00, 0x0e, 0x00, 0x00, 0x00, // header
                0x03, 0x00, 0x00, 0x00, // socket 3
                0x01, // op: join
                0x04, 0x00, 0x00, // family 4, port 0
                0xe0, 0xee, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 224.238.0.31
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flowinfo, scope_id
                0x7f, 0x00, 0x00, 0x01, // interface 127.0.0.1
            ],
        },
        Golden {
            name: "membership_ok",
            request_id: RequestId(14),
            message: Message::MembershipOk,
            #[rustfmt::skip]
            bytes: &[
                0x39, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00, // header
            ],
        },
        Golden {
            name: "membership_err",
            request_id: RequestId(14),
            message: Message::MembershipErr {
                code: ErrorCode::PermissionDenied,
            },
            #[rustfmt::skip]
            bytes: &[
                0x3a, 0x02, 0x00, 0x0e, 0x00, 0x00, 0x00, // header
                0x00, 0x02, // code PermissionDenied (0x0200)
            ],
        },
        Golden {
            name: "resolve",
            request_id: RequestId(15),
            message: Message::Resolve {
                family: FamilyHint::Any,
                name: "example.com".parse().expect("a host name"),
            },
            bytes: &RESOLVE,
        },
        Golden {
            name: "resolve_ok",
            request_id: RequestId(15),
            message: Message::ResolveOk {
                answers: Answers::new([
                    Answer {
                        addr: "93.184.216.34".parse().expect("an address"),
                        ttl: 300,
                    },
                    Answer {
                        addr: "2606:2800:220:1:248:1893:25c8:1946"
                            .parse()
                            .expect("an address"),
                        ttl: 60,
                    },
                ]),
            },
            bytes: &RESOLVE_OK,
        },
        Golden {
            name: "resolve_err",
            request_id: RequestId(15),
            message: Message::ResolveErr {
                code: ErrorCode::NoSuchName,
            },
            #[rustfmt::skip]
            bytes: &[
                0x52, 0x02, 0x00, 0x0f, 0x00, 0x00, 0x00, // header
                0x09, 0x00, // code NoSuchName (0x0009)
            ],
        },
        Golden {
            name: "error",
            request_id: RequestId(11),
            message: Message::Error {
                code: ErrorCode::Unsupported,
                rejected_type: 0x55,
            },
            #[rustfmt::skip]
            bytes: &[
                0x7f, 0x03, 0x00, 0x0b, 0x00, 0x00, 0x00, // header
                0x02, 0x00, // code Unsupported
                0x55, // rejected_type
            ],
        },
    ]
}

/// The session bootstrap PROTOCOL.md shows as its example, and its bytes.
pub fn bootstrap() -> (arca_wire::Bootstrap, &'static [u8]) {
    let value = arca_wire::Bootstrap {
        region_size: 64 << 20,
        control_offset: 0,
        control_cap_to_monitor: 65536,
        control_cap_to_guest: 65536,
        bitmap_offset: 0x2_2000,
        bitmap_slots: 65536,
    };
    #[rustfmt::skip]
    let bytes: &[u8] = &[
        0x41, 0x52, 0x43, 0x53, // magic "ARCS"
        0x01, 0x00, // version 1
        0x00, 0x00, // flags
        0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, // region_size 64 MiB
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // control_offset 0
        0x00, 0x00, 0x01, 0x00, // control_cap_to_monitor 65536
        0x00, 0x00, 0x01, 0x00, // control_cap_to_guest 65536
        0x00, 0x20, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, // bitmap_offset 0x22000
        0x00, 0x00, 0x01, 0x00, // bitmap_slots 65536
        0x00, 0x00, 0x00, 0x00, // reserved
    ];
    (value, bytes)
}
