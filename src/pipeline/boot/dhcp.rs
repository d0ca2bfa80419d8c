//! The guest's network traffic as QEMU's `filter-dump` writes it (a pcap
//! file of Ethernet frames): did the guest ask for an address by DHCP?
//! That is the proof that its network configuration came up on the cloud's
//! NIC, which no console line gives.

use anyhow::{bail, Context, Result};

/// What the capture shows of the guest's DHCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dhcp {
    /// A DHCPDISCOVER or DHCPREQUEST from the guest's MAC address.
    pub requested: bool,
    /// The index of that frame in the capture, from 0.
    pub frame: Option<usize>,
    /// Frames in the capture.
    pub frames: usize,
}

const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;
/// A frame longer than this is not Ethernet from a virtio NIC.
const MAX_FRAME: usize = 256 * 1024;

/// Reads a capture; a frame cut off at the end (QEMU still writing) ends it.
pub fn read(capture: &[u8], guest_mac: [u8; 6]) -> Result<Dhcp> {
    let mut out = Dhcp::default();
    // Nothing yet, or not yet a whole header.
    if capture.len() < 24 {
        return Ok(out);
    }
    let magic = u32::from_le_bytes(capture[0..4].try_into().expect("4 bytes"));
    let swapped = u32::from_be_bytes(capture[0..4].try_into().expect("4 bytes"));
    let le = match (magic, swapped) {
        (PCAP_MAGIC_US | PCAP_MAGIC_NS, _) => true,
        (_, PCAP_MAGIC_US | PCAP_MAGIC_NS) => false,
        _ => bail!("not a pcap capture (magic {magic:#010x})"),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let bytes: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        }
    };
    let link = u32_at(capture, 20);
    if link != LINKTYPE_ETHERNET {
        bail!("the capture's link type is {link}, not Ethernet");
    }
    let mut at = 24;
    while at + 16 <= capture.len() {
        let included = u32_at(capture, at + 8) as usize;
        if included > MAX_FRAME {
            bail!(
                "frame {} of the capture claims {included} bytes",
                out.frames
            );
        }
        let start = at + 16;
        let Some(frame) = capture.get(start..start + included) else {
            break;
        };
        if out.frame.is_none() && is_dhcp_request(frame, guest_mac) {
            out.requested = true;
            out.frame = Some(out.frames);
        }
        out.frames += 1;
        at = start + included;
    }
    Ok(out)
}

/// Reads the capture file; a missing file is a capture of nothing.
pub(crate) fn read_file(path: &std::path::Path, guest_mac: [u8; 6]) -> Result<Dhcp> {
    match std::fs::read(path) {
        Ok(bytes) => read(&bytes, guest_mac).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Dhcp::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Ethernet from the guest, IPv4 (no options assumed), UDP 68 → 67, a BOOTP
/// request with DHCP's cookie and message type DISCOVER (1) or REQUEST (3).
fn is_dhcp_request(frame: &[u8], guest_mac: [u8; 6]) -> bool {
    if frame.len() < 14 || frame[6..12] != guest_mac {
        return false;
    }
    let mut ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let mut ip = 14;
    // An 802.1Q tag.
    if ether_type == 0x8100 && frame.len() >= 18 {
        ether_type = u16::from_be_bytes([frame[16], frame[17]]);
        ip = 18;
    }
    if ether_type != 0x0800 || frame.len() < ip + 20 {
        return false;
    }
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if frame[ip] >> 4 != 4 || ihl < 20 || frame[ip + 9] != 17 {
        return false;
    }
    let udp = ip + ihl;
    let Some(h) = frame.get(udp..udp + 8) else {
        return false;
    };
    if u16::from_be_bytes([h[0], h[1]]) != 68 || u16::from_be_bytes([h[2], h[3]]) != 67 {
        return false;
    }
    let bootp = udp + 8;
    // op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr,
    // giaddr, chaddr (16), sname (64), file (128), then the cookie.
    let cookie = bootp + 236;
    let Some(b) = frame.get(bootp..cookie + 4) else {
        return false;
    };
    if b[0] != 1 || b[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut opt = cookie + 4;
    while let Some(&code) = frame.get(opt) {
        match code {
            0 => opt += 1,
            255 => break,
            _ => {
                let Some(&len) = frame.get(opt + 1) else {
                    break;
                };
                if code == 53 && len == 1 {
                    return matches!(frame.get(opt + 2), Some(1 | 3));
                }
                opt += 2 + usize::from(len);
            }
        }
    }
    false
}

/// `52:54:00:12:34:03` → bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GUEST: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x03];

    /// An Ethernet frame of a DHCP message of `kind` from `mac`, 68 → 67.
    pub(crate) fn dhcp_frame(mac: [u8; 6], kind: u8, sport: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut bootp = vec![0u8; 236];
        bootp[0] = 1;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[28..34].copy_from_slice(&mac);
        bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, kind, 255]);
        let udp_len = 8 + bootp.len();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ];
        let total = (20 + udp_len) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&67u16.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&bootp);
        f
    }

    pub fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&PCAP_MAGIC_US.to_le_bytes());
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&4u16.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&65535u32.to_le_bytes());
        p.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for f in frames {
            p.extend_from_slice(&[0; 8]);
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(f);
        }
        p
    }

    #[test]
    fn a_discover_from_the_guest_is_found() {
        let arp = {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&GUEST);
            f.extend_from_slice(&[0x08, 0x06]);
            f.extend_from_slice(&[0; 28]);
            f
        };
        type Case = (&'static str, Vec<Vec<u8>>, Option<usize>);
        let cases: &[Case] = &[
            (
                "discover",
                vec![arp.clone(), dhcp_frame(GUEST, 1, 68)],
                Some(1),
            ),
            ("request", vec![dhcp_frame(GUEST, 3, 68)], Some(0)),
            (
                "an offer is not the guest's request",
                vec![dhcp_frame(GUEST, 2, 68)],
                None,
            ),
            (
                "another MAC",
                vec![dhcp_frame([2, 0, 0, 0, 0, 1], 1, 68)],
                None,
            ),
            ("another port", vec![dhcp_frame(GUEST, 1, 1068)], None),
            ("nothing", vec![], None),
        ];
        for (name, frames, want) in cases {
            let got = read(&pcap(frames), GUEST).expect(name);
            assert_eq!(got.frame, *want, "{name}");
            assert_eq!(got.requested, want.is_some(), "{name}");
            assert_eq!(got.frames, frames.len(), "{name}");
        }
    }

    #[test]
    fn a_capture_cut_mid_frame_or_empty_is_read_up_to_there() {
        let mut p = pcap(&[dhcp_frame(GUEST, 1, 68), dhcp_frame(GUEST, 3, 68)]);
        p.truncate(p.len() - 10);
        let got = read(&p, GUEST).expect("cut capture");
        assert_eq!((got.frames, got.frame), (1, Some(0)));
        assert_eq!(read(&[], GUEST).expect("empty"), Dhcp::default());
        assert_eq!(read(&p[..20], GUEST).expect("header only"), Dhcp::default());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let err = read(&[0x42; 64], GUEST).unwrap_err();
        assert_eq!(err.to_string(), "not a pcap capture (magic 0x42424242)");
        let mut p = pcap(&[]);
        p[20] = 101;
        assert_eq!(
            read(&p, GUEST).unwrap_err().to_string(),
            "the capture's link type is 101, not Ethernet"
        );
        let mut p = pcap(&[vec![0; 4]]);
        p[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&p, GUEST).unwrap_err().to_string().contains("claims"));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:12:34:03"), Some(GUEST));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:03:01"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:03"), None);
    }
}
