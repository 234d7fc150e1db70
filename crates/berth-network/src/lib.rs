//! IPAM, bridges and veths over netlink, nftables rulesets, published ports, embedded DNS.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
