//! `baton dev`: a local three-node cluster of child `baton serve` processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Client and peer addresses of local node `id` (1-based).
pub fn local_addrs(base_port: u16, id: u16) -> (String, String) {
    (
        format!("127.0.0.1:{}", base_port + id - 1),
        format!("127.0.0.1:{}", base_port + 100 + id - 1),
    )
}

fn spawn_node(exe: &Path, data_dir: &Path, base_port: u16, id: u16) -> std::io::Result<Child> {
    let (listen, peer_listen) = local_addrs(base_port, id);
    let peers: Vec<String> = (1..=3)
        .map(|n| format!("{n}={}", local_addrs(base_port, n).1))
        .collect();
    let mut command = Command::new(exe);
    // SAFETY: prctl(2) is async-signal-safe; the child dies with this process
    // even if it is killed without a chance to stop its nodes.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
        .arg("serve")
        .args(["--id", &id.to_string()])
        .args(["--listen", &listen])
        .args(["--peer-listen", &peer_listen])
        .args(["--peers", &peers.join(",")])
        .arg("--data-dir")
        .arg(data_dir.join(format!("node{id}")))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// Starts three nodes, prints their client endpoints and stops them all on
/// Ctrl-C (or when one of them exits).
pub async fn run(data_dir: PathBuf, base_port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(&data_dir)?;
    let mut children = Vec::new();
    for id in 1..=3 {
        children.push(spawn_node(&exe, &data_dir, base_port, id)?);
    }
    let endpoints: Vec<String> = (1..=3).map(|id| local_addrs(base_port, id).0).collect();
    println!("baton dev cluster: 3 nodes, data in {}", data_dir.display());
    println!("client endpoints: {}", endpoints.join(","));
    println!(
        "try: baton --endpoints {} cluster status",
        endpoints.join(",")
    );
    println!("press Ctrl-C to stop");
    let first_exit = async {
        let (a, rest) = children.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        tokio::select! {
            status = a[0].wait() => status,
            status = b[0].wait() => status,
            status = c[0].wait() => status,
        }
    };
    let failed = tokio::select! {
        _ = crate::cli::termination() => {
            println!("stopping");
            None
        }
        status = first_exit => {
            println!("a node exited ({status:?}); stopping the others");
            Some(format!("a node exited by itself ({status:?}); see its output above"))
        }
    };
    for child in &mut children {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal number.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await;
        let _ = child.start_kill();
    }
    match failed {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}
