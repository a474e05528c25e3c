//! The compiled XDP programs, embedded at build time by `build.rs` (through aya-build).

/// The balancer (program `balancer`).
pub static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));
/// The backend-side decapsulation program (program `decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));
/// The minimal `XDP_TX` program benchmarks compare against (program `xdp_tx_baseline`).
pub static XDP_TX_BASELINE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-tx-baseline"));
/// The benchmark's live-frames traffic generator (program `bench_generator`).
pub static BENCH_GENERATOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-generator"));
/// The benchmark's sink, counting and dropping what comes back (program `bench_sink`).
pub static BENCH_SINK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-sink"));

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lb_common::maps;
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    /// The names of the maps an eBPF object defines (its symbols in the `maps` section).
    fn map_names(elf: &[u8]) -> BTreeSet<String> {
        let file = object::File::parse(elf).expect("an ELF object");
        let section = file.section_by_name("maps").expect("a maps section").index();
        file.symbols()
            .filter(|s| s.section_index() == Some(section))
            .map(|s| s.name().expect("a symbol name").to_string())
            .collect()
    }

    #[test]
    fn programs_name_their_maps_as_lb_common_does() {
        for (program, object, expected) in
            [("balancer", super::BALANCER, &maps::BALANCER[..]), ("decap", super::DECAP, &maps::DECAP[..])]
        {
            let expected: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
            assert_eq!(map_names(object), expected, "the {program} program's maps");
        }
    }
}
