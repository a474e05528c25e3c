//! Typed handles on the loaded XDP programs and their maps.
//!
//! [`Balancer`] owns the balancer program and every map it reads; the agent is its only writer.
//! Tables of backend ids are installed with [`Balancer::install_vip`]: the new table goes into the
//! VIP's idle table (in chunks, `lb_common::table`) and one `LB_VIPS` update then makes it live, so the
//! data plane never reads a half-written table.
//!
//! Rooms: this file (the handles, [`Balancer`] and [`BalancerMaps`]), `error` (what can go
//! wrong, and what to do), [`decap`](Decap) (the backends' program), [`attach`] (through pinned
//! links), [`pins`] (where things live on bpffs), `layout` (the maps' names and layouts, and
//! the check of pins left by another build), [`batch`] (reading a whole map in a few syscalls),
//! [`objects`] (the programs, embedded at build time).

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key as LpmKey, LpmTrie},
        xdp::DevMapHash,
    },
    programs::Xdp,
};
use lb_common::{
    admission::{
        AdmissionPolicy, REFUSALS, SOURCE_LIST_FIXED_BITS, SourceBucket, SourceBucketKey, SourceListKey, refusal_slot,
    },
    backend::Backend,
    capacity::{MAGLEV_MAX_TABLE_SIZE, MAX_BACKENDS, MAX_VIPS, TABLE_CHUNK_ENTRIES, TABLES_PER_VIP},
    counters::{Reason, ReasonCounter, SENT_TO_BACKEND, TrafficCounters},
    dataplane::DataplaneConfig,
    flood::FloodState,
    flow::{FlowKey, FlowKeyV4, FlowState},
    maps as names,
    nexthop::NextHop,
    quic::QuicServerKey,
    session::SessionKey,
    table::{MAX_CHUNKS_PER_TABLE, TableChunk, chunk_key, chunks},
    vip::{VipAddrKey, VipInfo, VipKey},
};

pub mod attach;
pub mod batch;
mod decap;
mod error;
mod layout;
pub mod objects;
pub mod pins;

use self::{
    attach::{Attached, attach},
    layout::{check_pinned_layouts, migrate_renamed},
};
pub use self::{decap::Decap, error::DataplaneError, pins::PinDir};
use crate::{
    config::XdpMode,
    reconcile::{Current, ListedPrefix, Op, Scheduling, VipAdmission, VipTable},
};

/// The balancer's XDP program, as `bpftool prog` names it (its function in lb-ebpf).
pub const BALANCER_PROGRAM: &str = "lb_balancer";
/// The backends' decapsulation program.
pub const DECAP_PROGRAM: &str = "lb_decap";

/// The balancer program and its maps.
pub struct Balancer {
    ebpf: Ebpf,
    maps: BalancerMaps,
}

impl std::ops::Deref for Balancer {
    type Target = BalancerMaps;
    fn deref(&self) -> &BalancerMaps {
        &self.maps
    }
}

impl std::ops::DerefMut for Balancer {
    fn deref_mut(&mut self) -> &mut BalancerMaps {
        &mut self.maps
    }
}

/// The balancer's maps: those of a loaded program, or opened from their pins by the read-only
/// commands (`lb stats`, `lb trace`, `lb plan`) while an agent may or may not run.
pub struct BalancerMaps {
    pub(crate) vips: HashMap<MapData, VipKey, VipInfo>,
    pub(crate) vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    pub(crate) backends: Array<MapData, Backend>,
    pub(crate) next_hops: Array<MapData, NextHop>,
    pub(crate) tables: HashMap<MapData, u32, TableChunk>,
    pub(crate) flows_v4: HashMap<MapData, FlowKeyV4, FlowState>,
    pub(crate) flows_v6: HashMap<MapData, FlowKey, FlowState>,
    pub(crate) config: Array<MapData, DataplaneConfig>,
    pub(crate) egress: DevMapHash<MapData>,
    pub(crate) reason_stats: PerCpuArray<MapData, ReasonCounter>,
    pub(crate) vip_stats: PerCpuArray<MapData, TrafficCounters>,
    pub(crate) backend_stats: PerCpuArray<MapData, TrafficCounters>,
    pub(crate) active_flows: Array<MapData, i64>,
    pub(crate) flood: PerCpuArray<MapData, FloodState>,
    pub(crate) admission: Array<MapData, AdmissionPolicy>,
    pub(crate) source_lists: LpmTrie<MapData, SourceListKey, u32>,
    pub(crate) source_buckets: HashMap<MapData, SourceBucketKey, SourceBucket>,
    pub(crate) refusals: PerCpuArray<MapData, u64>,
    pub(crate) session_misses: PerCpuArray<MapData, u64>,
    pub(crate) session_keys: Array<MapData, SessionKey>,
    pub(crate) quic_servers: HashMap<MapData, QuicServerKey, u32>,
}

