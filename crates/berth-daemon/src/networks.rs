//! Networks: the default bridge, each running container's attachment (a network namespace
//! bound under `<exec-root>/netns/<id>`, a veth pair, an address from the network's pool),
//! published ports, and Berth's nftables table, rewritten whole on every change.
//!
//! A container's attachment lives in its record, so a restarted daemon takes back exactly
//! the addresses and ports its running containers hold (live restore), and removes any
//! namespace, veth or rule that nothing holds any more (what a crash left).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use berth_network::firewall::{self, BridgeRules, Desired, PortRule};
use berth_network::ipam::{self, Pool, Subnet};
use berth_network::link::{self, Netlink};
use berth_network::netns;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::containers::model::Record;
use crate::{ApiError, ApiResult, Shared};

/// The default bridge's interface.
pub const DEFAULT_BRIDGE: &str = "berth0";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// The Linux bridge.
    pub bridge: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub ip_range: Option<Subnet>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub created: String,
}

/// A container's place on one network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub network_id: String,
    pub network: String,
    pub endpoint_id: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// The host side of the veth pair.
    pub veth: String,
}

/// A published port as it was bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Binding {
    pub proto: String,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

/// What a running container on a bridge holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub netns: PathBuf,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<Binding>,
}

struct Net {
    cfg: NetworkConfig,
    pool: Pool,
    index: u32,
}

#[derive(Default)]
struct Inner {
    nets: BTreeMap<String, Net>,
    attached: HashMap<String, Attachment>,
    /// Sockets bound to each published host port: nothing else on the host can take the
    /// port while a container publishes it (Docker's proxy holds it the same way).
    reservations: HashMap<String, Vec<OwnedFd>>,
}

pub struct Networks {
    dir: PathBuf,
    netns_dir: PathBuf,
    firewall: bool,
    link: Netlink,
    inner: tokio::sync::Mutex<Inner>,
}

fn fixed_id(name: &str) -> String {
    berth_types::Digest::sha256(format!("berth network {name}").as_bytes())
        .hex()
        .to_string()
}

fn sys(e: berth_network::Error) -> ApiError {
    match e {
        berth_network::Error::Invalid(m) => ApiError::bad_request(m),
        berth_network::Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
        berth_network::Error::System(m) => ApiError::internal(m),
    }
}

