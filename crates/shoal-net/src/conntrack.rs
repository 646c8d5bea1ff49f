//! Forgetting the kernel's tracked connections of an address that leaves (ctnetlink over
//! `NETLINK_NETFILTER`), so a NAT decision made for a gone container is not reused for the next
//! flow with the same tuple: a UDP client that keeps sending to a published port would otherwise
//! stay DNATed to the dead address until its entry times out, however many times the service
//! restarts.
//!
//! The kernel deletes entries only by exact tuple, so this dumps the IPv4 table, picks the entries
//! whose original or reply direction names the address, and deletes each by its original tuple,
//! copied verbatim from the dump (with its zone).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

const NLMSG_HEADER_LEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
/// Attribute type bits that are flags (nested, network byte order), not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Deletes every tracked IPv4 connection to or from `address` in the calling thread's network
/// namespace; returns how many went. A kernel without conntrack has nothing to forget.
pub(crate) fn forget_connections_of(address: Ipv4Addr) -> std::io::Result<usize> {
    let socket = match open() {
        Ok(s) => s,
        // No ctnetlink (module not loaded, or not built): no table, nothing to forget.
        Err(Errno::EPROTONOSUPPORT) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut doomed = Vec::new();
    let request = message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, &[]);
    send(socket.as_raw_fd(), &request, MsgFlags::empty())?;
    let mut buffer = vec![0u8; 64 * 1024];
    'dump: loop {
        let n = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty())?;
        if n == 0 {
            break;
        }
        for (kind, payload) in messages(&buffer[..n]) {
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => {
                    let code = error_code(payload);
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(code));
                    }
                }
                _ => {
                    if payload.len() < NFGENMSG_LEN {
                        continue;
                    }
                    if let Some(entry) = select(&payload[NFGENMSG_LEN..], address) {
                        doomed.push(entry);
                    }
                }
            }
        }
    }
    let mut forgotten = 0;
    for (sequence, attributes) in (2u32..).zip(&doomed) {
        let request = message(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            sequence,
            attributes,
        );
        send(socket.as_raw_fd(), &request, MsgFlags::empty())?;
        let n = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty())?;
        for (kind, payload) in messages(&buffer[..n]) {
            if kind == NLMSG_ERROR {
                match error_code(payload) {
                    0 => forgotten += 1,
                    // It expired between the dump and now.
                    code if code == Errno::ENOENT as i32 => {}
                    code => return Err(std::io::Error::from_raw_os_error(code)),
                }
            }
        }
    }
    Ok(forgotten)
}

fn open() -> Result<OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

/// A ctnetlink request: netlink header, `nfgenmsg` for IPv4, then `attributes`.
fn message(command: u16, flags: u16, sequence: u32, attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HEADER_LEN + NFGENMSG_LEN + attributes.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | command).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&sequence.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family AF_INET, version 0, resource id 0 (big endian).
    m.extend_from_slice(&[nix::libc::AF_INET as u8, 0, 0, 0]);
    m.extend_from_slice(attributes);
    m
}

/// The (type, payload) of each netlink message in `data`.
fn messages(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HEADER_LEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HEADER_LEN || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        out.push((kind, &data[NLMSG_HEADER_LEN..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// The negated errno of an `NLMSG_ERROR` payload, as a positive code (0 is an ack).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Each attribute in `data`: (type without flag bits, the whole attribute, its payload).
fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes(data[0..2].try_into().expect("2 bytes")) as usize;
        if len < 4 || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes(data[2..4].try_into().expect("2 bytes")) & NLA_TYPE_MASK;
        out.push((kind, &data[..len], &data[4..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// The source and destination of a tuple attribute's payload.
fn tuple_addresses(tuple: &[u8]) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    for (kind, _, ip) in attributes(tuple) {
        if kind != CTA_TUPLE_IP {
            continue;
        }
        for (kind, _, value) in attributes(ip) {
            if matches!(kind, CTA_IP_V4_SRC | CTA_IP_V4_DST) && value.len() == 4 {
                found.push(Ipv4Addr::new(value[0], value[1], value[2], value[3]));
            }
        }
    }
    found
}

/// For an entry naming `address` in either direction: the attributes that delete it.
fn select(entry: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    let attrs = attributes(entry);
    let mut original = None;
    let mut zone = None;
    let mut names_address = false;
    for (kind, whole, payload) in &attrs {
        match *kind {
            CTA_TUPLE_ORIG => {
                original = Some(*whole);
                names_address |= tuple_addresses(payload).contains(&address);
            }
            CTA_TUPLE_REPLY => names_address |= tuple_addresses(payload).contains(&address),
            CTA_ZONE => zone = Some(*whole),
            _ => {}
        }
    }
    if !names_address {
        return None;
    }
    let mut out = original?.to_vec();
    out.resize(align(out.len()), 0);
    if let Some(zone) = zone {
        out.extend_from_slice(zone);
        out.resize(align(out.len()), 0);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align(a.len()), 0);
        a
    }

    fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let ip = [attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)].concat();
        attr(kind | 0x8000, &attr(CTA_TUPLE_IP | 0x8000, &ip))
    }

    #[test]
    fn selects_entries_naming_the_address_in_either_direction() {
        let container = Ipv4Addr::new(172, 30, 0, 5);
        // A client's flow to a published port, DNATed: the reply comes from the container.
        let dnat = [
            tuple(CTA_TUPLE_ORIG, [10, 0, 0, 1], [10, 0, 0, 2]),
            tuple(CTA_TUPLE_REPLY, [172, 30, 0, 5], [10, 0, 0, 1]),
            attr(CTA_ZONE, &[0, 0]),
        ]
        .concat();
        let selected = select(&dnat, container).expect("the DNATed flow is selected");
        assert_eq!(
            &selected[..tuple(CTA_TUPLE_ORIG, [0; 4], [0; 4]).len()],
            &tuple(CTA_TUPLE_ORIG, [10, 0, 0, 1], [10, 0, 0, 2])[..],
            "deleted by its original tuple"
        );
        assert!(
            selected.len() > tuple(CTA_TUPLE_ORIG, [0; 4], [0; 4]).len(),
            "with its zone"
        );
        let unrelated = [
            tuple(CTA_TUPLE_ORIG, [10, 0, 0, 1], [10, 0, 0, 9]),
            tuple(CTA_TUPLE_REPLY, [10, 0, 0, 9], [10, 0, 0, 1]),
        ]
        .concat();
        assert!(select(&unrelated, container).is_none());
    }

    #[test]
    fn truncated_input_is_ignored_not_a_panic() {
        assert!(messages(&[1, 2, 3]).is_empty());
        assert!(attributes(&[200, 0, 1, 0, 9]).is_empty());
        assert!(select(&[0xff; 7], Ipv4Addr::LOCALHOST).is_none());
        assert_eq!(error_code(&[]), 0);
    }
}
