//! How many bytes written to a TCP connection the peer has not yet
//! acknowledged, read from the kernel's `/proc/net/tcp` (and `tcp6`) table:
//! its `tx_queue` column is `write_seq - snd_una` for an established socket
//! (proc(5), `net/ipv4/tcp_ipv4.c`). This lets the TCP sink count an event as
//! delivered only once the peer's kernel has it, without unsafe socket calls.

use std::fmt::Write;
use std::net::SocketAddr;

/// Bytes written on the connection `local` → `peer` that the peer has not yet
/// acknowledged; `None` when the table cannot be read or has no such socket.
pub(crate) fn unacked_bytes(local: SocketAddr, peer: SocketAddr) -> Option<u64> {
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
}
