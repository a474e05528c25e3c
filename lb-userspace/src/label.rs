//! How addresses and VIPs are named in logs, tables and metrics.

pub fn show_addr(family: u8, addr: &[u8; 16]) -> String {
    lb_common::addr::from_key(family, addr).to_string()
}

/// A MAC address as `02:00:00:00:00:01`.
pub fn show_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

pub fn show_vip(key: &lb_common::vip::VipKey) -> String {
    let proto = match key.protocol {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    };
    let port = u16::from_be_bytes(key.port);
    let addr = show_addr(key.family, &key.addr);
    if key.family == lb_common::family::IPV4 {
        format!("{addr}:{port}/{proto}")
    } else {
        format!("[{addr}]:{port}/{proto}")
    }
}
