//! The chaos cluster's network: one network namespace per node, a full mesh
//! of veth links between nodes, and one veth link from the test (root
//! namespace) to each node. Each node owns one address (10.77.0.<id>) and
//! routes to every peer over that peer's own link, so cutting one link cuts
//! exactly one pair. Needs root.

use std::process::Command;

/// The test's own address, as nodes see it.
pub const CLIENT_ADDR: &str = "10.77.1.1";

/// The nodes' addresses.
const NODES_NET: &str = "10.77.0.0/24";

pub fn node_addr(id: u64) -> String {
    format!("10.77.0.{id}")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// Deletes namespaces left by an earlier run that was killed before it could
/// clean up (named `b<pid>n<id>` after a process that no longer exists).
fn remove_abandoned_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix('b') else {
            continue;
        };
        let Some((pid, node)) = rest.split_once('n') else {
            continue;
        };
        let ours = pid.parse::<u32>().is_ok() && node.parse::<u32>().is_ok();
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The namespaces and links of one run; removed on drop.
pub struct Topology {
    tag: String,
    nodes: Vec<u64>,
}

impl Topology {
    pub fn netns(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    fn mesh_link(&self, from: u64, to: u64) -> String {
        format!("{}x{from}{to}", self.tag)
    }

    fn client_link_root(&self, id: u64) -> String {
        format!("{}r{id}", self.tag)
    }

    fn client_link_node(&self, id: u64) -> String {
        format!("{}c{id}", self.tag)
    }

    /// Builds the namespaces for `nodes`. Panics (loudly) if not root.
    pub fn create(nodes: &[u64]) -> Topology {
        // SAFETY: geteuid(2) has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "THE CHAOS TEST NEEDS ROOT: it builds network namespaces (ip netns) to cut links. \
             Run it as root (CI does); it refuses to pass without its partitions."
        );
        remove_abandoned_namespaces();
        // The whole pid, so that the clean-up above recognizes exactly its
        // own runs: with pid_max at most 2^22 (7 digits) the longest name,
        // a mesh link `b<pid>x<from><to>`, stays within 15 bytes (IFNAMSIZ).
        let tag = format!("b{}", std::process::id());
        let topology = Topology {
            tag,
            nodes: nodes.to_vec(),
        };
        topology.teardown();
        must(&["addr", "replace", &format!("{CLIENT_ADDR}/32"), "dev", "lo"]);
        // A node whose link to the test is down must be silent, as across a
        // real partition. Without this route, its address fell to the
        // default route, and whatever answers there did: on one machine an
        // egress proxy answered every call HTTP 404 ("server: keryx"),
        // which clients read as UNIMPLEMENTED.
        must(&["route", "replace", "blackhole", NODES_NET]);
        for &id in nodes {
            let ns = topology.netns(id);
            must(&["netns", "add", &ns]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", node_addr(id)),
                "dev",
                "lo",
            ]);
            let (root, inner) = (topology.client_link_root(id), topology.client_link_node(id));
            must(&["link", "add", &root, "type", "veth", "peer", "name", &inner]);
            must(&["link", "set", &inner, "netns", &ns]);
        }
        for &a in nodes {
            for &b in nodes.iter().filter(|b| **b > a) {
                let (ab, ba) = (topology.mesh_link(a, b), topology.mesh_link(b, a));
                must(&["link", "add", &ab, "type", "veth", "peer", "name", &ba]);
                must(&["link", "set", &ab, "netns", &topology.netns(a)]);
                must(&["link", "set", &ba, "netns", &topology.netns(b)]);
            }
        }
        topology.heal_all();
        topology
    }

    fn link_up_with_route(&self, ns: Option<&str>, dev: &str, to: &str, src: &str) {
        let mut prefix: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            prefix.extend(["-n", ns]);
        }
        let run = |rest: &[&str]| {
            let mut args = prefix.clone();
            args.extend_from_slice(rest);
            must(&args);
        };
        run(&["link", "set", dev, "up"]);
        run(&[
            "route",
            "replace",
            &format!("{to}/32"),
            "dev",
            dev,
            "src",
            src,
        ]);
    }

    /// Every link up, every route in place.
    pub fn heal_all(&self) {
        for &id in &self.nodes {
            self.connect_client(id);
            for &peer in self.nodes.iter().filter(|p| **p != id) {
                self.connect_pair(id, peer);
            }
        }
    }

    /// Restores the link between two nodes (both directions).
    pub fn connect_pair(&self, a: u64, b: u64) {
        for (from, to) in [(a, b), (b, a)] {
            let ns = self.netns(from);
            self.link_up_with_route(
                Some(&ns),
                &self.mesh_link(from, to),
                &node_addr(to),
                &node_addr(from),
            );
        }
    }

    /// Cuts the link between two nodes.
    pub fn cut_pair(&self, a: u64, b: u64) {
        must(&[
            "-n",
            &self.netns(a),
            "link",
            "set",
            &self.mesh_link(a, b),
            "down",
        ]);
    }

    /// Restores the link between the test's clients and a node.
    pub fn connect_client(&self, id: u64) {
        let ns = self.netns(id);
        self.link_up_with_route(
            Some(&ns),
            &self.client_link_node(id),
            CLIENT_ADDR,
            &node_addr(id),
        );
        self.link_up_with_route(
            None,
            &self.client_link_root(id),
            &node_addr(id),
            CLIENT_ADDR,
        );
    }

    /// Cuts the test's clients off from a node.
    pub fn cut_client(&self, id: u64) {
        must(&["link", "set", &self.client_link_root(id), "down"]);
    }

    fn teardown(&self) {
        for &id in &self.nodes {
            let _ = ip(&["netns", "del", &self.netns(id)]);
            let _ = ip(&["link", "del", &self.client_link_root(id)]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
        let _ = ip(&["route", "del", "blackhole", NODES_NET]);
        let _ = ip(&["addr", "del", &format!("{CLIENT_ADDR}/32"), "dev", "lo"]);
    }
}
