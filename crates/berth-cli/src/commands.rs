//! The commands: Docker's names, flags and output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{self, Client, Error};
use crate::code;
use crate::dockercfg;
use crate::format::{self, Template};
use crate::stream::{self, Ended};

#[derive(Parser)]
#[command(
    name = "berth",
    about = "A Docker-compatible container engine",
    version,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Daemon socket to connect to (unix:///path).
    #[arg(short = 'H', long = "host", global = true)]
    host: Option<String>,
    /// Use TLS; implied by --tlsverify
    #[arg(long, global = true)]
    tls: bool,
    /// Use TLS and verify the remote
    #[arg(long, global = true)]
    tlsverify: bool,
    /// Trust certs signed only by this CA
    #[arg(long, global = true)]
    tlscacert: Option<PathBuf>,
    /// Path to TLS certificate file
    #[arg(long, global = true)]
    tlscert: Option<PathBuf>,
    /// Path to TLS key file
    #[arg(long, global = true)]
    tlskey: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create and run a new container from an image
    Run(RunArgs),
    /// Define and run multi-container applications (compose files)
    Compose(crate::compose::ComposeArgs),
    /// Build an image from a Dockerfile
    Build {
        #[arg(short = 't', long = "tag")]
        tag: Vec<String>,
        /// Name of the Dockerfile (default: PATH/Dockerfile; `-` reads it from stdin)
        #[arg(short = 'f', long = "file")]
        file: Option<String>,
        #[arg(long = "build-arg")]
        build_arg: Vec<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(short, long)]
        quiet: bool,
        /// Do not use cache when building the image
        #[arg(long = "no-cache")]
        no_cache: bool,
        /// Always attempt to pull a newer version of the image
        #[arg(long)]
        pull: bool,
        /// Set metadata for an image
        #[arg(long)]
        label: Vec<String>,
        /// Write the image ID to the file
        #[arg(long)]
        iidfile: Option<PathBuf>,
        /// Output: "plain", "tty", "auto" (the step lines) or "quiet" (like -q)
        #[arg(long)]
        progress: Option<String>,
        /// The network of RUN steps (default, none, host or a network's name)
        #[arg(long)]
        network: Option<String>,
        /// A secret for RUN --mount=type=secret: id=NAME[,src=FILE|,env=VAR]
        #[arg(long)]
        secret: Vec<String>,
        /// Export the result: DIR, type=local,dest=DIR, type=tar|oci|docker,dest=FILE (- for
        /// stdout), type=image[,push=true], type=registry
        #[arg(short = 'o', long = "output")]
        output: Vec<String>,
        /// Push the tagged image after it is built
        #[arg(long)]
        push: bool,
        /// Set the target platform (only the host's can run)
        #[arg(long)]
        platform: Option<String>,
        path: PathBuf,
    },
    /// Remove build cache
    #[command(name = "builder-prune", hide = true)]
    BuilderPrune {
        /// Remove all unused build cache, not just dangling ones
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        /// Amount of disk space to keep for cache (e.g. 512m, 2g)
        #[arg(long = "keep-storage")]
        keep_storage: Option<String>,
    },
    /// Create a new container
    Create(RunArgs),
    /// Start one or more stopped containers
    Start {
        #[arg(short, long)]
        attach: bool,
        #[arg(short, long)]
        interactive: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Kill one or more running containers
    Kill {
        #[arg(short, long)]
        signal: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove one or more containers
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers
    Ps {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
        #[arg(short = 'n', long = "last")]
        last: Option<i64>,
        #[arg(short, long)]
        latest: bool,
        #[arg(short, long)]
        size: bool,
    },
    /// Fetch the logs of a container
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long)]
        tail: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        container: String,
    },
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Return low-level information on Docker objects
    Inspect(InspectArgs),
    #[command(name = "container-inspect", hide = true)]
    ContainerInspect(InspectArgs),
    #[command(name = "image-inspect", hide = true)]
    ImageInspect(InspectArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Pause all processes within one or more containers
    Pause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Unpause all processes within one or more containers
    Unpause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Rename a container
    Rename { container: String, new_name: String },
    /// Display the running processes of a container
    Top { container: String },
    /// Attach local standard input, output, and error streams to a running container
    Attach {
        /// Do not attach STDIN
        #[arg(long = "no-stdin")]
        no_stdin: bool,
        /// Proxy all received signals to the process (without a terminal; with one,
        /// ctrl-c and the like reach it through its pty)
        #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
        sig_proxy: bool,
        /// Override the key sequence for detaching a container
        #[arg(long = "detach-keys")]
        detach_keys: Option<String>,
        container: String,
    },
    /// Show the history of an image
    History {
        /// Print sizes and dates in human readable format (`-H` is the daemon host here)
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        human: bool,
        /// Don't truncate output
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        /// Only show image IDs
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        format: Option<String>,
        image: String,
    },
    /// Remove all stopped containers
    #[command(name = "container-prune", hide = true)]
    ContainerPrune {
        #[arg(short, long)]
        force: bool,
    },
    /// List images
    Images {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        #[arg(long)]
        digests: bool,
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
        repository: Option<String>,
    },
    /// Remove one or more images
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    #[command(name = "image-prune", hide = true)]
    ImagePrune {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        force: bool,
    },
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag { source: String, target: String },
    /// Upload an image to a registry
    Push {
        /// Suppress verbose output
        #[arg(short, long)]
        quiet: bool,
        image: String,
    },
    /// Download an image from a registry
    Pull {
        /// Download all tagged images in the repository
        #[arg(short = 'a', long = "all-tags")]
        all_tags: bool,
        #[arg(short, long)]
        quiet: bool,
        /// Set platform if server is multi-platform capable
        #[arg(long)]
        platform: Option<String>,
        image: String,
    },
    /// Search Docker Hub for images (or a private registry: `search 127.0.0.1:5000/name`)
    Search {
        /// Filter output based on conditions provided
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        /// Pretty-print search using a Go template
        #[arg(long)]
        format: Option<String>,
        /// Max number of search results
        #[arg(long)]
        limit: Option<usize>,
        /// Don't truncate output
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        term: String,
    },
    /// Display an image manifest, or manifest list, from its registry
    #[command(name = "manifest-inspect", hide = true)]
    ManifestInspect {
        /// Allow communication with an insecure registry (the daemon's settings decide)
        #[arg(long)]
        insecure: bool,
        /// Output additional info including layers and platform
        #[arg(short, long)]
        verbose: bool,
        name: String,
    },
    /// Authenticate to a registry
    Login {
        #[arg(short, long)]
        username: Option<String>,
        #[arg(short, long)]
        password: Option<String>,
        /// Take the password from stdin
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        server: Option<String>,
    },
    /// Log out from a registry
    Logout { server: Option<String> },
    /// Load an image from a tar archive or STDIN
    Load {
        #[arg(short, long)]
        input: Option<PathBuf>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Import the contents from a tarball to create a filesystem image
    Import {
        #[arg(short, long = "change")]
        change: Vec<String>,
        #[arg(short, long)]
        message: Option<String>,
        file: String,
        reference: Option<String>,
    },
    #[command(name = "volume-create", hide = true)]
    VolumeCreate {
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, default_value = "local")]
        driver: String,
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        #[arg(long)]
        label: Vec<String>,
        volume: Option<String>,
    },
    #[command(name = "volume-ls", hide = true)]
    VolumeLs {
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
    },
    #[command(name = "volume-inspect", hide = true)]
    VolumeInspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    #[command(name = "volume-rm", hide = true)]
    VolumeRm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    #[command(name = "volume-prune", hide = true)]
    VolumePrune {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        force: bool,
    },
    #[command(name = "network-create", hide = true)]
    NetworkCreate {
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        #[arg(long)]
        subnet: Vec<String>,
        #[arg(long)]
        gateway: Vec<String>,
        #[arg(long = "ip-range")]
        ip_range: Vec<String>,
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        ipv6: bool,
        #[arg(long)]
        label: Vec<String>,
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        name: String,
    },
    #[command(name = "network-ls", hide = true)]
    NetworkLs {
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
        #[arg(long = "no-trunc")]
        no_trunc: bool,
    },
    #[command(name = "network-inspect", hide = true)]
    NetworkInspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    #[command(name = "network-rm", hide = true)]
    NetworkRm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    #[command(name = "network-prune", hide = true)]
    NetworkPrune {
        #[arg(short, long)]
        force: bool,
    },
    #[command(name = "network-connect", hide = true)]
    NetworkConnect {
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        ip6: Option<String>,
        #[arg(long)]
        alias: Vec<String>,
        network: String,
        container: String,
    },
    #[command(name = "network-disconnect", hide = true)]
    NetworkDisconnect {
        #[arg(short, long)]
        force: bool,
        network: String,
        container: String,
    },
    /// List port mappings or a specific mapping for the container
    Port {
        container: String,
        private_port: Option<String>,
    },
    /// Get real time events from the server
    Events {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
    },
    /// Show docker disk usage
    #[command(name = "system-df", hide = true)]
    SystemDf,
    /// Remove unused data
    #[command(name = "system-prune", hide = true)]
    SystemPrune {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        force: bool,
        #[arg(long)]
        volumes: bool,
    },
    /// Inspect changes to files or directories on a container's filesystem
    Diff { container: String },
    /// Export a container's filesystem as a tar archive
    Export {
        #[arg(short, long)]
        output: Option<PathBuf>,
        container: String,
    },
    /// Create a new image from a container's changes
    Commit {
        #[arg(short, long = "change")]
        change: Vec<String>,
        #[arg(short, long)]
        message: Option<String>,
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
        pause: bool,
        container: String,
        reference: Option<String>,
    },
    /// Update configuration of one or more containers
    Update {
        #[command(flatten)]
        resources: ResourceArgs,
        #[arg(long)]
        restart: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Display a live stream of container(s) resource usage statistics
    Stats {
        #[arg(short, long)]
        all: bool,
        #[arg(long = "no-stream")]
        no_stream: bool,
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        #[arg(long)]
        format: Option<String>,
        containers: Vec<String>,
    },
    /// Copy files/folders between a container and the local filesystem
    Cp {
        #[arg(short = 'L', long = "follow-link")]
        follow_link: bool,
        #[arg(short, long)]
        archive: bool,
        src: String,
        dst: String,
    },
    /// Show the Berth version information
    Version {
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Display system-wide information
    Info {
        #[arg(short, long)]
        format: Option<String>,
    },
}

#[derive(Args)]
struct StopArgs {
    #[arg(short, long)]
    signal: Option<String>,
    #[arg(short, long)]
    time: Option<i64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
struct InspectArgs {
    #[arg(short, long)]
    format: Option<String>,
    #[arg(long = "type")]
    kind: Option<String>,
    #[arg(short, long)]
    size: bool,
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Args)]
struct ExecArgs {
    #[arg(short, long)]
    detach: bool,
    #[arg(short, long)]
    interactive: bool,
    #[arg(short, long)]
    tty: bool,
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(long)]
    privileged: bool,
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// The resource flags `run`/`create` and `update` share.
#[derive(Args, Clone)]
struct ResourceArgs {
    #[arg(short, long)]
    memory: Option<String>,
    // `-1` is a value here (unlimited swap), not a flag.
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<i64>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
}

impl ResourceArgs {
    /// The HostConfig fields these flags set; 0 means "no limit" on create and "unchanged"
    /// on update, as in Docker's API.
    fn host_config(&self) -> Result<Value, String> {
        let swap = match self.memory_swap.as_deref() {
            Some("-1") => -1,
            Some(s) => ram_in_bytes(s)?,
            None => 0,
        };
        Ok(json!({
            "Memory": self.memory.as_deref().map(ram_in_bytes).transpose()?.unwrap_or(0),
            "MemorySwap": swap,
            "NanoCpus": self.cpus.map(|c| (c * 1e9) as i64).unwrap_or(0),
            "CpuShares": self.cpu_shares.unwrap_or(0),
            "PidsLimit": self.pids_limit,
        }))
    }
}

/// `--restart name[:max-retries]` as a RestartPolicy object.
pub(crate) fn restart_policy(r: &str) -> Result<Value, String> {
    let (name, count) = match r.split_once(':') {
        Some((n, c)) => (
            n,
            c.parse::<i64>()
                .map_err(|_| format!("invalid restart policy format: {r}"))?,
        ),
        None => (r, 0),
    };
    Ok(json!({"Name": name, "MaximumRetryCount": count}))
}

#[derive(Args, Clone)]
#[command(disable_help_flag = true)]
struct RunArgs {
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[arg(short, long)]
    detach: bool,
    /// Proxy received signals to the process (without a terminal)
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    #[arg(short, long)]
    interactive: bool,
    #[arg(short, long)]
    tty: bool,
    #[arg(long)]
    rm: bool,
    #[arg(long)]
    name: Option<String>,
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(short, long = "label")]
    label: Vec<String>,
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    #[command(flatten)]
    resources: ResourceArgs,
    #[arg(long = "read-only")]
    read_only: bool,
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    #[arg(long)]
    privileged: bool,
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    #[arg(long)]
    restart: Option<String>,
    #[arg(long = "log-driver")]
    log_driver: Option<String>,
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
    #[arg(long)]
    tmpfs: Vec<String>,
    #[arg(long = "shm-size")]
    shm_size: Option<String>,
    #[arg(long)]
    ulimit: Vec<String>,
    #[arg(long)]
    sysctl: Vec<String>,
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    #[arg(long)]
    device: Vec<String>,
    #[arg(long = "group-add")]
    group_add: Vec<String>,
    #[arg(long)]
    dns: Vec<String>,
    #[arg(long = "dns-search")]
    dns_search: Vec<String>,
    #[arg(long = "dns-option")]
    dns_option: Vec<String>,
    #[arg(long, visible_alias = "net")]
    network: Option<String>,
    #[arg(long = "network-alias")]
    network_alias: Vec<String>,
    #[arg(long)]
    ip: Option<String>,
    #[arg(long)]
    ip6: Option<String>,
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    #[arg(long)]
    expose: Vec<String>,
    #[arg(long)]
    pid: Option<String>,
    #[arg(long)]
    ipc: Option<String>,
    #[arg(long)]
    uts: Option<String>,
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    #[arg(long)]
    mount: Vec<String>,
    #[arg(long = "stop-signal")]
    stop_signal: Option<String>,
    #[arg(long = "stop-timeout")]
    stop_timeout: Option<i64>,
    #[arg(long)]
    init: bool,
    #[arg(long = "health-cmd")]
    health_cmd: Option<String>,
    #[arg(long = "health-interval")]
    health_interval: Option<String>,
    #[arg(long = "health-timeout")]
    health_timeout: Option<String>,
    #[arg(long = "health-retries")]
    health_retries: Option<u64>,
    #[arg(long = "health-start-period")]
    health_start_period: Option<String>,
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    /// Set platform if server is multi-platform capable (for the pull of a missing image)
    #[arg(long)]
    platform: Option<String>,
    /// Pull image before running ("always", "missing", "never")
    #[arg(long, default_value = "missing")]
    pull: String,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `volume inspect`, `network inspect`: each object by name, as a JSON array or through
/// `--format`; status 1 if any was missing.
async fn inspect_each(
    c: &Client,
    kind: &str,
    names: &[String],
    format: Option<String>,
) -> Result<i32, Error> {
    let mut found = Vec::new();
    let mut status = 0;
    for n in names {
        match c
            .json(Method::GET, &format!("/{kind}/{}", q(n)), None)
            .await
        {
            Ok(v) => found.push(v),
            Err(e) => {
                eprintln!("{e}");
                status = 1;
            }
        }
    }
    match format {
        Some(f) => {
            let t = Template::parse(&f).map_err(Error::Other)?;
            for v in &found {
                println!("{}", t.render(v));
            }
        }
        None => println!("{}", pretty(&Value::Array(found))),
    }
    Ok(status)
}

/// A `network ls` row with Docker's field names.
fn network_row(n: &Value, no_trunc: bool) -> Value {
    let id = n["Id"].as_str().unwrap_or("");
    let labels: Vec<String> = n["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", format::plain(v)))
        .collect();
    json!({
        "ID": if no_trunc { id.to_string() } else { id.chars().take(12).collect() },
        "Name": n["Name"], "Driver": n["Driver"], "Scope": n["Scope"],
        "IPv6": n["EnableIPv6"].as_bool().unwrap_or(false).to_string(),
        "Internal": n["Internal"].as_bool().unwrap_or(false).to_string(),
        "Labels": labels.join(","), "CreatedAt": n["Created"],
    })
}

