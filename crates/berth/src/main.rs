//! `berth`: one binary, several roles. The first argument (or the name it was called by)
//! picks the role; each role lives in its own crate.

mod math;
mod registry_cli;
mod runtime_cli;

use std::path::{Path, PathBuf};

use clap::Parser;

/// dockerd's flags.
#[derive(Parser)]
#[command(name = "berth daemon", version, about = "The Docker Engine API server")]
struct DaemonArgs {
    /// Socket(s) to serve (unix:///path); default unix:///run/berth/berth.sock.
    #[arg(short = 'H', long = "host")]
    host: Vec<String>,
    /// Root of persistent state (images, containers, volumes); default /var/lib/berth.
    #[arg(long = "data-root")]
    data_root: Option<PathBuf>,
    /// Root of runtime state (sockets, container state); default /run/berth.
    #[arg(long = "exec-root")]
    exec_root: Option<PathBuf>,
    /// Write the daemon's pid here.
    #[arg(short = 'p', long)]
    pidfile: Option<PathBuf>,
    /// Daemon configuration file (dockerd's daemon.json keys).
    #[arg(long = "config-file")]
    config_file: Option<PathBuf>,
    /// debug, info, warn, error, fatal.
    #[arg(short = 'l', long = "log-level")]
    log_level: Option<String>,
    /// Debug logging.
    #[arg(short = 'D', long)]
    debug: bool,
    /// Group of the unix socket (default: berth, when that group exists).
    #[arg(short = 'G', long)]
    group: Option<String>,
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    #[arg(long = "registry-mirror")]
    registry_mirror: Vec<String>,
    /// Layers of one pull downloaded at once (default 3).
    #[arg(long = "max-concurrent-downloads")]
    max_concurrent_downloads: Option<usize>,
    /// Layers of one push uploaded at once (default 5).
    #[arg(long = "max-concurrent-uploads")]
    max_concurrent_uploads: Option<usize>,
    #[arg(long)]
    bip: Option<String>,
    #[arg(long = "default-address-pool")]
    default_address_pool: Vec<String>,
    #[arg(long)]
    ipv6: bool,
    #[arg(long = "fixed-cidr-v6")]
    fixed_cidr_v6: Option<String>,
    #[arg(long)]
    tls: bool,
    #[arg(long)]
    tlsverify: bool,
    #[arg(long)]
    tlscacert: Option<std::path::PathBuf>,
    #[arg(long)]
    tlscert: Option<std::path::PathBuf>,
    #[arg(long)]
    tlskey: Option<std::path::PathBuf>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    iptables: Option<bool>,
    /// Containers keep running while the daemon is down (default true).
    #[arg(long = "live-restore", num_args = 0..=1, default_missing_value = "true")]
    live_restore: Option<bool>,
    #[arg(long = "default-ulimit")]
    default_ulimit: Vec<String>,
    #[arg(long = "log-driver")]
    log_driver: Option<String>,
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
}

fn daemon_main(bin: &str, args: &[String]) -> i32 {
    let mut argv = vec![bin.to_string()];
    argv.extend_from_slice(args);
    let a = match DaemonArgs::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    berth_daemon::main(berth_daemon::config::Flags {
        hosts: a.host,
        data_root: a.data_root,
        exec_root: a.exec_root,
        pidfile: a.pidfile,
        config_file: a.config_file,
        log_level: a.log_level,
        debug: a.debug,
        group: a.group,
        insecure_registries: a.insecure_registry,
        registry_mirrors: a.registry_mirror,
        max_concurrent_downloads: a.max_concurrent_downloads,
        max_concurrent_uploads: a.max_concurrent_uploads,
        bip: a.bip,
        default_address_pools: a.default_address_pool,
        ipv6: a.ipv6,
        fixed_cidr_v6: a.fixed_cidr_v6,
        tls: a.tls,
        tlsverify: a.tlsverify,
        tlscacert: a.tlscacert,
        tlscert: a.tlscert,
        tlskey: a.tlskey,
        iptables: a.iptables,
        live_restore: a.live_restore,
        default_ulimits: a.default_ulimit,
        log_driver: a.log_driver,
        log_opts: a.log_opt,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let code = match (argv0.as_str(), args.get(1).map(String::as_str)) {
        ("berth-runc" | "runc", _) => runtime_cli::main(&args[0], &args[1..]),
        (_, Some("runtime")) => runtime_cli::main(&format!("{} runtime", args[0]), &args[2..]),
        (_, Some("--version" | "-v")) => {
            println!("Berth version {}", env!("CARGO_PKG_VERSION"));
            0
        }
        ("berthd", _) => daemon_main(&args[0], &args[1..]),
        (_, Some("daemon")) => daemon_main(&format!("{} daemon", args[0]), &args[2..]),
        (_, Some("shim-server")) => berth_shim::serve_inherited(),
        (_, Some("registry")) => registry_cli::main(&args[2..]),
        _ => berth_cli::main(args),
    };
    std::process::exit(code);
}
