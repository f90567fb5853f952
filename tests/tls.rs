//! Issue 11 (TLS): a cluster whose client port talks TLS and whose peer port
//! demands mutual TLS. Certificates are made here with rcgen. A client that
//! trusts the CA works end to end (library and CLI); a plaintext client does
//! not; a "peer" without a certificate from the cluster's CA cannot reach
//! the Raft service.

mod common;

use std::path::Path;
use std::time::Duration;

use baton::proto::baton::v1::raft_service_client::RaftServiceClient;
use baton::proto::baton::v1::NodeInfoRequest;
use baton_client::Client;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate authority and what it signed.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    /// A certificate for 127.0.0.1 / localhost: (cert PEM, key PEM).
    fn issue(&self) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

/// Calls NodeInfo on `peer_addr` with `tls`; true if it answered.
async fn peer_answers(peer_addr: &str, tls: Option<ClientTlsConfig>) -> bool {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{peer_addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("tls");
    }
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut peer = RaftServiceClient::new(channel);
    let call = peer.node_info(NodeInfoRequest {});
    matches!(
        tokio::time::timeout(Duration::from_secs(2), call).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_work_and_only_cluster_members_reach_the_peer_port() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("baton test cluster CA");
    let (cert, key) = ca.issue();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let cert_file = write(dir.path(), "node.pem", &cert);
    let key_file = write(dir.path(), "node.key", &key);
    let args = [
        "--tls-cert",
        cert_file.as_str(),
        "--tls-key",
        key_file.as_str(),
        "--peer-tls-cert",
        cert_file.as_str(),
        "--peer-tls-key",
        key_file.as_str(),
        "--peer-tls-ca",
        ca_file.as_str(),
    ];
    // Forming at all proves the peers accept each other over mutual TLS.
    let cluster = Cluster::start_tls(&args, ca.pem().into_bytes()).await;
    let leader = cluster.wait_for_leader().await;

    // The library over TLS, end to end: a session, a write, a watch.
    let client = Client::builder(&cluster.endpoints())
        .tls_ca_pem(ca.pem())
        .client_id("tls-client")
        .connect()
        .await
        .expect("connect over TLS");
    let leadership = client
        .election("tls")
        .campaign()
        .await
        .expect("campaign over TLS");
    assert!(leadership.is_leader());
    let mut views = client.election("tls").observe();
    let first = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut views))
        .await
        .expect("a view")
        .expect("open")
        .expect("ok");
    assert_eq!(first.leader.as_deref(), Some("tls-client"));

    // The CLI over TLS.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(["--tls-ca", &ca_file])
        .args(["--json", "election", "term", "tls"])
        .output()
        .expect("baton election term");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("tls-client"));

    // Readiness is probed over plain HTTP on the metrics port, which a
    // Kubernetes probe can reach whatever the client port speaks.
    for id in 1..=3 {
        eventually(Duration::from_secs(10), "every node ready", || async {
            (cluster.readiness(id).await == Some(200)).then_some(())
        })
        .await;
    }

    // A plaintext client gets nowhere.
    let plaintext = Client::builder(&cluster.endpoints())
        .call_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(plaintext.is_err(), "plaintext reached a TLS port");

    // The peer port: only certificates from the cluster's CA.
    let peer_addr = cluster.node(leader).peer_addr.clone();
    let trust_cluster = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    assert!(
        peer_answers(
            &peer_addr,
            Some(trust_cluster().identity(Identity::from_pem(&cert, &key)))
        )
        .await,
        "a member's certificate is accepted"
    );
    assert!(
        !peer_answers(&peer_addr, None).await,
        "plaintext peer refused"
    );
    assert!(
        !peer_answers(&peer_addr, Some(trust_cluster())).await,
        "a peer without a certificate is refused"
    );
    let rogue = Ca::new("someone else");
    let (rogue_cert, rogue_key) = rogue.issue();
    assert!(
        !peer_answers(
            &peer_addr,
            Some(trust_cluster().identity(Identity::from_pem(rogue_cert, rogue_key)))
        )
        .await,
        "a certificate from another CA is refused"
    );
    leadership.resign().await.expect("resign");
    client.close().await.expect("close");
}
