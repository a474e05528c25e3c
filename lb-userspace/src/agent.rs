//! `lb run`: the agent. Turns a configuration into a live data plane and keeps it.
//!
//! Start-up: validate the configuration (nothing is touched if it fails), open or adopt the
//! pinned maps, reconcile them to the configuration, then attach (or replace the program inside
//! the pinned links). On SIGTERM or SIGINT the agent exits and the data plane keeps forwarding;
//! the next `lb run` adopts it. `lb detach` removes it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::Config,
    dataplane::{Balancer, BalancerSizes},
    pins::PinDir,
    reconcile::{self, Op},
};

/// How often backends' neighbour entries are refreshed (see [`warm_neighbours`]).
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(10);

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let pins = PinDir::instance(&config.instance.name);
    let adopting = pins.exists();
    let mut balancer =
        Balancer::open_pinned(BalancerSizes { flow_table_entries: config.instance.flow_table_entries }, &pins)
            .with_context(|| format!("opening the data plane pinned at {}", pins.root().display()))?;
    if adopting {
        tracing::info!(pins = %pins.root().display(), "adopting the pinned data plane");
    }

    apply(&mut balancer, &config)?;
    for interface in &config.instance.interfaces {
        enable_forwarding(interface);
    }
    warm_neighbours(&config);
    for interface in &config.instance.interfaces {
        let attached = balancer
            .attach(interface, config.instance.xdp_mode, &pins)
            .with_context(|| format!("attaching the balancer to {interface}"))?;
        match attached {
            crate::attach::Attached::New(mode) => tracing::info!(interface, ?mode, "attached the balancer"),
            crate::attach::Attached::Replaced => {
                tracing::info!(interface, "replaced the balancer program inside the pinned link")
            }
        }
    }
    tracing::info!(instance = %config.instance.name, vips = config.vips.len(), backends = config.backend_count(), "running");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut refresh = tokio::time::interval(NEIGHBOUR_REFRESH);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = refresh.tick() => warm_neighbours(&config),
        }
    }
    tracing::info!(
        pins = %pins.root().display(),
        "exiting; the data plane keeps forwarding. `lb detach --instance {}` removes it",
        config.instance.name
    );
    Ok(())
}

/// Reconciles the maps to `config`, logging each change.
pub fn apply(balancer: &mut Balancer, config: &Config) -> anyhow::Result<()> {
    let current = balancer.current().context("reading the current data plane state")?;
    let ops = reconcile::plan(&reconcile::Desired::from_config(config), &current)?;
    for op in &ops {
        match op {
            Op::SetDataplane(d) => {
                tracing::info!(mtu = d.mtu, udp_idle_timeout_ns = d.udp_idle_timeout_ns, "set instance settings")
            }
            Op::SetBackend { id, backend } => {
                tracing::info!(id, address = %show_addr(backend.family, &backend.addr), "added backend")
            }
            Op::InstallVip { key, index, table } => tracing::info!(
                vip = %show_vip(key),
                index,
                table_size = table.len(),
                "installed Maglev table"
            ),
            Op::RemoveVip { key } => tracing::info!(vip = %show_vip(key), "removed VIP"),
            Op::ClearBackend { id } => tracing::info!(id, "removed backend"),
        }
        balancer.apply(op)?;
    }
    if ops.is_empty() {
        tracing::info!("the data plane already matches the configuration");
    }
    for vip in config.vips.iter().filter(|v| v.backends.iter().all(|b| b.weight == 0)) {
        tracing::warn!(vip = %vip.name, "no backend with a weight: this VIP's traffic is dropped (drop_no_backend)");
    }
    Ok(())
}

/// The FIB lookup of the data plane requires forwarding on the ingress interface.
fn enable_forwarding(interface: &str) {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        match std::fs::write(&path, "1") {
            Ok(()) => tracing::debug!(path, "enabled forwarding"),
            Err(e) => {
                tracing::warn!(path, error = %e, "could not enable forwarding; next hops then come from the fallback MAC")
            }
        }
    }
}

/// The data plane needs a neighbour entry for each backend (or its gateway) to address frames,
/// and the kernel only keeps entries that traffic uses, which XDP bypasses. An empty datagram to
/// the discard port makes the kernel resolve and refresh the entry.
fn warm_neighbours(config: &Config) {
    let backends: BTreeSet<IpAddr> = config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();
    for address in backends {
        let bind: SocketAddr = if address.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let sent = UdpSocket::bind(bind).and_then(|s| s.send_to(&[], SocketAddr::new(address, 9)));
        if let Err(e) = sent {
            tracing::debug!(%address, error = %e, "neighbour refresh failed");
        }
    }
}

pub fn show_addr(family: u8, addr: &[u8; 16]) -> String {
    lb_common::addr::from_key(family, addr).to_string()
}

pub fn show_vip(key: &lb_common::vip::VipKey) -> String {
    let proto = match key.protocol {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    };
    let port = u16::from_be_bytes(key.port);
    let addr = show_addr(key.family, &key.addr);
    if key.family == lb_common::family::IPV4 {
        format!("{addr}:{port}/{proto}")
    } else {
        format!("[{addr}]:{port}/{proto}")
    }
}