impl Networks {
    /// Loads the networks, makes the default bridge on first use (Docker's subnet unless a
    /// route on this host already uses it, or `bip`), and brings the bridges up.
    pub async fn open(
        data_root: &Path,
        exec_root: &Path,
        bip: Option<&str>,
        firewall: bool,
    ) -> Result<Networks, String> {
        let dir = data_root.join("networks");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let link = Netlink::current().map_err(|e| e.to_string())?;
        let mut configs: Vec<NetworkConfig> = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(c) = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                configs.push(c);
            }
        }
        let wanted_bip = match bip {
            Some(b) => Some(ipam::parse_cidr(b).map_err(|e| format!("bip: {e}"))?),
            None => None,
        };
        let default = configs.iter_mut().find(|c| c.name == "bridge");
        match (default, wanted_bip) {
            (Some(c), Some((gw, prefix))) => {
                // `bip` changed: the bridge follows it.
                c.subnet = Subnet::new(gw, prefix);
                c.gateway = gw;
            }
            (Some(_), None) => {}
            (None, bip) => {
                let (subnet, gateway) = match bip {
                    Some((gw, prefix)) => (Subnet::new(gw, prefix), gw),
                    None => {
                        let taken: Vec<Subnet> = ipam::host_routes()
                            .into_iter()
                            .filter(|(dev, _)| dev != DEFAULT_BRIDGE)
                            .map(|(_, s)| s)
                            .collect();
                        let s = ipam::pick_free(&ipam::default_pools(), &taken)
                            .ok_or("no free subnet for the default bridge: set one with --bip")?;
                        (s, s.nth(1))
                    }
                };
                configs.push(NetworkConfig {
                    id: fixed_id("bridge"),
                    name: "bridge".into(),
                    driver: "bridge".into(),
                    bridge: DEFAULT_BRIDGE.into(),
                    subnet,
                    gateway,
                    ip_range: None,
                    internal: false,
                    labels: BTreeMap::new(),
                    options: BTreeMap::from([
                        (
                            "com.docker.network.bridge.default_bridge".into(),
                            "true".into(),
                        ),
                        (
                            "com.docker.network.bridge.enable_ip_masquerade".into(),
                            "true".into(),
                        ),
                        (
                            "com.docker.network.bridge.name".into(),
                            DEFAULT_BRIDGE.into(),
                        ),
                    ]),
                    created: berth_types::time::now_rfc3339(),
                });
            }
        }
        let me = Networks {
            dir,
            netns_dir: exec_root.join("netns"),
            firewall,
            link,
            inner: tokio::sync::Mutex::new(Inner::default()),
        };
        let mut inner = me.inner.lock().await;
        for cfg in configs {
            me.persist(&cfg)?;
            let pool = Pool::new(cfg.subnet, Some(cfg.gateway), cfg.ip_range)
                .map_err(|e| format!("network {}: {e}", cfg.name))?;
            let index = me
                .link
                .ensure_bridge(&cfg.bridge, cfg.gateway, cfg.subnet.prefix, None)
                .await
                .map_err(|e| e.to_string())?;
            // Connections from the host's loopback are DNATed onto the bridge; the guard
            // chain keeps containers from using this the other way round.
            link::set_ipv4_conf(&cfg.bridge, "route_localnet", "1").map_err(|e| e.to_string())?;
            inner
                .nets
                .insert(cfg.name.clone(), Net { cfg, pool, index });
        }
        if firewall {
            link::enable_forwarding().map_err(|e| e.to_string())?;
        }
        drop(inner);
        Ok(me)
    }

    fn persist(&self, cfg: &NetworkConfig) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(cfg).map_err(|e| e.to_string())?;
        berth_types::fs::atomic_write(&self.dir.join(format!("{}.json", cfg.id)), &bytes)
            .map_err(|e| e.to_string())
    }

    fn desired(inner: &Inner) -> Desired {
        let mut d = Desired::default();
        for n in inner.nets.values() {
            d.bridges.push(BridgeRules {
                bridge: n.cfg.bridge.clone(),
                subnet: n.cfg.subnet,
                internal: n.cfg.internal,
                masquerade: n
                    .cfg
                    .options
                    .get("com.docker.network.bridge.enable_ip_masquerade")
                    .is_none_or(|v| v != "false"),
            });
        }
        for a in inner.attached.values() {
            let Some(ep) = a.endpoints.first() else {
                continue;
            };
            for b in &a.ports {
                d.ports.push(PortRule {
                    proto: b.proto.clone(),
                    host_ip: (!b.host_ip.is_unspecified()).then_some(b.host_ip),
                    host_port: b.host_port,
                    container_ip: ep.ip,
                    container_port: b.container_port,
                });
            }
        }
        d.ports
            .sort_by(|a, b| (a.host_port, &a.proto).cmp(&(b.host_port, &b.proto)));
        d
    }

    async fn apply(&self, inner: &Inner) -> Result<(), ApiError> {
        if !self.firewall {
            return Ok(());
        }
        let d = Self::desired(inner);
        tokio::task::spawn_blocking(move || firewall::apply(&d))
            .await
            .map_err(ApiError::internal)?
            .map_err(sys)
    }

    /// Puts a container being started on its network: a namespace, a veth pair, an
    /// address, and its published ports.
    pub async fn attach(&self, rec: &Record) -> ApiResult<Attachment> {
        let mut inner = self.inner.lock().await;
        let wanted = bindings(rec).map_err(ApiError::bad_request)?;
        let net = inner
            .nets
            .get_mut("bridge")
            .ok_or_else(|| ApiError::internal("the default bridge is missing"))?;
        let ip = net.pool.allocate().map_err(sys)?;
        let ep = Endpoint {
            network_id: net.cfg.id.clone(),
            network: net.cfg.name.clone(),
            endpoint_id: crate::containers::random_id(),
            ip,
            prefix: net.cfg.subnet.prefix,
            gateway: net.cfg.gateway,
            mac: link::mac_string(link::mac_for(ip)),
            veth: format!("vb{}", &rec.id[..12]),
        };
        let index = net.index;
        let att = Attachment {
            netns: self.netns_dir.join(&rec.id),
            endpoints: vec![ep.clone()],
            ports: Vec::new(),
        };
        let wired = async {
            let (ports, fds) = reserve(&rec.name, &rec.id, &wanted)?;
            let path = att.netns.clone();
            tokio::task::spawn_blocking(move || netns::create(&path))
                .await
                .map_err(ApiError::internal)?
                .map_err(sys)?;
            self.link
                .add_veth(&ep.veth, index, &att.netns, link::mac_for(ip), None)
                .await
                .map_err(sys)?;
            Netlink::in_netns(&att.netns)
                .map_err(sys)?
                .configure_interface("eth0", ip, ep.prefix, Some(ep.gateway))
                .await
                .map_err(sys)?;
            Ok::<_, ApiError>((ports, fds))
        }
        .await;
        let (ports, fds) = match wired {
            Ok(x) => x,
            Err(e) => {
                self.unwire(&att).await;
                if let Some(n) = inner.nets.get_mut("bridge") {
                    n.pool.release(ip);
                }
                return Err(e);
            }
        };
        let att = Attachment { ports, ..att };
        let published = !att.ports.is_empty();
        inner.attached.insert(rec.id.clone(), att.clone());
        inner.reservations.insert(rec.id.clone(), fds);
        if published {
            if let Err(e) = self.apply(&inner).await {
                drop(inner);
                self.detach(&rec.id).await;
                return Err(e);
            }
        }
        Ok(att)
    }

    async fn unwire(&self, att: &Attachment) {
        for ep in &att.endpoints {
            if let Err(e) = self.link.delete(&ep.veth).await {
                tracing::warn!("removing {}: {e}", ep.veth);
            }
        }
        let path = att.netns.clone();
        let _ = tokio::task::spawn_blocking(move || netns::remove(&path)).await;
    }

    /// Takes a container off its networks (it stopped, or is removed). Idempotent.
    pub async fn detach(&self, id: &str) {
        let mut inner = self.inner.lock().await;
        let Some(att) = inner.attached.remove(id) else {
            return;
        };
        inner.reservations.remove(id);
        self.unwire(&att).await;
        for ep in &att.endpoints {
            if let Some(n) = inner.nets.get_mut(&ep.network) {
                n.pool.release(ep.ip);
            }
        }
        if !att.ports.is_empty() {
            if let Err(e) = self.apply(&inner).await {
                tracing::warn!("rewriting the firewall: {}", e.message);
            }
        }
    }

    /// At daemon start, for each running container that has an attachment: its address
    /// and ports are taken again.
    pub async fn restore(&self, id: &str, att: &Attachment) {
        let mut inner = self.inner.lock().await;
        for ep in &att.endpoints {
            if let Some(n) = inner.nets.get_mut(&ep.network) {
                if let Err(e) = n.pool.reserve(ep.ip) {
                    tracing::warn!("container {id}: {e}");
                }
            }
        }
        let mut fds = Vec::new();
        for b in &att.ports {
            match bind_port(&b.proto, b.host_ip, b.host_port) {
                Ok((fd, _)) => fds.push(fd),
                Err(e) => tracing::warn!("container {id}: port {}: {e}", b.host_port),
            }
        }
        inner.attached.insert(id.to_string(), att.clone());
        inner.reservations.insert(id.to_string(), fds);
    }

    /// After restore: namespaces and veths nothing holds are removed (a crash left them),
    /// and the ruleset is written from what is held.
    pub async fn reconcile(&self) {
        let inner = self.inner.lock().await;
        for e in std::fs::read_dir(&self.netns_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if !inner.attached.contains_key(&name) {
                let _ = netns::remove(&e.path());
            }
        }
        let bridges: Vec<u32> = inner.nets.values().map(|n| n.index).collect();
        let held: Vec<&str> = inner
            .attached
            .values()
            .flat_map(|a| a.endpoints.iter().map(|e| e.veth.as_str()))
            .collect();
        if let Ok(links) = self.link.links().await {
            for (name, _, master) in links {
                let ours = master.is_some_and(|m| bridges.contains(&m)) && name.starts_with("vb");
                if ours && !held.contains(&name.as_str()) {
                    let _ = self.link.delete(&name).await;
                }
            }
        }
        if let Err(e) = self.apply(&inner).await {
            tracing::warn!("writing the firewall: {}", e.message);
        }
    }

    /// Whether `mode` names a network containers can join here.
    pub async fn known(&self, mode: &str) -> bool {
        matches!(mode, "host" | "none") || self.inner.lock().await.nets.contains_key(mode)
    }

    async fn list_json(&self, containers: &crate::containers::Containers) -> Vec<Value> {
        let inner = self.inner.lock().await;
        let mut out = Vec::new();
        for n in inner.nets.values() {
            let mut members = serde_json::Map::new();
            for (id, a) in &inner.attached {
                for ep in a.endpoints.iter().filter(|e| e.network == n.cfg.name) {
                    let name = containers
                        .get(id)
                        .map(|e| e.snapshot().name)
                        .unwrap_or_default();
                    members.insert(
                        id.clone(),
                        json!({"Name": name, "EndpointID": ep.endpoint_id, "MacAddress": ep.mac,
                            "IPv4Address": format!("{}/{}", ep.ip, ep.prefix), "IPv6Address": ""}),
                    );
                }
            }
            let c = &n.cfg;
            let mut ipam_cfg =
                json!({"Subnet": c.subnet.to_string(), "Gateway": c.gateway.to_string()});
            if let Some(r) = c.ip_range {
                ipam_cfg["IPRange"] = json!(r.to_string());
            }
            out.push(json!({
                "Name": c.name, "Id": c.id, "Created": c.created, "Scope": "local",
                "Driver": c.driver, "EnableIPv4": true, "EnableIPv6": false,
                "IPAM": {"Driver": "default", "Options": null, "Config": [ipam_cfg]},
                "Internal": c.internal, "Attachable": false, "Ingress": false,
                "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
                "Containers": members, "Options": c.options, "Labels": c.labels,
            }));
        }
        for (name, driver) in [("host", "host"), ("none", "null")] {
            out.push(json!({
                "Name": name, "Id": fixed_id(name), "Created": "0001-01-01T00:00:00Z",
                "Scope": "local", "Driver": driver, "EnableIPv4": true, "EnableIPv6": false,
                "IPAM": {"Driver": "default", "Options": null, "Config": []},
                "Internal": false, "Attachable": false, "Ingress": false,
                "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
                "Containers": {}, "Options": {}, "Labels": {},
            }));
        }
        out
    }
}