/// A VIP's flood mode as the data plane's CPUs see it (`lb_common::flood`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VipFlood {
    /// CPUs on which the VIP is in flood mode now.
    pub flooding_cpus: u32,
    /// New flows forwarded without a flow-table entry, all CPUs.
    pub untracked: u64,
}

/// Bytes the kernel accounts to `map` (its memlock in fdinfo).
fn memory_of(map: &MapData) -> Result<u64, DataplaneError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let path = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
    let info = std::fs::read_to_string(&path).map_err(DataplaneError::MapMemory)?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| DataplaneError::MapMemory(std::io::Error::other(format!("{path} has no memlock line"))))
}

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct BalancerSizes {
    /// Entries of the IPv4 flow table.
    pub flow_table_entries: u32,
    /// Entries of the IPv6 flow table.
    pub ipv6_flow_table_entries: u32,
}

impl BalancerSizes {
    /// Flow tables of `entries` entries for either family.
    pub const fn flows(entries: u32) -> Self {
        Self { flow_table_entries: entries, ipv6_flow_table_entries: entries }
    }
}

impl Balancer {
    /// Loads (does not attach) the embedded balancer program and creates its maps.
    pub fn load(sizes: BalancerSizes) -> Result<Self, DataplaneError> {
        Self::from_object(objects::BALANCER, sizes)
    }

    /// Loads the embedded balancer with its maps pinned in `pins`: maps already pinned there are
    /// adopted with their contents (the flow table keeps its size then), missing ones created.
    pub fn open_pinned(sizes: BalancerSizes, pins: &PinDir) -> Result<Self, DataplaneError> {
        pins.create().map_err(|error| DataplaneError::Pins { path: pins.root().to_path_buf(), error })?;
        let migrated = migrate_renamed(pins)?;
        if migrated > 0 {
            tracing::info!(maps = migrated, pins = %pins.root().display(), "adopted the previous layout's pinned maps");
        }
        check_pinned_layouts(pins)?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::FLOWS_V4, sizes.flow_table_entries)
            .map_max_entries(names::FLOWS_V6, sizes.ipv6_flow_table_entries);
        let paths: Vec<_> = names::BALANCER.iter().map(|name| (*name, pins.map(name))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::from_ebpf(loader.load(objects::BALANCER)?)
    }

    /// Loads a balancer object (the embedded one, or a variant of it built by a benchmark).
    pub fn from_object(object: &[u8], sizes: BalancerSizes) -> Result<Self, DataplaneError> {
        Self::from_ebpf(
            EbpfLoader::new()
                .map_max_entries(names::FLOWS_V4, sizes.flow_table_entries)
                .map_max_entries(names::FLOWS_V6, sizes.ipv6_flow_table_entries)
                .load(object)?,
        )
    }

    fn from_ebpf(mut ebpf: Ebpf) -> Result<Self, DataplaneError> {
        let program: &mut Xdp = program(&mut ebpf, BALANCER_PROGRAM)?;
        program.load()?;
        let maps = BalancerMaps::open(|name| {
            let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
            Ok(map)
        })?;
        Ok(Self { ebpf, maps })
    }

    /// The loaded XDP program (to attach it, or to run it through `BPF_PROG_RUN`).
    /// The kernel's id of the balancer program this agent loaded.
    pub fn program_id(&mut self) -> Result<u32, DataplaneError> {
        Ok(self.program()?.info()?.id())
    }

    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, BALANCER_PROGRAM)
    }

    /// Attaches the balancer to `interface` (or replaces the program in its pinned link) and
    /// allows redirects to it.
    pub fn attach(&mut self, interface: &str, mode: XdpMode, pins: &PinDir) -> Result<Attached, DataplaneError> {
        let ifindex = ifindex(interface)?;
        self.add_egress(ifindex)?;
        attach(self.program()?, interface, mode, &pins.link(interface))
    }
}

/// What a self-check of the pinned data plane found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinProblem {
    /// A map is not pinned where the instance's maps are (removed by hand or by `lb detach`).
    MapNotPinned(&'static str),
    /// An interface has no pinned link (so, once its last holder closed it, no program).
    NotAttached(String),
    /// An interface's pinned link runs another program than this agent's.
    OtherProgram { interface: String, program_id: u32 },
    /// An interface's pinned link runs this agent's program, but not on the interface by that
    /// name: the interface was deleted (and perhaps created again), and the link died with it.
    Defunct(String),
}

impl std::fmt::Display for PinProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinProblem::MapNotPinned(name) => write!(f, "map {name} is not pinned"),
            PinProblem::NotAttached(interface) => write!(f, "{interface} has no balancer attached"),
            PinProblem::OtherProgram { interface, program_id } => {
                write!(f, "{interface} runs program {program_id}, not this agent's")
            }
            PinProblem::Defunct(interface) => {
                write!(f, "{interface}'s pinned link is defunct (the interface was deleted or created again)")
            }
        }
    }
}

