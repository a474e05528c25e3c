//! `lb status`: the running agent's VIPs, backends, health, weights and table fingerprints.

use std::fmt::Write as _;

use lb_userspace::agent::{announce::BgpStatus, control::Request, status::Status};

use super::{AgentArgs, backend, cell, vip};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// The whole status as JSON (`lb_userspace::agent::status::Status`).
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let status: Status = args.agent.ask(Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

fn table(status: &Status) -> String {
    let key = serde_json::to_value(status.flow_hash_key).ok().and_then(|v| v.as_str().map(str::to_string));
    let mut s = format!(
        "instance {} (config {}), data plane generation {}, flow hash key {}, {} client prefixes rate-tracked\n",
        status.instance,
        status.config.display(),
        status.generation,
        cell(key),
        cell(status.source_buckets)
    );
    let d = &status.data_plane;
    if let Some(problem) = &d.problem {
        let _ = writeln!(s, "DATA PLANE UNHEALTHY: {problem}");
    } else {
        let _ = write!(s, "data plane: as configured");
        if let Some(last) = &d.last_repaired {
            let _ = write!(s, " ({} repairs since the agent started; last: {last})", d.repairs);
        }
        s += "\n";
    }
    if let Some(problem) = &d.delivery_problem {
        let _ = writeln!(s, "DATA PLANE NOT DELIVERING: {problem}");
    }
    for w in &status.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    if let Some(bgp) = &status.bgp {
        s += &announcements(bgp);
    }
    s += "\n";
    s += &vip::table(&status.vips);
    s += "\n";
    s += &backend::table(&status.backends);
    s
}

/// The node's announcements and its peers' sessions.
fn announcements(bgp: &BgpStatus) -> String {
    let mut s = String::new();
    if bgp.drained {
        let _ = writeln!(s, "NODE DRAINED: every VIP withdrawn (`lb node undrain` announces them again)");
    }
    match &bgp.speaking.problem {
        Some(problem) if !bgp.applied() => {
            let _ = writeln!(s, "BGP NOT APPLIED (BIRD has not taken the latest announcements): {problem}");
        }
        _ if !bgp.applied() => {
            let _ = writeln!(s, "bgp: handing the announcements to BIRD");
        }
        _ => {}
    }
    if let Some(problem) = &bgp.speaking.sessions_problem {
        let _ = writeln!(s, "BGP SESSIONS UNKNOWN: {problem}");
    }
    for r in &bgp.routes {
        let state = r.withdrawn.map_or_else(|| "announced".to_string(), |w| format!("withdrawn: {}", w.describe()));
        let _ = writeln!(s, "route {} ({}): {state}", r.address, r.vips.join(", "));
    }
    for p in &bgp.speaking.sessions {
        let bfd = p.bfd.as_ref().map(|b| format!(", BFD {b}")).unwrap_or_default();
        let _ = writeln!(s, "peer {} AS{} ({}): {} {}{bfd}", p.address, p.asn, p.protocol, p.state, p.info);
    }
    s
}
