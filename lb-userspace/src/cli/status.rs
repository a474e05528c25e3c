//! `lb status`: the running agent's VIPs, backends, health, weights and table fingerprints.

use std::fmt::Write as _;

use lb_userspace::agent::{control::Request, status::Status};

use super::{AgentArgs, backend, cell, vip};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    agent: AgentArgs,
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
    s += "\n";
    s += &vip::table(&status.vips);
    s += "\n";
    s += &backend::table(&status.backends);
    s
}
