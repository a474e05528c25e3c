//! Backends' next hops, resolved from the kernel's route and neighbour tables over rtnetlink,
//! for the data plane's `NEXT_HOPS` map (`lb_common::nexthop`).
//!
//! A backend's next hop is the route's gateway, or the backend itself on a connected subnet;
//! its MAC is the neighbour entry's, the source MAC the egress interface's. Only neighbour
//! entries the kernel considers usable count (reachable, stale, delay, probe, permanent): an
//! incomplete or failed entry, or none, leaves the backend without a next hop, and the data plane
//! then asks the FIB per packet, which falls back to the configured MAC. [`NextHops::warm`] keeps
//! the entries resolved (`NTF_USE`), since the kernel keeps only entries that traffic uses.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{addr::from_key, backend::Backend, nexthop::NextHop};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    #[error("rtnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("rtnetlink {request}: {error}")]
    Request { request: &'static str, error: std::io::Error },
    #[error("rtnetlink {request}: undecodable answer: {error}")]
    Decode { request: &'static str, error: String },
}

/// Where a backend's packets go: the egress interface and the neighbour to address there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub ifindex: u32,
    /// The gateway, or the backend itself when it is on a connected subnet.
    pub neighbour: IpAddr,
}

/// What [`Resolver::neighbours`] and [`Resolver::link_macs`] read, once per refresh.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// (interface, address) -> MAC, usable entries only.
    pub neighbours: BTreeMap<(u32, IpAddr), [u8; 6]>,
    /// Interface -> its MAC.
    pub links: BTreeMap<u32, [u8; 6]>,
    /// (interface, address) of the entries an operator set (`nud permanent`), never forgotten.
    pub permanent: BTreeSet<(u32, IpAddr)>,
}

impl Tables {
    /// The next hop of a backend routed by `route`, if its neighbour entry is usable.
    pub fn next_hop(&self, route: Option<Route>) -> NextHop {
        let Some(route) = route else { return NextHop::NONE };
        match (self.neighbours.get(&(route.ifindex, route.neighbour)), self.links.get(&route.ifindex)) {
            (Some(dst_mac), Some(src_mac)) => NextHop { ifindex: route.ifindex, dst_mac: *dst_mac, src_mac: *src_mac },
            _ => NextHop::NONE,
        }
    }
}

/// Where an XDP program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachment {
    /// In the driver.
    Native,
    /// In the kernel's generic path.
    Generic,
}

/// A synchronous rtnetlink socket of the caller's network namespace.
pub struct Resolver {
    socket: Socket,
    sequence: u32,
}