/// `problems` in a line: maps not pinned named together, then the interfaces'.
pub fn describe_pin_problems(problems: &[PinProblem]) -> String {
    let unpinned: Vec<&str> =
        problems.iter().filter_map(|p| if let PinProblem::MapNotPinned(n) = p { Some(*n) } else { None }).collect();
    let mut parts = Vec::new();
    match unpinned.len() {
        0 => {}
        n if n == names::BALANCER.len() => parts.push("no map is pinned".to_string()),
        _ => parts.push(format!("maps not pinned: {}", unpinned.join(", "))),
    }
    parts.extend(problems.iter().filter(|p| !matches!(p, PinProblem::MapNotPinned(_))).map(ToString::to_string));
    parts.join("; ")
}

impl Balancer {
    /// Whether the instance's pins hold this agent's maps and, on each of `interfaces`, a link
    /// running this agent's program.
    pub fn check_pins(&mut self, pins: &PinDir, interfaces: &[String]) -> Result<Vec<PinProblem>, DataplaneError> {
        let mut problems: Vec<PinProblem> = names::BALANCER
            .iter()
            .filter(|name| !pins.map(name).exists())
            .map(|name| PinProblem::MapNotPinned(name))
            .collect();
        let ours = self.program()?.info()?.id();
        for interface in interfaces {
            let path = pins.link(interface);
            if !path.exists() {
                problems.push(PinProblem::NotAttached(interface.clone()));
                continue;
            }
            let program_id = attach::pinned_program(&path)?;
            if program_id != ours {
                problems.push(PinProblem::OtherProgram { interface: interface.clone(), program_id });
            }
        }
        Ok(problems)
    }

    /// Pins again every map that is not pinned; the maps' contents are this agent's, whole.
    pub fn repin(&self, pins: &PinDir) -> Result<(), DataplaneError> {
        pins.create().map_err(|error| DataplaneError::Pins { path: pins.root().to_path_buf(), error })?;
        let handles = self.maps.by_name();
        for name in names::BALANCER {
            let path = pins.map(name);
            if path.exists() {
                continue;
            }
            // The maps the agent writes are in its handles; the data plane's own ones (fragments,
            // round-robin positions) stay in the loaded object.
            let pinned = match handles.iter().find(|(n, _)| *n == name) {
                Some((_, map)) => map.pin(&path),
                None => self.ebpf.map(name).ok_or(DataplaneError::Missing { kind: "map", name })?.pin(&path),
            };
            pinned.map_err(|e| DataplaneError::Repin { name, error: e.to_string() })?;
        }
        Ok(())
    }
}

impl BalancerMaps {
    /// Opens the maps pinned in `pins` (they must exist: an agent created them).
    pub fn open_pinned(pins: &PinDir) -> Result<Self, DataplaneError> {
        Self::open(|name| Ok(aya::maps::Map::from_map_data(MapData::from_pin(pins.map(name))?)?))
    }

