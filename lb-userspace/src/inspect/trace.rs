//! `lb trace`: which backend a flow goes to now, and why, computed from the pinned maps with the
//! data plane's own code (VIP lookup, flow hash, Maglev slot, least-connections choice).

use std::net::IpAddr;

use lb_common::{
    addr::{from_key, to_key},
    backend::Backend,
    flow::{FlowKey, flow_hash, source_hash},
    least_connections::{TOLERANCE_DENOMINATOR, TOLERANCE_NUMERATOR, candidates, second_wins},
    maglev::table_slot,
    quic::QuicServerKey,
    session::{self, SessionKey, session_flow},
    vip::{VipInfo, find_vip, scheduler},
};
use serde::Serialize;

use crate::{
    config::Protocol,
    dataplane::{BalancerMaps, DataplaneError},
    label::{show_hex, show_vip},
};

#[derive(Debug, Serialize)]
pub struct Trace {
    pub vip: Option<String>,
    pub backend: Option<String>,
    pub why: String,
    pub flow_hash: u32,
    /// The session key read from the payload (hexadecimal), for a VIP with a session key.
    pub session_key: Option<String>,
}

/// Where the data plane sends this flow now, and why; `payload` (the UDP payload) matters for
/// a VIP with a session key.
pub fn trace(
    maps: &BalancerMaps,
    protocol: Protocol,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: Option<&[u8]>,
) -> Result<Trace, DataplaneError> {
    let (family, s) = to_key(src);
    let (_, d) = to_key(dst);
    if src.is_ipv4() != dst.is_ipv4() {
        return Ok(Trace {
            vip: None,
            backend: None,
            why: "source and destination are of different families".into(),
            flow_hash: 0,
            session_key: None,
        });
    }
    let five_tuple = FlowKey::new(family, protocol.number(), s, sport, d, dport);
    let config = maps.config.get(&0, 0)?;
    let hash_key = config.flow_hash_key;
    let matched = find_vip(&five_tuple, |k| maps.vips.get(k, 0).ok().map(|v| (*k, v)));
    // As the data plane: a datagram to a VIP with a session key goes by its session, if its
    // payload holds the key.
    let spec = match matched {
        Some((_, v)) if protocol == Protocol::Udp => Some(maps.session_keys.get(&v.index, 0)?),
        _ => None,
    }
    .filter(SessionKey::is_some);
    let mut session_key = None;
    if let (Some(spec), Some(payload), Some((vip_key, vip))) = (spec, payload, matched)
        && config.session_keys != 0
        && spec.kind == session::kind::QUIC_SERVER_ID
        && let Some(server_id) = spec.quic_server_id(payload)
    {
        let hex = show_hex(&server_id[..usize::from(spec.length)]);
        if let Ok(id) = maps.quic_servers.get(&QuicServerKey::new(vip.index, server_id), 0) {
            let b = maps.backends.get(&id, 0)?;
            if b.keeps_flows() {
                return Ok(Trace {
                    vip: Some(show_vip(&vip_key)),
                    backend: Some(from_key(b.family, &b.addr).to_string()),
                    why: format!(
                        "QUIC short header: server id {hex} names backend id {id}, and its 5-tuple goes there"
                    ),
                    flow_hash: lb_common::quic::client_hash(&five_tuple),
                    session_key: Some(hex),
                });
            }
        }
        session_key = Some(hex);
    }
    let key = match (spec, payload) {
        (Some(spec), _) if spec.kind == session::kind::QUIC_SERVER_ID => five_tuple,
        (Some(_), _) if config.session_keys == 0 => five_tuple,
        (Some(_), None) => {
            return Ok(Trace {
                vip: matched.map(|(k, _)| show_vip(&k)),
                backend: None,
                why: "the VIP balances by a session key in the payload: give the datagram's payload (--payload HEX)"
                    .into(),
                flow_hash: 0,
                session_key: None,
            });
        }
        (Some(spec), Some(payload)) => match spec.extract(payload) {
            Some(bytes) => {
                session_key = Some(show_hex(&bytes[..usize::from(spec.length)]));
                session_flow(bytes, &five_tuple, &hash_key)
            }
            None => five_tuple,
        },
        (None, _) => five_tuple,
    };
    let hash = flow_hash(&key, &hash_key);
    // As the data plane: the flow table first, whose entry stands while its backend takes flows
    // and still serves the VIP the flow was scheduled for.
    if let Some(entry) = maps.flow(&key) {
        let b = maps.backends.get(&u32::from(entry.backend), 0)?;
        let idle_ns = entry.idle_ns(crate::dataplane::monotonic_coarse_ns());
        let expired = protocol == Protocol::Udp && idle_ns > b.udp_idle_timeout_ns(config.udp_idle_timeout_ns);
        if b.keeps_flows() && b.vip_tag == entry.vip_tag && !expired {
            return Ok(Trace {
                vip: matched.map(|(k, _)| show_vip(&k)),
                backend: Some(from_key(b.family, &b.addr).to_string()),
                why: format!("flow-table entry (backend id {}); table changes do not move it", entry.backend),
                flow_hash: entry.hash,
                session_key,
            });
        }
    }
    let Some((vip_key, vip)) = matched else {
        return Ok(Trace {
            vip: None,
            backend: None,
            why: "no VIP matches: passed to the kernel (pass_not_vip)".into(),
            flow_hash: hash,
            session_key: None,
        });
    };
    let vip_name = Some(show_vip(&vip_key));
    let mut trace = new_flow(maps, vip_name, &vip, &key, hash, &hash_key)?;
    if let Some(spec) = spec
        && spec.kind == session::kind::QUIC_SERVER_ID
    {
        trace.why = match &session_key {
            Some(id) => format!("QUIC server id {id} names no backend that takes flows: by the 5-tuple; {}", trace.why),
            None => format!("QUIC long header (or too short for a server id): by the 5-tuple; {}", trace.why),
        };
    } else if spec.is_some() && session_key.is_none() && config.session_keys != 0 {
        trace.why = format!(
            "the payload ends before the session key: balanced by its 5-tuple (counted as a session key miss); {}",
            trace.why
        );
    }
    trace.session_key = session_key;
    Ok(trace)
}

