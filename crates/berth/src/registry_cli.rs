//! `berth registry serve|gc|verify`: flags over the registry's configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_distribution::server::config::{AuthConfig, Config, StorageKind, TlsConfig};
use berth_distribution::server::{gc, lock_store, open_store};
use clap::{Args, Parser};

#[derive(Parser)]
#[command(name = "berth registry", about = "An OCI distribution registry")]
enum RegistryArgs {
    /// Serve the registry API
    Serve(ServeArgs),
    /// Remove blobs no manifest names (the registry must be stopped)
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove manifests no tag reaches.
        #[arg(long)]
        delete_untagged: bool,
    },
    /// Check every blob's digest and every link, tag and manifest reference
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// The configuration file (YAML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where blobs, manifests and uploads are kept [default: /var/lib/berth/registry].
    #[arg(long)]
    root: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// filesystem (under --root) or memory (gone when the registry stops).
    #[arg(long, value_parser = ["filesystem", "memory"])]
    storage: Option<String>,
    /// Refuse every push and delete.
    #[arg(long)]
    readonly: bool,
    /// Accounts for basic auth (bcrypt entries, `htpasswd -B`).
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// With --htpasswd: bearer tokens from this registry's /token instead of basic auth.
    #[arg(long)]
    token_auth: bool,
    /// Serve TLS with this certificate (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest blob an upload may make (512, 4MiB, 10GB…).
    #[arg(long)]
    max_blob_size: Option<String>,
    /// off, stderr or a file for the access log (JSON lines).
    #[arg(long)]
    access_log: Option<String>,
}

fn base(store: &StoreArgs) -> Result<Config, String> {
    let mut cfg = match &store.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(r) = &store.root {
        cfg.root = r.clone();
    }
    Ok(cfg)
}

fn serve_config(a: ServeArgs) -> Result<Config, String> {
    let mut cfg = base(&a.store)?;
    if let Some(addr) = a.addr {
        cfg.addr = addr;
    }
    if let Some(s) = a.storage.as_deref() {
        cfg.storage = if s == "memory" {
            StorageKind::Memory
        } else {
            StorageKind::Filesystem
        };
    }
    cfg.readonly |= a.readonly;
    if let Some(h) = a.htpasswd {
        cfg.auth.get_or_insert_with(AuthConfig::default).htpasswd = Some(h);
    }
    if a.token_auth {
        let auth = cfg
            .auth
            .as_mut()
            .ok_or("--token-auth needs --htpasswd (or auth in the configuration file)")?;
        auth.token.get_or_insert_with(Default::default);
    }
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        cfg.tls = Some(TlsConfig { cert, key });
    }
    if let Some(s) = a.max_blob_size {
        cfg.limits.blob = Some(berth_distribution::server::config::parse_size(&s)?);
    }
    if let Some(l) = a.access_log {
        cfg.log.access = l;
    }
    cfg.check().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn offline(
    store: &StoreArgs,
    f: impl FnOnce(&Config) -> Result<i32, String>,
) -> Result<i32, String> {
    let cfg = base(store)?;
    if cfg.storage == StorageKind::Memory {
        return Err(
            "a memory store has nothing to collect or check once its registry stops".into(),
        );
    }
    if !cfg.root.exists() {
        return Err(format!("{}: no such registry store", cfg.root.display()));
    }
    let _lock = lock_store(&cfg.root, true)?;
    f(&cfg)
}

pub fn main(args: &[String]) -> i32 {
    let mut argv = vec!["berth registry".to_string()];
    argv.extend_from_slice(args);
    let parsed = match RegistryArgs::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let run = || -> Result<i32, String> {
        match parsed {
            RegistryArgs::Serve(a) => {
                let cfg = serve_config(a)?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(berth_distribution::server::serve(cfg))?;
                Ok(0)
            }
            RegistryArgs::Gc {
                store,
                dry_run,
                delete_untagged,
            } => offline(&store, |cfg| {
                let s = open_store(cfg).map_err(|e| e.to_string())?;
                let r = gc::collect(&*s, dry_run, delete_untagged, cfg.upload_max_age * 3600)
                    .map_err(|e| e.to_string())?;
                let verb = if dry_run { "would remove" } else { "removed" };
                for (name, d) in &r.manifests_removed {
                    println!("{verb} manifest {name}@{d}");
                }
                for d in &r.blobs_removed {
                    println!("{verb} blob {d}");
                }
                println!(
                    "{verb} {} manifests, {} blobs ({} bytes), {} links, {} abandoned uploads",
                    r.manifests_removed.len(),
                    r.blobs_removed.len(),
                    r.bytes_freed,
                    r.links_removed,
                    r.uploads_removed
                );
                Ok(0)
            }),
            RegistryArgs::Verify { store } => offline(&store, |cfg| {
                let s = open_store(cfg).map_err(|e| e.to_string())?;
                let problems = gc::verify(&*s);
                for p in &problems {
                    println!("{p}");
                }
                if problems.is_empty() {
                    println!(
                        "ok: {} repositories",
                        berth_distribution::server::api::repositories(&*s).len()
                    );
                    Ok(0)
                } else {
                    println!("{} problems", problems.len());
                    Ok(1)
                }
            }),
        }
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth registry: {e}");
            1
        }
    }
}
