//! How many bytes written to a TCP connection the peer has not yet
//! acknowledged (`write_seq - snd_una`), which lets the TCP sink count an
//! event as delivered only once the peer's kernel has it, without unsafe
//! socket calls. Asked of the kernel in one of two ways:
//! - a `NETLINK_SOCK_DIAG` request for that one connection (sock_diag(7),
//!   `linux/inet_diag.h`): the kernel finds the socket by its addresses and
//!   answers its `idiag_wqueue`; two system calls, whatever the number of
//!   sockets on the host;
//! - where netlink is not allowed, the `tx_queue` column of the kernel's
//!   `/proc/net/tcp` (and `tcp6`) table (proc(5), `net/ipv4/tcp_ipv4.c`),
//!   which costs a walk of the host's whole connection table per read.

use std::fmt::Write;
use std::io::Read;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// `AF_NETLINK`, `NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`, `NLM_F_REQUEST`,
/// `NLMSG_ERROR` (linux/netlink.h, linux/sock_diag.h).
const AF_NETLINK: i32 = 16;
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// `AF_INET`, `AF_INET6`, `IPPROTO_TCP`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// `struct nlmsghdr` (16 bytes) + `struct inet_diag_req_v2` (56 bytes).
const REQUEST_LEN: usize = 72;
/// Offset of `idiag_wqueue` in the answer: `nlmsghdr` (16) + the
/// `inet_diag_msg` fields before it (family, state, timer, retrans: 4; the
/// socket id: 48; expires, rqueue: 8).
const WQUEUE_AT: usize = 76;

/// Asks the kernel, again and again, how many bytes of one TCP connection
/// (`local` → `peer`) the peer has not yet acknowledged.
pub(crate) struct Unacked {
    local: SocketAddr,
    peer: SocketAddr,
    /// The netlink socket, `None` once netlink has failed (then `/proc`).
    diag: Option<Socket>,
    request: [u8; REQUEST_LEN],
    seq: u32,
    answer: Vec<u8>,
}

impl Unacked {
    /// For the connection `local` → `peer` (the addresses of our end).
    pub(crate) fn new(local: SocketAddr, peer: SocketAddr) -> Self {
        let diag = Socket::new(
            Domain::from(AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(NETLINK_SOCK_DIAG)),
        )
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .ok();
        Self {
            local,
            peer,
            diag,
            request: diag_request(local, peer),
            seq: 0,
            answer: vec![0; 512],
        }
    }

    /// The bytes not yet acknowledged; `None` when the kernel does not know
    /// the connection (closed) or cannot be asked.
    pub(crate) fn bytes(&mut self) -> Option<u64> {
        if self.diag.is_some() {
            match self.ask() {
                Ok(q) => return q,
                // Not allowed here (a sandbox, an old kernel): use /proc.
                Err(_) => self.diag = None,
            }
        }
        unacked_bytes(self.local, self.peer)
    }

