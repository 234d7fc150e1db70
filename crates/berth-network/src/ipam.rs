//! IPv4 address management: subnets, the pools Docker picks subnets from, and a per-network
//! allocator that never hands out an address twice.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// An IPv4 network: its address (host bits clear) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Subnet {
    pub fn new(ip: Ipv4Addr, prefix: u8) -> Subnet {
        Subnet {
            addr: Ipv4Addr::from(u32::from(ip) & mask(prefix)),
            prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The `n`-th address of the subnet (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subnet, Error> {
        let (ip, prefix) = parse_cidr(s)?;
        Ok(Subnet::new(ip, prefix))
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `a.b.c.d/n`, keeping the host bits (`bip` names the bridge's own address this way).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), Error> {
    let bad = || Error::Invalid(format!("invalid CIDR address: {s}"));
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip, prefix))
}

/// Docker's default address pools, in the order it uses them: 172.17-31.0.0/16, then
/// 192.168.0.0/16 cut into /20s.
pub fn default_pools() -> Vec<Subnet> {
    let mut out: Vec<Subnet> = (17..=31)
        .map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16))
        .collect();
    out.extend((0..16).map(|i| Subnet::new(Ipv4Addr::new(192, 168, i * 16, 0), 20)));
    out
}

/// `default-address-pools`: each base cut into subnets of `size` bits, in order.
pub fn pools_from(bases: &[(Subnet, u8)]) -> Result<Vec<Subnet>, Error> {
    let mut out = Vec::new();
    for (base, size) in bases {
        if *size < base.prefix || *size > 30 {
            return Err(Error::Invalid(format!(
                "invalid address pool {base} with size {size}: the size must be between the base's prefix and 30"
            )));
        }
        let count = 1u64 << (size - base.prefix).min(16);
        let step = 1u64 << (32 - u32::from(*size));
        for i in 0..count {
            out.push(Subnet::new(base.nth((i * step) as u32), *size));
        }
    }
    Ok(out)
}

/// The first pool that overlaps none of `taken` (the host's routes and other networks).
pub fn pick_free(pools: &[Subnet], taken: &[Subnet]) -> Option<Subnet> {
    pools
        .iter()
        .find(|p| !taken.iter().any(|t| t.prefix > 0 && t.overlaps(p)))
        .copied()
}

/// The devices and destinations of the host's IPv4 routes (the default route left out),
/// from /proc/net/route, whose addresses are in the host's byte order.
pub fn host_routes() -> Vec<(String, Subnet)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_proc_route(&text)
}

fn parse_proc_route(text: &str) -> Vec<(String, Subnet)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(m)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // The kernel prints the address's bytes as a native-endian number.
        let dest = Ipv4Addr::from(dest.to_ne_bytes());
        let prefix = m.count_ones() as u8;
        if prefix > 0 {
            out.push((f[0].to_string(), Subnet::new(dest, prefix)));
        }
    }
    out
}

/// The addresses of one network: the gateway and every address handed out are taken; new
/// ones come from `range` (the whole subnet unless `--ip-range` narrowed it), after the
/// last one given, so a just-freed address is not reused at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub range: Subnet,
    used: BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
}

impl Pool {
    pub fn new(
        subnet: Subnet,
        gateway: Option<Ipv4Addr>,
        range: Option<Subnet>,
    ) -> Result<Pool, Error> {
        if subnet.prefix > 30 {
            return Err(Error::Invalid(format!(
                "subnet {subnet} is too small for a gateway and containers"
            )));
        }
        let gateway = gateway.unwrap_or_else(|| subnet.nth(1));
        if !subnet.contains(gateway) {
            return Err(Error::Invalid(format!(
                "gateway {gateway} is not in subnet {subnet}"
            )));
        }
        let range = range.unwrap_or(subnet);
        if !(subnet.contains(range.addr) && range.prefix >= subnet.prefix) {
            return Err(Error::Invalid(format!(
                "ip-range {range} is not in subnet {subnet}"
            )));
        }
        Ok(Pool {
            subnet,
            gateway,
            range,
            used: BTreeSet::new(),
            last: None,
        })
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        let first = u32::from(self.subnet.addr);
        let last = first + (self.subnet.size() - 1) as u32;
        self.subnet.contains(ip) && n != first && n != last && ip != self.gateway
    }

