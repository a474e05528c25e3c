//! The fixtures' harness: the loaded programs with the VIPs every fixture starts from, the
//! userspace copy that predicts each decision, and the checks of verdict, bytes and counters.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use lb_common::{
    backend::Backend,
    counters::{Reason, ReasonCounter},
    dataplane::DataplaneConfig,
    decap::unlisted_source,
    flow::{HashKey, flow_hash, source_hash},
    least_connections::{candidates, second_wins},
    maglev::{MaglevBackend, build_table, table_slot},
    sequence::{SequenceMember, smooth_sequence},
    vip::{VipAddrKey, VipKey, scheduler},
};
use lb_tests::{
    packet::{
        BALANCER_MAC, CLIENT_MAC, Encap, FALLBACK_MAC, Flow, Protocol, Shape, dataplane_config, encapsulated, frame,
        hex, key_addr, l3_offset,
    },
    xdp::{XDP_DROP, XDP_PASS, XDP_TX, run_once, verdict_name},
};
use lb_userspace::{
    dataplane::{Balancer, BalancerSizes, Decap},
    reconcile::{Scheduling, VipTable},
};

pub(crate) const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

pub(crate) const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);

pub(crate) const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

pub(crate) const VIP4_ALL_PORTS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

pub(crate) const VIP4_V6_BACKENDS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);

pub(crate) const VIP4_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);

pub(crate) const VIP4_FIB_SAME: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);

pub(crate) const VIP4_FIB_OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 6);

pub(crate) const VIP4_FIB_SMALL_MTU: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 7);

pub(crate) const VIP4_REBUILD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 8);

pub(crate) const VIP4_REMOVAL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);

pub(crate) const VIP4_SOURCE_HASH: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);

pub(crate) const VIP4_ROUND_ROBIN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);

pub(crate) const VIP4_LEAST_CONNECTIONS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);

pub(crate) const NOT_VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);

pub(crate) const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);

pub(crate) const VIP6_V4_BACKENDS: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3);

pub(crate) const NOT_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);

/// The MTU of [`config`].
pub(crate) const MTU: u16 = 1500;

/// Three IPv4 backends with ids `first_id..first_id + 3`: like the agent's, ids belong to one
/// VIP (the data plane checks a record's VIP).
pub(crate) fn v4_backends(first_id: u32) -> Vec<(u32, IpAddr)> {
    (1..=3).map(|i| (first_id + i - 1, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8)))).collect()
}

pub(crate) fn v6_backends(first_id: u32) -> Vec<(u32, IpAddr)> {
    (11..=13).map(|i| (first_id + i - 11, IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, i as u16)))).collect()
}

pub(crate) fn config() -> DataplaneConfig {
    dataplane_config(HASH_KEY)
}

/// The tunnel sources the decapsulation fixtures accept: the balancer's encapsulation prefixes.
pub(crate) const BALANCER_SOURCES: [(IpAddr, u8); 2] = [
    (IpAddr::V4(Ipv4Addr::new(198, 18, 200, 0)), 24),
    (IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0)), 112),
];

/// The fixtures' flow hash key (an instance's secret).
pub(crate) const HASH_KEY: HashKey = [0x5eed_0f1a_b5c4_1e57, 0x0123_4567_89ab_cdef];

/// The loaded programs plus the userspace copy of what was installed, to predict every decision.
pub(crate) struct Env {
    pub(crate) balancer: Balancer,
    pub(crate) decap: Decap,
    /// VIP -> (index, table).
    pub(crate) vips: HashMap<VipKey, (u32, Vec<u32>)>,
    /// VIPs read other than as a Maglev table of the flow hash.
    pub(crate) schedulings: HashMap<VipKey, Scheduling>,
    /// Round-robin position of each sequence VIP on the CPU the tests run on.
    pub(crate) positions: HashMap<VipKey, usize>,
    pub(crate) backends: HashMap<u32, IpAddr>,
    /// Backend weights other than 1.
    pub(crate) weights: HashMap<u32, u32>,
    pub(crate) next_port: u16,
    /// Interfaces of the FIB fixtures: name -> (ifindex, MAC).
    pub(crate) links: HashMap<&'static str, (u32, [u8; 6])>,
}

