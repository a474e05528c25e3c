//! `lb fleet diff MEMBER...`: which VIPs' tables differ between balancers of a fleet, and why.
//! A member is an agent's control socket (a path) or its metrics endpoint (`host:port` or an
//! `http://` URL).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_userspace::agent::{
    control::{self, Request},
    fleet::{Difference, MemberView, diff},
    status::Status,
};

#[derive(clap::Subcommand)]
pub enum FleetCommand {
    /// Compare the members' tables VIP by VIP; exit status 0 if all are the same, 1 if not.
    Diff {
        /// Two or more members: a control socket path (/run/lb/NAME.sock), or a metrics endpoint
        /// (host:port, or http://host:port/metrics).
        #[arg(required = true, num_args = 2..)]
        members: Vec<String>,
        /// The comparison as JSON (docs/json.md); the exit status is the same.
        #[arg(long)]
        json: bool,
    },
}

/// `lb fleet diff --json`.
#[derive(serde::Serialize)]
struct Comparison<'a> {
    members: Vec<&'a str>,
    vips: usize,
    same: bool,
    differences: &'a [Difference],
}

pub fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    let FleetCommand::Diff { members, json } = command;
    let views = members.iter().map(|m| read(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let differences = diff(&views);
    let same = if differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if json {
        let comparison = Comparison {
            members: views.iter().map(|v| v.name.as_str()).collect(),
            vips: views.first().map_or(0, |v| v.vips.len()),
            same: differences.is_empty(),
            differences: &differences,
        };
        println!("{}", serde_json::to_string_pretty(&comparison)?);
        return Ok(same);
    }
    if differences.is_empty() {
        let vips = views.first().map_or(0, |v| v.vips.len());
        println!("{} members, {vips} VIPs: every table is the same", views.len());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} of the VIPs differ ({} is the reference):", differences.len(), views[0].name);
    for d in &differences {
        for reason in &d.reasons {
            println!("  {:<16} {reason}", d.vip);
        }
    }
    Ok(ExitCode::FAILURE)
}

/// One member's view, from wherever `member` says.
fn read(member: &str) -> anyhow::Result<MemberView> {
    if member.starts_with('/') || Path::new(member).exists() {
        let status: Status = control::request(Path::new(member), &Request::Status)?.into_answer()?;
        return Ok(MemberView::from_status(member, &status));
    }
    let text = metrics(member)?;
    Ok(MemberView::from_metrics(member, &text)?)
}

/// The metrics text at `endpoint` (host:port or http://host:port[/path]).
fn metrics(endpoint: &str) -> anyhow::Result<String> {
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    if rest.contains("://") {
        bail!("{endpoint}: only http:// metrics endpoints (or control socket paths) can be read");
    }
    let (authority, path) = rest.split_once('/').map_or((rest, "/metrics".to_string()), |(a, p)| (a, format!("/{p}")));
    let timeout = Duration::from_secs(3);
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("{endpoint}: not a host:port"))?
        .next()
        .with_context(|| format!("{endpoint}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).with_context(|| format!("connecting to {endpoint}"))?;
    stream.set_read_timeout(Some(timeout))?;
    // One write: the agent's metrics server answers after the first read.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).with_context(|| format!("sending to {endpoint}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("reading {endpoint}"))?;
    let (head, body) = response.split_once("\r\n\r\n").with_context(|| format!("{endpoint}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{endpoint}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}
