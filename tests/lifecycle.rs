//! Lifecycle over real processes and sockets: `validate`, refusing to start on a bad file, SIGHUP reloads
//! (bad file rejected, good file applied with zero failed requests, certificates swapped), and graceful
//! SIGTERM letting an in-flight request finish.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use loadtest::MockOrigin;

/// One plain listener proxying everything to `origin`.
fn proxy_to(dir: &TestDir, ports: &Ports, origin: &MockOrigin) -> TestConfig {
    TestConfig::new(dir, ports)
        .cluster("web", &[&origin.addr.to_string()])
        .proxy_route("web", "/", "web")
}

#[test]
fn validate_names_the_yaml_path_of_a_typo_and_fails() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let good = dir.plain_config(
        &ports,
        "routes:\n  - name: ok\n    respond: { status: 200 }\n",
    );
    let path = dir.write_config(&good);
    let (ok, stderr) = gateway_cli(&["validate"], &path);
    assert!(ok, "{stderr}");

    let typo = good.replace("respond: { status: 200 }", "respnd: { status: 200 }")
        + "  - name: second\n    match: { path: { prefix: nope } }\n    respond: { status: 200 }\n";
    let path = dir.write_config(&typo);
    let (ok, stderr) = gateway_cli(&["validate"], &path);
    assert!(!ok);
    assert!(
        stderr.contains("routes[0].respnd: unknown field `respnd`"),
        "{stderr}"
    );
    // Semantic errors are not reported while the schema is broken, but schema errors are all listed.
    let (ok, stderr) = gateway_cli(&["run"], &path);
    assert!(!ok, "run must refuse a bad file");
    assert!(stderr.contains("routes[0].respnd"));

    let semantic = good
        + "  - name: second\n    match: { path: { prefix: nope } }\n    respond: { status: 200 }\n";
    let path = dir.write_config(&semantic);
    let (ok, stderr) = gateway_cli(&["validate"], &path);
    assert!(!ok);
    assert!(
        stderr.contains("routes[1].match.path: `nope` must start with `/`"),
        "{stderr}"
    );
}

#[test]
fn validate_lists_every_schema_error_even_several_in_one_item_and_refuses_ambiguous_durations() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let yaml = dir.plain_config(
        &ports,
        r#"
clusters:
  - name: app
    backends: [{ address: "127.0.0.1:9" }]
    connect_timeout: 2 s
    retries: lots
    read_timeout: 2sec
routes:
  - name: r
    match: { hots: [x], methods: GET }
    proxy: { cluster: app }
wrong_section: 1
"#,
    );
    let (ok, stderr) = gateway_cli(&["validate"], &dir.write_config(&yaml));
    assert!(!ok);
    for expected in [
        "clusters[0].connect_timeout: invalid duration `2 s`",
        "clusters[0].retries: invalid type",
        "clusters[0].read_timeout: invalid duration `2sec`",
        "routes[0].match.hots: unknown field `hots`",
        "routes[0].match.methods: invalid type",
        "wrong_section: unknown section; expected one of",
    ] {
        assert!(stderr.contains(expected), "{expected} not in:\n{stderr}");
    }
    assert!(stderr.contains("`ai`"), "{stderr}");
    // What is wrong in the schema is not echoed again as a broken reference.
    assert!(!stderr.contains("no cluster named"), "{stderr}");
}

#[tokio::test]
async fn sighup_with_a_broken_file_keeps_the_old_config() {
    let origin = MockOrigin::start("old").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &proxy_to(&dir, &ports, &origin).yaml()).await;
    let client = client();
    dir.write_config("listeners: [ this is : not valid");
    gateway.signal("HUP");
    let rejected = eventually(Duration::from_secs(5), || async {
        let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
        metric_value(
            &metrics,
            r#"gateway_config_reloads_total{result="rejected"}"#,
        ) == 1.0
    })
    .await;
    assert!(rejected, "{}", dir.gateway_log());
    assert!(dir.gateway_log().contains("reload rejected"));
    assert_eq!(get(&client, &gateway.url("/")).await.0, 200);
    assert_eq!(origin.request_count(), 1);
}

