//! Process lifecycle beyond Pingora's own signals: SIGHUP reloads the config in-process (routes, clusters
//! and certificates swapped atomically; a bad file is rejected and the old config keeps serving), and the
//! readiness flag follows Pingora's execution phases.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};

use crate::config::compile::{compile, Mode};
use crate::config::{load_file, ConfigErrors};
use crate::edge::tls::SniResolver;
use crate::observe::admin::READY;
use crate::observe::metrics::METRICS;
use crate::runtime::{ProcessSettings, Runtime};
use crate::server::ensure_dev_certificates;

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
        let config = load_file(&self.config_path)?;
        ensure_dev_certificates(&config);
        let current = self.runtime.load_full();
        let compiled = compile(&config, Mode::Run, Some(&current))?;
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
        crate::ai::warm_up(&compiled.runtime.ai);
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

/// Follow Pingora's phases: ready while running, not ready once shutdown or upgrade starts.
pub fn watch_readiness(mut phases: broadcast::Receiver<ExecutionPhase>) {
    let spawned = std::thread::Builder::new()
        .name("readiness".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::Running) => READY.store(true, Ordering::Relaxed),
                Ok(
                    ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::ShutdownStarted,
                ) => READY.store(false, Ordering::Relaxed),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the readiness watcher: {e}");
    }
}

/// Run the tasks `spawn` starts for the current config generation; abort and restart them on every reload,
/// stop on shutdown. Shared by the background services that follow the config (upstream upkeep, JWKS).
pub async fn per_generation(
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
