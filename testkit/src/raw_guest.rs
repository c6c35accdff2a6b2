//! A guest written against the wire format and shm-ring directly (no `arca`),
//! for tests that must send what no honest guest would: hand-made frames,
//! scribbled ring headers, bad datagram records. Every wait is bounded.

use std::io::IoSliceMut;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_wire::{
    Bootstrap, ConnId, Frame, FrameDecoder, Message, PipeInfo, RequestId, BOOTSTRAP_LEN,
};
use nix::sys::socket::{
    self as sock, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::TimeVal;
use shm_ring::{
    BidirectionalPipe, Doorbell, NotifyBitmap, PeerWakers, PipeLayout, RingError, ShmOffset,
    ShmRegion,
};

/// Upper bound for one blocking step of a raw guest.
pub const WAIT: Duration = Duration::from_secs(10);

/// A guest written against the wire format and shm-ring directly.
pub struct RawGuest {
    pub sock: OwnedFd,
    pub region: Arc<ShmRegion>,
    pub control: BidirectionalPipe,
    pub bitmap: Arc<NotifyBitmap>,
    pub guest_bell: Doorbell,
    pub monitor_bell: Arc<Doorbell>,
    pub decoder: FrameDecoder,
    pub next: RequestId,
    /// Frames decoded but not yet returned (one read may carry many).
    pub queued: std::collections::VecDeque<Frame>,
}

impl RawGuest {
    pub fn attach(path: &Path) -> RawGuest {
        RawGuest::attach_within(path, WAIT).unwrap_or_else(|e| panic!("attach: {e}"))
    }

    /// Attaches, or says why not within `timeout` (a monitor that does not
    /// answer leaves the bootstrap unsent: the receive times out).
    pub fn attach_within(path: &Path, timeout: Duration) -> Result<RawGuest, String> {
        let fd = sock::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        sock::connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap())
            .map_err(|e| format!("connect: {e}"))?;
        let bound = TimeVal::new(
            i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            timeout.subsec_micros().into(),
        );
        sock::setsockopt(&fd, sockopt::ReceiveTimeout, &bound)
            .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([RawFd; 3]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = sock::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("no bootstrap within {timeout:?}: {e}"))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: descriptors just received are owned by nobody else.
                fds.extend(r.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        let n = msg.bytes;
        assert_eq!(n, BOOTSTRAP_LEN);
        assert_eq!(fds.len(), 3);
        let boot = Bootstrap::parse(&buf[..n]).unwrap();
        let mut fds = fds.into_iter();
        let region = Arc::new(ShmRegion::open(fds.next().unwrap(), boot.region_size).unwrap());
        let liveness = Arc::new(fd.try_clone().unwrap());
        let guest_bell = Doorbell::from_fd(fds.next().unwrap())
            .unwrap()
            .with_liveness(liveness);
        let monitor_bell = Arc::new(Doorbell::from_fd(fds.next().unwrap()).unwrap());
        let bitmap = Arc::new(
            NotifyBitmap::new(&region, ShmOffset(boot.bitmap_offset), boot.bitmap_slots).unwrap(),
        );
        let layout = PipeLayout::new(
            ShmOffset(boot.control_offset),
            u64::from(boot.control_cap_to_monitor),
            u64::from(boot.control_cap_to_guest),
        )
        .unwrap();
        let wake = PeerWakers::single(Arc::new(bitmap.notifier(0, monitor_bell.clone())));
        let control = BidirectionalPipe::attach(&region, layout, wake).unwrap();
        sock::setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 0))
            .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        Ok(RawGuest {
            sock: fd,
            region,
            control,
            bitmap,
            guest_bell,
            monitor_bell,
            decoder: FrameDecoder::new(),
            next: RequestId(1),
            queued: std::collections::VecDeque::new(),
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let deadline = Instant::now() + WAIT;
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.control.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(RingError::WouldBlock) => {
                    self.control
                        .tx()
                        .wait_writable(&self.guest_bell, Some(deadline))
                        .unwrap();
                }
                Err(e) => panic!("control write: {e}"),
            }
        }
    }

    pub fn send(&mut self, msg: &Message) -> RequestId {
        let id = self.next;
        self.next = id.next();
        self.send_raw(&msg.to_frame(id));
        id
    }

    /// The next frame from the monitor, or `None` if the session ended.
    pub fn recv(&mut self) -> Option<Frame> {
        match self.recv_until(Instant::now() + WAIT) {
            Ok(f) => f,
            Err(e) => panic!("no reply within {WAIT:?}: {e}"),
        }
    }

    /// The next frame from the monitor within `wait`; `None` when none came
    /// in time or the session ended.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        self.recv_until(Instant::now() + wait).ok().flatten()
    }

    /// As [`recv`](Self::recv), or why no frame came by `deadline`.
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<Frame>, shm_ring::WaitError> {
        let mut buf = [0u8; 2048];
        loop {
            if let Some(f) = self.queued.pop_front() {
                return Ok(Some(f));
            }
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return Ok(Some(f));
            }
            match self.control.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    // The decoder holds at most one frame: hand it what fits, queue what it
                    // decodes, repeat.
                    let mut input = &buf[..n];
                    while !input.is_empty() {
                        let taken = self.decoder.feed(input);
                        input = &input[taken..];
                        while let Some(f) = self.decoder.next_frame().unwrap() {
                            self.queued.push_back(f);
                        }
                    }
                }
                Err(RingError::WouldBlock) => {
                    match self
                        .control
                        .rx()
                        .wait_readable(&self.guest_bell, Some(deadline))
                    {
                        Ok(()) => {}
                        Err(shm_ring::WaitError::PeerGone) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => panic!("control read: {e}"),
            }
        }
    }

    /// Sends `msg` and waits at most `timeout` for its reply.
    pub fn call_within(&mut self, msg: &Message, timeout: Duration) -> Result<Message, String> {
        let id = self.send(msg);
        let f = self
            .recv_until(Instant::now() + timeout)
            .map_err(|e| format!("no reply within {timeout:?}: {e}"))?
            .ok_or("session ended")?;
        assert_eq!(f.request_id, id, "reply matches request");
        Ok(f.message)
    }

    pub fn call(&mut self, msg: &Message) -> Message {
        let id = self.send(msg);
        let f = self.recv().expect("session ended");
        assert_eq!(f.request_id, id, "reply matches request");
        f.message
    }

    pub fn hello(&mut self) {
        assert!(matches!(
            self.call(&Message::hello()),
            Message::HelloOk {
                version: arca_wire::PROTOCOL_VERSION,
                flags: 0
            }
        ));
    }

    /// A connection's data pipe, as the guest sees it.
    pub fn pipe(&self, conn: ConnId, info: PipeInfo) -> BidirectionalPipe {
        let layout = PipeLayout::new(
            ShmOffset(info.shm_offset),
            u64::from(info.cap_to_monitor),
            u64::from(info.cap_to_guest),
        )
        .unwrap();
        let wake = PeerWakers::single(Arc::new(
            self.bitmap.notifier(conn.0, self.monitor_bell.clone()),
        ));
        BidirectionalPipe::attach(&self.region, layout, wake).unwrap()
    }

    pub fn read_all(&self, pipe: &mut BidirectionalPipe, want: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() >= want && want != usize::MAX {
                        return out;
                    }
                }
                Err(RingError::WouldBlock) => pipe
                    .rx()
                    .wait_readable(&self.guest_bell, Some(deadline))
                    .unwrap(),
                Err(e) => panic!("pipe read: {e}"),
            }
        }
    }

    pub fn write_all(&self, pipe: &mut BidirectionalPipe, mut data: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !data.is_empty() {
            match pipe.write(data) {
                Ok(n) => data = &data[n..],
                Err(RingError::WouldBlock) => pipe
                    .tx()
                    .wait_writable(&self.guest_bell, Some(deadline))
                    .unwrap(),
                Err(e) => panic!("pipe write: {e}"),
            }
        }
    }

    pub fn session_is_closed(&self) -> bool {
        // The monitor drops its end of the session socket when it ends the
        // session: a read gives EOF.
        let mut b = [0u8; 1];
        let fd = self.sock.as_raw_fd();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match sock::recv(fd, &mut b, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return true,
            }
        }
        false
    }
}