/// The ports a container asks to publish: `PortBindings`, and with `PublishAllPorts` every
/// exposed port not bound otherwise, on a port the kernel picks.
/// Each entry is (proto, host ip, host ports (an empty range for "any"), container port).
type Wanted = Vec<(String, Ipv4Addr, Option<(u16, u16)>, u16)>;

fn parse_port_key(key: &str) -> Result<(u16, String), String> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("invalid port: {key}"))?;
    Ok((port, proto))
}

fn bindings(rec: &Record) -> Result<Wanted, String> {
    let hc = &rec.host_config;
    let mut out = Vec::new();
    for (key, list) in &hc.port_bindings {
        let (cport, proto) = parse_port_key(key)?;
        for b in list.as_array().into_iter().flatten() {
            let ip = b["HostIp"].as_str().unwrap_or("");
            let host_ip: Ipv4Addr = match ip {
                "" => Ipv4Addr::UNSPECIFIED,
                ip => match ip.parse() {
                    Ok(v4) => v4,
                    // IPv6 host addresses wait for IPv6 networks.
                    Err(_) if ip.contains(':') => continue,
                    Err(_) => return Err(format!("invalid IP address: {ip}")),
                },
            };
            let hp = b["HostPort"].as_str().unwrap_or("");
            let range = if hp.is_empty() {
                None
            } else {
                let (lo, hi) = hp.split_once('-').unwrap_or((hp, hp));
                let p = |s: &str| {
                    s.parse::<u16>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| format!("invalid hostPort: {hp}"))
                };
                let (lo, hi) = (p(lo)?, p(hi)?);
                if lo > hi {
                    return Err(format!("invalid hostPort: {hp}"));
                }
                Some((lo, hi))
            };
            out.push((proto.clone(), host_ip, range, cport));
        }
    }
    if hc.publish_all_ports {
        for key in rec.config.exposed_ports.iter().flat_map(|m| m.keys()) {
            let (cport, proto) = parse_port_key(key)?;
            let bound = out.iter().any(|(p, _, _, c)| *p == proto && *c == cport);
            if !bound {
                out.push((proto, Ipv4Addr::UNSPECIFIED, None, cport));
            }
        }
    }
    Ok(out)
}

