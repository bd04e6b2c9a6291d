//! The system calls the data plane makes, each wrapped once with its safety
//! argument: eventfd, poll, TUN read/write and its queues (TUNGETIFF,
//! TUNSETIFF), and batched UDP I/O (recvmmsg/sendmmsg) carrying the local
//! address in IP_PKTINFO/IPV6_PKTINFO so replies leave from the address the
//! peer contacted.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A private, close-on-exec copy of a descriptor the caller owns.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) reads no memory; on success the new
    // descriptor is ours alone, so OwnedFd may close it.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and set the descriptor's flags.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

pub fn set_int_opt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int of the length we pass.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

pub fn socket_family(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `domain`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(domain)
}

/// An eventfd used as a level-triggered "something happened" flag.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the returned descriptor is ours.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) still
        // leaves the fd readable, which is all a signal needs.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (already clear) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until `fd` is readable (or in error) or `stop` is signalled.
/// Returns false when asked to stop.
pub fn wait_readable(fd: RawFd, stop: &EventFd) -> io::Result<Readiness> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.raw(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a live array of two pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Readiness::Stop);
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            return Ok(Readiness::Error);
        }
        return Ok(Readiness::Readable);
    }
}

/// Which of the descriptors given to `wait_any` are ready, one bit each
/// (bit i for `fds[i]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// Readable, or in error.
    pub any: u32,
    /// In error or hung up with nothing to read.
    pub error_only: u32,
}

/// Waits until one of `fds` (at most 8) is readable or in error, or `stop`
/// is signalled, for at most `timeout_ms` (-1: no limit). None: asked to stop.
pub fn wait_any(
    fds: &[RawFd],
    stop: &EventFd,
    timeout_ms: libc::c_int,
) -> io::Result<Option<Ready>> {
    const MAX: usize = 8;
    let n = fds.len().min(MAX);
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut polled = [unused; MAX + 1];
    for (p, &fd) in polled.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    polled[n] = libc::pollfd {
        fd: stop.raw(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `polled` is a live array of at least n + 1 pollfd structures.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), (n + 1) as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if polled[n].revents != 0 {
        return Ok(None);
    }
    let mut ready = Ready::default();
    for (i, p) in polled[..n].iter().enumerate() {
        if p.revents != 0 {
            ready.any |= 1 << i;
        }
        if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && p.revents & libc::POLLIN == 0
        {
            ready.error_only |= 1 << i;
        }
    }
    Ok(Some(ready))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    Readable,
    Error,
    Stop,
}

/// Waits until `fd` can be written again after EAGAIN, until `deadline`;
/// false if the deadline passed first.
fn wait_writable(fd: RawFd, deadline: Instant) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one live pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    rc > 0
}

/// EAGAIN that outlasted the sender's patience.
fn gave_up() -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        "socket send buffer stayed full; datagrams dropped",
    )
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes the gathered pieces as one write (one packet on a TUN device).
pub fn writev(fd: RawFd, iov: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    let n =
        libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: IoSlice is ABI-compatible with struct iovec (std documents it);
    // the kernel only reads the n live slices.
    cvt_size(unsafe { libc::writev(fd, iov.as_ptr().cast(), n) })
}

/// struct ifreq as TUNSETIFF and TUNGETIFF use it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The interface name and TUN flags (IFF_*) of a TUN descriptor (TUNGETIFF).
pub fn tun_name_and_flags(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, libc::c_int)> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes, the size of IfReq)
    // into the live `req`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) })?;
    let len = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    Ok((req.name[..len].to_vec(), libc::c_int::from(req.flags)))
}

/// Opens another queue of the multi-queue TUN device `name` (TUNSETIFF with
/// the device's own flags, IFF_MULTI_QUEUE among them), non-blocking.
pub fn tun_open_queue(name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: libc::c_short::try_from(flags)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        _pad: [0; 22],
    };
    if name.len() >= req.name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..name.len()].copy_from_slice(name);
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string; open takes no other pointer.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads (and may write back) a struct ifreq, which the
    // live `req` is.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(owned)
}

