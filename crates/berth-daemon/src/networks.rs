//! Networks: the default bridge, each running container's attachment (a network namespace
//! bound under `<exec-root>/netns/<id>`, a veth pair, an address from the network's pool),
//! published ports, and Berth's nftables table, rewritten whole on every change.
//!
//! A container's attachment lives in its record, so a restarted daemon takes back exactly
//! the addresses and ports its running containers hold (live restore), and removes any
//! namespace, veth or rule that nothing holds any more (what a crash left).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use berth_network::firewall::{self, BridgeRules, Desired, PortRule};
use berth_network::ipam::{self, Pool, Pool6, Subnet, Subnet6};
use berth_network::link::{self, Netlink};
use berth_network::{dns, netns};
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
    /// With IPv6 on: its subnet and gateway.
    #[serde(default)]
    pub subnet6: Option<Subnet6>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub created: String,
}

/// What a container asks of one network it is connected to (`--ip`, `--network-alias`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
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
    /// Its name inside the container.
    pub ifname: String,
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub prefix6: u8,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A published port as it was bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Binding {
    pub proto: String,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

/// What a running container on bridges holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub netns: PathBuf,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<Binding>,
    /// Its name, for the embedded DNS.
    #[serde(default)]
    pub name: String,
    /// Where the embedded DNS forwards names it does not know.
    #[serde(default)]
    pub upstreams: Vec<String>,
}

impl Attachment {
    /// On a user network: the embedded DNS serves it (not on the default bridge, as
    /// with Docker).
    pub fn uses_embedded_dns(&self) -> bool {
        self.endpoints.iter().any(|e| e.network != "bridge")
    }
}

struct Net {
    cfg: NetworkConfig,
    pool: Pool,
    pool6: Option<Pool6>,
    index: u32,
}

#[derive(Default)]
struct Inner {
    nets: BTreeMap<String, Net>,
    attached: HashMap<String, Attachment>,
    /// Sockets bound to each published host port: nothing else on the host can take the
    /// port while a container publishes it (Docker's proxy holds it the same way).
    reservations: HashMap<String, Vec<OwnedFd>>,
    /// The embedded DNS server of each container on a user network.
    resolvers: HashMap<String, tokio::task::AbortHandle>,
}

impl Net {
    fn release(&mut self, ep: &Endpoint) {
        self.pool.release(ep.ip);
        if let (Some(p6), Some(a6)) = (&mut self.pool6, ep.ip6) {
            p6.release(a6);
        }
    }
}

impl Inner {
    /// Gives back the addresses an attachment held.
    fn release(&mut self, att: &Attachment) {
        for ep in &att.endpoints {
            if let Some(n) = self.nets.get_mut(&ep.network) {
                n.release(ep);
            }
        }
    }

    /// By name, full id, or unique id prefix.
    fn find(&self, key: &str) -> Option<&Net> {
        if let Some(n) = self.nets.get(key) {
            return Some(n);
        }
        if let Some(n) = self.nets.values().find(|n| n.cfg.id == key) {
            return Some(n);
        }
        let mut hits = self
            .nets
            .values()
            .filter(|n| !key.is_empty() && n.cfg.id.starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(n), None) => Some(n),
            _ => None,
        }
    }
}

pub struct Networks {
    dir: PathBuf,
    netns_dir: PathBuf,
    firewall: bool,
    /// Where networks without a subnet get theirs.
    pools: Vec<Subnet>,
    /// The bridges Berth's rules in Docker's DOCKER-USER chain were last written for.
    coexisting: std::sync::Mutex<Option<Vec<String>>>,
    /// Link removals still under way.
    cleanups: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
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

fn overlaps(other: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("Pool overlaps with other one on this address space ({other})"),
    )
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("network {key} not found"))
}

/// The first of `pools` that overlaps no host route (those of `own_bridge` aside: it is
/// being set up again) and none of `used`.
fn free_subnet(
    pools: &[Subnet],
    used: impl Iterator<Item = Subnet>,
    own_bridge: Option<&str>,
) -> Option<Subnet> {
    let taken: Vec<Subnet> = ipam::host_routes()
        .into_iter()
        .filter(|(dev, _)| Some(dev.as_str()) != own_bridge)
        .map(|(_, s)| s)
        .chain(used)
        .collect();
    ipam::pick_free(pools, &taken)
}

/// The networks a container is connected to, its primary one (its network mode) first.
pub fn requested(rec: &Record) -> Vec<(String, EndpointRequest)> {
    let mode = rec.host_config.network_mode.as_str();
    let mut out: Vec<(String, EndpointRequest)> = Vec::new();
    if is_network_name(mode) {
        out.push((
            mode.to_string(),
            rec.networks.get(mode).cloned().unwrap_or_default(),
        ));
    }
    for (name, req) in &rec.networks {
        if name != mode {
            out.push((name.clone(), req.clone()));
        }
    }
    out
}

/// A network mode that names a network (not host, none or container:<x>).
pub fn is_network_name(mode: &str) -> bool {
    !matches!(mode, "host" | "none" | "") && !mode.starts_with("container:")
}

/// The nameservers of the host's /etc/resolv.conf (loopback ones included: the daemon
/// forwards from the host's namespace, where they answer).
fn host_nameservers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver"))
                .then(|| f.next().map(String::from))
                .flatten()
        })
        .collect()
}

