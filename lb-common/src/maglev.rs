//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! The data plane only needs [`table_slot`]; the table itself is built in userspace by
//! [`build_table`] (feature `user`) and handed over whole.

/// The table slot of a flow: the one lookup both the data plane and `lb trace` perform.
/// `table_size` must be non-zero (a VIP without backends has no table and is never looked up).
#[inline(always)]
pub fn table_slot(flow_hash: u32, table_size: u32) -> u32 {
    flow_hash % table_size
}

/// Seeds of a backend's permutation (offset, skip). Part of the fleet contract, like the flow hash.
pub const PERMUTATION_OFFSET_SEED: u32 = 0x4d47_4c31; // "MGL1"
/// Seed of a backend's permutation skip (see [`PERMUTATION_OFFSET_SEED`]).
pub const PERMUTATION_SKIP_SEED: u32 = 0x4d47_4c32; // "MGL2"

#[cfg(feature = "user")]
pub use builder::*;

#[cfg(feature = "user")]
mod builder {
    use std::vec::Vec;

    use crate::{
        capacity::{MAGLEV_MAX_TABLE_SIZE, MAGLEV_TABLE_SIZES},
        hash::murmur3_words,
    };

    use super::{PERMUTATION_OFFSET_SEED, PERMUTATION_SKIP_SEED};