    fn open(
        mut take: impl FnMut(&'static str) -> Result<aya::maps::Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            vips: typed(take(names::VIPS)?)?,
            vip_addrs: typed(take(names::VIP_ADDRS)?)?,
            backends: typed(take(names::BACKENDS)?)?,
            next_hops: typed(take(names::NEXT_HOPS)?)?,
            tables: typed(take(names::TABLE_CHUNKS)?)?,
            flows_v4: typed(take(names::FLOWS_V4)?)?,
            flows_v6: typed(take(names::FLOWS_V6)?)?,
            config: typed(take(names::CONFIG)?)?,
            egress: typed(take(names::EGRESS)?)?,
            reason_stats: typed(take(names::REASON_STATS)?)?,
            vip_stats: typed(take(names::VIP_STATS)?)?,
            backend_stats: typed(take(names::BACKEND_STATS)?)?,
            active_flows: typed(take(names::ACTIVE_FLOWS)?)?,
            flood: typed(take(names::FLOOD)?)?,
            admission: typed(take(names::ADMISSION)?)?,
            source_lists: typed(take(names::SOURCE_LISTS)?)?,
            source_buckets: typed(take(names::RATE_BUCKETS)?)?,
            refusals: typed(take(names::REFUSALS)?)?,
            session_misses: typed(take(names::SESSION_MISSES)?)?,
            session_keys: typed(take(names::SESSION_KEYS)?)?,
            quic_servers: typed(take(names::QUIC_SERVERS)?)?,
        })
    }

    /// Every map with its name.
    fn by_name(&self) -> [(&'static str, &MapData); 21] {
        [
            (names::VIPS, self.vips.map()),
            (names::VIP_ADDRS, self.vip_addrs.map()),
            (names::BACKENDS, self.backends.map()),
            (names::NEXT_HOPS, self.next_hops.map()),
            (names::TABLE_CHUNKS, self.tables.map()),
            (names::FLOWS_V4, self.flows_v4.map()),
            (names::FLOWS_V6, self.flows_v6.map()),
            (names::CONFIG, self.config.map()),
            (names::EGRESS, self.egress.map()),
            (names::REASON_STATS, self.reason_stats.map()),
            (names::VIP_STATS, self.vip_stats.map()),
            (names::BACKEND_STATS, self.backend_stats.map()),
            (names::ACTIVE_FLOWS, self.active_flows.map()),
            (names::FLOOD, self.flood.map()),
            (names::ADMISSION, self.admission.map()),
            (names::SOURCE_LISTS, self.source_lists.map()),
            (names::RATE_BUCKETS, self.source_buckets.map()),
            (names::REFUSALS, self.refusals.map()),
            (names::SESSION_MISSES, self.session_misses.map()),
            (names::SESSION_KEYS, self.session_keys.map()),
            (names::QUIC_SERVERS, self.quic_servers.map()),
        ]
    }

    pub fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError> {
        Ok(self.config.set(0, config, 0)?)
    }

    /// Writes backend `id`. An id that gets another address forgets its next hop first, so that
    /// no packet goes to the old address's neighbour (the agent resolves the new one). An id given
    /// to a new backend starts its counters at zero: what its previous backend counted moves to
    /// the retired total that `tx_next_hop` is read with ([`Self::reason_counters`]).
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        if id >= MAX_BACKENDS {
            return Err(DataplaneError::BackendId { id });
        }
        let old = self.backends.get(&id, 0)?;
        if (old.family, old.addr) != (backend.family, backend.addr) {
            self.set_next_hop(id, &NextHop::NONE)?;
        }
        if !old.is_assigned() && backend.is_assigned() {
            let counted = self.backend_counters(id)?;
            if counted != TrafficCounters::default() {
                let slot = Reason::TxNextHop as u32;
                let retired = sum_reason(&self.reason_stats.get(&slot, 0)?);
                let retired =
                    ReasonCounter { packets: retired.packets + counted.packets, bytes: retired.bytes + counted.bytes };
                set_agent_total(&mut self.reason_stats, slot, retired)?;
                set_agent_total(&mut self.backend_stats, id, TrafficCounters::default())?;
            }
        }
        Ok(self.backends.set(id, backend, 0)?)
    }

    /// VIP `index`'s flood mode.
    pub fn flood(&self, index: u32) -> Result<VipFlood, DataplaneError> {
        let per_cpu = self.flood.get(&index, 0)?;
        Ok(per_cpu.iter().fold(VipFlood::default(), |acc, s| VipFlood {
            flooding_cpus: acc.flooding_cpus + u32::from(s.flooding != 0),
            untracked: acc.untracked + s.untracked,
        }))
    }

    /// Backend `id`'s next hop as the data plane uses it.
    pub fn next_hop(&self, id: u32) -> Result<NextHop, DataplaneError> {
        if id >= MAX_BACKENDS {
            return Err(DataplaneError::BackendId { id });
        }
        Ok(self.next_hops.get(&id, 0)?)
    }

    /// Sets backend `id`'s next hop ([`NextHop::NONE`]: the data plane asks the FIB).
    pub fn set_next_hop(&mut self, id: u32, hop: &NextHop) -> Result<(), DataplaneError> {
        if id >= MAX_BACKENDS {
            return Err(DataplaneError::BackendId { id });
        }
        Ok(self.next_hops.set(id, hop, 0)?)
    }

    /// Marks a backend id unused; flows pinned to it are rescheduled on their next packet. Its
    /// count of active flows starts again from zero for the next backend given the id.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        let old = self.backends.get(&id, 0)?;
        self.set_backend(id, &Backend::default())?;
        self.set_active_flows(id, 0)?;
        // The VIP keeps what the backend counted (the id's counters stay until it is given again).
        if old.is_assigned() {
            let slot = MAX_VIPS + u32::from(old.vip_index);
            let retired = add_traffic(sum_traffic(&self.vip_stats.get(&slot, 0)?), self.backend_counters(id)?);
            set_agent_total(&mut self.vip_stats, slot, retired)?;
        }
        Ok(())
    }

    /// Backend `id`'s active flows as the data plane counts them (the agent's recount,
    /// `agent::active`, puts them right).
    pub fn active_flows(&self, id: u32) -> Result<i64, DataplaneError> {
        Ok(self.active_flows.get(&id, 0)?)
    }

    pub fn set_active_flows(&mut self, id: u32, count: i64) -> Result<(), DataplaneError> {
        Ok(self.active_flows.set(id, count, 0)?)
    }

    /// Calls `visit` with every flow-table entry (see [`batch`]).
    pub fn for_each_flow(&self, mut visit: impl FnMut(&FlowKey, &FlowState)) -> Result<(), DataplaneError> {
        batch::for_each_entry(self.flows_v4.map(), |key: &FlowKeyV4, state| visit(&key.flow(), state))
            .map_err(DataplaneError::FlowScan)?;
        batch::for_each_entry(self.flows_v6.map(), visit).map_err(DataplaneError::FlowScan)
    }

    /// Makes `table` (backend ids; its length is the table size) the live Maglev table of the VIP
    /// `key` at counter/table index `index`, creating the VIP if needed. An empty table makes the
    /// VIP drop its traffic (reason `drop_no_backend`).
    pub fn install_vip(&mut self, key: &VipKey, vip: &VipTable) -> Result<(), DataplaneError> {
        let (index, table) = (vip.index, vip.table.as_slice());
        if index >= MAX_VIPS {
            return Err(DataplaneError::VipIndex { index });
        }
        if table.len() > MAGLEV_MAX_TABLE_SIZE as usize {
            return Err(DataplaneError::TableSize { len: table.len() });
        }
        let current = self.vips.get(key, 0).ok();
        if current.is_none() && self.vips.iter().filter_map(Result::ok).any(|(_, info)| info.index == index) {
            return Err(DataplaneError::VipIndexInUse { index });
        }
        let next = current.map_or(0, |info| 1 - (info.active_table & 1));
        self.write_table(index * TABLES_PER_VIP + next, table)?;
        if current.is_none() {
            self.clear_vip_counters(index)?;
        }
        let how = vip.scheduling;
        self.vips.insert(
            key,
            VipInfo::new(
                index,
                table.len() as u32,
                next,
                how.scheduler,
                how.source_prefix_len,
                how.new_flow_budget,
                key.tag(),
            )
            .with_admission(how.admission),
            0,
        )?;
        self.session_keys.set(index, how.session_key, 0)?;
        if current.is_none() {
            let addr = VipAddrKey::new(key.family, key.addr);
            let count = self.vip_addrs.get(&addr, 0).unwrap_or(0);
            self.vip_addrs.insert(addr, count + 1, 0)?;
        }
        Ok(())
    }

    /// Zeroes the counters kept by VIP index `index` (its traffic, its removed backends', its
    /// admission's refusals, its session key's misses), for a VIP new at that index: an index is
    /// given again once its VIP is removed, and the new VIP must not start with the old one's
    /// counts.
    fn clear_vip_counters(&mut self, index: u32) -> Result<(), DataplaneError> {
        for slot in [index, MAX_VIPS + index] {
            set_agent_total(&mut self.vip_stats, slot, TrafficCounters::default())?;
        }
        for reason in REFUSALS {
            let slot = refusal_slot(index, reason).ok_or(DataplaneError::VipIndex { index })?;
            set_agent_total(&mut self.refusals, slot, 0)?;
        }
        set_agent_total(&mut self.session_misses, index, 0)
    }

    /// Writes `entries` into table `table` (VIP index x 2 + which), chunk by chunk, and removes
    /// the chunks that a longer table left there.
    fn write_table(&mut self, table: u32, entries: &[u32]) -> Result<(), DataplaneError> {
        let mut chunk: Box<TableChunk> = Box::new([0; TABLE_CHUNK_ENTRIES as usize]);
        for (n, part) in entries.chunks(TABLE_CHUNK_ENTRIES as usize).enumerate() {
            chunk[..part.len()].copy_from_slice(part);
            chunk[part.len()..].fill(0);
            self.tables.insert(chunk_key(table, n as u32), chunk.as_ref(), 0).map_err(|error| match error {
                MapError::SyscallError(ref e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                    DataplaneError::TablesFull
                }
                other => other.into(),
            })?;
        }
        self.remove_chunks(table, chunks(entries.len() as u32))
    }

    /// Removes the chunks of table `table` from chunk `from` on (chunks are written from 0 up,
    /// so the first missing one ends the table).
    fn remove_chunks(&mut self, table: u32, from: u32) -> Result<(), DataplaneError> {
        for n in from..MAX_CHUNKS_PER_TABLE {
            match self.tables.remove(&chunk_key(table, n)) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => break,
                Err(other) => return Err(other.into()),
            }
        }
        Ok(())
    }

    /// Removes a VIP; its traffic then passes to the kernel.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        let info = self.vips.get(key, 0)?;
        self.vips.remove(key)?;
        for which in 0..TABLES_PER_VIP {
            self.remove_chunks(info.index * TABLES_PER_VIP + which, 0)?;
        }
        let addr = VipAddrKey::new(key.family, key.addr);
        match self.vip_addrs.get(&addr, 0) {
            Ok(count) if count > 1 => self.vip_addrs.insert(addr, count - 1, 0)?,
            Ok(_) => self.vip_addrs.remove(&addr)?,
            Err(_) => {}
        }
        Ok(())
    }

    /// Allows redirects to interface `ifindex`.
    pub fn add_egress(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        Ok(self.egress.insert(ifindex, ifindex, None, 0)?)
    }

    /// The live table of the VIP with record `info`, as the data plane reads it.
    pub fn live_table(&self, info: &VipInfo) -> Result<Vec<u32>, DataplaneError> {
        let mut table = Vec::with_capacity(info.table_size as usize);
        for n in 0..chunks(info.table_size) {
            let chunk = self
                .tables
                .get(&chunk_key(info.live_table_slot(), n), 0)
                .map_err(|_| DataplaneError::TableChunkMissing { index: info.index, chunk: n })?;
            let wanted = (info.table_size as usize - table.len()).min(chunk.len());
            table.extend_from_slice(&chunk[..wanted]);
        }
        Ok(table)
    }

    /// Table chunks stored for all VIPs (each [`TABLE_CHUNK_ENTRIES`] entries).
    pub fn table_chunks(&self) -> Result<usize, DataplaneError> {
        let mut count = 0;
        for key in self.tables.keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }

    /// Backend record `id` as the data plane reads it.
    pub fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        Ok(self.backends.get(&id, 0)?)
    }

    /// What the maps hold now (the input of [`crate::reconcile::plan`]).
    pub fn current(&self) -> Result<Current, DataplaneError> {
        let dataplane = self.config.get(&0, 0)?;
        let mut backends = BTreeMap::new();
        for id in 0..MAX_BACKENDS {
            let b = self.backends.get(&id, 0)?;
            if b.is_assigned() {
                backends.insert(id, b);
            }
        }
        let mut vips = BTreeMap::new();
        for entry in &self.vips {
            let (key, info) = entry?;
            let table = self.live_table(&info)?;
            let scheduling = Scheduling {
                scheduler: info.scheduler,
                source_prefix_len: info.source_prefix_len,
                new_flow_budget: info.new_flow_budget,
                admission: info.admission,
                session_key: self.session_keys.get(&info.index, 0)?,
            };
            vips.insert(key, VipTable { index: info.index, scheduling, table });
        }
        let admission = self.admissions()?;
        let mut quic_servers: BTreeMap<u32, BTreeMap<[u8; 8], u32>> = BTreeMap::new();
        for entry in &self.quic_servers {
            let (key, backend) = entry?;
            quic_servers.entry(key.vip_index).or_default().insert(key.server_id, backend);
        }
        Ok(Current { dataplane, backends, vips, admission, quic_servers })
    }

    /// Makes VIP `index`'s QUIC server ids those of `servers` (server id -> backend id): adds
    /// and changes first, then removes what is no longer there.
    pub fn set_quic_servers(&mut self, index: u32, servers: &BTreeMap<[u8; 8], u32>) -> Result<(), DataplaneError> {
        let now = self.quic_servers_of(index)?;
        for (id, backend) in servers {
            if now.get(id) != Some(backend) {
                self.quic_servers.insert(QuicServerKey::new(index, *id), backend, 0)?;
            }
        }
        for id in now.keys().filter(|id| !servers.contains_key(*id)) {
            self.quic_servers.remove(&QuicServerKey::new(index, *id))?;
        }
        Ok(())
    }

    /// VIP `index`'s QUIC server ids (server id -> backend id).
    pub fn quic_servers_of(&self, index: u32) -> Result<BTreeMap<[u8; 8], u32>, DataplaneError> {
        let mut out = BTreeMap::new();
        for entry in &self.quic_servers {
            let (key, backend) = entry?;
            if key.vip_index == index {
                out.insert(key.server_id, backend);
            }
        }
        Ok(out)
    }

    /// Packets to VIP `index` too short for its session key, all CPUs.
    pub fn session_misses(&self, index: u32) -> Result<u64, DataplaneError> {
        if index >= MAX_VIPS {
            return Err(DataplaneError::VipIndex { index });
        }
        Ok(self.session_misses.get(&index, 0)?.iter().sum())
    }

    /// Packets VIP `index`'s admission refused, per reason (in `lb_common::admission::REFUSALS`
    /// order), all CPUs.
    pub fn refusals(&self, index: u32) -> Result<[u64; REFUSALS.len()], DataplaneError> {
        let mut out = [0; REFUSALS.len()];
        for (count, reason) in out.iter_mut().zip(REFUSALS) {
            let slot = refusal_slot(index, reason).ok_or(DataplaneError::VipIndex { index })?;
            *count = self.refusals.get(&slot, 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Client prefixes with rate buckets now (at most `MAX_SOURCE_BUCKETS`, least recently used
    /// first out).
    pub fn source_buckets_in_use(&self) -> Result<usize, DataplaneError> {
        let mut count = 0;
        batch::for_each_entry(self.source_buckets.map(), |_: &SourceBucketKey, _: &SourceBucket| count += 1)
            .map_err(DataplaneError::Counters)?;
        Ok(count)
    }

    /// Every VIP index's admission that is not the default.
    pub fn admissions(&self) -> Result<BTreeMap<u32, VipAdmission>, DataplaneError> {
        let mut all: BTreeMap<u32, VipAdmission> = BTreeMap::new();
        for index in 0..MAX_VIPS {
            let policy = self.admission.get(&index, 0)?;
            if policy != AdmissionPolicy::default() {
                all.entry(index).or_default().policy = policy;
            }
        }
        for entry in &self.source_lists {
            let (key, verdict) = entry?;
            let (index, prefix) = listed_prefix(&key);
            all.entry(index).or_default().lists.insert(prefix, verdict);
        }
        Ok(all)
    }

    /// Makes `admission` VIP `index`'s policy and source lists: new and changed prefixes first,
    /// then the policy, then the prefixes no longer listed, so a source is judged by the old or the
    /// new lists while they change, never by none.
    pub fn set_admission(&mut self, index: u32, admission: &VipAdmission) -> Result<(), DataplaneError> {
        if index >= MAX_VIPS {
            return Err(DataplaneError::VipIndex { index });
        }
        let mut stale = Vec::new();
        for key in self.source_lists.keys() {
            let key = key?;
            let (owner, prefix) = listed_prefix(&key);
            if owner == index && !admission.lists.contains_key(&prefix) {
                stale.push(key);
            }
        }
        for (prefix, verdict) in &admission.lists {
            let key = LpmKey::new(
                SOURCE_LIST_FIXED_BITS + u32::from(prefix.len),
                SourceListKey::new(index, prefix.family, prefix.addr),
            );
            self.source_lists.insert(&key, *verdict, 0).map_err(|error| match error {
                MapError::SyscallError(ref e) if e.io_error.raw_os_error() == Some(libc::ENOSPC) => {
                    DataplaneError::SourceListsFull
                }
                other => other.into(),
            })?;
        }
        self.admission.set(index, admission.policy, 0)?;
        for key in &stale {
            self.source_lists.remove(key)?;
        }
        Ok(())
    }

    /// Carries out one reconcile operation.
    pub fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        match op {
            Op::SetDataplane(config) => self.set_config(config),
            Op::SetBackend { id, backend } => self.set_backend(*id, backend),
            Op::InstallVip { key, vip } => self.install_vip(key, vip),
            Op::RemoveVip { key } => self.remove_vip(key),
            Op::ClearBackend { id } => self.clear_backend(*id),
            Op::SetAdmission { index, admission } => self.set_admission(*index, admission),
            Op::SetQuicServers { index, servers } => self.set_quic_servers(*index, servers),
        }
    }

    /// The flow table's map flags as the kernel reports them.
    pub fn flow_table_flags(&self) -> Result<u32, DataplaneError> {
        Ok(self.flows_v4.map().info()?.map_flags())
    }

    /// The flow table of `family`'s memory as the kernel accounts it (`memlock` of the map, in
    /// bytes), and its entries. An LRU hash allocates every entry up front, so this is the cost
    /// of a table full of flows.
    pub fn flow_table_memory(&self, family: u8) -> Result<(u64, u32), DataplaneError> {
        let map = if family == lb_common::family::IPV4 { self.flows_v4.map() } else { self.flows_v6.map() };
        Ok((memory_of(map)?, map.info()?.max_entries()))
    }

    /// Bytes the kernel accounts to the VIPs' tables (allocated chunk by chunk as tables are written).
    pub fn table_memory(&self) -> Result<u64, DataplaneError> {
        memory_of(self.tables.map())
    }

    /// The flow-table entry of a flow, if any.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowState> {
        if key.family == lb_common::family::IPV4 { self.flows_v4.get(&key.v4(), 0) } else { self.flows_v6.get(key, 0) }
            .ok()
    }

    /// Packets and bytes per reason, summed over CPUs, in [`Reason::ALL`] order; `tx_next_hop`
    /// from the backends' counters ([`lb_common::counters::SENT_TO_BACKEND`]).
    pub fn reason_counters(&self) -> Result<Vec<ReasonCounter>, DataplaneError> {
        let mut counters: Vec<ReasonCounter> = Reason::ALL
            .iter()
            .map(|&r| Ok(sum_reason(&self.reason_stats.get(&(r as u32), 0)?)))
            .collect::<Result<_, DataplaneError>>()?;
        let sent = self.all_backend_counters()?.into_iter().fold(TrafficCounters::default(), add_traffic);
        let others = SENT_TO_BACKEND
            .iter()
            .filter(|&&r| r != Reason::TxNextHop)
            .fold((0, 0), |(p, b), &r| (p + counters[r as usize].packets, b + counters[r as usize].bytes));
        // The slot holds what retired backend counters sent: with the live ones, every packet of
        // the other reasons is in there too.
        let next_hop = &mut counters[Reason::TxNextHop as usize];
        next_hop.packets = (next_hop.packets + sent.packets).saturating_sub(others.0);
        next_hop.bytes = (next_hop.bytes + sent.bytes).saturating_sub(others.1);
        Ok(counters)
    }

    /// Every backend id's counters, summed over CPUs (indexed by id).
    fn all_backend_counters(&self) -> Result<Vec<TrafficCounters>, DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| DataplaneError::Cpus(error))?;
        let mut all = vec![TrafficCounters::default(); MAX_BACKENDS as usize];
        batch::for_each_per_cpu_entry(self.backend_stats.map(), cpus, |id: &u32, per_cpu: &[TrafficCounters]| {
            if let Some(total) = all.get_mut(*id as usize) {
                *total = per_cpu.iter().copied().fold(TrafficCounters::default(), add_traffic);
            }
        })
        .map_err(DataplaneError::Counters)?;
        Ok(all)
    }

    /// Traffic of every VIP by index: its own (packets that reached no backend), its removed
    /// backends', and its backends'.
    pub fn vip_traffic(&self) -> Result<BTreeMap<u32, TrafficCounters>, DataplaneError> {
        let mut vips = BTreeMap::new();
        for entry in &self.vips {
            let (_, info) = entry?;
            let own = sum_traffic(&self.vip_stats.get(&info.index, 0)?);
            let retired = sum_traffic(&self.vip_stats.get(&(MAX_VIPS + info.index), 0)?);
            vips.insert(info.index, add_traffic(own, retired));
        }
        let counters = self.all_backend_counters()?;
        let mut records = Vec::new();
        batch::for_each_entry(self.backends.map(), |id: &u32, b: &Backend| records.push((*id, *b)))
            .map_err(DataplaneError::Counters)?;
        for (id, b) in records {
            if let (true, Some(total)) = (b.is_assigned(), vips.get_mut(&u32::from(b.vip_index))) {
                *total = add_traffic(*total, counters.get(id as usize).copied().unwrap_or_default());
            }
        }
        Ok(vips)
    }

    pub fn vip_counters(&self, index: u32) -> Result<TrafficCounters, DataplaneError> {
        Ok(self.vip_traffic()?.get(&index).copied().unwrap_or_default())
    }

    pub fn backend_counters(&self, id: u32) -> Result<TrafficCounters, DataplaneError> {
        Ok(sum_traffic(&self.backend_stats.get(&id, 0)?))
    }
}

