//! Fixtures of the programs and maps as the kernel holds them: the verifier's budget, maps pinned by
//! other builds, and the host's VLAN offload.

use std::process::Command;

use anyhow::{Context as _, ensure};
use aya::maps::MapData;
use lb_common::maps;
use lb_lab::run;
use lb_userspace::{
    dataplane::pins::PinDir,
    dataplane::{Balancer, BalancerSizes},
};

use crate::fixture::{Body, Env};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("host/receive_vlan_offload_turned_off", vlan_offload_turned_off),
        ("verifier/balancer_headroom", verifier_headroom),
        ("pins/a_pinned_map_of_another_layout_is_refused", pinned_map_of_another_layout),
        ("pins/the_previous_layouts_maps_are_adopted_by_renaming", previous_layout_adopted),
    ]
}

/// The kernel verifies at most a million instructions per program, counting every path it
/// explores. A branchy stage in the fast path can multiply the count by the paths after it, so
/// this fixture keeps a margin for what comes next and says how much is used.
fn verifier_headroom(env: &mut Env) -> anyhow::Result<()> {
    const LIMIT: u32 = 1_000_000;
    let info = env.balancer.program()?.info()?;
    // `bpftool prog` shows whose it is.
    ensure!(
        info.name_as_str() == Some(lb_userspace::dataplane::BALANCER_PROGRAM),
        "the program is named {:?}",
        info.name_as_str()
    );
    // Type information the kernel refuses is dropped by the loader with a warning; types BTF
    // cannot express (an `Option` of a tuple holding a reference, returned by a subprogram) did.
    ensure!(info.btf_id().is_some(), "the balancer was loaded without its BTF: the kernel refused the object's types");
    let verified = info.verified_instruction_count().context("kernel without verified_insns")?;
    println!("balancer: {verified} instructions verified of the kernel's {LIMIT}");
    ensure!(
        verified < LIMIT * 7 / 10,
        "the verifier explored {verified} instructions, over 70% of its limit of {LIMIT}: move branchy stages into \
         #[inline(never)] functions or compute more in the agent"
    );
    Ok(())
}

/// The agent's VLAN offload switch on a real interface (a veth pair in this test's namespace):
/// both receive offloads on before, off after, and a second call finds nothing to do.
fn vlan_offload_turned_off(_: &mut Env) -> anyhow::Result<()> {
    use lb_userspace::host::vlan::{RECEIVE_VLAN_OFFLOADS, keep_vlan_tags, receive_offload};
    let (a, b) = ("lbvlan0", "lbvlan1");
    run(Command::new("ip").args(["link", "add", a, "type", "veth", "peer", "name", b]))?;
    let result = (|| {
        for feature in RECEIVE_VLAN_OFFLOADS {
            ensure!(receive_offload(a, feature)? == Some(true), "{feature} was not on to begin with");
        }
        let off = keep_vlan_tags(a)?;
        ensure!(off == RECEIVE_VLAN_OFFLOADS, "turned off {off:?}");
        for feature in RECEIVE_VLAN_OFFLOADS {
            ensure!(receive_offload(a, feature)? == Some(false), "{feature} still on");
        }
        ensure!(keep_vlan_tags(a)?.is_empty(), "a second call turned something off");
        Ok(())
    })();
    run(Command::new("ip").args(["link", "del", a]))?;
    result
}

/// Maps pinned by other builds, each refused with the map, what is wrong and what to do, before
/// anything is loaded: an IPv4 flow table with 40-byte keys and 24-byte values, flow tables under
/// the names older builds gave them, and a backends array of an older limit.
fn pinned_map_of_another_layout(_: &mut Env) -> anyhow::Result<()> {
    let pins = PinDir::instance(&format!("lbtest-layout-{}", std::process::id()));
    // (map, bpftool's type key value entries, what the refusal must say)
    let cases: [(&str, [&str; 4], &[&str]); 4] = [
        (
            maps::FLOWS_V4,
            ["lru_hash", "40", "24", "64"],
            &["map LB_FLOWS_V4", "40-byte keys and 24-byte values", "needs 16 and 16"],
        ),
        ("FLOWS", ["lru_hash", "40", "24", "64"], &["map FLOWS pinned", "older version"]),
        // Under the name of the previous layout, and of another layout too.
        ("FLOWS_V4", ["lru_hash", "40", "24", "64"], &["map LB_FLOWS_V4 pinned", "/FLOWS_V4 has 40-byte keys"]),
        (
            maps::BACKENDS,
            ["array", "4", "32", "4096"],
            &["map LB_BACKENDS", "4096 entries where this build needs 8192"],
        ),
    ];
    for (name, [kind, key, value, entries], expected) in cases {
        pins.create()?;
        let map = pins.map(name);
        let path = map.to_str().context("pin path")?;
        run(Command::new("bpftool")
            .args(["map", "create", path, "type", kind, "key", key, "value", value])
            .args(["entries", entries, "name", name]))?;
        let result = match Balancer::open_pinned(BalancerSizes::flows(64), &pins) {
            Ok(_) => Err(anyhow::anyhow!("a pinned {name} of another build was adopted")),
            Err(e) => {
                let message = e.to_string();
                let clear = expected.iter().all(|part| message.contains(part)) && message.contains("lb detach");
                if clear { Ok(()) } else { Err(anyhow::anyhow!("unclear refusal: {message}")) }
            }
        };
        pins.remove()?;
        result?;
    }
    Ok(())
}

/// Maps pinned by the previous layout (the same maps, named without the prefix) are renamed and
/// adopted: the very maps, so their contents carry over.
fn previous_layout_adopted(_: &mut Env) -> anyhow::Result<()> {
    let pins = PinDir::instance(&format!("lbtest-previous-{}", std::process::id()));
    pins.create()?;
    let map_id = |path: &std::path::Path| -> anyhow::Result<u32> { Ok(MapData::from_pin(path)?.info()?.id()) };
    let result = (|| {
        let mut before = Vec::new();
        for (old, kind, key, value, entries) in
            [("FLOWS_V4", "lru_hash", "16", "16", "64"), ("BACKENDS", "array", "4", "32", "8192")]
        {
            let path = pins.map(old);
            run(Command::new("bpftool")
                .args(["map", "create", path.to_str().context("pin path")?, "type", kind, "key", key, "value"])
                .args([value, "entries", entries, "name", old]))?;
            before.push(map_id(&path)?);
        }
        let balancer = Balancer::open_pinned(BalancerSizes::flows(64), &pins)?;
        drop(balancer);
        for ((old, new), id) in [("FLOWS_V4", maps::FLOWS_V4), ("BACKENDS", maps::BACKENDS)].into_iter().zip(before) {
            ensure!(!pins.map(old).exists(), "{old} is still pinned under its old name");
            ensure!(map_id(&pins.map(new))? == id, "{new} is not the map pinned as {old}");
        }
        Ok(())
    })();
    pins.remove()?;
    result
}