impl Env {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mut balancer = Balancer::load(BalancerSizes::flows(4096))?;
        balancer.set_config(&config())?;
        let mut decap = Decap::load()?;
        for addr in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            let (family, a) = key_addr(addr);
            decap.add_vip(VipAddrKey::new(family, a))?;
        }
        decap.set_sources(&BALANCER_SOURCES, unlisted_source::DROP)?;
        let mut env = Env {
            balancer,
            decap,
            vips: HashMap::new(),
            schedulings: HashMap::new(),
            positions: HashMap::new(),
            backends: HashMap::new(),
            weights: HashMap::new(),
            next_port: 20_000,
            links: HashMap::new(),
        };
        env.maglev_vips()?;
        env.other_scheduler_vips()?;
        Ok(env)
    }

    /// The Maglev VIPs: both families, all-ports, mixed families, empty, and two the flow
    /// fixtures change.
    fn maglev_vips(&mut self) -> anyhow::Result<()> {
        self.vip(0, VIP4.into(), 80, Protocol::Tcp, &v4_backends(1), 65_537)?;
        self.vip(1, VIP4.into(), 53, Protocol::Udp, &v4_backends(101), 251)?;
        self.vip(2, VIP4_ALL_PORTS.into(), 0, Protocol::Tcp, &v4_backends(201), 251)?;
        self.vip(3, VIP6.into(), 80, Protocol::Tcp, &v6_backends(301), 65_537)?;
        self.vip(4, VIP6.into(), 53, Protocol::Udp, &v6_backends(401), 251)?;
        self.vip(5, VIP4_V6_BACKENDS.into(), 80, Protocol::Tcp, &v6_backends(501), 251)?;
        self.vip(6, VIP4_EMPTY.into(), 80, Protocol::Tcp, &[], 251)?;
        self.vip(7, VIP6_V4_BACKENDS.into(), 80, Protocol::Tcp, &v4_backends(701), 251)?;
        let rebuild: Vec<_> = (0..4).map(|i| (40 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 12, i as u8 + 1)))).collect();
        self.vip(8, VIP4_REBUILD.into(), 80, Protocol::Tcp, &rebuild, 251)?;
        let removal: Vec<_> = (0..2).map(|i| (50 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 13, i as u8 + 1)))).collect();
        self.vip(9, VIP4_REMOVAL.into(), 80, Protocol::Tcp, &removal, 251)?;
        Ok(())
    }

    /// VIPs of the other schedulers, on the same backends with their own ids.
    fn other_scheduler_vips(&mut self) -> anyhow::Result<()> {
        let hashed: Vec<_> = (0..3).map(|i| (70 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)))).collect();
        self.vip(13, VIP4_SOURCE_HASH.into(), 80, Protocol::Tcp, &hashed, 251)?;
        let source_hash =
            Scheduling { scheduler: scheduler::SOURCE_HASH, source_prefix_len: 24, ..Scheduling::default() };
        self.reschedule(VIP4_SOURCE_HASH.into(), source_hash)?;
        let dealt: Vec<_> = (0..3).map(|i| (80 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)))).collect();
        self.vip(14, VIP4_ROUND_ROBIN.into(), 80, Protocol::Tcp, &dealt, 251)?;
        let members: Vec<SequenceMember> = dealt
            .iter()
            .zip([1, 2, 3])
            .map(|(&(id, addr), weight)| {
                let (family, a) = key_addr(addr);
                SequenceMember { addr: a, family, weight, id }
            })
            .collect();
        let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_ROUND_ROBIN.into()).1, 80, 6);
        let sequence = VipTable {
            index: 14,
            scheduling: Scheduling { scheduler: scheduler::SEQUENCE, ..Scheduling::default() },
            table: smooth_sequence(&members),
        };
        self.balancer.install_vip(&key, &sequence)?;
        self.vips.insert(key, (14, sequence.table.clone()));
        self.schedulings.insert(key, sequence.scheduling);
        let least = Scheduling { scheduler: scheduler::LEAST_CONNECTIONS, ..Scheduling::default() };
        for (index, port, protocol, first_id) in [(15, 80, Protocol::Tcp, 90), (16, 53, Protocol::Udp, 93)] {
            let ids: Vec<_> =
                (0..3).map(|i| (first_id + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)))).collect();
            self.vip(index, VIP4_LEAST_CONNECTIONS.into(), port, protocol, &ids, 251)?;
            let key = VipKey::new(
                lb_common::family::IPV4,
                key_addr(VIP4_LEAST_CONNECTIONS.into()).1,
                port,
                protocol.number(),
            );
            let table = self.vips[&key].1.clone();
            self.balancer.install_vip(&key, &VipTable { index, scheduling: least, table })?;
            self.schedulings.insert(key, least);
        }
        Ok(())
    }

    /// Installs a VIP with `backends` (all weight 1) and remembers its table.
    pub(crate) fn vip(
        &mut self,
        index: u32,
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
        backends: &[(u32, IpAddr)],
        size: u32,
    ) -> anyhow::Result<()> {
        let (family, a) = key_addr(addr);
        let key = VipKey::new(family, a, port, protocol.number());
        let mut maglev = Vec::new();
        for &(id, backend) in backends {
            let (bf, ba) = key_addr(backend);
            self.balancer.set_backend(id, &Backend::new(bf, ba, index as u16, key.tag()))?;
            self.backends.insert(id, backend);
            maglev.push(MaglevBackend { addr: ba, family: bf, weight: 1, id });
        }
        let table = if maglev.is_empty() { Vec::new() } else { build_table(&maglev, size)? };
        self.balancer.install_vip(&key, &maglev_vip(index, &table))?;
        self.vips.insert(key, (index, table));
        Ok(())
    }

    pub(crate) fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    pub(crate) fn lookup_vip(&self, flow: &Flow) -> Option<(u32, &Vec<u32>)> {
        lb_common::vip::find_vip(&flow.key(), |vip| self.vips.get(vip)).map(|(i, t)| (*i, t))
    }

    /// The backend the userspace copy of the table picks for a new flow (for a round-robin VIP:
    /// the next in turn on this CPU; [`Env::dealt`] advances it).
    pub(crate) fn predict(&self, flow: &Flow) -> anyhow::Result<(u32, u32, IpAddr)> {
        let (index, table) = self.lookup_vip(flow).ok_or_else(|| anyhow!("no VIP for {flow:?}"))?;
        let (family, a) = key_addr(flow.dst);
        let vip_key = VipKey::new(family, a, flow.dst_port, flow.protocol.number());
        let how = self.schedulings.get(&vip_key).copied().unwrap_or_default();
        let slot = match how.scheduler {
            scheduler::SOURCE_HASH => {
                table_slot(source_hash(&flow.key(), how.source_prefix_len, &HASH_KEY), table.len() as u32) as usize
            }
            scheduler::SEQUENCE => self.positions.get(&vip_key).copied().unwrap_or(0) % table.len(),
            scheduler::LEAST_CONNECTIONS => {
                let id = self.fewer_active_flows(flow, table)?;
                return Ok((index, id, self.backends[&id]));
            }
            _ => table_slot(flow_hash(&flow.key(), &HASH_KEY), table.len() as u32) as usize,
        };
        let id = table[slot];
        Ok((index, id, self.backends[&id]))
    }

    /// Least connections' choice for a SYN or a UDP flow, from the counts in the map and the
    /// weights of [`Env::weights`] (1 unless set).
    pub(crate) fn fewer_active_flows(&self, flow: &Flow, table: &[u32]) -> anyhow::Result<u32> {
        let at = |slot: u32| table.get(slot as usize).copied();
        let (first, second) = candidates(flow_hash(&flow.key(), &HASH_KEY), table.len() as u32, at).context("table")?;
        let Some(second) = second else { return Ok(first) };
        let load = |id: u32| -> anyhow::Result<(u64, u32)> {
            Ok((self.balancer.active_flows(id)?.max(0) as u64, self.weights.get(&id).copied().unwrap_or(1)))
        };
        let ((a, wa), (b, wb)) = (load(first)?, load(second)?);
        Ok(if second_wins(a, wa, b, wb) { second } else { first })
    }

    /// A round-robin VIP dealt one new flow on this CPU.
    pub(crate) fn dealt(&mut self, vip_key: VipKey) {
        *self.positions.entry(vip_key).or_default() += 1;
    }

    /// Switches a VIP's scheduling (same table).
    pub(crate) fn reschedule(&mut self, addr: IpAddr, how: Scheduling) -> anyhow::Result<()> {
        let (family, a) = key_addr(addr);
        let key = VipKey::new(family, a, 80, 6);
        let (index, table) = self.vips[&key].clone();
        self.balancer.install_vip(&key, &VipTable { index, scheduling: how, table })?;
        self.schedulings.insert(key, how);
        Ok(())
    }

    /// The outer source for `flow` towards a backend of `backend`'s family, per the config.
    pub(crate) fn outer_src(flow: &Flow, backend: IpAddr) -> IpAddr {
        outer_src(flow_hash(&flow.key(), &HASH_KEY), backend)
    }

    pub(crate) fn reasons(&self) -> anyhow::Result<Vec<ReasonCounter>> {
        Ok(self.balancer.reason_counters()?)
    }
}