/// The PORTS column: `127.0.0.1:8080->80/tcp, 443/tcp`, published first.
pub(crate) fn ports_text(ports: &Value) -> String {
    let mut published = Vec::new();
    let mut exposed = Vec::new();
    for p in ports.as_array().into_iter().flatten() {
        let private = p["PrivatePort"].as_u64().unwrap_or(0);
        let proto = p["Type"].as_str().unwrap_or("tcp");
        match (p["IP"].as_str(), p["PublicPort"].as_u64()) {
            (Some(ip), Some(public)) => published.push(format!("{ip}:{public}->{private}/{proto}")),
            _ => exposed.push(format!("{private}/{proto}")),
        }
    }
    published.extend(exposed);
    published.join(", ")
}

/// `80`, `8000-8010`.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
    (lo > 0 && lo <= hi).then_some((lo, hi))
}

/// `-p [ip:][hostPort:]containerPort[/proto]`, with ranges on either side, as Docker
/// reads it: (`port/proto`, `{"HostIp", "HostPort"}`) per container port.
pub(crate) fn parse_publish(spec: &str) -> Result<Vec<(String, Value)>, String> {
    let bad = |why: &str| format!("invalid publish spec {spec}: {why}");
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    // An IPv6 host address comes in brackets.
    let (ip, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (ip, tail) = r.split_once("]:").ok_or_else(|| bad("unclosed '['"))?;
            (ip.to_string(), tail)
        }
        None => {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.len() {
                1 | 2 => (String::new(), rest),
                3 => (parts[0].to_string(), &rest[parts[0].len() + 1..]),
                _ => return Err(bad("too many colons")),
            }
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (h, c),
        None => ("", rest),
    };
    let (clo, chi) =
        port_range(container).ok_or_else(|| format!("invalid containerPort: {container}"))?;
    let host_range = if host.is_empty() {
        None
    } else {
        Some(port_range(host).ok_or_else(|| format!("invalid hostPort: {host}"))?)
    };
    let mut out = Vec::new();
    for (i, cp) in (clo..=chi).enumerate() {
        let host_port = match host_range {
            None => String::new(),
            // One container port over a host range: any port of the range.
            Some((lo, hi)) if clo == chi => {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            }
            Some((lo, hi)) => {
                if u32::from(hi - lo) != u32::from(chi - clo) {
                    return Err(bad("hostPort and containerPort ranges differ in size"));
                }
                (lo + i as u16).to_string()
            }
        };
        out.push((
            format!("{cp}/{proto}"),
            json!({"HostIp": ip, "HostPort": host_port}),
        ));
    }
    Ok(out)
}

/// Docker's `units.RAMInBytes`.
pub(crate) fn ram_in_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<f64>()
        .ok()
        .filter(|n| *n >= 0.0)
        .map(|n| (n * mul as f64) as i64)
        .ok_or_else(|| format!("invalid size: '{s}'"))
}

fn key_values(list: &[String]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

/// `--mount type=bind,source=/a,target=/b,readonly` as the API's Mount object.
fn parse_mount(s: &str) -> Result<Value, String> {
    let mut m = serde_json::Map::new();
    let mut kind = "volume".to_string();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, "true"));
        match k {
            "type" => kind = v.to_string(),
            "source" | "src" => {
                m.insert("Source".into(), json!(v));
            }
            "target" | "destination" | "dst" => {
                m.insert("Target".into(), json!(v));
            }
            "readonly" | "ro" => {
                m.insert("ReadOnly".into(), json!(v != "false" && v != "0"));
            }
            "bind-propagation" => {
                m.insert("BindOptions".into(), json!({"Propagation": v}));
            }
            "tmpfs-size" => {
                m.insert(
                    "TmpfsOptions".into(),
                    json!({"SizeBytes": ram_in_bytes(v)?}),
                );
            }
            other => return Err(format!("invalid field '{other}' must be a key=value pair")),
        }
    }
    m.insert("Type".into(), json!(kind));
    Ok(Value::Object(m))
}

/// Go's time.ParseDuration for the forms people write: `30s`, `1m30s`, `500ms`, `2h`.
pub(crate) fn go_duration(s: &str) -> Result<u64, String> {
    berth_types::time::go_duration(s)
}

fn healthcheck(a: &RunArgs) -> Result<Value, String> {
    if a.no_healthcheck {
        return Ok(json!({"Test": ["NONE"]}));
    }
    let any = a.health_cmd.is_some()
        || a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    if !any {
        return Ok(Value::Null);
    }
    let d = |x: &Option<String>| x.as_deref().map(go_duration).transpose();
    Ok(json!({
        "Test": a.health_cmd.as_ref().map(|c| json!(["CMD-SHELL", c])).unwrap_or(Value::Null),
        "Interval": d(&a.health_interval)?.unwrap_or(0),
        "Timeout": d(&a.health_timeout)?.unwrap_or(0),
        "StartPeriod": d(&a.health_start_period)?.unwrap_or(0),
        "Retries": a.health_retries.unwrap_or(0),
    }))
}

/// `seccomp=<file>` travels as the file's contents, as the docker CLI sends it.
fn security_opts(opts: &[String]) -> Result<Vec<String>, String> {
    opts.iter()
        .map(|o| match o.split_once('=') {
            Some(("seccomp", v)) if v != "unconfined" && !v.trim_start().starts_with('{') => {
                let text = std::fs::read_to_string(v)
                    .map_err(|e| format!("opening seccomp profile ({v}) failed: {e}"))?;
                Ok(format!("seccomp={text}"))
            }
            _ => Ok(o.clone()),
        })
        .collect()
}

/// The create body the docker CLI would send for these flags.
fn create_body(a: &RunArgs) -> Result<Value, String> {
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("open {}: {e}", f.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                env.push(line.to_string());
            }
        }
    }
    for e in &a.env {
        // `-e NAME` takes the value from our environment, as Docker does.
        if e.contains('=') {
            env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            env.push(format!("{e}={v}"));
        }
    }
    // An empty type lets the daemon's default (daemon.json log-driver) apply.
    let mut log_config =
        json!({"Type": a.log_driver.clone().unwrap_or_default(), "Config": key_values(&a.log_opt)});
    if log_config["Config"]
        .as_object()
        .is_some_and(|m| m.is_empty())
    {
        log_config["Config"] = json!({});
    }
    let mut tmpfs = serde_json::Map::new();
    for t in &a.tmpfs {
        let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
        tmpfs.insert(dst.to_string(), json!(opts));
    }
    let mut ulimits = Vec::new();
    for u in &a.ulimit {
        let (name, vals) = u
            .split_once('=')
            .ok_or_else(|| format!("invalid ulimit argument: {u}"))?;
        let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
        let n = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| format!("invalid ulimit argument: {u}"))
        };
        ulimits.push(json!({"Name": name, "Soft": n(soft)?, "Hard": n(hard)?}));
    }
    let mounts: Vec<Value> = a
        .mount
        .iter()
        .map(|m| parse_mount(m))
        .collect::<Result<_, _>>()?;
    let mut exposed = serde_json::Map::new();
    let mut bindings = serde_json::Map::new();
    for spec in &a.publish {
        for (key, b) in parse_publish(spec)? {
            exposed.insert(key.clone(), json!({}));
            if let Some(list) = bindings
                .entry(key)
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                list.push(b);
            }
        }
    }
    for e in &a.expose {
        let (ports, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        let (lo, hi) =
            port_range(ports).ok_or_else(|| format!("invalid range format for --expose: {e}"))?;
        for p in lo..=hi {
            exposed.insert(format!("{p}/{proto}"), json!({}));
        }
    }
    let mut body = json!({
        "Hostname": a.hostname.clone().unwrap_or_default(),
        "User": a.user.clone().unwrap_or_default(),
        "AttachStdin": a.interactive && !a.detach,
        "AttachStdout": !a.detach,
        "AttachStderr": !a.detach,
        "Tty": a.tty,
        "OpenStdin": a.interactive,
        "StdinOnce": a.interactive && !a.detach,
        "Env": env,
        "Cmd": if a.command.is_empty() { Value::Null } else { json!(a.command) },
        "Image": a.image,
        "WorkingDir": a.workdir.clone().unwrap_or_default(),
        "Entrypoint": match &a.entrypoint { Some(e) if e.is_empty() => json!([""]), Some(e) => json!([e]), None => Value::Null },
        "Labels": key_values(&a.label),
        "StopSignal": a.stop_signal,
        "StopTimeout": a.stop_timeout,
        "Healthcheck": healthcheck(a)?,
        "ExposedPorts": if exposed.is_empty() { Value::Null } else { Value::Object(exposed) },
    });
    body["HostConfig"] = json!({
            "Binds": a.volume,
            "Mounts": mounts,
            "NetworkMode": a.network.clone().unwrap_or_else(|| "default".into()),
            "PortBindings": bindings,
            "PublishAllPorts": a.publish_all,
            "RestartPolicy": restart_policy(a.restart.as_deref().unwrap_or("no"))?,
            "AutoRemove": a.rm,
            "LogConfig": log_config,
            "CapAdd": a.cap_add,
            "CapDrop": a.cap_drop,
            "Dns": a.dns,
            "DnsOptions": a.dns_option,
            "DnsSearch": a.dns_search,
            "ExtraHosts": a.add_host,
            "IpcMode": a.ipc.clone().unwrap_or_default(),
            "PidMode": a.pid.clone().unwrap_or_default(),
            "UTSMode": a.uts.clone().unwrap_or_default(),
            "Privileged": a.privileged,
            "ReadonlyRootfs": a.read_only,
            "SecurityOpt": security_opts(&a.security_opt)?,
            "Tmpfs": tmpfs,
            "ShmSize": a.shm_size.as_deref().map(ram_in_bytes).transpose()?.unwrap_or(0),
            "Sysctls": key_values(&a.sysctl),
            "Init": if a.init { json!(true) } else { Value::Null },
            "Ulimits": ulimits,
            "GroupAdd": a.group_add,
            "Devices": a.device.iter().map(|d| {
                // host[:container[:permissions]]
                let mut p = d.splitn(3, ':');
                let host = p.next().unwrap_or_default();
                let inside = p.next().unwrap_or(host);
                let perms = p.next().unwrap_or("rwm");
                json!({"PathOnHost": host, "PathInContainer": inside, "CgroupPermissions": perms})
            }).collect::<Vec<_>>()
    });
    if let (Some(hc), Value::Object(r)) = (
        body["HostConfig"].as_object_mut(),
        a.resources.host_config()?,
    ) {
        hc.extend(r);
    }
    if body["HostConfig"]["NetworkMode"] == "default" {
        body["HostConfig"]["NetworkMode"] = json!("bridge");
    }
    // The pty starts at the terminal's size, as with Docker's CLI: a program that asks for
    // it at once must not see 0x0 before the first resize arrives.
    if let (true, Some((h, w))) = (a.tty, crate::stream::terminal_size()) {
        body["HostConfig"]["ConsoleSize"] = json!([h, w]);
    }
    if a.ip.is_some() || a.ip6.is_some() || !a.network_alias.is_empty() {
        let mode = body["HostConfig"]["NetworkMode"].clone();
        let mode = mode.as_str().unwrap_or("bridge");
        body["NetworkingConfig"] = json!({"EndpointsConfig": {mode: {
            "IPAMConfig": {"IPv4Address": a.ip.clone().unwrap_or_default(),
                "IPv6Address": a.ip6.clone().unwrap_or_default()},
            "Aliases": a.network_alias,
        }}});
    }
    Ok(body)
}

/// Starts `berth daemon` in the background when nothing answers on the default socket,
/// and waits for it.
async fn ensure_daemon(socket: &std::path::Path) -> Result<(), String> {
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let data_root = PathBuf::from("/var/lib/berth");
    std::fs::create_dir_all(&data_root).map_err(|e| format!("creating /var/lib/berth: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_root.join("daemon.log"))
        .map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    std::process::Command::new(exe)
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        // Its own process group: ctrl-c at this terminal is not for the daemon.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting berth daemon: {e}"))?;
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("berth daemon did not come up (see /var/lib/berth/daemon.log)".into())
}

pub async fn run(cli: Cli) -> i32 {
    let tls = crate::tls::TlsOptions {
        tls: cli.tls,
        verify: cli.tlsverify,
        ca: cli.tlscacert.clone(),
        cert: cli.tlscert.clone(),
        key: cli.tlskey.clone(),
    };
    let (c, explicit) = match crate::host(cli.host.as_deref(), &tls) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("berth: {e}");
            return code::FAILED;
        }
    };
    if !explicit {
        if let Err(e) = ensure_daemon(&c.socket).await {
            eprintln!("berth: {e}");
            return code::FAILED;
        }
    }
    let fails_with_125 = matches!(cli.cmd, Cmd::Run(_) | Cmd::Create(_));
    match dispatch(&c, cli.cmd).await {
        Ok(code) => code,
        Err(e) => {
            // An empty message: the failure was printed already (a pull's error line).
            if !e.to_string().is_empty() {
                eprintln!("{e}");
            }
            if fails_with_125 {
                code::FAILED
            } else {
                1
            }
        }
    }
}

