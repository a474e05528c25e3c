//! `lb`: the load balancer's agent and operator tool.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_common::{addr::to_key, vip::VipAddrKey};
use lb_userspace::{
    agent,
    config::{Config, XdpMode},
    dataplane::Decap,
    pins::PinDir,
    stats::PinnedStats,
};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP Layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: apply CONFIG to the data plane and keep it (SIGTERM leaves it forwarding).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file exactly as `lb run` does; exit status 0 if valid, 1 if not.
    Check { config: PathBuf },
    /// Remove an instance's data plane: detach its programs and delete its pinned maps.
    Detach {
        #[arg(long)]
        instance: String,
    },
    /// Counters of an instance, read from its pinned maps (works while the agent is stopped).
    Stats {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Backend side: the decapsulation program.
    #[command(subcommand)]
    Decap(DecapCommand),
}

#[derive(Subcommand)]
enum DecapCommand {
    /// Attach (or update) the decapsulation program for the given VIP addresses; it stays
    /// attached after this command exits.
    Attach {
        /// Name of this attachment (pins under /sys/fs/bpf/lb-decap/NAME).
        #[arg(long)]
        name: String,
        #[arg(long)]
        interface: String,
        /// A VIP address served by this backend (repeat for several).
        #[arg(long = "vip", required = true)]
        vips: Vec<IpAddr>,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: Mode,
    },
    /// Detach the decapsulation program and remove its pins.
    Detach {
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Native,
    Generic,
    Auto,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
            Mode::Auto => XdpMode::Auto,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(agent::run(&config))?;
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => println!("{}: ok ({} VIPs, {} backends)", config.display(), c.vips.len(), c.backend_count()),
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Detach { instance } => {
            let pins = PinDir::instance(&instance);
            anyhow::ensure!(pins.exists(), "no instance {instance}: nothing pinned at {}", pins.root().display());
            pins.remove().with_context(|| format!("removing {}", pins.root().display()))?;
            println!("detached instance {instance} and removed {}", pins.root().display());
        }
        Command::Stats { instance, json } => {
            let pins = PinDir::instance(&instance);
            let stats = PinnedStats::open(&pins)
                .with_context(|| format!("opening the maps pinned at {}", pins.root().display()))?;
            let snapshot = stats.snapshot()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                print!("{}", snapshot.table());
            }
        }
        Command::Decap(DecapCommand::Attach { name, interface, vips, xdp_mode }) => {
            let pins = PinDir::decap(&name);
            let mut decap = Decap::open_pinned(&pins)?;
            let addrs: Vec<VipAddrKey> = vips
                .iter()
                .map(|a| {
                    let (family, addr) = to_key(*a);
                    VipAddrKey::new(family, addr)
                })
                .collect();
            decap.set_vips(&addrs)?;
            let attached = decap.attach(&interface, xdp_mode.into(), &pins)?;
            println!("decapsulation on {interface} for {} VIP address(es): {attached:?}", addrs.len());
        }
        Command::Decap(DecapCommand::Detach { name }) => {
            let pins = PinDir::decap(&name);
            anyhow::ensure!(pins.exists(), "nothing pinned at {}", pins.root().display());
            pins.remove()?;
            println!("detached decapsulation {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
