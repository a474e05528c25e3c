//! Prometheus metrics (text exposition format) over plain HTTP on a local address: the data
//! plane's counters from the pinned maps, and the agent's health, weights and table generation.

use std::fmt::Write as _;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::{
    control::{self, ControlSender},
    status::Status,
};
use crate::reconcile::policy::HealthState;
use crate::{dataplane::PinDir, inspect::PinnedStats};

pub async fn serve(listener: TcpListener, requests: ControlSender, pins: PinDir) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let requests = requests.clone();
        let pins = pins.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 2048];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut head)).await;
            let status = control::status(&requests).await;
            let body = render(&pins, status.as_ref());
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// The agent's metric families: name, type, help.
const AGENT_FAMILIES: [(&str, &str, &str); 18] = [
    (
        "lb_data_plane_healthy",
        "gauge",
        "1 if every interface runs this agent's program from its pinned link, its maps are pinned, and no \
         interface failed to transmit XDP frames in the last 10 s.",
    ),
    ("lb_data_plane_repairs_total", "counter", "Times the agent re-pinned maps or re-attached interfaces."),
    (
        "lb_interface_xdp_transmit_errors_total",
        "counter",
        "XDP frames the interface's driver could not transmit (its ethtool statistics).",
    ),
    ("lb_table_generation", "counter", "Changes applied to the data plane since the agent started."),
    ("lb_backend_healthy", "gauge", "1 if the backend passes its checks (or has none)."),
    ("lb_backend_effective_weight", "gauge", "Weight in the Maglev table after health, slow start and admin state."),
    ("lb_backend_active_flows", "gauge", "Flows counted active (least connections compares these)."),
    ("lb_health_check_latency_seconds", "gauge", "Duration of the last health probe."),
    (
        "lb_vip_table_info",
        "gauge",
        "1 per VIP with a table, labelled with its fingerprint, size and scheduler: equal on every balancer of a \
         fleet with the same configuration and health (`lb fleet diff` compares them).",
    ),
    ("lb_vip_flood_cpus", "gauge", "CPUs on which the VIP is in flood mode (new flows get no flow-table entry)."),
    ("lb_vip_untracked_flows_total", "counter", "New flows forwarded in flood mode without a flow-table entry."),
    (
        "lb_vip_admission_refused_packets_total",
        "counter",
        "Packets the VIP's admission refused (source lists, spoofed sources, per-source rates), by reason.",
    ),
    ("lb_source_buckets", "gauge", "Client prefixes with per-source rate buckets now."),
    (
        "lb_vip_announced",
        "gauge",
        "1 if the VIP address is announced over BGP, 0 if withdrawn (with the reason as a label).",
    ),
    ("lb_node_drained", "gauge", "1 while `lb node drain` keeps every VIP withdrawn."),
    ("lb_bgp_applied", "gauge", "1 if BIRD accepted the agent's current announcements file."),
    ("lb_bgp_session_established", "gauge", "1 per peer whose BGP session is Established."),
    ("lb_bgp_bfd_up", "gauge", "1 per peer whose BFD session is Up (absent without BFD)."),
];