impl Resolver {
    pub fn new() -> Result<Self, NextHopError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NextHopError::Socket)?;
        socket.bind_auto().map_err(NextHopError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NextHopError::Socket)?;
        // The agent's loop asks; an answer that never comes must not stop it.
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: a valid socket and a timeval of the size given.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(NextHopError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Self { socket, sequence: 0 })
    }

    /// The kernel's route to `destination` (as `ip route get`): `None` if it is unreachable or
    /// not a unicast route (local, blackhole, prohibited).
    pub fn route(&mut self, destination: IpAddr) -> Result<Option<Route>, NextHopError> {
        const REQUEST: &str = "route lookup";
        let mut message = RouteMessage::default();
        message.header.address_family = family(destination);
        message.header.destination_prefix_length = if destination.is_ipv4() { 32 } else { 128 };
        message.attributes.push(RouteAttribute::Destination(RouteAddress::from(destination)));
        let answers = match self.request(REQUEST, RouteNetlinkMessage::GetRoute(message), Answers::One) {
            Ok(answers) => answers,
            // The kernel's answers for an address it cannot route.
            Err(NextHopError::Request { error, .. })
                if matches!(error.raw_os_error(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        for answer in answers {
            let RouteNetlinkMessage::NewRoute(route) = answer else { continue };
            if route.header.kind != RouteType::Unicast {
                return Ok(None);
            }
            let mut ifindex = None;
            let mut gateway = None;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Oif(index) => ifindex = Some(*index),
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
                    _ => {}
                }
            }
            return Ok(ifindex.map(|ifindex| Route { ifindex, neighbour: gateway.unwrap_or(destination) }));
        }
        Ok(None)
    }

    /// The kernel's record of interface `ifindex`, if it has one.
    fn link(&mut self, ifindex: u32) -> Result<Option<LinkMessage>, NextHopError> {
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        let answers = self.request("link lookup", RouteNetlinkMessage::GetLink(message), Answers::One)?;
        Ok(answers.into_iter().find_map(|a| if let RouteNetlinkMessage::NewLink(link) = a { Some(link) } else { None }))
    }

    /// The XDP attributes of interface `ifindex` (empty when nothing is attached).
    fn xdp_attributes(&mut self, ifindex: u32) -> Result<Vec<LinkXdp>, NextHopError> {
        let Some(link) = self.link(ifindex)? else { return Ok(Vec::new()) };
        Ok(link
            .attributes
            .into_iter()
            .filter_map(|a| if let LinkAttribute::Xdp(xdp) = a { Some(xdp) } else { None })
            .flatten()
            .collect())
    }

    /// How XDP is attached to interface `ifindex` now: in the driver (native), in the generic
    /// path, or not at all (`None`; also for hardware or several programs, which the balancer
    /// never attaches).
    pub fn xdp_attachment(&mut self, ifindex: u32) -> Result<Option<XdpAttachment>, NextHopError> {
        Ok(self.xdp_attributes(ifindex)?.iter().find_map(|x| match x {
            LinkXdp::Attached(XdpAttached::Driver) => Some(XdpAttachment::Native),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(XdpAttachment::Generic),
            _ => None,
        }))
    }

    /// The id of the XDP program running on interface `ifindex`, if one is.
    pub fn xdp_program(&mut self, ifindex: u32) -> Result<Option<u32>, NextHopError> {
        Ok(self
            .xdp_attributes(ifindex)?
            .iter()
            .find_map(|x| if let LinkXdp::ProgId(id) = x { Some(*id) } else { None }))
    }

    /// Whether interface `ifindex` is up with a carrier (`IFF_RUNNING`).
    pub fn link_running(&mut self, ifindex: u32) -> Result<bool, NextHopError> {
        Ok(self.link(ifindex)?.is_some_and(|link| link.header.flags.contains(LinkFlags::Running)))
    }

    /// The neighbour tables (IPv4 and IPv6) and every interface's MAC.
    pub fn tables(&mut self) -> Result<Tables, NextHopError> {
        let mut tables = Tables::default();
        for answer in self.request(
            "neighbour dump",
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            Answers::All,
        )? {
            let RouteNetlinkMessage::NewNeighbour(entry) = answer else { continue };
            let usable = matches!(
                entry.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            );
            if !usable {
                continue;
            }
            let mut address = None;
            let mut mac = None;
            for attribute in &entry.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(IpAddr::V4(*a)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => address = Some(IpAddr::V6(*a)),
                    NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => {}
                }
            }
            if let (Some(address), Some(mac)) = (address, mac) {
                tables.neighbours.insert((entry.header.ifindex, address), mac);
                if entry.header.state == NeighbourState::Permanent {
                    tables.permanent.insert((entry.header.ifindex, address));
                }
            }
        }
        for answer in self.request("link dump", RouteNetlinkMessage::GetLink(LinkMessage::default()), Answers::All)? {
            let RouteNetlinkMessage::NewLink(link) = answer else { continue };
            let mac = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            });
            if let Some(mac) = mac {
                tables.links.insert(link.header.index, mac);
            }
        }
        Ok(tables)
    }

    /// Deletes the neighbour entry of `address` on `ifindex`, so that the next packet to it
    /// resolves its MAC anew (a broadcast ARP request or a multicast neighbour solicitation).
    /// Whether there was one.
    pub fn forget_neighbour(&mut self, ifindex: u32, address: IpAddr) -> Result<bool, NextHopError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(address);
        message.header.ifindex = ifindex;
        let destination = match address {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        message.attributes.push(NeighbourAttribute::Destination(destination));
        match self.request("neighbour delete", RouteNetlinkMessage::DelNeighbour(message), Answers::Acknowledgement) {
            Ok(_) => Ok(true),
            Err(NextHopError::Request { error, .. }) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes the kernel use the neighbour entry of `address` on `ifindex` as a packet to it would
    /// (`NTF_USE`, as Cilium does): the entry is created if there is none, and one not known
    /// reachable is resolved or confirmed (an ARP request or a neighbour solicitation). Its MAC
    /// and state stay the kernel's to set; an operator's permanent entry is left as it is.
    pub fn use_neighbour(&mut self, ifindex: u32, address: IpAddr) -> Result<(), NextHopError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(address);
        message.header.ifindex = ifindex;
        message.header.flags = NeighbourFlags::Use;
        let destination = match address {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        message.attributes.push(NeighbourAttribute::Destination(destination));
        self.request("neighbour use", RouteNetlinkMessage::NewNeighbour(message), Answers::Creation).map(drop)
    }

    /// Sends `message` and collects the answers it asks for.
    fn request(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
        answers_wanted: Answers,
    ) -> Result<Vec<RouteNetlinkMessage>, NextHopError> {
        let io = |error| NextHopError::Request { request, error };
        let dump = answers_wanted == Answers::All;
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = match answers_wanted {
            Answers::One => NLM_F_REQUEST,
            Answers::All => NLM_F_REQUEST | NLM_F_DUMP,
            Answers::Acknowledgement => NLM_F_REQUEST | NLM_F_ACK,
            Answers::Creation => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.header.length as usize];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(io)?;

        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(io)?;
            let mut offset = 0;
            while offset < datagram.len() {
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                    .map_err(|e| NextHopError::Decode { request, error: e.to_string() })?;
                let length = parsed.header.length as usize;
                if parsed.header.sequence_number == self.sequence {
                    match parsed.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => return Err(io(e.to_io())),
                        // An error message without a code acknowledges the request.
                        NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(m) => {
                            answers.push(m);
                            if !dump {
                                return Ok(answers);
                            }
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// What a request to the kernel waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// The first answer (a get).
    One,
    /// Every answer until DONE (a dump).
    All,
    /// The kernel's acknowledgement (a change).
    Acknowledgement,
    /// The kernel's acknowledgement of a change that may create what it changes.
    Creation,
}

/// How long an interface's running state, once read, answers [`NextHops::egress_down`].
const LINK_STATE_FRESH: Duration = Duration::from_millis(100);

/// How long a neighbour entry must have had the same MAC before a failed probe deletes it.
pub const NEIGHBOUR_SETTLED: Duration = Duration::from_secs(2);

/// How long a backend's route is trusted before it is looked up again. Neighbour entries are
/// read on every refresh; routes change rarely and cost a request per backend.
pub const ROUTE_REFRESH: Duration = Duration::from_secs(10);

/// The agent's view of its backends' next hops: keeps the `NEXT_HOPS` map in step with the
/// kernel's tables.
pub struct NextHops {
    resolver: Resolver,
    routes: BTreeMap<IpAddr, Option<Route>>,
    routes_read: Option<Instant>,
    /// The tables as the last refresh read them.
    tables: Tables,
    /// Backends the last refresh found no usable neighbour entry for.
    unresolved: BTreeSet<IpAddr>,
    /// Interfaces' running state as last read, and when: thousands of failed probes in a
    /// second ask about the same interface.
    links: BTreeMap<u32, (Instant, bool)>,
    /// Per neighbour entry, its MAC and since when the refreshes have seen it with that MAC.
    macs_since: BTreeMap<(u32, IpAddr), ([u8; 6], Instant)>,
    /// What the `NEXT_HOPS` map holds per backend id, as last read or written (the agent is its
    /// only writer): a refresh compares with this instead of reading thousands of entries.
    written: BTreeMap<u32, NextHop>,
}

/// One next hop that [`NextHops::refresh`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub id: u32,
    pub backend: IpAddr,
    pub hop: NextHop,
}

impl NextHops {
    pub fn new() -> Result<Self, NextHopError> {
        Ok(Self {
            resolver: Resolver::new()?,
            routes: BTreeMap::new(),
            routes_read: None,
            tables: Tables::default(),
            unresolved: BTreeSet::new(),
            links: BTreeMap::new(),
            macs_since: BTreeMap::new(),
            written: BTreeMap::new(),
        })
    }

    /// Resolves the next hop of every backend in `backends` (id -> record) and writes those that
    /// differ from what `map` holds; returns them.
    pub fn refresh(
        &mut self,
        backends: &BTreeMap<u32, Backend>,
        map: &mut crate::dataplane::BalancerMaps,
    ) -> anyhow::Result<Vec<Change>> {
        let stale = self.routes_read.is_none_or(|at| at.elapsed() >= ROUTE_REFRESH);
        if stale {
            self.routes.clear();
            self.routes_read = Some(Instant::now());
        }
        self.tables = self.resolver.tables()?;
        let now = Instant::now();
        self.macs_since.retain(|key, (mac, _)| self.tables.neighbours.get(key) == Some(mac));
        for (key, mac) in &self.tables.neighbours {
            self.macs_since.entry(*key).or_insert((*mac, now));
        }
        self.unresolved.clear();
        let mut changes = Vec::new();
        for (id, backend) in backends {
            let address = from_key(backend.family, &backend.addr);
            let route = self.route(address)?;
            let hop = self.tables.next_hop(route);
            if !hop.is_known() {
                self.unresolved.insert(address);
            }
            let held = match self.written.get(id) {
                Some(held) => *held,
                None => map.next_hop(*id)?,
            };
            if held != hop {
                map.set_next_hop(*id, &hop)?;
                changes.push(Change { id: *id, backend: address, hop });
            }
            self.written.insert(*id, hop);
        }
        self.written.retain(|id, _| backends.contains_key(id));
        Ok(changes)
    }

    /// Looks every backend's route up again at the next refresh (an interface was replaced,
    /// and routes name interfaces by index).
    pub fn forget_routes(&mut self) {
        self.routes_read = None;
        self.links.clear();
    }

    /// The backends the last refresh found without a usable neighbour entry (never resolved,
    /// forgotten, flushed when the interface went down).
    pub fn unresolved(&self) -> &BTreeSet<IpAddr> {
        &self.unresolved
    }

    /// Deletes the neighbour entry a backend's packets are addressed by (its own, or its
    /// gateway's): the next packet then learns the MAC anew. For a backend that stopped
    /// answering, since one that was replaced by another host with the same address (or moved
    /// its address to another NIC) has a new MAC, and the kernel would keep sending to the old
    /// one for up to a minute. Only a usable entry that the refreshes have seen with the same
    /// MAC for [`NEIGHBOUR_SETTLED`] is deleted: one just resolved is as fresh as deleting would
    /// make it (and thousands of checks failing at once must not delete entries over and over),
    /// and one an operator set permanent is theirs. The neighbour whose entry was deleted, if
    /// one was.
    pub fn forget_neighbour(&mut self, backend: IpAddr) -> Result<Option<IpAddr>, NextHopError> {
        let Some(route) = self.route(backend)? else { return Ok(None) };
        let key = (route.ifindex, route.neighbour);
        let settled = self.macs_since.get(&key).is_some_and(|(_, since)| since.elapsed() >= NEIGHBOUR_SETTLED);
        if !settled || self.tables.permanent.contains(&key) {
            return Ok(None);
        }
        // Not again until the entry that replaces it has settled.
        self.macs_since.remove(&key);
        Ok(self.resolver.forget_neighbour(route.ifindex, route.neighbour)?.then_some(route.neighbour))
    }

    /// Has the kernel resolve or confirm the neighbour entries (their own, or their gateway's)
    /// of `backends`: the kernel keeps only entries that traffic uses, and XDP's traffic does
    /// not count. A backend without a route, or whose interface is down, is skipped: an entry
    /// made on a down link stays incomplete after the link comes up until the kernel's next
    /// retransmission (a second), while the first packet after it resolves it at once. The
    /// first failure ends the round.
    pub fn warm(&mut self, backends: impl IntoIterator<Item = IpAddr>) -> Result<(), NextHopError> {
        let mut neighbours = BTreeSet::new();
        for backend in backends {
            if let Some(route) = self.route(backend)? {
                neighbours.insert((route.ifindex, route.neighbour));
            }
        }
        for (ifindex, neighbour) in neighbours {
            if self.running(ifindex)? {
                self.resolver.use_neighbour(ifindex, neighbour)?;
            }
        }
        Ok(())
    }

    /// The interface a backend's packets leave by, if it is down (or has no carrier): a probe
    /// that failed through it says nothing about the backend.
    pub fn egress_down(&mut self, backend: IpAddr) -> Result<Option<u32>, NextHopError> {
        let Some(route) = self.route(backend)? else { return Ok(None) };
        Ok((!self.running(route.ifindex)?).then_some(route.ifindex))
    }

    /// Whether interface `ifindex` is up with a carrier, as read at most [`LINK_STATE_FRESH`] ago.
    fn running(&mut self, ifindex: u32) -> Result<bool, NextHopError> {
        if let Some((at, running)) = self.links.get(&ifindex)
            && at.elapsed() < LINK_STATE_FRESH
        {
            return Ok(*running);
        }
        let running = self.resolver.link_running(ifindex)?;
        self.links.insert(ifindex, (Instant::now(), running));
        Ok(running)
    }

    /// The backend's route, looked up once per [`ROUTE_REFRESH`].
    fn route(&mut self, backend: IpAddr) -> Result<Option<Route>, NextHopError> {
        if let Some(route) = self.routes.get(&backend) {
            return Ok(*route);
        }
        let route = self.resolver.route(backend)?;
        self.routes.insert(backend, route);
        Ok(route)
    }
}

fn family(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_hop_needs_a_route_a_neighbour_and_a_link() {
        let gateway: IpAddr = "198.18.0.1".parse().unwrap();
        let mut tables = Tables::default();
        let route = Some(Route { ifindex: 3, neighbour: gateway });
        assert_eq!(tables.next_hop(route), NextHop::NONE, "no neighbour entry");
        tables.neighbours.insert((3, gateway), [2, 0, 0, 0, 0, 1]);
        assert_eq!(tables.next_hop(route), NextHop::NONE, "no interface MAC");
        tables.links.insert(3, [2, 0, 0, 0, 0, 2]);
        assert_eq!(
            tables.next_hop(route),
            NextHop { ifindex: 3, dst_mac: [2, 0, 0, 0, 0, 1], src_mac: [2, 0, 0, 0, 0, 2] }
        );
        assert_eq!(tables.next_hop(None), NextHop::NONE, "no route");
        assert_eq!(tables.next_hop(Some(Route { ifindex: 4, neighbour: gateway })), NextHop::NONE, "other interface");
    }
}
