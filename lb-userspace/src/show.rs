//! Plain-text tables for the CLI (`--json` prints the raw answers instead).

use std::fmt::Write as _;

use lb_userspace::inspect::VipPlan;
use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A VIP's flood mode: "-" without a budget, "on" (on how many CPUs) or "off".
fn flood(vip: &Value) -> String {
    match (vip["new_flow_budget"].as_u64(), vip["flooding_cpus"].as_u64()) {
        (Some(0) | None, _) => "-".into(),
        (_, Some(n)) if n > 0 => format!("on:{n}"),
        _ => "off".into(),
    }
}

/// A VIP's admission in a few words: lists, rates and refusals, or "-" if it serves everyone.
fn admission(vip: &Value) -> String {
    let a = &vip["admission"];
    let mut parts = Vec::new();
    let listed = |k: &str| a[k].as_array().map_or(0, Vec::len);
    if listed("allow") + listed("deny") > 0 {
        parts.push(format!("allow:{} deny:{}", listed("allow"), listed("deny")));
    }
    if let Some(r) = a["packets_per_second"].as_u64() {
        parts.push(format!("pps:{r}"));
    }
    if let Some(r) = a["new_flows_per_second"].as_u64() {
        parts.push(format!("flows/s:{r}"));
    }
    let refused: u64 = a["refused"].as_object().into_iter().flatten().filter_map(|(_, n)| n.as_u64()).sum();
    if refused > 0 {
        parts.push(format!("refused:{refused}"));
    }
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

pub fn vips(vips: &Value) -> String {
    let mut s = format!(
        "{:<12} {:<26} {:>6} {:<5} {:<20} {:>7} {:>9} {:<6} {:<10}  {}\n",
        "VIP", "address", "port", "proto", "scheduler", "table", "backends", "flood", "fingerprint", "admission"
    );
    for v in vips.as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "{:<12} {:<26} {:>6} {:<5} {:<20} {:>7} {:>9} {:<6} {:<10}  {}",
            text(&v["name"]),
            text(&v["address"]),
            text(&v["port"]),
            text(&v["protocol"]),
            text(&v["scheduler"]),
            text(&v["table_size"]),
            text(&v["backends"]),
            flood(v),
            text(&v["fingerprint"]),
            admission(v)
        );
    }
    s
}

pub fn backends(rows: &Value) -> String {
    let mut s = format!(
        "{:<12} {:<26} {:<9} {:<10} {:>7} {:>9} {:<8} {:>7} {:>9}  {}\n",
        "VIP", "backend", "admin", "health", "weight", "effective", "flows", "active", "check ms", "last error"
    );
    for b in rows.as_array().into_iter().flatten() {
        let flows = if b["in_table"] == true {
            "new+old"
        } else if b["keeps_flows"] == true {
            "old only"
        } else {
            "moved"
        };
        let ms = b["check_latency_ms"].as_f64().map_or("-".to_string(), |m| format!("{m:.1}"));
        let _ = writeln!(
            s,
            "{:<12} {:<26} {:<9} {:<10} {:>7} {:>9} {:<8} {:>7} {:>9}  {}",
            text(&b["vip"]),
            text(&b["address"]),
            text(&b["admin"]),
            text(&b["health"]),
            text(&b["weight"]),
            text(&b["effective_weight"]),
            flows,
            text(&b["active_flows"]),
            ms,
            text(&b["last_error"])
        );
    }
    s
}

pub fn status(status: &Value) -> String {
    let mut s = format!(
        "instance {} (config {}), data plane generation {}, flow hash key {}, {} client prefixes rate-tracked\n",
        text(&status["instance"]),
        text(&status["config"]),
        text(&status["generation"]),
        text(&status["flow_hash_key"]),
        text(&status["source_buckets"])
    );
    for w in status["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "WARNING: {}", text(w));
    }
    s += "\n";
    s += &vips(&status["vips"]);
    s += "\n";
    s += &backends(&status["backends"]);
    s
}

pub fn plan(plan: &[VipPlan]) -> String {
    let mut s = String::new();
    if plan.iter().any(|v| v.flow_hash_key_changes) {
        s += "the flow hash key changes: every new flow is hashed anew and most move to another backend; \
              flows in the flow table keep theirs. Change the key on every balancer of the fleet together.\n";
    }
    for v in plan {
        let _ = writeln!(
            s,
            "{}: {:.2}% of the hash space moves; {} of {} tracked flows move",
            v.vip,
            v.hash_space_moved * 100.0,
            v.tracked_flows_moved,
            v.tracked_flows
        );
        for (backend, (before, after)) in &v.shares {
            let _ = writeln!(s, "    {backend:<40} {:>6.2}% -> {:>6.2}%", before * 100.0, after * 100.0);
        }
    }
    s
}
