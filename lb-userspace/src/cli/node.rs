//! `lb node drain` and `lb node undrain`: taking this balancer out of the fleet's ECMP and back.
//!
//! Draining withdraws every VIP address (the agent rewrites BIRD's file) and waits until BIRD has
//! taken it, then watches the pinned counters: the data plane keeps forwarding whatever still
//! arrives while the routers move the flows to the other members. It ends once no new flow
//! arrived for [`QUIET_SECONDS`] in a row, or fails when the grace period passes first.

use std::{
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_userspace::{
    agent::{announce::BgpStatus, control::Request, status::Status},
    dataplane::PinDir,
    inspect::PinnedStats,
};

use super::AgentArgs;

/// Seconds without a new flow after which the routers have evidently moved away.
const QUIET_SECONDS: u32 = 3;
/// How long BIRD may take to read the agent's new file.
const BIRD_TAKES: Duration = Duration::from_secs(10);

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
    /// Return once BIRD has the withdrawal, without watching the traffic.
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
            let asked: BgpStatus = args.agent.ask(Request::Node { drain: false })?;
            let status = in_force(&args.agent, asked.plan)?;
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
    let pins = PinDir::instance(&args.agent.instance);
    // Opened first: a drain whose progress cannot be watched is refused before it withdraws.
    let stats = (!args.no_wait)
        .then(|| {
            PinnedStats::open(&pins).with_context(|| format!("opening the maps pinned at {}", pins.root().display()))
        })
        .transpose()?;
    let new_flows = |stats: &PinnedStats| -> anyhow::Result<(u64, u64)> {
        let s = stats.snapshot()?;
        Ok((s.vips.iter().map(|v| v.new_flows).sum(), s.vips.iter().map(|v| v.packets).sum()))
    };
    // The rate before, for comparison: a node that took no new flows proves nothing by taking none.
    let before = match &stats {
        Some(stats) => {
            let (f, p) = new_flows(stats)?;
            std::thread::sleep(Duration::from_secs(1));
            let (f2, p2) = new_flows(stats)?;
            Some((f2 - f, p2 - p))
        }
        None => None,
    };
    let asked: BgpStatus = args.agent.ask(Request::Node { drain: true })?;
    let status = in_force(&args.agent, asked.plan)?;
    let addresses: Vec<String> = status.routes.iter().map(|r| r.address.to_string()).collect();
    println!("drained: withdrew {} from the routers (BIRD at {})", addresses.join(", "), status.bird_socket.display());
    let (Some(stats), Some((flows_before, packets_before))) = (stats, before) else { return Ok(ExitCode::SUCCESS) };
    println!("   before the withdrawal: {flows_before} new flows/s, {packets_before} packets/s");
    let grace = Duration::from_secs(args.grace.unwrap_or(status.drain_grace_secs));
    let start = Instant::now();
    let (mut flows, mut packets) = new_flows(&stats)?;
    let mut quiet = 0;
    while start.elapsed() < grace {
        std::thread::sleep(Duration::from_secs(1));
        let (f, p) = new_flows(&stats)?;
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

/// Waits until BIRD has taken the agent's plan `plan` (or a later one); the status then.
fn in_force(agent: &AgentArgs, plan: u64) -> anyhow::Result<BgpStatus> {
    let start = Instant::now();
    loop {
        let status: Status = agent.ask(Request::Status)?;
        let bgp = status.bgp.context("the agent no longer announces anything (its configuration lost [bgp])")?;
        if bgp.speaking.applied >= plan {
            return Ok(bgp);
        }
        if start.elapsed() > BIRD_TAKES {
            anyhow::bail!(
                "BIRD has not taken the change after {BIRD_TAKES:?}: {}; the agent keeps trying (`lb status` shows it)",
                bgp.speaking.problem.as_deref().unwrap_or("no answer yet")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
