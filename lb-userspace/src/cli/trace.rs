//! `lb trace`: which backend a flow goes to now, and why.

use std::net::IpAddr;

use lb_userspace::{
    config::{Named as _, Protocol},
    dataplane::{BalancerMaps, PinDir},
    inspect,
};

#[derive(clap::Args)]
pub struct TraceArgs {
    /// The instance whose pinned maps are read.
    #[arg(long, short)]
    instance: String,
    /// tcp or udp.
    #[arg(value_parser = Protocol::parse)]
    protocol: Protocol,
    /// The client's address.
    src: IpAddr,
    /// The client's port.
    sport: u16,
    /// The VIP's address.
    dst: IpAddr,
    /// The VIP's port.
    dport: u16,
    /// The trace as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let maps = BalancerMaps::open_pinned(&PinDir::instance(&args.instance))?;
    let trace = inspect::trace(&maps, args.protocol, args.src, args.sport, args.dst, args.dport)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        println!("vip:     {}", trace.vip.as_deref().unwrap_or("none"));
        println!("backend: {}", trace.backend.as_deref().unwrap_or("none"));
        println!("why:     {}", trace.why);
    }
    Ok(())
}