    /// One backend as the builder sees it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MaglevBackend {
        /// Identity: the backend's address (IPv4 in the first 4 bytes) and family. It alone
        /// decides the backend's permutation, so a backend keeps its preferences whatever else changes.
        pub addr: [u8; 16],
        /// Address family ([`crate::family`]); with `addr`, the backend's identity.
        pub family: u8,
        /// Relative weight; 0 takes the backend out of the table.
        pub weight: u32,
        /// What the table stores for this backend (its backend id).
        pub id: u32,
    }

    /// Why a Maglev table cannot be built ([`build_table`]).
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum MaglevError {
        /// The table size is not a prime.
        #[error("Maglev table size {0} is not a prime; use a prime such as 251, 1021, 4093, 16381 or 65537")]
        NotPrime(u32),
        /// The table size is outside 3 to [`MAGLEV_MAX_TABLE_SIZE`].
        #[error("Maglev table size {size} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}")]
        SizeOutOfRange {
            /// The table size asked for.
            size: u32,
        },
        /// No backend has a non-zero weight.
        #[error("no backend with a non-zero weight")]
        NoBackends,
        /// A backend address is listed twice (the address, as text).
        #[error("backend {0} is listed twice")]
        DuplicateBackend(std::string::String),
        /// More backends with a non-zero weight than table entries.
        #[error("{backends} backends do not fit a table of {size} entries")]
        TooManyBackends {
            /// Backends with a non-zero weight.
            backends: usize,
            /// The table size asked for.
            size: u32,
        },
    }

    /// The table size of a VIP whose configuration names none: the smallest of
    /// [`MAGLEV_TABLE_SIZES`] with 100 entries per backend (about 1% imbalance), else the largest.
    pub fn default_table_size(backends: usize) -> u32 {
        let wanted = (backends as u64).saturating_mul(100);
        MAGLEV_TABLE_SIZES.into_iter().find(|&size| u64::from(size) >= wanted).unwrap_or(MAGLEV_MAX_TABLE_SIZE)
    }

    /// Whether `n` is prime (trial division; table sizes are small).
    pub fn is_prime(n: u32) -> bool {
        if n < 2 {
            return false;
        }
        let mut d = 2u32;
        while d.saturating_mul(d) <= n {
            if n.is_multiple_of(d) {
                return false;
            }
            d += 1;
        }
        true
    }

    /// Builds a weighted Maglev table of `table_size` entries holding backend ids.
    ///
    /// Deterministic: the same backends give the same table in whatever order they are given.
    /// Each backend gets its weighted share of entries to within one entry (largest-remainder
    /// quotas), and the backends claim entries in paced rounds, each walking its own permutation,
    /// so the table keeps Maglev's small disruption when a backend comes or goes.
    pub fn build_table(backends: &[MaglevBackend], table_size: u32) -> Result<Vec<u32>, MaglevError> {
        if !(3..=MAGLEV_MAX_TABLE_SIZE).contains(&table_size) {
            return Err(MaglevError::SizeOutOfRange { size: table_size });
        }
        if !is_prime(table_size) {
            return Err(MaglevError::NotPrime(table_size));
        }
        let mut live: Vec<MaglevBackend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
        if live.is_empty() {
            return Err(MaglevError::NoBackends);
        }
        live.sort_by_key(|b| (b.family, b.addr));
        if let Some([first, _]) = live.windows(2).find(|w| (w[0].family, w[0].addr) == (w[1].family, w[1].addr)) {
            return Err(MaglevError::DuplicateBackend(describe(first)));
        }
        if live.len() > table_size as usize {
            return Err(MaglevError::TooManyBackends { backends: live.len(), size: table_size });
        }

        let size = u64::from(table_size);
        let quotas = quotas(&live, size);
        let max_quota = *quotas.iter().max().expect("non-empty");

        // Positions in u32, and each step a conditional subtraction rather than a division:
        // the probe loop is the whole cost of a build.
        let (mut next_candidate, skips): (Vec<u32>, Vec<u32>) = live
            .iter()
            .map(|b| {
                let words = identity_words(b);
                let offset = murmur3_words(&words, PERMUTATION_OFFSET_SEED) % table_size;
                let skip = murmur3_words(&words, PERMUTATION_SKIP_SEED) % (table_size - 1) + 1;
                (offset, skip)
            })
            .unzip();
        let mut claimed = std::vec![0u64; live.len()];
        let step = |position: u32, skip: u32| {
            // Both below the table size (below 2^20), so the sum cannot overflow.
            let next = position + skip;
            if next >= table_size { next - table_size } else { next }
        };

        // Which slots are taken, one bit each: the probes read this (128 KiB for the largest
        // table, cache-resident) rather than the table itself (4 MiB).
        let mut taken = std::vec![0u64; (table_size as usize).div_ceil(64)];
        let is_taken = |taken: &[u64], slot: u32| taken[(slot >> 6) as usize] & (1 << (slot & 63)) != 0;
        let mut table = std::vec![0u32; table_size as usize];
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < size {
            round += 1;
            for i in 0..live.len() {
                // Pacing: after round n a backend holds at most n * quota / max_quota entries,
                // so light and heavy backends interleave instead of heavy ones taking the front.
                if claimed[i] >= quotas[i] || claimed[i] * max_quota >= round * quotas[i] {
                    continue;
                }
                let mut candidate = next_candidate[i];
                while is_taken(&taken, candidate) {
                    candidate = step(candidate, skips[i]);
                }
                taken[(candidate >> 6) as usize] |= 1 << (candidate & 63);
                table[candidate as usize] = live[i].id;
                next_candidate[i] = step(candidate, skips[i]);
                claimed[i] += 1;
                filled += 1;
            }
        }
        Ok(table)
    }

    /// Entries per backend: floor of the exact share, plus one for the largest remainders
    /// (ties to the earlier backend in identity order), summing to `size`.
    fn quotas(live: &[MaglevBackend], size: u64) -> Vec<u64> {
        let total: u64 = live.iter().map(|b| u64::from(b.weight)).sum();
        let mut quotas: Vec<u64> = live.iter().map(|b| size * u64::from(b.weight) / total).collect();
        let assigned: u64 = quotas.iter().sum();
        let mut by_remainder: Vec<usize> = (0..live.len()).collect();
        by_remainder.sort_by_key(|&i| std::cmp::Reverse(size * u64::from(live[i].weight) % total));
        for &i in by_remainder.iter().take((size - assigned) as usize) {
            quotas[i] += 1;
        }
        quotas
    }

    fn identity_words(b: &MaglevBackend) -> [u32; 5] {
        let mut bytes = [0u8; 20];
        bytes[..16].copy_from_slice(&b.addr);
        bytes[16] = b.family;
        crate::hash::le_words(&bytes)
    }

    fn describe(b: &MaglevBackend) -> std::string::String {
        use std::string::ToString;
        crate::addr::from_key(b.family, &b.addr).to_string()
    }
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::{
        capacity::{MAGLEV_MAX_TABLE_SIZE, MAGLEV_TABLE_SIZES},
        family,
    };

    fn backend(n: u32, weight: u32) -> MaglevBackend {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, (n >> 8) as u8 + 10, n as u8]);
        MaglevBackend { addr, family: family::IPV4, weight, id: n }
    }

    fn counts(table: &[u32], ids: u32) -> Vec<u64> {
        let mut counts = std::vec![0u64; ids as usize];
        for &id in table {
            counts[id as usize] += 1;
        }
        counts
    }

    fn changed(a: &[u32], b: &[u32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn one_backend_fills_the_table() {
        let table = build_table(&[backend(7, 3)], 65_537).unwrap();
        assert_eq!(table.len(), 65_537);
        assert!(table.iter().all(|&id| id == 7));
    }

    #[test]
    fn each_share_is_within_one_entry_of_its_weighted_target() {
        for weights in [&[1u32, 1, 1][..], &[1, 2, 3], &[1, 100], &[5, 7, 11, 13, 17, 1, 1000]] {
            let backends: Vec<_> = weights.iter().enumerate().map(|(i, &w)| backend(i as u32, w)).collect();
            for size in [251u32, 4093, 65_537] {
                let table = build_table(&backends, size).unwrap();
                let total: u32 = weights.iter().sum();
                for (i, count) in counts(&table, weights.len() as u32).into_iter().enumerate() {
                    let target = f64::from(size) * f64::from(weights[i]) / f64::from(total);
                    assert!(
                        (count as f64 - target).abs() < 1.0,
                        "weights {weights:?} size {size}: backend {i} has {count}, target {target}"
                    );
                }
            }
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let backends: Vec<_> = (0..50).map(|i| backend(i, 1 + i % 4)).collect();
        let mut reversed = backends.clone();
        reversed.reverse();
        let mut rotated = backends.clone();
        rotated.rotate_left(17);
        let table = build_table(&backends, 4093).unwrap();
        assert_eq!(table, build_table(&reversed, 4093).unwrap());
        assert_eq!(table, build_table(&rotated, 4093).unwrap());
    }

    fn removal_disruption(n: u32) -> f64 {
        let all: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
        let without: Vec<_> = all.iter().copied().filter(|b| b.id != n / 2).collect();
        changed(&build_table(&all, 65_537).unwrap(), &build_table(&without, 65_537).unwrap())
    }

    #[test]
    fn removing_one_of_100_changes_at_most_1_6_percent() {
        let moved = removal_disruption(100);
        assert!(moved <= 0.016, "{:.3}% changed", moved * 100.0);
    }

    #[test]
    fn removing_one_of_1000_changes_at_most_0_8_percent() {
        let moved = removal_disruption(1000);
        assert!(moved <= 0.008, "{:.3}% changed", moved * 100.0);
    }

    #[test]
    fn a_weight_change_moves_little_more_than_the_share_it_changes() {
        let before: Vec<_> = (0..10).map(|i| backend(i, 10)).collect();
        let mut after = before.clone();
        after[3].weight = 15;
        let (a, b) = (build_table(&before, 65_537).unwrap(), build_table(&after, 65_537).unwrap());
        // Backend 3 goes from 10/100 to 15/105 of the table: 4.29 points must move at least.
        let minimum = 15.0 / 105.0 - 10.0 / 100.0;
        let moved = changed(&a, &b);
        assert!(moved <= 2.0 * minimum, "moved {:.2}%, minimum {:.2}%", moved * 100.0, minimum * 100.0);
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert_eq!(build_table(&[backend(1, 1)], 65_536), Err(MaglevError::NotPrime(65_536)));
        assert_eq!(build_table(&[backend(1, 1)], 1_048_583), Err(MaglevError::SizeOutOfRange { size: 1_048_583 }));
        assert_eq!(build_table(&[backend(1, 0)], 251), Err(MaglevError::NoBackends));
        assert!(matches!(build_table(&[backend(1, 1), backend(1, 2)], 251), Err(MaglevError::DuplicateBackend(_))));
        let many: Vec<_> = (0..300).map(|i| backend(i, 1)).collect();
        assert!(matches!(build_table(&many, 251), Err(MaglevError::TooManyBackends { .. })));
    }

    #[test]
    fn default_sizes_give_100_entries_per_backend() {
        assert_eq!(default_table_size(0), 65_537);
        assert_eq!(default_table_size(655), 65_537);
        assert_eq!(default_table_size(656), 131_071);
        assert_eq!(default_table_size(5000), 524_287);
        assert_eq!(default_table_size(20_000), MAGLEV_MAX_TABLE_SIZE);
        assert!(MAGLEV_TABLE_SIZES.iter().all(|&size| is_prime(size) && size <= MAGLEV_MAX_TABLE_SIZE));
    }

    #[test]
    fn a_table_of_5000_backends_balances_within_1_percent() {
        let all: Vec<_> = (0..5000).map(|i| backend(i, 1)).collect();
        let size = default_table_size(all.len());
        let table = build_table(&all, size).unwrap();
        let counts = counts(&table, 5000);
        let (least, most) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        // Largest-remainder quotas: every backend within one entry of its exact share.
        assert!(most - least <= 1, "{least}..{most}");
        assert!((most - least) as f64 / (f64::from(size) / 5000.0) <= 0.01);
    }
}