    /// The next free address of the range.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, Error> {
        let size = self.range.size();
        let start = match self.last {
            Some(l) if self.range.contains(l) => {
                u64::from(u32::from(l) - u32::from(self.range.addr)) + 1
            }
            _ => 0,
        };
        for i in 0..size {
            let ip = self.range.nth(((start + i) % size) as u32);
            if self.usable(ip) && !self.used.contains(&ip) {
                self.used.insert(ip);
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(Error::Invalid(format!(
            "no available IPv4 addresses on this network's address pools ({})",
            self.range
        )))
    }

    /// Takes a given address (a static `--ip`, or one a running container already has).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<(), Error> {
        if !self.usable(ip) {
            return Err(Error::Invalid(format!(
                "invalid address {ip}: it does not belong to any of this network's subnets"
            )));
        }
        if !self.used.insert(ip) {
            return Err(Error::Conflict(format!("Address already in use: {ip}")));
        }
        Ok(())
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// An IPv6 network: its address (host bits clear) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet6 {
    pub addr: std::net::Ipv6Addr,
    pub prefix: u8,
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl Subnet6 {
    pub fn new(ip: std::net::Ipv6Addr, prefix: u8) -> Subnet6 {
        Subnet6 {
            addr: (u128::from(ip) & mask6(prefix)).into(),
            prefix,
        }
    }

    pub fn contains(&self, ip: std::net::Ipv6Addr) -> bool {
        u128::from(ip) & mask6(self.prefix) == u128::from(self.addr)
    }

    pub fn overlaps(&self, other: &Subnet6) -> bool {
        let m = mask6(self.prefix.min(other.prefix));
        u128::from(self.addr) & m == u128::from(other.addr) & m
    }

    pub fn nth(&self, n: u128) -> std::net::Ipv6Addr {
        u128::from(self.addr).wrapping_add(n).into()
    }

    /// A unique-local /64 for a network, from its id: fdXX:XXXX:XXXX:XXXX::/64.
    pub fn ula_for(id: &str) -> Subnet6 {
        let hex: String = id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(14)
            .collect();
        let bits = u64::from_str_radix(&format!("{hex:0<14}"), 16).unwrap_or(0);
        let hi = (0xfdu128 << 120) | (u128::from(bits) << 64);
        Subnet6::new(hi.into(), 64)
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet6 {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subnet6, Error> {
        let bad = || Error::Invalid(format!("invalid CIDR address: {s}"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 128 {
            return Err(bad());
        }
        Ok(Subnet6::new(ip, prefix))
    }
}

impl Serialize for Subnet6 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet6 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet6, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// IPv6 addresses of one network: the gateway (::1 unless given) and every address
/// handed out are taken; new ones follow the last one given.
#[derive(Debug, Clone)]
pub struct Pool6 {
    pub subnet: Subnet6,
    pub gateway: std::net::Ipv6Addr,
    used: BTreeSet<std::net::Ipv6Addr>,
    last: u128,
}

impl Pool6 {
    pub fn new(subnet: Subnet6, gateway: Option<std::net::Ipv6Addr>) -> Result<Pool6, Error> {
        if subnet.prefix > 126 {
            return Err(Error::Invalid(format!("subnet {subnet} is too small")));
        }
        let gateway = gateway.unwrap_or_else(|| subnet.nth(1));
        if !subnet.contains(gateway) {
            return Err(Error::Invalid(format!(
                "gateway {gateway} is not in subnet {subnet}"
            )));
        }
        Ok(Pool6 {
            subnet,
            gateway,
            used: BTreeSet::new(),
            last: 1,
        })
    }

    pub fn allocate(&mut self) -> Result<std::net::Ipv6Addr, Error> {
        let size: u128 = if self.subnet.prefix == 0 {
            u128::MAX
        } else {
            1u128 << (128 - u32::from(self.subnet.prefix))
        };
        // Sequential (a /64 never runs out in practice); the subnet-router anycast (::0)
        // is skipped.
        for step in 1..=size.min(1 << 20) {
            let n = (self.last + step) % size;
            let ip = self.subnet.nth(n);
            if n != 0 && ip != self.gateway && !self.used.contains(&ip) {
                self.used.insert(ip);
                self.last = n;
                return Ok(ip);
            }
        }
        Err(Error::Invalid(format!(
            "no available IPv6 addresses in {}",
            self.subnet
        )))
    }

    pub fn reserve(&mut self, ip: std::net::Ipv6Addr) -> Result<(), Error> {
        if !self.subnet.contains(ip) || ip == self.gateway || ip == self.subnet.addr {
            return Err(Error::Invalid(format!(
                "invalid address {ip} for {}",
                self.subnet
            )));
        }
        if !self.used.insert(ip) {
            return Err(Error::Conflict(format!("Address already in use: {ip}")));
        }
        Ok(())
    }

    pub fn release(&mut self, ip: std::net::Ipv6Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_subnets_and_pools() {
        let s: Subnet6 = "fd00:77::5/64".parse().unwrap();
        assert_eq!(s.to_string(), "fd00:77::/64");
        assert!(s.contains("fd00:77::ffff".parse().unwrap()));
        assert!(!s.contains("fd00:78::1".parse().unwrap()));
        let mut p = Pool6::new(s, None).unwrap();
        assert_eq!(p.gateway.to_string(), "fd00:77::1");
        assert_eq!(p.allocate().unwrap().to_string(), "fd00:77::2");
        assert_eq!(p.allocate().unwrap().to_string(), "fd00:77::3");
        assert!(p.reserve("fd00:77::3".parse().unwrap()).is_err());
        assert!(p.reserve("fd00:77::1".parse().unwrap()).is_err());
        p.reserve("fd00:77::9".parse().unwrap()).unwrap();
        let u = Subnet6::ula_for("0123456789abcdef");
        assert_eq!(u.to_string(), "fd01:2345:6789:abcd::/64");
        assert!(Pool6::new(s, Some("fd00:78::1".parse().unwrap())).is_err());
    }

    fn s(x: &str) -> Subnet {
        x.parse().unwrap()
    }

    #[test]
    fn subnets_parse_contain_and_overlap() {
        assert_eq!(s("172.17.0.1/16").to_string(), "172.17.0.0/16");
        assert!(s("10.0.0.0/8").overlaps(&s("10.1.2.0/24")));
        assert!(s("10.1.2.0/24").overlaps(&s("10.0.0.0/8")));
        assert!(!s("172.17.0.0/16").overlaps(&s("172.18.0.0/16")));
        assert!(s("192.168.16.0/20").contains("192.168.31.255".parse().unwrap()));
        assert!("172.17.0.0".parse::<Subnet>().is_err());
        assert!("172.17.0.0/33".parse::<Subnet>().is_err());
        assert_eq!(
            parse_cidr("172.18.0.1/16").unwrap().0,
            Ipv4Addr::new(172, 18, 0, 1)
        );
    }

    #[test]
    fn picks_the_first_pool_no_route_uses() {
        let pools = default_pools();
        assert_eq!(pick_free(&pools, &[]), Some(s("172.17.0.0/16")));
        let taken = [s("172.17.0.0/16"), s("192.0.2.0/24"), s("172.18.5.0/24")];
        assert_eq!(pick_free(&pools, &taken), Some(s("172.19.0.0/16")));
        // A default route (prefix 0) takes nothing.
        assert_eq!(
            pick_free(&pools, &[s("0.0.0.0/0")]),
            Some(s("172.17.0.0/16"))
        );
        let all: Vec<Subnet> = vec![s("172.16.0.0/12"), s("192.168.0.0/16")];
        assert_eq!(pick_free(&pools, &all), None);
    }

    #[test]
    fn configured_pools_are_cut_by_size() {
        let p = pools_from(&[(s("10.10.0.0/16"), 24), (s("192.168.100.0/24"), 26)]).unwrap();
        assert_eq!(p.len(), 256 + 4);
        assert_eq!(p[0], s("10.10.0.0/24"));
        assert_eq!(p[255], s("10.10.255.0/24"));
        assert_eq!(p[257], s("192.168.100.64/26"));
        assert!(pools_from(&[(s("10.0.0.0/16"), 8)]).is_err());
        assert_eq!(pick_free(&p, &[s("10.10.0.0/23")]), Some(s("10.10.2.0/24")));
    }

    #[test]
    fn proc_net_route_is_read_in_host_order() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_route(text),
            vec![
                ("docker0".into(), s("172.17.0.0/16")),
                ("eth0".into(), s("192.0.2.0/24"))
            ]
        );
    }

    #[test]
    fn allocation_skips_gateway_network_and_broadcast_and_never_duplicates() {
        let mut p = Pool::new(s("10.9.0.0/29"), None, None).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(10, 9, 0, 1));
        let got: Vec<Ipv4Addr> = (0..5).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 9, 0, 6));
        assert!(
            p.allocate().is_err(),
            "a /29 has five addresses for containers"
        );
        // A freed address comes back, but only after the others.
        p.release(Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 9, 0, 3));
        assert!(p.reserve(Ipv4Addr::new(10, 9, 0, 4)).is_err());
        assert!(
            p.reserve(Ipv4Addr::new(10, 9, 0, 1)).is_err(),
            "the gateway"
        );
        assert!(p.reserve(Ipv4Addr::new(10, 9, 1, 4)).is_err(), "outside");
    }

    #[test]
    fn round_robin_after_release_and_ranges() {
        let mut p = Pool::new(s("10.9.0.0/24"), None, Some(s("10.9.0.128/25"))).unwrap();
        let a = p.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 128));
        let b = p.allocate().unwrap();
        p.release(a);
        assert_eq!(
            p.allocate().unwrap(),
            Ipv4Addr::new(10, 9, 0, 130),
            "not {a} again at once"
        );
        assert_ne!(b, a);
        assert!(Pool::new(s("10.9.0.0/24"), Some(Ipv4Addr::new(10, 8, 0, 1)), None).is_err());
        assert!(Pool::new(s("10.9.0.0/24"), None, Some(s("10.10.0.0/25"))).is_err());
        assert!(Pool::new(s("10.9.0.0/31"), None, None).is_err());
    }
}
