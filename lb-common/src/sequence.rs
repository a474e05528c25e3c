//! Round-robin sequences (userspace): the order in which a VIP's new flows are dealt to its
//! backends, smoothly interleaved in proportion to weight (the "smooth weighted round robin" of
//! nginx: no backend gets a burst of consecutive flows).
//!
//! The data plane walks the sequence with one position per CPU. Each CPU's flows are exactly in
//! proportion over every whole pass of the sequence, so the error of any backend's share is at
//! most one partial pass per CPU: fewer than `CPUs x sequence length` flows off target, whatever
//! the total.

use std::vec::Vec;

use crate::capacity::SEQUENCE_MAX_LEN;

/// One backend as the sequence builder sees it: identity (for a stable order), weight, id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceMember {
    /// Backend address (IPv4 in the first 4 bytes); with `family`, what orders the sequence stably.
    pub addr: [u8; 16],
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Relative weight; 0 leaves the backend out of the sequence.
    pub weight: u32,
    /// What the sequence holds for this backend (its backend id).
    pub id: u32,
}

/// The smooth weighted round-robin sequence of `members` (weight 0 members are left out).
/// Weights are reduced by their greatest common divisor; a sequence longer than
/// [`SEQUENCE_MAX_LEN`] is scaled down proportionally (each weight at least 1).
pub fn smooth_sequence(members: &[SequenceMember]) -> Vec<u32> {
    let mut live: Vec<SequenceMember> = members.iter().copied().filter(|m| m.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    live.sort_by_key(|m| (m.family, m.addr));
    let divisor = live.iter().fold(0, |g, m| gcd(g, m.weight));
    let mut weights: Vec<u64> = live.iter().map(|m| u64::from(m.weight / divisor)).collect();
    let total: u64 = weights.iter().sum();
    let cap = u64::from(SEQUENCE_MAX_LEN);
    if total > cap {
        weights = weights.iter().map(|w| (w * cap / total).max(1)).collect();
    }
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = std::vec![0i64; live.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w as i64;
        }
        let best = (0..live.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).expect("non-empty");
        current[best] -= total;
        out.push(live[best].id);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8, weight: u32) -> SequenceMember {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 0, n]);
        SequenceMember { addr, family: crate::family::IPV4, weight, id: u32::from(n) }
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(smooth_sequence(&[member(3, 1), member(1, 1), member(2, 1)]), std::vec![1, 2, 3]);
        assert_eq!(smooth_sequence(&[member(1, 5), member(2, 5)]), std::vec![1, 2]);
    }

    #[test]
    fn weights_interleave_without_bursts() {
        let s = smooth_sequence(&[member(1, 1), member(2, 2), member(3, 3)]);
        assert_eq!(s.len(), 6);
        assert_eq!(s.iter().filter(|&&id| id == 3).count(), 3);
        assert_eq!(s.iter().filter(|&&id| id == 2).count(), 2);
        // No backend twice in a row, even the heaviest.
        assert!(s.windows(2).all(|w| w[0] != w[1]), "{s:?}");
    }

    #[test]
    fn long_sequences_are_scaled_and_zero_weights_left_out() {
        let s = smooth_sequence(&[member(1, 65_535), member(2, 65_534), member(3, 0)]);
        assert!(s.len() as u32 <= SEQUENCE_MAX_LEN);
        assert!(!s.contains(&3));
        let ones = s.iter().filter(|&&id| id == 1).count() as f64 / s.len() as f64;
        assert!((ones - 0.5).abs() < 0.001, "{ones}");
        assert!(smooth_sequence(&[member(1, 0)]).is_empty());
    }
}
