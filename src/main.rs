//! The `pgvigil` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pgvigil::config::Config;

/// High-availability proxy for PostgreSQL streaming-replication clusters.
///
/// Clients connect to pgvigil as if it were PostgreSQL. Start with `pgvigil demo` to
/// see it in front of a throwaway local cluster, then write a configuration file
/// (see docs/configuration.md) and use `pgvigil run --config pgvigil.toml`.
#[derive(Parser)]
#[command(name = "pgvigil", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pgvigil node with the given configuration file.
    ///
    /// Signals: SIGTERM stops accepting and lets sessions finish for
    /// proxy.shutdown_timeout; SIGINT shuts down at once; SIGHUP reloads the users file
    /// and auth settings and names what needs a restart. With [watchdog], either stop
    /// signal first releases the virtual IP and tells the other members.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file and its users file, then exit (status 0 when valid).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Check it as the file of a `pgvigil witness` (only [watchdog] and [log]).
        #[arg(long)]
        witness: bool,
    },
    /// Run a watchdog member that only votes (no proxy, no VIP): the third vote that lets
    /// a two-node cluster keep a quorum when one node is down.
    ///
    /// The file needs only [watchdog] (without [watchdog.vip]) and optionally [log].
    /// SIGTERM or SIGINT stops it.
    Witness {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Build a local primary + 2 standbys from the installed PostgreSQL and run two
    /// pgvigil nodes and a watchdog witness in front of them. Needs no configuration;
    /// Ctrl-C stops and removes everything.
    Demo {
        /// Port to listen on; the next free one is used when it is taken.
        #[arg(long, default_value_t = 9999)]
        port: u16,
        /// Number of hot standbys.
        #[arg(long, default_value_t = 2)]
        standbys: usize,
        /// Kill the primary (kill -9) this long after the start ("30s"), to watch a
        /// failover happen.
        #[arg(long, value_name = "DURATION", value_parser = |s: &str| pgvigil::config::parse_duration(s))]
        failover_after: Option<std::time::Duration>,
    },
    /// Talk to a running pgvigil's admin API: show nodes, pools and events; switch over,
    /// promote, detach, attach, rejoin, reload. Exit status 1 on failure, with the
    /// server's reason.
    Ctl(pgvigil::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, witness } => {
            let loaded = if witness { Config::load_witness(&config) } else { Config::load(&config) };
            match loaded {
                Ok(c) => {
                    let watchdog = c.watchdog.as_ref().map_or(String::new(), |w| {
                        format!(
                            ", watchdog {}: {} members, quorum {}",
                            w.name,
                            w.members(),
                            w.quorum.size(w.members())
                        )
                    });
                    if witness {
                        println!("{}: OK (witness{watchdog})", config.display());
                    } else {
                        println!("{}: OK ({} backends, listen {}{watchdog})", config.display(), c.backends.len(), c.proxy.listen);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pgvigil: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Witness { config } => {
            let cfg = match Config::load_witness(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pgvigil: {e}");
                    return ExitCode::from(2);
                }
            };
            pgvigil::logging::init(&cfg.log.level, &cfg.log.format);
            report(runtime(1).and_then(|rt| rt.block_on(pgvigil::run::run_witness(cfg))))
        }
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pgvigil: {e}");
                    return ExitCode::from(2);
                }
            };
            pgvigil::logging::init(&cfg.log.level, &cfg.log.format);
            let threads = cfg.proxy.worker_threads;
            report(runtime(threads).and_then(|rt| rt.block_on(pgvigil::run::run_until_signalled(cfg, Some(config)))))
        }
        Command::Ctl(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return report(Err(e.into())),
            };
            report(rt.block_on(pgvigil::ctl::run(args)))
        }
        Command::Demo { port, standbys, failover_after } => {
            pgvigil::logging::init("info", "text");
            report(runtime(0).and_then(|rt| rt.block_on(pgvigil::demo::run(port, standbys, failover_after))))
        }
    }
}

/// The tokio runtime; `threads` 0 means one worker per CPU core.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The SQL parser needs deep stacks; with 16 MB it never has to switch stacks.
    builder.thread_stack_size(pgvigil::router::PARSER_THREAD_STACK);
    if threads > 0 {
        builder.worker_threads(threads);
    }
    Ok(builder.enable_all().build()?)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgvigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}