pub fn sockaddr_from_std(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

pub fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Room for an IP_PKTINFO/IPV6_PKTINFO and a UDP_GRO/UDP_SEGMENT control message.
const CMSG_SPACE: usize = 128;
/// Linux UDP socket options (include/uapi/linux/udp.h), not in libc for glibc.
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;
/// The kernel's limit on segments in one UDP GSO send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Stay below the 64 KiB IP datagram limit with room for the headers.
const GSO_MAX_BYTES: usize = 65_000;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_SPACE]);

/// One received datagram's metadata.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    pub len: usize,
    pub src: Option<SocketAddr>,
    /// The local address the datagram was sent to, and the interface.
    pub local: Option<(IpAddr, u32)>,
    /// With UDP GRO: the size of each coalesced datagram (the last may be
    /// shorter); 0 when the buffer holds one datagram.
    pub segment: usize,
}

/// Most datagrams one recvmmsg call takes (a RecvBatch's size).
pub const RECV_MAX: usize = 64;

/// Reusable buffers for recvmmsg. It holds no pointers (the message headers
/// are built for each call), so it can be handed to another thread.
pub struct RecvBatch {
    pub bufs: Vec<Vec<u8>>,
    pub meta: Vec<RecvMeta>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
}

impl RecvBatch {
    /// `count` (at most RECV_MAX) buffers of `size` bytes.
    pub fn new(count: usize, size: usize) -> Self {
        let count = count.min(RECV_MAX);
        Self {
            bufs: (0..count).map(|_| vec![0u8; size]).collect(),
            meta: vec![
                RecvMeta {
                    len: 0,
                    src: None,
                    local: None,
                    segment: 0,
                };
                count
            ],
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { zeroed() }; count],
            cmsgs: vec![CmsgBuf([0; CMSG_SPACE]); count],
        }
    }

    /// Receives up to a batch without blocking; returns how many arrived.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        // SAFETY: all-zero iovec and mmsghdr arrays are valid; the first n
        // are filled below.
        let mut iovs: [libc::iovec; RECV_MAX] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_MAX] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            // SAFETY: all-zero is a valid msghdr; the pointers set below point
            // into buffers that outlive the recvmmsg call.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
            hdrs[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        // SAFETY: `hdrs` holds n initialised mmsghdr whose buffers are live
        // and sized as declared; the kernel fills at most n of them.
        let got = cvt(unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        })? as usize;
        for (i, h) in hdrs.iter().enumerate().take(got) {
            // SAFETY: msg_hdr was filled by the kernel for this message.
            let (local, segment) = unsafe { parse_control(&h.msg_hdr) };
            self.meta[i] = RecvMeta {
                len: h.msg_len as usize,
                src: sockaddr_to_std(&self.addrs[i]),
                local,
                segment,
            };
        }
        Ok(got)
    }
}

/// Reads the destination address (IP_PKTINFO / IPV6_PKTINFO) and the GRO
/// segment size (UDP_GRO) out of a received message's control data.
///
/// # Safety
/// `h` must be a msghdr the kernel filled, whose control buffer is live.
unsafe fn parse_control(h: &libc::msghdr) -> (Option<(IpAddr, u32)>, usize) {
    let mut local = None;
    let mut segment = 0;
    let mut c = libc::CMSG_FIRSTHDR(h);
    while !c.is_null() {
        let cm = &*c;
        let data = libc::CMSG_DATA(c);
        if cm.cmsg_level == libc::IPPROTO_IP && cm.cmsg_type == libc::IP_PKTINFO {
            let info: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
            let ip = IpAddr::V4(Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes()));
            local = Some((ip, info.ipi_ifindex as u32));
        } else if cm.cmsg_level == libc::IPPROTO_IPV6 && cm.cmsg_type == libc::IPV6_PKTINFO {
            let info: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
            local = Some((
                IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                info.ipi6_ifindex,
            ));
        } else if cm.cmsg_level == libc::SOL_UDP && cm.cmsg_type == UDP_GRO {
            let size: libc::c_int = std::ptr::read_unaligned(data.cast());
            segment = usize::try_from(size).unwrap_or(0);
        }
        c = libc::CMSG_NXTHDR(h, c);
    }
    (local, segment)
}