impl Networks {
    /// Loads the networks, makes the default bridge on first use (Docker's subnet unless a
    /// route on this host already uses it, or `bip`), and brings the bridges up.
    pub async fn open(
        data_root: &Path,
        exec_root: &Path,
        bip: Option<&str>,
        pools: &[crate::config::AddressPool],
        fixed_cidr_v6: Option<&str>,
        firewall: bool,
    ) -> Result<Networks, String> {
        let bridge6 = match fixed_cidr_v6 {
            Some(c) => Some(
                c.parse::<Subnet6>()
                    .map_err(|e| format!("fixed-cidr-v6: {e}"))?,
            ),
            None => None,
        };
        let pools = if pools.is_empty() {
            ipam::default_pools()
        } else {
            let bases = pools
                .iter()
                .map(|p| Ok((p.base.parse::<Subnet>()?, p.size)))
                .collect::<Result<Vec<_>, berth_network::Error>>()
                .map_err(|e| format!("default-address-pools: {e}"))?;
            ipam::pools_from(&bases).map_err(|e| format!("default-address-pools: {e}"))?
        };
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
        // As read: only what the settings change below is written back.
        let stored: Vec<Value> = configs
            .iter()
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
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
                        let used = configs.iter().map(|c| c.subnet);
                        let s = free_subnet(&pools, used, Some(DEFAULT_BRIDGE))
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
                    subnet6: None,
                    gateway6: None,
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
        // IPv6 on the default bridge follows the settings, at every start.
        if let Some(c) = configs.iter_mut().find(|c| c.name == "bridge") {
            c.subnet6 = bridge6;
            c.gateway6 = bridge6.map(|s| s.nth(1));
        }
        let me = Networks {
            dir,
            netns_dir: exec_root.join("netns"),
            firewall,
            pools,
            coexisting: std::sync::Mutex::new(None),
            cleanups: std::sync::Mutex::new(Vec::new()),
            link,
            inner: tokio::sync::Mutex::new(Inner::default()),
        };
        let mut inner = me.inner.lock().await;
        for cfg in configs {
            if !stored.contains(&serde_json::to_value(&cfg).unwrap_or_default()) {
                me.persist(&cfg)?;
            }
            let net = me.bring_up(cfg).await.map_err(|e| e.message)?;
            inner.nets.insert(net.cfg.name.clone(), net);
        }
        if firewall {
            link::enable_forwarding().map_err(|e| e.to_string())?;
        }
        drop(inner);
        Ok(me)
    }

