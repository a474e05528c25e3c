//! Prometheus metrics over HTTP on a local address, at `/metrics` only (anything else is 404):
//! the data plane's counters from the pinned maps, and the agent's health, weights, tables and
//! announcements. Each scrape builds a registry of the `prometheus` crate from one status and one
//! snapshot of the maps, and its text encoder writes the exposition; axum serves it.

use axum::{
    Router,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder as _, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

use super::{
    control::{self, ControlSender},
    status::Status,
};
use crate::{dataplane::PinDir, inspect::PinnedStats, reconcile::policy::HealthState};

pub async fn serve(listener: TcpListener, requests: ControlSender, pins: PinDir) {
    let app = Router::new()
        .route("/metrics", get(move || scrape(requests.clone(), pins.clone())))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the agent serves /metrics only\n") });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the metrics server stopped: {e}");
    }
}

async fn scrape(requests: ControlSender, pins: PinDir) -> Response {
    let status = control::status(&requests).await;
    // Reading the pinned maps is a few syscalls per VIP and backend: off the async threads.
    let rendered = tokio::task::spawn_blocking(move || render(&pins, status.as_ref())).await;
    match rendered {
        Ok(Ok(text)) => ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the metrics: {e}\n")).into_response(),
    }
}

/// A registry being filled for one scrape.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn real_gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
        let g = GaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

