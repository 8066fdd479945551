//! The convoy binary: command line, logging, runtime, and the OS signal
//! handlers that feed the node's loop. The control plane is the
//! `convoy-control` library; `convoy ctl` lives in `ctl`, the demo in
//! `demo`.
#![forbid(unsafe_code)]

mod ctl;
mod demo;
mod eventlog;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use convoy_config::{Config, LogFormat};

/// convoy: put a farm of redundant servers behind one address.
#[derive(Parser, Debug)]
/// convoy: a load balancer for farms of servers (TCP, UDP, HTTP), alone or
/// as a cluster of nodes. Try `convoy demo`.
#[command(name = "convoy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the balancer with a config file (see docs/CONFIG.md).
    ///
    /// Signals: SIGHUP reloads the config; SIGQUIT or SIGUSR1 drain-stops
    /// (stop accepting, exit when the last connection ends or after
    /// node.drain_timeout); SIGTERM or SIGINT stop at once; SIGUSR2 logs the
    /// node's state (servers grouped by zone).
    Run {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listening sockets of the node running with the
        /// same `node.upgrade_socket` (seamless binary upgrade); the old
        /// node then drains and exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file: print every mistake (exit 2), or the whole
    /// config with every default filled in.
    Check {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Try convoy with nothing to set up: three small web servers on this
    /// machine behind a balancer, and a live dashboard in your browser.
    /// Ctrl-C stops it all.
    Demo {
        /// Address of the demo balancer.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Address of the admin API and dashboard.
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin: String,
    },
    /// Control a running balancer from the shell: see its state, drain or
    /// enable servers, change weights, reload, stop (uses its admin API).
    Ctl(ctl::CtlArgs),
    /// Run demo HTTP servers with no balancer (e.g. behind a cluster):
    /// each answers with its name, its address, and the address of the
    /// balancer node that carried the request.
    DemoServers {
        /// Addresses to listen on, e.g. 10.88.2.1:8000.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
}

/// Logs to stderr (filtered by `CONVOY_LOG`, default `info`) and copies
/// structured events into `ring` for the admin API.
fn init_logging(format: LogFormat, ring: std::sync::Arc<convoy_core::events::EventRing>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONVOY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let ring =
        eventlog::RingLayer { ring }.with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(ring)
        .init();
}

/// Runs a node until it stops: the control plane, with the process's
/// signals fed to its loop. The handlers are installed once the node has
/// started, as they always were.
async fn run_node(
    cfg: Config,
    path: Option<PathBuf>,
    ring: std::sync::Arc<convoy_core::events::EventRing>,
    inherited: Option<convoy_control::Inherited>,
) -> anyhow::Result<()> {
    let (node, inputs) = convoy_control::Node::start(cfg, path, ring, inherited).await?;
    let signals = os_signals()?;
    convoy_control::run(node, inputs, signals).await;
    Ok(())
}

/// Installs the handlers of the signals the node takes and forwards each
/// one to the returned channel.
pub(crate) fn os_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<convoy_control::Signal>> {
    use convoy_control::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for (kind, sig) in [
        (SignalKind::hangup(), Signal::Hangup),
        (SignalKind::terminate(), Signal::Terminate),
        (SignalKind::interrupt(), Signal::Interrupt),
        (SignalKind::quit(), Signal::Quit),
        (SignalKind::user_defined1(), Signal::User1),
        (SignalKind::user_defined2(), Signal::User2),
    ] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(sig).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

/// One worker runs everything on the main thread (no work stealing, no
/// cross-thread wake-ups: the cheapest per request); more use tokio's
/// multi-threaded scheduler; 0 means one per core.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    b.enable_all().build().context("cannot start the runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                // Certificates and keys must load, too.
                for (i, l) in c.listeners.iter().enumerate() {
                    if let Some(t) = &l.tls {
                        if let Err(e) = convoy_http::tls::check(t) {
                            eprintln!("{}: listeners[{i}].tls.{e}", config.display());
                            return ExitCode::from(2);
                        }
                    }
                }
                for (name, p) in &c.pools {
                    if let Some(t) = &p.tls {
                        if let Err(e) = convoy_http::tls::client_config(t, false) {
                            eprintln!("{}: pools.{name}.{e}", config.display());
                            return ExitCode::from(2);
                        }
                    }
                }
                // The token is a secret: never printed.
                let mut shown = c.clone();
                if shown.admin.token.is_some() {
                    shown.admin.token = Some("<redacted>".into());
                }
                print!("{}", shown.to_toml());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Run { config, upgrade } => match Config::load(&config) {
            Ok(c) => {
                let ring = std::sync::Arc::new(convoy_core::events::EventRing::new(1000));
                init_logging(c.node.log_format, std::sync::Arc::clone(&ring));
                let inherited = if upgrade {
                    match &c.node.upgrade_socket {
                        Some(p) => match convoy_control::take_over(p) {
                            Ok(i) => Some(i),
                            Err(e) => {
                                // With its causes, as anyhow's `{:#}` printed them.
                                eprintln!("convoy: {}", convoy_control::report(&e));
                                return ExitCode::FAILURE;
                            }
                        },
                        None => {
                            eprintln!("convoy: --upgrade needs node.upgrade_socket in the config");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    None
                };
                runtime(c.node.workers)
                    .and_then(|rt| rt.block_on(run_node(c, Some(config), ring, inherited)))
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Demo { listen, admin } => {
            let ring = std::sync::Arc::new(convoy_core::events::EventRing::new(1000));
            init_logging(LogFormat::Text, std::sync::Arc::clone(&ring));
            runtime(0).and_then(|rt| rt.block_on(demo::run(&listen, &admin, ring)))
        }
        Cmd::Ctl(args) => return ctl::main(args),
        Cmd::DemoServers { addresses } => {
            runtime(1).and_then(|rt| rt.block_on(demo::servers(&addresses)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