    async fn bring_up(&self, cfg: NetworkConfig) -> ApiResult<Net> {
        let pool = Pool::new(cfg.subnet, Some(cfg.gateway), cfg.ip_range).map_err(sys)?;
        let pool6 = match cfg.subnet6 {
            Some(s6) => Some(Pool6::new(s6, cfg.gateway6).map_err(sys)?),
            None => None,
        };
        let index = self
            .link
            .ensure_bridge(&cfg.bridge, cfg.gateway, cfg.subnet.prefix, None)
            .await
            .map_err(sys)?;
        if let Some(p6) = &pool6 {
            self.link
                .add_address(index, std::net::IpAddr::V6(p6.gateway), p6.subnet.prefix)
                .await
                .map_err(sys)?;
        }
        // Connections from the host's loopback are DNATed onto the bridge; the guard
        // chain keeps containers from using this the other way round.
        link::set_ipv4_conf(&cfg.bridge, "route_localnet", "1").map_err(sys)?;
        Ok(Net {
            cfg,
            pool,
            pool6,
            index,
        })
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
                subnet6: n.cfg.subnet6,
                internal: n.cfg.internal,
                masquerade: n
                    .cfg
                    .options
                    .get("com.docker.network.bridge.enable_ip_masquerade")
                    .is_none_or(|v| v != "false"),
            });
        }
        for a in inner.attached.values() {
            // Published ports lead to the container's address on its first network.
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
        let bridges: Vec<String> = d.bridges.iter().map(|b| b.bridge.clone()).collect();
        let resync = self.coexisting.lock().expect("lock").as_ref() != Some(&bridges);
        tokio::task::spawn_blocking(move || {
            firewall::apply(&d)?;
            if resync {
                berth_network::coexist::sync(&bridges);
            }
            Ok::<_, berth_network::Error>(bridges)
        })
        .await
        .map_err(ApiError::internal)?
        .map(|bridges| {
            *self.coexisting.lock().expect("lock") = Some(bridges);
        })
        .map_err(sys)
    }

    /// The network's name for a name, id or id prefix.
    pub async fn name_of(&self, key: &str) -> Option<String> {
        if matches!(key, "host" | "none") {
            return Some(key.to_string());
        }
        self.inner
            .lock()
            .await
            .find(key)
            .map(|n| n.cfg.name.clone())
    }

    /// `network create`: a bridge of its own (`br-<id>`), on the given subnet or the first
    /// free one of Docker's pools.
    pub async fn create(&self, req: CreateRequest) -> ApiResult<NetworkConfig> {
        let mut inner = self.inner.lock().await;
        if req.name.is_empty() || !crate::containers::valid_name(&req.name) {
            return Err(ApiError::bad_request(format!(
                "invalid network name: {:?}",
                req.name
            )));
        }
        if matches!(req.name.as_str(), "host" | "none") || inner.nets.contains_key(&req.name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("network with name {} already exists", req.name),
            ));
        }
        let driver = if req.driver.is_empty() {
            "bridge".to_string()
        } else {
            req.driver.clone()
        };
        if driver != "bridge" {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("plugin \"{driver}\" not found"),
            ));
        }
        let (subnet, gateway, ip_range) = match &req.subnet {
            Some(s) => {
                let subnet: Subnet = s.parse().map_err(sys)?;
                if let Some(t) = inner.nets.values().find(|n| n.cfg.subnet.overlaps(&subnet)) {
                    return Err(overlaps(&t.cfg.name));
                }
                let gw = match &req.gateway {
                    Some(g) => g
                        .parse::<Ipv4Addr>()
                        .map_err(|_| ApiError::bad_request(format!("invalid gateway: {g}")))?,
                    None => subnet.nth(1),
                };
                let range = match &req.ip_range {
                    Some(r) => Some(r.parse::<Subnet>().map_err(sys)?),
                    None => None,
                };
                (subnet, gw, range)
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return Err(ApiError::bad_request(
                        "a gateway or ip-range needs a subnet",
                    ));
                }
                let used = inner.nets.values().map(|n| n.cfg.subnet);
                let s = free_subnet(&self.pools, used, None).ok_or_else(|| {
                    ApiError::internal("all predefined address pools have been fully subnetted")
                })?;
                (s, s.nth(1), None)
            }
        };
        let id = crate::containers::random_id();
        let bridge = req
            .options
            .get("com.docker.network.bridge.name")
            .cloned()
            .unwrap_or_else(|| format!("br-{}", &id[..12]));
        // IPv6: the given subnet, or a unique-local /64 of its own.
        let (subnet6, gateway6) = if req.ipv6 {
            let s6 = match &req.subnet6 {
                Some(s6) => s6.parse::<Subnet6>().map_err(sys)?,
                None => Subnet6::ula_for(&id),
            };
            if let Some(t) = inner
                .nets
                .values()
                .find(|n| n.cfg.subnet6.is_some_and(|o| o.overlaps(&s6)))
            {
                return Err(overlaps(&t.cfg.name));
            }
            let gw6 = match &req.gateway6 {
                Some(g) => Some(
                    g.parse::<Ipv6Addr>()
                        .map_err(|_| ApiError::bad_request(format!("invalid gateway: {g}")))?,
                ),
                None => None,
            };
            let pool6 = Pool6::new(s6, gw6).map_err(sys)?;
            (Some(s6), Some(pool6.gateway))
        } else if req.subnet6.is_some() {
            return Err(ApiError::bad_request(
                "an IPv6 subnet needs IPv6 enabled on the network (--ipv6)",
            ));
        } else {
            (None, None)
        };
        let cfg = NetworkConfig {
            id,
            name: req.name.clone(),
            driver,
            bridge,
            subnet,
            gateway,
            ip_range,
            subnet6,
            gateway6,
            internal: req.internal,
            labels: req.labels.clone(),
            options: req.options.clone(),
            created: berth_types::time::now_rfc3339(),
        };
        // Checked before anything is made.
        Pool::new(subnet, Some(gateway), ip_range).map_err(sys)?;
        let net = match self.bring_up(cfg.clone()).await {
            Ok(n) => n,
            Err(e) => {
                let _ = self.link.delete(&cfg.bridge).await;
                return Err(e);
            }
        };
        self.persist(&cfg).map_err(ApiError::internal)?;
        inner.nets.insert(cfg.name.clone(), net);
        if let Err(e) = self.apply(&inner).await {
            tracing::warn!("writing the firewall: {}", e.message);
        }
        Ok(cfg)
    }

    /// `network rm`: only user networks no running container is on.
    pub async fn remove(self: &Arc<Self>, key: &str) -> ApiResult<()> {
        let mut inner = self.inner.lock().await;
        if matches!(key, "bridge" | "host" | "none") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{key} is a pre-defined network and cannot be removed"),
            ));
        }
        let net = inner.find(key).ok_or_else(|| not_found(key))?;
        let (name, id, bridge) = (
            net.cfg.name.clone(),
            net.cfg.id.clone(),
            net.cfg.bridge.clone(),
        );
        if name == "bridge" {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bridge is a pre-defined network and cannot be removed",
            ));
        }
        let active = inner
            .attached
            .values()
            .any(|a| a.endpoints.iter().any(|e| e.network == name));
        if active {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "error while removing network: network {name} id {id} has active endpoints"
                ),
            ));
        }
        std::fs::remove_file(self.dir.join(format!("{id}.json"))).map_err(ApiError::internal)?;
        inner.nets.remove(&name);
        if let Err(e) = self.apply(&inner).await {
            tracing::warn!("writing the firewall: {}", e.message);
        }
        drop(inner);
        // The bridge goes after the answer: deleting a device with ports still being
        // removed waits for them and for RCU grace periods (300 ms for ten containers).
        let me = self.clone();
        self.in_background(async move {
            if let Err(e) = me.link.delete(&bridge).await {
                tracing::warn!("removing bridge {bridge}: {e}");
            }
        });
        Ok(())
    }

    /// Puts a container being started on its networks: a namespace, a veth pair and an
    /// address per network, its published ports, and (on user networks) its DNS server.
    pub async fn attach(self: &Arc<Self>, rec: &Record) -> ApiResult<Attachment> {
        let wanted = bindings(rec).map_err(ApiError::bad_request)?;
        let mut inner = self.inner.lock().await;
        let mut att = Attachment {
            netns: self.netns_dir.join(format!(
                "{}.{}",
                rec.id,
                &crate::containers::random_id()[..8]
            )),
            endpoints: Vec::new(),
            ports: Vec::new(),
            name: rec.name.clone(),
            upstreams: if rec.host_config.dns.is_empty() {
                host_nameservers()
            } else {
                rec.host_config.dns.clone()
            },
        };
        let wired = async {
            let (ports, fds) = reserve(&rec.name, &rec.id, &wanted)?;
            let path = att.netns.clone();
            tokio::task::spawn_blocking(move || netns::create(&path))
                .await
                .map_err(ApiError::internal)?
                .map_err(sys)?;
            for (net, req) in requested(rec) {
                let ep = self.add_endpoint(&mut inner, &att, &net, &req).await?;
                att.endpoints.push(ep);
            }
            Ok::<_, ApiError>((ports, fds))
        }
        .await;
        let (ports, fds) = match wired {
            Ok(x) => x,
            Err(e) => {
                self.unwire(&mut inner, &att).await;
                return Err(e);
            }
        };
        att.ports = ports;
        inner.attached.insert(rec.id.clone(), att.clone());
        inner.reservations.insert(rec.id.clone(), fds);
        if att.uses_embedded_dns() {
            self.start_resolver(&mut inner, &rec.id, &att.netns);
        }
        if !att.ports.is_empty() {
            if let Err(e) = self.apply(&inner).await {
                drop(inner);
                self.detach(&rec.id).await;
                return Err(e);
            }
        }
        Ok(att)
    }

    /// One more interface in the container's namespace, on network `net`.
    async fn add_endpoint(
        &self,
        inner: &mut Inner,
        att: &Attachment,
        net: &str,
        req: &EndpointRequest,
    ) -> ApiResult<Endpoint> {
        // The first network that leads out gives the default route.
        let routed = att
            .endpoints
            .iter()
            .any(|e| inner.nets.get(&e.network).is_some_and(|x| !x.cfg.internal));
        let n = inner.nets.get_mut(net).ok_or_else(|| not_found(net))?;
        if req.ipv4.is_some() && n.cfg.name == "bridge" {
            return Err(ApiError::bad_request(
                "user specified IP address is supported on user defined networks only",
            ));
        }
        if att.endpoints.iter().any(|e| e.network == n.cfg.name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "endpoint with name {} already exists in network {}",
                    att.name, n.cfg.name
                ),
            ));
        }
        let ip = match req.ipv4 {
            Some(ip) => {
                n.pool.reserve(ip).map_err(sys)?;
                ip
            }
            None => n.pool.allocate().map_err(sys)?,
        };
        let ip6 = match (&mut n.pool6, req.ipv6) {
            (Some(p6), Some(want)) => match p6.reserve(want) {
                Ok(()) => Some(want),
                Err(e) => {
                    n.pool.release(ip);
                    return Err(sys(e));
                }
            },
            (Some(p6), None) => match p6.allocate() {
                Ok(a) => Some(a),
                Err(e) => {
                    n.pool.release(ip);
                    return Err(sys(e));
                }
            },
            (None, Some(_)) => {
                n.pool.release(ip);
                return Err(ApiError::bad_request(format!(
                    "network {} has no IPv6 subnet for --ip6",
                    n.cfg.name
                )));
            }
            (None, None) => None,
        };
        let slot = (0..16)
            .find(|i| !att.endpoints.iter().any(|e| e.ifname == format!("eth{i}")))
            .ok_or_else(|| ApiError::bad_request("too many networks for one container"))?;
        let ep = Endpoint {
            network_id: n.cfg.id.clone(),
            network: n.cfg.name.clone(),
            endpoint_id: crate::containers::random_id(),
            ip,
            prefix: n.cfg.subnet.prefix,
            gateway: n.cfg.gateway,
            mac: link::mac_string(link::mac_for(ip)),
            veth: format!("vb{}", &crate::containers::random_id()[..12]),
            ifname: format!("eth{slot}"),
            aliases: req.aliases.clone(),
            ip6,
            prefix6: n.cfg.subnet6.map(|s| s.prefix).unwrap_or(0),
            gateway6: n.cfg.gateway6,
        };
        let index = n.index;
        let gateway = (!n.cfg.internal && !routed).then_some(ep.gateway);
        let gateway6 = (!n.cfg.internal && !routed)
            .then_some(ep.gateway6)
            .flatten();
        let wired = async {
            self.link
                .add_veth(
                    &ep.veth,
                    &ep.ifname,
                    index,
                    &att.netns,
                    link::mac_for(ip),
                    None,
                )
                .await
                .map_err(sys)?;
            Netlink::in_netns(&att.netns)
                .map_err(sys)?
                .configure_interface(
                    &ep.ifname,
                    ip,
                    ep.prefix,
                    gateway,
                    ep.ip6.map(|a6| (a6, ep.prefix6, gateway6)),
                )
                .await
                .map_err(sys)?;
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = wired {
            let _ = self.link.delete(&ep.veth).await;
            n.pool.release(ip);
            if let (Some(p6), Some(a6)) = (&mut n.pool6, ep.ip6) {
                p6.release(a6);
            }
            return Err(e);
        }
        Ok(ep)
    }

    async fn unwire(&self, inner: &mut Inner, att: &Attachment) {
        inner.release(att);
        self.unwire_links(att).await;
    }

    /// The kernel's side of a detach: the veths and the namespace.
    async fn unwire_links(&self, att: &Attachment) {
        for ep in &att.endpoints {
            if let Err(e) = self.link.delete(&ep.veth).await {
                tracing::warn!("removing {}: {e}", ep.veth);
            }
        }
        let path = att.netns.clone();
        let _ = tokio::task::spawn_blocking(move || netns::remove(&path)).await;
    }

    /// Takes a container off its networks (it stopped, or is removed). Idempotent. The
    /// addresses and ports are free when this returns; removing the links (deleting a
    /// device waits for RCU grace periods, 10-30 ms) and rewriting the rules happen after,
    /// off the path of `run --rm` and `stop`. Namespace files and veth names are unique
    /// per start, so a restart never meets what is still being removed.
    pub async fn detach(self: &Arc<Self>, id: &str) {
        let mut inner = self.inner.lock().await;
        let Some(att) = inner.attached.remove(id) else {
            return;
        };
        inner.reservations.remove(id);
        if let Some(r) = inner.resolvers.remove(id) {
            r.abort();
        }
        inner.release(&att);
        drop(inner);
        let me = self.clone();
        self.in_background(async move {
            me.unwire_links(&att).await;
            if !att.ports.is_empty() {
                let inner = me.inner.lock().await;
                if let Err(e) = me.apply(&inner).await {
                    tracing::warn!("rewriting the firewall: {}", e.message);
                }
            }
        });
    }

    /// Kernel work that need not hold up an answer; `settle` waits for it.
    fn in_background(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut cleanups = self.cleanups.lock().expect("lock");
        cleanups.retain(|t| !t.is_finished());
        cleanups.push(tokio::spawn(work));
    }

    /// Waits for the cleanups detach started (the daemon's shutdown, tests).
    pub async fn settle(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.cleanups.lock().expect("lock"));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// `network connect` of a running container: a new interface now. Returns the new
    /// attachment.
    pub async fn connect_running(
        self: &Arc<Self>,
        id: &str,
        net: &str,
        req: &EndpointRequest,
    ) -> ApiResult<Attachment> {
        let mut inner = self.inner.lock().await;
        let mut att = inner.attached.get(id).cloned().ok_or_else(|| {
            ApiError::bad_request("container has no network namespace of its own")
        })?;
        let ep = self.add_endpoint(&mut inner, &att, net, req).await?;
        att.endpoints.push(ep);
        inner.attached.insert(id.to_string(), att.clone());
        if att.uses_embedded_dns() && !inner.resolvers.contains_key(id) {
            let ns = att.netns.clone();
            self.start_resolver(&mut inner, id, &ns);
        }
        Ok(att)
    }

    /// `network disconnect` of a running container: its interface on `net` goes.
    pub async fn disconnect_running(&self, id: &str, net: &str) -> ApiResult<Attachment> {
        let mut inner = self.inner.lock().await;
        let mut att =
            inner.attached.get(id).cloned().ok_or_else(|| {
                ApiError::bad_request("container is not connected to the network")
            })?;
        let pos = att
            .endpoints
            .iter()
            .position(|e| e.network == net)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("container {id} is not connected to network {net}"),
                )
            })?;
        let ep = att.endpoints.remove(pos);
        self.link.delete(&ep.veth).await.map_err(sys)?;
        if let Some(n) = inner.nets.get_mut(&ep.network) {
            n.pool.release(ep.ip);
        }
        if !att.uses_embedded_dns() {
            if let Some(r) = inner.resolvers.remove(id) {
                r.abort();
            }
        }
        inner.attached.insert(id.to_string(), att.clone());
        if pos == 0 && !att.ports.is_empty() {
            // Published ports now lead to the next network's address.
            if let Err(e) = self.apply(&inner).await {
                tracing::warn!("rewriting the firewall: {}", e.message);
            }
        }
        Ok(att)
    }

    /// At daemon start, for each running container that has an attachment: its addresses,
    /// ports and DNS server are taken again.
    pub async fn restore(self: &Arc<Self>, id: &str, att: &Attachment) {
        let mut inner = self.inner.lock().await;
        for ep in &att.endpoints {
            if let Some(n) = inner.nets.get_mut(&ep.network) {
                if let Err(e) = n.pool.reserve(ep.ip) {
                    tracing::warn!("container {id}: {e}");
                }
                if let (Some(p6), Some(a6)) = (&mut n.pool6, ep.ip6) {
                    if let Err(e) = p6.reserve(a6) {
                        tracing::warn!("container {id}: {e}");
                    }
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
        if att.uses_embedded_dns() {
            self.start_resolver(&mut inner, id, &att.netns);
        }
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
            let path = e.path();
            if !inner.attached.values().any(|a| a.netns == path) {
                let _ = netns::remove(&path);
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

    /// A network's id by name.
    pub async fn id_of(&self, name: &str) -> Option<String> {
        if matches!(name, "host" | "none") {
            return Some(fixed_id(name));
        }
        self.inner
            .lock()
            .await
            .nets
            .get(name)
            .map(|n| n.cfg.id.clone())
    }

    /// The embedded DNS server of one container: a UDP socket on 127.0.0.11:53 made
    /// inside its namespace, served by the daemon (no rule in the container needed).
    fn start_resolver(self: &Arc<Self>, inner: &mut Inner, id: &str, ns: &Path) {
        // UDP, and TCP for answers too long for a datagram (a client retries there).
        let made = netns::run_in(ns, || {
            let u = std::net::UdpSocket::bind("127.0.0.11:53")?;
            u.set_nonblocking(true)?;
            let t = std::net::TcpListener::bind("127.0.0.11:53")?;
            t.set_nonblocking(true)?;
            Ok::<_, std::io::Error>((u, t))
        });
        let socks = made
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|(u, t)| {
                Ok((
                    tokio::net::UdpSocket::from_std(u).map_err(|e| e.to_string())?,
                    tokio::net::TcpListener::from_std(t).map_err(|e| e.to_string())?,
                ))
            });
        let (udp, tcp) = match socks {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("container {id}: the embedded DNS server: {e}");
                return;
            }
        };
        let udp = Arc::new(udp);
        let me = Arc::downgrade(self);
        let id2 = id.to_string();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    got = udp.recv_from(&mut buf) => {
                        let Ok((n, peer)) = got else { return };
                        let Some(me) = me.upgrade() else { return };
                        let (msg, udp, id) = (buf[..n].to_vec(), udp.clone(), id2.clone());
                        tokio::spawn(async move {
                            if let Some(reply) = me.answer(&id, &msg, false).await {
                                let _ = udp.send_to(&reply, peer).await;
                            }
                        });
                    }
                    got = tcp.accept() => {
                        let Ok((conn, _)) = got else { return };
                        let Some(me) = me.upgrade() else { return };
                        let id = id2.clone();
                        tokio::spawn(async move { me.serve_tcp(&id, conn).await });
                    }
                }
            }
        });
        if let Some(old) = inner.resolvers.insert(id.to_string(), task.abort_handle()) {
            old.abort();
        }
    }

    /// One query of container `id`: answered here for container names, else forwarded
    /// (over TCP when the client asked over TCP). `None` for what is not a query.
    async fn answer(&self, id: &str, msg: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let q = dns::parse_query(msg)?;
        if let Some((v4, v6)) = self.resolve(id, &q.name).await {
            return Some(dns::answer(msg, &q, &v4, &v6, 600));
        }
        let upstreams = self.upstreams(id).await;
        let reply = if tcp {
            forward_tcp(msg, &upstreams).await
        } else {
            forward(msg, &upstreams).await
        };
        Some(reply.unwrap_or_else(|| dns::servfail(msg, &q)))
    }

    /// DNS over TCP: messages with a two-byte length, until the client closes.
    async fn serve_tcp(&self, id: &str, mut conn: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let mut len = [0u8; 2];
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                conn.read_exact(&mut len),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
            if conn.read_exact(&mut msg).await.is_err() {
                return;
            }
            let Some(reply) = self.answer(id, &msg, true).await else {
                return;
            };
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if conn.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    async fn upstreams(&self, id: &str) -> Vec<String> {
        self.inner
            .lock()
            .await
            .attached
            .get(id)
            .map(|a| a.upstreams.clone())
            .unwrap_or_default()
    }

    /// What the embedded DNS answers for `name` asked by container `id`: the addresses,
    /// on the networks they share, of the containers with that name, alias or short id.
    /// `None` for a name no container has (it is forwarded).
    pub async fn resolve(&self, id: &str, name: &str) -> Option<(Vec<Ipv4Addr>, Vec<Ipv6Addr>)> {
        let inner = self.inner.lock().await;
        let me = inner.attached.get(id)?;
        let mut out = Vec::new();
        let mut out6 = Vec::new();
        for mine in me.endpoints.iter().filter(|e| e.network != "bridge") {
            for (other_id, other) in &inner.attached {
                for ep in other.endpoints.iter().filter(|e| e.network == mine.network) {
                    let hit = other.name.eq_ignore_ascii_case(name)
                        || ep.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                        || (name.len() == 12 && other_id.starts_with(name));
                    if hit && !out.contains(&ep.ip) {
                        out.push(ep.ip);
                        out6.extend(ep.ip6);
                    }
                }
            }
        }
        (!out.is_empty()).then_some((out, out6))
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
                        .unwrap_or_else(|_| a.name.clone());
                    members.insert(
                        id.clone(),
                        json!({"Name": name, "EndpointID": ep.endpoint_id, "MacAddress": ep.mac,
                            "IPv4Address": format!("{}/{}", ep.ip, ep.prefix),
                            "IPv6Address": ep.ip6.map(|a| format!("{a}/{}", ep.prefix6)).unwrap_or_default()}),
                    );
                }
            }
            let c = &n.cfg;
            let mut ipam_cfg =
                json!({"Subnet": c.subnet.to_string(), "Gateway": c.gateway.to_string()});
            if let Some(r) = c.ip_range {
                ipam_cfg["IPRange"] = json!(r.to_string());
            }
            let mut ipam_cfgs = vec![ipam_cfg];
            if let (Some(s6), Some(g6)) = (c.subnet6, c.gateway6) {
                ipam_cfgs.push(json!({"Subnet": s6.to_string(), "Gateway": g6.to_string()}));
            }
            out.push(json!({
                "Name": c.name, "Id": c.id, "Created": c.created, "Scope": "local",
                "Driver": c.driver, "EnableIPv4": true, "EnableIPv6": c.subnet6.is_some(),
                "IPAM": {"Driver": "default", "Options": null, "Config": ipam_cfgs},
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

/// Sends a query to each upstream in turn (2 s each); the first answer wins.
async fn forward(msg: &[u8], upstreams: &[String]) -> Option<Vec<u8>> {
    for up in upstreams {
        let addr: std::net::SocketAddr = match up.parse::<std::net::IpAddr>() {
            Ok(ip) => (ip, 53).into(),
            Err(_) => continue,
        };
        let bind: std::net::SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(s) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if s.send_to(msg, addr).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), s.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The same over TCP (two-byte length prefix), 2 s per upstream.
async fn forward_tcp(msg: &[u8], upstreams: &[String]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for up in upstreams {
        let Ok(ip) = up.parse::<std::net::IpAddr>() else {
            continue;
        };
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect((ip, 53)).await.ok()?;
            let mut out = (msg.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(msg);
            s.write_all(&out).await.ok()?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.ok()?;
            let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut reply).await.ok()?;
            Some(reply)
        };
        if let Ok(Some(r)) = tokio::time::timeout(std::time::Duration::from_secs(2), exchange).await
        {
            return Some(r);
        }
    }
    None
}

/// The body of `POST /networks/create`, as Berth reads it.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub driver: String,
    pub internal: bool,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub ipv6: bool,
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
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
    if networks.is_empty() {
        // Stopped: its networks are named, with what it asked and nothing assigned (as
        // Docker shows them).
        let mut named: Vec<(String, EndpointRequest)> = requested(rec);
        if matches!(mode, "host" | "none") {
            named.push((mode.to_string(), EndpointRequest::default()));
        }
        for (n, req) in named {
            let ipam = if req.ipv4.is_some() || req.ipv6.is_some() {
                json!({"IPv4Address": req.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                    "IPv6Address": req.ipv6.map(|a| a.to_string()).unwrap_or_default()})
            } else {
                Value::Null
            };
            let aliases = if req.aliases.is_empty() {
                Value::Null
            } else {
                json!(req.aliases)
            };
            networks.insert(
                n.clone(),
                json!({"IPAMConfig": ipam, "Links": null, "Aliases": aliases, "MacAddress": "",
                    "NetworkID": if matches!(n.as_str(), "bridge" | "host" | "none") { fixed_id(&n) } else { String::new() },
                    "EndpointID": "", "Gateway": "", "IPAddress": "",
                    "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                    "GlobalIPv6PrefixLen": 0, "DriverOpts": null, "DNSNames": null}),
            );
        }
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
        "GlobalIPv6Address": first.and_then(|e| e.ip6).map(|a| a.to_string()).unwrap_or_default(),
        "GlobalIPv6PrefixLen": first.filter(|e| e.ip6.is_some()).map(|e| e.prefix6).unwrap_or(0),
        "IPv6Gateway": first.and_then(|e| e.gateway6).map(|a| a.to_string()).unwrap_or_default(),
        "Networks": networks,
    })
}

fn endpoint_json(ep: &Endpoint) -> Value {
    json!({"IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": ep.mac,
        "NetworkID": ep.network_id, "EndpointID": ep.endpoint_id,
        "Gateway": ep.gateway.to_string(), "IPAddress": ep.ip.to_string(),
        "IPPrefixLen": ep.prefix,
        "IPv6Gateway": ep.gateway6.map(|a| a.to_string()).unwrap_or_default(),
        "GlobalIPv6Address": ep.ip6.map(|a| a.to_string()).unwrap_or_default(),
        "GlobalIPv6PrefixLen": if ep.ip6.is_some() { ep.prefix6 } else { 0 },
        "DriverOpts": null, "DNSNames": null})
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

/// Docker's `network ls` filters: name (substring), id (prefix), driver, label, type
/// (builtin or custom), dangling.
fn keep(n: &Value, filters: &BTreeMap<String, Vec<String>>, used: &[String]) -> ApiResult<bool> {
    for (key, vals) in filters {
        let any = |f: &dyn Fn(&str) -> bool| vals.iter().any(|v| f(v));
        let name = n["Name"].as_str().unwrap_or("");
        let builtin = matches!(name, "bridge" | "host" | "none");
        let ok = match key.as_str() {
            "name" => any(&|v| name.contains(v)),
            "id" => any(&|v| n["Id"].as_str().unwrap_or("").starts_with(v)),
            "driver" => any(&|v| n["Driver"] == v),
            "type" => any(&|v| (v == "builtin") == builtin && matches!(v, "builtin" | "custom")),
            // Every label asked for (Docker ANDs label filters).
            "label" => vals.iter().all(|v| match v.split_once('=') {
                Some((k, val)) => n["Labels"][k] == val,
                None => n["Labels"].get(v).is_some(),
            }),
            "dangling" => any(&|v| {
                let dangling = !builtin && !used.iter().any(|u| u == name);
                crate::images::truthy(Some(v)) == dangling
            }),
            other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Networks some container (running or not) is connected to.
fn networks_in_use(d: &Shared) -> Vec<String> {
    let mut out = Vec::new();
    for e in d.containers.all() {
        let r = e.snapshot();
        for (name, _) in requested(&r) {
            out.push(name);
        }
    }
    out
}

/// `GET /networks`.
pub async fn list(
    State(d): State<Shared>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
    let ps = crate::images::params(q.as_deref());
    let filters: BTreeMap<String, Vec<String>> =
        crate::containers::api::filters(&ps)?.into_iter().collect();
    let used = networks_in_use(&d);
    let mut out = Vec::new();
    for n in d.networks.list_json(&d.containers).await {
        if keep(&n, &filters, &used)? {
            out.push(n);
        }
    }
    Ok(Json(json!(out)))
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
    hit.cloned().map(Json).ok_or_else(|| not_found(&id))
}

fn body_json(bytes: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected an object",
        ));
    }
    Ok(v)
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// An `EndpointConfig` (`--ip`, `--ip6`, aliases) as Berth keeps it.
pub fn endpoint_request(cfg: &Value) -> ApiResult<EndpointRequest> {
    let addr = |key: &str| cfg["IPAMConfig"][key].as_str().filter(|s| !s.is_empty());
    let ipv4 = match addr("IPv4Address") {
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid IPv4 address: {ip}")))?,
        ),
        None => None,
    };
    let ipv6 = match addr("IPv6Address") {
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid IPv6 address: {ip}")))?,
        ),
        None => None,
    };
    let aliases = cfg["Aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    Ok(EndpointRequest {
        ipv4,
        ipv6,
        aliases,
    })
}

/// `POST /networks/create`.
pub async fn create(
    State(d): State<Shared>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let v = body_json(&body)?;
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
    // One IPv4 and (with EnableIPv6) one IPv6 subnet; an entry's family is its subnet's.
    let configs = v["IPAM"]["Config"].as_array().cloned().unwrap_or_default();
    let is_v6 = |c: &Value| c["Subnet"].as_str().is_some_and(|s| s.contains(':'));
    let v4: Vec<&Value> = configs.iter().filter(|c| !is_v6(c)).collect();
    let v6: Vec<&Value> = configs.iter().filter(|c| is_v6(c)).collect();
    if v4.len() > 1 || v6.len() > 1 {
        return Err(ApiError::bad_request(
            "one IPv4 and one IPv6 subnet per network are supported by Berth",
        ));
    }
    let c = v4.first().copied().cloned().unwrap_or(Value::Null);
    let c6 = v6.first().copied().cloned().unwrap_or(Value::Null);
    let req = CreateRequest {
        name: v["Name"].as_str().unwrap_or("").to_string(),
        driver: v["Driver"].as_str().unwrap_or("").to_string(),
        internal: v["Internal"] == true,
        subnet: text(&c["Subnet"]),
        gateway: text(&c["Gateway"]),
        ip_range: text(&c["IPRange"]),
        ipv6: v["EnableIPv6"] == true,
        subnet6: text(&c6["Subnet"]),
        gateway6: text(&c6["Gateway"]),
        labels: string_map(&v["Labels"]),
        options: string_map(&v["Options"]),
    };
    let cfg = d.networks.create(req).await?;
    d.network_event("create", &cfg.id, &cfg.name, None);
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": cfg.id, "Warning": ""})),
    ))
}