/// For commands over several objects: each failure is reported, and the status is 1 if
/// any failed.
async fn each<F, Fut>(names: &[String], f: F) -> Result<i32, Error>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, Error>>,
{
    let mut status = 0;
    for n in names {
        match f(n.clone()).await {
            Ok(Some(line)) => println!("{line}"),
            Ok(None) => {}
            Err(e) => {
                eprintln!("{e}");
                status = 1;
            }
        }
    }
    Ok(status)
}

pub(crate) fn q(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn filters_json(list: &[String]) -> String {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in list {
        let (k, v) = f.split_once('=').unwrap_or((f, ""));
        m.entry(k.to_string()).or_default().push(v.to_string());
    }
    q(&json!(m).to_string())
}

/// Runs one `berth` command line (without the program name) against `c`: how compose
/// reuses `exec` and friends.
pub(crate) async fn run_args(c: &Client, args: &[String]) -> Result<i32, Error> {
    let mut argv = vec!["berth".to_string()];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(&argv).map_err(|e| Error::Other(e.to_string()))?;
    Box::pin(dispatch(c, cli.cmd)).await
}

async fn dispatch(c: &Client, cmd: Cmd) -> Result<i32, Error> {
    match cmd {
        Cmd::Compose(a) => crate::compose::run(c, a).await,
        Cmd::Build {
            tag,
            file,
            build_arg,
            target,
            quiet,
            no_cache,
            pull,
            label,
            iidfile,
            progress,
            network,
            secret,
            output,
            push,
            platform,
            path,
        } => {
            let secrets = build_secrets(&secret)?;
            let outputs = output
                .iter()
                .map(|o| BuildOutput::parse(o))
                .collect::<Result<Vec<_>, _>>()?;
            let push = push || outputs.iter().any(|o| matches!(o, BuildOutput::Push));
            if push && tag.is_empty() {
                return Err(Error::Other(
                    "--push needs a tag (-t) to push the image as".into(),
                ));
            }
            let quiet = quiet || progress.as_deref() == Some("quiet");
            if let Some(p) = progress.as_deref() {
                if !matches!(p, "auto" | "plain" | "tty" | "quiet") {
                    return Err(Error::Other(format!(
                        "invalid --progress {p:?}: expected auto, plain, tty or quiet"
                    )));
                }
            }
            let (dockerfile, extra) = dockerfile_of(file.as_deref(), &path)?;
            let extra_beside = extra.clone();
            // The context as a tar, without what .dockerignore leaves out (the Dockerfile
            // and .dockerignore go anyway: the daemon needs them).
            let dir = path.clone();
            let keep: Vec<String> = [
                dockerfile.clone().unwrap_or_else(|| "Dockerfile".into()),
                ".dockerignore".into(),
            ]
            .to_vec();
            // Streamed: written on a blocking thread while it is sent.
            let mut writer_done = None;
            let mut full_tar = || {
                let (rx, tx) = tokio::io::duplex(1 << 20);
                let (dir, keep, extra) = (dir.clone(), keep.clone(), extra.clone());
                writer_done = Some(tokio::task::spawn_blocking(move || {
                    let w = tokio_util::io::SyncIoBridge::new(tx);
                    context_tar(&dir, &keep, extra, w)
                }));
                client::reader(rx)
            };
            // The daemon on this host reads the directory in place; the tar is for one
            // that cannot see it.
            let in_place = if std::env::var_os("BERTH_BUILD_SEND_CONTEXT").is_some() {
                None
            } else {
                use std::os::unix::fs::MetadataExt;
                let canon = std::fs::canonicalize(&path)
                    .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
                let m = std::fs::metadata(&canon)
                    .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
                if !m.is_dir() {
                    return Err(Error::Other(format!(
                        "unable to prepare context: path {:?} is not a directory",
                        path.display()
                    )));
                }
                let extras = context_tar_of(extra_beside.as_slice()).map_err(Error::Other)?;
                Some((canon, format!("{}:{}", m.dev(), m.ino()), extras))
            };
            let mut query = vec![
                format!("q={quiet}"),
                format!("nocache={no_cache}"),
                format!("pull={pull}"),
            ];
            for t in &tag {
                query.push(format!("t={}", q(t)));
            }
            if let Some(f) = &dockerfile {
                query.push(format!("dockerfile={}", q(f)));
            }
            if let Some(t) = &target {
                query.push(format!("target={}", q(t)));
            }
            if let Some(n) = &network {
                query.push(format!("networkmode={}", q(n)));
            }
            if let Some(p) = &platform {
                query.push(format!("platform={}", q(p)));
            }
            let pairs = |list: &[String], from_env: bool| -> BTreeMap<String, String> {
                list.iter()
                    .map(|a| match a.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None if from_env => (a.clone(), std::env::var(a).unwrap_or_default()),
                        None => (a.clone(), String::new()),
                    })
                    .collect()
            };
            if !build_arg.is_empty() {
                query.push(format!(
                    "buildargs={}",
                    q(&json!(pairs(&build_arg, true)).to_string())
                ));
            }
            if !label.is_empty() {
                query.push(format!(
                    "labels={}",
                    q(&json!(pairs(&label, false)).to_string())
                ));
            }
            let auth = dockercfg::all_credentials();
            let mut headers = Vec::new();
            if !auth.is_empty() {
                headers.push((
                    "X-Registry-Config",
                    berth_types::auth::configs_to_header(&auth),
                ));
            }
            if !secrets.is_empty() {
                headers.push((
                    berth_types::auth::BUILD_SECRETS_HEADER,
                    berth_types::auth::secrets_to_header(&secrets),
                ));
            }
            let url = format!("/build?{}", query.join("&"));
            let send = |body: client::ReqBody, headers: Vec<(&'static str, String)>| {
                let url = url.clone();
                async move {
                    c.send_with(
                        Method::POST,
                        &url,
                        body,
                        Some("application/x-tar"),
                        false,
                        &headers,
                    )
                    .await
                }
            };
            let resp = match in_place {
                Some((dir, stat, extras)) => {
                    let mut h = headers.clone();
                    h.push(("X-Berth-Context-Dir", dir.to_string_lossy().into_owned()));
                    h.push(("X-Berth-Context-Stat", stat));
                    match send(client::full(extras), h).await {
                        Err(Error::Daemon(412, _)) => send(full_tar(), headers).await?,
                        r => r?,
                    }
                }
                None => send(full_tar(), headers).await?,
            };
            let (status, id) = progress_stream_with_id(resp.into_body(), false, false).await?;
            if let Some(w) = writer_done {
                // A context that could not be read: that is the error to show.
                if let Ok(Err(e)) = w.await {
                    return Err(Error::Other(format!("sending the build context: {e}")));
                }
            }
            if let (Some(f), Some(id), 0) = (&iidfile, &id, status) {
                std::fs::write(f, id).map_err(|e| Error::Other(format!("{}: {e}", f.display())))?;
            }
            let (0, Some(id)) = (status, id) else {
                return Ok(status);
            };
            for o in &outputs {
                export_build(c, &id, tag.first(), o).await?;
            }
            if push {
                for t in &tag {
                    let code = run_args(c, &["push".to_string(), t.clone()]).await?;
                    if code != 0 {
                        return Ok(code);
                    }
                }
            }
            Ok(0)
        }
        Cmd::BuilderPrune {
            all,
            force,
            keep_storage,
        } => {
            let keep = keep_storage
                .map(|k| ram_in_bytes(&k).map_err(Error::Other))
                .transpose()?;
            let warning = if all {
                "WARNING! This will remove all build cache."
            } else {
                "WARNING! This will remove all dangling build cache."
            };
            if !force && !confirm(warning) {
                return Ok(0);
            }
            let mut path = format!("/build/prune?all={all}");
            if let Some(k) = keep {
                path.push_str(&format!("&keep-storage={k}"));
            }
            let v = c.json(Method::POST, &path, None).await?;
            println!(
                "Total reclaimed space: {}",
                human_size(v["SpaceReclaimed"].as_f64().unwrap_or(0.0))
            );
            Ok(0)
        }
        Cmd::Run(a) => run_container(c, a).await,
        Cmd::Create(a) => {
            let id = create(c, &a).await?;
            println!("{id}");
            Ok(0)
        }
        Cmd::Start {
            attach,
            interactive,
            containers,
        } => {
            if attach || interactive {
                let name = &containers[0];
                let info = c
                    .json(Method::GET, &format!("/containers/{}/json", q(name)), None)
                    .await?;
                let id = info["Id"].as_str().unwrap_or(name).to_string();
                let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
                return attach_start_wait(c, &id, tty, interactive, "next-exit", true).await;
            }
            simple_each(c, &containers, "start").await
        }
        Cmd::Stop(a) => stop_like(c, "stop", a).await,
        Cmd::Restart(a) => stop_like(c, "restart", a).await,
        Cmd::Kill { signal, containers } => {
            let sig = signal
                .map(|s| format!("?signal={}", q(&s)))
                .unwrap_or_default();
            call_each(c, Method::POST, &containers, |n| {
                format!("/containers/{}/kill{sig}", q(n))
            })
            .await
        }
        Cmd::Rm {
            force,
            volumes,
            containers,
        } => {
            call_each(c, Method::DELETE, &containers, |n| {
                format!("/containers/{}?force={force}&v={volumes}", q(n))
            })
            .await
        }
        Cmd::Ps {
            all,
            quiet,
            no_trunc,
            filter,
            format,
            last,
            latest,
            size,
        } => {
            let limit = if latest { Some(1) } else { last };
            let mut path = format!("/containers/json?all={all}&size={size}");
            if let Some(l) = limit {
                path.push_str(&format!("&limit={l}"));
            }
            if !filter.is_empty() {
                path.push_str(&format!("&filters={}", filters_json(&filter)));
            }
            let list = c.json(Method::GET, &path, None).await?;
            let items: Vec<Value> = list
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|v| ps_view(v, no_trunc))
                .collect();
            let default = if quiet {
                "{{.ID}}"
            } else if size {
                "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}\t{{.Size}}"
            } else {
                "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
            };
            let fmt = if quiet { None } else { format.as_deref() };
            print_list(&items, fmt, default, ps_title)
        }
        Cmd::Logs {
            follow,
            tail,
            timestamps,
            since,
            until,
            container,
        } => {
            let info = c
                .json(
                    Method::GET,
                    &format!("/containers/{}/json", q(&container)),
                    None,
                )
                .await?;
            let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
            let mut path = format!(
                "/containers/{}/logs?stdout=1&stderr=1&follow={follow}&timestamps={timestamps}",
                q(&container)
            );
            if let Some(t) = tail {
                path.push_str(&format!("&tail={}", q(&t)));
            }
            if let Some(s) = since {
                path.push_str(&format!("&since={}", q(&s)));
            }
            if let Some(u) = until {
                path.push_str(&format!("&until={}", q(&u)));
            }
            let resp = c
                .send(Method::GET, &path, client::empty(), None, false)
                .await?;
            copy_body(resp.into_body(), tty).await;
            Ok(0)
        }
        Cmd::Exec(a) => exec(c, a).await,
        Cmd::Inspect(a) => inspect(c, a, None).await,
        Cmd::ContainerInspect(a) => inspect(c, a, Some("container")).await,
        Cmd::ImageInspect(a) => inspect(c, a, Some("image")).await,
        Cmd::Wait { containers } => {
            each(&containers, |n| async move {
                let v = c
                    .json(Method::POST, &format!("/containers/{}/wait", q(&n)), None)
                    .await?;
                Ok(Some(v["StatusCode"].to_string()))
            })
            .await
        }
        Cmd::Pause { containers } => simple_each(c, &containers, "pause").await,
        Cmd::Unpause { containers } => simple_each(c, &containers, "unpause").await,
        Cmd::Rename {
            container,
            new_name,
        } => {
            c.json(
                Method::POST,
                &format!("/containers/{}/rename?name={}", q(&container), q(&new_name)),
                None,
            )
            .await?;
            Ok(0)
        }
        Cmd::Top { container } => {
            let v = c
                .json(
                    Method::GET,
                    &format!("/containers/{}/top", q(&container)),
                    None,
                )
                .await?;
            let mut rows: Vec<Vec<String>> = vec![v["Titles"]
                .as_array()
                .into_iter()
                .flatten()
                .map(format::plain)
                .collect()];
            for p in v["Processes"].as_array().into_iter().flatten() {
                rows.push(
                    p.as_array()
                        .into_iter()
                        .flatten()
                        .map(format::plain)
                        .collect(),
                );
            }
            print!("{}", format::table(&rows));
            Ok(0)
        }
        Cmd::Attach {
            no_stdin,
            sig_proxy,
            detach_keys,
            container,
        } => attach(c, &container, no_stdin, sig_proxy, detach_keys).await,
        Cmd::History {
            human,
            no_trunc,
            quiet,
            format,
            image,
        } => {
            let v = c
                .json(Method::GET, &format!("/images/{}/history", q(&image)), None)
                .await?;
            let items: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| history_view(h, human, no_trunc))
                .collect();
            let default = if quiet {
                "{{.ID}}"
            } else {
                "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
            };
            let fmt = if quiet { None } else { format.as_deref() };
            print_list(&items, fmt, default, history_title)
        }
        Cmd::ContainerPrune { force } => {
            if !force && !confirm("WARNING! This will remove all stopped containers.") {
                return Ok(0);
            }
            let total = prune(c, "/containers/prune", "ContainersDeleted", "Containers").await?;
            println!("Total reclaimed space: {}", human_size(total));
            Ok(0)
        }
        Cmd::Images {
            all,
            quiet,
            no_trunc,
            digests,
            filter,
            format,
            repository,
        } => {
            let mut path = format!("/images/json?all={all}");
            // `images REPOSITORY[:TAG]` is a reference filter, as the docker CLI sends it.
            let mut filter = filter;
            if let Some(r) = repository {
                filter.push(format!("reference={r}"));
            }
            if !filter.is_empty() {
                path.push_str(&format!("&filters={}", filters_json(&filter)));
            }
            let list = c.json(Method::GET, &path, None).await?;
            let mut items = Vec::new();
            for img in list.as_array().cloned().unwrap_or_default() {
                items.extend(image_views(&img, no_trunc));
            }
            if quiet {
                let mut seen = std::collections::HashSet::new();
                items.retain(|v| seen.insert(v["ID"].to_string()));
            }
            let default = if quiet {
                "{{.ID}}"
            } else if digests {
                "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
            } else {
                "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
            };
            let fmt = if quiet { None } else { format.as_deref() };
            print_list(&items, fmt, default, image_title)
        }
        Cmd::Rmi { force, images } => {
            let mut status = 0;
            for n in images {
                match c
                    .json(
                        Method::DELETE,
                        &format!("/images/{}?force={force}", q(&n)),
                        None,
                    )
                    .await
                {
                    Ok(v) => {
                        for item in v.as_array().into_iter().flatten() {
                            if let Some(m) = item.as_object() {
                                for (k, v) in m {
                                    println!("{k}: {}", format::plain(v));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        Cmd::ImagePrune { all, force } => {
            if !force
                && !confirm(if all {
                    "WARNING! This will remove all images without at least one container associated to them."
                } else {
                    "WARNING! This will remove all dangling images."
                })
            {
                return Ok(0);
            }
            let total = prune_images(c, all).await?;
            println!("Total reclaimed space: {}", human_size(total));
            Ok(0)
        }
        Cmd::Tag { source, target } => {
            let (repo, tag) = split_tag(&target);
            c.json(
                Method::POST,
                &format!(
                    "/images/{}/tag?repo={}&tag={}",
                    q(&source),
                    q(&repo),
                    q(&tag)
                ),
                None,
            )
            .await?;
            Ok(0)
        }
        Cmd::Push { quiet, image } => {
            let (name, tag) = split_tag(&image);
            let resp = c
                .send_with(
                    Method::POST,
                    &format!("/images/{}/push?tag={}", q(&name), q(&tag)),
                    client::empty(),
                    None,
                    false,
                    &registry_auth(&image)?,
                )
                .await?;
            progress_stream(resp.into_body(), quiet, false).await
        }
        Cmd::Pull {
            all_tags,
            quiet,
            platform,
            image,
        } => {
            if all_tags {
                let r: berth_types::Reference =
                    image.parse().map_err(|e| Error::Other(format!("{e}")))?;
                if !r.is_name_only() {
                    return Err(Error::Other("tag can't be used with --all-tags/-a".into()));
                }
            }
            pull_image(c, &image, platform.as_deref(), quiet, false, all_tags).await
        }
        Cmd::Search {
            filter,
            format,
            limit,
            no_trunc,
            term,
        } => search(c, &term, limit, &filter, format.as_deref(), no_trunc).await,
        Cmd::ManifestInspect {
            insecure: _,
            verbose,
            name,
        } => manifest_inspect(c, &name, verbose).await,
        Cmd::Login {
            username,
            password,
            password_stdin,
            server,
        } => login(c, username, password, password_stdin, server).await,
        Cmd::Logout { server } => {
            let key = dockercfg::server_key(server.as_deref().unwrap_or(""));
            match dockercfg::erase(&key) {
                Ok(true) => println!("Removing login credentials for {key}"),
                Ok(false) => println!("Not logged in to {key}"),
                Err(e) => return Err(Error::Other(e)),
            }
            Ok(0)
        }
        Cmd::Load { input, quiet } => {
            let body = match input {
                Some(p) => client::reader(
                    tokio::fs::File::open(&p)
                        .await
                        .map_err(|e| Error::Other(format!("open {}: {e}", p.display())))?,
                ),
                None => {
                    if stream::is_terminal(std::io::stdin()) {
                        return Err(Error::Other(
                            "requested load from stdin, but stdin is empty".into(),
                        ));
                    }
                    client::reader(tokio::io::stdin())
                }
            };
            let resp = c
                .send(
                    Method::POST,
                    &format!("/images/load?quiet={quiet}"),
                    body,
                    Some("application/x-tar"),
                    false,
                )
                .await?;
            print_json_stream(resp.into_body()).await
        }
        Cmd::Save { output, images } => {
            let names: Vec<String> = images.iter().map(|n| format!("names={}", q(n))).collect();
            let path = format!("/images/get?{}", names.join("&"));
            download(c, &path, output.as_deref(), "failed to save image: open").await
        }
        Cmd::Import {
            change,
            message,
            file,
            reference,
        } => {
            let body = if file == "-" {
                client::reader(tokio::io::stdin())
            } else {
                client::reader(
                    tokio::fs::File::open(&file)
                        .await
                        .map_err(|e| Error::Other(format!("open {file}: {e}")))?,
                )
            };
            let mut path = "/images/create?fromSrc=-".to_string();
            if let Some(r) = reference {
                let (repo, tag) = split_tag(&r);
                path.push_str(&format!("&repo={}&tag={}", q(&repo), q(&tag)));
            }
            for ch in change {
                path.push_str(&format!("&changes={}", q(&ch)));
            }
            if let Some(m) = message {
                path.push_str(&format!("&message={}", q(&m)));
            }
            let resp = c
                .send(Method::POST, &path, body, Some("application/x-tar"), false)
                .await?;
            print_json_stream(resp.into_body()).await
        }
        Cmd::VolumeCreate {
            name,
            driver,
            opt,
            label,
            volume,
        } => {
            let body = json!({
                "Name": name.or(volume).unwrap_or_default(),
                "Driver": driver,
                "DriverOpts": key_values(&opt),
                "Labels": key_values(&label),
            });
            let v = c.json(Method::POST, "/volumes/create", Some(&body)).await?;
            println!("{}", format::plain(&v["Name"]));
            Ok(0)
        }
        Cmd::VolumeLs {
            quiet,
            filter,
            format,
        } => {
            let mut path = "/volumes".to_string();
            if !filter.is_empty() {
                path.push_str(&format!("?filters={}", filters_json(&filter)));
            }
            let v = c.json(Method::GET, &path, None).await?;
            let items: Vec<Value> = v["Volumes"].as_array().cloned().unwrap_or_default();
            let default = if quiet {
                "{{.Name}}"
            } else {
                "table {{.Driver}}\t{{.Name}}"
            };
            let fmt = if quiet { None } else { format.as_deref() };
            print_list(&items, fmt, default, |f| match f {
                "Name" => "VOLUME NAME".into(),
                other => other.to_uppercase(),
            })
        }
        Cmd::VolumeInspect { format, volumes } => {
            inspect_each(c, "volumes", &volumes, format).await
        }
        Cmd::VolumeRm { force, volumes } => {
            call_each(c, Method::DELETE, &volumes, |n| {
                format!("/volumes/{}?force={force}", q(n))
            })
            .await
        }
        Cmd::VolumePrune { all, force } => {
            if !force && !confirm("WARNING! This will remove anonymous local volumes not used by at least one container.") {
                return Ok(0);
            }
            let total = prune_volumes(c, all).await?;
            println!("Total reclaimed space: {}", human_size(total));
            Ok(0)
        }
        Cmd::NetworkCreate {
            driver,
            subnet,
            gateway,
            ip_range,
            internal,
            ipv6,
            label,
            opt,
            name,
        } => {
            // Each --subnet with the --gateway and --ip-range given in the same position.
            let ipam: Vec<Value> = subnet
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({"Subnet": s, "Gateway": gateway.get(i), "IPRange": ip_range.get(i)})
                })
                .collect();
            let body = json!({
                "Name": name, "Driver": driver, "Internal": internal, "EnableIPv6": ipv6,
                "Labels": key_values(&label), "Options": key_values(&opt),
                "IPAM": {"Driver": "default", "Config": ipam},
            });
            let v = c
                .json(Method::POST, "/networks/create", Some(&body))
                .await?;
            println!("{}", format::plain(&v["Id"]));
            Ok(0)
        }
        Cmd::NetworkLs {
            quiet,
            filter,
            format,
            no_trunc,
        } => {
            let mut path = "/networks".to_string();
            if !filter.is_empty() {
                path.push_str(&format!("?filters={}", filters_json(&filter)));
            }
            let v = c.json(Method::GET, &path, None).await?;
            let mut items: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| network_row(n, no_trunc))
                .collect();
            items.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
            let default = if quiet {
                "{{.ID}}"
            } else {
                "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
            };
            let fmt = if quiet { None } else { format.as_deref() };
            print_list(&items, fmt, default, |f| match f {
                "ID" => "NETWORK ID".into(),
                other => other.to_uppercase(),
            })
        }
        Cmd::NetworkInspect { format, networks } => {
            inspect_each(c, "networks", &networks, format).await
        }
        Cmd::NetworkRm { networks } => {
            call_each(c, Method::DELETE, &networks, |n| {
                format!("/networks/{}", q(n))
            })
            .await
        }
        Cmd::NetworkPrune { force } => {
            if !force && !confirm("WARNING! This will remove all custom networks not used by at least one container.") {
                return Ok(0);
            }
            let v = c.json(Method::POST, "/networks/prune", None).await?;
            let names: Vec<&str> = v["NetworksDeleted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !names.is_empty() {
                println!("Deleted Networks:");
                for n in names {
                    println!("{n}");
                }
            }
            Ok(0)
        }
        Cmd::NetworkConnect {
            ip,
            ip6,
            alias,
            network,
            container,
        } => {
            let body = json!({"Container": container, "EndpointConfig": {
                "IPAMConfig": {"IPv4Address": ip.unwrap_or_default(), "IPv6Address": ip6.unwrap_or_default()},
                "Aliases": alias}});
            c.json(
                Method::POST,
                &format!("/networks/{}/connect", q(&network)),
                Some(&body),
            )
            .await?;
            Ok(0)
        }
        Cmd::NetworkDisconnect {
            force,
            network,
            container,
        } => {
            let body = json!({"Container": container, "Force": force});
            c.json(
                Method::POST,
                &format!("/networks/{}/disconnect", q(&network)),
                Some(&body),
            )
            .await?;
            Ok(0)
        }
        Cmd::Cp {
            src, dst, archive, ..
        } => cp(c, &src, &dst, archive).await,
        Cmd::Port {
            container,
            private_port,
        } => {
            let v = c
                .json(
                    Method::GET,
                    &format!("/containers/{}/json", q(&container)),
                    None,
                )
                .await?;
            let mut found = false;
            for (port, bindings) in v["NetworkSettings"]["Ports"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if let Some(want) = &private_port {
                    let full = if want.contains('/') {
                        want.clone()
                    } else {
                        format!("{want}/tcp")
                    };
                    if &full != port {
                        continue;
                    }
                }
                for b in bindings.as_array().into_iter().flatten() {
                    found = true;
                    let ip = b["HostIp"].as_str().unwrap_or("0.0.0.0");
                    let hp = b["HostPort"].as_str().unwrap_or("");
                    if private_port.is_some() {
                        println!("{ip}:{hp}");
                    } else {
                        println!("{port} -> {ip}:{hp}");
                    }
                }
            }
            if let (Some(p), false) = (&private_port, found) {
                return Err(Error::Other(format!(
                    "Error: No public port '{p}' published for {container}"
                )));
            }
            Ok(0)
        }
        Cmd::Events {
            since,
            until,
            filter,
            format,
        } => events(c, since, until, filter, format).await,
        Cmd::SystemPrune {
            all,
            force,
            volumes,
        } => {
            let mut what = vec!["all stopped containers"];
            if volumes {
                what.push("all anonymous volumes not used by at least one container");
            }
            what.push(if all {
                "all images without at least one container associated to them"
            } else {
                "all dangling images"
            });
            let warning = format!("WARNING! This will remove:\n  - {}", what.join("\n  - "));
            if !force && !confirm(&warning) {
                return Ok(0);
            }
            let mut total =
                prune(c, "/containers/prune", "ContainersDeleted", "Containers").await?;
            if volumes {
                total += prune_volumes(c, false).await?;
            }
            total += prune_images(c, all).await?;
            println!("Total reclaimed space: {}", human_size(total));
            Ok(0)
        }
        Cmd::SystemDf => {
            let v = c.json(Method::GET, "/system/df", None).await?;
            let images = v["Images"].as_array().cloned().unwrap_or_default();
            let ctrs = v["Containers"].as_array().cloned().unwrap_or_default();
            let vols = v["Volumes"].as_array().cloned().unwrap_or_default();
            let img_size: f64 = images
                .iter()
                .map(|i| i["Size"].as_f64().unwrap_or(0.0))
                .sum();
            let active_imgs = images
                .iter()
                .filter(|i| ctrs.iter().any(|c| c["ImageID"] == i["Id"]))
                .count();
            let running = ctrs.iter().filter(|c| c["State"] == "running").count();
            let rows = vec![
                vec![
                    "TYPE".into(),
                    "TOTAL".into(),
                    "ACTIVE".into(),
                    "SIZE".into(),
                    "RECLAIMABLE".into(),
                ],
                vec![
                    "Images".into(),
                    images.len().to_string(),
                    active_imgs.to_string(),
                    human_size(img_size),
                    String::new(),
                ],
                vec![
                    "Containers".into(),
                    ctrs.len().to_string(),
                    running.to_string(),
                    "0B".into(),
                    String::new(),
                ],
                vec![
                    "Local Volumes".into(),
                    vols.len().to_string(),
                    "0".into(),
                    "0B".into(),
                    String::new(),
                ],
                {
                    let cache = v["BuildCache"].as_array().cloned().unwrap_or_default();
                    let size = |keep: &dyn Fn(&Value) -> bool| -> f64 {
                        cache
                            .iter()
                            .filter(|e| keep(e))
                            .map(|e| e["Size"].as_f64().unwrap_or(0.0))
                            .sum()
                    };
                    let active = cache.iter().filter(|e| e["InUse"] == true).count();
                    vec![
                        "Build Cache".into(),
                        cache.len().to_string(),
                        active.to_string(),
                        human_size(size(&|_| true)),
                        human_size(size(&|e| e["InUse"] != true && e["Shared"] != true)),
                    ]
                },
            ];
            print!("{}", format::table(&rows));
            Ok(0)
        }
        Cmd::Diff { container } => {
            let v = c
                .json(
                    Method::GET,
                    &format!("/containers/{}/changes", q(&container)),
                    None,
                )
                .await?;
            for ch in v.as_array().into_iter().flatten() {
                let kind = match ch["Kind"].as_u64() {
                    Some(1) => 'A',
                    Some(2) => 'D',
                    _ => 'C',
                };
                println!("{kind} {}", format::plain(&ch["Path"]));
            }
            Ok(0)
        }
        Cmd::Export { output, container } => {
            let path = format!("/containers/{}/export", q(&container));
            download(c, &path, output.as_deref(), "failed to export container:").await
        }
        Cmd::Commit {
            change,
            message,
            pause,
            container,
            reference,
        } => {
            let mut path = format!("/commit?container={}&pause={pause}", q(&container));
            if let Some(r) = reference {
                let (repo, tag) = split_tag(&r);
                path.push_str(&format!("&repo={}&tag={}", q(&repo), q(&tag)));
            }
            if let Some(m) = message {
                path.push_str(&format!("&comment={}", q(&m)));
            }
            for ch in change {
                path.push_str(&format!("&changes={}", q(&ch)));
            }
            let v = c.json(Method::POST, &path, None).await?;
            println!("{}", format::plain(&v["Id"]));
            Ok(0)
        }
        Cmd::Update {
            resources,
            restart,
            containers,
        } => {
            let mut body = resources.host_config().map_err(Error::Other)?;
            if let Some(r) = restart {
                body["RestartPolicy"] = restart_policy(&r).map_err(Error::Other)?;
            }
            let body = &body;
            each(&containers, |n| async move {
                c.json(
                    Method::POST,
                    &format!("/containers/{}/update", q(&n)),
                    Some(body),
                )
                .await?;
                Ok(Some(n))
            })
            .await
        }
        Cmd::Stats {
            all,
            no_stream,
            no_trunc,
            format,
            containers,
        } => stats(c, all, no_stream, no_trunc, format, containers).await,
        Cmd::Version { format } => {
            let mut v = c.json(Method::GET, "/version", None).await?;
            // Templates name the Go struct's fields (`.Server.APIVersion`), not the JSON's.
            v["APIVersion"] = v["ApiVersion"].clone();
            let all = json!({
                "Client": {"Version": env!("CARGO_PKG_VERSION"), "ApiVersion": "1.47",
                           "APIVersion": "1.47", "DefaultAPIVersion": "1.47",
                           "Os": "linux", "Arch": std::env::consts::ARCH},
                "Server": v
            });
            if let Some(f) = format {
                let t = Template::parse(&f).map_err(Error::Other)?;
                println!("{}", t.render(&all));
                return Ok(0);
            }
            println!(
                "Client:\n Version:           {}\n API version:       1.47\n OS/Arch:           linux/{}\n\nServer: Berth\n Engine:\n  Version:          {}\n  API version:      {} (minimum version {})\n  OS/Arch:          {}/{}\n  Kernel Version:   {}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                format::plain(&v["Version"]),
                format::plain(&v["ApiVersion"]),
                format::plain(&v["MinAPIVersion"]),
                format::plain(&v["Os"]),
                format::plain(&v["Arch"]),
                format::plain(&v["KernelVersion"]),
            );
            Ok(0)
        }
        Cmd::Info { format } => {
            let v = c.json(Method::GET, "/info", None).await?;
            if let Some(f) = format {
                let t = Template::parse(&f).map_err(Error::Other)?;
                println!("{}", t.render(&v));
                return Ok(0);
            }
            let p = |k: &str| format::plain(&v[k]);
            println!("Server:");
            println!(" Containers: {}", p("Containers"));
            println!("  Running: {}", p("ContainersRunning"));
            println!("  Paused: {}", p("ContainersPaused"));
            println!("  Stopped: {}", p("ContainersStopped"));
            println!(" Images: {}", p("Images"));
            println!(" Server Version: {}", p("ServerVersion"));
            println!(" Storage Driver: {}", p("Driver"));
            println!(" Logging Driver: {}", p("LoggingDriver"));
            println!(" Cgroup Driver: {}", p("CgroupDriver"));
            println!(" Cgroup Version: {}", p("CgroupVersion"));
            println!(" Kernel Version: {}", p("KernelVersion"));
            println!(" Operating System: {}", p("OperatingSystem"));
            println!(" CPUs: {}", p("NCPU"));
            println!(
                " Total Memory: {}",
                human_binary(v["MemTotal"].as_f64().unwrap_or(0.0))
            );
            println!(" Name: {}", p("Name"));
            println!(" Docker Root Dir: {}", p("DockerRootDir"));
            Ok(0)
        }
    }
}

/// `--since`/`--until` as Docker takes them: a duration before now (`10m`), unix seconds,
/// or an RFC 3339 time; sent as unix seconds.
fn event_time(s: &str) -> Result<String, Error> {
    if s.parse::<f64>().is_ok() {
        return Ok(s.to_string());
    }
    if let Ok(ns) = go_duration(s) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let t = now.as_secs_f64() - ns as f64 / 1e9;
        return Ok(format!("{t:.9}"));
    }
    berth_types::time::parse_rfc3339(s)
        .map(|t| t.to_string())
        .ok_or_else(|| Error::Other(format!("invalid time value: {s}")))
}

async fn events(
    c: &Client,
    since: Option<String>,
    until: Option<String>,
    filter: Vec<String>,
    format: Option<String>,
) -> Result<i32, Error> {
    use http_body_util::BodyExt;
    use std::io::Write;
    let mut q_parts = Vec::new();
    if let Some(s) = since {
        q_parts.push(format!("since={}", event_time(&s)?));
    }
    if let Some(u) = until {
        q_parts.push(format!("until={}", event_time(&u)?));
    }
    if !filter.is_empty() {
        q_parts.push(format!("filters={}", filters_json(&filter)));
    }
    let path = if q_parts.is_empty() {
        "/events".to_string()
    } else {
        format!("/events?{}", q_parts.join("&"))
    };
    let template = format
        .as_deref()
        .map(Template::parse)
        .transpose()
        .map_err(Error::Other)?;
    let resp = c
        .send(Method::GET, &path, client::empty(), None, false)
        .await?;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let out = match &template {
                Some(t) => t.render(&ev),
                None => {
                    let ns = ev["timeNano"].as_u64().unwrap_or(0);
                    let when = berth_types::time::rfc3339(
                        (ns / 1_000_000_000) as i64,
                        (ns % 1_000_000_000) as u32,
                    );
                    let attrs: Vec<String> = ev["Actor"]["Attributes"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", format::plain(v)))
                        .collect();
                    format!(
                        "{when} {} {} {} ({})",
                        format::plain(&ev["Type"]),
                        format::plain(&ev["Action"]),
                        format::plain(&ev["Actor"]["ID"]),
                        attrs.join(", ")
                    )
                }
            };
            println!("{out}");
            let _ = std::io::stdout().flush();
        }
    }
    Ok(0)
}

