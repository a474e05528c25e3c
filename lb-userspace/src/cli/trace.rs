//! `lb trace`: which backend a flow goes to now, and why.

use std::net::IpAddr;

use lb_userspace::{
    config::{Named as _, Protocol},
    dataplane::{BalancerMaps, PinDir},
    inspect,
    label::parse_hex,
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
    /// The datagram's UDP payload in hexadecimal (spaces allowed), for a VIP that balances by a
    /// session key in it.
    #[arg(long)]
    payload: Option<String>,
    /// The trace as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let maps = BalancerMaps::open_pinned(&PinDir::instance(&args.instance))?;
    let payload = args.payload.as_deref().map(parse_hex).transpose().map_err(|e| anyhow::anyhow!("--payload: {e}"))?;
    let payload = payload.as_deref();
    let trace = inspect::trace(&maps, args.protocol, args.src, args.sport, args.dst, args.dport, payload)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        println!("vip:     {}", trace.vip.as_deref().unwrap_or("none"));
        println!("backend: {}", trace.backend.as_deref().unwrap_or("none"));
        if let Some(key) = &trace.session_key {
            println!("session: {key}");
        }
        println!("why:     {}", trace.why);
    }
    Ok(())
}