/// The VIP tag backend `id`'s record carries now.
pub(crate) fn tag_of(env: &Env, id: u32) -> anyhow::Result<u32> {
    Ok(env.balancer.current()?.backends.get(&id).context("no such backend")?.vip_tag)
}

/// A VIP read as a Maglev table.
pub(crate) fn maglev_vip(index: u32, table: &[u32]) -> VipTable {
    VipTable { index, scheduling: Scheduling::default(), table: table.to_vec() }
}

/// What a fixture expects of one packet.
#[derive(Debug)]
pub(crate) struct Expect {
    pub(crate) verdict: u32,
    pub(crate) reason: Reason,
    /// None: the output must equal the input.
    pub(crate) output: Option<Vec<u8>>,
    /// Forwarded: (VIP index, backend id, new flow).
    pub(crate) forwarded: Option<(u32, u32, bool)>,
}

impl Expect {
    pub(crate) fn pass(reason: Reason) -> Self {
        Expect { verdict: XDP_PASS, reason, output: None, forwarded: None }
    }
    pub(crate) fn drop(reason: Reason) -> Self {
        Expect { verdict: XDP_DROP, reason, output: None, forwarded: None }
    }
}

/// Runs the balancer once on `input` and checks verdict, output bytes and counters.
pub(crate) fn check(env: &mut Env, input: &[u8], ingress: Option<u32>, expect: &Expect) -> anyhow::Result<()> {
    let reasons_before = env.reasons()?;
    let counters_before = match expect.forwarded {
        Some((vip, backend, _)) => Some((env.balancer.vip_counters(vip)?, env.balancer.backend_counters(backend)?)),
        None => None,
    };
    let run = run_once(env.balancer.program()?, input, ingress)?;
    ensure!(
        run.verdict == expect.verdict,
        "verdict {} expected {} (reason {})",
        verdict_name(run.verdict),
        verdict_name(expect.verdict),
        expect.reason.name()
    );
    if expect.verdict != XDP_DROP {
        let want = expect.output.as_deref().unwrap_or(input);
        if run.output != want {
            bail!("output differs\n  got:  {}\n  want: {}", hex(&run.output), hex(want));
        }
    }
    check_reason(&reasons_before, &env.reasons()?, expect.reason, input.len())?;
    if let (Some((vip, backend, new_flow)), Some((vip_before, backend_before))) = (expect.forwarded, counters_before) {
        let (vip_after, backend_after) = (env.balancer.vip_counters(vip)?, env.balancer.backend_counters(backend)?);
        let bytes = input.len() as u64;
        ensure!(
            vip_after.packets == vip_before.packets + 1 && vip_after.bytes == vip_before.bytes + bytes,
            "VIP {vip} traffic counters {vip_before:?} -> {vip_after:?}"
        );
        ensure!(
            vip_after.new_flows == vip_before.new_flows + u64::from(new_flow),
            "VIP {vip} new flows {} -> {}, new flow expected: {new_flow}",
            vip_before.new_flows,
            vip_after.new_flows
        );
        ensure!(
            backend_after.packets == backend_before.packets + 1 && backend_after.bytes == backend_before.bytes + bytes,
            "backend {backend} counters {backend_before:?} -> {backend_after:?}"
        );
    }
    Ok(())
}

