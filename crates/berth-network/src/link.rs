//! Links, addresses and routes over rtnetlink: the bridge, each container's veth pair (its
//! peer made straight inside the container's namespace as `eth0`), and the container
//! side's addresses and default route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::{netns, Error};

fn nl(what: &str, e: rtnetlink::Error) -> Error {
    Error::System(format!("{what}: {e}"))
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A route-netlink connection bound to one network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// In the caller's (the daemon's) namespace. Needs a tokio runtime.
    pub fn current() -> Result<Netlink, Error> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::System(format!("opening a netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// In the namespace bound at `path`.
    pub fn in_netns(path: &Path) -> Result<Netlink, Error> {
        // The socket registers with the caller's runtime from the namespace's thread.
        let rt = tokio::runtime::Handle::current();
        let made = netns::run_in(path, move || {
            let _in = rt.enter();
            rtnetlink::new_connection()
        })?;
        let (conn, handle, _) =
            made.map_err(|e| Error::System(format!("opening a netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of a link by name, if there is one.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(&format!("looking up link {name}"), e)),
        }
    }

    /// Names and bridge (master) indexes of every link.
    pub async fn links(&self) -> Result<Vec<(String, u32, Option<u32>)>, Error> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl("listing links", e))? {
            let mut name = String::new();
            let mut master = None;
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Controller(i) => master = Some(*i),
                    _ => {}
                }
            }
            out.push((name, m.header.index, master));
        }
        Ok(out)
    }

    /// The bridge `name` with `gateway/prefix` on it, up; made when missing. Returns its
    /// index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
        mtu: Option<u32>,
    ) -> Result<u32, Error> {
        let index = match self.index(name).await? {
            Some(i) => i,
            None => {
                let mut b = LinkBridge::new(name);
                if let Some(m) = mtu {
                    b = b.mtu(m);
                }
                match self.handle.link().add(b.build()).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(nl(&format!("creating bridge {name}"), e)),
                }
                self.index(name)
                    .await?
                    .ok_or_else(|| Error::System(format!("bridge {name} vanished")))?
            }
        };
        self.add_address(index, IpAddr::V4(gateway), prefix).await?;
        self.set_up(index, name).await?;
        Ok(index)
    }

    /// A veth pair: `host` on the bridge, up, and its peer `peer` (`eth0`) inside the
    /// namespace at `netns_path` with `mac`.
    pub async fn add_veth(
        &self,
        host: &str,
        peer: &str,
        bridge: u32,
        netns_path: &Path,
        mac: [u8; 6],
        mtu: Option<u32>,
    ) -> Result<(), Error> {
        let ns = std::fs::File::open(netns_path)
            .map_err(|e| Error::System(format!("opening {}: {e}", netns_path.display())))?;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(mac.to_vec())
            .setns_by_fd(ns.as_raw_fd());
        let mut veth = LinkVeth::new(host, "peer").controller(bridge).up();
        if let Some(m) = mtu {
            peer = peer.mtu(m);
            veth = veth.mtu(m);
        }
        let veth = veth.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        self.handle
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(|e| nl(&format!("creating veth {host}"), e))?;
        // Hairpin: a container reaching its own published port has its packets DNATed
        // back to itself inside the bridge (br_netfilter), out of the port they came in.
        let index = self
            .index(host)
            .await?
            .ok_or_else(|| Error::System(format!("veth {host} vanished")))?;
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| nl(&format!("hairpin mode on {host}"), e))
    }

    /// Deletes a link by name; a missing one is fine (deleting either end of a veth pair
    /// removes both, and a namespace's end goes with the namespace).
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(&format!("deleting {name}"), e)),
        }
    }

    /// An address on a link; IPv6 ones without duplicate address detection, so they
    /// are usable at once (addresses on our bridges come from our own IPAM).
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), Error> {
        let mut req = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            use rtnetlink::packet_route::address::{
                AddressAttribute, AddressFlags, AddressHeaderFlags,
            };
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl(&format!("adding {ip}/{prefix}"), e)),
        }
    }

    /// Inside a container's namespace: `lo` up, and `ifname` up with `ip/prefix` and a
    /// default route through `gateway`; with `ipv6`, its IPv6 address and (when given)
    /// the IPv6 default route too.
    pub async fn configure_interface(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        ipv6: Option<(Ipv6Addr, u8, Option<Ipv6Addr>)>,
    ) -> Result<(), Error> {
        self.up("lo").await?;
        let index = self
            .index(ifname)
            .await?
            .ok_or_else(|| Error::System(format!("no {ifname} in the container's namespace")))?;
        self.add_address(index, IpAddr::V4(ip), prefix).await?;
        if let Some((ip6, prefix6, _)) = ipv6 {
            self.add_address(index, IpAddr::V6(ip6), prefix6).await?;
        }
        self.set_up(index, ifname).await?;
        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            self.add_route(route, &gw.to_string()).await?;
        }
        if let Some((_, _, Some(gw6))) = ipv6 {
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw6)
                .output_interface(index)
                .build();
            self.add_route(route, &gw6.to_string()).await?;
        }
        Ok(())
    }

    async fn add_route(
        &self,
        route: rtnetlink::packet_route::route::RouteMessage,
        via: &str,
    ) -> Result<(), Error> {
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|e| nl(&format!("adding the default route via {via}"), e))
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl(&format!("bringing {name} up"), e))
    }

    /// Brings a link up by name.
    pub async fn up(&self, name: &str) -> Result<(), Error> {
        let index = self
            .index(name)
            .await?
            .ok_or_else(|| Error::System(format!("no link {name}")))?;
        self.set_up(index, name).await
    }
}

/// Docker's MAC address for an IPv4 address: 02:42 and the address's four bytes, so a
/// container's MAC is stable and unique on its network.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes one of the kernel's per-interface IPv4 settings
/// (`/proc/sys/net/ipv4/conf/<ifname>/<key>`).
pub fn set_ipv4_conf(ifname: &str, key: &str, value: &str) -> Result<(), Error> {
    let p = format!("/proc/sys/net/ipv4/conf/{ifname}/{key}");
    std::fs::write(&p, value).map_err(|e| Error::System(format!("writing {p}: {e}")))
}

/// Turns IPv4 forwarding on, as containers reaching out through NAT need it.
pub fn enable_forwarding() -> Result<(), Error> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1").map_err(|e| Error::System(format!("writing {p}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(
            mac_string(mac_for(Ipv4Addr::new(172, 17, 0, 2))),
            "02:42:ac:11:00:02"
        );
    }
}