/// `DELETE /networks/{id}`.
pub async fn remove(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let name = d
        .networks
        .name_of(&id)
        .await
        .ok_or_else(|| not_found(&id))?;
    let net_id = d.networks.id_of(&name).await.unwrap_or_default();
    d.networks.remove(&name).await?;
    d.network_event("destroy", &net_id, &name, None);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /networks/prune`: user networks no container is connected to.
pub async fn prune(State(d): State<Shared>) -> ApiResult<Json<Value>> {
    let used = networks_in_use(&d);
    let mut deleted = Vec::new();
    for n in d.networks.list_json(&d.containers).await {
        let name = n["Name"].as_str().unwrap_or("").to_string();
        if matches!(name.as_str(), "bridge" | "host" | "none") || used.contains(&name) {
            continue;
        }
        if d.networks.remove(&name).await.is_ok() {
            d.network_event("destroy", n["Id"].as_str().unwrap_or(""), &name, None);
            deleted.push(name);
        }
    }
    Ok(Json(json!({"NetworksDeleted": deleted})))
}

/// The body, the network's name and the container of a connect or disconnect.
async fn network_and_container(
    d: &Shared,
    id: &str,
    body: &[u8],
) -> ApiResult<(Value, String, Arc<crate::containers::Entry>)> {
    let v = body_json(body)?;
    let name = d.networks.name_of(id).await.ok_or_else(|| not_found(id))?;
    let e = d.containers.get(v["Container"].as_str().unwrap_or(""))?;
    Ok((v, name, e))
}

/// `POST /networks/{id}/connect`: on a running container the interface comes at once.
pub async fn connect(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let (v, name, e) = network_and_container(&d, &id, &body).await?;
    if matches!(name.as_str(), "host" | "none") {
        return Err(ApiError::bad_request(format!(
            "container cannot be disconnected from host network or connected to {name} network"
        )));
    }
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    if !is_network_name(&rec.host_config.network_mode) {
        return Err(ApiError::bad_request(
            "container sharing network namespace with another container or host cannot be connected to any other network",
        ));
    }
    // A container that is not running just takes the new settings (docker-compose v1
    // connects the network a container was created on, to give it its aliases).
    if rec.state.running && requested(&rec).iter().any(|(n, _)| *n == name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "endpoint with name {} already exists in network {name}",
                rec.name
            ),
        ));
    }
    let req = endpoint_request(&v["EndpointConfig"])?;
    let att = if rec.state.running {
        Some(d.networks.connect_running(&rec.id, &name, &req).await?)
    } else {
        None
    };
    let rec = {
        let mut r = e.rec.lock().expect("lock");
        r.networks.insert(name.clone(), req);
        if att.is_some() {
            r.network = att;
        }
        r.clone()
    };
    d.containers.persist(&rec)?;
    let net_id = d.networks.id_of(&name).await.unwrap_or_default();
    d.network_event("connect", &net_id, &name, Some(&rec.id));
    Ok(StatusCode::OK)
}

/// `POST /networks/{id}/disconnect`.
pub async fn disconnect(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let (_, name, e) = network_and_container(&d, &id, &body).await?;
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    if !requested(&rec).iter().any(|(n, _)| *n == name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("container {} is not connected to network {name}", rec.id),
        ));
    }
    let att = if rec.state.running {
        Some(d.networks.disconnect_running(&rec.id, &name).await?)
    } else {
        None
    };
    let rec = {
        let mut r = e.rec.lock().expect("lock");
        r.networks.remove(&name);
        if r.host_config.network_mode == name && rec.state.running {
            // Its next network becomes its mode; with none left, it has no network. (A
            // stopped container keeps its mode: clients disconnect and connect it again
            // to change its settings there.)
            r.host_config.network_mode = r
                .networks
                .keys()
                .next()
                .cloned()
                .unwrap_or_else(|| "none".into());
        }
        if att.is_some() {
            r.network = att;
        }
        r.clone()
    };
    d.containers.persist(&rec)?;
    let net_id = d.networks.id_of(&name).await.unwrap_or_default();
    d.network_event("disconnect", &net_id, &name, Some(&rec.id));
    Ok(StatusCode::OK)
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
            ..Attachment::default()
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