/// Binds (without listening) one host port; port 0 lets the kernel pick from its
/// ephemeral range, as `-P` does.
fn bind_port(proto: &str, ip: Ipv4Addr, port: u16) -> std::io::Result<(OwnedFd, u16)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let kind = if proto == "udp" {
        SocketType::DGRAM
    } else {
        SocketType::STREAM
    };
    let fd = rustix::net::socket_with(AddressFamily::INET, kind, SocketFlags::CLOEXEC, None)?;
    rustix::net::bind(&fd, &SocketAddrV4::new(ip, port))?;
    let got = match rustix::net::getsockname(&fd)?.try_into() {
        Ok(std::net::SocketAddr::V4(a)) => a.port(),
        _ => port,
    };
    Ok((fd, got))
}

fn reserve(
    name: &str,
    id: &str,
    wanted: &Wanted,
) -> Result<(Vec<Binding>, Vec<OwnedFd>), ApiError> {
    let mut ports = Vec::new();
    let mut fds = Vec::new();
    for (proto, ip, range, cport) in wanted {
        let (lo, hi) = range.unwrap_or((0, 0));
        let mut last_err = None;
        let mut done = false;
        for p in lo..=hi {
            match bind_port(proto, *ip, p) {
                Ok((fd, got)) => {
                    fds.push(fd);
                    ports.push(Binding {
                        proto: proto.clone(),
                        host_ip: *ip,
                        host_port: got,
                        container_port: *cport,
                    });
                    done = true;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if !done {
            let shown = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let why = match last_err {
                Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    "port is already allocated".to_string()
                }
                Some(e) => e.to_string(),
                None => "no port".into(),
            };
            return Err(ApiError::internal(format!(
                "driver failed programming external connectivity on endpoint {name} ({id}): Bind for {ip}:{shown} failed: {why}"
            )));
        }
    }
    Ok((ports, fds))
}

/// `NetworkSettings` of container inspect.
pub fn settings_json(rec: &Record) -> Value {
    let mut ports = serde_json::Map::new();
    for k in rec.config.exposed_ports.iter().flat_map(|m| m.keys()) {
        ports.insert(k.clone(), Value::Null);
    }
    let att = rec.network.as_ref();
    for b in att.iter().flat_map(|a| a.ports.iter()) {
        let key = format!("{}/{}", b.container_port, b.proto);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if entry.is_null() {
            *entry = json!([]);
        }
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({"HostIp": b.host_ip.to_string(), "HostPort": b.host_port.to_string()}));
        }
    }
    let mut networks = serde_json::Map::new();
    for ep in att.iter().flat_map(|a| a.endpoints.iter()) {
        networks.insert(ep.network.clone(), endpoint_json(ep));
    }
    let mode = rec.host_config.network_mode.as_str();
    if networks.is_empty() && (mode == "bridge" || mode == "host" || mode == "none") {
        // Stopped: the network is named, with nothing assigned (as Docker shows it).
        networks.insert(
            mode.to_string(),
            json!({"IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "",
                "NetworkID": fixed_id(mode), "EndpointID": "", "Gateway": "", "IPAddress": "",
                "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0, "DriverOpts": null, "DNSNames": null}),
        );
    }
    let first = att.and_then(|a| a.endpoints.first());
    json!({
        "Bridge": "", "SandboxID": "",
        "SandboxKey": att.map(|a| a.netns.display().to_string()).unwrap_or_default(),
        "HairpinMode": false, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports,
        "EndpointID": first.map(|e| e.endpoint_id.clone()).unwrap_or_default(),
        "Gateway": first.map(|e| e.gateway.to_string()).unwrap_or_default(),
        "IPAddress": first.map(|e| e.ip.to_string()).unwrap_or_default(),
        "IPPrefixLen": first.map(|e| e.prefix).unwrap_or(0),
        "MacAddress": first.map(|e| e.mac.clone()).unwrap_or_default(),
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "",
        "Networks": networks,
    })
}

fn endpoint_json(ep: &Endpoint) -> Value {
    json!({"IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": ep.mac,
        "NetworkID": ep.network_id, "EndpointID": ep.endpoint_id,
        "Gateway": ep.gateway.to_string(), "IPAddress": ep.ip.to_string(),
        "IPPrefixLen": ep.prefix, "IPv6Gateway": "", "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0, "DriverOpts": null, "DNSNames": null})
}

/// The `Ports` of `GET /containers/json`: published ports, then exposed ones.
pub fn summary_ports(rec: &Record) -> Value {
    let mut out = Vec::new();
    let att = rec.network.as_ref();
    for b in att.iter().flat_map(|a| a.ports.iter()) {
        out.push(
            json!({"IP": b.host_ip.to_string(), "PrivatePort": b.container_port,
            "PublicPort": b.host_port, "Type": b.proto}),
        );
    }
    for k in rec.config.exposed_ports.iter().flat_map(|m| m.keys()) {
        if let Ok((p, proto)) = parse_port_key(k) {
            let published = att
                .iter()
                .flat_map(|a| a.ports.iter())
                .any(|b| b.container_port == p && b.proto == proto);
            if !published {
                out.push(json!({"PrivatePort": p, "Type": proto}));
            }
        }
    }
    json!(out)
}

/// The `NetworkSettings.Networks` of `GET /containers/json`.
pub fn summary_networks(rec: &Record) -> Value {
    match rec.network.as_ref() {
        Some(a) => Value::Object(
            a.endpoints
                .iter()
                .map(|ep| (ep.network.clone(), endpoint_json(ep)))
                .collect(),
        ),
        None => json!({}),
    }
}

/// `GET /networks`.
pub async fn list(State(d): State<Shared>) -> Json<Value> {
    Json(json!(d.networks.list_json(&d.containers).await))
}

/// `GET /networks/{id}`: by name, id, or id prefix.
pub async fn inspect(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    let all = d.networks.list_json(&d.containers).await;
    let hit = all
        .iter()
        .find(|n| n["Name"] == id.as_str() || n["Id"] == id.as_str())
        .or_else(|| {
            let mut by_prefix = all
                .iter()
                .filter(|n| n["Id"].as_str().is_some_and(|i| i.starts_with(&id)));
            match (by_prefix.next(), by_prefix.next()) {
                (Some(one), None) if !id.is_empty() => Some(one),
                _ => None,
            }
        });
    hit.cloned()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("network {id} not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(bindings: Value, exposed: &[&str], all: bool) -> Record {
        let mut r = Record::default();
        r.host_config.port_bindings = serde_json::from_value(bindings).unwrap();
        r.host_config.publish_all_ports = all;
        r.config.exposed_ports = Some(exposed.iter().map(|k| (k.to_string(), json!({}))).collect());
        r
    }

    #[test]
    fn port_bindings_are_read_as_docker_sends_them() {
        let r = rec(
            json!({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                   "53/udp": [{"HostIp": "", "HostPort": ""}],
                   "90/tcp": [{"HostIp": "", "HostPort": "9000-9010"}, {"HostIp": "::", "HostPort": "9000"}]}),
            &["80/tcp", "443/tcp"],
            true,
        );
        let w = bindings(&r).unwrap();
        assert!(w.contains(&("tcp".into(), Ipv4Addr::LOCALHOST, Some((8080, 8080)), 80)));
        assert!(w.contains(&("udp".into(), Ipv4Addr::UNSPECIFIED, None, 53)));
        assert!(w.contains(&("tcp".into(), Ipv4Addr::UNSPECIFIED, Some((9000, 9010)), 90)));
        // -P adds what is exposed and not bound.
        assert!(w.contains(&("tcp".into(), Ipv4Addr::UNSPECIFIED, None, 443)));
        assert_eq!(w.len(), 4, "{w:?}");
        for bad in [
            json!({"80/sctp": [{"HostPort": "1"}]}),
            json!({"80/tcp": [{"HostPort": "99999"}]}),
            json!({"80/tcp": [{"HostPort": "9-1"}]}),
            json!({"80/tcp": [{"HostIp": "localhost", "HostPort": "1"}]}),
        ] {
            assert!(bindings(&rec(bad.clone(), &[], false)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_port_is_a_clear_conflict_and_ranges_move_on() {
        let (_held, port) = bind_port("tcp", Ipv4Addr::LOCALHOST, 0).unwrap();
        let want = vec![(
            "tcp".to_string(),
            Ipv4Addr::LOCALHOST,
            Some((port, port)),
            80,
        )];
        let err = reserve("web", "abc", &want).unwrap_err();
        assert!(
            err.message.contains(&format!(
                "Bind for 127.0.0.1:{port} failed: port is already allocated"
            )),
            "{}",
            err.message
        );
        let hi = port.saturating_add(20);
        let want = vec![("tcp".to_string(), Ipv4Addr::LOCALHOST, Some((port, hi)), 80)];
        let (ports, _fds) = reserve("web", "abc", &want).unwrap();
        assert_ne!(ports[0].host_port, port);
        let (ports, _fds) = reserve(
            "web",
            "abc",
            &vec![("udp".to_string(), Ipv4Addr::LOCALHOST, None, 53)],
        )
        .unwrap();
        assert!(ports[0].host_port > 0);
    }

    #[test]
    fn inspect_and_list_show_published_and_exposed_ports() {
        let mut r = rec(json!({}), &["80/tcp", "443/tcp"], false);
        r.host_config.network_mode = "bridge".into();
        r.network = Some(Attachment {
            netns: "/run/berth/netns/x".into(),
            endpoints: vec![],
            ports: vec![Binding {
                proto: "tcp".into(),
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 8080,
                container_port: 80,
            }],
        });
        let s = settings_json(&r);
        assert_eq!(
            s["Ports"]["80/tcp"],
            json!([{"HostIp": "0.0.0.0", "HostPort": "8080"}])
        );
        assert_eq!(s["Ports"]["443/tcp"], Value::Null);
        let p = summary_ports(&r);
        assert_eq!(
            p,
            json!([{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                             {"PrivatePort": 443, "Type": "tcp"}])
        );
    }
}
