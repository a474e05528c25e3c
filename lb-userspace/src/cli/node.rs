//! `lb node drain` and `lb node undrain`: taking this balancer out of the fleet's ECMP and back.
//!
//! Draining withdraws every VIP address (the agent rewrites BIRD's file), then watches the
//! pinned counters: the data plane keeps forwarding whatever still arrives while the routers
//! move the flows to the other members. It ends once no new flow arrived for
//! [`QUIET_SECONDS`] in a row, or fails when the grace period passes first.

use std::{
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_userspace::{
    agent::{announce::BgpStatus, control::Request},
    dataplane::PinDir,
    inspect::PinnedStats,
};

use super::AgentArgs;

/// Seconds without a new flow after which the routers have evidently moved away.
const QUIET_SECONDS: u32 = 3;

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Withdraw every VIP from the routers, keep forwarding while they move flows away, and
    /// report once no new flows arrive (exit 1 if they still do when the grace period ends).
    Drain(DrainArgs),
    /// Announce the VIPs again.
    Undrain(UndrainArgs),
}

#[derive(clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// How long to wait at most for new flows to stop (default: `drain_grace_secs` of `[bgp]`).
    #[arg(long, value_name = "SECONDS")]
    grace: Option<u64>,
    /// Withdraw and return at once, without watching the traffic.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
pub struct UndrainArgs {
    #[command(flatten)]
    agent: AgentArgs,
}

pub fn run(command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::Drain(args) => drain(args),
        NodeCommand::Undrain(args) => {
            let status: BgpStatus = args.agent.ask(Request::Node { drain: false })?;
            let announced: Vec<String> =
                status.routes.iter().filter(|r| r.withdrawn.is_none()).map(|r| r.address.to_string()).collect();
            println!(
                "undrained: announcing {}",
                if announced.is_empty() { "nothing".into() } else { announced.join(", ") }
            );
            for r in status.routes.iter().filter(|r| r.withdrawn.is_some()) {
                println!("not announcing {}: {}", r.address, r.withdrawn.map_or("", |w| w.describe()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let pins = PinDir::instance(args.agent.instance());
    // Opened first: a drain whose progress cannot be watched is refused before it withdraws.
    let stats = (!args.no_wait)
        .then(|| {
            PinnedStats::open(&pins).with_context(|| format!("opening the maps pinned at {}", pins.root().display()))
        })
        .transpose()?;
    let status: BgpStatus = args.agent.ask(Request::Node { drain: true })?;
    let addresses: Vec<String> = status.routes.iter().map(|r| r.address.to_string()).collect();
    println!("drained: withdrew {} from the routers (BIRD at {})", addresses.join(", "), status.bird_socket.display());
    let Some(stats) = stats else { return Ok(ExitCode::SUCCESS) };
    let grace = Duration::from_secs(args.grace.unwrap_or(status.drain_grace_secs));
    let new_flows = || -> anyhow::Result<(u64, u64)> {
        let s = stats.snapshot()?;
        Ok((s.vips.iter().map(|v| v.new_flows).sum(), s.vips.iter().map(|v| v.packets).sum()))
    };
    let start = Instant::now();
    let (mut flows, mut packets) = new_flows()?;
    let mut quiet = 0;
    while start.elapsed() < grace {
        std::thread::sleep(Duration::from_secs(1));
        let (f, p) = new_flows()?;
        let (new, forwarded) = (f.saturating_sub(flows), p.saturating_sub(packets));
        (flows, packets) = (f, p);
        quiet = if new == 0 { quiet + 1 } else { 0 };
        println!(
            "{:>4.0} s of {} s: {new} new flows/s, {forwarded} packets/s still forwarded",
            start.elapsed().as_secs_f64(),
            grace.as_secs()
        );
        let _ = std::io::stdout().flush();
        if quiet >= QUIET_SECONDS {
            println!(
                "no new flows for {QUIET_SECONDS} s ({:.0} s after the withdrawal): the routers send this node nothing new; \
                 it keeps forwarding what still arrives",
                start.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    eprintln!(
        "new flows still arrive after the grace period of {} s: check the routers' routes to the VIPs (`lb status` shows \
         each session) and whether clients reach this node by another path",
        grace.as_secs()
    );
    Ok(ExitCode::FAILURE)
}