fn new_flow(
    maps: &BalancerMaps,
    vip: Option<String>,
    info: &VipInfo,
    key: &FlowKey,
    hash: u32,
    hash_key: &lb_common::flow::HashKey,
) -> Result<Trace, DataplaneError> {
    if info.table_size == 0 {
        return Ok(Trace {
            vip,
            backend: None,
            why: "the VIP has no backend: dropped (drop_no_backend)".into(),
            flow_hash: hash,
            session_key: None,
        });
    }
    let (slot, how) = match info.scheduler {
        scheduler::SEQUENCE => {
            let why =
                format!("round robin: a new flow takes the next of {} entries in its CPU's turn", info.table_size);
            return Ok(Trace { vip, backend: None, why, flow_hash: hash, session_key: None });
        }
        scheduler::SOURCE_HASH => {
            let h = source_hash(key, info.source_prefix_len, hash_key);
            (
                table_slot(h, info.table_size),
                format!("source hash of the client's first {} bits {h:#010x}", info.source_prefix_len),
            )
        }
        scheduler::LEAST_CONNECTIONS => return least_connections(maps, vip, info, hash),
        _ => (table_slot(hash, info.table_size), format!("flow hash {hash:#010x}")),
    };
    let table = maps.live_table(info)?;
    let id = table[slot as usize];
    let b = maps.backends.get(&id, 0)?;
    Ok(Trace {
        vip,
        backend: Some(from_key(b.family, &b.addr).to_string()),
        why: format!("new flow: {how}, Maglev slot {slot} of {} -> backend id {id}", info.table_size),
        flow_hash: hash,
        session_key: None,
    })
}

/// A new flow under least connections: the two candidates and their loads right now.
fn least_connections(
    maps: &BalancerMaps,
    vip: Option<String>,
    info: &VipInfo,
    hash: u32,
) -> Result<Trace, DataplaneError> {
    let table = maps.live_table(info)?;
    let at = |slot: u32| table.get(slot as usize).copied();
    let Some((first, second)) = candidates(hash, info.table_size, at) else {
        return Ok(Trace {
            vip,
            backend: None,
            why: "the VIP's table is unreadable".into(),
            flow_hash: hash,
            session_key: None,
        });
    };
    let load = |id: u32| -> Result<(Backend, u64), DataplaneError> {
        Ok((maps.backends.get(&id, 0)?, maps.active_flows(id)?.max(0) as u64))
    };
    let (a, a_active) = load(first)?;
    let name = |b: &Backend| from_key(b.family, &b.addr).to_string();
    let (winner, why) = match second {
        None => (a, format!("least connections: every draw met backend id {first}, which takes the flow")),
        Some(second) => {
            let (b, b_active) = load(second)?;
            let wins = second_wins(a_active, a.weight, b_active, b.weight);
            let why = format!(
                "least connections: candidates {} ({a_active} active, weight {}) and {} ({b_active} active, weight {}); {}",
                name(&a),
                a.weight,
                name(&b),
                b.weight,
                if wins {
                    format!(
                        "the first (the Maglev choice) has more than {TOLERANCE_NUMERATOR}/{TOLERANCE_DENOMINATOR} of \
                         the second's per unit of weight: the second takes the flow"
                    )
                } else {
                    format!(
                        "the first (the Maglev choice) has at most {TOLERANCE_NUMERATOR}/{TOLERANCE_DENOMINATOR} of the \
                         second's per unit of weight and takes the flow"
                    )
                }
            );
            (if wins { b } else { a }, why)
        }
    };
    Ok(Trace { vip, backend: Some(name(&winner)), why: format!("new flow: {why}"), flow_hash: hash, session_key: None })
}
