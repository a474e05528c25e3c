//! The decapsulation program that backends run, and its maps.

use std::net::IpAddr;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::Xdp,
};

use lb_common::{
    counters::{Reason, ReasonCounter},
    decap::{DECAP_SOURCE_FIXED_BITS, DecapConfig, DecapSourceKey},
    maps as names,
    vip::VipAddrKey,
};

use crate::config::XdpMode;

use super::{
    DECAP_PROGRAM, DataplaneError, PinDir,
    attach::{Attached, attach},
    ifindex,
    layout::{check_pinned_layouts, migrate_renamed},
    objects, program, sum_reason, take,
};

/// The decapsulation program and its maps.
pub struct Decap {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipAddrKey, u32>,
    sources: LpmTrie<MapData, DecapSourceKey, u32>,
    config: Array<MapData, DecapConfig>,
    reason_stats: PerCpuArray<MapData, ReasonCounter>,
}

impl Decap {
    pub fn load() -> Result<Self, DataplaneError> {
        Self::from_ebpf(EbpfLoader::new().load(objects::DECAP)?)
    }

    /// Loads the decapsulation program with its maps pinned (adopted if already there) in `pins`.
    pub fn open_pinned(pins: &PinDir) -> Result<Self, DataplaneError> {
        pins.create().map_err(|error| DataplaneError::Pins { path: pins.root().to_path_buf(), error })?;
        // An older build's pinned reason counters count fewer reasons.
        migrate_renamed(pins)?;
        check_pinned_layouts(pins)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<_> = names::DECAP.iter().map(|name| (*name, pins.map(name))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::from_ebpf(loader.load(objects::DECAP)?)
    }

    fn from_ebpf(mut ebpf: Ebpf) -> Result<Self, DataplaneError> {
        let program: &mut Xdp = program(&mut ebpf, DECAP_PROGRAM)?;
        program.load()?;
        Ok(Self {
            vips: take(&mut ebpf, names::DECAP_VIPS)?,
            sources: take(&mut ebpf, names::DECAP_SOURCES)?,
            config: take(&mut ebpf, names::DECAP_CONFIG)?,
            reason_stats: take(&mut ebpf, names::REASON_STATS)?,
            ebpf,
        })
    }

    /// Makes `prefixes` the exact set of tunnel sources decapsulated (the balancers'), and
    /// `unlisted` (`lb_common::decap::unlisted_source`) what happens to other sources' tunnel
    /// packets. New prefixes go in before stale ones go, so a balancer's packets are never refused
    /// while the set changes.
    pub fn set_sources(&mut self, prefixes: &[(IpAddr, u8)], unlisted: u32) -> Result<(), DataplaneError> {
        let wanted: Vec<LpmKey<DecapSourceKey>> = prefixes
            .iter()
            .map(|&(network, len)| {
                let (family, addr) = lb_common::addr::to_key(network);
                LpmKey::new(DECAP_SOURCE_FIXED_BITS + u32::from(len), DecapSourceKey { family, addr })
            })
            .collect();
        let same = |a: &LpmKey<DecapSourceKey>, b: &LpmKey<DecapSourceKey>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        let stale: Vec<_> =
            self.sources.keys().filter_map(Result::ok).filter(|k| !wanted.iter().any(|w| same(w, k))).collect();
        for key in &wanted {
            self.sources.insert(key, 1, 0)?;
        }
        self.config.set(0, DecapConfig { unlisted_source: unlisted }, 0)?;
        for key in &stale {
            self.sources.remove(key)?;
        }
        Ok(())
    }

    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, DECAP_PROGRAM)
    }

    /// Decapsulate tunnel packets whose inner destination is `addr`.
    pub fn add_vip(&mut self, addr: VipAddrKey) -> Result<(), DataplaneError> {
        Ok(self.vips.insert(addr, 1, 0)?)
    }

    pub fn remove_vip(&mut self, addr: &VipAddrKey) -> Result<(), DataplaneError> {
        Ok(self.vips.remove(addr)?)
    }

    /// Makes `addrs` the exact set of VIP addresses to decapsulate for.
    pub fn set_vips(&mut self, addrs: &[VipAddrKey]) -> Result<(), DataplaneError> {
        let stale: Vec<VipAddrKey> = self.vips.keys().filter_map(Result::ok).filter(|k| !addrs.contains(k)).collect();
        for addr in addrs {
            self.add_vip(*addr)?;
        }
        for addr in &stale {
            self.remove_vip(addr)?;
        }
        Ok(())
    }

    /// Attaches to `interface` (or replaces the program in its pinned link).
    pub fn attach(&mut self, interface: &str, mode: XdpMode, pins: &PinDir) -> Result<Attached, DataplaneError> {
        ifindex(interface)?;
        attach(self.program()?, interface, mode, &pins.link(interface))
    }

    pub fn reason_counters(&self) -> Result<Vec<ReasonCounter>, DataplaneError> {
        Reason::ALL.iter().map(|&r| Ok(sum_reason(&self.reason_stats.get(&(r as u32), 0)?))).collect()
    }
}
