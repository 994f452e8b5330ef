//! The benchmark's floor: a bare Pingora 0.9 proxy with nothing of the gateway in it.
//!
//! `bare-pingora --listen ADDR --upstream ADDR [--threads N] [--no-work-stealing] [--tls CERT KEY]` forwards every request
//! to one plain-HTTP upstream over a keep-alive pool, exactly what Pingora's own example proxy does.
//! Built as an example of the gateway package (it shares its Pingora build); `loadtest/bench.sh`
//! measures it beside the gateway so the cost of the gateway's features is a ratio to this floor.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The gateway's allocator, so the floor differs from the gateway only in the gateway's features.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

struct Args {
    listen: String,
    upstream: String,
    threads: usize,
    tls: Option<(String, String)>,
    work_stealing: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:19400".into(),
        upstream: "127.0.0.1:19000".into(),
        threads: 1,
        tls: None,
        work_stealing: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--upstream" => args.upstream = value()?,
            "--threads" => {
                args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?
            }
            "--tls" => {
                let cert = value()?;
                let key = it.next().ok_or("--tls needs CERT and KEY")?;
                args.tls = Some((cert, key));
            }
            "--no-work-stealing" => args.work_stealing = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bare-pingora: {e}\nusage: bare-pingora --listen ADDR --upstream ADDR [--threads N] [--no-work-stealing] [--tls CERT KEY]");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
    );
    match &args.tls {
        Some((cert, key)) => service
            .add_tls(&args.listen, cert, key)
            .expect("TLS certificate and key load"),
        None => service.add_tcp(&args.listen),
    }
    server.add_service(service);
    server.run_forever();
}
