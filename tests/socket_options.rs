//! Accepted sockets on both ports run with TCP_NODELAY: without it, small
//! replies wait for the peer's delayed ACK (~40 ms) and every request pays it
//! (issue 8). Checked on the real server process: its accepted sockets are
//! duplicated into the test with pidfd_getfd(2) and asked with getsockopt(2).
//! And the peer port closes a connection whose other end went silent.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::*;

/// The local ports of the accepted (connected) TCP sockets `pid` holds, with
/// whether each has TCP_NODELAY.
fn accepted_sockets(pid: u32) -> Vec<(u16, bool)> {
    // SAFETY: plain syscalls with valid arguments; every returned descriptor
    // is owned (and closed) by an OwnedFd.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let mut found = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if !target.to_string_lossy().starts_with("socket:") {
                continue;
            }
            let Ok(remote_fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), remote_fd, 0) as i32;
            if fd < 0 {
                continue;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let mut peer: libc::sockaddr_in = std::mem::zeroed();
            let mut peer_len = len;
            let local = libc::getsockname(
                fd.as_raw_fd(),
                &mut addr as *mut _ as *mut libc::sockaddr,
                &mut len,
            );
            let connected = libc::getpeername(
                fd.as_raw_fd(),
                &mut peer as *mut _ as *mut libc::sockaddr,
                &mut peer_len,
            );
            if local != 0 || connected != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t
            {
                continue;
            }
            let mut nodelay: libc::c_int = 0;
            let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let got = libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut nodelay as *mut _ as *mut libc::c_void,
                &mut optlen,
            );
            if got == 0 {
                found.push((u16::from_be(addr.sin_port), nodelay != 0));
            }
        }
        found
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_sockets_on_both_ports_have_tcp_nodelay() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    // A client connection to every node, and peers connected to each other.
    for id in 1..=3 {
        until_ok("a write through every node", || {
            join(&cluster, id, "a", "nodelay")
        })
        .await;
    }
    // A client connection held open while the sockets are inspected.
    let held = cluster.channel(leader);
    let mut admin = baton::proto::baton::v1::admin_service_client::AdminServiceClient::new(held);
    admin
        .status(baton::proto::baton::v1::StatusRequest {})
        .await
        .unwrap();
    let node = cluster.nodes.iter().find(|n| n.id == leader).unwrap();
    let sockets = accepted_sockets(cluster.pid(leader));
    let client_port = port_of(&node.client_addr);
    let peer_port = port_of(&node.peer_addr);
    let on = |port| {
        sockets
            .iter()
            .filter(|(p, _)| *p == port)
            .collect::<Vec<_>>()
    };
    assert!(
        !on(client_port).is_empty(),
        "no accepted client socket found: {sockets:?}"
    );
    assert!(
        !on(peer_port).is_empty(),
        "no accepted peer socket found: {sockets:?}"
    );
    for (port, nodelay) in on(client_port).into_iter().chain(on(peer_port)) {
        assert!(
            nodelay,
            "an accepted socket on port {port} runs with Nagle's algorithm"
        );
    }
}

/// The largest number of connections the kernel may hold for `port`'s
/// listening socket before the server accepts them (`ss`: Send-Q of a
/// LISTEN socket).
fn listen_backlog(port: u16) -> u32 {
    let output = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss runs (iproute2, installed by .ci/run)");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listening socket on port {port}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|backlog| backlog.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the backlog from {line:?}"))
}

/// A burst of clients connecting at once (a rollout, a failover) must not
/// overflow the accept queue: with the default of 128, 200 connections opened
/// together by `tests/write_path.rs` overflowed it (the kernel counted
/// `ListenOverflows`), the dropped handshakes were retried after 1 s, and the
/// clients' 500 ms connect timeout failed the test about once in fifteen runs.
#[tokio::test(flavor = "multi_thread")]
async fn every_port_listens_with_a_deep_accept_queue() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_metrics().await;
    let node = cluster.nodes.iter().find(|n| n.id == 1).unwrap();
    let metrics = node.metrics_addr.clone();
    for (what, port) in [
        ("client", port_of(&node.client_addr)),
        ("peer", port_of(&node.peer_addr)),
        ("metrics", port_of(&metrics)),
    ] {
        let backlog = listen_backlog(port);
        assert!(
            backlog >= 1024,
            "the {what} port {port} listens with a backlog of {backlog}"
        );
    }
}

/// A connection to the peer port whose other end went silent (its host
/// died or was cut off, so no FIN ever comes) is closed by the node after
/// its HTTP/2 pings go unanswered. Until session 13 the peer port sent no
/// pings and kept such connections, and their stream handlers, for ever.
#[tokio::test]
async fn the_peer_port_closes_a_connection_whose_peer_went_silent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let mut silent = tokio::net::TcpStream::connect(&cluster.node(1).peer_addr)
        .await
        .expect("connect");
    // The HTTP/2 preface and an empty SETTINGS frame; then nothing, ever:
    // no SETTINGS acknowledgement, no PING answered.
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let began = std::time::Instant::now();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buffer = [0u8; 4096];
        loop {
            match silent.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection is still open after {:?}",
        began.elapsed()
    );
}
