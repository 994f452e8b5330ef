//! Process lifecycle beyond Pingora's own signals: SIGHUP reloads the config in-process (routes, clusters
//! and certificates swapped atomically; a bad file is rejected and the old config keeps serving), the
//! readiness flag follows Pingora's execution phases, and shutdown drains:
//!
//! - SIGTERM: `/readyz` answers 503 at once and HTTP/1 answers close their connections; after
//!   `server.shutdown_delay` (0 by default) the listeners stop accepting (Pingora's graceful shutdown);
//!   keep-alive connections get `IDLE_DRAIN` to send one more request (answered with `Connection: close`,
//!   HTTP/2 gets GOAWAY); the process exits as soon as no client connection is open, or after
//!   `grace_period` at the latest.
//! - SIGQUIT (upgrade): Pingora hands the listening sockets over and stops accepting 5 s later; then the
//!   same drain and early exit. Readiness stays up until then: the sockets are being served.
//! - SIGINT: fast stop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};

use crate::config::compile::Mode;
use crate::config::{self, ConfigErrors};
use crate::edge::connection::open_connections;
use crate::edge::limits::Limiter;
use crate::edge::tls::SniResolver;
use crate::observe::access_log;
use crate::observe::admin::{DRAINING, READY};
use crate::observe::metrics::METRICS;
use crate::runtime::{ProcessSettings, Runtime};
use crate::upstream::health::upkeep_cluster;

/// Reloads the config file on SIGHUP.
pub struct Reloader {
    pub config_path: PathBuf,
    pub settings: ProcessSettings,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub resolvers: HashMap<String, Arc<SniResolver>>,
    /// Bumped after each successful reload; background services restart on the new generation.
    pub generation: watch::Sender<u64>,
}

impl Reloader {
    /// Load, validate and swap in the file; on any error keep the running config.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let current = self.runtime.load_full();
        let compiled = config::build(&self.config_path, Mode::Run, Some(&current))?;
        if compiled.settings != self.settings {
            log::warn!(
                "reload: listener, admin, access log or server process settings changed; \
                 they take effect only after a restart or a `--upgrade` hand-over"
            );
        }
        for (listener, store) in compiled.cert_stores {
            match self.resolvers.get(&listener) {
                Some(resolver) => resolver.replace(store),
                None => log::warn!(
                    "reload: TLS listener `{listener}` is new; it needs a restart to be bound"
                ),
            }
        }
        self.runtime.store(Arc::new(compiled.runtime));
        self.generation.send_modify(|generation| *generation += 1);
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(stream) => stream,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload is disabled: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangups.recv() => {
                    log::info!("SIGHUP: reloading {}", self.config_path.display());
                    match self.reload() {
                        Ok(()) => {
                            METRICS.config_reloads.with_label_values(&["ok"]).inc();
                            log::info!("reload: new config is serving");
                        }
                        Err(errors) => {
                            METRICS.config_reloads.with_label_values(&["rejected"]).inc();
                            log::error!("reload rejected, the previous config keeps serving:\n{errors}");
                        }
                    }
                }
            }
        }
    }
}

/// The shutdown signals, as Pingora's (SIGQUIT upgrade, SIGTERM graceful, SIGINT fast), with the drain
/// announced before SIGTERM's listeners close.
pub struct Signals {
    /// `server.shutdown_delay`: how long SIGTERM keeps accepting with `/readyz` at 503.
    pub shutdown_delay: std::time::Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let listen = |kind: SignalKind| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(e) => {
                log::error!("cannot listen for signal {}: {e}", kind.as_raw_value());
                None
            }
        };
        let (mut quit, mut term, mut int) = (
            listen(SignalKind::quit()),
            listen(SignalKind::terminate()),
            listen(SignalKind::interrupt()),
        );
        async fn next(stream: &mut Option<tokio::signal::unix::Signal>) {
            match stream {
                Some(stream) => {
                    stream.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut quit) => ShutdownSignal::GracefulUpgrade,
            _ = next(&mut int) => ShutdownSignal::FastShutdown,
            _ = next(&mut term) => {
                DRAINING.store(true, Ordering::Relaxed);
                READY.store(false, Ordering::Relaxed);
                if self.shutdown_delay.is_zero() {
                    log::info!("SIGTERM: draining; /readyz answers 503");
                    return ShutdownSignal::GracefulTerminate;
                }
                log::info!(
                    "SIGTERM: draining; /readyz answers 503; listeners close in {:?}",
                    self.shutdown_delay
                );
                tokio::select! {
                    _ = tokio::time::sleep(self.shutdown_delay) => ShutdownSignal::GracefulTerminate,
                    _ = next(&mut int) => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}

/// Follow Pingora's phases: ready while running, not ready once shutdown starts (an upgrade's old process
/// stays ready while it hands over: its sockets are served throughout). Once the grace period begins
/// (listeners closed), exit as soon as no client connection is left, instead of sleeping out the period.
pub fn watch_phases(mut phases: broadcast::Receiver<ExecutionPhase>) {
    let spawned = std::thread::Builder::new()
        .name("lifecycle".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::Running) => READY.store(true, Ordering::Relaxed),
                Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted) => {
                    READY.store(false, Ordering::Relaxed)
                }
                Ok(ExecutionPhase::ShutdownGracePeriod) => exit_when_drained(),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the lifecycle watcher: {e}");
    }
}

/// Wait until no client connection is open (seen twice, 50 ms apart, so a connection just accepted is
/// counted), write out the access log and exit. Pingora's grace period ends the wait if work remains.
fn exit_when_drained() {
    let started = std::time::Instant::now();
    let mut empty_before = false;
    loop {
        let empty = open_connections() == 0;
        if empty && empty_before {
            break;
        }
        empty_before = empty;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    log::info!(
        "drained: no client connection left {:?} after the listeners closed; exiting",
        started.elapsed()
    );
    access_log::flush(std::time::Duration::from_secs(1));
    std::process::exit(0);
}

/// The background work of each config generation, restarted on every reload: the upkeep of every cluster
/// (names resolved, active health checks) and the key refresh of every JWKS issuer.
pub struct Upkeep {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub generation: watch::Receiver<u64>,
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, shutdown: ShutdownWatch) {
        per_generation(
            &self.runtime,
            &self.generation,
            shutdown,
            |runtime, tasks| {
                for cluster in &runtime.clusters {
                    tasks.spawn(upkeep_cluster(cluster.clone()));
                }
                for issuer in &runtime.auth.jwt.issuers {
                    tasks.spawn(issuer.clone().keep_keys_fresh());
                }
            },
        )
        .await
    }
}

/// Sweeps idle rate-limit keys every few seconds.
pub struct LimitSweeper {
    pub limiter: Arc<Limiter>,
}

#[async_trait]
impl BackgroundService for LimitSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.limiter.sweep(),
            }
        }
    }
}

