//! Command line: `gateway run` serves, `gateway validate` checks a config file and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::compile::{compile, Mode};
use gateway::config::load_file;
use gateway::server::{run, RunOptions};

#[derive(Parser)]
#[command(name = "gateway", version, about = "Pingora-based edge + AI gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/gateway.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running gateway, then send it SIGQUIT (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Detach and run in the background (writes `server.pid_file`).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Check a config file: parse, validate and build every component without binding sockets.
    Validate {
        /// Config file.
        #[arg(short, long, default_value = "conf/gateway.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Validate { config } => {
            let result = load_file(&config)
                .and_then(|parsed| compile(&parsed, Mode::Validate, None).map(|_| ()));
            match result {
                Ok(()) => {
                    println!("{}: configuration is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{}: invalid configuration:\n{errors}", config.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            match run(RunOptions {
                config_path: config,
                upgrade,
                daemon,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
