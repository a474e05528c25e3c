//! `[[vip]]` and its `[[vip.backend]]`s.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    capacity::MAGLEV_MAX_TABLE_SIZE,
    maglev::{default_table_size, is_prime},
    quic::{MAX_CID_LEN, MAX_SERVER_ID_LEN},
    session::{MAX_KEY_LEN, MAX_KEY_OFFSET, SessionKey},
};
use toml::Spanned;

use super::{Validator, address, hex, name};
use crate::config::{
    AdminState, Admission, Backend, DEFAULT_MAX_EJECTED_PERCENT, FailureMode, Forwarding, MAX_WEIGHT, Named as _,
    Protocol, SLOW_START_SECS, Scheduler, VIP_UDP_IDLE_TIMEOUT_SECS, Vip, raw,
};

impl Validator<'_> {
    pub(super) fn vip(&mut self, raw: &raw::Vip, field: &str) -> Option<Vip> {
        let name = self.check(&raw.name, &format!("{field}.name"), |s| name(s));
        let vip_address = self.check(&raw.address, &format!("{field}.address"), |s| address(s));
        let port = self.check(&raw.port, &format!("{field}.port"), |p| {
            u16::try_from(*p).map_err(|_| format!("{p} is out of range 0..=65535 (0 serves every port)"))
        });
        let protocol = self.check(&raw.protocol, &format!("{field}.protocol"), |s| Protocol::parse(s));
        let max_prefix: u8 = if vip_address.is_some_and(|a| a.is_ipv6()) { 128 } else { 32 };
        let scheduler = self.scheduler(raw, field, max_prefix);
        let forwarding =
            self.optional(&raw.forwarding, &format!("{field}.forwarding"), Forwarding::Ipip, |s| Forwarding::parse(s));
        // Without a size, the VIP's table gets one from its backends (below).
        let table_size =
            self.optional(&raw.table_size, &format!("{field}.table_size"), None, |n| table_size(*n).map(Some));
        let failure_mode = self.optional(&raw.failure_mode, &format!("{field}.failure_mode"), FailureMode::Open, |s| {
            FailureMode::parse(s)
        });
        let max_ejected_percent = self.ranged(
            &raw.max_ejected_percent,
            &format!("{field}.max_ejected_percent"),
            0..101,
            i64::from(DEFAULT_MAX_EJECTED_PERCENT),
        );
        let slow_start_secs =
            self.ranged(&raw.slow_start_secs, &format!("{field}.slow_start_secs"), SLOW_START_SECS, 0);
        let new_flow_budget =
            self.ranged(&raw.new_flow_budget, &format!("{field}.new_flow_budget"), 0..1_000_000_001, 0);
        let vip_port = *raw.port.get_ref();
        let vip_health = match &raw.health {
            None => Some(None),
            Some(h) => self.health(h, &format!("{field}.health"), vip_port).map(Some),
        };
        let admission = match &raw.admission {
            None => Some(Admission::default()),
            Some(a) => self.admission(a, &format!("{field}.admission"), vip_address),
        };
        let route = match &raw.bgp {
            None => Some(crate::config::bgp::RouteAttributes::default()),
            Some(b) => self.route_attributes(b.get_ref(), &format!("{field}.bgp")),
        };
        let udp_idle_timeout_secs = match &raw.udp_idle_timeout_secs {
            None => Some(None),
            Some(t) if raw.protocol.get_ref() != "udp" => {
                self.problem(t.span(), &format!("{field}.udp_idle_timeout_secs"), "applies only to a udp VIP".into());
                None
            }
            Some(t) => self.check(t, &format!("{field}.udp_idle_timeout_secs"), |n| {
                if VIP_UDP_IDLE_TIMEOUT_SECS.contains(n) {
                    Ok(Some(*n as u16))
                } else {
                    Err(format!(
                        "{n} is out of range {}..={}",
                        VIP_UDP_IDLE_TIMEOUT_SECS.start,
                        VIP_UDP_IDLE_TIMEOUT_SECS.end - 1
                    ))
                }
            }),
        };
        let quic = match &raw.quic {
            None => Some(None),
            Some(q) => self.quic(q, raw, &format!("{field}.quic")).map(Some),
        };
        let session_key = match (&raw.session_key, quic) {
            (Some(k), Some(Some(_))) => {
                self.problem(
                    k.span(),
                    &format!("{field}.session_key"),
                    "does not go with [vip.quic]: a VIP keys its sessions one way".into(),
                );
                None
            }
            (Some(k), _) => self.session_key(k, raw, &format!("{field}.session_key")),
            (None, Some(Some(quic))) => Some(quic),
            (None, _) => Some(SessionKey::NONE),
        };
        // A QUIC VIP whose [vip.quic] is wrong has its problem told; its backends' ids are not
        // checked against it.
        let quic_len = match (&raw.quic, quic.flatten()) {
            (None, _) => QuicIds::NotQuic,
            (Some(_), None) => QuicIds::Unchecked,
            (Some(_), Some(q)) => QuicIds::Length(usize::from(q.length)),
        };
        let backends = self.backends(&raw.backend, field, vip_port, quic_len);
        let table_size = table_size.map(|size| size.unwrap_or_else(|| default_table_size(raw.backend.len())));
        if let Some(size) = table_size
            && backends.len() as u64 > u64::from(size)
        {
            self.problem(
                raw.backend[0].span(),
                &format!("{field}.backend"),
                format!("{} backends do not fit a table of {size} entries", backends.len()),
            );
        }
        Some(Vip {
            name: name?,
            address: vip_address?,
            port: port?,
            protocol: protocol?,
            scheduler: scheduler?,
            forwarding: forwarding?,
            table_size: table_size?,
            failure_mode: failure_mode?,
            max_ejected_percent: max_ejected_percent? as u8,
            slow_start: std::time::Duration::from_secs(slow_start_secs? as u64),
            new_flow_budget: new_flow_budget? as u32,
            admission: admission?,
            route: route?,
            session_key: session_key?,
            udp_idle_timeout_secs: udp_idle_timeout_secs?,
            health: vip_health?,
            backends,
        })
    }

    /// `[vip.quic]` of a UDP VIP: where its backends' server ids are in their connection ids.
    fn quic(&mut self, raw: &Spanned<raw::Quic>, vip: &raw::Vip, field: &str) -> Option<SessionKey> {
        let q = raw.get_ref();
        if vip.protocol.get_ref() != "udp" {
            self.problem(raw.span(), field, "applies only to a udp VIP (QUIC runs over UDP)".into());
        }
        let length =
            self.check(&q.server_id_length, &format!("{field}.server_id_length"), |n| match u8::try_from(*n) {
                Ok(l) if (1..=MAX_SERVER_ID_LEN as u8).contains(&l) => Ok(l),
                _ => Err(format!("{n} is out of range 1..={MAX_SERVER_ID_LEN}")),
            });
        let offset = self.check(&q.server_id_offset, &format!("{field}.server_id_offset"), |n| {
            let max = MAX_CID_LEN as i64 - i64::from(length.unwrap_or(1));
            match u8::try_from(*n) {
                Ok(o) if i64::from(o) <= max => Ok(o),
                _ => Err(format!(
                    "{n} is out of range 0..={max} (the server id must end within a connection id of {MAX_CID_LEN} bytes)"
                )),
            }
        });
        Some(SessionKey::quic(offset?, length?))
    }

    /// `[vip.session_key]` of a UDP VIP whose scheduler looks at flows (not a source hash).
    fn session_key(&mut self, raw: &Spanned<raw::SessionKey>, vip: &raw::Vip, field: &str) -> Option<SessionKey> {
        let k = raw.get_ref();
        if vip.protocol.get_ref() != "udp" {
            self.problem(raw.span(), field, "applies only to a udp VIP (a TCP connection has its own 5-tuple)".into());
        }
        if vip.scheduler.as_ref().is_some_and(|s| s.get_ref() == "source-hash") {
            self.problem(
                raw.span(),
                field,
                "does not go with scheduler = \"source-hash\", which balances by the client's address".into(),
            );
        }
        let offset = self.check(&k.offset, &format!("{field}.offset"), |n| match u16::try_from(*n) {
            Ok(o) if o <= MAX_KEY_OFFSET => Ok(o),
            _ => Err(format!("{n} is out of range 0..={MAX_KEY_OFFSET}")),
        });
        let length = self.check(&k.length, &format!("{field}.length"), |n| match usize::try_from(*n) {
            Ok(l) if (1..=MAX_KEY_LEN).contains(&l) => Ok(l),
            _ => Err(format!("{n} is out of range 1..={MAX_KEY_LEN}")),
        });
        let mask = match (&k.mask_hex, length) {
            (None, _) => Some([0xff; MAX_KEY_LEN]),
            (Some(m), Some(length)) => self.check(m, &format!("{field}.mask_hex"), |m| {
                let bytes = hex(m)?;
                if bytes.len() != length {
                    return Err(format!("has {} bytes; the key has {length}", bytes.len()));
                }
                let mut mask = [0u8; MAX_KEY_LEN];
                mask[..length].copy_from_slice(&bytes);
                Ok(mask)
            }),
            (Some(_), None) => None,
        };
        Some(SessionKey::new(offset?, length? as u8, mask?))
    }

    /// The scheduler and, for a source hash, its prefix length (the whole address of a family of
    /// `max_prefix` bits unless `source_prefix_len` says otherwise).
    fn scheduler(&mut self, raw: &raw::Vip, field: &str, max_prefix: u8) -> Option<Scheduler> {
        let scheduler =
            self.optional(
                &raw.scheduler,
                &format!("{field}.scheduler"),
                Scheduler::Maglev,
                |s| match Scheduler::parse(s)? {
                    Scheduler::SourceHash { .. } => Ok(Scheduler::SourceHash { prefix_len: max_prefix }),
                    other => Ok(other),
                },
            );
        if scheduler == Some(Scheduler::LeastResponseTime)
            && raw.health.is_none()
            && let Some(s) = &raw.scheduler
        {
            self.problem(
                s.span(),
                &format!("{field}.scheduler"),
                "least-response-time needs a [vip.health] check to measure response times".into(),
            );
        }
        match (&raw.source_prefix_len, scheduler) {
            (None, s) => s,
            (Some(p), Some(Scheduler::SourceHash { .. })) => self
                .check(p, &format!("{field}.source_prefix_len"), |n| {
                    u8::try_from(*n)
                        .ok()
                        .filter(|n| *n <= max_prefix)
                        .ok_or_else(|| format!("{n} is out of range 0..={max_prefix}"))
                })
                .map(|prefix_len| Scheduler::SourceHash { prefix_len }),
            (Some(p), Some(_)) => {
                self.problem(
                    p.span(),
                    &format!("{field}.source_prefix_len"),
                    "applies only to scheduler = \"source-hash\"".into(),
                );
                None
            }
            (Some(_), None) => None,
        }
    }

    /// The VIP's backends that are valid, each address once.
    /// `quic_len`: whether the VIP is a QUIC VIP, and its server id length, which every
    /// backend's `quic_server_id` has.
    fn backends(
        &mut self,
        raw: &[Spanned<raw::Backend>],
        field: &str,
        vip_port: i64,
        quic_len: QuicIds,
    ) -> Vec<Backend> {
        let mut backends = Vec::new();
        let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut server_ids: BTreeMap<[u8; 8], usize> = BTreeMap::new();
        for (i, b) in raw.iter().enumerate() {
            let bfield = format!("{field}.backend[{i}]");
            let b = b.get_ref();
            let backend_address = self.check(&b.address, &format!("{bfield}.address"), |s| address(s));
            if let Some(a) = backend_address
                && let Some(first) = seen.insert(a, i)
            {
                self.problem(
                    b.address.span(),
                    &format!("{bfield}.address"),
                    format!("{a} is already {field}.backend[{first}]"),
                );
            }
            let weight = self.optional(&b.weight, &format!("{bfield}.weight"), 1, |w| {
                if (0..=MAX_WEIGHT).contains(w) {
                    Ok(*w as u32)
                } else {
                    Err(format!("{w} is out of range 0..={MAX_WEIGHT} (0 = no new flows)"))
                }
            });
            let state = self.optional(&b.state, &format!("{bfield}.state"), AdminState::Up, |s| AdminState::parse(s));
            let health = match &b.health {
                None => Some(None),
                Some(h) => self.health(h, &format!("{bfield}.health"), vip_port).map(Some),
            };
            let quic_field = format!("{bfield}.quic_server_id");
            let quic_server_id = match (&b.quic_server_id, quic_len) {
                (None, QuicIds::NotQuic) => Some(None),
                (Some(v), QuicIds::NotQuic) => {
                    self.problem(v.span(), &quic_field, "applies only to a VIP with [vip.quic]".into());
                    None
                }
                (None, _) => {
                    self.problem(
                        raw[i].span(),
                        &bfield,
                        "a QUIC VIP's backend needs `quic_server_id`, the server id it puts in its connection ids"
                            .into(),
                    );
                    None
                }
                (Some(_), QuicIds::Unchecked) => None,
                (Some(v), QuicIds::Length(len)) => self.check(v, &quic_field, |s| {
                    let bytes = hex(s)?;
                    if bytes.len() != len {
                        return Err(format!("has {} bytes; the VIP's server_id_length is {len}", bytes.len()));
                    }
                    let mut id = [0u8; 8];
                    id[..len].copy_from_slice(&bytes);
                    Ok(Some(id))
                }),
            };
            if let (Some(Some(id)), Some(v)) = (quic_server_id, &b.quic_server_id)
                && let Some(first) = server_ids.insert(id, i)
            {
                self.problem(v.span(), &quic_field, format!("is already {field}.backend[{first}]'s"));
            }
            if let (Some(address), Some(weight), Some(state), Some(health), Some(quic_server_id)) =
                (backend_address, weight, state, health, quic_server_id)
            {
                backends.push(Backend { address, weight, state, health, quic_server_id });
            }
        }
        backends
    }
}

/// What a VIP's backends' `quic_server_id`s are checked against.
#[derive(Clone, Copy)]
enum QuicIds {
    /// Not a QUIC VIP: they have none.
    NotQuic,
    /// A QUIC VIP whose `[vip.quic]` has a problem (told already): not checked.
    Unchecked,
    /// A QUIC VIP's server id length.
    Length(usize),
}

/// A Maglev table size: a prime the data plane supports.
fn table_size(n: i64) -> Result<u32, String> {
    let Ok(size) = u32::try_from(n) else {
        return Err(format!("{n} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}"));
    };
    if !(3..=MAGLEV_MAX_TABLE_SIZE).contains(&size) {
        Err(format!("{n} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}"))
    } else if !is_prime(size) {
        Err(format!("{n} is not a prime; use a prime such as 251, 1021, 4093, 16381 or 65537"))
    } else {
        Ok(size)
    }
}
