//! The kernel's ethtool ioctl (`SIOCETHTOOL`): string sets named by the driver, feature words,
//! and driver statistics (`ethtool -S`). Everything is looked up by the names the kernel gives,
//! so no bit or position is assumed.

use std::{ffi::CString, net::UdpSocket, os::fd::AsRawFd as _};

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// The string set of driver statistics (`ethtool -S`).
pub const ETH_SS_STATS: u32 = 1;
/// The string set of offload features (`ethtool -k`).
pub const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// A socket to send ethtool requests through.
pub fn socket() -> std::io::Result<UdpSocket> {
    UdpSocket::bind("0.0.0.0:0")
}

/// `struct ifreq` with its data pointer, as SIOCETHTOOL takes it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Sends one ethtool command; `data` points at the command's buffer, sized for it by the caller.
pub fn ioctl(socket: &UdpSocket, interface: &str, data: *mut libc::c_void) -> std::io::Result<()> {
    let c = CString::new(interface).map_err(|_| std::io::Error::other("interface name with a NUL byte"))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data, _pad: [0; 16] };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a valid socket, an ifreq whose data points at a command buffer the caller sized
    // for the command.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The names in one of the interface's string sets, by position.
pub fn string_set(socket: &UdpSocket, interface: &str, set: u32) -> std::io::Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1] (u32).
    let mut info = [0u32; 5];
    info[0] = ETHTOOL_GSSET_INFO;
    info[2] = 1 << set;
    ioctl(socket, interface, info.as_mut_ptr().cast())?;
    if info[2] == 0 {
        // The driver has no such set.
        return Ok(Vec::new());
    }
    let count = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
    let mut buf = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    buf[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    buf[4..8].copy_from_slice(&set.to_ne_bytes());
    buf[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    ioctl(socket, interface, buf.as_mut_ptr().cast())?;
    Ok(buf[12..]
        .chunks(ETH_GSTRING_LEN)
        .map(|s| String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]).into_owned())
        .collect())
}

/// The driver's statistics (`ethtool -S`), by name; empty for a driver that has none.
pub fn driver_statistics(interface: &str) -> std::io::Result<Vec<(String, u64)>> {
    let socket = socket()?;
    let names = string_set(&socket, interface, ETH_SS_STATS)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // struct ethtool_stats: cmd, n_stats, data[n_stats] (u64), so two u32 in the first u64.
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    header[4..].copy_from_slice(&(names.len() as u32).to_ne_bytes());
    let mut buf = vec![0u64; 1 + names.len()];
    buf[0] = u64::from_ne_bytes(header);
    ioctl(&socket, interface, buf.as_mut_ptr().cast())?;
    Ok(names.into_iter().zip(buf[1..].iter().copied()).collect())
}

/// Whether a driver statistic counts XDP frames the driver failed to transmit (`XDP_TX`, or a
/// redirect into the interface): veth's `rx_queue_N_xdp_tx_errors` and
/// `tx_queue_N_xdp_xmit_errors`, mlx5's `rx_xdp_tx_err` and `tx_xdp_err`, and the like.
pub fn is_xdp_transmit_error(name: &str) -> bool {
    name.contains("xdp") && name.contains("err")
}

/// XDP frames `interface` failed to transmit since it was created (the sum of its drivers'
/// counters that [`is_xdp_transmit_error`] picks); `None` when the driver counts none.
pub fn xdp_transmit_errors(interface: &str) -> std::io::Result<Option<u64>> {
    let picked: Vec<u64> =
        driver_statistics(interface)?.into_iter().filter(|(n, _)| is_xdp_transmit_error(n)).map(|(_, v)| v).collect();
    Ok((!picked.is_empty()).then(|| picked.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::is_xdp_transmit_error;

    #[test]
    fn xdp_transmit_error_counters_are_told_from_the_rest() {
        for counter in ["rx_queue_0_xdp_tx_errors", "tx_queue_3_xdp_xmit_errors", "rx_xdp_tx_err", "tx_xdp_err"] {
            assert!(is_xdp_transmit_error(counter), "{counter}");
        }
        for other in ["rx_queue_0_xdp_tx", "rx_queue_0_xdp_drops", "tx_errors", "peer_ifindex", "rx_xdp_redirect"] {
            assert!(!is_xdp_transmit_error(other), "{other}");
        }
    }
}
