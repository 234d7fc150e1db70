//! `berth runtime ...` / `berth-runc ...`: runc's command line over berth-runtime, so that
//! containerd's runc shim and OCI conformance suites can drive Berth as they drive runc.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_runtime::{CreateOptions, ExecOptions, Runtime};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth runtime",
    version,
    about = "OCI runtime with runc's command line"
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, default_value = "/run/berth/runtime")]
    root: PathBuf,
    /// Also write errors (and with --debug, progress) to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long = "log-format", default_value = "text")]
    log_format: String,
    /// Interpret cgroupsPath as slice:prefix:name.
    #[arg(long = "systemd-cgroup")]
    systemd_cgroup: bool,
    #[arg(long)]
    debug: bool,
    /// Accepted for compatibility; checkpointing is not supported.
    #[arg(long, hide = true)]
    criu: Option<String>,
    /// Accepted for compatibility (true, false or auto).
    #[arg(long, hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the container's pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for compatibility (no session keyring is created).
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass N extra descriptors (3..3+N) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Run the created container's process.
    Start { id: String },
    /// Print the container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init, or with --all to every process.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a stopped container (--force: any container).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; without --detach wait for it and exit with its status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a new process inside a running container.
    Exec(Box<ExecArgs>),
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Write a default config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
    /// Print the runtime's features as JSON.
    Features,
    /// Change the resource limits of a container.
    Update(Box<UpdateArgs>),
    /// Print container events (resource stats).
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// A JSON file with the runtime spec's LinuxResources ("-" for stdin).
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long)]
    memory: Option<i64>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<i64>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<i64>,
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    id: String,
}

#[derive(clap::Args)]
struct ExecArgs {
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short, long)]
    env: Vec<String>,
    #[arg(short, long)]
    tty: bool,
    /// uid[:gid]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// A process.json to run instead of the command line.
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long)]
    apparmor: Option<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
    #[arg(long)]
    cgroup: Vec<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Long flags runc's Go parser also accepts with a single dash (`-root`, `-bundle`).
const LONG_FLAGS: &[&str] = &[
    "root",
    "log",
    "log-format",
    "systemd-cgroup",
    "debug",
    "criu",
    "rootless",
    "bundle",
    "console-socket",
    "pid-file",
    "no-pivot",
    "no-new-keyring",
    "preserve-fds",
    "all",
    "force",
    "detach",
    "keep",
    "format",
    "quiet",
    "stats",
    "interval",
    "cwd",
    "env",
    "tty",
    "user",
    "additional-gids",
    "process",
    "process-label",
    "apparmor",
    "no-new-privs",
    "cap",
    "ignore-paused",
    "cgroup",
];

/// Long flags that take a value (`--flag value` consumes the next argument).
const VALUE_FLAGS: &[&str] = &[
    "root",
    "log",
    "log-format",
    "criu",
    "rootless",
    "bundle",
    "console-socket",
    "pid-file",
    "preserve-fds",
    "format",
    "interval",
    "cwd",
    "env",
    "user",
    "additional-gids",
    "process",
    "process-label",
    "apparmor",
    "cap",
    "cgroup",
];

/// Rewrites runc-style `-flag` into `--flag` (Go's flag package accepts both). Everything
/// after the subcommand and the container id is left alone: for exec and ps it belongs to
/// the command inside the container.
fn normalise(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut positional: Vec<&str> = Vec::new();
    let mut value_next = false;
    for a in args {
        if value_next {
            value_next = false;
            out.push(a.clone());
            continue;
        }
        if positional.len() >= 2 || a == "-" || !a.starts_with('-') {
            if positional.len() < 2 {
                positional.push(a);
            }
            out.push(a.clone());
            continue;
        }
        let long = match a.strip_prefix("--") {
            Some(l) => Some(l.to_string()),
            None => {
                let name = &a[1..];
                LONG_FLAGS
                    .contains(&name.split('=').next().unwrap_or(""))
                    .then(|| name.to_string())
            }
        };
        match long {
            Some(l) => {
                value_next = !l.contains('=') && VALUE_FLAGS.contains(&l.as_str());
                out.push(format!("--{l}"));
            }
            None => {
                // Short flags: those that take a value depend on the subcommand for -f.
                let sub = positional.first().copied().unwrap_or("");
                value_next = a.len() == 2
                    && match &a[1..] {
                        "b" | "e" | "u" | "g" | "p" | "c" => true,
                        "f" => matches!(sub, "ps" | "list"),
                        _ => false,
                    };
                out.push(a.clone());
            }
        }
    }
    out
}

pub fn main(bin: &str, args: &[String]) -> i32 {
    if args.first().map(String::as_str) == Some("__init") {
        berth_runtime::container::init_entry();
    }
    let mut argv = vec![bin.to_string()];
    argv.extend(normalise(args));
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let log = Logger {
        path: cli.log.clone(),
        json: cli.log_format == "json",
    };
    if cli.debug {
        log.write("debug", &format!("invoked: {}", args.join(" ")));
    }
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            log.error(&msg);
            eprintln!("berth runtime: error: {msg}");
            1
        }
    }
}