/// One row of `docker stats` from a stats sample, with Docker's arithmetic.
fn stats_view(v: &Value, no_trunc: bool) -> Value {
    let cpu = &v["cpu_stats"];
    let pre = &v["precpu_stats"];
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    let cpu_delta = f(&cpu["cpu_usage"]["total_usage"]) - f(&pre["cpu_usage"]["total_usage"]);
    let sys_delta = f(&cpu["system_cpu_usage"]) - f(&pre["system_cpu_usage"]);
    let online = f(&cpu["online_cpus"]).max(1.0);
    let cpu_pct = if sys_delta > 0.0 && cpu_delta > 0.0 {
        cpu_delta / sys_delta * online * 100.0
    } else {
        0.0
    };
    let mem = &v["memory_stats"];
    // Docker leaves the page cache out: total_inactive_file on v1, inactive_file on v2.
    let cache = f(&mem["stats"]["total_inactive_file"]).max(f(&mem["stats"]["inactive_file"]));
    let used = (f(&mem["usage"]) - cache).max(0.0);
    let limit = f(&mem["limit"]);
    let mem_pct = if limit > 0.0 {
        used / limit * 100.0
    } else {
        0.0
    };
    let id = v["id"].as_str().unwrap_or("");
    json!({
        "ID": if no_trunc { id.to_string() } else { id.chars().take(12).collect() },
        "Container": if no_trunc { id.to_string() } else { id.chars().take(12).collect() },
        "Name": v["name"].as_str().unwrap_or("").trim_start_matches('/'),
        "CPUPerc": format!("{cpu_pct:.2}%"),
        "MemUsage": format!("{} / {}", human_binary(used), human_binary(limit)),
        "MemPerc": format!("{mem_pct:.2}%"),
        "NetIO": "0B / 0B",
        "BlockIO": "0B / 0B",
        "PIDs": format::plain(&v["pids_stats"]["current"]).replace("<no value>", "0"),
    })
}

