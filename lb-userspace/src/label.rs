//! How addresses, VIPs and bytes are named in logs, tables, metrics and the configuration, and
//! bytes read back from hexadecimal.

pub fn show_addr(family: u8, addr: &[u8; 16]) -> String {
    lb_common::addr::from_key(family, addr).to_string()
}

/// A MAC address as `02:00:00:00:00:01`.
pub fn show_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Bytes in hexadecimal, without separators (`0a1b`).
pub fn show_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes written in hexadecimal, spaces allowed (`"0a1b 2c"`).
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("\"{digits}\" is not hexadecimal bytes (pairs of 0-9, a-f)"));
    }
    Ok((0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("checked")).collect())
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