#[tokio::test]
async fn sighup_with_a_good_file_switches_routing_without_failed_requests() {
    let old = MockOrigin::start("old").await.unwrap();
    let new = MockOrigin::start("new").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &proxy_to(&dir, &ports, &old).yaml()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), gateway.url("/"));
        workers.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    dir.write_config(&proxy_to(&dir, &ports, &new).yaml());
    gateway.signal("HUP");
    let switched = eventually(Duration::from_secs(5), || async {
        new.request_count() > 20
    })
    .await;
    let old_count = old.request_count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(switched, "{}", dir.gateway_log());
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "ok: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(old_count > 0);
    assert_eq!(
        old.request_count(),
        old_count,
        "no request reaches the old cluster after the switch"
    );
}

#[tokio::test]
async fn sighup_swaps_certificates() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let (first_ca, second_ca) = (TestCa::new("first"), TestCa::new("second"));
    let (cert, key) = first_ca.issue(&["a.test"], dir.dir.path(), "a");
    let config = format!(
        "{}\nlisteners:\n  - name: https\n    address: \"127.0.0.1:{}\"\n    tls: {{ certificates: [{{ cert: {}, key: {} }}] }}\nroutes:\n  - name: hi\n    respond: {{ status: 200, body: hi }}\n",
        dir.server_section(&ports, ""),
        ports.https,
        cert.display(),
        key.display()
    );
    let _gateway = Gateway::start(&dir, ports, &config).await;
    let addr = format!("127.0.0.1:{}", ports.https).parse().unwrap();
    let url = format!("https://a.test:{}/", ports.https);
    let trusts_first = tls_client(&first_ca.pem(), &[("a.test", addr)], true);
    let trusts_second = tls_client(&second_ca.pem(), &[("a.test", addr)], true);
    assert_eq!(trusts_first.get(&url).send().await.unwrap().status(), 200);
    assert!(trusts_second.get(&url).send().await.is_err());

    second_ca.issue(&["a.test"], dir.dir.path(), "a");
    _gateway.signal("HUP");
    let swapped = eventually(Duration::from_secs(5), || async {
        let fresh = tls_client(&second_ca.pem(), &[("a.test", addr)], true);
        fresh.get(&url).send().await.is_ok()
    })
    .await;
    assert!(swapped, "{}", dir.gateway_log());
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let origin = MockOrigin::start("slow").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let config = proxy_to(&dir, &ports, &origin)
        .server("grace_period", "3s")
        .yaml();
    let mut gateway = Gateway::start(&dir, ports, &config).await;
    let slow = tokio::spawn({
        let url = gateway.url("/?delay_ms=1000");
        async move { client().get(&url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request completes"
    );
    let exited = eventually(Duration::from_secs(10), || {
        let done = matches!(gateway.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "gateway exits after the grace period");
}

#[test]
fn shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("conf/gateway.yaml")];
    for entry in std::fs::read_dir(root.join("conf/examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in files {
        let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["validate", "-c"])
            .arg(&file)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn upgrade_hands_the_listeners_to_a_new_process_without_failed_requests() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let mut old = Gateway::start(&dir, ports, &proxy_to(&dir, &ports, &origin).yaml()).await;
    let pid_file = dir.path("gateway.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old.child.id().to_string()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = tokio::spawn({
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), old.url("/"));
        async move {
            while !stop.load(Ordering::Relaxed) {
                // A new connection per request: each one is accepted by whichever process owns the socket.
                let client = client();
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });

    let log = std::fs::File::create(dir.path("new.log")).unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--upgrade", "-c"])
        .arg(dir.path("gateway.yaml"))
        .current_dir(dir.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The new process waits on the upgrade socket; then the old one is told to hand over.
    let waiting = eventually(Duration::from_secs(10), || async {
        dir.path("upgrade.sock").exists()
    })
    .await;
    assert!(
        waiting,
        "{}",
        std::fs::read_to_string(dir.path("new.log")).unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    old.signal("QUIT");
    let old_exited = eventually(Duration::from_secs(15), || {
        let done = matches!(old.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    let new_pid_written = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == new.id().to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    worker.await.unwrap();
    let served_by_new = get(&client(), &old.url("/")).await.0;
    let _ = new.kill();
    let _ = new.wait();
    assert!(old_exited, "old process did not exit");
    assert!(new_pid_written, "new process did not write its pid");
    assert_eq!(served_by_new, 200);
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "ok: {}",
        ok.load(Ordering::Relaxed)
    );
}

/// Run `gateway upgrade -c FILE`; (success, what it printed). Its output and the new process's (which
/// inherits it, as it would a terminal) go to `new.log`.
async fn upgrade_command(dir: &TestDir) -> (bool, String) {
    let log = std::fs::File::create(dir.path("new.log")).unwrap();
    let config = dir.path("gateway.yaml");
    let cwd = dir.dir.path().to_path_buf();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["upgrade", "-c"])
            .arg(config)
            .current_dir(cwd)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    (
        status.success(),
        std::fs::read_to_string(dir.path("new.log")).unwrap_or_default(),
    )
}

#[tokio::test]
async fn gateway_upgrade_refuses_a_broken_file_and_hands_over_on_a_good_one() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let good = proxy_to(&dir, &ports, &origin).yaml();
    let old = Gateway::start(&dir, ports, &good).await;
    let old_pid = old.child.id().to_string();

    // A broken file: nothing is started or signalled, the old process keeps serving.
    dir.write_config(&good.replace("routes:", "routez:"));
    let (ok, printed) = upgrade_command(&dir).await;
    assert!(!ok);
    assert!(printed.contains("nothing was changed"), "{printed}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&client(), &old.url("/")).await.0, 200);
    assert_eq!(
        std::fs::read_to_string(dir.path("gateway.pid"))
            .unwrap()
            .trim(),
        old_pid
    );

    // A good file under load: a new connection per request, none fails.
    dir.write_config(&good);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = tokio::spawn({
        let (stop, served, failed, url) =
            (stop.clone(), served.clone(), failed.clone(), old.url("/"));
        async move {
            while !stop.load(Ordering::Relaxed) {
                match client().get(&url).send().await {
                    Ok(r) if r.status() == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    let (ok, printed) = upgrade_command(&dir).await;
    stop.store(true, Ordering::Relaxed);
    worker.await.unwrap();
    assert!(ok, "{printed}");
    assert!(printed.contains("upgraded: pid"), "{printed}");
    let new_pid: u32 = std::fs::read_to_string(dir.path("gateway.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid.to_string(), old_pid);
    assert_eq!(get(&client(), &old.url("/")).await.0, 200);
    let _ = Command::new("kill").arg(new_pid.to_string()).status();
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

/// Clients that count every request that fails while the gateway upgrades or drains: HTTP/1.1 keep-alive
/// clients on raw sockets (a connection is reused until an answer says `Connection: close`; nothing is
/// retried, so an EOF or reset on a reused connection counts), h2c clients multiplexing on one connection,
/// and clients opening a new connection per request.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One request on a keep-alive connection: (status, the answer closes the connection).
async fn keepalive_request(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> std::io::Result<(u16, bool)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    conn.get_mut()
        .write_all(b"GET /?n=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await?;
    let (mut status, mut length, mut close) = (0u16, None, false);
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a whole answer head",
            ));
        }
        let lower = line.trim_end().to_ascii_lowercase();
        if lower.is_empty() {
            break;
        }
        if let Some(code) = lower.strip_prefix("http/1.1 ") {
            status = code[..3].parse().unwrap_or(0);
        } else if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse::<usize>().ok();
        } else if lower == "connection: close" {
            close = true;
        }
    }
    let length = length.ok_or_else(|| std::io::Error::other("answer without Content-Length"))?;
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok((status, close))
}

impl Load {
    fn start(port: u16, keepalive: usize, h2: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let note = |failures: &Arc<std::sync::Mutex<Vec<String>>>, what: String| {
            failures.lock().unwrap().push(what);
        };
        for _ in 0..keepalive {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = None;
                let mut served_on_conn = 0;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            Ok(stream) => conn = Some(tokio::io::BufReader::new(stream)),
                            Err(e) => {
                                note(&failures, format!("keep-alive connect: {e}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                        served_on_conn = 0;
                    }
                    let stream = conn.as_mut().expect("connected above");
                    match keepalive_request(stream).await {
                        Ok((200, close)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            served_on_conn += 1;
                            if close {
                                conn = None;
                            }
                        }
                        Ok((status, _)) => {
                            note(&failures, format!("keep-alive: status {status}"));
                            conn = None;
                        }
                        Err(e) => {
                            note(
                                &failures,
                                format!("keep-alive after {served_on_conn} answers on the connection: {e}"),
                            );
                            conn = None;
                        }
                    }
                }
            }));
        }
        for _ in 0..h2 {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let h2 = reqwest::Client::builder()
                    .no_proxy()
                    .http2_prior_knowledge()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let url = format!("http://127.0.0.1:{port}/?n=2");
                while !stop.load(Ordering::Relaxed) {
                    match h2.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => note(&failures, format!("h2 body: {e:?}")),
                        },
                        Ok(r) => note(&failures, format!("h2: status {}", r.status())),
                        Err(e) => note(&failures, format!("h2: {e:?}")),
                    }
                }
            }));
        }
        for _ in 0..fresh {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let url = format!("http://127.0.0.1:{port}/?n=3");
                while !stop.load(Ordering::Relaxed) {
                    // A new connection per request: accepted by whichever process owns the socket.
                    match client().get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => note(&failures, format!("new connection: status {}", r.status())),
                        Err(e) => note(&failures, format!("new connection: {e:?}")),
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stop the clients: (requests served, what failed).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test]
async fn repeated_upgrades_lose_no_request_of_keepalive_h2_or_new_connection_clients() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let config = proxy_to(&dir, &ports, &origin).listener("h2c", true).yaml();
    let first = Gateway::start(&dir, ports, &config).await;
    let load = Load::start(ports.http, 4, 2, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pids = vec![first.child.id().to_string()];
    for round in 0..2 {
        let (ok, printed) = upgrade_command(&dir).await;
        assert!(ok, "upgrade {round}: {printed}");
        let pid = std::fs::read_to_string(dir.path("gateway.pid"))
            .unwrap()
            .trim()
            .to_string();
        assert!(!pids.contains(&pid), "upgrade {round}: pid {pid} again");
        pids.push(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (served, failures) = load.finish().await;
    let _ = Command::new("kill").arg(pids.last().unwrap()).status();
    drop(first);
    assert!(served > 100, "served {served}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}",
        failures.len(),
        served + failures.len()
    );
}

#[tokio::test]
async fn sigterm_drains_readiness_first_keepalive_politely_and_exits_when_done() {
    use tokio::io::BufReader;
    use tokio::net::TcpStream;
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let config = proxy_to(&dir, &ports, &origin)
        .server("grace_period", "30s")
        .server("shutdown_delay", "1s")
        .yaml();
    let mut gateway = Gateway::start(&dir, ports, &config).await;
    let connect =
        || async { BufReader::new(TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap()) };
    let (mut busy, mut idle) = (connect().await, connect().await);
    assert_eq!(keepalive_request(&mut busy).await.unwrap(), (200, false));
    assert_eq!(keepalive_request(&mut idle).await.unwrap(), (200, false));
    let slow = tokio::spawn({
        let url = gateway.url("/?delay_ms=1500");
        async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            client().get(&url).send().await.map(|r| r.status().as_u16())
        }
    });

    let signalled = std::time::Instant::now();
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Readiness goes first; the listeners still accept during `shutdown_delay`, and HTTP/1 answers close
    // their connections.
    assert_eq!(
        get(&client(), &gateway.admin_url("/readyz")).await,
        (503, "draining\n".to_string())
    );
    assert_eq!(get(&client(), &gateway.url("/")).await.0, 200);
    assert_eq!(keepalive_request(&mut busy).await.unwrap(), (200, true));

    // After the delay the listeners are closed; a keep-alive connection that sends within the idle drain
    // is still served (and told to close), and readiness still answers.
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(signalled.elapsed())).await;
    assert!(
        TcpStream::connect(("127.0.0.1", ports.http)).await.is_err(),
        "the listener still accepts after shutdown_delay"
    );
    assert_eq!(keepalive_request(&mut idle).await.unwrap(), (200, true));
    assert_eq!(get(&client(), &gateway.admin_url("/readyz")).await.0, 503);

    // The in-flight request finishes, and the process exits once nothing is open: long before the 30 s
    // grace period.
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let exited = eventually(Duration::from_secs(8), || {
        let done = matches!(gateway.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(
        exited,
        "still running {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "{:?}",
        signalled.elapsed()
    );
    assert!(
        dir.gateway_log()
            .contains("drained: no client connection left"),
        "{}",
        dir.gateway_log()
    );
    // Every request of the drain reached the access log before the early exit (flushed on the way out).
    let log = dir.access_log();
    assert!(log.lines().count() >= 6, "{log}");
    assert!(log.contains("delay_ms=1500"), "{log}");
}