pub fn listen_and_accept(g: &mut RawGuest) -> (ConnId, BidirectionalPipe, TcpStream) {
    let Message::ListenOk { listener, local } = g.call(&Message::ListenRequest {
        addr: "127.0.0.1:0".parse().unwrap(),
        backlog: 0,
    }) else {
        panic!("listen refused")
    };
    assert_ne!(local.port(), 0, "real port reported");
    let host = TcpStream::connect(local).unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    let Message::IncomingConnection {
        conn, pipe, peer, ..
    } = g.call(&Message::AcceptRequest { listener })
    else {
        panic!("accept refused")
    };
    assert_eq!(peer, host.local_addr().unwrap());
    let p = g.pipe(conn, pipe);
    (conn, p, host)
}

impl RawGuest {
    /// Writes as much of `bytes` as the control ring takes now, without
    /// waiting (a guest that floods and never reads). Returns bytes written.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> usize {
        self.control.write(bytes).unwrap_or_default()
    }

    /// Takes every frame already readable without waiting; `None` once the
    /// session has ended (EOF or a closed pipe).
    pub fn drain_replies(&mut self) -> Option<Vec<Frame>> {
        let mut out: Vec<Frame> = self.queued.drain(..).collect();
        let mut buf = [0u8; 8192];
        loop {
            while let Ok(Some(f)) = self.decoder.next_frame() {
                out.push(f);
            }
            match self.control.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let mut input = &buf[..n];
                    while !input.is_empty() {
                        let taken = self.decoder.feed(input);
                        input = &input[taken..];
                        while let Ok(Some(f)) = self.decoder.next_frame() {
                            out.push(f);
                        }
                    }
                }
                Err(RingError::WouldBlock) => return Some(out),
                Err(_) => return None,
            }
        }
    }

    /// Raw store of a u64 anywhere in the region (8-aligned), as a hostile
    /// guest may do at any moment. Returns false if `off` is out of range.
    pub fn poke_u64(&self, off: u64, v: u64) -> bool {
        let Ok(p) = self.region.from_offset(ShmOffset(off & !7), 8, 8) else {
            return false;
        };
        // SAFETY: in bounds and aligned (checked by `from_offset`); the guest
        // owns this mapping and plays a hostile peer.
        unsafe { p.as_ptr().cast::<u64>().write_volatile(v) };
        true
    }

    /// Raw copy of `bytes` into the region at `off`.
    pub fn poke_bytes(&self, off: u64, bytes: &[u8]) -> bool {
        let Ok(p) = self
            .region
            .from_offset(ShmOffset(off), bytes.len() as u64, 1)
        else {
            return false;
        };
        // SAFETY: `off..off + len` is inside the mapping (checked); a byte
        // copy, no reference formed over the shared bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.as_ptr(), bytes.len()) };
        true
    }

    /// Rings the monitor for connection `id` (or the control pipe, 0).
    pub fn kick(&self, id: u32) {
        self.bitmap.set(id);
        self.monitor_bell.ring();
    }
}
