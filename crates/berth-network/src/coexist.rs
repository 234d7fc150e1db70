//! Living beside Docker's firewall. Docker sets the iptables FORWARD policy to DROP and
//! accepts only its own bridges; with br_netfilter that also drops traffic between two
//! containers on one of Berth's bridges. Docker's documented place for other rules is its
//! `DOCKER-USER` chain, so when that chain exists Berth keeps two rules per bridge there
//! (marked with the comment `berth`): traffic that starts on the bridge, and replies to it.
//! Connections from outside to published ports are left to the host's policy: Berth does
//! not open the host's firewall behind the administrator's back (Docker does, which is
//! how it bypasses UFW). Rules go through the `iptables` command, the interface of that
//! table's owner, so `iptables` and Docker keep reading their chain.

use std::process::Command;

pub const CHAIN: &str = "DOCKER-USER";
const MARK: &str = "berth";

/// The rules Berth wants in `DOCKER-USER` for `bridge`, as `iptables` arguments after
/// the chain name.
pub fn rules_for(bridge: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&[
            "-i",
            bridge,
            "-m",
            "comment",
            "--comment",
            MARK,
            "-j",
            "ACCEPT",
        ]),
        s(&[
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-m",
            "comment",
            "--comment",
            MARK,
            "-j",
            "ACCEPT",
        ]),
    ]
}

/// Berth's rules in `iptables -S CHAIN` output, as arguments after the chain name.
pub fn ours(listing: &str) -> Vec<Vec<String>> {
    let prefix = format!("-A {CHAIN} ");
    listing
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| l.contains(&format!("--comment {MARK} ")))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn iptables(args: &[String]) -> Option<String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes Berth's rules in Docker's chain match `bridges` (none when there is no such
/// chain). Returns whether the chain exists.
pub fn sync(bridges: &[String]) -> bool {
    let Some(listing) = iptables(&["-S".into(), CHAIN.into()]) else {
        return false;
    };
    let wanted: Vec<Vec<String>> = bridges.iter().flat_map(|b| rules_for(b)).collect();
    let have = ours(&listing);
    for r in have.iter().filter(|r| !wanted.contains(r)) {
        let mut a = vec!["-D".to_string(), CHAIN.to_string()];
        a.extend(r.iter().cloned());
        iptables(&a);
    }
    for r in wanted.iter().filter(|r| !have.contains(r)) {
        let mut a = vec!["-I".to_string(), CHAIN.to_string()];
        a.extend(r.iter().cloned());
        iptables(&a);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_rules_are_found_in_a_listing() {
        let listing = "-N DOCKER-USER\n\
-A DOCKER-USER -i berth0 -m comment --comment berth -j ACCEPT\n\
-A DOCKER-USER -o berth0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment berth -j ACCEPT\n\
-A DOCKER-USER -s 10.0.0.0/8 -j DROP\n\
-A DOCKER-USER -j RETURN\n";
        let found = ours(listing);
        assert_eq!(found, rules_for("berth0"), "exactly what rules_for writes");
    }
}
