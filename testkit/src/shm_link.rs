//! One shm-ring pipe between two processes, set up the way the monitor and a
//! guest will: the parent (owner) creates and seals the region, carves the
//! pipe block with the buddy allocator and hands the child (peer) the memfd,
//! the doorbells and a liveness socket through [`twoproc`](crate::twoproc).
//!
//! # What is handed over
//! | name (fd)          | what                                                        |
//! |--------------------|-------------------------------------------------------------|
//! | `REGION`           | the sealed memfd (child: `ShmRegion::open` checks seals, size) |
//! | `OWNER_READ_BELL`  | eventfd the owner's reader sleeps on; the peer's writer rings it |
//! | `OWNER_WRITE_BELL` | eventfd the owner's writer sleeps on; the peer's reader rings it |
//! | `PEER_READ_BELL`   | eventfd the peer's reader sleeps on; the owner's writer rings it |
//! | `PEER_WRITE_BELL`  | eventfd the peer's writer sleeps on; the owner's reader rings it |
//! | `LIVENESS`         | the child's end of a socketpair nobody writes to            |
//!
//! | name (parameter)   | what                                |
//! |--------------------|-------------------------------------|
//! | `REGION_SIZE`      | bytes; the child verifies it        |
//! | `PIPE_OFFSET`      | the pipe block's offset             |
//! | `CAP_TO_OWNER`     | capacity of the peer → owner ring   |
//! | `CAP_TO_PEER`      | capacity of the owner → peer ring   |
//!
//! Each side's two sleeping doorbells watch its end of the socketpair
//! ([`Doorbell::with_liveness`]): when the other process dies, the kernel
//! closes the other end, the socket hangs up, and a blocked read or write
//! fails with `ConnectionAborted` instead of sleeping forever.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use shm_ring::{
    BidirectionalPipe, BuddyAllocator, Doorbell, PeerWakers, PipeLayout, ShmAllocator, ShmOffset,
    ShmRegion, SyncStream,
};

use crate::twoproc::{ChildCommand, ChildEnv};

/// Name of the region memfd in the handoff.
pub const FD_REGION: &str = "REGION";
/// Doorbell the owner's reader sleeps on.
pub const FD_OWNER_READ_BELL: &str = "OWNER_READ_BELL";
/// Doorbell the owner's writer sleeps on.
pub const FD_OWNER_WRITE_BELL: &str = "OWNER_WRITE_BELL";
/// Doorbell the peer's reader sleeps on.
pub const FD_PEER_READ_BELL: &str = "PEER_READ_BELL";
/// Doorbell the peer's writer sleeps on.
pub const FD_PEER_WRITE_BELL: &str = "PEER_WRITE_BELL";
/// The child's end of the liveness socketpair.
pub const FD_LIVENESS: &str = "LIVENESS";

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// One side's end of the link: the pipe, the two doorbells this side sleeps
/// on, and the liveness fd they watch.
#[derive(Debug)]
pub struct LinkEnd {
    /// The pipe (owner or peer side).
    pub pipe: BidirectionalPipe,
    /// This side's reader sleeps here; the other side's writer rings it.
    pub read_bell: Arc<Doorbell>,
    /// This side's writer sleeps here; the other side's reader rings it.
    pub write_bell: Arc<Doorbell>,
    /// Hangs up when the other process dies.
    pub liveness: Arc<OwnedFd>,
    /// The shared region.
    pub region: Arc<ShmRegion>,
}

impl LinkEnd {
    /// A blocking stream over the pipe, each half sleeping on its own
    /// doorbell, with `timeout` on every read and write.
    pub fn into_stream(self, timeout: Option<Duration>) -> SyncStream<Arc<Doorbell>> {
        let mut s = SyncStream::new(self.pipe, self.read_bell, self.write_bell);
        s.reader().set_timeout(timeout);
        s.writer().set_timeout(timeout);
        s
    }

    /// The peer side, rebuilt from what the parent handed over.
    ///
    /// # Errors
    /// A missing or malformed fd or parameter; the region failing its size or
    /// seal check; a layout outside the region.
    pub fn from_child_env(env: &ChildEnv) -> io::Result<Self> {
        let size: u64 = env.parse("REGION_SIZE")?;
        let offset: u64 = env.parse("PIPE_OFFSET")?;
        let cap_to_owner: u64 = env.parse("CAP_TO_OWNER")?;
        let cap_to_peer: u64 = env.parse("CAP_TO_PEER")?;
        let region = Arc::new(
            ShmRegion::open(env.take_fd(FD_REGION)?, size).map_err(|e| other("open region", e))?,
        );
        let liveness = Arc::new(env.take_fd(FD_LIVENESS)?);
        let bell = |name: &str| Doorbell::from_fd(env.take_fd(name)?);
        let owner_rd = Arc::new(bell(FD_OWNER_READ_BELL)?);
        let owner_wr = Arc::new(bell(FD_OWNER_WRITE_BELL)?);
        let read_bell = Arc::new(bell(FD_PEER_READ_BELL)?.with_liveness(Arc::clone(&liveness)));
        let write_bell = Arc::new(bell(FD_PEER_WRITE_BELL)?.with_liveness(Arc::clone(&liveness)));
        let layout = PipeLayout::new(ShmOffset(offset), cap_to_owner, cap_to_peer)
            .map_err(|e| other("pipe layout", e))?;
        let pipe = BidirectionalPipe::attach(
            &region,
            layout,
            PeerWakers {
                reader: owner_rd,
                writer: owner_wr,
            },
        )
        .map_err(|e| other("attach pipe", e))?;
        Ok(Self {
            pipe,
            read_bell,
            write_bell,
            liveness,
            region,
        })
    }
}

