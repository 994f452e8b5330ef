//! Command line: `gateway run` serves, `gateway validate` checks a config file and exits, `gateway upgrade`
//! hands a running gateway over to a new process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::compile::Mode;
use gateway::edge::consumers::{digest_hex, key_digest};
use gateway::lifecycle::upgrade;
use gateway::server::{run, RunOptions};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Zero-downtime upgrade of a running gateway: validate the file, start a new process that takes over
    /// the listening sockets, and only then tell the old one to hand over and drain.
    Upgrade {
        /// Config file (of the running gateway and the new process: same `pid_file` and `upgrade_sock`).
        #[arg(short, long, default_value = "conf/gateway.yaml")]
        config: PathBuf,
        /// Run the new process in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Print the SHA-256 of an API key read from standard input, for `consumers[].api_keys[].sha256`.
    HashKey,
    /// Check a config file: parse, validate and build every component without binding sockets.
    Validate {
        /// Config file.
        #[arg(short, long, default_value = "conf/gateway.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    gateway::observe::logger::init();
    match Cli::parse().command {
        Command::HashKey => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut key) {
                eprintln!("cannot read the key from standard input: {e}");
                return ExitCode::FAILURE;
            }
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                eprintln!("usage: printf %s \"$KEY\" | gateway hash-key");
                return ExitCode::FAILURE;
            }
            println!("{}", digest_hex(&key_digest(key.as_bytes())));
            ExitCode::SUCCESS
        }
        Command::Validate { config } => {
            let result = gateway::config::build(&config, Mode::Validate, None).map(|_| ());
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
        Command::Upgrade { config, daemon } => match upgrade(&config, daemon) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        },
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