async fn stats(
    c: &Client,
    all: bool,
    no_stream: bool,
    no_trunc: bool,
    format: Option<String>,
    containers: Vec<String>,
) -> Result<i32, Error> {
    let names: Vec<String> = if containers.is_empty() {
        let list = c
            .json(Method::GET, &format!("/containers/json?all={all}"), None)
            .await?;
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["Id"].as_str().map(String::from))
            .collect()
    } else {
        containers
    };
    let default = "table {{.Container}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";
    let title = |f: &str| -> String {
        match f {
            "Container" => "CONTAINER ID",
            "ID" => "ID",
            "Name" => "NAME",
            "CPUPerc" => "CPU %",
            "MemUsage" => "MEM USAGE / LIMIT",
            "MemPerc" => "MEM %",
            "NetIO" => "NET I/O",
            "BlockIO" => "BLOCK I/O",
            "PIDs" => "PIDS",
            other => return other.to_uppercase(),
        }
        .to_string()
    };
    loop {
        let mut rows = Vec::new();
        for n in &names {
            let v = c
                .json(
                    Method::GET,
                    &format!("/containers/{}/stats?stream=false", q(n)),
                    None,
                )
                .await?;
            rows.push(stats_view(&v, no_trunc));
        }
        let out =
            format::render_list(&rows, format.as_deref(), default, &title).map_err(Error::Other)?;
        if no_stream {
            print!("{out}");
            return Ok(0);
        }
        // Redraw in place, as docker stats does.
        print!("\x1b[2J\x1b[H{out}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
}

/// `container:path`, or None for a local path. A name has no '/' before its colon.
fn container_path(s: &str) -> Option<(&str, &str)> {
    let (c, p) = s.split_once(':')?;
    (!c.is_empty() && !c.contains('/')).then_some((c, p))
}

async fn cp(c: &Client, src: &str, dst: &str, archive: bool) -> Result<i32, Error> {
    use http_body_util::BodyExt;
    match (container_path(src), container_path(dst)) {
        (Some((ctr, path)), None) => {
            let resp = c
                .send(
                    Method::GET,
                    &format!("/containers/{}/archive?path={}", q(ctr), q(path)),
                    client::empty(),
                    None,
                    false,
                )
                .await?;
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Other(e.to_string()))?
                .to_bytes();
            if dst == "-" {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&bytes)
                    .map_err(|e| Error::Other(e.to_string()))?;
                return Ok(0);
            }
            let target = std::path::Path::new(dst);
            // Into an existing directory: under its own name; otherwise: as `dst`.
            let (into, rename) = if target.is_dir() {
                (target.to_path_buf(), None)
            } else {
                let parent = target
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if !parent.is_dir() {
                    return Err(Error::Other(format!(
                        "destination directory {} does not exist",
                        parent.display()
                    )));
                }
                (parent.to_path_buf(), target.file_name().map(PathBuf::from))
            };
            let mut ar = tar::Archive::new(std::io::Cursor::new(bytes));
            ar.set_preserve_permissions(true);
            let err = |e: std::io::Error| Error::Other(e.to_string());
            match rename {
                // Archive::unpack keeps every entry (and links it makes) inside `into`.
                None => ar.unpack(&into).map_err(err)?,
                Some(name) => {
                    let tmp = tempfile::Builder::new()
                        .prefix(".berth-cp-")
                        .tempdir_in(&into)
                        .map_err(err)?;
                    ar.unpack(tmp.path()).map_err(err)?;
                    let top = std::fs::read_dir(tmp.path())
                        .map_err(err)?
                        .next()
                        .ok_or_else(|| Error::Other("empty archive".into()))?
                        .map_err(err)?;
                    std::fs::rename(top.path(), into.join(name)).map_err(err)?;
                }
            }
            Ok(0)
        }
        (None, Some((ctr, path))) => {
            let (body, dest) = if src == "-" {
                (client::reader(tokio::io::stdin()), path.to_string())
            } else {
                let source = std::path::Path::new(src);
                if std::fs::symlink_metadata(source).is_err() {
                    return Err(Error::Other(format!(
                        "lstat {}: no such file or directory",
                        source.display()
                    )));
                }
                // Where it lands: into an existing directory under its own name, else as
                // the last component of the destination, in its parent.
                let stat = c
                    .send(
                        Method::HEAD,
                        &format!("/containers/{}/archive?path={}", q(ctr), q(path)),
                        client::empty(),
                        None,
                        false,
                    )
                    .await;
                let is_dir = match &stat {
                    Ok(r) => r
                        .headers()
                        .get("x-docker-container-path-stat")
                        .and_then(|v| v.to_str().ok())
                        .and_then(decode_stat)
                        .is_some_and(|m| m & (1 << 31) != 0),
                    Err(_) => false,
                };
                let (dir, name) = if is_dir {
                    (
                        path.to_string(),
                        source
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| ".".into()),
                    )
                } else {
                    let p = std::path::Path::new(path);
                    (
                        p.parent()
                            .map(|x| x.to_string_lossy().into_owned())
                            .filter(|x| !x.is_empty())
                            .unwrap_or_else(|| "/".into()),
                        p.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    )
                };
                let mut b = tar::Builder::new(Vec::new());
                b.follow_symlinks(false);
                let md =
                    std::fs::symlink_metadata(source).map_err(|e| Error::Other(e.to_string()))?;
                let r = if md.is_dir() {
                    b.append_dir_all(&name, source)
                } else {
                    b.append_path_with_name(source, &name)
                };
                r.map_err(|e| Error::Other(e.to_string()))?;
                let bytes = b.into_inner().map_err(|e| Error::Other(e.to_string()))?;
                (client::full(bytes), dir)
            };
            c.send(
                Method::PUT,
                &format!(
                    "/containers/{}/archive?path={}&copyUIDGID={archive}",
                    q(ctr),
                    q(&dest)
                ),
                body,
                Some("application/x-tar"),
                false,
            )
            .await?;
            Ok(0)
        }
        (Some(_), Some(_)) => Err(Error::Other(
            "copying between containers is not supported".into(),
        )),
        (None, None) => Err(Error::Other(
            "must specify at least one container source".into(),
        )),
    }
}

/// The `mode` of Docker's base64 path stat header.
fn decode_stat(b64: &str) -> Option<u64> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for ch in b64.bytes().filter(|&c| c != b'=') {
        let v = T.iter().position(|&t| t == ch)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    let v: Value = serde_json::from_slice(&out).ok()?;
    v["mode"].as_u64()
}

async fn simple_each(c: &Client, names: &[String], action: &str) -> Result<i32, Error> {
    call_each(c, Method::POST, names, |n| {
        format!("/containers/{}/{action}", q(n))
    })
    .await
}

/// One call per name (`path` makes each one's URL): prints the name on success, the
/// daemon's error otherwise; 1 if any failed.
async fn call_each(
    c: &Client,
    method: Method,
    names: &[String],
    path: impl Fn(&str) -> String,
) -> Result<i32, Error> {
    let mut status = 0;
    for n in names {
        match c.json(method.clone(), &path(n), None).await {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("{e}");
                status = 1;
            }
        }
    }
    Ok(status)
}