/// Run the tasks `spawn` starts for the current config generation; abort and restart them on every reload,
/// stop on shutdown.
async fn per_generation(
    runtime: &ArcSwap<Runtime>,
    generation: &watch::Receiver<u64>,
    mut shutdown: ShutdownWatch,
    spawn: impl Fn(&Runtime, &mut tokio::task::JoinSet<()>),
) {
    let mut generation = generation.clone();
    loop {
        let mut tasks = tokio::task::JoinSet::new();
        spawn(&runtime.load(), &mut tasks);
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = generation.changed() => {
                tasks.abort_all();
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether process `pid` is alive: it exists (`kill -0`) and, where `/proc` tells, is not a zombie
/// waiting for its parent (an exited gateway whose parent has not reaped it serves nothing).
fn alive(pid: u32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X') | None);
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn read_pid(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Poll `done` every 50 ms for up to `limit`; whether it became true.
fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// `gateway upgrade`: hand a running gateway's sockets to a new process, safely. The file is validated
/// first (a broken one changes nothing); the new process is started with `run --upgrade` and the old
/// one is told to hand over (SIGQUIT) only once the new one waits on the upgrade socket; success is the
/// pid file naming a live new process and the old one gone. On any failure before SIGQUIT, the running
/// gateway keeps serving untouched. Returns what happened, for the operator.
pub fn upgrade(config_path: &std::path::Path, daemon: bool) -> Result<String, String> {
    let invalid = |e: ConfigErrors| {
        format!(
            "{}: invalid configuration; nothing was changed, the running gateway keeps serving:\n{e}",
            config_path.display()
        )
    };
    let settings = config::build(config_path, Mode::Validate, None)
        .map_err(invalid)?
        .settings;
    let old = read_pid(&settings.pid_file)
        .filter(|&pid| alive(pid))
        .ok_or_else(|| {
            format!(
                "no running gateway: {} names no live process (start one with `gateway run`)",
                settings.pid_file
            )
        })?;
    // A socket file left by an earlier run would look like the new process waiting.
    let _ = std::fs::remove_file(&settings.upgrade_sock);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = std::process::Command::new(exe);
    command.args(["run", "--upgrade", "-c"]).arg(config_path);
    if daemon {
        command.arg("--daemon");
    }
    let mut new = command
        .spawn()
        .map_err(|e| format!("cannot start the new process: {e}"))?;
    let mut exited = None;
    let waiting = wait_for(std::time::Duration::from_secs(15), || {
        if let Ok(Some(status)) = new.try_wait() {
            // A daemon's first process exits at once, successfully; its child goes on.
            if !(daemon && status.success()) {
                exited = Some(status);
                return true;
            }
        }
        std::path::Path::new(&settings.upgrade_sock).exists()
    });
    if let Some(status) = exited {
        return Err(format!(
            "the new process exited ({status}) before taking over; the running gateway (pid {old}) keeps serving"
        ));
    }
    // With `--daemon` the process spawned here has already handed over to its background child, which
    // cannot be stopped from here; it gives up waiting for the hand-over by itself.
    let mut stop_new = || {
        if daemon {
            "the new background process gives up its wait by itself"
        } else {
            let _ = new.kill();
            "the new process was stopped"
        }
    };
    if !waiting {
        return Err(format!(
            "the new process did not reach the upgrade socket {} in 15 s; {}; the running gateway \
             (pid {old}) keeps serving",
            settings.upgrade_sock,
            stop_new()
        ));
    }
    let quit = std::process::Command::new("kill")
        .args(["-QUIT", &old.to_string()])
        .status()
        .is_ok_and(|status| status.success());
    if !quit {
        return Err(format!(
            "could not signal the running gateway (pid {old}); {}",
            stop_new()
        ));
    }
    let drain = settings.grace_period
        + settings.graceful_shutdown_timeout
        + std::time::Duration::from_secs(10);
    let mut current = None;
    let handed_over = wait_for(drain, || {
        current = read_pid(&settings.pid_file).filter(|&pid| pid != old && alive(pid));
        current.is_some() && !alive(old)
    });
    match current {
        Some(pid) if handed_over => Ok(format!(
            "upgraded: pid {old} handed its sockets to pid {pid} and exited"
        )),
        Some(pid) => Err(format!(
            "pid {pid} serves, but the old process (pid {old}) has not exited after {drain:?}"
        )),
        None => Err(format!(
            "the old process (pid {old}) was told to hand over, but no new process wrote {}: check \
             that something listens (the new process's log)",
            settings.pid_file
        )),
    }
}