struct Logger {
    path: Option<PathBuf>,
    json: bool,
}

impl Logger {
    fn error(&self, msg: &str) {
        self.write("error", msg);
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.path else { return };
        let time = berth_runtime::state::now_rfc3339();
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn dispatch(cli: &Cli) -> Result<i32> {
    let rt = Runtime {
        root: cli.root.clone(),
        systemd_cgroup: cli.systemd_cgroup,
    };
    match &cli.cmd {
        Cmd::Create(a) => rt.create(&create_opts(a))?,
        Cmd::Start { id } => rt.start(id)?,
        Cmd::State { id } => println!("{}", rt.state(id)?),
        Cmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            rt.kill(id, sig, *all)?
        }
        Cmd::Delete { force, id } => rt.delete(id, *force)?,
        Cmd::Run {
            create,
            detach,
            keep,
        } => {
            let terminal = create.console_socket.is_none()
                && berth_runtime::spec::load(&create.bundle)
                    .ok()
                    .and_then(|(spec, _)| spec.process().as_ref().and_then(|p| p.terminal()))
                    .unwrap_or(false);
            if !terminal {
                return Ok(rt.run(&create_opts(create), *detach, *keep)?);
            }
            if *detach {
                bail!(
                    "cannot allocate tty if the runtime will detach without setting console socket"
                );
            }
            // runc's behaviour: the runtime holds the terminal itself.
            let console = berth_runtime::console::OwnConsole::listen(&rt.root)?;
            let mut opts = create_opts(create);
            opts.console_socket = Some(&console.socket);
            let code = rt.run(&opts, false, *keep);
            console.finish(code.is_ok());
            return Ok(code?);
        }
        Cmd::Exec(a) => return exec(&rt, a),
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => ps(&rt, format, id, ps_args)?,
        Cmd::List { format, quiet } => list(&rt, format, *quiet)?,
        Cmd::Update(a) => rt.update(&a.id, &update_resources(a)?)?,
        Cmd::Pause { id } => rt.pause(id, true)?,
        Cmd::Resume { id } => rt.pause(id, false)?,
        Cmd::Spec { bundle, rootless } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("File {} exists. Remove it first", path.display());
            }
            let v = berth_runtime::spec::default_spec_json(*rootless);
            std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Cmd::Features => println!(
            "{}",
            serde_json::to_string_pretty(&berth_runtime::features::features())?
        ),
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let every = parse_duration(interval)?;
            loop {
                let data = rt.stats(id)?;
                println!(
                    "{}",
                    serde_json::json!({"type": "stats", "id": id, "data": data})
                );
                if *stats {
                    break;
                }
                std::thread::sleep(every);
            }
        }
    }
    Ok(0)
}

fn update_resources(a: &UpdateArgs) -> Result<berth_runtime::oci_spec::runtime::LinuxResources> {
    let mut v: serde_json::Value = match &a.resources {
        Some(p) if p.as_os_str() == "-" => {
            serde_json::from_reader(std::io::stdin()).context("parsing resources from stdin")?
        }
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => serde_json::json!({}),
    };
    let mut set = |section: &str, key: &str, val: serde_json::Value| {
        if !val.is_null() {
            v[section][key] = val;
        }
    };
    set("memory", "limit", serde_json::json!(a.memory));
    set("memory", "swap", serde_json::json!(a.memory_swap));
    set(
        "memory",
        "reservation",
        serde_json::json!(a.memory_reservation),
    );
    set("cpu", "shares", serde_json::json!(a.cpu_shares));
    set("cpu", "quota", serde_json::json!(a.cpu_quota));
    set("cpu", "period", serde_json::json!(a.cpu_period));
    set("cpu", "cpus", serde_json::json!(a.cpuset_cpus));
    set("cpu", "mems", serde_json::json!(a.cpuset_mems));
    set("pids", "limit", serde_json::json!(a.pids_limit));
    set("blockIO", "weight", serde_json::json!(a.blkio_weight));
    serde_json::from_value(v).context("invalid resources")
}

fn create_opts(a: &CreateArgs) -> CreateOptions<'_> {
    CreateOptions {
        id: &a.id,
        bundle: &a.bundle,
        console_socket: a.console_socket.as_deref(),
        pid_file: a.pid_file.as_deref(),
        no_pivot: a.no_pivot,
        preserve_fds: a.preserve_fds,
    }
}