    /// One request and its answer: `Ok(None)` when the kernel answers that
    /// it has no such socket.
    fn ask(&mut self) -> std::io::Result<Option<u64>> {
        let diag = self.diag.as_ref().expect("netlink socket");
        self.seq = self.seq.wrapping_add(1);
        self.request[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        diag.send(&self.request)?;
        // The kernel answers within the send; an answer to an earlier
        // request that was not read is skipped by its sequence number.
        for _ in 0..4 {
            let n = (&*diag).read(&mut self.answer)?;
            let a = &self.answer[..n];
            if n < 16 || a[8..12] != self.seq.to_ne_bytes() {
                continue;
            }
            let kind = u16::from_ne_bytes([a[4], a[5]]);
            if kind == NLMSG_ERROR {
                return Ok(None);
            }
            if kind != SOCK_DIAG_BY_FAMILY || n < WQUEUE_AT + 4 {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            let q = u32::from_ne_bytes(a[WQUEUE_AT..WQUEUE_AT + 4].try_into().expect("4 bytes"));
            return Ok(Some(u64::from(q)));
        }
        Err(std::io::ErrorKind::InvalidData.into())
    }
}

/// A `SOCK_DIAG_BY_FAMILY` request for the one TCP socket whose own address
/// is `local` and whose peer is `peer` (sequence number at bytes 8..12).
fn diag_request(local: SocketAddr, peer: SocketAddr) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    // nlmsghdr: length, type, flags, sequence, port id (0: the kernel).
    r[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, extensions, pad, states.
    r[16] = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    r[17] = IPPROTO_TCP;
    r[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: source port, destination port (big-endian), source
    // and destination addresses (network order, 16 bytes each), interface,
    // cookie (all ones: none).
    r[24..26].copy_from_slice(&local.port().to_be_bytes());
    r[26..28].copy_from_slice(&peer.port().to_be_bytes());
    let put = |r: &mut [u8], a: SocketAddr| match a {
        SocketAddr::V4(a) => r[..4].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => r[..16].copy_from_slice(&a.ip().octets()),
    };
    put(&mut r[28..44], local);
    put(&mut r[44..60], peer);
    r[64..72].copy_from_slice(&[0xff; 8]);
    r
}

/// Bytes written on the connection `local` → `peer` that the peer has not yet
/// acknowledged; `None` when the table cannot be read or has no such socket.
fn unacked_bytes(local: SocketAddr, peer: SocketAddr) -> Option<u64> {
    let (file, l, p) = match (local, peer) {
        (SocketAddr::V4(l), SocketAddr::V4(p)) => ("/proc/net/tcp", v4(l), v4(p)),
        (SocketAddr::V6(l), SocketAddr::V6(p)) => ("/proc/net/tcp6", v6(l), v6(p)),
        _ => return None,
    };
    let table = std::fs::read_to_string(file).ok()?;
    find(&table, &l, &p)
}

/// The `tx_queue` of the row whose local and remote addresses are `l` and `p`.
fn find(table: &str, l: &str, p: &str) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let mut cols = row.split_whitespace().skip(1);
        let (local, remote, _state, queues) =
            (cols.next()?, cols.next()?, cols.next()?, cols.next()?);
        if local != l || remote != p {
            return None;
        }
        let tx = queues.split(':').next()?;
        u64::from_str_radix(tx, 16).ok()
    })
}

/// `0100007F:1F90` for 127.0.0.1:8080: the address as the kernel's u32 in
/// host (little-endian) order, then the port.
fn v4(a: std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    )
}

/// Four such words for an IPv6 address.
fn v6(a: std::net::SocketAddrV6) -> String {
    let mut s = String::with_capacity(37);
    for word in a.ip().octets().chunks(4) {
        let _ = write!(
            s,
            "{:08X}",
            u32::from_le_bytes([word[0], word[1], word[2], word[3]])
        );
    }
    let _ = write!(s, ":{:04X}", a.port());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_matched_by_both_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:C350 01 0000A000:00000000 00:00000000 00000000     0        0 1 1\n   1: 0100007F:C350 0100007F:1F90 01 00000010:00000000 00:00000000 00000000     0        0 2 1\n";
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:50000".parse().unwrap(),
        );
        let (SocketAddr::V4(a4), SocketAddr::V4(b4)) = (a, b) else {
            unreachable!()
        };
        assert_eq!(find(table, &v4(a4), &v4(b4)), Some(0xA000));
        assert_eq!(find(table, &v4(b4), &v4(a4)), Some(0x10));
        assert_eq!(
            v6("[::1]:80".parse().unwrap()),
            "00000000000000000000000001000000:0050"
        );
    }

    #[test]
    fn a_live_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let found = unacked_bytes(client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(found, Some(0));
    }

    #[test]
    fn netlink_agrees_with_proc() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let mut asked = Unacked::new(local, peer);
        assert!(asked.diag.is_some(), "netlink socket");
        assert_eq!(asked.ask().unwrap(), Some(0));
        // Bytes the peer's kernel has acknowledged (loopback acks at once)
        // leave nothing outstanding.
        client.write_all(&[b'x'; 10_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(asked.ask().unwrap(), Some(0));
        assert_eq!(asked.bytes(), unacked_bytes(local, peer));
        drop(server);
        // No connection has these addresses: the kernel says so.
        let mut none = Unacked::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(none.ask().unwrap(), None);
        assert_eq!(none.bytes(), None);
    }

    #[test]
    fn netlink_finds_an_ipv6_connection() {
        // Where the host has no IPv6 loopback there is nothing to ask about.
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            return;
        };
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(Unacked::new(local, peer).ask().unwrap(), Some(0));
        let port = peer.port().wrapping_add(1).max(1);
        let elsewhere = std::net::SocketAddr::new(peer.ip(), port);
        assert_eq!(Unacked::new(local, elsewhere).ask().unwrap(), None);
    }
}