/// The VIP index and prefix of a source-list key.
fn listed_prefix(key: &LpmKey<SourceListKey>) -> (u32, ListedPrefix) {
    let data = key.data();
    let len = key.prefix_len().saturating_sub(SOURCE_LIST_FIXED_BITS) as u8;
    (u32::from_be_bytes(data.vip_index), ListedPrefix { family: data.family, addr: data.addr, len })
}

/// The clock of the data plane's flow times (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32, DataplaneError> {
    let c = std::ffi::CString::new(name).map_err(|_| DataplaneError::NoInterface(name.to_string()))?;
    // SAFETY: valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoInterface(name.to_string())),
        index => Ok(index),
    }
}

/// Loads the minimal `XDP_TX` program benchmarks compare against.
pub fn load_xdp_tx_baseline() -> Result<Ebpf, DataplaneError> {
    let mut ebpf = Ebpf::load(objects::XDP_TX_BASELINE)?;
    program(&mut ebpf, "xdp_tx_baseline")?.load()?;
    Ok(ebpf)
}

/// The XDP program `name` of `ebpf`.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let missing = DataplaneError::Missing { kind: "XDP program", name };
    ebpf.program_mut(name).ok_or(missing)?.try_into().map_err(|_| DataplaneError::Missing { kind: "XDP program", name })
}