async fn stop_like(c: &Client, action: &str, a: StopArgs) -> Result<i32, Error> {
    let mut query = Vec::new();
    if let Some(t) = a.time {
        query.push(format!("t={t}"));
    }
    if let Some(s) = &a.signal {
        query.push(format!("signal={}", q(s)));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    call_each(c, Method::POST, &a.containers, |n| {
        format!("/containers/{}/{action}{query}", q(n))
    })
    .await
}

fn confirm(warning: &str) -> bool {
    eprint!("{warning}\nAre you sure you want to continue? [y/N] ");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    matches!(line.trim(), "y" | "Y" | "yes")
}

fn split_tag(r: &str) -> (String, String) {
    // A colon after the last slash separates the tag (a registry port comes before it).
    let slash = r.rfind('/').map_or(0, |i| i + 1);
    match r[slash..].rfind(':') {
        Some(i) => (r[..slash + i].to_string(), r[slash + i + 1..].to_string()),
        None => (r.to_string(), "latest".to_string()),
    }
}

async fn create(c: &Client, a: &RunArgs) -> Result<String, Error> {
    let body = create_body(a).map_err(|e| Error::Other(format!("invalid argument: {e}")))?;
    let path = match &a.name {
        Some(n) => format!("/containers/create?name={}", q(n)),
        None => "/containers/create".to_string(),
    };
    let pulled = |status: i32| {
        if status == 0 {
            Ok(())
        } else {
            // The pull printed its error; Docker exits 125 then.
            Err(Error::Other(String::new()))
        }
    };
    match a.pull.as_str() {
        "always" => {
            pulled(pull_image(c, &a.image, a.platform.as_deref(), false, true, false).await?)?
        }
        "missing" | "never" => {}
        other => {
            return Err(Error::Other(format!(
            "invalid pull option: '{other}': must be one of \"always\", \"missing\" or \"never\""
        )))
        }
    }
    match c.json(Method::POST, &path, Some(&body)).await {
        Ok(v) => Ok(v["Id"].as_str().unwrap_or("").to_string()),
        Err(e)
            if a.pull == "missing"
                && e.status() == 404
                && e.to_string().contains("No such image") =>
        {
            let shown = if a.image.contains(':') || a.image.contains('@') {
                a.image.clone()
            } else {
                format!("{}:latest", a.image)
            };
            eprintln!("Unable to find image '{shown}' locally");
            pulled(pull_image(c, &a.image, a.platform.as_deref(), false, true, false).await?)?;
            let v = c.json(Method::POST, &path, Some(&body)).await?;
            Ok(v["Id"].as_str().unwrap_or("").to_string())
        }
        Err(e) => Err(e),
    }
}

/// Docker's exit status for a container that could not be started.
fn start_failure_code(e: &Error) -> i32 {
    let m = e.to_string();
    if m.contains("executable file not found") || m.contains("no such file or directory") {
        code::NOT_FOUND
    } else if m.contains("permission denied") {
        code::NOT_EXECUTABLE
    } else {
        code::FAILED
    }
}

async fn run_container(c: &Client, a: RunArgs) -> Result<i32, Error> {
    if a.detach && a.rm && a.restart.as_deref().is_some_and(|r| r != "no") {
        return Err(Error::Other(
            "Conflicting options: --restart and --rm".into(),
        ));
    }
    let id = create(c, &a).await?;
    if a.detach {
        if let Err(e) = c
            .json(Method::POST, &format!("/containers/{id}/start"), None)
            .await
        {
            eprintln!("{e}");
            return Ok(start_failure_code(&e));
        }
        println!("{id}");
        return Ok(0);
    }
    let cond = if a.rm { "removed" } else { "next-exit" };
    attach_start_wait(c, &id, a.tty, a.interactive, cond, a.sig_proxy).await
}

/// attach, wait, start, pump, and the container's exit status.
pub(crate) async fn attach_start_wait(
    c: &Client,
    id: &str,
    tty: bool,
    stdin: bool,
    condition: &str,
    sig_proxy: bool,
) -> Result<i32, Error> {
    let conn = stream::attach(c, id, stdin, None).await?;
    let _proxy = (sig_proxy && !tty).then(|| stream::proxy_signals(c, id));
    let waiter = stream::wait_for_exit(c, id, condition);
    let raw = if tty && stdin && stream::is_terminal(std::io::stdin()) {
        stream::RawMode::enter()
    } else {
        None
    };
    if let Err(e) = c
        .json(Method::POST, &format!("/containers/{id}/start"), None)
        .await
    {
        drop(raw);
        waiter.abort();
        eprintln!("{e}");
        return Ok(start_failure_code(&e));
    }
    let resize = tty.then(|| stream::follow_resize(c, format!("/containers/{id}/resize")));
    let ended = stream::pump(conn, tty, stdin).await;
    drop(raw);
    if let Some(r) = resize {
        r.abort();
    }
    if let Ended::Detached = ended {
        waiter.abort();
        return Ok(0);
    }
    match waiter.await {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::Other(e.to_string())),
    }
}

async fn exec(c: &Client, a: ExecArgs) -> Result<i32, Error> {
    let body = json!({
        "AttachStdin": a.interactive && !a.detach,
        "AttachStdout": !a.detach,
        "AttachStderr": !a.detach,
        "Tty": a.tty,
        "Env": a.env,
        "Cmd": a.command,
        "User": a.user.unwrap_or_default(),
        "WorkingDir": a.workdir.unwrap_or_default(),
        "Privileged": a.privileged,
        "DetachKeys": a.detach_keys.unwrap_or_default(),
        "ConsoleSize": a.tty.then(crate::stream::terminal_size).flatten().map(|(h, w)| [h, w]),
    });
    let v = c
        .json(
            Method::POST,
            &format!("/containers/{}/exec", q(&a.container)),
            Some(&body),
        )
        .await?;
    let id = v["Id"].as_str().unwrap_or("").to_string();
    if a.detach {
        c.json(
            Method::POST,
            &format!("/exec/{id}/start"),
            Some(&stream::exec_start_body(true, a.tty)),
        )
        .await?;
        return Ok(0);
    }
    let conn = c
        .hijack(
            &format!("/exec/{id}/start"),
            Some(&stream::exec_start_body(false, a.tty)),
        )
        .await?;
    if pump_terminal(c, conn, a.tty, a.interactive, format!("/exec/{id}/resize")).await {
        return Ok(0);
    }
    let v = c
        .json(Method::GET, &format!("/exec/{id}/json"), None)
        .await?;
    Ok(v["ExitCode"].as_i64().unwrap_or(0) as i32)
}

async fn inspect(c: &Client, a: InspectArgs, kind: Option<&str>) -> Result<i32, Error> {
    let kind = kind.or(a.kind.as_deref());
    let template = a
        .format
        .as_deref()
        .map(Template::parse)
        .transpose()
        .map_err(Error::Other)?;
    let mut found = Vec::new();
    let mut status = 0;
    for n in &a.names {
        let container = if matches!(kind, None | Some("container")) {
            c.json(
                Method::GET,
                &format!("/containers/{}/json?size={}", q(n), a.size),
                None,
            )
            .await
            .ok()
        } else {
            None
        };
        let image = match container {
            Some(_) => None,
            None if matches!(kind, None | Some("image")) => c
                .json(Method::GET, &format!("/images/{}/json", q(n)), None)
                .await
                .ok(),
            None => None,
        };
        let volume = match (&container, &image) {
            (None, None) if matches!(kind, None | Some("volume")) => c
                .json(Method::GET, &format!("/volumes/{}", q(n)), None)
                .await
                .ok(),
            _ => None,
        };
        let v = container.or(image).or(volume);
        match v {
            Some(v) => found.push(v),
            None => {
                eprintln!("Error: No such object: {n}");
                status = 1;
            }
        }
    }
    match template {
        Some(t) => {
            for v in &found {
                println!("{}", t.render(v));
            }
        }
        None => println!("{}", pretty(&Value::Array(found))),
    }
    Ok(status)
}

/// JSON indented with four spaces, as docker inspect prints it.
pub(crate) fn pretty(v: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = v.serialize(&mut ser);
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn print_list(
    items: &[Value],
    fmt: Option<&str>,
    default: &str,
    title: fn(&str) -> String,
) -> Result<i32, Error> {
    let out = format::render_list(items, fmt, default, &title).map_err(Error::Other)?;
    print!("{out}");
    Ok(0)
}

fn ps_title(f: &str) -> String {
    match f {
        "ID" => "CONTAINER ID",
        "Image" => "IMAGE",
        "Command" => "COMMAND",
        "RunningFor" => "CREATED",
        "CreatedAt" => "CREATED AT",
        "Status" => "STATUS",
        "Ports" => "PORTS",
        "Names" => "NAMES",
        "Size" => "SIZE",
        "Labels" => "LABELS",
        "State" => "STATE",
        "Mounts" => "MOUNTS",
        "Networks" => "NETWORKS",
        other => return other.to_uppercase(),
    }
    .to_string()
}

/// One line of `history`, with Docker's fields: the 12-character ID (or `<missing>` for
/// steps of another image's making), CreatedBy cut to 45 characters unless `--no-trunc`,
/// and with `--human=false` the time in RFC 3339 and the size in bytes.
fn history_view(h: &Value, human: bool, no_trunc: bool) -> Value {
    let id = h["Id"].as_str().unwrap_or("<missing>");
    let id = if no_trunc || id == "<missing>" {
        id.to_string()
    } else {
        id.trim_start_matches("sha256:").chars().take(12).collect()
    };
    let created = h["Created"].as_i64().unwrap_or(0);
    let at = berth_types::time::rfc3339(created, 0).replace(".000000000Z", "Z");
    let by = h["CreatedBy"]
        .as_str()
        .unwrap_or("")
        .replace(['\t', '\n'], " ");
    let by = if !no_trunc && by.chars().count() > 45 {
        format!("{}…", by.chars().take(44).collect::<String>())
    } else {
        by
    };
    let size = h["Size"].as_i64().unwrap_or(0);
    json!({
        "ID": id,
        "CreatedSince": if created <= 0 {
            "N/A".to_string()
        } else if human {
            format!("{} ago", berth_types::time::human_duration(now() - created))
        } else {
            at.clone()
        },
        "CreatedAt": at,
        "CreatedBy": by,
        "Size": if human { human_size(size as f64) } else { size.to_string() },
        "Comment": h["Comment"].as_str().unwrap_or(""),
    })
}

fn history_title(f: &str) -> String {
    match f {
        "ID" => "IMAGE",
        "CreatedSince" => "CREATED",
        "CreatedAt" => "CREATED AT",
        "CreatedBy" => "CREATED BY",
        "Size" => "SIZE",
        "Comment" => "COMMENT",
        other => return other.to_uppercase(),
    }
    .to_string()
}

/// `attach`: the container's streams here until it exits (its exit code) or the detach
/// keys are typed (0); stdin only when the container keeps it open and `--no-stdin` is
/// not given, as Docker does.
async fn attach(
    c: &Client,
    name: &str,
    no_stdin: bool,
    sig_proxy: bool,
    detach_keys: Option<String>,
) -> Result<i32, Error> {
    let info = c
        .json(Method::GET, &format!("/containers/{}/json", q(name)), None)
        .await?;
    let id = info["Id"].as_str().unwrap_or(name).to_string();
    if info["State"]["Paused"].as_bool() == Some(true) {
        return Err(Error::Other(
            "You cannot attach to a paused container, unpause it first".into(),
        ));
    }
    if info["State"]["Running"].as_bool() != Some(true) {
        return Err(Error::Other(
            "You cannot attach to a stopped container, start it first".into(),
        ));
    }
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let stdin = !no_stdin && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    let conn = stream::attach(c, &id, stdin, detach_keys.as_deref()).await?;
    let _proxy = (sig_proxy && !tty).then(|| stream::proxy_signals(c, &id));
    if pump_terminal(c, conn, tty, stdin, format!("/containers/{id}/resize")).await {
        return Ok(0);
    }
    let v = c
        .json(Method::POST, &format!("/containers/{id}/wait"), None)
        .await?;
    Ok(v["StatusCode"].as_i64().unwrap_or(0) as i32)
}

/// Copies a hijacked connection to and from this terminal, raw while input goes to a pty,
/// telling `resize` the terminal's size as it changes. True when the detach keys ended it.
async fn pump_terminal(
    c: &Client,
    conn: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    tty: bool,
    stdin: bool,
    resize: String,
) -> bool {
    let raw = if tty && stdin && stream::is_terminal(std::io::stdin()) {
        stream::RawMode::enter()
    } else {
        None
    };
    let resize = tty.then(|| stream::follow_resize(c, resize));
    let ended = stream::pump(conn, tty, stdin).await;
    drop(raw);
    if let Some(r) = resize {
        r.abort();
    }
    matches!(ended, Ended::Detached)
}

fn image_title(f: &str) -> String {
    match f {
        "Repository" => "REPOSITORY",
        "Tag" => "TAG",
        "ID" => "IMAGE ID",
        "CreatedSince" => "CREATED",
        "CreatedAt" => "CREATED AT",
        "Size" => "SIZE",
        "Digest" => "DIGEST",
        other => return other.to_uppercase(),
    }
    .to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units.
fn human_size(n: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    // %.3g: three significant digits, trailing zeros dropped.
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[i])
}

fn human_binary(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.4}{}", units[i])
        .replace(".0000", "")
        .to_string()
}

fn ps_view(v: &Value, no_trunc: bool) -> Value {
    let id = v["Id"].as_str().unwrap_or("");
    let cmd = v["Command"].as_str().unwrap_or("");
    let command = if no_trunc || cmd.chars().count() <= 20 {
        format!("\"{cmd}\"")
    } else {
        format!("\"{}…\"", cmd.chars().take(19).collect::<String>())
    };
    let created = v["Created"].as_i64().unwrap_or(0);
    let names: Vec<String> = v["Names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(|n| n.trim_start_matches('/').to_string()))
        .collect();
    let labels: Vec<String> = v["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", format::plain(v)))
        .collect();
    let size = match (v["SizeRw"].as_f64(), v["SizeRootFs"].as_f64()) {
        (Some(rw), Some(root)) => format!("{} (virtual {})", human_size(rw), human_size(root)),
        _ => String::new(),
    };
    json!({
        "ID": if no_trunc { id.to_string() } else { id.chars().take(12).collect() },
        "Image": v["Image"],
        "Command": command,
        "CreatedAt": berth_types::time::rfc3339(created, 0).replace('T', " ").replace(".000000000Z", " +0000 UTC"),
        "RunningFor": format!("{} ago", berth_types::time::human_duration(now() - created)),
        "Ports": ports_text(&v["Ports"]),
        "Status": v["Status"],
        "State": v["State"],
        "Names": names.join(","),
        "Labels": labels.join(","),
        "Size": size,
        "Mounts": "",
        "Networks": v["HostConfig"]["NetworkMode"],
    })
}

