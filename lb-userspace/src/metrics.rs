//! Prometheus metrics (text exposition format) over plain HTTP on a local address: the data
//! plane's counters from the pinned maps, and the agent's health, weights and table generation.

use std::fmt::Write as _;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{agent::ControlSender, pins::PinDir, stats::PinnedStats};

pub async fn serve(listener: TcpListener, requests: ControlSender, pins: PinDir) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let requests = requests.clone();
        let pins = pins.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 2048];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut head)).await;
            let status = crate::agent::status(&requests).await.unwrap_or_default();
            let body = render(&pins, &status);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

fn render(pins: &PinDir, status: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("lb_up", "gauge", "1 while the agent answers.");
    let mut s = String::from("lb_up 1\n");
    if let Ok(snapshot) = PinnedStats::open(pins).and_then(|p| p.snapshot()) {
        for (metric, help, rows, label) in
            [("lb_vip", "VIP", &snapshot.vips, "vip"), ("lb_backend", "backend", &snapshot.backends, "backend")]
        {
            for (suffix, pick) in [("packets_total", 0usize), ("bytes_total", 1), ("new_flows_total", 2)] {
                let _ = writeln!(
                    s,
                    "# HELP {metric}_{suffix} Per-{help} {suffix} seen by the balancer.\n# TYPE {metric}_{suffix} counter"
                );
                for r in rows.iter() {
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
    let _ = writeln!(
        s,
        "# HELP lb_table_generation Changes applied to the data plane since the agent started.\n# TYPE lb_table_generation counter"
    );
    let _ = writeln!(s, "lb_table_generation {}", status["generation"].as_u64().unwrap_or(0));
    let _ = writeln!(
        s,
        "# HELP lb_backend_healthy 1 if the backend passes its checks (or has none).\n# TYPE lb_backend_healthy gauge"
    );
    let _ = writeln!(
        s,
        "# HELP lb_backend_effective_weight Weight in the Maglev table after health, slow start and admin state.\n# TYPE lb_backend_effective_weight gauge"
    );
    let _ = writeln!(
        s,
        "# HELP lb_backend_active_flows Flows counted active (least connections compares these).\n# TYPE lb_backend_active_flows gauge"
    );
    let _ = writeln!(
        s,
        "# HELP lb_health_check_latency_seconds Duration of the last health probe.\n# TYPE lb_health_check_latency_seconds gauge"
    );
    let _ = writeln!(
        s,
        "# HELP lb_vip_flood_cpus CPUs on which the VIP is in flood mode (new flows get no flow-table entry).\n# TYPE lb_vip_flood_cpus gauge"
    );
    let _ = writeln!(
        s,
        "# HELP lb_vip_untracked_flows_total New flows forwarded in flood mode without a flow-table entry.\n# TYPE lb_vip_untracked_flows_total counter"
    );
    let _ = writeln!(
        s,
        "# HELP lb_vip_admission_refused_packets_total Packets the VIP's admission refused (source lists, spoofed sources, per-source rates), by reason.\n# TYPE lb_vip_admission_refused_packets_total counter"
    );
    let _ = writeln!(
        s,
        "# HELP lb_source_buckets Client prefixes with per-source rate buckets now.\n# TYPE lb_source_buckets gauge"
    );
    if let Some(n) = status["source_buckets"].as_u64() {
        let _ = writeln!(s, "lb_source_buckets {n}");
    }
    for v in status["vips"].as_array().into_iter().flatten() {
        let labels = format!("vip=\"{}\"", v["name"].as_str().unwrap_or(""));
        let _ = writeln!(s, "lb_vip_flood_cpus{{{labels}}} {}", v["flooding_cpus"].as_u64().unwrap_or(0));
        let _ = writeln!(s, "lb_vip_untracked_flows_total{{{labels}}} {}", v["untracked_flows"].as_u64().unwrap_or(0));
        for (reason, n) in v["admission"]["refused"].as_object().into_iter().flatten() {
            let _ = writeln!(
                s,
                "lb_vip_admission_refused_packets_total{{{labels},reason=\"{reason}\"}} {}",
                n.as_u64().unwrap_or(0)
            );
        }
    }
    for b in status["backends"].as_array().into_iter().flatten() {
        let labels =
            format!("vip=\"{}\",backend=\"{}\"", b["vip"].as_str().unwrap_or(""), b["address"].as_str().unwrap_or(""));
        let healthy = u8::from(b["health"] != "down");
        let _ = writeln!(s, "lb_backend_healthy{{{labels}}} {healthy}");
        let _ = writeln!(s, "lb_backend_effective_weight{{{labels}}} {}", b["effective_weight"].as_u64().unwrap_or(0));
        if let Some(n) = b["active_flows"].as_i64() {
            let _ = writeln!(s, "lb_backend_active_flows{{{labels}}} {n}");
        }
        if let Some(ms) = b["check_latency_ms"].as_f64() {
            let _ = writeln!(s, "lb_health_check_latency_seconds{{{labels}}} {}", ms / 1000.0);
        }
    }
    out + &s
}
