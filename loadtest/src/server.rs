//! The accept loop and command-line parsing shared by the mock servers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A server started by `serve`.
pub(crate) struct Served {
    /// The bound address.
    pub addr: SocketAddr,
    /// The switch that stops it.
    pub stop: watch::Sender<bool>,
    /// TCP connections accepted so far (a client's connection pooling shows here).
    pub connections: Arc<AtomicUsize>,
}

/// Bind `addr` and serve it with `handle` in the background.
pub(crate) async fn serve<F, Fut, B>(addr: SocketAddr, handle: F) -> std::io::Result<Served>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn(accept_loop(listener, stopped, connections.clone(), handle));
    Ok(Served {
        addr,
        stop,
        connections,
    })
}

/// The path that answers, on every mock server, the number of TCP connections it accepted so far (plain
/// text): the benchmark reads it around each run to see whether a proxy reuses its upstream connections.
pub const CONNECTIONS_PATH: &str = "/_mock/connections";

/// Serve HTTP/1.1 and h2c connections with `handle` until `stopped` changes; stopping drops every connection.
async fn accept_loop<F, Fut, B>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    accepted_count: Arc<AtomicUsize>,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                accepted_count.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let accepted_count = accepted_count.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handle = handle.clone();
                        let accepted = accepted_count.load(Ordering::Relaxed);
                        async move {
                            if req.uri().path() == CONNECTIONS_PATH {
                                let count = Full::new(Bytes::from(format!("{accepted}\n")));
                                return Ok::<_, Infallible>(Response::new(Either::Right(count)));
                            }
                            handle(req).await.map(|response| response.map(Either::Left))
                        }
                    });
                    let _ = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// `--listen ADDR --name NAME` plus the program's own `--FLAG VALUE` options (`extra`), with defaults;
/// exits with a usage line on anything else. Returns the address, the name and the extra options given.
pub fn listen_args(
    program: &str,
    default_listen: &str,
    default_name: &str,
    extra: &[&str],
) -> (SocketAddr, String, Vec<(String, String)>) {
    let mut listen = default_listen.to_string();
    let mut name = default_name.to_string();
    let mut given = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(value)) => listen = value,
            ("--name", Some(value)) => name = value,
            (flag, Some(value)) if extra.contains(&flag) => given.push((flag.to_string(), value)),
            _ => {
                let options: String = extra.iter().map(|f| format!(" [{f} VALUE]")).collect();
                eprintln!(
                    "usage: {program} [--listen {default_listen}] [--name {default_name}]{options}"
                );
                std::process::exit(2);
            }
        }
    }
    match listen.parse() {
        Ok(addr) => (addr, name, given),
        Err(e) => {
            eprintln!("{program}: `{listen}` is not an address: {e}");
            std::process::exit(2);
        }
    }
}
