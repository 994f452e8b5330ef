//! TLS termination over real sockets: certificates chosen by SNI, the default certificate for unknown
//! names, ALPN h2, and the plain listener's redirect to HTTPS.

mod common;

use std::net::SocketAddr;

use common::*;

fn tls_config(dir: &TestDir, ports: &Ports, ca: &TestCa) -> String {
    let (a_cert, a_key) = ca.issue(&["a.test"], dir.dir.path(), "a");
    let (b_cert, b_key) = ca.issue(&["b.test", "*.b.test"], dir.dir.path(), "b");
    let (d_cert, d_key) = ca.issue(&["default.test"], dir.dir.path(), "default");
    format!(
        r#"{server}
listeners:
  - name: http
    address: "127.0.0.1:{http}"
    redirect_https: {{ port: {https} }}
  - name: https
    address: "127.0.0.1:{https}"
    tls:
      certificates:
        - {{ cert: {a_cert}, key: {a_key}, server_names: [a.test] }}
        - {{ cert: {b_cert}, key: {b_key}, server_names: [b.test, "*.b.test"] }}
        - {{ cert: {d_cert}, key: {d_key}, default: true }}
routes:
  - name: hello
    respond: {{ status: 200, body: hello }}
"#,
        server = dir.server_section(ports, ""),
        http = ports.http,
        https = ports.https,
        a_cert = a_cert.display(),
        a_key = a_key.display(),
        b_cert = b_cert.display(),
        b_key = b_key.display(),
        d_cert = d_cert.display(),
        d_key = d_key.display(),
    )
}

#[tokio::test]
async fn each_sni_name_gets_its_certificate_and_h2_is_negotiated() {
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("test ca"));
    let _gateway = Gateway::start(&dir, ports, &tls_config(&dir, &ports, &ca)).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", ports.https).parse().unwrap();
    let names = [
        ("a.test", addr),
        ("b.test", addr),
        ("www.b.test", addr),
        ("default.test", addr),
        ("other.test", addr),
    ];
    let client = tls_client(&ca.pem(), &names, false);
    // The client verifies the chain against the test CA and the name: success proves the right certificate.
    for name in ["a.test", "b.test", "www.b.test", "default.test"] {
        let response = client
            .get(format!("https://{name}:{}/", ports.https))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{name}");
        assert_eq!(response.text().await.unwrap(), "hello");
    }
    // An unknown name gets the default certificate, which does not cover it: verification fails.
    let error = client
        .get(format!("https://other.test:{}/", ports.https))
        .send()
        .await
        .unwrap_err();
    let chain = format!("{error:?}");
    assert!(
        chain.contains("NotValidForName") || chain.contains("certificate"),
        "{chain}"
    );

    let http1 = tls_client(&ca.pem(), &names, true);
    let response = http1
        .get(format!("https://a.test:{}/", ports.https))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn unknown_or_absent_sni_is_served_the_default_certificate() {
    use rustls::client::danger::ServerCertVerifier;
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("test ca"));
    let _gateway = Gateway::start(&dir, ports, &tls_config(&dir, &ports, &ca)).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider,
    )
    .build()
    .unwrap();
    // Send one SNI (or none), then verify the presented chain for the name we expect it to cover.
    let cases = [
        (Some("unknown.test"), "default.test"),
        (None, "default.test"),
        (Some("a.test"), "a.test"),
        (Some("x.b.test"), "b.test"),
    ];
    for (sni, covers) in cases {
        let chain = presented_chain(sni, ports.https);
        let (leaf, intermediates) = chain.split_first().unwrap();
        let name = rustls_pki_types::ServerName::try_from(covers).unwrap();
        verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| {
                panic!("SNI {sni:?} should be served the {covers} certificate: {e}")
            });
    }
}

/// Handshake sending `sni` (or no SNI) without verifying, and return the chain the server presented.
fn presented_chain(sni: Option<&str>, port: u16) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    #[derive(Debug)]
    struct AcceptAny(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let name =
        rustls_pki_types::ServerName::try_from(sni.unwrap_or("absent.test").to_string()).unwrap();
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).unwrap();
    }
    connection.peer_certificates().unwrap().to_vec()
}

#[tokio::test]
async fn plain_listener_redirects_to_https() {
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("test ca"));
    let gateway = Gateway::start(&dir, ports, &tls_config(&dir, &ports, &ca)).await;
    let client = no_redirect_client();
    let response = client
        .post(gateway.url("/pay?x=1"))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://a.test:{}/pay?x=1", ports.https).as_str()
    );
}

#[tokio::test]
async fn a_missing_certificate_is_generated_with_a_subject_that_says_what_it_is() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let (cert, key) = (dir.path("certs/dev.crt"), dir.path("certs/dev.key"));
    let yaml = format!(
        r#"{server}
listeners:
  - name: https
    address: "127.0.0.1:{https}"
    tls:
      certificates:
        - {{ cert: {cert}, key: {key}, default: true, self_signed_if_missing: true }}
routes:
  - name: hello
    respond: {{ status: 200, body: hello }}
"#,
        server = dir.server_section(&ports, ""),
        https = ports.https,
        cert = cert.display(),
        key = key.display(),
    );
    let _gateway = Gateway::start(&dir, ports, &yaml).await;
    // What the listener presents, as an operator would look at it.
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject",
            ports.https
        ))
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&output.stdout);
    assert!(
        subject.contains("gateway development certificate (self-signed, localhost)")
            && subject.contains("O = gateway"),
        "{subject}"
    );
    assert!(!subject.contains("rcgen"), "{subject}");
}

