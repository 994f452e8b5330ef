//! Build and run the Pingora server from a compiled config: one proxy service per listener (TLS with the
//! SNI resolver, or plain with optional h2c), the admin service, and the background services (upstream
//! upkeep, SIGHUP reload).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::prelude::Opt;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::sync::watch;

use crate::config;
use crate::config::compile::Mode;
use crate::edge::connection::{ClientLimits, ConnectionPolicy, Guarded, TlsHandshake};
use crate::edge::limits::Limiter;
use crate::edge::mtls::client_verifier;
use crate::edge::tls::{server_config, SniResolver};
use crate::lifecycle::{watch_phases, LimitSweeper, Reloader, Signals, Upkeep};
use crate::observe::access_log;
use crate::observe::admin::{AdminApp, AdminService};
use crate::proxy::EdgeProxy;

/// Bytes a client connection reads ahead of the parser (HAProxy's `tune.bufsize` default). Request heads are
/// read into Pingora's own buffer and bodies in bigger chunks straight from the socket, so this is small.
const CONNECTION_READ_BUFFER: usize = 16 * 1024;

/// The connection limits of the config in force (they change on reload).
struct LiveLimits(Arc<ArcSwap<crate::runtime::Runtime>>);

impl ConnectionPolicy for LiveLimits {
    fn limits(&self) -> ClientLimits {
        self.0.load().client
    }

    fn exempt(&self, ip: std::net::IpAddr) -> bool {
        self.0.load().trusted_proxies.contains(ip)
    }
}

/// Command-line switches of `gateway run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// Take the listening sockets over from a running gateway (Pingora's graceful upgrade).
    pub upgrade: bool,
    /// Detach and run in the background.
    pub daemon: bool,
}

fn write_pid_file(path: &str) {
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        log::warn!("cannot write the pid file {path}: {e}");
    }
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Load, compile and serve until shutdown. Returns only on a config or start-up error.
pub fn run(options: RunOptions) -> Result<(), String> {
    let compiled = config::build(&options.config_path, Mode::Run, None).map_err(|errors| {
        format!(
            "{}: invalid configuration:\n{errors}",
            options.config_path.display()
        )
    })?;
    let settings = compiled.settings;
    let settings_delay = settings.shutdown_delay;

    let server_conf = ServerConf {
        threads: settings.threads,
        work_stealing: settings.work_stealing,
        grace_period_seconds: Some(whole_seconds(settings.grace_period)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds(settings.graceful_shutdown_timeout)),
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        upstream_keepalive_pool_size: settings.upstream_keepalive_pool,
        daemon: options.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf);
    let phases = server.watch_execution_phase();
    // Daemonizing forks here: threads must start after it.
    server.bootstrap();
    if !options.daemon {
        // Pingora writes the pid file only when daemonized; NGINX users expect one either way.
        write_pid_file(&settings.pid_file);
    }
    access_log::init(&settings.access_log)
        .map_err(|e| format!("cannot open the access log {:?}: {e}", settings.access_log))?;
    watch_phases(phases);

    let runtime = Arc::new(ArcSwap::from_pointee(compiled.runtime));
    let limiter = Arc::new(Limiter::default());
    let mut resolvers = HashMap::new();
    for (name, store) in compiled.cert_stores {
        resolvers.insert(name, Arc::new(SniResolver::new(store)));
    }

    for listener in &settings.listeners {
        let app = EdgeProxy {
            limiter: limiter.clone(),
            listener: listener.clone(),
            runtime: runtime.clone(),
        };
        let mut server_options = HttpServerOptions::default();
        server_options.h2c = listener.h2c;
        let mut proxy = HttpProxy::new(app, server.configuration.clone());
        proxy.server_options = Some(server_options);
        proxy.handle_init_modules();
        // Client connections pass the connection limits (head timeout and size, connections per address)
        // before the proxy reads them.
        let address = listener.address.to_string();
        // TLS listeners are bound as TCP: the guard runs the handshake (timed, after the per-address cap,
        // with our rustls config).
        let tls = match (&listener.tls, resolvers.get(&listener.name)) {
            (Some(tls), Some(resolver)) => {
                let verifier = match &tls.client_auth {
                    Some(client_auth) => Some(
                        client_verifier(&client_auth.ca_ders, client_auth.required)
                            .map_err(|e| format!("listener {}: {e}", listener.name))?,
                    ),
                    None => None,
                };
                let config = server_config(resolver.clone(), verifier, tls.h2, tls.session_tickets)
                    .map_err(|e| format!("listener {}: {e}", listener.name))?;
                Some(
                    TlsHandshake::new(config, resolver.clone(), tls.client_auth.is_some())
                        .map_err(|e| format!("listener {}: {e}", listener.name))?,
                )
            }
            _ => None,
        };
        let guarded = Guarded {
            app: Arc::new(proxy),
            policy: LiveLimits(runtime.clone()),
            tls,
        };
        let mut service = Service::new(format!("listener {}", listener.name), guarded);
        // Pingora's default read buffer is 64 KiB per connection, allocated zeroed when the connection is
        // accepted: about a fifth of the instructions of a stream started on a new connection (callgrind).
        service.add_listener(ListenerConfig::tcp(address.clone()).l4_buffer(
            L4BufferSettings::new(
                CONNECTION_READ_BUFFER,
                pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
            ),
        ));
        log::info!(
            "listener {} on {}{}",
            listener.name,
            address,
            if listener.tls.is_some() { " (TLS)" } else { "" }
        );
        server.add_service(service);
    }

    if let Some(admin) = settings.admin {
        let listeners = settings
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address.port()))
            .collect();
        log::info!("admin on {admin} (/healthz, /readyz, /metrics)");
        server.add_service(background_service(
            "admin",
            AdminService {
                app: Arc::new(AdminApp { listeners }),
                address: admin,
            },
        ));
    }

    let (generation, generation_watch) = watch::channel(0u64);
    server.add_service(background_service(
        "upkeep",
        Upkeep {
            runtime: runtime.clone(),
            generation: generation_watch,
        },
    ));
    server.add_service(background_service(
        "limit sweeper",
        LimitSweeper { limiter },
    ));
    server.add_service(background_service(
        "config reload",
        Reloader {
            config_path: options.config_path.clone(),
            settings,
            runtime,
            resolvers,
            generation,
        },
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            shutdown_delay: settings_delay,
        }),
    });
    // The grace period ran out (an early exit after the drain does not come here).
    access_log::flush(Duration::from_secs(1));
    std::process::exit(0)
}