fn image_views(img: &Value, no_trunc: bool) -> Vec<Value> {
    let id = img["Id"].as_str().unwrap_or("");
    let short = if no_trunc {
        id.to_string()
    } else {
        id.trim_start_matches("sha256:").chars().take(12).collect()
    };
    let created = img["Created"].as_i64().unwrap_or(0);
    let size = human_size(img["Size"].as_f64().unwrap_or(0.0));
    let digest = img["RepoDigests"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|d| d.as_str())
        .and_then(|d| d.split_once('@').map(|(_, h)| h.to_string()))
        .unwrap_or_else(|| "<none>".into());
    let view = |repo: &str, tag: &str| {
        json!({
            "Repository": repo, "Tag": tag, "ID": short, "Digest": digest,
            "CreatedSince": format!("{} ago", berth_types::time::human_duration(now() - created)),
            "CreatedAt": berth_types::time::rfc3339(created, 0).replace('T', " ").replace(".000000000Z", " +0000 UTC"),
            "Size": size,
        })
    };
    let tags: Vec<&str> = img["RepoTags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .filter(|t| *t != "<none>:<none>")
        .collect();
    if tags.is_empty() {
        return vec![view("<none>", "<none>")];
    }
    tags.iter()
        .map(|t| {
            let (r, tag) = split_tag(t);
            view(&r, &tag)
        })
        .collect()
}

/// Streams a logs/attach body to stdout/stderr (demultiplexed unless tty).
async fn copy_body(mut body: hyper::body::Incoming, tty: bool) {
    use http_body_util::BodyExt;
    use std::io::Write;
    let mut demux = client::Demux::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if tty {
            let _ = std::io::stdout().write_all(&data);
            let _ = std::io::stdout().flush();
            continue;
        }
        for (stream, payload) in demux.push(&data) {
            if stream == 2 {
                let _ = std::io::stderr().write_all(&payload);
            } else {
                let _ = std::io::stdout().write_all(&payload);
                let _ = std::io::stdout().flush();
            }
        }
    }
}

/// One prune call: prints what went as Docker does ("Deleted Containers:" and the ids);
/// returns the bytes reclaimed.
async fn prune(c: &Client, path: &str, key: &str, what: &str) -> Result<f64, Error> {
    let v = c.json(Method::POST, path, None).await?;
    let gone = v[key].as_array().cloned().unwrap_or_default();
    if !gone.is_empty() {
        println!("Deleted {what}:");
        for g in gone {
            match g.as_object() {
                // Images: {"Untagged": ...} / {"Deleted": ...} entries.
                Some(m) => m
                    .iter()
                    .for_each(|(k, v)| println!("{}: {}", k.to_lowercase(), format::plain(v))),
                None => println!("{}", format::plain(&g)),
            }
        }
        println!();
    }
    Ok(v["SpaceReclaimed"].as_f64().unwrap_or(0.0))
}

async fn prune_images(c: &Client, all: bool) -> Result<f64, Error> {
    let filters = if all {
        format!("?filters={}", q(r#"{"dangling":["false"]}"#))
    } else {
        String::new()
    };
    prune(
        c,
        &format!("/images/prune{filters}"),
        "ImagesDeleted",
        "Images",
    )
    .await
}

async fn prune_volumes(c: &Client, all: bool) -> Result<f64, Error> {
    let filters = if all {
        format!("?filters={}", q(r#"{"all":["true"]}"#))
    } else {
        String::new()
    };
    prune(
        c,
        &format!("/volumes/prune{filters}"),
        "VolumesDeleted",
        "Volumes",
    )
    .await
}

/// A tar from the daemon to `-o FILE` or to stdout (never to a terminal).
/// `--secret id=NAME[,src=FILE|,env=VAR]` (`source`, `type=file|env` too); with only an
/// id, the variable of that name if set, else the file of that name, as buildx reads it.
fn build_secrets(specs: &[String]) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        let mut kind = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(v.to_string()),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", v)) => kind = Some(v.to_string()),
                _ => {
                    return Err(Error::Other(format!(
                        "--secret {spec}: expected id=NAME[,src=FILE|,env=VAR]"
                    )))
                }
            }
        }
        let id = id
            .or_else(|| src.clone())
            .or_else(|| env.clone())
            .ok_or_else(|| Error::Other(format!("--secret {spec}: no id")))?;
        if kind.as_deref() == Some("env") && env.is_none() {
            env = src.take().or_else(|| Some(id.clone()));
        }
        let bytes = match (env, src) {
            (Some(v), _) => std::env::var_os(&v)
                .map(|x| x.into_encoded_bytes())
                .ok_or_else(|| Error::Other(format!("--secret {spec}: ${v} is not set")))?,
            (None, Some(f)) => {
                std::fs::read(&f).map_err(|e| Error::Other(format!("--secret {spec}: {f}: {e}")))?
            }
            (None, None) => match std::env::var_os(&id) {
                Some(v) => v.into_encoded_bytes(),
                None => std::fs::read(&id)
                    .map_err(|e| Error::Other(format!("--secret {spec}: {id}: {e}")))?,
            },
        };
        out.insert(id, bytes);
    }
    Ok(out)
}

/// Where `berth build -o` puts the result.
#[derive(Debug, PartialEq)]
enum BuildOutput {
    /// The image's files in a directory.
    Local(PathBuf),
    /// Its files as one tar (None: stdout).
    Tar(Option<PathBuf>),
    /// `docker save`'s archive, an OCI layout and a docker archive at once.
    Archive(Option<PathBuf>),
    /// Kept as an image (what a build does anyway).
    Image,
    /// Kept and pushed.
    Push,
}

impl BuildOutput {
    fn parse(spec: &str) -> Result<BuildOutput, Error> {
        if !spec.contains('=') {
            return Ok(match spec {
                "-" => BuildOutput::Tar(None),
                dir => BuildOutput::Local(PathBuf::from(dir)),
            });
        }
        let mut kv = BTreeMap::new();
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            kv.insert(k.to_string(), v.to_string());
        }
        let dest = || -> Option<PathBuf> {
            kv.get("dest")
                .filter(|d| d.as_str() != "-")
                .map(PathBuf::from)
        };
        let truthy = |k: &str| kv.get(k).is_some_and(|v| v == "true" || v.is_empty());
        match kv.get("type").map(String::as_str) {
            Some("local") => dest()
                .map(BuildOutput::Local)
                .ok_or_else(|| Error::Other(format!("--output {spec}: dest= is required"))),
            Some("tar") => Ok(BuildOutput::Tar(dest())),
            Some("oci" | "docker") => Ok(BuildOutput::Archive(dest())),
            Some("image") if truthy("push") => Ok(BuildOutput::Push),
            Some("image") => Ok(BuildOutput::Image),
            Some("registry") => Ok(BuildOutput::Push),
            Some(o) => Err(Error::Other(format!(
                "--output {spec}: unknown type {o:?} (local, tar, oci, docker, image, registry)"
            ))),
            None => Err(Error::Other(format!("--output {spec}: type= is required"))),
        }
    }
}

/// Writes a built image where `-o` says.
async fn export_build(
    c: &Client,
    id: &str,
    tag: Option<&String>,
    o: &BuildOutput,
) -> Result<(), Error> {
    match o {
        BuildOutput::Image | BuildOutput::Push => Ok(()),
        BuildOutput::Archive(dest) => {
            let name = tag.cloned().unwrap_or_else(|| id.to_string());
            let path = format!("/images/get?names={}", q(&name));
            download(c, &path, dest.as_deref(), "exporting the image:").await?;
            Ok(())
        }
        BuildOutput::Tar(dest) => {
            with_image_files(c, id, |path| async move {
                download(c, &path, dest.as_deref(), "exporting the image:").await?;
                Ok(())
            })
            .await
        }
        BuildOutput::Local(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Other(format!("{}: {e}", dir.display())))?;
            let tmp = dir.join(format!(".berth-export-{}", std::process::id()));
            let t = tmp.clone();
            with_image_files(c, id, |path| async move {
                download(c, &path, Some(&t), "exporting the image:").await?;
                Ok(())
            })
            .await?;
            let d = dir.clone();
            let t = tmp.clone();
            let unpacked = tokio::task::spawn_blocking(move || -> Result<(), String> {
                let f = std::fs::File::open(&t).map_err(|e| e.to_string())?;
                let mut a = tar::Archive::new(f);
                a.set_preserve_permissions(true);
                // `unpack` keeps every entry (and what links point through) inside `d`.
                a.unpack(&d).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
            let _ = std::fs::remove_file(&tmp);
            unpacked.map_err(|e| Error::Other(format!("exporting to {}: {e}", dir.display())))
        }
    }
}

/// Runs `f` with the export path of a container made (not started) from `image`, then
/// removes the container.
async fn with_image_files<'a, F, Fut>(c: &'a Client, image: &str, f: F) -> Result<(), Error>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>> + 'a,
{
    let body = json!({"Image": image, "Cmd": ["/"], "Labels": {"org.berth.build": "true"}});
    let v = c
        .json(Method::POST, "/containers/create", Some(&body))
        .await?;
    let cid = v["Id"].as_str().unwrap_or("").to_string();
    let r = f(format!("/containers/{cid}/export")).await;
    let _ = c
        .json(
            Method::DELETE,
            &format!("/containers/{cid}?force=true"),
            None,
        )
        .await;
    r
}

async fn download(
    c: &Client,
    path: &str,
    output: Option<&std::path::Path>,
    what: &str,
) -> Result<i32, Error> {
    let resp = c
        .send(Method::GET, path, client::empty(), None, false)
        .await?;
    let out: Box<dyn std::io::Write> = match output {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| Error::Other(format!("{what} {}: {e}", p.display())))?,
        ),
        None => {
            if stream::is_terminal(std::io::stdout()) {
                return Err(Error::Other(
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect".into(),
                ));
            }
            Box::new(std::io::stdout())
        }
    };
    write_body(resp.into_body(), out).await?;
    Ok(0)
}

async fn write_body(
    mut body: hyper::body::Incoming,
    mut out: Box<dyn std::io::Write>,
) -> Result<(), Error> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Other(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .map_err(|e| Error::Other(e.to_string()))?;
        }
    }
    out.flush().map_err(|e| Error::Other(e.to_string()))
}

/// Progress streams (`{"stream": ...}`, `{"status": ...}`, `{"errorDetail": ...}`).
async fn print_json_stream(body: hyper::body::Incoming) -> Result<i32, Error> {
    progress_stream(body, false, false).await
}

/// A JSON-message stream (pull, push, load, import) printed as it arrives: on a terminal
/// one line per layer with a progress bar, redrawn in place as Docker does; otherwise the
/// milestones as plain lines. With `quiet` only errors. Exit status 1 after an error.
async fn progress_stream(
    body: hyper::body::Incoming,
    quiet: bool,
    to_stderr: bool,
) -> Result<i32, Error> {
    Ok(progress_stream_with_id(body, quiet, to_stderr).await?.0)
}

/// [`progress_stream`], with the image ID a build's `aux` message gave.
async fn progress_stream_with_id(
    mut body: hyper::body::Incoming,
    quiet: bool,
    to_stderr: bool,
) -> Result<(i32, Option<String>), Error> {
    use http_body_util::BodyExt;
    let tty = !quiet
        && if to_stderr {
            stream::is_terminal(std::io::stderr())
        } else {
            stream::is_terminal(std::io::stdout())
        };
    let mut view = Progress::new(tty, quiet, to_stderr);
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Other(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                view.line(&String::from_utf8_lossy(&line));
            }
        }
    }
    view.line(&String::from_utf8_lossy(&buf));
    let id = view.aux_id.take();
    Ok((view.finish(), id))
}

/// The state of [`progress_stream`]'s output.
struct Progress {
    /// `{"aux": {"ID": ...}}`: the image a build made.
    aux_id: Option<String>,
    bars: Option<indicatif::MultiProgress>,
    layers: Vec<(String, indicatif::ProgressBar)>,
    quiet: bool,
    to_stderr: bool,
    status: i32,
}

impl Progress {
    fn new(tty: bool, quiet: bool, to_stderr: bool) -> Progress {
        let bars = tty.then(|| {
            let target = if to_stderr {
                indicatif::ProgressDrawTarget::stderr()
            } else {
                indicatif::ProgressDrawTarget::stdout()
            };
            indicatif::MultiProgress::with_draw_target(target)
        });
        Progress {
            aux_id: None,
            bars,
            layers: Vec::new(),
            quiet,
            to_stderr,
            status: 0,
        }
    }

    fn say(&self, s: &str) {
        let s = s.strip_suffix('\n').unwrap_or(s);
        match &self.bars {
            Some(b) => {
                let _ = b.println(s);
            }
            None if self.to_stderr => eprintln!("{s}"),
            None => println!("{s}"),
        }
    }

    fn line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            if !self.quiet {
                self.say(line);
            }
            return;
        };
        if let Some(id) = v["aux"]["ID"].as_str() {
            self.aux_id = Some(id.to_string());
            return;
        }
        if let Some(e) = v["error"].as_str() {
            match &self.bars {
                Some(b) => b.suspend(|| eprintln!("{e}")),
                None => eprintln!("{e}"),
            }
            // A failed build step's exit code, as the docker CLI exits with it.
            self.status = v["errorDetail"]["code"]
                .as_i64()
                .filter(|c| *c > 0 && *c < 256)
                .unwrap_or(1) as i32;
            return;
        }
        if self.quiet {
            return;
        }
        if let Some(s) = v["stream"].as_str() {
            match &self.bars {
                Some(b) => b.suspend(|| print!("{s}")),
                None if self.to_stderr => eprint!("{s}"),
                None => print!("{s}"),
            }
            return;
        }
        let Some(status) = v["status"].as_str() else {
            return;
        };
        let total = v["progressDetail"]["total"].as_u64().unwrap_or(0);
        let current = v["progressDetail"]["current"].as_u64().unwrap_or(0);
        let Some(id) = v["id"].as_str() else {
            self.say(status);
            return;
        };
        let Some(bars) = &self.bars else {
            // Byte counts are for a progress bar; lines keep the milestones.
            if total == 0 && status != "Downloading" && status != "Extracting" {
                self.say(&format!("{id}: {status}"));
            }
            return;
        };
        let bar = match self.layers.iter().find(|(i, _)| i == id) {
            Some((_, b)) => b.clone(),
            None => {
                let b = bars.add(indicatif::ProgressBar::new(0));
                b.set_prefix(id.to_string());
                self.layers.push((id.to_string(), b.clone()));
                b
            }
        };
        let style = if total > 0 {
            bar.set_length(total);
            bar.set_position(current);
            "{prefix}: {msg:<12} [{bar:50}] {bytes}/{total_bytes}"
        } else {
            "{prefix}: {msg}"
        };
        if let Ok(st) = indicatif::ProgressStyle::with_template(style) {
            bar.set_style(st.progress_chars("=> "));
        }
        bar.set_message(status.to_string());
    }

    fn finish(self) -> i32 {
        for (_, b) in &self.layers {
            b.abandon();
        }
        self.status
    }
}

