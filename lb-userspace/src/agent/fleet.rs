//! Comparing the balancers of a fleet. Every member builds its tables from the same
//! configuration and the same health, so every VIP's table fingerprint should be equal on all of
//! them; where one differs, the members' backend sets, effective weights, table sizes and
//! schedulers say why. A member's view comes from its control socket ([`Status`]) or from its
//! Prometheus endpoint (`lb_vip_table_info`, `lb_backend_effective_weight`).

use std::{collections::BTreeMap, net::IpAddr};

use super::status::Status;

/// One VIP as one member has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipView {
    /// The live table's fingerprint; `None` if the member has no table for it.
    pub fingerprint: Option<String>,
    pub table_size: Option<u32>,
    pub scheduler: Option<String>,
    /// Backend -> effective weight (0: takes no new flows).
    pub backends: BTreeMap<IpAddr, u32>,
}

/// One member of the fleet: its name (where it was read from) and its VIPs by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub vips: BTreeMap<String, VipView>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FleetError {
    #[error("{member}: line {line} of the metrics: {problem}")]
    Metrics { member: String, line: usize, problem: String },
    #[error("{member}: its metrics have no lb_vip_table_info (an agent older than this lb, or not an lb agent)")]
    NoTableInfo { member: String },
}

impl MemberView {
    /// The view in an agent's status.
    pub fn from_status(name: &str, status: &Status) -> Self {
        let mut vips: BTreeMap<String, VipView> = status
            .vips
            .iter()
            .map(|v| {
                let view = VipView {
                    fingerprint: v.fingerprint.clone(),
                    table_size: Some(v.table_size),
                    scheduler: Some(v.scheduler.clone()),
                    backends: BTreeMap::new(),
                };
                (v.name.clone(), view)
            })
            .collect();
        for b in &status.backends {
            if let Some(vip) = vips.get_mut(&b.decision.vip) {
                vip.backends.insert(b.decision.address, b.decision.effective_weight);
            }
        }
        Self { name: name.to_string(), vips }
    }

    /// The view in an agent's Prometheus exposition.
    pub fn from_metrics(name: &str, text: &str) -> Result<Self, FleetError> {
        let mut view = Self { name: name.to_string(), vips: BTreeMap::new() };
        let mut saw_info = false;
        for (index, line) in text.lines().enumerate() {
            let problem = |problem: &str| FleetError::Metrics {
                member: name.to_string(),
                line: index + 1,
                problem: problem.to_string(),
            };
            let (metric, labels, value) = if let Some(sample) = sample(line) {
                sample.map_err(&problem)?
            } else {
                continue;
            };
            match metric {
                "lb_vip_table_info" => {
                    saw_info = true;
                    let vip =
                        view.vips.entry(label(&labels, "vip").ok_or_else(|| problem("no vip label"))?).or_default();
                    vip.fingerprint = label(&labels, "fingerprint");
                    vip.table_size = label(&labels, "table_size").and_then(|s| s.parse().ok());
                    vip.scheduler = label(&labels, "scheduler");
                }
                "lb_backend_effective_weight" => {
                    let vip = label(&labels, "vip").ok_or_else(|| problem("no vip label"))?;
                    let backend: IpAddr = label(&labels, "backend")
                        .and_then(|b| b.parse().ok())
                        .ok_or_else(|| problem("no backend address label"))?;
                    let weight: u32 = value.parse().map_err(|_| problem("the weight is not a whole number"))?;
                    view.vips.entry(vip).or_default().backends.insert(backend, weight);
                }
                _ => {}
            }
        }
        if saw_info { Ok(view) } else { Err(FleetError::NoTableInfo { member: name.to_string() }) }
    }
}

/// A sample line of the exposition: the metric, its labels, its value.
type Sample<'a> = (&'a str, Vec<(String, String)>, &'a str);

/// One sample line of the exposition; `None` for comments and blank lines, an error for what is
/// not a sample.
fn sample(line: &str) -> Option<Result<Sample<'_>, &'static str>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let parsed = (|| {
        let (head, value) = line.rsplit_once(' ').ok_or("no value")?;
        let Some((metric, rest)) = head.split_once('{') else { return Ok((head, Vec::new(), value)) };
        let body = rest.strip_suffix('}').ok_or("labels not closed")?;
        let mut labels = Vec::new();
        for pair in body.split(',').filter(|p| !p.is_empty()) {
            let (key, quoted) = pair.split_once('=').ok_or("a label without a value")?;
            let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).ok_or("a label value not quoted")?;
            labels.push((key.to_string(), inner.to_string()));
        }
        Ok((metric, labels, value))
    })();
    Some(parsed)
}

fn label(labels: &[(String, String)], key: &str) -> Option<String> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// What differs for one VIP across the members.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    pub vip: String,
    /// Why, in words: the first member compared with each other.
    pub reasons: Vec<String>,
}