/// Writes the control messages for a send: the source address (if any) and
/// the UDP GSO segment size (if any); returns their total length.
fn build_control(buf: &mut CmsgBuf, src: Option<(IpAddr, u32)>, segment: Option<u16>) -> usize {
    // SAFETY: all-zero is a valid msghdr; it only describes `buf` for
    // CMSG_FIRSTHDR. At most two messages are written (at most 40 + 24 bytes
    // of their aligned space), inside the CMSG_SPACE (128) bytes of `buf`,
    // which is 8-byte aligned as cmsghdr needs; each starts right after the
    // previous one's aligned space.
    unsafe {
        let mut h: libc::msghdr = zeroed();
        h.msg_control = buf.0.as_mut_ptr().cast();
        h.msg_controllen = CMSG_SPACE;
        let first = libc::CMSG_FIRSTHDR(&h);
        let mut len = 0;
        if let Some(src) = src {
            len += write_source(first, src);
        }
        if let Some(seg) = segment {
            len += write_cmsg(
                buf.0.as_mut_ptr().add(len).cast(),
                libc::SOL_UDP,
                UDP_SEGMENT,
                seg,
            );
        }
        len
    }
}

/// The source address as IP_PKTINFO or IPV6_PKTINFO; returns its space.
///
/// # Safety
/// `c` must point at writable, cmsghdr-aligned space for the message.
unsafe fn write_source(c: *mut libc::cmsghdr, (addr, scope): (IpAddr, u32)) -> usize {
    match addr {
        IpAddr::V4(a) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            // SAFETY: as this function's contract.
            unsafe { write_cmsg(c, libc::IPPROTO_IP, libc::IP_PKTINFO, info) }
        }
        IpAddr::V6(a) => {
            // A link-local source needs its interface; others route freely.
            let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ipi6_ifindex: if link_local { scope } else { 0 },
            };
            // SAFETY: as this function's contract.
            unsafe { write_cmsg(c, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info) }
        }
    }
}

/// One control message carrying `data`; returns its aligned space.
///
/// # Safety
/// `c` must point at writable, cmsghdr-aligned space of at least
/// CMSG_SPACE(size_of::<T>()) bytes.
unsafe fn write_cmsg<T>(c: *mut libc::cmsghdr, level: i32, kind: i32, data: T) -> usize {
    let size = size_of::<T>() as u32;
    // SAFETY: as this function's contract; the data may be unaligned.
    unsafe {
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(size) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), data);
        libc::CMSG_SPACE(size) as usize
    }
}

/// Is this send error the kernel saying "that source address is gone"?
/// IPv4 gives ENETUNREACH on current kernels (EADDRNOTAVAIL on some), IPv6 EINVAL.
pub fn is_stale_source_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH) | Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
    )
}

/// A send that failed after `sent` datagrams went out.
#[derive(Debug)]
pub struct SendError {
    pub sent: usize,
    pub error: io::Error,
}

