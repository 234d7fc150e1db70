//! `berth`: one binary, several roles. The first argument (or the name it was called by)
//! picks the role; each role lives in its own crate.

mod runtime_cli;

use std::path::Path;

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
        (_, Some("--version" | "-v" | "version")) => {
            println!("Berth version {}", env!("CARGO_PKG_VERSION"));
            0
        }
        (_, Some(role @ ("daemon" | "shim" | "registry"))) => {
            eprintln!("berth {role}: not built yet (see docs/STATUS.md)");
            125
        }
        (_, other) => {
            if let Some(cmd) = other.filter(|c| !matches!(*c, "--help" | "-h" | "help")) {
                eprintln!("berth: '{cmd}' is not a berth command yet (see docs/STATUS.md)");
            }
            eprintln!(
                "Usage: berth COMMAND\n\nA Docker-compatible container engine.\n\nRoles:\n  runtime   OCI runtime with runc's command line (also as argv[0] berth-runc)\n  daemon    Docker Engine API server (not built yet)\n  version   Show the version"
            );
            if other.is_none() || matches!(other, Some("--help" | "-h" | "help")) {
                0
            } else {
                125
            }
        }
    };
    std::process::exit(code);
}
