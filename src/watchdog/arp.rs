//! Gratuitous ARP: an unsolicited ARP request for the VIP from the new holder, so the
//! hosts and switches of the segment point the VIP at its MAC without asking first.
//! An AF_PACKET socket (needs CAP_NET_RAW) that sends and never receives.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
/// Ethernet's minimum frame (without the FCS): the ARP message is padded to it.
pub const FRAME_LEN: usize = 60;

/// An unsolicited ARP request ("who has VIP? tell VIP at MAC") in a broadcast frame.
pub fn gratuitous_arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero (RFC 5227 announcement).
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A send-only packet socket on one interface.
#[derive(Debug)]
pub struct ArpSender {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl ArpSender {
    /// Opens the socket; fails with `PermissionDenied` without CAP_NET_RAW.
    pub fn open(ifindex: u32, mac: [u8; 6]) -> io::Result<ArpSender> {
        // Protocol 0: the socket receives nothing; the frame's protocol is given per send.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
        Ok(ArpSender { fd, ifindex, mac })
    }

    /// Sends one gratuitous ARP for `ip`.
    pub fn send(&self, ip: Ipv4Addr) -> io::Result<()> {
        let frame = gratuitous_arp_frame(self.mac, ip);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the buffer and address point to live, correctly sized values.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = gratuitous_arp_frame(mac, Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &[192, 0, 2, 100], "sender IP");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[192, 0, 2, 100], "target IP");
        assert!(f[42..].iter().all(|b| *b == 0), "padding");
    }
}
