//! IPAM, bridges and veths over netlink, network namespaces, and Berth's nftables ruleset
//! (published ports, masquerade, isolation).

pub mod coexist;
pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod link;
pub mod netns;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: a subnet, an address, a port.
    #[error("{0}")]
    Invalid(String),
    /// Something is taken: an address, a port.
    #[error("{0}")]
    Conflict(String),
    /// The kernel or a tool said no.
    #[error("{0}")]
    System(String),
}
