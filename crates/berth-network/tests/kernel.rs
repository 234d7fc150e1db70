//! Against the kernel, as root, inside namespaces this test makes (a stand-in for the host
//! and one container), so nothing touches the machine's own links or ruleset.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use berth_network::firewall::{self, BridgeRules, Desired, PortRule};
use berth_network::link::{self, Netlink};
use berth_network::netns;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `f` on a thread inside the namespace at `ns`, with a tokio runtime.
fn inside<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    netns::run_in(ns, f).expect("entering the namespace")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn bridge_veth_and_a_published_port_reached_from_loopback() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let c1 = dir.path().join("c1");
    netns::create(&host).unwrap();
    netns::create(&c1).unwrap();
    let subnet = "10.88.0.0/24".parse().unwrap();
    let gw = Ipv4Addr::new(10, 88, 0, 1);
    let ip = Ipv4Addr::new(10, 88, 0, 2);

    let c1b = c1.clone();
    let setup = inside(&host, move || {
        block_on(async move {
            let nl = Netlink::current()?;
            nl.up("lo").await?;
            let br = nl.ensure_bridge("berth0", gw, 24, None).await?;
            // Twice: the second finds it.
            assert_eq!(nl.ensure_bridge("berth0", gw, 24, None).await?, br);
            link::set_ipv4_conf("berth0", "route_localnet", "1")?;
            nl.add_veth("vbtest0", "eth0", br, &c1b, link::mac_for(ip), None)
                .await?;
            Netlink::in_netns(&c1b)?
                .configure_interface("eth0", ip, 24, Some(gw), None)
                .await?;
            // One published port on the bridge.
            let publishing = |host_port: u16| Desired {
                bridges: vec![BridgeRules {
                    bridge: "berth0".into(),
                    subnet,
                    subnet6: None,
                    internal: false,
                    masquerade: true,
                }],
                ports: vec![PortRule {
                    proto: "tcp".into(),
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    host_port,
                    container_ip: ip,
                    container_port: 80,
                }],
            };
            firewall::apply(&publishing(8080))?;
            // A second write replaces the first, atomically.
            firewall::apply(&publishing(8081))?;
            Ok::<(), berth_network::Error>(())
        })
    });
    setup.unwrap();

    // The container side listens on :80; the host side reaches it through 127.0.0.1:8081.
    let listener = inside(&c1, || TcpListener::bind("0.0.0.0:80")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong").unwrap();
        peer
    });
    let got = inside(&host, || {
        let mut s = TcpStream::connect("127.0.0.1:8081")?;
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        Ok::<_, std::io::Error>(b)
    })
    .unwrap();
    assert_eq!(&got, b"pong");
    // Masqueraded: the container saw the bridge's address, not 127.0.0.1.
    assert_eq!(server.join().unwrap().ip().to_string(), "10.88.0.1");

    let listing = inside(&host, || {
        Command::new("nft")
            .args(["list", "table", "ip", "berth"])
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(text.contains("dport 8081 dnat to 10.88.0.2:80"), "{text}");
    assert!(!text.contains("8080"), "the first ruleset is gone: {text}");

    inside(&host, || {
        block_on(async {
            Netlink::current()?.delete("vbtest0").await?;
            firewall::remove()
        })
    })
    .unwrap();
    let links = inside(&host, || {
        block_on(async { Netlink::current()?.links().await })
    })
    .unwrap();
    assert!(!links.iter().any(|l| l.0 == "vbtest0"), "{links:?}");
    let tables = inside(&host, || {
        Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap()
    });
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("berth"));
    netns::remove(&c1).unwrap();
    netns::remove(&host).unwrap();
    assert!(!c1.exists() && !host.exists());
}

#[test]
fn rules_in_dockers_chain_follow_the_bridges() {
    if !is_root() || Command::new("iptables").arg("-V").output().is_err() {
        eprintln!("skipped: needs root and iptables");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    netns::create(&host).unwrap();
    let listing = |ns: &Path| {
        inside(ns, || {
            String::from_utf8_lossy(
                &Command::new("iptables")
                    .args(["-S", "DOCKER-USER"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .into_owned()
        })
    };
    // No Docker chain: nothing is written.
    assert!(!inside(&host, || berth_network::coexist::sync(&[
        "berth0".into()
    ])));
    inside(&host, || {
        assert!(Command::new("iptables")
            .args(["-N", "DOCKER-USER"])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("iptables")
            .args(["-A", "DOCKER-USER", "-j", "RETURN"])
            .status()
            .unwrap()
            .success());
    });
    assert!(inside(&host, || berth_network::coexist::sync(&[
        "berth0".into(),
        "br-1".into()
    ])));
    let l = listing(&host);
    assert_eq!(berth_network::coexist::ours(&l).len(), 4, "{l}");
    // Twice changes nothing; a bridge that goes takes its rules along.
    assert!(inside(&host, || berth_network::coexist::sync(&[
        "berth0".into(),
        "br-1".into()
    ])));
    assert_eq!(berth_network::coexist::ours(&listing(&host)).len(), 4);
    assert!(inside(&host, || berth_network::coexist::sync(&[
        "berth0".into()
    ])));
    let l = listing(&host);
    let mut found = berth_network::coexist::ours(&l);
    let mut want = berth_network::coexist::rules_for("berth0");
    found.sort();
    want.sort();
    assert_eq!(found, want, "{l}");
    assert!(
        l.contains("-A DOCKER-USER -j RETURN"),
        "Docker's own rule stays: {l}"
    );
    assert!(inside(&host, || berth_network::coexist::sync(&[])));
    assert!(berth_network::coexist::ours(&listing(&host)).is_empty());
    netns::remove(&host).unwrap();
}
