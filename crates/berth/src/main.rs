//! `berth`: one binary, several roles. The first argument (or the name it was called by)
//! picks the role; each role lives in its own crate.

mod runtime_cli;

use std::path::{Path, PathBuf};

use clap::Parser;

/// dockerd's flags, as far as the daemon serves them yet.
#[derive(Parser)]
#[command(name = "berth daemon", version, about = "The Docker Engine API server")]
struct DaemonArgs {
    /// Socket to serve (unix:///path).
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///run/berth/berth.sock"
    )]
    host: String,
    /// Root of persistent state (images, containers, volumes).
    #[arg(long = "data-root", default_value = "/var/lib/berth")]
    data_root: PathBuf,
    /// Root of runtime state (sockets, container state).
    #[arg(long = "exec-root", default_value = "/run/berth")]
    exec_root: PathBuf,
    /// Write the daemon's pid here.
    #[arg(short = 'p', long)]
    pidfile: Option<PathBuf>,
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
    berth_daemon::main(berth_daemon::Options {
        host: a.host,
        data_root: a.data_root,
        exec_root: a.exec_root,
        pidfile: a.pidfile,
    })
}

/// `berth shim`: started by the daemon, one per container (not for people to run).
#[derive(Parser)]
#[command(name = "berth shim")]
struct ShimArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long = "runtime-root")]
    runtime_root: PathBuf,
    #[arg(long)]
    socket: PathBuf,
    #[arg(long = "exit-file")]
    exit_file: PathBuf,
    #[arg(long)]
    log: Option<PathBuf>,
    #[arg(long = "log-max-size", default_value_t = 0)]
    log_max_size: u64,
    #[arg(long = "log-max-file", default_value_t = 1)]
    log_max_file: u32,
    #[arg(long)]
    tty: bool,
    #[arg(long)]
    stdin: bool,
    #[arg(long = "stdin-once")]
    stdin_once: bool,
    /// Run this OCI process (JSON) in the running container instead of creating one.
    #[arg(long)]
    exec: Option<PathBuf>,
}

fn shim_main(bin: &str, args: &[String]) -> i32 {
    let mut argv = vec![bin.to_string()];
    argv.extend_from_slice(args);
    let a = match ShimArgs::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return 125;
        }
    };
    berth_shim::main(berth_shim::Options {
        id: a.id,
        bundle: a.bundle,
        runtime_root: a.runtime_root,
        socket: a.socket,
        exit_file: a.exit_file,
        log: a.log.map(|p| (p, a.log_max_size, a.log_max_file)),
        tty: a.tty,
        stdin: a.stdin,
        stdin_once: a.stdin_once,
        exec: a.exec,
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
        (_, Some("shim")) => shim_main(&format!("{} shim", args[0]), &args[2..]),
        (_, Some(role @ "registry")) => {
            eprintln!("berth {role}: not built yet (see docs/STATUS.md)");
            125
        }
        _ => berth_cli::main(args),
    };
    std::process::exit(code);
}