fn typed<T: TryFrom<aya::maps::Map, Error = MapError>>(map: aya::maps::Map) -> Result<T, DataplaneError> {
    Ok(T::try_from(map)?)
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
    Ok(T::try_from(map)?)
}

pub(crate) fn sum_reason(per_cpu: &PerCpuValues<ReasonCounter>) -> ReasonCounter {
    per_cpu.iter().fold(ReasonCounter::default(), |acc, c| ReasonCounter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

fn add_traffic(a: TrafficCounters, b: TrafficCounters) -> TrafficCounters {
    TrafficCounters { packets: a.packets + b.packets, bytes: a.bytes + b.bytes, new_flows: a.new_flows + b.new_flows }
}

/// Sets a per-CPU slot that only the agent writes to `total` (held by the first CPU).
fn set_agent_total<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    index: u32,
    total: T,
) -> Result<(), DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| DataplaneError::Cpus(error))?;
    let mut values: Vec<T> = (0..cpus).map(|_| T::default()).collect();
    values[0] = total;
    let values = PerCpuValues::try_from(values).map_err(DataplaneError::Cpus)?;
    Ok(map.set(index, values, 0)?)
}

pub(crate) fn sum_traffic(per_cpu: &PerCpuValues<TrafficCounters>) -> TrafficCounters {
    per_cpu.iter().fold(TrafficCounters::default(), |acc, c| TrafficCounters {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
        new_flows: acc.new_flows + c.new_flows,
    })
}
