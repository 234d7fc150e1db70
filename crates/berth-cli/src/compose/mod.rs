//! `berth compose`: a compose project turned into the Engine API calls `berth run` makes,
//! entirely in the client. Containers, networks and volumes carry Docker Compose's labels
//! and names (`<project>-<service>-<n>`, `<project>_default`), so `docker compose` and
//! `berth compose` recognise each other's work; a service is recreated only when its
//! configuration hash changed.

pub mod load;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::client::{Client, Demux, Error};
use crate::commands::{filters_json, q};
use load::Project;

const PROJECT: &str = "com.docker.compose.project";
const SERVICE: &str = "com.docker.compose.service";
const NUMBER: &str = "com.docker.compose.container-number";
const ONEOFF: &str = "com.docker.compose.oneoff";
const HASH: &str = "com.docker.compose.config-hash";
const NETWORK: &str = "com.docker.compose.network";
const VOLUME: &str = "com.docker.compose.volume";

#[derive(Args)]
pub struct ComposeArgs {
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    #[arg(short = 'p', long = "project-name")]
    project_name: Option<String>,
    #[arg(long = "project-directory")]
    project_directory: Option<PathBuf>,
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    #[arg(long)]
    profile: Vec<String>,
    #[command(subcommand)]
    cmd: ComposeCmd,
}