/// Exactly one packet of `len` bytes was counted, under `reason`.
pub(crate) fn check_reason(
    before: &[ReasonCounter],
    after: &[ReasonCounter],
    reason: Reason,
    len: usize,
) -> anyhow::Result<()> {
    for (i, r) in Reason::ALL.iter().enumerate() {
        let (packets, bytes) = (after[i].packets - before[i].packets, after[i].bytes - before[i].bytes);
        let want = if *r == reason { (1, len as u64) } else { (0, 0) };
        ensure!(
            (packets, bytes) == want,
            "counter {}: +{packets} packets/+{bytes} bytes, expected +{}/+{}",
            r.name(),
            want.0,
            want.1
        );
    }
    Ok(())
}

/// Expectation for a packet the balancer must encapsulate towards the predicted backend and
/// send to the fallback MAC.
pub(crate) fn expect_encap(
    env: &Env,
    flow: &Flow,
    input: &[u8],
    shape: &Shape,
    new_flow: bool,
) -> anyhow::Result<Expect> {
    let (vip, id, backend) = env.predict(flow)?;
    let hash = flow_hash(&flow.key(), &HASH_KEY);
    Ok(sent_to(input, l3_offset(shape), backend, hash, Reason::TxFallback, (vip, id, new_flow)))
}

