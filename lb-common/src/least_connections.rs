//! Least connections by the power of two choices: the rules the data plane follows for a new
//! flow, shared with `lb trace` so that its preview agrees.
//!
//! Both candidates come from the VIP's weighted Maglev table, so each is drawn in proportion to
//! weight; the comparison then weighs active flows by weight too.

use crate::{hash::fmix32, maglev::table_slot};

/// Draws for the second candidate until one differs from the first. With three equal backends
/// all four draws meet the first candidate for 1 new flow in 81.
pub const SECOND_CHOICE_DRAWS: u32 = 4;

/// Keeps the draws apart from the flow hash's own bits.
const SECOND_CHOICE_SALT: u32 = 0x5eed_c0de;

/// The candidates for a new flow with flow hash `hash` in a table of `table_size` entries read
/// through `backend_at` (slot -> backend id): first the Maglev choice of the flow hash, then
/// the first different backend among [`SECOND_CHOICE_DRAWS`] rehashes, if any.
#[inline(always)]
pub fn candidates(hash: u32, table_size: u32, backend_at: impl Fn(u32) -> Option<u32>) -> Option<(u32, Option<u32>)> {
    let first = backend_at(table_slot(hash, table_size))?;
    let mut draw = hash;
    let mut i = 0;
    while i < SECOND_CHOICE_DRAWS {
        draw = fmix32(draw ^ SECOND_CHOICE_SALT);
        let second = backend_at(table_slot(draw, table_size))?;
        if second != first {
            return Some((first, Some(second)));
        }
        i += 1;
    }
    Some((first, None))
}

/// How much busier (per unit of weight) than the other the Maglev candidate must be before it
/// loses a new flow: an eighth (9/8). Within that the Maglev candidate keeps it, which is the
/// choice every balancer of a fleet computes alike: a connection that ECMP moves to another
/// member (its member died or was drained) reaches the same backend there whenever its first
/// choice was the Maglev candidate. Counts that differ by a few flows in thousands are noise the
/// comparison should not follow; a backend that is an eighth busier is not.
pub const TOLERANCE_NUMERATOR: u64 = 9;
/// See [`TOLERANCE_NUMERATOR`].
pub const TOLERANCE_DENOMINATOR: u64 = 8;

/// Whether the second candidate wins: the first carries more than [`TOLERANCE_NUMERATOR`] /
/// [`TOLERANCE_DENOMINATOR`] times its active flows per unit of weight. A tie (and anything
/// within the tolerance) keeps the first, so a VIP without active flows places new flows exactly
/// as Maglev does. Counts read at most 2^28 and weights at most 2^24 (more than any flow table
/// or weight holds), so the products cannot overflow.
#[inline(always)]
pub fn second_wins(first_active: u64, first_weight: u32, second_active: u64, second_weight: u32) -> bool {
    const MAX_COUNT: u64 = 1 << 28;
    const MAX_WEIGHT: u64 = 1 << 24;
    let (a, b) = (first_active.min(MAX_COUNT), second_active.min(MAX_COUNT));
    let (wa, wb) = (u64::from(first_weight).min(MAX_WEIGHT), u64::from(second_weight).min(MAX_WEIGHT));
    // a / wa > 9/8 * b / wb  <=>  8 * a * wb > 9 * b * wa, without dividing.
    TOLERANCE_DENOMINATOR * a * wb > TOLERANCE_NUMERATOR * b * wa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_candidate_differs_from_the_first_when_it_can() {
        // Three backends spread over a 7-entry table.
        let table = [10, 11, 12, 10, 11, 12, 10];
        let at = |slot: u32| table.get(slot as usize).copied();
        let mut without_second = 0;
        for hash in 0..10_000u32 {
            let (first, second) = candidates(hash.wrapping_mul(2_654_435_761), 7, at).unwrap();
            assert_eq!(first, table[table_slot(hash.wrapping_mul(2_654_435_761), 7) as usize]);
            match second {
                Some(s) => assert_ne!(s, first),
                None => without_second += 1,
            }
        }
        // (3/7)^4 for backend 10, (2/7)^4 for the others, weighted by how often each is first: ~2%.
        assert!(without_second < 400, "{without_second} of 10000 flows had a single candidate");
        let single = [7, 7, 7];
        assert_eq!(candidates(5, 3, |s| single.get(s as usize).copied()), Some((7, None)));
    }

    #[test]
    fn fewer_active_flows_per_weight_wins_and_a_tie_keeps_the_first() {
        assert!(!second_wins(0, 1, 0, 1));
        assert!(!second_wins(5, 1, 5, 1));
        assert!(second_wins(6, 1, 5, 1));
        assert!(second_wins(1, 1, 0, 1));
        // Within an eighth the Maglev candidate keeps the flow.
        assert!(!second_wins(18, 1, 16, 1));
        assert!(second_wins(19, 1, 16, 1));
        assert!(!second_wins(900, 1, 800, 1));
        assert!(second_wins(901, 1, 800, 1));
        assert!(!second_wins(5, 1, 6, 1));
        // Weight 2 carries twice the flows before it loses.
        assert!(!second_wins(5, 1, 10, 2));
        assert!(second_wins(5, 1, 8, 2));
        // A weight-0 backend (drained) never wins.
        assert!(!second_wins(100, 1, 0, 0));
        assert!(second_wins(u64::MAX, 1, u64::MAX - 1, u32::MAX));
        // Counts and weights past any real one are clamped, never overflow: equal after clamping.
        assert!(!second_wins(u64::MAX, u32::MAX, u64::MAX - 1, u32::MAX));
        assert!(second_wins(u64::MAX, u32::MAX, 0, u32::MAX));
    }
}
