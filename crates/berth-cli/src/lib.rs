//! `berth`'s docker-compatible command line: Docker's commands, flags, table columns,
//! `--format` templates and exit codes, over the Engine API (the same calls the docker CLI
//! makes, so either CLI works with either daemon). When nothing answers on the default
//! socket, the CLI starts `berth daemon` in the background and waits for it.

// A compose service's create body is one large `json!`.
#![recursion_limit = "256"]

pub mod client;
mod commands;
mod compose;
mod dockercfg;
pub mod format;
mod stream;
pub mod tls;

use std::path::PathBuf;

use clap::Parser;

pub use commands::Cli;

/// The default socket (`/run/berth/berth.sock`), as dockerd's is `/run/docker.sock`.
pub const DEFAULT_HOST: &str = "unix:///run/berth/berth.sock";

/// Exit statuses as Docker's CLI uses them.
pub mod code {
    /// The daemon or the flags failed (`run`, `create`).
    pub const FAILED: i32 = 125;
    pub const NOT_EXECUTABLE: i32 = 126;
    pub const NOT_FOUND: i32 = 127;
}

/// Management commands (`container ls`, `image rm`, ...) as their top-level names.
fn rewrite(mut args: Vec<String>) -> Vec<String> {
    // Global flags may come first: find the command word.
    let mut i = 1;
    while i < args.len() && args[i].starts_with('-') {
        if matches!(
            args[i].as_str(),
            "-H" | "--host" | "--config" | "-l" | "--log-level"
        ) {
            i += 1;
        }
        i += 1;
    }
    if i + 1 >= args.len() {
        return args;
    }
    let sub = args[i + 1].clone();
    let new: Option<&str> = match (args[i].as_str(), sub.as_str()) {
        ("container", "ls" | "list" | "ps") => Some("ps"),
        ("container", "prune") => Some("container-prune"),
        ("container", "inspect") => Some("container-inspect"),
        ("container", _) => Some(""),
        ("image", "ls" | "list") => Some("images"),
        ("image", "rm" | "remove") => Some("rmi"),
        ("image", "prune") => Some("image-prune"),
        ("image", "inspect") => Some("image-inspect"),
        ("image", _) => Some(""),
        ("volume", "create") => Some("volume-create"),
        ("volume", "ls" | "list") => Some("volume-ls"),
        ("volume", "inspect") => Some("volume-inspect"),
        ("volume", "rm" | "remove") => Some("volume-rm"),
        ("volume", "prune") => Some("volume-prune"),
        ("network", "create") => Some("network-create"),
        ("network", "ls" | "list") => Some("network-ls"),
        ("network", "inspect") => Some("network-inspect"),
        ("network", "rm" | "remove") => Some("network-rm"),
        ("network", "prune") => Some("network-prune"),
        ("network", "connect") => Some("network-connect"),
        ("network", "disconnect") => Some("network-disconnect"),
        ("manifest", "inspect") => Some("manifest-inspect"),
        ("builder", "prune") => Some("builder-prune"),
        ("system", "info") => Some("info"),
        ("system", "events") => Some("events"),
        ("system", "df") => Some("system-df"),
        ("system", "prune") => Some("system-prune"),
        _ => None,
    };
    match new {
        Some("") => {
            args.remove(i);
        }
        Some(n) => {
            args.remove(i);
            args[i] = n.to_string();
        }
        None => {}
    }
    args
}

/// Runs the CLI; returns the process exit status.
pub fn main(args: Vec<String>) -> i32 {
    let args = rewrite(args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { code::FAILED } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: {e}");
            return code::FAILED;
        }
    };
    let code = rt.block_on(commands::run(cli));
    // A read of our stdin may still be blocked in a thread: do not wait for it.
    rt.shutdown_background();
    code
}

/// Which daemon to talk to: `-H`, then `BERTH_HOST`, then `DOCKER_HOST`, then the default;
/// TLS for tcp hosts as `tls` asks. Returns the client and whether the host was chosen
/// explicitly.
pub fn host(flag: Option<&str>, tls: &tls::TlsOptions) -> Result<(client::Client, bool), String> {
    let (h, explicit) = match flag {
        Some(h) => (h.to_string(), true),
        None => match std::env::var("BERTH_HOST").or_else(|_| std::env::var("DOCKER_HOST")) {
            Ok(h) if !h.is_empty() => (h, true),
            _ => (DEFAULT_HOST.to_string(), false),
        },
    };
    if let Some(p) = h.strip_prefix("unix://") {
        return Ok((client::Client::unix(PathBuf::from(p)), explicit));
    }
    if let Some(a) = h.strip_prefix("tcp://") {
        let a = a.trim_end_matches('/');
        let tls = tls.clone().resolve();
        // Docker's default ports: 2376 with TLS, 2375 without.
        let with_port = if a
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !a.ends_with(']')
        {
            a.to_string()
        } else {
            format!("{a}:{}", if tls.tls { 2376 } else { 2375 })
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .map_err(|e| format!("host {h}: {e}"))?
            .next()
            .ok_or_else(|| format!("host {h}: no address"))?;
        let tls = if tls.tls {
            let name = with_port
                .rsplit_once(':')
                .map(|(n, _)| n.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or_default()
                .to_string();
            let name = rustls_pki_types::ServerName::try_from(name)
                .map_err(|e| format!("host {h}: {e}"))?;
            Some((tls::client_config(&tls)?, name))
        } else {
            None
        };
        return Ok((
            client::Client {
                socket: PathBuf::new(),
                tcp: Some(addr),
                tls,
            },
            explicit,
        ));
    }
    Err(format!("host {h}: use unix:///path or tcp://HOST:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn management_commands_map_to_top_level_ones() {
        assert_eq!(rewrite(v("berth container ls -a")), v("berth ps -a"));
        assert_eq!(rewrite(v("berth -H x image rm b")), v("berth -H x rmi b"));
        assert_eq!(
            rewrite(v("berth container run -it b")),
            v("berth run -it b")
        );
        assert_eq!(rewrite(v("berth image ls")), v("berth images"));
        assert_eq!(rewrite(v("berth ps")), v("berth ps"));
        assert_eq!(rewrite(v("berth volume ls -q")), v("berth volume-ls -q"));
    }
}
