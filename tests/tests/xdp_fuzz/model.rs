//! The data plane the fuzzer runs against: VIPs of both families and protocols, every
//! scheduler, admission of every kind, a session key, QUIC server ids, an empty VIP; and what the invariants need to know of it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    admission::{AdmissionPolicy, Gcra, verdict},
    backend::Backend,
    dataplane::DataplaneConfig,
    decap::unlisted_source,
    maglev::{MaglevBackend, build_table},
    sequence::{SequenceMember, smooth_sequence},
    session::SessionKey,
    vip::{VipAddrKey, VipKey, scheduler},
};
use lb_tests::packet::{Protocol, key_addr};
use lb_userspace::{
    dataplane::{Balancer, Decap},
    reconcile::{ListedPrefix, Scheduling, VipAdmission, VipTable},
};

pub struct VipModel {
    pub address: IpAddr,
    /// 0: every port.
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<IpAddr>,
    scheduler: u8,
    admission: VipAdmission,
    flood_budget: u32,
    /// Balanced by these payload bytes (`lb_common::session`), or by the 5-tuple.
    session_key: SessionKey,
}

pub struct Model {
    pub vips: Vec<VipModel>,
    pub config: DataplaneConfig,
    /// The backends' decapsulation: VIP addresses and accepted tunnel sources.
    pub decap_vips: Vec<IpAddr>,
    pub decap_sources: Vec<(IpAddr, u8)>,
}

fn v4_backends(n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 10, i))).collect()
}

fn v6_backends(n: u16) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 10 + i))).collect()
}

fn lists(
    allow: &[(IpAddr, u8)],
    deny: &[(IpAddr, u8)],
    packets: Option<(u64, u64)>,
    flows: Option<(u64, u64)>,
) -> VipAdmission {
    let mut lists = BTreeMap::new();
    for (prefixes, v) in [(allow, verdict::ALLOW), (deny, verdict::DENY)] {
        for &(network, len) in prefixes {
            let (family, addr) = key_addr(network);
            lists.insert(ListedPrefix { family, addr, len }, v);
        }
    }
    let rate = |r: Option<(u64, u64)>| r.map_or(Gcra::default(), |(rate, burst)| Gcra::new(rate, burst));
    let unlisted = if allow.is_empty() { verdict::ALLOW } else { verdict::DENY };
    VipAdmission {
        policy: AdmissionPolicy::new(rate(packets), rate(flows), unlisted, !lists.is_empty(), 24, 64),
        lists,
    }
}