/// Gauges hold signed values; counts past `i64::MAX` read as that.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn render(pins: &PinDir, status: Option<&Status>) -> prometheus::Result<String> {
    let m = Scrape { registry: Registry::new() };
    m.gauge("lb_up", "1 while the agent answers.", &[])?.with_label_values(&[] as &[&str]).set(1);
    if let Ok(snapshot) = PinnedStats::open(pins).and_then(|p| p.snapshot()) {
        for (metric, what, rows, label) in
            [("lb_vip", "VIP", &snapshot.vips, "vip"), ("lb_backend", "backend", &snapshot.backends, "backend")]
        {
            let packets = m.counter(&format!("{metric}_packets_total"), &format!("Packets per {what}."), &[label])?;
            let bytes = m.counter(&format!("{metric}_bytes_total"), &format!("Bytes per {what}."), &[label])?;
            let flows = m.counter(&format!("{metric}_new_flows_total"), &format!("New flows per {what}."), &[label])?;
            for r in rows {
                packets.with_label_values(&[&r.name]).inc_by(r.packets);
                bytes.with_label_values(&[&r.name]).inc_by(r.bytes);
                flows.with_label_values(&[&r.name]).inc_by(r.new_flows);
            }
        }
        let reasons = m.counter("lb_reason_packets_total", "Packets by verdict reason.", &["reason"])?;
        for r in &snapshot.reasons {
            reasons.with_label_values(&[r.reason]).inc_by(r.packets);
        }
    }
    if let Some(status) = status {
        agent(&m, status)?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&m.registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The agent's own metrics, from its status.
fn agent(m: &Scrape, status: &Status) -> prometheus::Result<()> {
    m.gauge("lb_table_generation", "Changes applied to the data plane since the agent started.", &[])?
        .with_label_values(&[] as &[&str])
        .set(signed(status.generation));
    let d = &status.data_plane;
    m.gauge(
        "lb_data_plane_healthy",
        "1 if every interface runs this agent's program from its pinned link, its maps are pinned, and no \
         interface failed to transmit XDP frames in the last 10 s.",
        &[],
    )?
    .with_label_values(&[] as &[&str])
    .set(i64::from(d.problem.is_none() && d.delivery_problem.is_none()));
    m.counter("lb_data_plane_repairs_total", "Times the agent re-pinned maps or re-attached interfaces.", &[])?
        .with_label_values(&[] as &[&str])
        .inc_by(d.repairs);
    let transmit = m.counter(
        "lb_interface_xdp_transmit_errors_total",
        "XDP frames the interface's driver could not transmit (its ethtool statistics).",
        &["interface"],
    )?;
    for (interface, n) in &d.xdp_transmit_errors {
        transmit.with_label_values(&[interface]).inc_by(*n);
    }
    if let Some(n) = status.source_buckets {
        m.gauge("lb_source_buckets", "Client prefixes with per-source rate buckets now.", &[])?
            .with_label_values(&[] as &[&str])
            .set(signed(n as u64));
    }
    let table_info = m.gauge(
        "lb_vip_table_info",
        "1 per VIP with a table, labelled with its fingerprint, size and scheduler: equal on every balancer of a \
         fleet with the same configuration and health (`lb fleet diff` compares them).",
        &["vip", "fingerprint", "table_size", "scheduler"],
    )?;
    let flood = m.gauge(
        "lb_vip_flood_cpus",
        "CPUs on which the VIP is in flood mode (new flows get no flow-table entry).",
        &["vip"],
    )?;
    let untracked = m.counter(
        "lb_vip_untracked_flows_total",
        "New flows forwarded in flood mode without a flow-table entry.",
        &["vip"],
    )?;
    let refused = m.counter(
        "lb_vip_admission_refused_packets_total",
        "Packets the VIP's admission refused (source lists, spoofed sources, per-source rates), by reason.",
        &["vip", "reason"],
    )?;
    let session_misses = m.counter(
        "lb_vip_session_key_misses_total",
        "Datagrams to a VIP with a session key that ended before the key (balanced by their 5-tuple).",
        &["vip"],
    )?;
    let vip_active =
        m.gauge("lb_vip_active_flows", "Flows (sessions) the VIP's backends count active, summed.", &["vip"])?;
    for v in &status.vips {
        vip_active.with_label_values(&[&v.name]).set(v.active_flows);
        if let Some(key) = &v.session_key {
            session_misses.with_label_values(&[&v.name]).inc_by(key.misses);
        }
        if let Some(fingerprint) = &v.fingerprint {
            table_info.with_label_values(&[&v.name, fingerprint, &v.table_size.to_string(), &v.scheduler]).set(1);
        }
        flood.with_label_values(&[&v.name]).set(i64::from(v.flooding_cpus));
        untracked.with_label_values(&[&v.name]).inc_by(v.untracked_flows);
        for (reason, n) in &v.admission.refused {
            refused.with_label_values(&[&v.name, reason]).inc_by(*n);
        }
    }
    if let Some(bgp) = &status.bgp {
        m.gauge("lb_node_drained", "1 while `lb node drain` keeps every VIP withdrawn.", &[])?
            .with_label_values(&[] as &[&str])
            .set(i64::from(bgp.drained));
        m.gauge("lb_bgp_applied", "1 if BIRD has taken the agent's latest announcements.", &[])?
            .with_label_values(&[] as &[&str])
            .set(i64::from(bgp.applied()));
        let announced = m.gauge(
            "lb_vip_announced",
            "1 if the VIP address is announced over BGP, 0 if withdrawn (with the reason as a label).",
            &["address", "reason"],
        )?;
        for r in &bgp.routes {
            let reason = r.withdrawn.map_or("", crate::bgp::Withdrawn::label);
            announced.with_label_values(&[&r.address.to_string(), reason]).set(i64::from(r.withdrawn.is_none()));
        }
        let established = m.gauge(
            "lb_bgp_session_established",
            "1 per peer whose BGP session is Established.",
            &["peer", "address"],
        )?;
        let bfd =
            m.gauge("lb_bgp_bfd_up", "1 per peer whose BFD session is Up (absent without BFD).", &["peer", "address"])?;
        for p in &bgp.speaking.sessions {
            let labels = [p.protocol.clone(), p.address.to_string()];
            established.with_label_values(&labels).set(i64::from(p.established()));
            if let Some(state) = &p.bfd {
                bfd.with_label_values(&labels).set(i64::from(state == "Up"));
            }
        }
    }
    let healthy =
        m.gauge("lb_backend_healthy", "1 if the backend passes its checks (or has none).", &["vip", "backend"])?;
    let weight = m.gauge(
        "lb_backend_effective_weight",
        "Weight in the Maglev table after health, slow start and admin state.",
        &["vip", "backend"],
    )?;
    let active = m.gauge(
        "lb_backend_active_flows",
        "Flows counted active (least connections compares these).",
        &["vip", "backend"],
    )?;
    let latency =
        m.real_gauge("lb_health_check_latency_seconds", "Duration of the last health probe.", &["vip", "backend"])?;
    for b in &status.backends {
        let labels = [b.decision.vip.clone(), b.decision.address.to_string()];
        healthy.with_label_values(&labels).set(i64::from(b.decision.health != HealthState::Down));
        weight.with_label_values(&labels).set(i64::from(b.decision.effective_weight));
        if let Some(n) = b.active_flows {
            active.with_label_values(&labels).set(n);
        }
        if let Some(ms) = b.check_latency_ms {
            latency.with_label_values(&labels).set(ms / 1000.0);
        }
    }
    Ok(())
}