fn exec(rt: &Runtime, a: &ExecArgs) -> Result<i32> {
    let process: berth_runtime::oci_spec::runtime::Process = match &a.process {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: a command to run is required (or --process)");
            }
            let base = rt.container(&a.id)?.spec;
            let mut v = serde_json::to_value(base.process().clone().unwrap_or_default())?;
            v["args"] = serde_json::json!(a.command);
            v["terminal"] = serde_json::json!(a.tty);
            if let Some(cwd) = &a.cwd {
                v["cwd"] = serde_json::json!(cwd);
            }
            if !a.env.is_empty() {
                let mut env: Vec<String> =
                    serde_json::from_value(v["env"].take()).unwrap_or_default();
                for kv in &a.env {
                    let key = kv.split('=').next().unwrap_or("");
                    env.retain(|e| e.split('=').next() != Some(key));
                    env.push(kv.clone());
                }
                v["env"] = serde_json::json!(env);
            }
            if let Some(u) = &a.user {
                let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                v["user"]["uid"] =
                    serde_json::json!(uid.parse::<u32>().context("--user takes uid[:gid]")?);
                v["user"]["gid"] =
                    serde_json::json!(gid.parse::<u32>().context("--user takes uid[:gid]")?);
            }
            if !a.additional_gids.is_empty() {
                v["user"]["additionalGids"] = serde_json::json!(a.additional_gids);
            }
            if a.no_new_privs {
                v["noNewPrivileges"] = serde_json::json!(true);
            }
            for cap in &a.cap {
                for set in [
                    "bounding",
                    "effective",
                    "permitted",
                    "inheritable",
                    "ambient",
                ] {
                    let arr = v["capabilities"][set].as_array_mut();
                    match arr {
                        Some(arr) => arr.push(serde_json::json!(cap)),
                        None => v["capabilities"][set] = serde_json::json!([cap]),
                    }
                }
            }
            serde_json::from_value(v).context("building the exec process")?
        }
    };
    Ok(rt.exec(
        &a.id,
        process,
        &ExecOptions {
            console_socket: a.console_socket.as_deref(),
            pid_file: a.pid_file.as_deref(),
            detach: a.detach,
            preserve_fds: a.preserve_fds,
            ignore_paused: a.ignore_paused,
        },
    )?)
}

fn ps(rt: &Runtime, format: &str, id: &str, ps_args: &[String]) -> Result<()> {
    let pids = rt.ps(id)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("running ps")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for l in lines {
                let pid: Option<i32> = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{l}");
                }
            }
        }
        other => bail!("invalid format option {other:?}: use table or json"),
    }
    Ok(())
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> Result<()> {
    let all = rt.list()?;
    if quiet {
        for (c, _) in &all {
            println!("{}", c.id);
        }
        return Ok(());
    }
    match format {
        "json" => {
            let v: Vec<_> = all.iter().map(|(c, s)| c.output(*s)).collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        "table" => {
            let rows: Vec<[String; 6]> = all
                .iter()
                .map(|(c, s)| {
                    let o = c.output(*s);
                    [
                        c.id.clone(),
                        o.pid.to_string(),
                        s.to_string(),
                        c.bundle.display().to_string(),
                        c.created.clone(),
                        if c.owner.is_empty() {
                            "root".into()
                        } else {
                            c.owner.clone()
                        },
                    ]
                })
                .collect();
            let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from);
            let mut widths = header.clone().map(|h| h.len());
            for r in &rows {
                for (w, cell) in widths.iter_mut().zip(r) {
                    *w = (*w).max(cell.len());
                }
            }
            for r in std::iter::once(&header).chain(rows.iter()) {
                let line: Vec<String> = r
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", line.join("   ").trim_end());
            }
        }
        other => bail!("invalid format option {other:?}: use table or json"),
    }
    Ok(())
}

fn parse_signal(s: &str) -> Result<i32> {
    match berth_runtime::process::parse_signal(s) {
        Some(n) => Ok(n),
        None if s.parse::<i32>().is_ok() => bail!("invalid signal {s:?}"),
        None => bail!("unknown signal {s:?}"),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    Ok(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" | "" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => bail!("invalid duration {s:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn single_dash_long_flags_and_trailing_args() {
        assert_eq!(
            normalise(&v(&["-root", "/r", "create", "-bundle", "b", "id"])),
            v(&["--root", "/r", "create", "--bundle", "b", "id"])
        );
        // After `exec ID`, arguments belong to the command.
        assert_eq!(
            normalise(&v(&["exec", "id", "ls", "-root"])),
            v(&["exec", "id", "ls", "-root"])
        );
        let cli = Cli::try_parse_from(v(&["berth", "kill", "c1", "KILL", "--all"])).unwrap();
        assert!(matches!(cli.cmd, Cmd::Kill { all: true, .. }));
        let cli = Cli::try_parse_from(v(&["berth", "exec", "-t", "c1", "sh", "-c", "x"])).unwrap();
        let Cmd::Exec(a) = cli.cmd else { panic!() };
        assert_eq!(a.command, v(&["sh", "-c", "x"]));
        assert!(a.tty);
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}