#[derive(Subcommand)]
enum ComposeCmd {
    /// Create and start containers
    Up {
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "force-recreate")]
        force_recreate: bool,
        #[arg(long = "no-recreate")]
        no_recreate: bool,
        #[arg(long = "remove-orphans")]
        remove_orphans: bool,
        #[arg(long)]
        scale: Vec<String>,
        #[arg(long)]
        wait: bool,
        #[arg(long = "abort-on-container-exit")]
        abort_on_container_exit: bool,
        #[arg(long = "exit-code-from")]
        exit_code_from: Option<String>,
        #[arg(long = "no-build")]
        no_build: bool,
        #[arg(long)]
        build: bool,
        services: Vec<String>,
    },
    /// Creates containers for a service
    Create {
        #[arg(long = "force-recreate")]
        force_recreate: bool,
        #[arg(long = "no-recreate")]
        no_recreate: bool,
        services: Vec<String>,
    },
    /// Stop and remove containers, networks
    Down {
        #[arg(short, long)]
        volumes: bool,
        /// Remove images used by services: "local" (those without a custom tag) or "all"
        #[arg(long)]
        rmi: Option<String>,
        #[arg(long = "remove-orphans")]
        remove_orphans: bool,
        #[arg(short, long)]
        timeout: Option<i64>,
    },
    /// List containers
    Ps {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        services: bool,
        #[arg(long)]
        format: Option<String>,
        service: Vec<String>,
    },
    /// View output from containers
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long)]
        tail: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        #[arg(long = "no-log-prefix")]
        no_log_prefix: bool,
        services: Vec<String>,
    },
    /// Parse, resolve and render the compose file
    Config {
        #[arg(long)]
        services: bool,
        #[arg(long)]
        volumes: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Start services
    Start { services: Vec<String> },
    /// Stop services
    Stop {
        #[arg(short, long)]
        timeout: Option<i64>,
        services: Vec<String>,
    },
    /// Restart service containers
    Restart {
        #[arg(short, long)]
        timeout: Option<i64>,
        services: Vec<String>,
    },
    /// Force stop service containers
    Kill {
        #[arg(short, long)]
        signal: Option<String>,
        services: Vec<String>,
    },
    /// Removes stopped service containers
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(short, long)]
        stop: bool,
        #[arg(short, long)]
        volumes: bool,
        services: Vec<String>,
    },
    /// Pause services
    Pause { services: Vec<String> },
    /// Unpause services
    Unpause { services: Vec<String> },
    /// Execute a command in a running container
    Exec {
        #[arg(short, long)]
        detach: bool,
        #[arg(short = 'T', long = "no-TTY")]
        no_tty: bool,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        #[arg(long, default_value_t = 1)]
        index: u32,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Display the running processes
    Top { services: Vec<String> },
    /// Print the public port for a port binding
    Port {
        #[arg(long, default_value_t = 1)]
        index: u32,
        service: String,
        private_port: String,
    },
    /// List images used by the created containers
    Images { services: Vec<String> },
    /// List running compose projects
    Ls {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the Docker Compose version information
    Version,
    /// Run a one-off command on a service
    Run {
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        rm: bool,
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        #[arg(long)]
        entrypoint: Option<String>,
        #[arg(short = 'T', long = "no-TTY")]
        no_tty: bool,
        #[arg(long = "no-deps")]
        no_deps: bool,
        #[arg(long = "service-ports")]
        service_ports: bool,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Build or rebuild services
    Build { services: Vec<String> },
    /// Pull service images
    Pull {
        #[arg(short, long)]
        quiet: bool,
        services: Vec<String>,
    },
    /// Push service images
    Push { services: Vec<String> },
    /// Receive real time events from containers
    Events {
        #[arg(long)]
        json: bool,
        services: Vec<String>,
    },
}

pub async fn run(c: &Client, a: ComposeArgs) -> Result<i32, Error> {
    match a.cmd {
        ComposeCmd::Version => {
            println!("Berth compose version {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        ComposeCmd::Ls { all, quiet } => return ls(c, all, quiet).await,
        _ => {}
    }
    let opts = load::Options {
        files: a.files.clone(),
        project_name: a.project_name.clone(),
        project_dir: a.project_directory.clone(),
        env_files: a.env_file.clone(),
        profiles: a.profile.clone(),
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
    let p = load::load(&opts, &env, &cwd).map_err(Error::Other)?;
    match a.cmd {
        ComposeCmd::Up {
            detach,
            force_recreate,
            no_recreate,
            remove_orphans,
            scale,
            wait,
            abort_on_container_exit,
            exit_code_from,
            services,
            no_build,
            build,
        } => {
            if !no_build {
                build_images(c, &p, &services, build).await?;
            }
            let ids = up(
                c,
                &p,
                &services,
                &scale,
                force_recreate,
                no_recreate,
                remove_orphans,
                true,
            )
            .await?;
            if wait {
                wait_healthy(c, &p, &ids).await?;
            }
            if detach || wait {
                return Ok(0);
            }
            attached(
                c,
                &p,
                &ids,
                abort_on_container_exit || exit_code_from.is_some(),
                exit_code_from,
            )
            .await
        }
        ComposeCmd::Create {
            force_recreate,
            no_recreate,
            services,
        } => {
            up(
                c,
                &p,
                &services,
                &[],
                force_recreate,
                no_recreate,
                false,
                false,
            )
            .await?;
            Ok(0)
        }
        ComposeCmd::Down {
            volumes,
            rmi,
            remove_orphans,
            timeout,
        } => {
            let rmi = match rmi.as_deref() {
                None => None,
                Some(r @ ("all" | "local")) => Some(r == "all"),
                Some(other) => {
                    return Err(Error::Other(format!(
                        "invalid --rmi option {other:?}: expected \"local\" or \"all\""
                    )))
                }
            };
            down(c, &p, volumes, rmi, remove_orphans, timeout).await
        }
        ComposeCmd::Ps {
            all,
            quiet,
            services,
            format,
            service,
        } => ps(c, &p, all, quiet, services, format, &service).await,
        ComposeCmd::Logs {
            follow,
            tail,
            timestamps,
            no_log_prefix,
            services,
        } => logs(c, &p, follow, tail, timestamps, no_log_prefix, &services).await,
        ComposeCmd::Config {
            services,
            volumes,
            quiet,
        } => config(&p, services, volumes, quiet),
        ComposeCmd::Start { services } => {
            each_container(
                c,
                &p,
                &services,
                true,
                |id| format!("/containers/{id}/start"),
                "Started",
            )
            .await
        }
        ComposeCmd::Stop { timeout, services } => {
            let t = timeout.map(|t| format!("?t={t}")).unwrap_or_default();
            each_container(
                c,
                &p,
                &services,
                false,
                |id| format!("/containers/{id}/stop{t}"),
                "Stopped",
            )
            .await
        }
        ComposeCmd::Restart { timeout, services } => {
            let t = timeout.map(|t| format!("?t={t}")).unwrap_or_default();
            // Dependencies first; services that follow one with `restart: true` after it.
            let mut status = 0;
            for svc in with_restart_dependents(&p, &services)? {
                status |= each_container(
                    c,
                    &p,
                    std::slice::from_ref(&svc),
                    true,
                    |id| format!("/containers/{id}/restart{t}"),
                    "Restarted",
                )
                .await?;
            }
            Ok(status)
        }
        ComposeCmd::Kill { signal, services } => {
            let s = signal
                .map(|s| format!("?signal={}", q(&s)))
                .unwrap_or_default();
            each_container(
                c,
                &p,
                &services,
                false,
                |id| format!("/containers/{id}/kill{s}"),
                "Killed",
            )
            .await
        }
        ComposeCmd::Pause { services } => {
            each_container(
                c,
                &p,
                &services,
                false,
                |id| format!("/containers/{id}/pause"),
                "Paused",
            )
            .await
        }
        ComposeCmd::Unpause { services } => {
            each_container(
                c,
                &p,
                &services,
                false,
                |id| format!("/containers/{id}/unpause"),
                "Unpaused",
            )
            .await
        }
        ComposeCmd::Rm {
            force,
            stop,
            volumes,
            services,
        } => {
            let list = containers(c, &p.name, None, true).await?;
            let mut status = 0;
            for ct in list.iter().filter(|ct| wanted(ct, &services)) {
                let running = ct["State"] == "running";
                if running && !stop && !force {
                    continue;
                }
                let id = ct["Id"].as_str().unwrap_or("");
                if let Err(e) = c
                    .json(
                        Method::DELETE,
                        &format!("/containers/{id}?force=true&v={volumes}"),
                        None,
                    )
                    .await
                {
                    eprintln!("{e}");
                    status = 1;
                } else {
                    progress(&format!("Container {}", name_of(ct)), "Removed");
                }
            }
            Ok(status)
        }
        ComposeCmd::Exec {
            detach,
            no_tty,
            env,
            user,
            workdir,
            index,
            service,
            command,
        } => {
            let ct = one(c, &p, &service, index).await?;
            let mut args = vec!["exec".to_string(), "-i".to_string()];
            if detach {
                args.push("-d".into());
            }
            if !no_tty && rustix::termios::isatty(std::io::stdin()) {
                args.push("-t".into());
            }
            for e in env {
                args.extend(["-e".to_string(), e]);
            }
            if let Some(u) = user {
                args.extend(["-u".to_string(), u]);
            }
            if let Some(w) = workdir {
                args.extend(["-w".to_string(), w]);
            }
            args.push(ct["Id"].as_str().unwrap_or("").to_string());
            args.extend(command);
            crate::commands::run_args(c, &args).await
        }
        ComposeCmd::Top { services } => {
            for ct in containers(c, &p.name, None, false)
                .await?
                .iter()
                .filter(|ct| wanted(ct, &services))
            {
                println!("{}", name_of(ct));
                crate::commands::run_args(
                    c,
                    &[
                        "top".to_string(),
                        ct["Id"].as_str().unwrap_or("").to_string(),
                    ],
                )
                .await?;
                println!();
            }
            Ok(0)
        }
        ComposeCmd::Port {
            index,
            service,
            private_port,
        } => {
            let ct = one(c, &p, &service, index).await?;
            let want = if private_port.contains('/') {
                private_port.clone()
            } else {
                format!("{private_port}/tcp")
            };
            let v = c
                .json(
                    Method::GET,
                    &format!("/containers/{}/json", q(ct["Id"].as_str().unwrap_or(""))),
                    None,
                )
                .await?;
            match v["NetworkSettings"]["Ports"][&want]
                .as_array()
                .and_then(|a| a.first())
            {
                Some(b) => {
                    println!(
                        "{}:{}",
                        b["HostIp"].as_str().unwrap_or(""),
                        b["HostPort"].as_str().unwrap_or("")
                    );
                    Ok(0)
                }
                None => Err(Error::Other(format!(
                    "no port {want} for container {}: no public port",
                    name_of(&ct)
                ))),
            }
        }
        ComposeCmd::Images { services } => {
            let rows: Vec<Value> = containers(c, &p.name, None, true)
                .await?
                .iter()
                .filter(|ct| wanted(ct, &services))
                .map(|ct| {
                    let image = ct["Image"].as_str().unwrap_or("");
                    let (repo, tag) = split_tag(image);
                    json!({"Container": name_of(ct), "Repository": repo, "Tag": tag,
                        "ID": ct["ImageID"].as_str().unwrap_or("").trim_start_matches("sha256:").chars().take(12).collect::<String>()})
                })
                .collect();
            crate::commands::print_list(
                &rows,
                None,
                "table {{.Container}}\t{{.Repository}}\t{{.Tag}}\t{{.ID}}",
                |f| match f {
                    "ID" => "IMAGE ID".into(),
                    other => other.to_uppercase(),
                },
            )
        }
        ComposeCmd::Run {
            detach,
            rm,
            name,
            env,
            user,
            workdir,
            entrypoint,
            no_tty,
            no_deps,
            service_ports,
            service,
            command,
        } => {
            let Some(svc) = p.services().get(&service).cloned() else {
                return Err(Error::Other(format!("no such service: {service}")));
            };
            // Its dependencies come up first, as `up` would bring them.
            let deps: Vec<String> = svc["depends_on"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            if !no_deps && !deps.is_empty() {
                up(c, &p, &deps, &[], false, false, false, true).await?;
            }
            let hash = config_hash(&svc);
            let mut body = create_body(&p, &service, 1, &hash, &HashMap::new())?;
            body["Labels"][ONEOFF] = json!("True");
            body["Labels"]["com.docker.compose.slug"] = json!(berth_types::random_hex(32));
            if !service_ports {
                body["HostConfig"]["PortBindings"] = json!({});
            }
            if !command.is_empty() {
                body["Cmd"] = json!(command);
            }
            if let Some(ep) = entrypoint {
                body["Entrypoint"] = argv(&json!(ep))?;
            }
            if let Some(u) = user {
                body["User"] = json!(u);
            }
            if let Some(w) = workdir {
                body["WorkingDir"] = json!(w);
            }
            if let Some(list) = body["Env"].as_array_mut() {
                list.extend(env.into_iter().map(Value::String));
            }
            let tty = !no_tty && !detach && rustix::termios::isatty(std::io::stdin());
            body["Tty"] = json!(tty);
            body["OpenStdin"] = json!(!detach);
            body["AttachStdin"] = json!(!detach);
            body["StdinOnce"] = json!(!detach);
            body["HostConfig"]["AutoRemove"] = json!(rm);
            let cname = name.unwrap_or_else(|| {
                format!("{}-{service}-run-{}", p.name, berth_types::random_hex(12))
            });
            let files = inline_files(&p, &service)?;
            let v = c
                .json(
                    Method::POST,
                    &format!("/containers/create?name={}", q(&cname)),
                    Some(&body),
                )
                .await?;
            let id = v["Id"].as_str().unwrap_or("").to_string();
            put_files(c, &id, &files).await?;
            for (key, cfg) in service_networks(&svc).iter().skip(1) {
                let b = json!({"Container": id, "EndpointConfig": endpoint(&service, cfg)});
                c.json(
                    Method::POST,
                    &format!("/networks/{}/connect", q(&network_name(&p, key))),
                    Some(&b),
                )
                .await?;
            }
            if detach {
                c.json(Method::POST, &format!("/containers/{id}/start"), None)
                    .await?;
                println!("{cname}");
                return Ok(0);
            }
            // Waiting for "removed" (as docker run --rm does) means the one-off is gone
            // when compose run returns.
            let cond = if rm { "removed" } else { "next-exit" };
            crate::commands::attach_start_wait(c, &id, tty, !no_tty, cond, true).await
        }
        ComposeCmd::Build { services } => {
            build_images(c, &p, &services, true).await?;
            Ok(0)
        }
        ComposeCmd::Pull { quiet, services } => {
            let mut status = 0;
            for (name, svc) in p.services() {
                if !(services.is_empty() || services.contains(name)) {
                    continue;
                }
                let Some(image) = svc["image"].as_str() else {
                    continue;
                };
                let mut args = vec!["pull".to_string()];
                if quiet {
                    args.push("-q".into());
                }
                args.push(image.to_string());
                if crate::commands::run_args(c, &args).await? != 0 {
                    status = 1;
                }
            }
            Ok(status)
        }
        ComposeCmd::Push { services } => {
            let mut status = 0;
            for (name, svc) in p.services() {
                if !(services.is_empty() || services.contains(name)) {
                    continue;
                }
                if let Some(image) = svc["image"].as_str() {
                    if crate::commands::run_args(c, &["push".to_string(), image.to_string()])
                        .await?
                        != 0
                    {
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        ComposeCmd::Events { json, services } => {
            let mut args = vec![
                "events".to_string(),
                "--filter".to_string(),
                format!("label={PROJECT}={}", p.name),
            ];
            for s in services {
                args.extend(["--filter".to_string(), format!("label={SERVICE}={s}")]);
            }
            if json {
                args.extend(["--format".to_string(), "{{json .}}".to_string()]);
            }
            crate::commands::run_args(c, &args).await
        }
        ComposeCmd::Version | ComposeCmd::Ls { .. } => unreachable!("handled above"),
    }
}

fn split_tag(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// Progress lines as docker compose prints them (on stderr).
fn progress(what: &str, state: &str) {
    eprintln!(" {what}  {state}");
}

fn name_of(ct: &Value) -> String {
    ct["Names"][0]
        .as_str()
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string()
}

fn label<'a>(ct: &'a Value, key: &str) -> &'a str {
    ct["Labels"][key].as_str().unwrap_or("")
}

fn wanted(ct: &Value, services: &[String]) -> bool {
    services.is_empty() || services.iter().any(|s| s == label(ct, SERVICE))
}

/// The project's containers (not one-off ones), by service and number.
async fn containers(
    c: &Client,
    project: &str,
    service: Option<&str>,
    all: bool,
) -> Result<Vec<Value>, Error> {
    let mut f = vec![
        format!("label={PROJECT}={project}"),
        format!("label={ONEOFF}=False"),
    ];
    if let Some(s) = service {
        f.push(format!("label={SERVICE}={s}"));
    }
    let v = c
        .json(
            Method::GET,
            &format!("/containers/json?all={all}&filters={}", filters_json(&f)),
            None,
        )
        .await?;
    let mut list: Vec<Value> = v.as_array().cloned().unwrap_or_default();
    list.sort_by_key(|ct| {
        (
            label(ct, SERVICE).to_string(),
            label(ct, NUMBER).parse::<u32>().unwrap_or(0),
        )
    });
    Ok(list)
}

async fn one(c: &Client, p: &Project, service: &str, index: u32) -> Result<Value, Error> {
    containers(c, &p.name, Some(service), false)
        .await?
        .into_iter()
        .find(|ct| label(ct, NUMBER) == index.to_string())
        .ok_or_else(|| Error::Other(format!("service \"{service}\" is not running")))
}

async fn each_container(
    c: &Client,
    p: &Project,
    services: &[String],
    all: bool,
    path: impl Fn(&str) -> String,
    done: &str,
) -> Result<i32, Error> {
    let mut status = 0;
    for ct in containers(c, &p.name, None, all)
        .await?
        .iter()
        .filter(|ct| wanted(ct, services))
    {
        match c
            .json(Method::POST, &path(ct["Id"].as_str().unwrap_or("")), None)
            .await
        {
            Ok(_) => progress(&format!("Container {}", name_of(ct)), done),
            Err(e) => {
                eprintln!("{e}");
                status = 1;
            }
        }
    }
    Ok(status)
}

/// Whether `svc` depends with `restart: true` on one of `recreated`.
fn follows_recreated(svc: &Value, recreated: &std::collections::BTreeSet<String>) -> bool {
    svc["depends_on"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(dep, d)| recreated.contains(dep) && d["restart"].as_bool() == Some(true))
}

/// A network's name on the daemon: `<project>_<key>` unless it names itself.
fn network_name(p: &Project, key: &str) -> String {
    let n = &p.model["networks"][key];
    match n["name"].as_str() {
        Some(name) => name.to_string(),
        None if n["external"].as_bool() == Some(true) => key.to_string(),
        None => format!("{}_{key}", p.name),
    }
}

fn volume_name(p: &Project, key: &str) -> String {
    let v = &p.model["volumes"][key];
    match v["name"].as_str() {
        Some(name) => name.to_string(),
        None if v["external"].as_bool() == Some(true) => key.to_string(),
        None => format!("{}_{key}", p.name),
    }
}

/// The networks a service is on, in the order compose attaches them.
fn service_networks(svc: &Value) -> Vec<(String, Value)> {
    if svc.get("network_mode").is_some() {
        return Vec::new();
    }
    match svc["networks"].as_object() {
        Some(m) if !m.is_empty() => {
            let mut v: Vec<(String, Value)> =
                m.iter().map(|(k, x)| (k.clone(), x.clone())).collect();
            // Higher priority first, then by name.
            v.sort_by(|a, b| {
                let pa = a.1["priority"].as_i64().unwrap_or(0);
                let pb = b.1["priority"].as_i64().unwrap_or(0);
                pb.cmp(&pa).then(a.0.cmp(&b.0))
            });
            v
        }
        _ => vec![("default".to_string(), Value::Null)],
    }
}

async fn ensure_networks(c: &Client, p: &Project, services: &[String]) -> Result<(), Error> {
    let mut keys: Vec<String> = Vec::new();
    for s in services {
        for (k, _) in service_networks(&p.services()[s]) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for key in keys {
        let cfg = &p.model["networks"][&key];
        let name = network_name(p, &key);
        let exists = c
            .json(Method::GET, &format!("/networks/{}", q(&name)), None)
            .await
            .is_ok();
        if exists {
            continue;
        }
        if cfg["external"].as_bool() == Some(true) {
            return Err(Error::Other(format!(
                "network {name} declared as external, but could not be found"
            )));
        }
        if key != "default" && !cfg.is_object() && !cfg.is_null() {
            continue;
        }
        let mut labels = cfg["labels"].as_object().cloned().unwrap_or_default();
        labels.insert(PROJECT.into(), json!(p.name));
        labels.insert(NETWORK.into(), json!(key));
        let ipam: Vec<Value> = cfg["ipam"]["config"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| json!({"Subnet": x["subnet"], "Gateway": x["gateway"], "IPRange": x["ip_range"]}))
            .collect();
        let body = json!({
            "Name": name, "Driver": cfg["driver"].as_str().unwrap_or("bridge"),
            "Internal": cfg["internal"].as_bool().unwrap_or(false),
            "Options": cfg["driver_opts"].as_object().cloned().unwrap_or_default(),
            "Labels": labels, "IPAM": {"Driver": "default", "Config": ipam},
        });
        c.json(Method::POST, "/networks/create", Some(&body))
            .await?;
        progress(&format!("Network {name}"), "Created");
    }
    Ok(())
}

/// Whether a volume's short-syntax source names a volume (not a path).
fn is_named(source: &str) -> bool {
    !source.is_empty() && !source.starts_with(['/', '.', '~'])
}

async fn ensure_volumes(c: &Client, p: &Project, services: &[String]) -> Result<(), Error> {
    let mut keys: Vec<String> = Vec::new();
    for s in services {
        for v in p.services()[s]["volumes"].as_array().into_iter().flatten() {
            let source = match v {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    if parts.len() >= 2 {
                        parts[0].to_string()
                    } else {
                        String::new()
                    }
                }
                Value::Object(m)
                    if m.get("type").and_then(Value::as_str).unwrap_or("volume") == "volume" =>
                {
                    m.get("source")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                }
                _ => String::new(),
            };
            if is_named(&source) && !keys.contains(&source) {
                if p.model["volumes"].get(&source).is_none() {
                    return Err(Error::Other(format!(
                        "service \"{s}\" refers to undefined volume {source}: invalid compose project"
                    )));
                }
                keys.push(source);
            }
        }
    }
    for key in keys {
        let cfg = &p.model["volumes"][&key];
        let name = volume_name(p, &key);
        if c.json(Method::GET, &format!("/volumes/{}", q(&name)), None)
            .await
            .is_ok()
        {
            continue;
        }
        if cfg["external"].as_bool() == Some(true) {
            return Err(Error::Other(format!(
                "external volume \"{name}\" not found"
            )));
        }
        let mut labels = cfg["labels"].as_object().cloned().unwrap_or_default();
        labels.insert(PROJECT.into(), json!(p.name));
        labels.insert(VOLUME.into(), json!(key));
        let body = json!({"Name": name, "Driver": cfg["driver"].as_str().unwrap_or("local"),
            "DriverOpts": cfg["driver_opts"].as_object().cloned().unwrap_or_default(), "Labels": labels});
        c.json(Method::POST, "/volumes/create", Some(&body)).await?;
        progress(&format!("Volume \"{name}\""), "Created");
    }
    Ok(())
}

/// The configuration hash compose keeps in a label: a service is recreated when it
/// changes.
fn config_hash(svc: &Value) -> String {
    let mut s = svc.clone();
    if let Some(m) = s.as_object_mut() {
        // Scaling and dependencies do not make a container different.
        for k in ["deploy", "depends_on", "scale", "profiles"] {
            m.remove(k);
        }
    }
    hex::encode(Sha256::digest(s.to_string().as_bytes()))
}

fn nanos(v: &Value) -> Result<Option<u64>, Error> {
    match v {
        Value::String(s) => crate::commands::go_duration(s)
            .map(Some)
            .map_err(Error::Other),
        Value::Number(n) => Ok(n.as_u64().map(|s| s * 1_000_000_000)),
        _ => Ok(None),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `command`/`entrypoint`: a list as is, a string split as a shell would.
fn argv(v: &Value) -> Result<Value, Error> {
    Ok(match v {
        Value::String(s) => {
            json!(shlex::split(s)
                .ok_or_else(|| Error::Other(format!("invalid command line: {s}")))?)
        }
        Value::Array(_) => json!(strings(v)),
        _ => Value::Null,
    })
}

/// The secrets and configs service `s` uses: (kind, source, path in the container), the
/// path as compose resolves it (secrets under /run/secrets/, configs under /).
fn secret_refs(s: &Value) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for (kind, default_dir) in [("secrets", "/run/secrets/"), ("configs", "/")] {
        for item in s[kind].as_array().into_iter().flatten() {
            let (source, target) = match item {
                Value::String(n) => (n.clone(), None),
                Value::Object(m) => (
                    m.get("source")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    m.get("target").and_then(Value::as_str).map(String::from),
                ),
                _ => continue,
            };
            let target = match target {
                Some(t) if t.starts_with('/') => t,
                Some(t) => format!("{default_dir}{t}"),
                None => format!("{default_dir}{source}"),
            };
            out.push((kind, source, target));
        }
    }
    out
}

/// The secrets and configs of service `name` that come from `environment` or `content`
/// rather than a file: (path in the container, bytes), written into it before it starts.
fn inline_files(p: &Project, name: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    for (kind, source, target) in secret_refs(&p.services()[name]) {
        let def = &p.model[kind][&source];
        let data = match (def["environment"].as_str(), def["content"].as_str()) {
            (Some(var), _) => p.env.get(var).cloned().ok_or_else(|| {
                Error::Other(format!(
                    "environment variable {var:?} of {} {source} is not set",
                    &kind[..kind.len() - 1]
                ))
            })?,
            (None, Some(text)) => text.to_string(),
            _ => continue,
        };
        out.push((target, data.into_bytes()));
    }
    Ok(out)
}

/// Writes `files` into container `id` (not started yet), read-only for everyone, as
/// compose does for secrets and configs without a file.
async fn put_files(c: &Client, id: &str, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    if files.is_empty() {
        return Ok(());
    }
    let mut tarball = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tarball);
        let mut dirs = std::collections::BTreeSet::new();
        for (path, data) in files {
            let rel = path.trim_start_matches('/');
            // Parent directories first, so they exist whatever the image has.
            let parts: Vec<&str> = rel.split('/').collect();
            let mut acc = String::new();
            for part in &parts[..parts.len() - 1] {
                acc = if acc.is_empty() {
                    part.to_string()
                } else {
                    format!("{acc}/{part}")
                };
                if dirs.insert(acc.clone()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_cksum();
                    b.append_data(&mut h, format!("{acc}/"), std::io::empty())
                        .map_err(|e| Error::Other(e.to_string()))?;
                }
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o444);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, rel, &data[..])
                .map_err(|e| Error::Other(e.to_string()))?;
        }
        b.finish().map_err(|e| Error::Other(e.to_string()))?;
    }
    c.send(
        Method::PUT,
        &format!("/containers/{id}/archive?path=/"),
        crate::client::full(tarball),
        Some("application/x-tar"),
        false,
    )
    .await?;
    Ok(())
}

/// The services of a restart: those named, then (in dependency order) every service that
/// depends on one of them with `restart: true`, transitively.
fn with_restart_dependents(p: &Project, named: &[String]) -> Result<Vec<String>, Error> {
    let order = load::order(p.services()).map_err(Error::Other)?;
    if named.is_empty() {
        return Ok(order);
    }
    let mut chosen: std::collections::BTreeSet<String> = named.iter().cloned().collect();
    for svc in &order {
        let follows = p.services()[svc]["depends_on"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(dep, d)| chosen.contains(dep) && d["restart"].as_bool() == Some(true));
        if follows {
            chosen.insert(svc.clone());
        }
    }
    Ok(order.into_iter().filter(|s| chosen.contains(s)).collect())
}

fn create_body(
    p: &Project,
    name: &str,
    number: u32,
    hash: &str,
    peer: &HashMap<String, String>,
) -> Result<Value, Error> {
    let s = &p.services()[name];
    let dir = &p.dir;
    let resolve = |path: &str| -> String {
        if let Some(rest) = path.strip_prefix("~/") {
            return format!("{}/{rest}", std::env::var("HOME").unwrap_or_default());
        }
        if path.starts_with('/') {
            return path.to_string();
        }
        let joined = dir.join(path);
        // Lexically: `./data` stays under the project, without resolving links.
        let mut out = PathBuf::new();
        for comp in joined.components() {
            match comp {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out.display().to_string()
    };
    // Environment: env_file first, `environment` over it.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for f in strings(&s["env_file"]) {
        let path = resolve(&f);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Other(format!("env file {path}: {e}")))?;
        env.extend(load::parse_env_file(&text));
    }
    for (k, v) in s["environment"].as_object().into_iter().flatten() {
        env.insert(k.clone(), v.as_str().unwrap_or("").to_string());
    }
    let mut labels: Map<String, Value> = s["labels"].as_object().cloned().unwrap_or_default();
    let depends: Vec<String> = s["depends_on"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(d, c)| {
            format!(
                "{d}:{}:{}",
                c["condition"].as_str().unwrap_or("service_started"),
                c["restart"].as_bool().unwrap_or(false)
            )
        })
        .collect();
    for (k, v) in [
        (PROJECT, p.name.clone()),
        (SERVICE, name.to_string()),
        (NUMBER, number.to_string()),
        (ONEOFF, "False".to_string()),
        (HASH, hash.to_string()),
        (
            "com.docker.compose.project.working_dir",
            p.dir.display().to_string(),
        ),
        (
            "com.docker.compose.project.config_files",
            p.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("com.docker.compose.depends_on", depends.join(",")),
        ("com.docker.compose.image", image_of(p, name)),
        ("com.docker.compose.version", "2.29.0".to_string()),
    ] {
        labels.insert(k.into(), json!(v));
    }
    // Ports and exposed ports.
    let mut exposed = Map::new();
    let mut bindings: Map<String, Value> = Map::new();
    for port in s["ports"].as_array().into_iter().flatten() {
        let specs: Vec<(String, Value)> = match port {
            Value::Object(m) => {
                let target = m
                    .get("target")
                    .map(|t| t.to_string().trim_matches('"').to_string())
                    .unwrap_or_default();
                let proto = m.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
                let published = m
                    .get("published")
                    .map(|x| x.to_string().trim_matches('"').to_string())
                    .unwrap_or_default();
                vec![(
                    format!("{target}/{proto}"),
                    json!({"HostIp": m.get("host_ip").and_then(Value::as_str).unwrap_or(""), "HostPort": published}),
                )]
            }
            other => {
                let spec = match other {
                    Value::String(x) => x.clone(),
                    x => x.to_string(),
                };
                crate::commands::parse_publish(&spec).map_err(Error::Other)?
            }
        };
        for (k, b) in specs {
            exposed.insert(k.clone(), json!({}));
            if let Some(list) = bindings
                .entry(k)
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                list.push(b);
            }
        }
    }
    for e in strings(&s["expose"]) {
        let key = if e.contains('/') {
            e
        } else {
            format!("{e}/tcp")
        };
        exposed.insert(key, json!({}));
    }
    // Volumes: binds (short syntax), mounts (long syntax).
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    let mut anonymous = Map::new();
    for v in s["volumes"].as_array().into_iter().flatten() {
        match v {
            Value::String(spec) => {
                let parts: Vec<&str> = spec.splitn(3, ':').collect();
                match parts.as_slice() {
                    [target] => {
                        anonymous.insert(target.to_string(), json!({}));
                    }
                    [source, rest @ ..] => {
                        let source = if is_named(source) {
                            volume_name(p, source)
                        } else {
                            resolve(source)
                        };
                        binds.push(format!("{source}:{}", rest.join(":")));
                    }
                    [] => {}
                }
            }
            Value::Object(m) => {
                let kind = m.get("type").and_then(Value::as_str).unwrap_or("volume");
                let source = m.get("source").and_then(Value::as_str).unwrap_or("");
                let source = match kind {
                    "volume" if is_named(source) => volume_name(p, source),
                    "bind" => resolve(source),
                    _ => source.to_string(),
                };
                let mut mount = json!({"Type": kind, "Source": source, "Target": m.get("target"),
                    "ReadOnly": m.get("read_only").and_then(Value::as_bool).unwrap_or(false)});
                if let Some(true) = m.get("volume").and_then(|x| x["nocopy"].as_bool()) {
                    mount["VolumeOptions"] = json!({"NoCopy": true});
                }
                if let Some(size) = m.get("tmpfs").and_then(|x| x.get("size")) {
                    let bytes = match size {
                        Value::String(x) => {
                            crate::commands::ram_in_bytes(x).map_err(Error::Other)?
                        }
                        x => x.as_i64().unwrap_or(0),
                    };
                    mount["TmpfsOptions"] = json!({"SizeBytes": bytes});
                }
                mounts.push(mount);
            }
            _ => {}
        }
    }
    // Secrets and configs from files, bound read-only: secrets under /run/secrets.
    for (kind, source, target) in secret_refs(s) {
        let def = &p.model[kind][&source];
        let Some(file) = def["file"].as_str() else {
            if def["environment"].is_string() || def["content"].is_string() {
                // Written into the container before it starts: see inline_files.
                continue;
            }
            return Err(Error::Other(format!(
                "service \"{name}\" refers to undefined {} {source}",
                &kind[..kind.len() - 1]
            )));
        };
        binds.push(format!("{}:{target}:ro", resolve(file)));
    }
    let mut tmpfs = Map::new();
    for t in strings(&s["tmpfs"]) {
        let (dst, opts) = t.split_once(':').unwrap_or((&t, ""));
        tmpfs.insert(dst.to_string(), json!(opts));
    }
    let healthcheck = match &s["healthcheck"] {
        Value::Object(h) => {
            let test = if h.get("disable").and_then(Value::as_bool) == Some(true) {
                json!(["NONE"])
            } else {
                match h.get("test") {
                    Some(Value::String(t)) => json!(["CMD-SHELL", t]),
                    Some(x @ Value::Array(_)) => json!(strings(x)),
                    _ => Value::Null,
                }
            };
            json!({"Test": test,
                "Interval": nanos(h.get("interval").unwrap_or(&Value::Null))?.unwrap_or(0),
                "Timeout": nanos(h.get("timeout").unwrap_or(&Value::Null))?.unwrap_or(0),
                "StartPeriod": nanos(h.get("start_period").unwrap_or(&Value::Null))?.unwrap_or(0),
                "StartInterval": nanos(h.get("start_interval").unwrap_or(&Value::Null))?.unwrap_or(0),
                "Retries": h.get("retries").and_then(Value::as_u64).unwrap_or(0)})
        }
        _ => Value::Null,
    };
    let mut ulimits = Vec::new();
    for (n, u) in s["ulimits"].as_object().into_iter().flatten() {
        let (soft, hard) = match u {
            Value::Object(m) => (
                m.get("soft").and_then(Value::as_i64).unwrap_or(0),
                m.get("hard").and_then(Value::as_i64).unwrap_or(0),
            ),
            x => (x.as_i64().unwrap_or(0), x.as_i64().unwrap_or(0)),
        };
        ulimits.push(json!({"Name": n, "Soft": soft, "Hard": hard}));
    }
    let limits = &s["deploy"]["resources"]["limits"];
    let memory = match limits["memory"].as_str().or(s["mem_limit"].as_str()) {
        Some(m) => crate::commands::ram_in_bytes(m).map_err(Error::Other)?,
        None => 0,
    };
    let cpus: f64 = match limits["cpus"]
        .as_str()
        .map(String::from)
        .or_else(|| s["cpus"].as_f64().map(|c| c.to_string()))
        .or_else(|| limits["cpus"].as_f64().map(|c| c.to_string()))
    {
        Some(c) => c
            .parse()
            .map_err(|_| Error::Other(format!("invalid cpus: {c}")))?,
        None => 0.0,
    };
    let restart = crate::commands::restart_policy(s["restart"].as_str().unwrap_or("no"))
        .map_err(Error::Other)?;
    let networks = service_networks(s);
    let network_mode = match s["network_mode"].as_str() {
        Some(m) if m.starts_with("service:") => {
            let other = &m["service:".len()..];
            format!(
                "container:{}",
                peer.get(other).ok_or_else(|| Error::Other(format!(
                    "service {other} has no container to share a network with"
                )))?
            )
        }
        Some(m) => m.to_string(),
        None => networks
            .first()
            .map(|(k, _)| network_name(p, k))
            .unwrap_or_else(|| "bridge".into()),
    };
    let mut endpoints = Map::new();
    if let Some((key, cfg)) = networks.first() {
        endpoints.insert(network_name(p, key), endpoint(name, cfg));
    }
    let mut body = json!({
        "Image": image_of(p, name),
        "Cmd": argv(&s["command"])?,
        "Entrypoint": argv(&s["entrypoint"])?,
        "Env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Labels": labels,
        "Hostname": s["hostname"].as_str().unwrap_or(""),
        "Domainname": s["domainname"].as_str().unwrap_or(""),
        "User": s["user"].as_str().unwrap_or(""),
        "WorkingDir": s["working_dir"].as_str().unwrap_or(""),
        "Tty": s["tty"].as_bool().unwrap_or(false),
        "OpenStdin": s["stdin_open"].as_bool().unwrap_or(false),
        "ExposedPorts": exposed,
        "Volumes": anonymous,
        "Healthcheck": healthcheck,
        "StopSignal": s["stop_signal"],
        "StopTimeout": nanos(&s["stop_grace_period"])?.map(|n| n / 1_000_000_000),
        "HostConfig": {
            "Binds": binds,
            "Mounts": mounts,
            "NetworkMode": network_mode,
            "PortBindings": bindings,
            "RestartPolicy": restart,
            "CapAdd": strings(&s["cap_add"]),
            "CapDrop": strings(&s["cap_drop"]),
            "Privileged": s["privileged"].as_bool().unwrap_or(false),
            "ReadonlyRootfs": s["read_only"].as_bool().unwrap_or(false),
            "Init": s["init"],
            "ExtraHosts": strings(&s["extra_hosts"]),
            "Dns": strings(&s["dns"]),
            "DnsSearch": strings(&s["dns_search"]),
            "DnsOptions": strings(&s["dns_opt"]),
            "Tmpfs": tmpfs,
            "Sysctls": s["sysctls"].as_object().cloned().unwrap_or_default(),
            "Ulimits": ulimits,
            "GroupAdd": strings(&s["group_add"]),
            "SecurityOpt": strings(&s["security_opt"]),
            "PidMode": s["pid"].as_str().unwrap_or(""),
            "IpcMode": s["ipc"].as_str().unwrap_or(""),
            "Memory": memory,
            "NanoCpus": (cpus * 1e9) as i64,
            "PidsLimit": limits["pids"].as_i64().or(s["pids_limit"].as_i64()),
            "ShmSize": match s["shm_size"].as_str() { Some(x) => crate::commands::ram_in_bytes(x).map_err(Error::Other)?, None => 0 },
            "LogConfig": {"Type": s["logging"]["driver"].as_str().unwrap_or(""),
                "Config": s["logging"]["options"].as_object().cloned().unwrap_or_default()},
            "Devices": strings(&s["devices"]).iter().map(|d| {
                let mut parts = d.splitn(3, ':');
                let host = parts.next().unwrap_or_default();
                let inside = parts.next().unwrap_or(host);
                json!({"PathOnHost": host, "PathInContainer": inside, "CgroupPermissions": parts.next().unwrap_or("rwm")})
            }).collect::<Vec<_>>(),
        },
        "NetworkingConfig": {"EndpointsConfig": endpoints},
    });
    strip_nulls(&mut body);
    Ok(body)
}

/// The image a service runs: its `image`, or for a service that only builds,
/// `<project>-<service>` (compose's name for it).
fn image_of(p: &Project, name: &str) -> String {
    match p.services()[name]["image"].as_str() {
        Some(i) => i.to_string(),
        None => format!("{}-{name}", p.name),
    }
}

/// Builds the services that have `build:` (all of them with `force`, else those whose
/// image is missing), through `POST /build` as `berth build` does.
async fn build_images(c: &Client, p: &Project, only: &[String], force: bool) -> Result<(), Error> {
    for (name, svc) in p.services() {
        if !(only.is_empty() || only.contains(name)) {
            continue;
        }
        let b = &svc["build"];
        if b.is_null() {
            continue;
        }
        let image = image_of(p, name);
        if !force
            && c.json(Method::GET, &format!("/images/{}/json", q(&image)), None)
                .await
                .is_ok()
        {
            continue;
        }
        let (context, dockerfile, target) = match b {
            Value::String(ctx) => (ctx.clone(), None, None),
            other => (
                other["context"].as_str().unwrap_or(".").to_string(),
                other["dockerfile"].as_str().map(String::from),
                other["target"].as_str().map(String::from),
            ),
        };
        let dir = p.dir.join(&context);
        let mut args = vec!["build".to_string(), "-t".to_string(), image.clone()];
        if let Some(f) = dockerfile {
            args.extend(["-f".to_string(), f]);
        }
        if let Some(t) = target {
            args.extend(["--target".to_string(), t]);
        }
        for (k, v) in load_args(&b["args"]) {
            args.extend(["--build-arg".to_string(), format!("{k}={v}")]);
        }
        args.push(dir.display().to_string());
        progress(&format!("Service {name}"), "Building");
        if crate::commands::run_args(c, &args).await? != 0 {
            return Err(Error::Other(format!("failed to build service {name}")));
        }
        progress(&format!("Service {name}"), "Built");
    }
    Ok(())
}

/// `build.args` as a list (`K=V`) or a map.
fn load_args(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                (
                    k.clone(),
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string()),
                )
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| {
                x.as_str()?
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn endpoint(service: &str, cfg: &Value) -> Value {
    let mut aliases = vec![json!(service)];
    aliases.extend(cfg["aliases"].as_array().cloned().unwrap_or_default());
    json!({"Aliases": aliases, "IPAMConfig": {"IPv4Address": cfg["ipv4_address"].as_str().unwrap_or("")}})
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

fn replicas(p: &Project, name: &str, scale: &[String]) -> Result<u32, Error> {
    for s in scale {
        if let Some((svc, n)) = s.split_once('=') {
            if svc == name {
                return n
                    .parse()
                    .map_err(|_| Error::Other(format!("invalid --scale {s}")));
            }
        }
    }
    let s = &p.services()[name];
    Ok(s["deploy"]["replicas"]
        .as_u64()
        .or(s["scale"].as_u64())
        .unwrap_or(1) as u32)
}

/// Waits for what a service's `depends_on` asks of each dependency.
async fn wait_dependencies(c: &Client, p: &Project, name: &str) -> Result<(), Error> {
    for (dep, cond) in p.services()[name]["depends_on"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let condition = cond["condition"].as_str().unwrap_or("service_started");
        if condition == "service_started" {
            continue;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        'wait: loop {
            let list = containers(c, &p.name, Some(dep), true).await?;
            let mut all_ok = !list.is_empty();
            for ct in &list {
                let v = c
                    .json(
                        Method::GET,
                        &format!("/containers/{}/json", q(ct["Id"].as_str().unwrap_or(""))),
                        None,
                    )
                    .await?;
                match condition {
                    "service_healthy" => match v["State"]["Health"]["Status"].as_str() {
                        Some("healthy") => {}
                        Some("unhealthy") => {
                            return Err(Error::Other(format!(
                                "dependency failed to start: container {} is unhealthy",
                                name_of(ct)
                            )));
                        }
                        None => {
                            return Err(Error::Other(format!(
                                "container {} has no healthcheck configured",
                                name_of(ct)
                            )));
                        }
                        _ => all_ok = false,
                    },
                    "service_completed_successfully" => {
                        if v["State"]["Running"] == true {
                            all_ok = false;
                        } else if v["State"]["ExitCode"] != 0 {
                            return Err(Error::Other(format!(
                                "service \"{dep}\" didn't complete successfully: exit {}",
                                v["State"]["ExitCode"]
                            )));
                        }
                    }
                    _ => {}
                }
            }
            if all_ok {
                progress(
                    &format!("Container {}-{dep}-1", p.name),
                    if condition == "service_healthy" {
                        "Healthy"
                    } else {
                        "Exited"
                    },
                );
                break 'wait;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "timed out waiting for {dep} ({condition})"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// `up`/`create`: networks, volumes, then each service in dependency order: its
/// containers made, kept or recreated by their configuration hash, and started. Returns
/// the ids of the project's containers.
#[allow(clippy::too_many_arguments)]
async fn up(
    c: &Client,
    p: &Project,
    only: &[String],
    scale: &[String],
    force_recreate: bool,
    no_recreate: bool,
    remove_orphans: bool,
    start: bool,
) -> Result<Vec<String>, Error> {
    let order = load::order(p.services()).map_err(Error::Other)?;
    // The services asked for, and what they depend on.
    let mut chosen: Vec<String> = Vec::new();
    fn add(s: &str, p: &Project, out: &mut Vec<String>) {
        if out.iter().any(|x| x == s) || !p.services().contains_key(s) {
            return;
        }
        out.push(s.to_string());
        for (d, _) in p.services()[s]["depends_on"]
            .as_object()
            .into_iter()
            .flatten()
        {
            add(d, p, out);
        }
    }
    for s in only {
        if !p.services().contains_key(s) {
            return Err(Error::Other(format!("no such service: {s}")));
        }
        add(s, p, &mut chosen);
    }
    let services: Vec<String> = order
        .into_iter()
        .filter(|s| only.is_empty() || chosen.contains(s))
        .collect();
    // Orphans: containers of services this project no longer has.
    let existing = containers(c, &p.name, None, true).await?;
    let orphans: Vec<&Value> = existing
        .iter()
        .filter(|ct| {
            !p.services().contains_key(label(ct, SERVICE))
                && !p.inactive.iter().any(|s| s == label(ct, SERVICE))
        })
        .collect();
    if !orphans.is_empty() {
        if remove_orphans {
            for ct in &orphans {
                c.json(
                    Method::DELETE,
                    &format!(
                        "/containers/{}?force=true",
                        q(ct["Id"].as_str().unwrap_or(""))
                    ),
                    None,
                )
                .await?;
                progress(&format!("Container {}", name_of(ct)), "Removed");
            }
        } else {
            let names: Vec<String> = orphans.iter().map(|ct| name_of(ct)).collect();
            eprintln!(
                "WARN[0000] Found orphan containers ([{}]) for this project. If you removed or renamed this service in your compose file, you can run this command with the --remove-orphans flag to clean it up.",
                names.join(" ")
            );
        }
    }
    ensure_networks(c, p, &services).await?;
    ensure_volumes(c, p, &services).await?;
    let mut ids = Vec::new();
    let mut first_of: HashMap<String, String> = HashMap::new();
    let mut recreated: std::collections::BTreeSet<String> = Default::default();
    for name in &services {
        let svc = &p.services()[name];
        let hash = config_hash(svc);
        let n = replicas(p, name, scale)?;
        let mine = containers(c, &p.name, Some(name), true).await?;
        if start {
            wait_dependencies(c, p, name).await?;
        }
        for number in 1..=n {
            let cname = match (svc["container_name"].as_str(), n) {
                (Some(cn), 1) => cn.to_string(),
                _ => format!("{}-{name}-{number}", p.name),
            };
            let found = mine
                .iter()
                .find(|ct| label(ct, NUMBER) == number.to_string());
            let id = match found {
                Some(ct) if no_recreate || (!force_recreate && label(ct, HASH) == hash) => {
                    let id = ct["Id"].as_str().unwrap_or("").to_string();
                    if start && ct["State"] != "running" {
                        c.json(Method::POST, &format!("/containers/{id}/start"), None)
                            .await?;
                        progress(&format!("Container {cname}"), "Started");
                    } else if start && follows_recreated(svc, &recreated) {
                        // A dependency with `restart: true` was recreated just now.
                        c.json(Method::POST, &format!("/containers/{id}/restart"), None)
                            .await?;
                        progress(&format!("Container {cname}"), "Restarted");
                    } else {
                        progress(&format!("Container {cname}"), "Running");
                    }
                    id
                }
                other => {
                    if let Some(old) = other {
                        let oid = old["Id"].as_str().unwrap_or("");
                        let t = nanos(&svc["stop_grace_period"])?
                            .map(|n| n / 1_000_000_000)
                            .unwrap_or(10);
                        let _ = c
                            .json(Method::POST, &format!("/containers/{oid}/stop?t={t}"), None)
                            .await;
                        c.json(Method::DELETE, &format!("/containers/{oid}"), None)
                            .await?;
                    }
                    let body = create_body(p, name, number, &hash, &first_of)?;
                    let files = inline_files(p, name)?;
                    let v = c
                        .json(
                            Method::POST,
                            &format!("/containers/create?name={}", q(&cname)),
                            Some(&body),
                        )
                        .await?;
                    let id = v["Id"].as_str().unwrap_or("").to_string();
                    put_files(c, &id, &files).await?;
                    if other.is_some() {
                        recreated.insert(name.clone());
                    }
                    // The networks beyond the first.
                    for (key, cfg) in service_networks(svc).iter().skip(1) {
                        let b = json!({"Container": id, "EndpointConfig": endpoint(name, cfg)});
                        c.json(
                            Method::POST,
                            &format!("/networks/{}/connect", q(&network_name(p, key))),
                            Some(&b),
                        )
                        .await?;
                    }
                    progress(
                        &format!("Container {cname}"),
                        if other.is_some() {
                            "Recreated"
                        } else {
                            "Created"
                        },
                    );
                    if start {
                        c.json(Method::POST, &format!("/containers/{id}/start"), None)
                            .await?;
                        progress(&format!("Container {cname}"), "Started");
                    }
                    id
                }
            };
            first_of.entry(name.clone()).or_insert_with(|| id.clone());
            ids.push(id);
        }
        // Scaled down: the highest numbers go.
        for ct in mine
            .iter()
            .filter(|ct| label(ct, NUMBER).parse::<u32>().unwrap_or(0) > n)
        {
            let id = ct["Id"].as_str().unwrap_or("");
            let _ = c
                .json(Method::POST, &format!("/containers/{id}/stop"), None)
                .await;
            c.json(Method::DELETE, &format!("/containers/{id}"), None)
                .await?;
            progress(&format!("Container {}", name_of(ct)), "Removed");
        }
    }
    Ok(ids)
}

/// `up --wait`: every container running, and healthy where it has a healthcheck.
async fn wait_healthy(c: &Client, _p: &Project, ids: &[String]) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    for id in ids {
        loop {
            let v = c
                .json(Method::GET, &format!("/containers/{id}/json"), None)
                .await?;
            let health = v["State"]["Health"]["Status"].as_str();
            let running = v["State"]["Running"] == true;
            match health {
                Some("unhealthy") => {
                    return Err(Error::Other(format!(
                        "container {} is unhealthy",
                        v["Name"].as_str().unwrap_or("").trim_start_matches('/')
                    )))
                }
                Some("healthy") | None if running => break,
                _ if !running => {
                    return Err(Error::Other(format!(
                        "container {} exited ({})",
                        v["Name"].as_str().unwrap_or("").trim_start_matches('/'),
                        v["State"]["ExitCode"]
                    )));
                }
                _ => {}
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Other("timed out waiting for the services".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Follows one container's output with a `name  | ` prefix until it ends.
async fn follow(
    c: Client,
    id: String,
    prefix: String,
    follow: bool,
    tail: Option<String>,
    timestamps: bool,
) {
    use http_body_util::BodyExt;
    let mut path =
        format!("/containers/{id}/logs?stdout=1&stderr=1&follow={follow}&timestamps={timestamps}");
    if let Some(t) = tail {
        path.push_str(&format!("&tail={}", q(&t)));
    }
    let tty = c
        .json(Method::GET, &format!("/containers/{id}/json"), None)
        .await
        .map(|v| v["Config"]["Tty"] == true)
        .unwrap_or(false);
    let Ok(resp) = c
        .send(Method::GET, &path, crate::client::empty(), None, false)
        .await
    else {
        return;
    };
    let mut body = resp.into_body();
    let mut demux = Demux::new();
    let mut pending: Vec<u8> = Vec::new();
    let emit = |data: &[u8], pending: &mut Vec<u8>| {
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(prefix.as_bytes());
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
    };
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if tty {
                emit(&data, &mut pending);
            } else {
                for (_, payload) in demux.push(&data) {
                    emit(&payload, &mut pending);
                }
            }
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        emit(&[], &mut pending);
    }
}

/// `name  | ` for each container, padded to the longest name, and coloured per container
/// as compose does when the output is a terminal.
fn prefixes(list: &[Value], bare: bool) -> Vec<String> {
    const COLOURS: &[u8] = &[36, 33, 32, 35, 34, 96, 93, 92, 95, 94];
    let colour =
        rustix::termios::isatty(std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    let width = list.iter().map(|ct| name_of(ct).len()).max().unwrap_or(0);
    list.iter()
        .enumerate()
        .map(|(i, ct)| {
            if bare {
                String::new()
            } else if colour {
                let c = COLOURS[i % COLOURS.len()];
                format!("\x1b[{c}m{:width$}  |\x1b[0m ", name_of(ct))
            } else {
                format!("{:width$}  | ", name_of(ct))
            }
        })
        .collect()
}

/// `up` without `-d`: the containers' output, prefixed, until they all exit (or one,
/// with `--abort-on-container-exit`); ctrl-c stops them.
async fn attached(
    c: &Client,
    p: &Project,
    ids: &[String],
    abort: bool,
    exit_code_from: Option<String>,
) -> Result<i32, Error> {
    let list: Vec<Value> = containers(c, &p.name, None, true)
        .await?
        .into_iter()
        .filter(|ct| ids.iter().any(|i| ct["Id"] == i.as_str()))
        .collect();
    let pre = prefixes(&list, false);
    let mut followers = Vec::new();
    let mut waits = tokio::task::JoinSet::new();
    for (ct, prefix) in list.iter().zip(pre) {
        let id = ct["Id"].as_str().unwrap_or("").to_string();
        followers.push(tokio::spawn(follow(
            c.clone(),
            id.clone(),
            prefix,
            true,
            Some("all".into()),
            false,
        )));
        let (c2, svc, name) = (c.clone(), label(ct, SERVICE).to_string(), name_of(ct));
        waits.spawn(async move {
            let v = c2
                .json(Method::POST, &format!("/containers/{id}/wait"), None)
                .await;
            (
                svc,
                name,
                v.ok().and_then(|v| v["StatusCode"].as_i64()).unwrap_or(0),
            )
        });
    }
    let mut code = 0;
    loop {
        tokio::select! {
            done = waits.join_next() => {
                let Some(Ok((svc, name, status))) = done else { break };
                println!("{name} exited with code {status}");
                if exit_code_from.as_deref() == Some(svc.as_str()) {
                    code = status as i32;
                }
                if abort {
                    eprintln!("Aborting on container exit...");
                    stop_all(c, &list).await;
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
                stop_all(c, &list).await;
                break;
            }
        }
    }
    for f in followers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), f).await;
    }
    Ok(code)
}

async fn stop_all(c: &Client, list: &[Value]) {
    for ct in list.iter().rev() {
        let id = ct["Id"].as_str().unwrap_or("");
        if c.json(Method::POST, &format!("/containers/{id}/stop"), None)
            .await
            .is_ok()
        {
            progress(&format!("Container {}", name_of(ct)), "Stopped");
        }
    }
}

/// For stopping: 0 for a service nothing depends on, else one more than the deepest of
/// the services that depend on it.
fn stop_depths(services: &Map<String, Value>) -> HashMap<String, usize> {
    fn depth(
        s: &str,
        services: &Map<String, Value>,
        memo: &mut HashMap<String, usize>,
        seen: &mut Vec<String>,
    ) -> usize {
        if let Some(d) = memo.get(s) {
            return *d;
        }
        if seen.iter().any(|x| x == s) {
            return 0;
        }
        seen.push(s.to_string());
        let d = services
            .iter()
            .filter(|(_, v)| v["depends_on"].get(s).is_some())
            .map(|(k, _)| depth(k, services, memo, seen) + 1)
            .max()
            .unwrap_or(0);
        seen.pop();
        memo.insert(s.to_string(), d);
        d
    }
    let mut memo = HashMap::new();
    for k in services.keys() {
        depth(k, services, &mut memo, &mut Vec::new());
    }
    memo
}

/// `down`: containers in reverse dependency order, then the project's networks, and with
/// `-v` its volumes.
/// With `rmi`: the services' images too (`Some(true)`: all of them; `Some(false)`: only
/// those without a custom tag, which compose built and named itself).
async fn down(
    c: &Client,
    p: &Project,
    volumes: bool,
    rmi: Option<bool>,
    remove_orphans: bool,
    timeout: Option<i64>,
) -> Result<i32, Error> {
    // A cycle is refused here too.
    load::order(p.services()).map_err(Error::Other)?;
    let mut list = containers(c, &p.name, None, true).await?;
    list.retain(|ct| {
        remove_orphans
            || p.services().contains_key(label(ct, SERVICE))
            || p.inactive.iter().any(|s| s == label(ct, SERVICE))
    });
    // In waves: a service goes once everything that depends on it has gone; everything
    // in one wave (services and their replicas) goes at once.
    let depth = stop_depths(p.services());
    let wave = |ct: &Value| -> usize {
        // Orphans (services no longer in the model) go first.
        depth.get(label(ct, SERVICE)).map(|d| d + 1).unwrap_or(0)
    };
    list.sort_by_key(|ct| wave(ct));
    let t = timeout.map(|t| format!("?t={t}")).unwrap_or_default();
    let mut i = 0;
    while i < list.len() {
        let w = wave(&list[i]);
        let group: Vec<&Value> = list[i..].iter().take_while(|ct| wave(ct) == w).collect();
        i += group.len();
        let results = futures_util::future::join_all(group.iter().map(|ct| {
            let t = &t;
            async move {
                let id = ct["Id"].as_str().unwrap_or("");
                let name = name_of(ct);
                if ct["State"] == "running" || ct["State"] == "paused" {
                    c.json(Method::POST, &format!("/containers/{id}/stop{t}"), None)
                        .await?;
                    progress(&format!("Container {name}"), "Stopped");
                }
                c.json(Method::DELETE, &format!("/containers/{id}?v=true"), None)
                    .await?;
                progress(&format!("Container {name}"), "Removed");
                Ok::<(), Error>(())
            }
        }))
        .await;
        for r in results {
            r?;
        }
    }
    let nets = c
        .json(
            Method::GET,
            &format!(
                "/networks?filters={}",
                filters_json(&[format!("label={PROJECT}={}", p.name)])
            ),
            None,
        )
        .await?;
    for n in nets.as_array().into_iter().flatten() {
        let name = n["Name"].as_str().unwrap_or("");
        c.json(Method::DELETE, &format!("/networks/{}", q(name)), None)
            .await?;
        progress(&format!("Network {name}"), "Removed");
    }
    if volumes {
        let vols = c
            .json(
                Method::GET,
                &format!(
                    "/volumes?filters={}",
                    filters_json(&[format!("label={PROJECT}={}", p.name)])
                ),
                None,
            )
            .await?;
        for v in vols["Volumes"].as_array().into_iter().flatten() {
            let name = v["Name"].as_str().unwrap_or("");
            c.json(Method::DELETE, &format!("/volumes/{}", q(name)), None)
                .await?;
            progress(&format!("Volume {name}"), "Removed");
        }
    }
    if let Some(all) = rmi {
        let mut images: Vec<String> = p
            .services()
            .iter()
            .filter(|(_, s)| all || s.get("image").is_none())
            .map(|(name, _)| image_of(p, name))
            .collect();
        images.sort();
        images.dedup();
        for image in images {
            // Images that are missing or still used elsewhere stay, as with compose.
            match c
                .json(Method::DELETE, &format!("/images/{}", q(&image)), None)
                .await
            {
                Ok(_) => progress(&format!("Image {image}"), "Removed"),
                Err(e) if e.status() == 404 => {}
                Err(e) => eprintln!("{e}"),
            }
        }
    }
    Ok(0)
}

async fn ps(
    c: &Client,
    p: &Project,
    all: bool,
    quiet: bool,
    services: bool,
    format: Option<String>,
    only: &[String],
) -> Result<i32, Error> {
    let list: Vec<Value> = containers(c, &p.name, None, all)
        .await?
        .into_iter()
        .filter(|ct| wanted(ct, only))
        .collect();
    if services {
        let mut names: Vec<&str> = list.iter().map(|ct| label(ct, SERVICE)).collect();
        names.dedup();
        for n in names {
            println!("{n}");
        }
        return Ok(0);
    }
    if quiet {
        for ct in &list {
            println!("{}", ct["Id"].as_str().unwrap_or(""));
        }
        return Ok(0);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let rows: Vec<Value> = list
        .iter()
        .map(|ct| {
            let cmd = ct["Command"].as_str().unwrap_or("");
            let created = ct["Created"].as_i64().unwrap_or(0);
            json!({"Name": name_of(ct), "Image": ct["Image"], "Command": format!("\"{}\"", if cmd.chars().count() > 20 { format!("{}…", cmd.chars().take(19).collect::<String>()) } else { cmd.to_string() }),
                "Service": label(ct, SERVICE), "RunningFor": format!("{} ago", berth_types::time::human_duration(now - created)),
                "Status": ct["Status"], "State": ct["State"], "Ports": crate::commands::ports_text(&ct["Ports"]), "ID": ct["Id"]})
        })
        .collect();
    crate::commands::print_list(
        &rows,
        format.as_deref(),
        "table {{.Name}}\t{{.Image}}\t{{.Command}}\t{{.Service}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}",
        |f| match f {
            "RunningFor" => "CREATED".into(),
            other => other.to_uppercase(),
        },
    )
}

async fn logs(
    c: &Client,
    p: &Project,
    follow_: bool,
    tail: Option<String>,
    timestamps: bool,
    bare: bool,
    only: &[String],
) -> Result<i32, Error> {
    let list: Vec<Value> = containers(c, &p.name, None, true)
        .await?
        .into_iter()
        .filter(|ct| wanted(ct, only))
        .collect();
    let pre = prefixes(&list, bare);
    let mut tasks = Vec::new();
    for (ct, prefix) in list.iter().zip(pre) {
        let task = follow(
            c.clone(),
            ct["Id"].as_str().unwrap_or("").to_string(),
            prefix,
            follow_,
            tail.clone(),
            timestamps,
        );
        if follow_ {
            tasks.push(tokio::spawn(task));
        } else {
            task.await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(0)
}

fn config(p: &Project, services: bool, volumes: bool, quiet: bool) -> Result<i32, Error> {
    if quiet {
        return Ok(0);
    }
    if services {
        for s in load::order(p.services()).map_err(Error::Other)? {
            println!("{s}");
        }
        return Ok(0);
    }
    if volumes {
        for v in p.model["volumes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            println!("{v}");
        }
        return Ok(0);
    }
    let mut out = p.model.clone();
    out["name"] = json!(p.name);
    if let Some(nets) = out["networks"].as_object_mut() {
        let used_default = p
            .services()
            .values()
            .any(|s| service_networks(s).iter().any(|(k, _)| k == "default"));
        if used_default && !nets.contains_key("default") {
            nets.insert("default".into(), json!({}));
        }
        for (k, n) in nets.iter_mut() {
            if n.is_null() {
                *n = json!({});
            }
            if n.get("name").is_none() {
                n["name"] = json!(format!("{}_{k}", p.name));
            }
        }
    }
    let text = serde_yaml_ng::to_string(&out).map_err(|e| Error::Other(e.to_string()))?;
    print!("{text}");
    Ok(0)
}

/// `compose ls`: projects by their containers' labels.
async fn ls(c: &Client, all: bool, quiet: bool) -> Result<i32, Error> {
    let v = c
        .json(
            Method::GET,
            &format!(
                "/containers/json?all={all}&filters={}",
                filters_json(&[PROJECT.to_string()].map(|k| format!("label={k}")))
            ),
            None,
        )
        .await?;
    let mut projects: BTreeMap<String, (Vec<String>, BTreeMap<String, u32>)> = BTreeMap::new();
    for ct in v.as_array().into_iter().flatten() {
        let e = projects.entry(label(ct, PROJECT).to_string()).or_default();
        let files = ct["Labels"]["com.docker.compose.project.config_files"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !e.0.contains(&files) {
            e.0.push(files);
        }
        *e.1.entry(ct["State"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    if quiet {
        for k in projects.keys() {
            println!("{k}");
        }
        return Ok(0);
    }
    let rows: Vec<Value> = projects
        .iter()
        .map(|(name, (files, states))| {
            let status: Vec<String> = states.iter().map(|(s, n)| format!("{s}({n})")).collect();
            json!({"Name": name, "Status": status.join(", "), "ConfigFiles": files.join(",")})
        })
        .collect();
    crate::commands::print_list(
        &rows,
        None,
        "table {{.Name}}\t{{.Status}}\t{{.ConfigFiles}}",
        |f| match f {
            "ConfigFiles" => "CONFIG FILES".into(),
            other => other.to_uppercase(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("compose.yaml");
        std::fs::write(&f, yaml).unwrap();
        let p = load::load(&load::Options::default(), &HashMap::new(), dir.path()).unwrap();
        std::mem::forget(dir);
        p
    }

    #[test]
    fn a_service_becomes_a_create_body() {
        let p = project(
            "name: demo\nservices:\n  web:\n    image: busybox\n    command: httpd -f -p \"80\"\n    environment:\n      A: '1'\n    ports: ['127.0.0.1:8080:80']\n    volumes: ['data:/data', './site:/www:ro', '/cache']\n    healthcheck:\n      test: wget -q localhost\n      interval: 2s\n      retries: 3\n    restart: on-failure:2\n    networks:\n      front:\n        aliases: [www]\n    deploy:\n      resources:\n        limits: {memory: 64M, cpus: '0.5'}\nnetworks:\n  front: {}\nvolumes:\n  data: {}\n",
        );
        let b = create_body(&p, "web", 1, "h", &HashMap::new()).unwrap();
        assert_eq!(b["Cmd"], json!(["httpd", "-f", "-p", "80"]));
        assert_eq!(b["Env"], json!(["A=1"]));
        assert_eq!(b["Labels"][PROJECT], "demo");
        assert_eq!(b["Labels"][NUMBER], "1");
        assert_eq!(
            b["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
            "8080"
        );
        assert_eq!(b["HostConfig"]["Binds"][0], "demo_data:/data");
        assert!(b["HostConfig"]["Binds"][1]
            .as_str()
            .unwrap()
            .ends_with("/site:/www:ro"));
        assert!(b["Volumes"].get("/cache").is_some());
        assert_eq!(
            b["Healthcheck"]["Test"],
            json!(["CMD-SHELL", "wget -q localhost"])
        );
        assert_eq!(b["Healthcheck"]["Interval"], 2_000_000_000u64);
        assert_eq!(b["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);
        assert_eq!(b["HostConfig"]["NetworkMode"], "demo_front");
        assert_eq!(
            b["NetworkingConfig"]["EndpointsConfig"]["demo_front"]["Aliases"],
            json!(["web", "www"])
        );
        assert_eq!(b["HostConfig"]["Memory"], 64 << 20);
        assert_eq!(b["HostConfig"]["NanoCpus"], 500_000_000);
    }

    #[test]
    fn down_goes_in_waves_dependents_first() {
        let s = json!({"db": {}, "web": {"depends_on": {"db": {}}}, "cli": {"depends_on": {"web": {}}}, "solo": {}});
        let d = stop_depths(s.as_object().unwrap());
        assert_eq!((d["cli"], d["solo"], d["web"], d["db"]), (0, 0, 1, 2));
    }

    #[test]
    fn the_hash_follows_the_configuration_not_the_scale() {
        let a = json!({"image": "busybox", "deploy": {"replicas": 2}});
        let b = json!({"image": "busybox", "deploy": {"replicas": 3}});
        let c = json!({"image": "busybox", "command": "true"});
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_ne!(config_hash(&a), config_hash(&c));
    }
}