/// The outer source of a flow with hash `hash` towards a backend of `backend`'s family.
pub(crate) fn outer_src(hash: u32, backend: IpAddr) -> IpAddr {
    match backend {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 200, hash as u8)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, hash as u16)),
    }
}

/// `input` (its IP header at `l3`) sent to `backend`: encapsulated with the outer source and
/// flow label of flow hash `hash`, to the fallback MAC, under `reason`, counted as `forwarded`
/// (VIP index, backend id, new flow).
pub(crate) fn sent_to(
    input: &[u8],
    l3: usize,
    backend: IpAddr,
    hash: u32,
    reason: Reason,
    forwarded: (u32, u32, bool),
) -> Expect {
    let encap = Encap {
        outer_src: outer_src(hash, backend),
        outer_dst: backend,
        src_mac: BALANCER_MAC,
        dst_mac: FALLBACK_MAC,
        flow_hash: hash,
    };
    Expect { verdict: XDP_TX, reason, output: Some(encapsulated(input, l3, &encap)), forwarded: Some(forwarded) }
}

pub(crate) type Shared = Arc<Mutex<Env>>;

pub(crate) type Body = fn(&mut Env) -> anyhow::Result<()>;

pub(crate) fn flow(env: &mut Env, protocol: Protocol, dst: IpAddr, dst_port: u16) -> Flow {
    let src = if dst.is_ipv4() { IpAddr::V4(CLIENT4) } else { IpAddr::V6(CLIENT6) };
    Flow { protocol, src, src_port: env.port(), dst, dst_port }
}

/// A new flow to a VIP: encapsulated to the predicted backend.
pub(crate) fn encap_case(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    shape: Shape,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let input = frame(&f, &shape);
    let expect = expect_encap(env, &f, &input, &shape, true)?;
    check(env, &input, None, &expect)?;
    // The second packet of the flow hits the flow table: same bytes, no new flow.
    let expect = expect_encap(env, &f, &input, &shape, false)?;
    check(env, &input, None, &expect)
}

/// A frame of a new flow to `dst`, edited by `edit` (which gets the IP header offset), that must
/// get `expect`.
pub(crate) fn edited_case(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    edit: impl Fn(&mut Vec<u8>, usize),
    expect: Expect,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let shape = Shape::default();
    let mut input = frame(&f, &shape);
    edit(&mut input, l3_offset(&shape));
    check(env, &input, None, &expect)
}

pub(crate) fn arp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP4.octets());
    f
}

pub(crate) fn icmpv6_frame(icmp_type: u8, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC)
        .ipv6(CLIENT6.octets(), dst.octets(), 255)
        .icmpv6_raw(icmp_type, 0, [0; 4])
        .write(&mut out, &VIP6.octets())
        .expect("frame fits");
    out
}

/// Expectation for a packet that goes to `backend` (id): a flow-table hit, or a new flow whose
/// backend the fixture knows better than [`Env::predict`].
pub(crate) fn expect_encap_to(
    env: &Env,
    flow: &Flow,
    input: &[u8],
    shape: &Shape,
    backend: u32,
    new_flow: bool,
) -> anyhow::Result<Expect> {
    let address = env.backends[&backend];
    let (index, _) = env.lookup_vip(flow).context("VIP")?;
    let hash = flow_hash(&flow.key(), &HASH_KEY);
    Ok(sent_to(input, l3_offset(shape), address, hash, Reason::TxFallback, (index, backend, new_flow)))
}
