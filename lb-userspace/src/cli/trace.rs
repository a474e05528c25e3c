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
    /// The datagram's UDP payload in hexadecimal (spaces allowed), for a VIP that balances by a
    /// session key in it.
    #[arg(long, value_parser = hex_bytes)]
    payload: Option<Bytes>,
    /// The trace as JSON.
    #[arg(long)]
    json: bool,
}

/// Bytes given on the command line.
#[derive(Clone, Debug)]
struct Bytes(Vec<u8>);

fn hex_bytes(s: &str) -> Result<Bytes, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not hexadecimal bytes (pairs of 0-9, a-f)"));
    }
    Ok(Bytes(
        (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("checked")).collect(),
    ))
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let maps = BalancerMaps::open_pinned(&PinDir::instance(&args.instance))?;
    let payload = args.payload.as_ref().map(|p| p.0.as_slice());
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