/// The owner side before the child is spawned.
#[derive(Debug)]
pub struct OwnerLink {
    end: LinkEnd,
    peer_read_bell: Arc<Doorbell>,
    peer_write_bell: Arc<Doorbell>,
    child_liveness: Option<OwnedFd>,
    _alloc: ShmAllocator,
}

impl OwnerLink {
    /// Creates a region just large enough for one pipe with these ring
    /// capacities (powers of two, 64 B ..= 1 GiB), carves the pipe with the
    /// buddy allocator, and makes the doorbells and the liveness socketpair.
    ///
    /// # Errors
    /// Invalid capacities; a failing `memfd_create`, `eventfd` or
    /// `socketpair`.
    pub fn new(name: &str, cap_to_owner: u64, cap_to_peer: u64) -> io::Result<Self> {
        let block = BidirectionalPipe::block_size(cap_to_owner, cap_to_peer);
        let size = block
            .checked_next_power_of_two()
            .ok_or_else(|| other("region size", "overflow"))?;
        let region = Arc::new(ShmRegion::create(name, size).map_err(|e| other("region", e))?);
        let alloc =
            ShmAllocator::new(BuddyAllocator::new(size, 4096).map_err(|e| other("allocator", e))?);
        let blk = alloc.alloc(block).map_err(|e| other("alloc pipe", e))?;
        let (mine, theirs) = UnixStream::pair()?;
        let liveness = Arc::new(OwnedFd::from(mine));
        let read_bell = Arc::new(Doorbell::new()?.with_liveness(Arc::clone(&liveness)));
        let write_bell = Arc::new(Doorbell::new()?.with_liveness(Arc::clone(&liveness)));
        let peer_read_bell = Arc::new(Doorbell::new()?);
        let peer_write_bell = Arc::new(Doorbell::new()?);
        let pipe = BidirectionalPipe::create(
            &region,
            blk,
            cap_to_owner,
            cap_to_peer,
            PeerWakers {
                reader: peer_read_bell.clone(),
                writer: peer_write_bell.clone(),
            },
        )
        .map_err(|e| other("create pipe", e))?;
        Ok(Self {
            end: LinkEnd {
                pipe,
                read_bell,
                write_bell,
                liveness,
                region,
            },
            peer_read_bell,
            peer_write_bell,
            child_liveness: Some(OwnedFd::from(theirs)),
            _alloc: alloc,
        })
    }

    /// Adds the region, doorbells, liveness end and layout to `cmd`. The
    /// child's liveness end moves into `cmd` (the parent's copy closes when
    /// the child is spawned), so call this once.
    ///
    /// # Errors
    /// Duplicating an fd failed, or this link was handed over already.
    pub fn hand_to(&mut self, cmd: ChildCommand) -> io::Result<ChildCommand> {
        let liveness = self.child_liveness.take().ok_or_else(|| {
            io::Error::new(io::ErrorKind::AlreadyExists, "link already handed over")
        })?;
        let layout = self.end.pipe.layout();
        let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
        Ok(cmd
            .fd(FD_REGION, dup(self.end.region.fd())?)
            .fd(FD_OWNER_READ_BELL, dup(self.end.read_bell.as_fd())?)
            .fd(FD_OWNER_WRITE_BELL, dup(self.end.write_bell.as_fd())?)
            .fd(FD_PEER_READ_BELL, dup(self.peer_read_bell.as_fd())?)
            .fd(FD_PEER_WRITE_BELL, dup(self.peer_write_bell.as_fd())?)
            .fd(FD_LIVENESS, liveness)
            .var("REGION_SIZE", self.end.region.size())
            .var("PIPE_OFFSET", layout.offset().get())
            .var("CAP_TO_OWNER", layout.cap_to_owner())
            .var("CAP_TO_PEER", layout.cap_to_peer()))
    }

    /// Where the pipe lives in the region.
    pub fn layout(&self) -> shm_ring::PipeLayout {
        self.end.pipe.layout()
    }

    /// The owner's end, once the child has been spawned.
    pub fn into_end(self) -> LinkEnd {
        self.end
    }
}
