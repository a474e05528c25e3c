//! `lb vip`: list, add or remove VIPs of the running agent.

use std::fmt::Write as _;

use clap::Subcommand;
use lb_userspace::agent::{
    control::Request,
    status::{AdmissionStatus, SessionKeyStatus, VipStatus},
};

use super::{AgentArgs, cell};

#[derive(Subcommand)]
pub enum VipCommand {
    /// VIPs with their schedulers, table sizes, backends, fingerprints and admission.
    List {
        #[command(flatten)]
        agent: AgentArgs,
        /// The list as JSON (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Add a VIP without backends (add them with `lb backend add`); Maglev, no health check.
    Add {
        #[command(flatten)]
        agent: AgentArgs,
        /// Its name (1 to 32 of a-z, 0-9, '-' and '_').
        name: String,
        /// Its IPv4 or IPv6 address.
        #[arg(long)]
        address: String,
        /// Its port (0: every port).
        #[arg(long, allow_negative_numbers = true)]
        port: i64,
        /// tcp or udp.
        #[arg(long)]
        protocol: String,
        /// Entries of its Maglev table (a prime; default from the number of backends).
        #[arg(long, allow_negative_numbers = true)]
        table_size: Option<i64>,
    },
    /// Remove a VIP: its traffic is no longer balanced (and its address withdrawn from BGP if
    /// no other VIP shares it).
    Remove {
        #[command(flatten)]
        agent: AgentArgs,
        /// The VIP's name.
        name: String,
    },
}

pub fn run(command: VipCommand) -> anyhow::Result<()> {
    match command {
        VipCommand::List { agent, json } => {
            let vips = agent.ask::<Vec<VipStatus>>(Request::VipList)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vips)?);
            } else {
                print!("{}", table(&vips));
            }
        }
        VipCommand::Add { agent, name, address, port, protocol, table_size } => {
            agent.change(Request::VipAdd { name, address, port, protocol, table_size })?;
        }
        VipCommand::Remove { agent, name } => agent.change(Request::VipRemove { name })?,
    }
    Ok(())
}

pub fn table(vips: &[VipStatus]) -> String {
    let mut s = format!(
        "{:<12} {:<26} {:>6} {:<5} {:<20} {:>7} {:>9} {:>8} {:<6} {:<10} {:<14}  {}\n",
        "VIP",
        "address",
        "port",
        "proto",
        "scheduler",
        "table",
        "backends",
        "active",
        "flood",
        "fingerprint",
        "session key",
        "admission"
    );
    for v in vips {
        let _ = writeln!(
            s,
            "{:<12} {:<26} {:>6} {:<5} {:<20} {:>7} {:>9} {:>8} {:<6} {:<10} {:<14}  {}",
            v.name,
            v.address.to_string(),
            v.port,
            v.protocol.to_string(),
            v.scheduler,
            v.table_size,
            v.backends,
            v.active_flows,
            flood(v),
            cell(v.fingerprint.as_ref()),
            session_key(v.session_key.as_ref()),
            admission(&v.admission)
        );
    }
    s
}

/// A VIP's flood mode: "-" without a budget, "on" (on how many CPUs) or "off".
fn flood(vip: &VipStatus) -> String {
    match (vip.new_flow_budget, vip.flooding_cpus) {
        (0, _) => "-".into(),
        (_, n) if n > 0 => format!("on:{n}"),
        _ => "off".into(),
    }
}

/// A VIP's session key as bytes OFFSET..END of the payload, with its misses; "-" for none.
fn session_key(key: Option<&SessionKeyStatus>) -> String {
    match key {
        None => "-".into(),
        Some(k) if k.misses > 0 => format!("{}..{} miss:{}", k.offset, k.offset + u16::from(k.length), k.misses),
        Some(k) => format!("{}..{}", k.offset, k.offset + u16::from(k.length)),
    }
}

/// A VIP's admission in a few words: lists, rates and refusals, or "-" if it serves everyone.
fn admission(a: &AdmissionStatus) -> String {
    let mut parts = Vec::new();
    if a.allow.len() + a.deny.len() > 0 {
        parts.push(format!("allow:{} deny:{}", a.allow.len(), a.deny.len()));
    }
    if let Some(r) = a.packets_per_second {
        parts.push(format!("pps:{r}"));
    }
    if let Some(r) = a.new_flows_per_second {
        parts.push(format!("flows/s:{r}"));
    }
    let refused: u64 = a.refused.values().sum();
    if refused > 0 {
        parts.push(format!("refused:{refused}"));
    }
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}