/// One TLS handshake by `openssl s_client` (which sends a request so that TLS 1.3 tickets arrive before it
/// quits), saving the session to `session` or resuming it: its report.
fn s_client(port: u16, version: &str, session: &std::path::Path, resume: bool) -> String {
    let session_arg = if resume { "-sess_in" } else { "-sess_out" };
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: a.test\\r\\nConnection: close\\r\\n\\r\\n' | \
             openssl s_client -connect 127.0.0.1:{port} -servername a.test {version} -ign_eof \
             {session_arg} {} 2>&1",
            session.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn sessions_resume_from_stateless_tickets_on_every_thread_unless_tickets_are_off() {
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("test ca"));
    let (cert, key) = ca.issue(&["a.test"], dir.dir.path(), "a");
    let tickets_off = free_port();
    let yaml = format!(
        r#"
server:
  threads: 2
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {pid}
  upgrade_sock: {sock}
  access_log: {{ target: off }}
admin:
  address: 127.0.0.1:{admin}
listeners:
  - name: tickets
    address: "127.0.0.1:{https}"
    tls:
      certificates: [{{ cert: {cert}, key: {key} }}]
  - name: no-tickets
    address: "127.0.0.1:{tickets_off}"
    tls:
      certificates: [{{ cert: {cert}, key: {key} }}]
      session_tickets: false
routes:
  - name: hello
    respond: {{ status: 200, body: hello }}
"#,
        pid = dir.path("gateway.pid").display(),
        sock = dir.path("upgrade.sock").display(),
        admin = ports.admin,
        https = ports.https,
        cert = cert.display(),
        key = key.display(),
    );
    let _gateway = Gateway::start(&dir, ports, &yaml).await;
    let session = dir.path("session.pem");
    for (version, reused) in [
        ("-tls1_2", "Reused, TLSv1.2"),
        ("-tls1_3", "Reused, TLSv1.3"),
    ] {
        let first = s_client(ports.https, version, &session, false);
        assert!(first.contains("New, TLSv1."), "{version}: {first}");
        assert!(first.contains("hello"), "{version}: {first}");
        // The server issued a ticket (TLS 1.2 reports its lifetime hint; 1.3 always sends tickets).
        assert!(
            first.contains("TLS session ticket lifetime hint"),
            "{version}: no ticket: {first}"
        );
        // The server keeps no session cache, so each resumption is by the ticket alone; six handshakes
        // land on both threads.
        for round in 0..6 {
            let again = s_client(ports.https, version, &session, true);
            assert!(again.contains(reused), "{version} round {round}: {again}");
        }
    }
    // Tickets off: TLS 1.2 gets no ticket and resumes by session id from the listener's cache.
    let first = s_client(tickets_off, "-tls1_2", &session, false);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    assert!(
        !first.contains("TLS session ticket lifetime hint"),
        "{first}"
    );
    let again = s_client(tickets_off, "-tls1_2", &session, true);
    assert!(again.contains("Reused, TLSv1.2"), "{again}");
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_at_the_header_timeout_and_a_bad_one_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("test ca"));
    let yaml = tls_config(&dir, &ports, &ca).replace(
        "  access_log:",
        "  client_header_timeout: 1s\n  access_log:",
    );
    let gateway = Gateway::start(&dir, ports, &yaml).await;
    // Until the connection ends: how long it took (the gateway sends nothing before a ClientHello).
    async fn until_closed(mut stream: tokio::net::TcpStream) -> std::time::Duration {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("the connection stayed open for 10 s"),
            }
        }
    }
    // Silent after connecting, and stalled inside a ClientHello.
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    let mut partial = tokio::net::TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let (a, b) = tokio::join!(until_closed(silent), until_closed(partial));
    for took in [a, b] {
        assert!(
            took >= std::time::Duration::from_millis(800)
                && took < std::time::Duration::from_millis(2500),
            "{took:?}"
        );
    }
    // Not TLS at all: closed at once.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(plain).await < std::time::Duration::from_millis(500));

    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    let closed = |reason: &str| {
        metric_value(
            &metrics,
            &format!("gateway_client_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed("tls_handshake_timeout"), 2.0, "{metrics}");
    assert_eq!(closed("tls_handshake_failed"), 1.0, "{metrics}");
}

#[tokio::test]
async fn a_client_over_its_connection_cap_is_closed_before_any_handshake() {
    use tokio::io::AsyncReadExt;
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("test ca"));
    let yaml = tls_config(&dir, &ports, &ca).replace(
        "  access_log:",
        "  max_connections_per_ip: 1\n  access_log:",
    );
    let gateway = Gateway::start(&dir, ports, &yaml).await;
    // The first connection holds the address's one slot, even before its handshake.
    let _held = tokio::net::TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The second is closed at once: no ServerHello, nothing to wait for.
    let mut over = tokio::net::TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), over.read(&mut buf))
        .await
        .expect("the connection over the cap stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_client_connections_closed_total{reason="too_many_connections"}"#
        ),
        1.0,
        "{metrics}"
    );
}
