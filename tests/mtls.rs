//! mTLS over real sockets: a listener requiring client certificates refuses clients without one or with one
//! from another CA; a good certificate is mapped to its consumer, which the upstream sees.

mod common;

use std::net::SocketAddr;

use common::*;
use loadtest::MockOrigin;

#[tokio::test]
async fn client_certificates_are_required_verified_and_mapped_to_consumers() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let (server_ca, client_ca, other_ca) = (
        TestCa::new("server ca"),
        TestCa::new("client ca"),
        TestCa::new("other ca"),
    );
    let (cert, key) = server_ca.issue(&["api.test"], dir.dir.path(), "server");
    let client_ca_path = dir.path("client-ca.pem");
    std::fs::write(&client_ca_path, client_ca.pem()).unwrap();
    let good = client_ca.issue_client(&["billing.internal"], dir.dir.path(), "good");
    let stranger = client_ca.issue_client(&["stranger.internal"], dir.dir.path(), "stranger");
    let foreign = other_ca.issue_client(&["billing.internal"], dir.dir.path(), "foreign");
    let config = format!(
        r#"{server}
listeners:
  - name: https
    address: "127.0.0.1:{https}"
    tls:
      certificates: [{{ cert: {cert}, key: {key} }}]
      client_auth: {{ ca_file: {client_ca}, required: true }}
consumers:
  - name: billing
    mtls_identities: [billing.internal]
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
routes:
  - name: api
    auth: {{ methods: [mtls] }}
    proxy: {{ cluster: origin }}
"#,
        server = dir.server_section(&ports, ""),
        https = ports.https,
        cert = cert.display(),
        key = key.display(),
        client_ca = client_ca_path.display(),
        origin = origin.addr,
    );
    let _gateway = Gateway::start(&dir, ports, &config).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", ports.https).parse().unwrap();
    let url = format!("https://api.test:{}/", ports.https);
    let names = [("api.test", addr)];
    let client_with = |identity: Option<(&std::path::Path, &std::path::Path)>| {
        tls_client_with_identity(&server_ca.pem(), &names, true, identity)
    };

    let response = client_with(Some((&good.0, &good.1)))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        origin.requests().pop().unwrap().header("x-consumer-id"),
        Some("billing")
    );

    assert!(
        client_with(None).get(&url).send().await.is_err(),
        "no client certificate: handshake refused"
    );
    assert!(
        client_with(Some((&foreign.0, &foreign.1)))
            .get(&url)
            .send()
            .await
            .is_err(),
        "another CA: handshake refused"
    );

    // Verified, but no consumer has this identity.
    let response = client_with(Some((&stranger.0, &stranger.1)))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unknown_client_certificate");
    assert_eq!(origin.request_count(), 1);
}

#[tokio::test]
async fn optional_client_certificates_let_other_credentials_in() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let (server_ca, client_ca) = (TestCa::new("server ca"), TestCa::new("client ca"));
    let (cert, key) = server_ca.issue(&["api.test"], dir.dir.path(), "server");
    let client_ca_path = dir.path("client-ca.pem");
    std::fs::write(&client_ca_path, client_ca.pem()).unwrap();
    let good = client_ca.issue_client(&["billing.internal"], dir.dir.path(), "good");
    let config = format!(
        r#"{server}
listeners:
  - name: https
    address: "127.0.0.1:{https}"
    tls:
      certificates: [{{ cert: {cert}, key: {key} }}]
      client_auth: {{ ca_file: {client_ca}, required: false }}
consumers:
  - {{ name: billing, mtls_identities: [billing.internal] }}
  - {{ name: script, api_keys: [{{ sha256: "{hash}" }}] }}
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
routes:
  - name: api
    auth: {{ methods: [mtls, api_key] }}
    proxy: {{ cluster: origin }}
"#,
        server = dir.server_section(&ports, ""),
        https = ports.https,
        cert = cert.display(),
        key = key.display(),
        client_ca = client_ca_path.display(),
        hash = hash_key("script-key-0123456789"),
        origin = origin.addr,
    );
    let _gateway = Gateway::start(&dir, ports, &config).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", ports.https).parse().unwrap();
    let url = format!("https://api.test:{}/", ports.https);
    let names = [("api.test", addr)];
    let with_cert =
        tls_client_with_identity(&server_ca.pem(), &names, true, Some((&good.0, &good.1)));
    let without = tls_client_with_identity(&server_ca.pem(), &names, true, None);
    // The handshake succeeds without a certificate; the route then wants some credential.
    assert_eq!(without.get(&url).send().await.unwrap().status(), 401);
    let response = without
        .get(&url)
        .header("x-api-key", "script-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        origin.requests().pop().unwrap().header("x-consumer-id"),
        Some("script")
    );
    assert_eq!(with_cert.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        origin.requests().pop().unwrap().header("x-consumer-id"),
        Some("billing")
    );
}
