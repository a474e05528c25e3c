//! `lb`: the load balancer's agent and operator tool.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_common::{addr::to_key, vip::VipAddrKey};
use lb_userspace::{
    agent,
    config::{Config, Prefix, Protocol, XdpMode},
    control::{self, Request},
    dataplane::{BalancerMaps, Decap},
    inspect,
    pins::PinDir,
    stats::PinnedStats,
};

mod show;

/// Prints what a change did.
fn changed(body: serde_json::Value) {
    match body.get("generation") {
        Some(g) => println!("applied (data plane generation {g})"),
        None => println!("nothing to change"),
    }
}

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
        #[arg(long, short)]
        instance: String,
    },
    /// VIPs, backends, health, weights and table fingerprints, from the running agent.
    Status {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// Counters of an instance, read from its pinned maps (works while the agent is stopped).
    Stats {
        #[arg(long, short)]
        instance: String,
        #[arg(long)]
        json: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
    },
    /// List, add or remove VIPs of the running agent.
    #[command(subcommand)]
    Vip(VipCommand),
    /// List, add, remove, reweight, drain, enable or disable backends of the running agent.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// The running configuration, live changes included, as a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reload the agent's configuration file (like SIGHUP); a file that fails validation changes nothing.
    Reload {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Which backend a flow goes to now, and why (flow-table entry, or hash and table slot).
    Trace {
        #[arg(long, short)]
        instance: String,
        #[arg(value_parser = ["tcp", "udp"])]
        protocol: String,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        #[arg(long)]
        json: bool,
    },
    /// What applying NEWCONFIG would move: share of each VIP's hash space and tracked flows, and
    /// each backend's share before and after.
    Plan {
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Backend side: the decapsulation program.
    #[command(subcommand)]
    Decap(DecapCommand),
}

#[derive(clap::Args, Clone)]
struct AgentArgs {
    /// The agent's instance name (its control socket is /run/lb/INSTANCE.sock).
    #[arg(long, short)]
    instance: String,
    /// The control socket, if not the default.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl AgentArgs {
    fn ask(&self, request: Request) -> anyhow::Result<serde_json::Value> {
        let socket = self.socket.clone().unwrap_or_else(|| PathBuf::from(format!("/run/lb/{}.sock", self.instance)));
        let response = control::request(&socket, &request)?;
        match response.error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(response.body),
        }
    }
}

#[derive(Subcommand)]
enum VipCommand {
    List {
        #[command(flatten)]
        agent: AgentArgs,
    },
    Add {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long, allow_negative_numbers = true)]
        port: i64,
        #[arg(long)]
        protocol: String,
        #[arg(long, allow_negative_numbers = true)]
        table_size: Option<i64>,
    },
    Remove {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    List {
        #[command(flatten)]
        agent: AgentArgs,
        /// Only this VIP's backends.
        vip: Option<String>,
    },
    Add {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
        #[arg(long, allow_negative_numbers = true)]
        weight: Option<i64>,
    },
    Remove {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
    },
    Weight {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
        #[arg(allow_negative_numbers = true)]
        weight: i64,
    },
    /// No new flows; existing flows continue until they end or idle out.
    Drain {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
    },
    /// Back in service (undo drain or disable).
    Enable {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
    },
    /// Out of service: flows pinned to it move on their next packet.
    Disable {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    Dump {
        #[command(flatten)]
        agent: AgentArgs,
    },
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
        /// A prefix the balancers' tunnel packets come from: their encap_source_v4 and
        /// encap_source_v6, and their own addresses if they run tunnel health checks (repeat for
        /// several). Tunnel packets from anywhere else are not decapsulated.
        #[arg(long = "balancer-source", required = true, value_name = "PREFIX")]
        balancer_sources: Vec<Prefix>,
        /// What happens to a tunnel packet from another source: dropped, or passed untouched to
        /// this host's stack (for a host that terminates other tunnels itself).
        #[arg(long, value_enum, default_value = "drop")]
        unlisted_source: UnlistedSource,
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
enum UnlistedSource {
    Drop,
    Pass,
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
        Command::Status { agent, json } => {
            let status = agent.ask(Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", show::status(&status));
            }
        }
        Command::Stats { instance, json, watch } => {
            let pins = PinDir::instance(&instance);
            let stats = PinnedStats::open(&pins)
                .with_context(|| format!("opening the maps pinned at {}", pins.root().display()))?;
            loop {
                let snapshot = stats.snapshot()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&snapshot)?);
                } else {
                    if watch {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", snapshot.table());
                }
                if !watch {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Command::Vip(VipCommand::List { agent }) => print!("{}", show::vips(&agent.ask(Request::VipList)?)),
        Command::Vip(VipCommand::Add { agent, name, address, port, protocol, table_size }) => {
            changed(agent.ask(Request::VipAdd { name, address, port, protocol, table_size })?)
        }
        Command::Vip(VipCommand::Remove { agent, name }) => changed(agent.ask(Request::VipRemove { name })?),
        Command::Backend(BackendCommand::List { agent, vip }) => {
            print!("{}", show::backends(&agent.ask(Request::BackendList { vip })?))
        }
        Command::Backend(BackendCommand::Add { agent, vip, address, weight }) => {
            changed(agent.ask(Request::BackendAdd { vip, address, weight })?)
        }
        Command::Backend(BackendCommand::Remove { agent, vip, address }) => {
            changed(agent.ask(Request::BackendRemove { vip, address })?)
        }
        Command::Backend(BackendCommand::Weight { agent, vip, address, weight }) => {
            changed(agent.ask(Request::BackendWeight { vip, address, weight })?)
        }
        Command::Backend(BackendCommand::Drain { agent, vip, address }) => {
            changed(agent.ask(Request::BackendState { vip, address, state: "drain".into() })?)
        }
        Command::Backend(BackendCommand::Enable { agent, vip, address }) => {
            changed(agent.ask(Request::BackendState { vip, address, state: "up".into() })?)
        }
        Command::Backend(BackendCommand::Disable { agent, vip, address }) => {
            changed(agent.ask(Request::BackendState { vip, address, state: "disabled".into() })?)
        }
        Command::Config(ConfigCommand::Dump { agent }) => {
            print!("{}", agent.ask(Request::ConfigDump)?.as_str().unwrap_or_default());
        }
        Command::Reload { agent } => changed(agent.ask(Request::Reload)?),
        Command::Trace { instance, protocol, src, sport, dst, dport, json } => {
            let maps = BalancerMaps::open_pinned(&PinDir::instance(&instance))?;
            let protocol = if protocol == "tcp" { Protocol::Tcp } else { Protocol::Udp };
            let trace = inspect::trace(&maps, protocol, src, sport, dst, dport)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&trace)?);
            } else {
                println!("vip:     {}", trace.vip.as_deref().unwrap_or("none"));
                println!("backend: {}", trace.backend.as_deref().unwrap_or("none"));
                println!("why:     {}", trace.why);
            }
        }
        Command::Plan { config, json } => {
            let config = Config::load(&config)?;
            let maps = BalancerMaps::open_pinned(&PinDir::instance(&config.instance.name))?;
            let plan = inspect::plan(&maps, &config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", show::plan(&plan));
            }
        }
        Command::Decap(DecapCommand::Attach { name, interface, vips, balancer_sources, unlisted_source, xdp_mode }) => {
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
            let sources: Vec<(IpAddr, u8)> = balancer_sources.iter().map(|p| (p.network, p.len)).collect();
            let unlisted = match unlisted_source {
                UnlistedSource::Drop => lb_common::decap::unlisted_source::DROP,
                UnlistedSource::Pass => lb_common::decap::unlisted_source::PASS,
            };
            decap.set_sources(&sources, unlisted)?;
            let attached = decap.attach(&interface, xdp_mode.into(), &pins)?;
            println!(
                "decapsulation on {interface} for {} VIP address(es), tunnels from {} balancer prefix(es): {attached:?}",
                addrs.len(),
                sources.len()
            );
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