impl Model {
    pub fn standard() -> Self {
        let vip4: IpAddr = Ipv4Addr::new(198, 18, 1, 1).into();
        let vip6: IpAddr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1).into();
        let plain = VipAdmission::default;
        let vip = |address, port, protocol, backends, scheduler, admission, flood_budget| VipModel {
            address,
            port,
            protocol,
            backends,
            scheduler,
            admission,
            flood_budget,
            session_key: SessionKey::NONE,
        };
        let vips = vec![
            vip(
                vip4,
                80,
                Protocol::Tcp,
                v4_backends(3),
                scheduler::MAGLEV,
                lists(
                    &[(Ipv4Addr::new(198, 18, 0, 0).into(), 16)],
                    &[(Ipv4Addr::new(198, 18, 0, 64).into(), 26)],
                    None,
                    None,
                ),
                0,
            ),
            // Balanced by payload bytes 2..8 (a masked session id): fuzzed datagrams end before
            // it, in it and past it.
            VipModel {
                session_key: SessionKey::new(2, 6, [0xff, 0xff, 0xf0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                ..vip(
                    vip4,
                    53,
                    Protocol::Udp,
                    v4_backends(3),
                    scheduler::MAGLEV,
                    lists(&[], &[], Some((200, 20)), Some((50, 10))),
                    0,
                )
            },
            vip(
                Ipv4Addr::new(198, 18, 1, 2).into(),
                0,
                Protocol::Tcp,
                v6_backends(2),
                scheduler::SOURCE_HASH,
                plain(),
                0,
            ),
            vip(vip6, 80, Protocol::Tcp, v6_backends(3), scheduler::MAGLEV, plain(), 0),
            vip(
                vip6,
                53,
                Protocol::Udp,
                v4_backends(2),
                scheduler::MAGLEV,
                lists(&[], &[(Ipv6Addr::new(0xfd00, 0, 0, 0xbad, 0, 0, 0, 0).into(), 64)], None, None),
                0,
            ),
            vip(
                Ipv4Addr::new(198, 18, 1, 3).into(),
                443,
                Protocol::Udp,
                v4_backends(3),
                scheduler::SEQUENCE,
                plain(),
                2,
            ),
            vip(Ipv4Addr::new(198, 18, 1, 4).into(), 80, Protocol::Tcp, Vec::new(), scheduler::MAGLEV, plain(), 0),
            // QUIC: short headers go to the backend their server id (2 bytes at byte 1 of the
            // connection id) names; fuzzed datagrams carry known, unknown and cut-off ids.
            VipModel {
                session_key: SessionKey::quic(1, 2),
                ..vip(
                    Ipv4Addr::new(198, 18, 1, 4).into(),
                    443,
                    Protocol::Udp,
                    v4_backends(3),
                    scheduler::MAGLEV,
                    plain(),
                    0,
                )
            },
            vip(
                Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2).into(),
                0,
                Protocol::Udp,
                v6_backends(3),
                scheduler::LEAST_CONNECTIONS,
                plain(),
                0,
            ),
        ];
        let config = DataplaneConfig {
            session_keys: 1,
            ..lb_tests::packet::dataplane_config([0xf0f0_1234_5678_9abc, 0x0fed_cba9_8765_4321])
        };
        Self {
            vips,
            config,
            decap_vips: vec![vip4, vip6],
            decap_sources: vec![
                (Ipv4Addr::new(198, 18, 200, 0).into(), 24),
                (Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0).into(), 112),
            ],
        }
    }

    pub fn install(&self, balancer: &mut Balancer, decap: &mut Decap) -> anyhow::Result<()> {
        balancer.set_config(&self.config)?;
        for (index, vip) in self.vips.iter().enumerate() {
            let index = index as u32;
            let (family, addr) = key_addr(vip.address);
            let key = VipKey::new(family, addr, vip.port, vip.protocol.number());
            let checks = vip.admission.policy.checks;
            balancer.set_admission(index, &vip.admission)?;
            let mut members = Vec::new();
            for (i, backend) in vip.backends.iter().enumerate() {
                let id = 100 * index + i as u32;
                let (bf, ba) = key_addr(*backend);
                balancer.set_backend(id, &Backend::new(bf, ba, index as u16, key.tag()).with_admission(checks))?;
                members.push(MaglevBackend { addr: ba, family: bf, weight: 1, id });
            }
            let table = match (members.is_empty(), vip.scheduler) {
                (true, _) => Vec::new(),
                (false, scheduler::SEQUENCE) => smooth_sequence(
                    &members
                        .iter()
                        .map(|m| SequenceMember { addr: m.addr, family: m.family, weight: 1, id: m.id })
                        .collect::<Vec<_>>(),
                ),
                (false, _) => build_table(&members, 251)?,
            };
            let scheduling = Scheduling {
                scheduler: vip.scheduler,
                source_prefix_len: if family == lb_common::family::IPV4 { 24 } else { 64 },
                new_flow_budget: vip.flood_budget,
                admission: checks,
                session_key: vip.session_key,
            };
            balancer.install_vip(&key, &VipTable { index, scheduling, table })?;
            if vip.session_key.kind == lb_common::session::kind::QUIC_SERVER_ID {
                // Server ids 0x0001, 0x0002, ... name the backends in order.
                let servers = (0..vip.backends.len())
                    .map(|i| ([0, i as u8 + 1, 0, 0, 0, 0, 0, 0], 100 * index + i as u32))
                    .collect();
                balancer.set_quic_servers(index, &servers)?;
            }
        }
        for addr in &self.decap_vips {
            let (family, a) = key_addr(*addr);
            decap.add_vip(VipAddrKey::new(family, a))?;
        }
        decap.set_sources(&self.decap_sources, unlisted_source::DROP)?;
        Ok(())
    }

    /// The backends a packet to (`dst`, `protocol`, `port`) may go to: the exact VIP's, else the
    /// address's all-ports VIP's. Without a port (a later fragment), any VIP's of the address and
    /// protocol.
    pub fn backends_for(&self, dst: IpAddr, protocol: u8, port: Option<u16>) -> Vec<IpAddr> {
        let of = |vip: &VipModel| vip.address == dst && vip.protocol.number() == protocol;
        match port {
            Some(port) => self
                .vips
                .iter()
                .find(|v| of(v) && v.port == port)
                .or_else(|| self.vips.iter().find(|v| of(v) && v.port == 0))
                .map(|v| v.backends.clone())
                .unwrap_or_default(),
            None => self.vips.iter().filter(|v| of(v)).flat_map(|v| v.backends.clone()).collect(),
        }
    }
}
