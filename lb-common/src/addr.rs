//! Addresses in key form: a family tag and 16 bytes, IPv4 in the first 4 (the rest zero).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::family;

/// (family, 16-byte address) of `address`, as keys and records store it.
pub fn to_key(address: IpAddr) -> (u8, [u8; 16]) {
    match address {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            (family::IPV4, out)
        }
        IpAddr::V6(a) => (family::IPV6, a.octets()),
    }
}

/// The address a key holds.
pub fn from_key(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == family::IPV4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for a in ["198.18.0.1", "fd00::21", "::ffff:198.18.0.1"] {
            let a: IpAddr = a.parse().unwrap();
            let (f, k) = to_key(a);
            assert_eq!(from_key(f, &k), a);
        }
    }
}
