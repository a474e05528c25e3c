//! A VIP's table of backend ids (a Maglev table or a round-robin sequence) as the data plane
//! stores it: in chunks of [`TABLE_CHUNK_ENTRIES`] entries, each chunk one value of a hash map
//! that allocates on insert, so tables take memory in proportion to their size rather than to
//! the largest size allowed. Each VIP has two tables (see [`crate::vip::VipInfo::active_table`]):
//! the agent writes the one not live, then switches.

use crate::capacity::{MAGLEV_MAX_TABLE_SIZE, MAX_VIPS, TABLE_CHUNK_ENTRIES, TABLES_PER_VIP};

/// One chunk of a table.
pub type TableChunk = [u32; TABLE_CHUNK_ENTRIES as usize];

/// Chunks of the largest table.
pub const MAX_CHUNKS_PER_TABLE: u32 = MAGLEV_MAX_TABLE_SIZE.div_ceil(TABLE_CHUNK_ENTRIES);

const CHUNK_SHIFT: u32 = TABLE_CHUNK_ENTRIES.trailing_zeros();
const _: () = assert!(TABLE_CHUNK_ENTRIES.is_power_of_two());
// The key packs the table (VIP index x 2 + which) above the chunk's index.
const _: () = assert!(MAX_CHUNKS_PER_TABLE <= 1 << 8);
const _: () = assert!(MAX_VIPS * TABLES_PER_VIP <= 1 << 24);

/// The key of chunk `chunk` of table `table` ([`crate::vip::VipInfo::live_table_slot`]).
#[inline(always)]
pub const fn chunk_key(table: u32, chunk: u32) -> u32 {
    (table << 8) | chunk
}

/// Where entry `slot` of a table is: (its chunk, its index in the chunk).
#[inline(always)]
pub const fn locate(slot: u32) -> (u32, usize) {
    (slot >> CHUNK_SHIFT, (slot & (TABLE_CHUNK_ENTRIES - 1)) as usize)
}

/// Chunks that a table of `len` entries takes.
pub const fn chunks(len: u32) -> u32 {
    len.div_ceil(TABLE_CHUNK_ENTRIES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_distinct_chunk_positions() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(4095), (0, 4095));
        assert_eq!(locate(4096), (1, 0));
        assert_eq!(
            locate(MAGLEV_MAX_TABLE_SIZE - 1),
            (MAX_CHUNKS_PER_TABLE - 1, ((MAGLEV_MAX_TABLE_SIZE - 1) % 4096) as usize)
        );
        assert_eq!(chunks(65_537), 17);
        assert_eq!(chunks(4096), 1);
        assert_ne!(chunk_key(1, 0), chunk_key(0, 255));
        assert_eq!(chunk_key(MAX_VIPS * TABLES_PER_VIP - 1, MAX_CHUNKS_PER_TABLE - 1), 0x3ffff);
    }
}
