//! `TCP_NODELAY` on the sockets of sqlx's PostgreSQL and MySQL connections: a workaround.
//!
//! Why: sqlx 0.9.0 opens its TCP sockets without `TCP_NODELAY`, a regression
//! (<https://github.com/transact-rs/sqlx/issues/4335>). With Nagle's algorithm on, a small write
//! sent while an earlier one is still unacknowledged waits for the server's delayed ACK (~40 ms
//! on Linux). Every `COPY … FROM STDIN` ends that way (sqlx flushes the last `CopyData`, then
//! sends the 5-byte `CopyDone` in a write of its own), and so do MySQL round trips made of
//! several writes. **Delete this module**, its two call sites and the `unsafe_code` exception in
//! this crate's `Cargo.toml` once a sqlx release newer than 0.9.0 ships the fix (PR #4336).
//!
//! Owns: once per new pooled connection (the pools' `after_connect`), finding the descriptor of
//! this process that is that connection's TCP socket and setting `TCP_NODELAY` on it. sqlx
//! exposes no socket hook, so the socket is found by its 4-tuple: the server reports the client
//! address and port it sees (PostgreSQL also its own address and port; for MySQL the peer is
//! the host and port of the URL), and `/proc/self/fd` is scanned for the TCP socket whose
//! `getsockname` and `getpeername` equal them.
//!
//! Does not: fail or slow down a connection. When no socket matches (a Unix socket, a proxy or
//! NAT between client and server), when several do, or when a step errs, it logs at debug and
//! changes nothing. On targets other than Linux it does nothing at all (not even the query).
//!
//! Invariants:
//! - The one socket ever modified is the one whose full 4-tuple (local address and port, peer
//!   address and port) matches this connection, and only when exactly one descriptor of the
//!   process matches.
//! - Every other descriptor is only looked at (`readlink`, socket type, `getsockname`,
//!   `getpeername`): never written to, duplicated or closed. (Closing any descriptor of a file
//!   drops the process's POSIX locks on it, which SQLite relies on.)

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Instant;

use sqlx::{MySqlConnection, PgConnection};

/// The client's address and port, then the server's, as PostgreSQL reports them: all NULL
/// over a Unix socket.
type PgEnds = (Option<String>, Option<i32>, Option<String>, Option<i32>);

/// Sets `TCP_NODELAY` on the socket of `conn`, a PostgreSQL connection sqlx has just opened.
///
/// Never fails: when the socket cannot be identified beyond doubt, nothing changes (logged at
/// debug). Costs one round trip; meant for the pool's `after_connect`, never per query.
pub(crate) async fn postgres(conn: &mut PgConnection) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let started = Instant::now();
    let ends: Result<PgEnds, _> = sqlx::query_as(
        "SELECT host(inet_client_addr()), inet_client_port(), \
         host(inet_server_addr()), inet_server_port()",
    )
    .persistent(false)
    .fetch_one(conn)
    .await;
    let (local, peer) = match ends {
        Ok((Some(client), Some(client_port), Some(server), Some(server_port))) => {
            (literal(&client, client_port), literal(&server, server_port))
        }
        Ok(_) => {
            tracing::debug!("TCP_NODELAY not set: the PostgreSQL connection is not over TCP");
            return;
        }
        Err(error) => {
            tracing::debug!(%error, "TCP_NODELAY not set: PostgreSQL did not say the addresses");
            return;
        }
    };
    apply(&local, &peer, started);
}

/// Sets `TCP_NODELAY` on the socket of `conn`, a MySQL connection sqlx has just opened to
/// `server` (the host and port of its URL; `None` for a Unix socket).
///
/// Never fails: when the socket cannot be identified beyond doubt, nothing changes (logged at
/// debug). Costs one round trip, plus a name lookup when a host is a name rather than an
/// address; meant for the pool's `after_connect`, never per query.
pub(crate) async fn mysql(conn: &mut MySqlConnection, server: Option<(&str, u16)>) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Some((server_host, server_port)) = server else {
        tracing::debug!("TCP_NODELAY not set: the MySQL connection is not over TCP");
        return;
    };
    let started = Instant::now();
    // `host:port` as the server sees the client; a name instead of an address when the server
    // resolves names (`skip_name_resolve` off), `localhost` alone over a Unix socket.
    let client: Result<String, _> = sqlx::query_scalar(
        "SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()",
    )
    .persistent(false)
    .fetch_one(conn)
    .await;
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(%error, "TCP_NODELAY not set: MySQL did not say the client address");
            return;
        }
    };
    let Some((client_host, client_port)) = client
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
    else {
        tracing::debug!(%client, "TCP_NODELAY not set: MySQL reports no client port");
        return;
    };
    let local = resolve(client_host, client_port).await;
    let peer = resolve(server_host, server_port).await;
    apply(&local, &peer, started);
}

/// Whether `TCP_NODELAY` is set on this process's TCP socket from `local` to `peer`: `None`
/// when no descriptor (or more than one) is such a socket, and on targets other than Linux.
///
/// For tests and diagnostics: it reads the option and changes nothing.
pub fn tcp_nodelay(local: SocketAddr, peer: SocketAddr) -> Option<bool> {
    nodelay_of_the_socket(&[local], &[peer], false).ok()
}