/// Sends every datagram in `packets` to `dst`, from `src` when given.
///
/// While `gso` allows it, runs of equal-sized datagrams (the last of a run
/// may be shorter) go out as one UDP GSO send each (UDP_SEGMENT): one trip
/// through the stack for up to 64 datagrams. If the kernel refuses GSO,
/// `gso` is cleared and everything goes through sendmmsg from then on.
/// A full send buffer is waited for at most `patience` in all; then the
/// rest is dropped (WouldBlock), so no sender can hang on a wedged socket.
pub fn send_batch(
    fd: RawFd,
    dst: &SocketAddr,
    src: Option<(IpAddr, u32)>,
    packets: &[&[u8]],
    gso: &AtomicBool,
    patience: Duration,
) -> Result<(), SendError> {
    let deadline = Instant::now() + patience;
    let mut sent = 0;
    while sent < packets.len() {
        let run = if gso.load(Ordering::Relaxed) {
            gso_run(&packets[sent..])
        } else {
            0
        };
        if run < 2 {
            let end = if gso.load(Ordering::Relaxed) {
                sent + run.max(1)
            } else {
                packets.len()
            };
            send_mmsg(fd, dst, src, &packets[sent..end], deadline).map_err(|e| SendError {
                sent: sent + e.sent,
                error: e.error,
            })?;
            sent = end;
            continue;
        }
        match send_gso(fd, dst, src, &packets[sent..sent + run], deadline) {
            Ok(()) => sent += run,
            Err(e) if is_stale_source_error(&e) && src.is_some() => {
                return Err(SendError { sent, error: e })
            }
            Err(e) if gso_refused(&e) => gso.store(false, Ordering::Relaxed),
            Err(e) => return Err(SendError { sent, error: e }),
        }
    }
    Ok(())
}

/// How many datagrams from the start of `packets` can share one GSO send.
fn gso_run(packets: &[&[u8]]) -> usize {
    let Some(first) = packets.first() else {
        return 0;
    };
    let size = first.len();
    if size == 0 || size > usize::from(u16::MAX) {
        return 1;
    }
    let mut total = 0;
    let mut n = 0;
    for p in packets.iter().take(GSO_MAX_SEGMENTS) {
        if p.len() > size || total + p.len() > GSO_MAX_BYTES {
            break;
        }
        total += p.len();
        n += 1;
        if p.len() < size {
            break; // only the last segment may be shorter
        }
    }
    n
}

fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT) | Some(libc::EINVAL)
    )
}

/// One UDP GSO send of `run` (equal-sized datagrams, the last may be
/// shorter), straight from the datagrams' own buffers (one iovec each):
/// the kernel cuts the concatenation at the segment size.
fn send_gso(
    fd: RawFd,
    dst: &SocketAddr,
    src: Option<(IpAddr, u32)>,
    run: &[&[u8]],
    deadline: Instant,
) -> io::Result<()> {
    let (mut name, namelen) = sockaddr_from_std(dst);
    let mut cmsg = CmsgBuf([0; CMSG_SPACE]);
    let segment = u16::try_from(run[0].len()).unwrap_or(u16::MAX);
    let cmsg_len = build_control(&mut cmsg, src, Some(segment));
    // SAFETY: all-zero iovecs are valid; the first run.len() are set below.
    let mut iovs: [libc::iovec; GSO_MAX_SEGMENTS] = unsafe { zeroed() };
    for (iov, p) in iovs.iter_mut().zip(run) {
        *iov = libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        };
    }
    // SAFETY: all-zero msghdr is valid; every pointer set references a live
    // local (name, iovs -> the datagrams, cmsg) for the duration of the call.
    let mut h: libc::msghdr = unsafe { zeroed() };
    h.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = namelen;
    h.msg_iov = iovs.as_mut_ptr();
    h.msg_iovlen = run.len().min(GSO_MAX_SEGMENTS);
    h.msg_control = cmsg.0.as_mut_ptr().cast();
    h.msg_controllen = cmsg_len;
    loop {
        // SAFETY: `h` describes live buffers, see above; the kernel only reads them.
        let rc = unsafe { libc::sendmsg(fd, &h, libc::MSG_DONTWAIT) };
        if rc >= 0 {
            return Ok(());
        }
        retry_or_fail(fd, deadline)?;
    }
}