/// The VIPs whose tables are not the same on every member, and why. The first member is the
/// reference the others are compared with.
pub fn diff(members: &[MemberView]) -> Vec<Difference> {
    let Some((reference, others)) = members.split_first() else { return Vec::new() };
    let names: std::collections::BTreeSet<&String> = members.iter().flat_map(|m| m.vips.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let mut reasons = Vec::new();
        let Some(base) = reference.vips.get(name) else {
            reasons.push(format!("not on {}", reference.name));
            out.push(Difference { vip: name.clone(), reasons });
            continue;
        };
        for other in others {
            let Some(view) = other.vips.get(name) else {
                reasons.push(format!("not on {}", other.name));
                continue;
            };
            reasons.extend(compare(base, view, &reference.name, &other.name));
        }
        if !reasons.is_empty() {
            out.push(Difference { vip: name.clone(), reasons });
        }
    }
    out
}

/// Why `b` (on member `bn`) differs from `a` (on member `an`); nothing if their tables are the
/// same.
fn compare(a: &VipView, b: &VipView, an: &str, bn: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    for (address, weight) in &a.backends {
        match b.backends.get(address) {
            None => reasons.push(format!("backend {address} on {an}, not on {bn}")),
            Some(w) if w != weight => reasons.push(format!("backend {address} weight {weight} on {an}, {w} on {bn}")),
            Some(_) => {}
        }
    }
    for address in b.backends.keys().filter(|a2| !a.backends.contains_key(*a2)) {
        reasons.push(format!("backend {address} on {bn}, not on {an}"));
    }
    if a.table_size != b.table_size {
        reasons.push(format!("table size {} on {an}, {} on {bn}", show(a.table_size), show(b.table_size)));
    }
    if a.scheduler != b.scheduler {
        reasons.push(format!(
            "scheduler {} on {an}, {} on {bn}",
            show(a.scheduler.as_ref()),
            show(b.scheduler.as_ref())
        ));
    }
    if a.fingerprint != b.fingerprint && reasons.is_empty() {
        reasons.push(format!(
            "tables differ (fingerprint {} on {an}, {} on {bn}) with the same backends, weights, size and \
             scheduler: a different table builder (version) or flow hash key",
            show(a.fingerprint.as_ref()),
            show(b.fingerprint.as_ref())
        ));
    }
    reasons
}

fn show(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP lb_vip_table_info x\n# TYPE lb_vip_table_info gauge\n\
        lb_vip_table_info{vip=\"web\",fingerprint=\"6d046e7b\",table_size=\"65537\",scheduler=\"maglev\"} 1\n\
        lb_backend_effective_weight{vip=\"web\",backend=\"198.18.0.21\"} 1\n\
        lb_backend_effective_weight{vip=\"web\",backend=\"198.18.0.22\"} 2\n\
        lb_backend_healthy{vip=\"web\",backend=\"198.18.0.22\"} 1\nlb_up 1\n";

    fn member(name: &str, text: &str) -> MemberView {
        MemberView::from_metrics(name, text).unwrap()
    }

    #[test]
    fn a_member_is_read_from_its_metrics() {
        let m = member("a", METRICS);
        let web = &m.vips["web"];
        assert_eq!(web.fingerprint.as_deref(), Some("6d046e7b"));
        assert_eq!((web.table_size, web.scheduler.as_deref()), (Some(65537), Some("maglev")));
        assert_eq!(web.backends.values().copied().collect::<Vec<_>>(), vec![1, 2]);
        let e = MemberView::from_metrics("b", "lb_up 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "b: its metrics have no lb_vip_table_info (an agent older than this lb, or not an lb agent)"
        );
        let e = MemberView::from_metrics("c", "lb_vip_table_info{vip=web} 1\n").unwrap_err();
        assert_eq!(e.to_string(), "c: line 1 of the metrics: a label value not quoted");
    }

    #[test]
    fn identical_members_differ_in_nothing() {
        assert_eq!(diff(&[member("a", METRICS), member("b", METRICS)]), vec![]);
    }

    #[test]
    fn differences_say_why() {
        let removed = METRICS
            .replace("lb_backend_effective_weight{vip=\"web\",backend=\"198.18.0.22\"} 2\n", "")
            .replace("6d046e7b", "0badf00d");
        let d = diff(&[member("a", METRICS), member("b", &removed)]);
        assert_eq!(
            d,
            vec![Difference { vip: "web".into(), reasons: vec!["backend 198.18.0.22 on a, not on b".into()] }]
        );
        let reweighted = METRICS.replace("198.18.0.22\"} 2", "198.18.0.22\"} 3").replace("\"65537\"", "\"251\"");
        let d = diff(&[member("a", METRICS), member("b", &reweighted)]);
        assert_eq!(
            d[0].reasons,
            vec![
                "backend 198.18.0.22 weight 2 on a, 3 on b".to_string(),
                "table size 65537 on a, 251 on b".to_string()
            ]
        );
        let rehashed = METRICS.replace("6d046e7b", "0badf00d");
        let d = diff(&[member("a", METRICS), member("b", &rehashed)]);
        assert!(d[0].reasons[0].starts_with("tables differ (fingerprint 6d046e7b on a, 0badf00d on b)"), "{d:?}");
        let other_vip = METRICS.replace("vip=\"web\"", "vip=\"dns\"");
        let d = diff(&[member("a", METRICS), member("b", &other_vip)]);
        assert_eq!(
            d,
            vec![
                Difference { vip: "dns".into(), reasons: vec!["not on a".into()] },
                Difference { vip: "web".into(), reasons: vec!["not on b".into()] },
            ]
        );
    }
}