/// Sets `TCP_NODELAY` on the one socket from one of `local` to one of `peer`, and logs what
/// happened (and how long it took since `started`) at debug.
fn apply(local: &[SocketAddr], peer: &[SocketAddr], started: Instant) {
    let outcome = nodelay_of_the_socket(local, peer, true);
    let micros = started.elapsed().as_micros();
    match outcome {
        Ok(nodelay) => tracing::debug!(?local, ?peer, nodelay, micros, "TCP_NODELAY set"),
        Err(reason) => tracing::debug!(?local, ?peer, %reason, micros, "TCP_NODELAY not set"),
    }
}

/// The socket addresses `host` stands for at `port`: itself when it is an address, else what
/// the system resolver returns for it (as sqlx did when it connected); empty when it fails.
async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    let host = host.to_owned();
    tokio::task::spawn_blocking(move || (host.as_str(), port).to_socket_addrs())
        .await
        .ok()
        .and_then(Result::ok)
        .map_or_else(Vec::new, Iterator::collect)
}

/// `addr` (an IP address in text) at `port`, or nothing when either is not one.
fn literal(addr: &str, port: i32) -> Vec<SocketAddr> {
    match (addr.parse::<IpAddr>(), u16::try_from(port)) {
        (Ok(ip), Ok(port)) => vec![SocketAddr::new(ip, port)],
        _ => Vec::new(),
    }
}

/// `TCP_NODELAY` of the one TCP socket of this process whose local address is one of `local`
/// and whose peer is one of `peer`, after setting it when `set`; `Err` says why not.
#[cfg(target_os = "linux")]
fn nodelay_of_the_socket(
    local: &[SocketAddr],
    peer: &[SocketAddr],
    set: bool,
) -> Result<bool, String> {
    let fds = linux::tcp_sockets_between(local, peer)
        .map_err(|e| format!("/proc/self/fd unreadable: {e}"))?;
    let fd = match fds[..] {
        [fd] => fd,
        [] => return Err("no socket of this process has the connection's addresses".into()),
        _ => return Err("several sockets of this process have the connection's addresses".into()),
    };
    linux::with_socket(fd, |socket| {
        if set {
            socket.set_tcp_nodelay(true)?;
        }
        socket.tcp_nodelay()
    })
    .map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn nodelay_of_the_socket(
    _local: &[SocketAddr],
    _peer: &[SocketAddr],
    _set: bool,
) -> Result<bool, String> {
    Err("only on Linux".into())
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::{BorrowedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;

    use socket2::{Protocol, SockRef, Type};

    /// The descriptors of this process that are TCP sockets from one of `local` to one of
    /// `peer`. Only reads: `readlink`, then socket type and addresses of sockets.
    pub(super) fn tcp_sockets_between(
        local: &[SocketAddr],
        peer: &[SocketAddr],
    ) -> io::Result<Vec<RawFd>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            // A socket's link reads `socket:[inode]`; files, pipes and the like are skipped
            // without a single call on their descriptor.
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|link| link.as_os_str().as_bytes().starts_with(b"socket:["));
            if is_socket && with_socket(fd, |s| is_tcp_between(&s, local, peer)) {
                found.push(fd);
            }
        }
        Ok(found)
    }

    /// Whether `socket` is a TCP stream from one of `local` to one of `peer`.
    fn is_tcp_between(socket: &SockRef<'_>, local: &[SocketAddr], peer: &[SocketAddr]) -> bool {
        let end = |addr: io::Result<socket2::SockAddr>| addr.ok().and_then(|a| a.as_socket());
        socket.r#type().is_ok_and(|t| t == Type::STREAM)
            && socket.protocol().is_ok_and(|p| p == Some(Protocol::TCP))
            && end(socket.local_addr()).is_some_and(|a| one_of(a, local))
            && end(socket.peer_addr()).is_some_and(|a| one_of(a, peer))
    }

    /// Whether `a` is one of `set`, an IPv4-mapped IPv6 address being equal to its IPv4 address.
    fn one_of(a: SocketAddr, set: &[SocketAddr]) -> bool {
        set.iter()
            .any(|b| a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical())
    }

    /// Runs `f` on descriptor `fd` of this process, borrowed (never closed).
    pub(super) fn with_socket<T>(fd: RawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
        // SAFETY: `fd` is a non-negative descriptor number listed in /proc/self/fd, and the
        // borrow ends with this call; nothing here closes or duplicates it. `borrow_raw` asks
        // that it stay open meanwhile, which cannot be promised for a descriptor owned by other
        // code (another task could close it), so the use is bounded instead: on any descriptor
        // only read-only calls (`getsockopt`, `getsockname`, `getpeername`: on a descriptor
        // closed meanwhile they fail with EBADF, and a reused number cannot have the 4-tuple of
        // a connection that is still open), and `setsockopt` only on the one descriptor whose
        // 4-tuple is the connection's, its own socket, open while the caller holds it.
        #[allow(unsafe_code, reason = "sqlx#4335 workaround: sqlx exposes no socket")]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        f(SockRef::from(&fd))
    }
}
