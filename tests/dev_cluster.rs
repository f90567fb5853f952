//! `baton dev`, the README's first command: three local nodes that elect a
//! leader and stop with it, and a failure to start that says so in the
//! exit status.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A base port whose six ports `baton dev` uses (base..base+2 for clients,
/// base+100..base+102 for peers) are all free now: the listeners are held
/// until the caller lets go, so no two picks collide.
fn dev_ports() -> (u16, Vec<TcpListener>) {
    for _ in 0..100 {
        let base = 20_000 + rand::random::<u16>() % 20_000;
        let held: Vec<TcpListener> = [0, 1, 2, 100, 101, 102]
            .iter()
            .filter_map(|offset| TcpListener::bind(("127.0.0.1", base + offset)).ok())
            .collect();
        if held.len() == 6 {
            return (base, held);
        }
    }
    panic!("no six free ports for baton dev");
}

fn dev(base: u16, data_dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("dev")
        .args(["--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn baton dev")
}

fn status_of(base: u16) -> std::process::Output {
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--endpoints", &endpoints.join(",")])
        .args(["cluster", "status"])
        .output()
        .expect("baton cluster status")
}

#[tokio::test]
async fn baton_dev_starts_a_cluster_that_elects_a_leader_and_stops_on_ctrl_c() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, held) = dev_ports();
    drop(held);
    let mut cluster = dev(base, dir.path());
    eventually(Duration::from_secs(30), "a leader", || async {
        status_of(base).status.success().then_some(())
    })
    .await;
    // SAFETY: kill(2) on a child we spawned.
    unsafe {
        libc::kill(cluster.id() as libc::pid_t, libc::SIGINT);
    }
    let exit = wait_exit(&mut cluster, Duration::from_secs(20)).expect("baton dev stops");
    assert!(exit.success(), "{exit:?}");
    assert!(
        !status_of(base).status.success(),
        "its nodes stopped with it"
    );
}

#[tokio::test]
async fn baton_dev_fails_when_a_node_cannot_start() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, mut held) = dev_ports();
    // Node 1's client port stays taken.
    let _taken = held.remove(0);
    drop(held);
    let mut cluster = dev(base, dir.path());
    let exit = wait_exit(&mut cluster, Duration::from_secs(20));
    let _ = cluster.kill();
    let exit = exit.expect("baton dev stops once a node fails");
    assert!(!exit.success(), "{exit:?}");
}