/// A file added to a build context: (its name there, its bytes).
type ExtraFile = (String, Vec<u8>);

/// The Dockerfile a build names, as the daemon finds it in the context: `-f` is read
/// from the current directory; one inside the context is named by its path there, one
/// from stdin (`-`) or from outside goes into the context tar under a name of its own.
fn dockerfile_of(
    file: Option<&str>,
    context: &std::path::Path,
) -> Result<(Option<String>, Option<ExtraFile>), Error> {
    let generated = || format!(".dockerfile.{}", berth_types::random_hex(20));
    let Some(f) = file else {
        return Ok((None, None));
    };
    if f == "-" {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)
            .map_err(|e| Error::Other(e.to_string()))?;
        let name = generated();
        return Ok((Some(name.clone()), Some((name, text))));
    }
    let canon = |p: &std::path::Path| {
        std::fs::canonicalize(p).map_err(|e| Error::Other(format!("{}: {e}", p.display())))
    };
    let file = canon(std::path::Path::new(f))?;
    match file.strip_prefix(canon(context)?) {
        Ok(rel) => Ok((Some(rel.to_string_lossy().into_owned()), None)),
        Err(_) => {
            let text = std::fs::read(&file).map_err(|e| Error::Other(format!("{f}: {e}")))?;
            let name = generated();
            Ok((Some(name.clone()), Some((name, text))))
        }
    }
}

/// A tar of just these files (what goes beside a context the daemon reads in place).
fn context_tar_of(files: &[ExtraFile]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice())
                .map_err(|e| e.to_string())?;
        }
        b.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A build context as a tar: the directory's files in name order, without what its
/// `.dockerignore` leaves out (except `keep`: the Dockerfile and .dockerignore), plus
/// `extra` (a Dockerfile from stdin or from outside the context).
fn context_tar(
    dir: &std::path::Path,
    keep: &[String],
    extra: Option<ExtraFile>,
    out: impl std::io::Write,
) -> Result<(), String> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(t) => berth_types::ignore::Ignore::parse(&t),
        Err(_) => Default::default(),
    };
    {
        let mut b = tar::Builder::new(out);
        b.follow_symlinks(false);
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let abs = if rel.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(&rel)
            };
            let mut names: Vec<String> = std::fs::read_dir(&abs)
                .map_err(|e| format!("reading the context {}: {e}", abs.display()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let mut dirs = Vec::new();
            for name in names {
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let full = dir.join(&path);
                let meta = std::fs::symlink_metadata(&full)
                    .map_err(|e| format!("{}: {e}", full.display()))?;
                let excluded = ignore.excludes(&path) && !keep.contains(&path);
                if meta.is_dir() {
                    if !excluded {
                        b.append_dir(&path, &full)
                            .map_err(|e| format!("{path}: {e}"))?;
                    }
                    // An exception may name something below an excluded directory.
                    if !excluded || ignore.has_exceptions() {
                        dirs.push(path);
                    }
                } else if !excluded {
                    b.append_path_with_name(&full, &path)
                        .map_err(|e| format!("{path}: {e}"))?;
                }
            }
            // Depth first, in name order.
            stack.extend(dirs.into_iter().rev());
        }
        if let Some((name, data)) = extra {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..])
                .map_err(|e| e.to_string())?;
        }
        b.finish().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The `X-Registry-Auth` header for the registry of `image`, from the docker CLI's
/// config.json (nothing when no credentials are stored).
fn registry_auth(image: &str) -> Result<Vec<(&'static str, String)>, Error> {
    let Ok(r) = image.parse::<berth_types::Reference>() else {
        // The daemon tells what is wrong with the name.
        return Ok(Vec::new());
    };
    match dockercfg::credentials(r.domain()) {
        Ok(a) if !a.is_empty() => Ok(vec![("X-Registry-Auth", a.to_header())]),
        Ok(_) => Ok(Vec::new()),
        Err(e) => {
            eprintln!("WARNING: Error loading config file: {e}");
            Ok(Vec::new())
        }
    }
}

/// `pull`, and the pull `run` and `create` make for a missing image (its progress on
/// stderr then, as Docker prints it).
async fn pull_image(
    c: &Client,
    image: &str,
    platform: Option<&str>,
    quiet: bool,
    to_stderr: bool,
    all_tags: bool,
) -> Result<i32, Error> {
    // The daemon takes the name and the tag (or digest) apart, as from the docker CLI;
    // no tag at all asks for every tag.
    let mut path = if all_tags {
        format!("/images/create?fromImage={}", q(image))
    } else {
        let (name, tag) = match image.split_once('@') {
            Some((n, d)) => (n.to_string(), d.to_string()),
            None => split_tag(image),
        };
        format!("/images/create?fromImage={}&tag={}", q(&name), q(&tag))
    };
    if let Some(p) = platform {
        path.push_str(&format!("&platform={}", q(p)));
    }
    let resp = c
        .send_with(
            Method::POST,
            &path,
            client::empty(),
            None,
            false,
            &registry_auth(image)?,
        )
        .await?;
    let status = progress_stream(resp.into_body(), quiet, to_stderr).await?;
    if quiet && status == 0 {
        match image.parse::<berth_types::Reference>() {
            Ok(r) => println!("{r}"),
            Err(_) => println!("{image}"),
        }
    }
    Ok(status)
}

/// `search`: the daemon asks Docker Hub, or the private registry the term names; the
/// table is Docker's (descriptions cut at 45 characters unless `--no-trunc`).
async fn search(
    c: &Client,
    term: &str,
    limit: Option<usize>,
    filter: &[String],
    format: Option<&str>,
    no_trunc: bool,
) -> Result<i32, Error> {
    let mut path = format!("/images/search?term={}", q(term));
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    if !filter.is_empty() {
        path.push_str(&format!("&filters={}", filters_json(filter)));
    }
    let registry = berth_distribution_host(term);
    let auth = registry_auth(&format!("{}/x", registry.unwrap_or("docker.io")))?;
    let resp = c
        .send_with(Method::GET, &path, client::empty(), None, false, &auth)
        .await?;
    let v = client::json_body(resp).await?;
    let items: Vec<Value> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let desc = r["description"]
                .as_str()
                .unwrap_or_default()
                .replace(['\n', '\r'], " ");
            let bool_col = |b: bool| if b { "[OK]" } else { "" };
            json!({
                "Name": r["name"],
                "Description": if no_trunc { desc } else { ellipsis(&desc, 45) },
                "StarCount": r["star_count"].as_u64().unwrap_or(0).to_string(),
                "IsOfficial": bool_col(r["is_official"].as_bool().unwrap_or(false)),
                "IsAutomated": bool_col(r["is_automated"].as_bool().unwrap_or(false)),
            })
        })
        .collect();
    print_list(
        &items,
        format,
        "table {{.Name}}\t{{.Description}}\t{{.StarCount}}\t{{.IsOfficial}}",
        |f| match f {
            "StarCount" => "STARS".into(),
            "IsOfficial" => "OFFICIAL".into(),
            "IsAutomated" => "AUTOMATED".into(),
            other => other.to_uppercase(),
        },
    )
}

/// The registry a search term names, as the daemon reads it.
fn berth_distribution_host(term: &str) -> Option<&str> {
    match term.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => Some(first),
        _ => None,
    }
}

/// Docker's `formatter.Ellipsis`: at most `width` characters, the last one `…` when cut.
fn ellipsis(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `manifest inspect`: the manifest (or index) as its registry serves it, indented as
/// the docker CLI prints it; `-v` adds its name and descriptor.
async fn manifest_inspect(c: &Client, name: &str, verbose: bool) -> Result<i32, Error> {
    let full = match name.parse::<berth_types::Reference>() {
        Ok(r) => r.to_string(),
        Err(e) => return Err(Error::Other(e.to_string())),
    };
    let auth = registry_auth(&full)?;
    let get = |what: &'static str| {
        let path = format!("/distribution/{full}/{what}");
        let auth = auth.clone();
        async move {
            c.send_with(Method::GET, &path, client::empty(), None, false, &auth)
                .await
        }
    };
    let raw = client::bytes_body(get("manifest").await?).await?;
    if !verbose {
        println!("{}", format::indent_json(&String::from_utf8_lossy(&raw)));
        return Ok(0);
    }
    let d = client::json_body(get("json").await?).await?;
    let manifest: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let mut descriptor = d["Descriptor"].clone();
    if let Some([p]) = d["Platforms"].as_array().map(Vec::as_slice) {
        descriptor["platform"] = p.clone();
    }
    let out = json!({"Ref": full, "Descriptor": descriptor, "Manifest": manifest});
    println!("{}", format::indent_json(&out.to_string()));
    Ok(0)
}

/// `login`: the credentials checked by the daemon against the registry, then kept in
/// the docker CLI's config.json (or its credential helper).
async fn login(
    c: &Client,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
    server: Option<String>,
) -> Result<i32, Error> {
    let key = dockercfg::server_key(server.as_deref().unwrap_or(""));
    if password.is_some() && password_stdin {
        return Err(Error::Other(
            "--password and --password-stdin are mutually exclusive".into(),
        ));
    }
    if password_stdin && username.is_none() {
        return Err(Error::Other(
            "Must provide --username with --password-stdin".into(),
        ));
    }
    if password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    let interactive = stream::is_terminal(std::io::stdin());
    let no_tty =
        || Error::Other("Cannot perform an interactive login from a non TTY device".into());
    let password = if password_stdin {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Error::Other(e.to_string()))?;
        Some(s.trim_end_matches(['\n', '\r']).to_string())
    } else {
        password
    };
    let username = match username {
        Some(u) => u,
        None if interactive => stream::prompt("Username: ", true)?,
        None => return Err(no_tty()),
    };
    let password = match password {
        Some(p) => p,
        None if interactive => stream::prompt("Password: ", false)?,
        None => return Err(no_tty()),
    };
    if username.trim().is_empty() {
        return Err(Error::Other("Username is required".into()));
    }
    if password.is_empty() {
        return Err(Error::Other("Password is required".into()));
    }
    let body = json!({"username": username, "password": password, "serveraddress": key});
    let v = c.json(Method::POST, "/auth", Some(&body)).await?;
    let token = v["IdentityToken"].as_str().unwrap_or_default();
    dockercfg::store(&key, &username, &password, token).map_err(Error::Other)?;
    if !dockercfg::uses_helper(&key) {
        eprintln!(
            "WARNING! Your credentials are stored unencrypted in '{}'.\nConfigure a credential helper to remove this warning. See\nhttps://docs.docker.com/go/credential-store/\n",
            dockercfg::path().display()
        );
    }
    println!("{}", v["Status"].as_str().unwrap_or("Login Succeeded"));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_print_like_docker() {
        assert_eq!(ram_in_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(ram_in_bytes("1g").unwrap(), 1 << 30);
        assert!(ram_in_bytes("x").is_err());
        assert_eq!(human_size(4_260_000.0), "4.26MB");
        assert_eq!(human_size(999.0), "999B");
        assert_eq!(human_size(12_345.0), "12.3kB");
        assert_eq!(human_size(0.0), "0B");
    }

    #[test]
    fn publish_specs_read_like_docker() {
        let one = |s: &str| parse_publish(s).unwrap();
        assert_eq!(
            one("80"),
            vec![("80/tcp".into(), json!({"HostIp": "", "HostPort": ""}))]
        );
        assert_eq!(
            one("127.0.0.1:8080:80/udp"),
            vec![(
                "80/udp".into(),
                json!({"HostIp": "127.0.0.1", "HostPort": "8080"})
            )]
        );
        assert_eq!(
            one("127.0.0.1::80"),
            vec![(
                "80/tcp".into(),
                json!({"HostIp": "127.0.0.1", "HostPort": ""})
            )]
        );
        assert_eq!(
            one("[::1]:8080:80"),
            vec![(
                "80/tcp".into(),
                json!({"HostIp": "::1", "HostPort": "8080"})
            )]
        );
        assert_eq!(
            one("8000-8001:80-81"),
            vec![
                ("80/tcp".into(), json!({"HostIp": "", "HostPort": "8000"})),
                ("81/tcp".into(), json!({"HostIp": "", "HostPort": "8001"}))
            ]
        );
        assert_eq!(
            one("8000-8010:80"),
            vec![(
                "80/tcp".into(),
                json!({"HostIp": "", "HostPort": "8000-8010"})
            )]
        );
        for bad in [
            "",
            "x",
            "80/icmp",
            "8000-8002:80-81",
            "1:2:3:4",
            "0",
            "70000:80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1s").unwrap(), 1_000_000_000);
        assert_eq!(go_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(go_duration("250ms").unwrap(), 250_000_000);
        assert!(go_duration("5").is_err());
        assert!(go_duration("3x").is_err());
    }

    #[test]
    fn tags_split_after_the_registry_port() {
        assert_eq!(split_tag("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_tag("a/b:1"), ("a/b".into(), "1".into()));
        assert_eq!(
            split_tag("localhost:5000/a"),
            ("localhost:5000/a".into(), "latest".into())
        );
    }

    /// Parses on a thread with the stack of a main thread: clap's code for this many
    /// commands needs more than a test thread's 2 MiB in debug builds.
    fn parse(args: &'static [&'static str]) -> Cli {
        std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(move || Cli::try_parse_from(args).unwrap())
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn run_flags_make_docker_s_create_body() {
        let cli = parse(&[
            "berth",
            "run",
            "--rm",
            "-e",
            "A=1",
            "-m",
            "64m",
            "--cpus",
            "1.5",
            "--restart",
            "no",
            "-v",
            "/a:/b:ro",
            "--name",
            "x",
            "busybox",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        let Cmd::Run(a) = cli.cmd else { panic!() };
        let b = create_body(&a).unwrap();
        assert_eq!(b["Cmd"], json!(["sh", "-c", "echo -n hi"]));
        assert_eq!(b["HostConfig"]["Memory"], 64 << 20);
        assert_eq!(b["HostConfig"]["NanoCpus"], 1_500_000_000i64);
        assert_eq!(b["HostConfig"]["AutoRemove"], true);
        assert_eq!(b["HostConfig"]["Binds"], json!(["/a:/b:ro"]));
        assert_eq!(b["Env"], json!(["A=1"]));
    }
}