fn render(pins: &PinDir, status: Option<&Status>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# HELP lb_up 1 while the agent answers.\n# TYPE lb_up gauge\nlb_up 1");
    if let Ok(snapshot) = PinnedStats::open(pins).and_then(|p| p.snapshot()) {
        for (metric, help, rows, label) in
            [("lb_vip", "VIP", &snapshot.vips, "vip"), ("lb_backend", "backend", &snapshot.backends, "backend")]
        {
            for (suffix, pick) in [("packets_total", 0usize), ("bytes_total", 1), ("new_flows_total", 2)] {
                let _ = writeln!(
                    s,
                    "# HELP {metric}_{suffix} Per-{help} {suffix} seen by the balancer.\n# TYPE {metric}_{suffix} counter"
                );
                for r in rows {
                    let v = [r.packets, r.bytes, r.new_flows][pick];
                    let _ = writeln!(s, "{metric}_{suffix}{{{label}=\"{}\"}} {v}", r.name);
                }
            }
        }
        let _ = writeln!(
            s,
            "# HELP lb_reason_packets_total Packets by verdict reason.\n# TYPE lb_reason_packets_total counter"
        );
        for r in &snapshot.reasons {
            let _ = writeln!(s, "lb_reason_packets_total{{reason=\"{}\"}} {}", r.reason, r.packets);
        }
    }
    for (name, kind, help) in AGENT_FAMILIES {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    let Some(status) = status else { return s };
    let _ = writeln!(s, "lb_table_generation {}", status.generation);
    let d = &status.data_plane;
    let _ = writeln!(s, "lb_data_plane_healthy {}", u8::from(d.problem.is_none() && d.delivery_problem.is_none()));
    let _ = writeln!(s, "lb_data_plane_repairs_total {}", d.repairs);
    for (interface, n) in &d.xdp_transmit_errors {
        let _ = writeln!(s, "lb_interface_xdp_transmit_errors_total{{interface=\"{interface}\"}} {n}");
    }
    if let Some(n) = status.source_buckets {
        let _ = writeln!(s, "lb_source_buckets {n}");
    }
    for v in &status.vips {
        let labels = format!("vip=\"{}\"", v.name);
        if let Some(fingerprint) = &v.fingerprint {
            let _ = writeln!(
                s,
                "lb_vip_table_info{{{labels},fingerprint=\"{fingerprint}\",table_size=\"{}\",scheduler=\"{}\"}} 1",
                v.table_size, v.scheduler
            );
        }
        let _ = writeln!(s, "lb_vip_flood_cpus{{{labels}}} {}", v.flooding_cpus);
        let _ = writeln!(s, "lb_vip_untracked_flows_total{{{labels}}} {}", v.untracked_flows);
        for (reason, n) in &v.admission.refused {
            let _ = writeln!(s, "lb_vip_admission_refused_packets_total{{{labels},reason=\"{reason}\"}} {n}");
        }
    }
    if let Some(bgp) = &status.bgp {
        let _ = writeln!(s, "lb_node_drained {}", u8::from(bgp.drained));
        let _ = writeln!(s, "lb_bgp_applied {}", u8::from(bgp.applied()));
        for r in &bgp.routes {
            let reason = r.withdrawn.map_or("", crate::bgp::Withdrawn::label);
            let announced = u8::from(r.withdrawn.is_none());
            let _ = writeln!(s, "lb_vip_announced{{address=\"{}\",reason=\"{reason}\"}} {announced}", r.address);
        }
        for p in &bgp.speaking.sessions {
            let labels = format!("peer=\"{}\",address=\"{}\"", p.protocol, p.address);
            let _ = writeln!(s, "lb_bgp_session_established{{{labels}}} {}", u8::from(p.established()));
            if let Some(bfd) = &p.bfd {
                let _ = writeln!(s, "lb_bgp_bfd_up{{{labels}}} {}", u8::from(bfd == "Up"));
            }
        }
    }
    for b in &status.backends {
        let labels = format!("vip=\"{}\",backend=\"{}\"", b.decision.vip, b.decision.address);
        let healthy = u8::from(b.decision.health != HealthState::Down);
        let _ = writeln!(s, "lb_backend_healthy{{{labels}}} {healthy}");
        let _ = writeln!(s, "lb_backend_effective_weight{{{labels}}} {}", b.decision.effective_weight);
        if let Some(n) = b.active_flows {
            let _ = writeln!(s, "lb_backend_active_flows{{{labels}}} {n}");
        }
        if let Some(ms) = b.check_latency_ms {
            let _ = writeln!(s, "lb_health_check_latency_seconds{{{labels}}} {}", ms / 1000.0);
        }
    }
    s
}