/// sendmmsg of every datagram, each on its own.
fn send_mmsg(
    fd: RawFd,
    dst: &SocketAddr,
    src: Option<(IpAddr, u32)>,
    packets: &[&[u8]],
    deadline: Instant,
) -> Result<(), SendError> {
    let (mut name, namelen) = sockaddr_from_std(dst);
    let mut cmsg = CmsgBuf([0; CMSG_SPACE]);
    let cmsg_len = build_control(&mut cmsg, src, None);
    // SAFETY: all-zero iovec/mmsghdr arrays are valid; filled below.
    let mut iovs: [libc::iovec; MMSG_MAX] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; MMSG_MAX] = unsafe { zeroed() };
    let mut sent = 0;
    while sent < packets.len() {
        let chunk = &packets[sent..packets.len().min(sent + MMSG_MAX)];
        for (i, p) in chunk.iter().enumerate() {
            iovs[i] = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
        }
        let control = (cmsg_len > 0).then_some((&mut cmsg, cmsg_len));
        fill_headers(
            &mut hdrs,
            &mut iovs[..chunk.len()],
            (&mut name, namelen),
            control,
        );
        // SAFETY: the first chunk.len() headers are initialised and point at
        // live buffers (the packets, `name`, `cmsg`) for the whole call.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(rc) {
            Ok(n) => sent += n,
            Err(_) => retry_or_fail(fd, deadline).map_err(|error| SendError { sent, error })?,
        }
    }
    Ok(())
}

const MMSG_MAX: usize = 64;

/// One header per iovec, all to `name`, all with the same control messages.
fn fill_headers(
    hdrs: &mut [libc::mmsghdr; MMSG_MAX],
    iovs: &mut [libc::iovec],
    (name, namelen): (&mut libc::sockaddr_storage, libc::socklen_t),
    control: Option<(&mut CmsgBuf, usize)>,
) {
    let (control_ptr, control_len) = match control {
        Some((buf, len)) => (buf.0.as_mut_ptr().cast(), len),
        None => (std::ptr::null_mut(), 0),
    };
    for (hdr, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        // SAFETY: all-zero msghdr is valid; the pointers are the caller's.
        let mut h: libc::msghdr = unsafe { zeroed() };
        h.msg_name = (name as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = iov;
        h.msg_iovlen = 1;
        h.msg_control = control_ptr;
        h.msg_controllen = control_len;
        *hdr = libc::mmsghdr {
            msg_hdr: h,
            msg_len: 0,
        };
    }
}

/// After a failed send: Ok to try again (interrupted, or the socket became
/// writable before `deadline`), else the error to give up with.
fn retry_or_fail(fd: RawFd, deadline: Instant) -> io::Result<()> {
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock if !wait_writable(fd, deadline) => Err(gave_up()),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_runs_group_equal_sizes_with_a_shorter_tail() {
        let a = [0u8; 100];
        let b = [0u8; 40];
        let c = [0u8; 120];
        assert_eq!(gso_run(&[&a, &a, &a]), 3);
        assert_eq!(
            gso_run(&[&a, &a, &b, &a]),
            3,
            "a shorter datagram ends the run"
        );
        assert_eq!(gso_run(&[&a, &c]), 1, "a longer one cannot join");
        assert_eq!(gso_run(&[]), 0);
        let many: Vec<&[u8]> = (0..100).map(|_| &a[..]).collect();
        assert_eq!(gso_run(&many), GSO_MAX_SEGMENTS);
        let big = vec![0u8; 1500];
        let bigs: Vec<&[u8]> = (0..60).map(|_| &big[..]).collect();
        assert_eq!(gso_run(&bigs), GSO_MAX_BYTES / 1500);
    }

    #[test]
    fn control_messages_fit() {
        let mut buf = CmsgBuf([0; CMSG_SPACE]);
        let both = build_control(
            &mut buf,
            Some(("2001:db8::1".parse().expect("ip"), 0)),
            Some(1452),
        );
        assert!(both > 0 && both <= CMSG_SPACE);
        assert_eq!(build_control(&mut buf, None, None), 0);
    }
}
