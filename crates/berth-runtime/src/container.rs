//! The container lifecycle: create, start, run, exec, kill, delete, and friends.
//!
//! `create` clones the container's init into its new namespaces. Parent and init talk over a
//! socket pair: the parent writes the user namespace maps and places the init in its cgroup,
//! the init builds the rootfs, the parent runs the createRuntime hooks, and the init reports
//! "ready". The init then blocks opening `exec.fifo` until `start` opens the other end (the
//! same rendezvous runc uses), and only then runs the user's program.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::cgroups;
use crate::error::{Context, Error, Result};
use crate::hooks;
use crate::process;
use crate::rootfs::{self, RootfsContext};
use crate::seccomp;
use crate::state::{self, Container, Status, EXEC_FIFO};
use crate::sys::{self, LinuxSyscall, Syscall};

/// With this annotation set to "true", the container's pid 1 is a reaper that runs the
/// program as its child (`docker run --init`), forwarding signals and reaping orphans. It
/// is the runtime's own code, so nothing is added to the container's filesystem.
pub const INIT_ANNOTATION: &str = "org.berth.init";

pub struct Runtime {
    /// Where container state lives (runc's --root).
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

pub struct CreateOptions<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
}

pub struct ExecOptions<'a> {
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub detach: bool,
    pub preserve_fds: u32,
    pub ignore_paused: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Stop before the user's program and wait for `start`.
    Create,
    /// Go straight on (`run`).
    Run,
}

/// Namespace kind -> (clone flag, /proc/<pid>/ns name).
fn ns_info(t: LinuxNamespaceType) -> (i32, &'static str) {
    match t {
        LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mnt"),
        LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
        LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
        LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
        LinuxNamespaceType::User => (libc::CLONE_NEWUSER, "user"),
        LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
        LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "net"),
        LinuxNamespaceType::Time => (libc::CLONE_NEWTIME, "time"),
    }
}

/// Opens the namespace at `path` for the container's process to join. A pid namespace is
/// joined here and now (it applies to the children of the caller: the process about to
/// be cloned); a user namespace goes first, as the others are joined with its privileges.
fn open_to_join(t: LinuxNamespaceType, path: &Path, join: &mut Vec<(OwnedFd, i32)>) -> Result<()> {
    let (flag, _) = ns_info(t);
    let fd: OwnedFd = File::open(path)
        .ctx(|| format!("opening {t} namespace {}", path.display()))?
        .into();
    match t {
        LinuxNamespaceType::Pid => LinuxSyscall
            .setns(fd.as_fd(), flag)
            .ctx(|| format!("joining pid namespace {}", path.display()))?,
        LinuxNamespaceType::User => join.insert(0, (fd, flag)),
        _ => join.push((fd, flag)),
    }
    Ok(())
}

/// What the process entering the container must do. It is sent as JSON to the child after
/// the child re-executed itself from the sealed view of the runtime binary, so descriptors
/// travel as numbers (inherited across that exec).
#[derive(serde::Serialize, serde::Deserialize)]
struct InitPlan {
    /// false: the container's init; true: a process exec'd into a running container.
    exec: bool,
    spec: Spec,
    rootfs: PathBuf,
    no_pivot: bool,
    preserve_fds: u32,
    /// Namespaces to join by descriptor, user first: (fd, clone flag).
    join: Vec<(RawFd, i32)>,
    new_userns: bool,
    new_cgroupns: bool,
    new_mountns: bool,
    console: Option<RawFd>,
    /// The compiled seccomp filter, if the spec has one.
    seccomp: Option<seccomp::Program>,
    /// The container's state directory (O_PATH), holding exec.fifo; only for `create`.
    fifo_dir: Option<RawFd>,
}

impl InitPlan {
    /// The descriptors the plan names: they must survive the re-exec.
    fn inherited_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.join.iter().map(|(fd, _)| *fd).collect();
        fds.extend(self.console);
        fds.extend(self.fifo_dir);
        fds
    }

    /// In the re-executed process: takes ownership of those descriptors.
    fn adopt(&self) -> (Vec<(OwnedFd, i32)>, Option<UnixStream>, Option<OwnedFd>) {
        let join = self
            .join
            .iter()
            .map(|(fd, flag)| (sys::adopt_fd(*fd), *flag))
            .collect();
        let console = self.console.map(|fd| UnixStream::from(sys::adopt_fd(fd)));
        (join, console, self.fifo_dir.map(sys::adopt_fd))
    }
}

fn join_namespaces(sys: &dyn Syscall, join: Vec<(OwnedFd, i32)>) -> Result<()> {
    for (fd, flag) in &join {
        sys.setns(fd.as_fd(), *flag)
            .ctx(|| format!("joining namespace (flag {flag:#x})"))?;
    }
    Ok(())
}

/// Environment variable naming the socket descriptor of a re-executed init.
const INIT_SOCK_ENV: &str = "_BERTH_INIT_SOCK";

/// Line protocol between parent and init over the socket pair.
struct Channel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Channel {
    fn new(s: UnixStream) -> std::io::Result<Self> {
        Ok(Channel {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }
    fn send(&mut self, msg: &str) -> std::io::Result<()> {
        let line = format!("{}\n", msg.replace('\n', " "));
        self.writer.write_all(line.as_bytes())
    }
    /// Next message; None on EOF (the other side exited or exec'd).
    fn recv(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end().to_string()))
    }
    /// Sends a message with a descriptor attached (SCM_RIGHTS).
    fn send_fd(&mut self, msg: &str, fd: &OwnedFd) -> std::io::Result<()> {
        crate::console::send_fd(&self.writer, fd, format!("{msg}\n").as_bytes())
    }

    /// Next message and the descriptor that came with it, if any. The protocol never has
    /// a message in flight beyond the one awaited, so nothing sits in the buffer here.
    fn recv_with_fd(&mut self) -> std::io::Result<(Option<String>, Option<OwnedFd>)> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        if !self.reader.buffer().is_empty() {
            return Ok((self.recv()?, None));
        }
        let mut buf = [0u8; 4096];
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            self.reader.get_ref(),
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = m {
                fd = fds.next();
            }
        }
        if got.bytes == 0 {
            return Ok((None, fd));
        }
        let mut text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
        if !text.ends_with('\n') {
            self.reader.read_line(&mut text)?;
        }
        Ok((Some(text.trim_end().to_string()), fd))
    }

    /// Waits for `want` (optionally followed by a space and a payload, which is returned);
    /// an "error ..." message or EOF becomes an init error.
    fn expect(&mut self, want: &str) -> Result<String> {
        match self.recv().ctx(|| "talking to the container init".into())? {
            Some(m) if m == want => Ok(String::new()),
            Some(m) if m.starts_with(want) && m.as_bytes().get(want.len()) == Some(&b' ') => {
                Ok(m[want.len() + 1..].to_string())
            }
            Some(m) => Err(Error::Init(child_error(&m))),
            None => Err(Error::Init("the container init exited during setup".into())),
        }
    }
}

/// Removes what a failed create left behind.
struct CreateGuard<'a> {
    dir: &'a Path,
    cgroup: Option<PathBuf>,
    pid: i32,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.pid > 0 {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            let _ = sys::waitpid(self.pid, false);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cgroups::remove(cg);
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

impl Runtime {
    pub fn create(&self, opts: &CreateOptions) -> Result<()> {
        self.spawn(opts, Mode::Create).map(|_| ())
    }

    /// `run`: create and start in one go. Detached, returns once the program runs;
    /// otherwise waits for it and returns its exit status, and deletes the container.
    pub fn run(&self, opts: &CreateOptions, detach: bool, keep: bool) -> Result<i32> {
        let c = self.spawn(opts, Mode::Run)?;
        if let Some(h) = c.spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()) {
            if let Err(e) = hooks::run(h, &c.hook_state(Status::Running)) {
                let _ = self.delete(opts.id, true);
                return Err(e);
            }
        }
        if detach {
            return Ok(0);
        }
        let code = forward_signals_and_wait(c.pid)?;
        if !keep {
            self.delete(opts.id, true)?;
        }
        Ok(code)
    }

    fn spawn(&self, opts: &CreateOptions, mode: Mode) -> Result<Container> {
        crate::spec::validate_id(opts.id)?;
        let bundle = std::fs::canonicalize(opts.bundle)
            .ctx(|| format!("bundle {}", opts.bundle.display()))?;
        let (spec, rootfs) = crate::spec::load(&bundle)?;
        std::fs::create_dir_all(&self.root).ctx(|| format!("creating {}", self.root.display()))?;
        let dir = Container::dir(&self.root, opts.id);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(opts.id.to_string()))
            }
            other => other.ctx(|| format!("creating {}", dir.display()))?,
        }
        let mut guard = CreateGuard {
            dir: &dir,
            cgroup: None,
            pid: 0,
            armed: true,
        };

        let linux = spec.linux().clone().unwrap_or_default();
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        let mut flags = 0;
        let mut join = Vec::new();
        let mut new_userns = false;
        let mut new_cgroupns = false;
        let mut new_mountns = false;
        let mut new_timens = false;
        for ns in &namespaces {
            let (flag, _) = ns_info(ns.typ());
            match ns.path() {
                Some(p) => open_to_join(ns.typ(), p, &mut join)?,
                None => match ns.typ() {
                    // Unshared by the init once it sits in its cgroup, so that the namespace
                    // is rooted at the container's cgroup rather than the runtime's.
                    LinuxNamespaceType::Cgroup => new_cgroupns = true,
                    // Offsets must be written before any process is in the namespace, so
                    // it is made here (a time namespace applies to children) and the
                    // child is born into it.
                    LinuxNamespaceType::Time => new_timens = true,
                    t => {
                        new_userns |= t == LinuxNamespaceType::User;
                        new_mountns |= t == LinuxNamespaceType::Mount;
                        flags |= flag;
                    }
                },
            }
        }

        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let console = match (terminal, opts.console_socket) {
            (true, Some(path)) => Some(
                UnixStream::connect(path)
                    .ctx(|| format!("connecting to console socket {}", path.display()))?,
            ),
            (true, None) if mode == Mode::Create => {
                return Err(Error::InvalidSpec(
                    "process.terminal is true but no --console-socket was given".into(),
                ))
            }
            _ => None,
        };
        let fifo = if mode == Mode::Create {
            let path = dir.join(EXEC_FIFO);
            sys::mkfifo(&path, 0o622).ctx(|| format!("creating {}", path.display()))?;
            // The umask applied to mkfifo; and in a user namespace the init is the mapped
            // root, which must own the fifo to open it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622))
                .ctx(|| format!("chmod {}", path.display()))?;
            let (uid, gid) = mapped_root(&linux);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .ctx(|| format!("chown {}", path.display()))?;
            // The init opens the fifo relative to this directory descriptor: that works after
            // pivot_root or chroot, with or without a /proc in the container.
            Some(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&dir)
                    .ctx(|| format!("opening {}", dir.display()))?
                    .into(),
            )
        } else {
            None
        };

        let cgroup_path = cgroups::resolve_path(
            linux.cgroups_path().as_deref(),
            self.systemd_cgroup,
            opts.id,
        )?;
        let (parent_sock, child_sock) = UnixStream::pair().ctx(|| "socketpair".into())?;
        let plan = InitPlan {
            exec: false,
            spec: spec.clone(),
            rootfs: rootfs.clone(),
            no_pivot: opts.no_pivot,
            preserve_fds: opts.preserve_fds,
            join: join
                .iter()
                .map(|(fd, flag)| (fd.as_raw_fd(), *flag))
                .collect(),
            new_userns,
            new_cgroupns,
            new_mountns,
            console: console.as_ref().map(|c| c.as_raw_fd()),
            seccomp: self.compile_seccomp(&spec)?,
            fifo_dir: fifo.as_ref().map(|f: &OwnedFd| f.as_raw_fd()),
        };
        let view = sealed_view(&self.root);
        let inherit = plan.inherited_fds();

        if new_timens {
            enter_new_time_namespace(&linux)?;
        }
        guard.cgroup = Some(cgroup_path.clone());
        let (pid, born_inside) =
            clone_in_cgroup(&cgroup_path, flags).ctx(|| "cloning the container init".into())?;
        if pid == 0 {
            drop(parent_sock);
            enter_sealed(child_sock, view.as_ref(), &inherit, new_userns);
        }
        drop(child_sock);
        drop((join, console, fifo, view));
        guard.pid = pid;
        let mut chan = Channel::new(parent_sock).ctx(|| "socketpair".into())?;

        if new_userns {
            write_id_maps(pid, &linux)?;
            chan.send("mapped")
                .ctx(|| "talking to the container init".into())?;
        }
        // The child execs the sealed image while we set up its cgroup.
        send_plan(&mut chan, &plan)?;
        cgroups::apply(
            &cgroup_path,
            linux.resources().as_ref(),
            (!born_inside).then_some(pid),
        )?;
        if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
            std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
                .ctx(|| format!("setting oom_score_adj {adj}"))?;
        }
        chan.send("go")
            .ctx(|| "talking to the container init".into())?;

        let (_, pid_start) = state::proc_stat(pid)
            .ok_or_else(|| Error::Init("the container init exited during setup".into()))?;
        let container = Container {
            id: opts.id.to_string(),
            pid,
            pid_start,
            bundle: bundle.clone(),
            rootfs,
            created: state::now_rfc3339(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup_path,
            systemd_cgroup: self.systemd_cgroup,
            owner: String::new(),
            spec: spec.clone(),
        };

        chan.expect("hooks")?;
        if let Some(h) = spec.hooks() {
            // Lifecycle steps 3-5 come after the environment exists (step 2): "created".
            let st = container.hook_state(Status::Created);
            #[allow(deprecated)]
            if let Some(prestart) = h.prestart() {
                hooks::run(prestart, &st)?;
            }
            if let Some(cr) = h.create_runtime() {
                hooks::run(cr, &st)?;
            }
        }
        let st = String::from_utf8(container.hook_state(Status::Created)).expect("json is utf-8");
        chan.send(&format!("go {st}"))
            .ctx(|| "talking to the container init".into())?;
        relay_seccomp_listener(
            &mut chan,
            &spec,
            pid,
            &container.hook_state(Status::Created),
        )?;
        chan.expect("ready")?;

        container.save(&self.root)?;
        if mode == Mode::Run {
            // EOF: the program was exec'd (the socket is close-on-exec); a line: it was not.
            if let Some(m) = chan.recv().ctx(|| "talking to the container init".into())? {
                return Err(Error::Init(child_error(&m)));
            }
        }
        if let Some(p) = opts.pid_file {
            write_pid_file(p, pid)?;
        }
        guard.armed = false;
        Ok(container)
    }

    /// The spec's seccomp filter, compiled (or taken from the cache under the state root).
    fn compile_seccomp(&self, spec: &Spec) -> Result<Option<seccomp::Program>> {
        spec.linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(|s| seccomp::compile_cached(s, &self.root.join("@seccomp")))
            .transpose()
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let c = Container::load(&self.root, id)?;
        let status = c.status(&self.root);
        if status != Status::Created {
            return Err(Error::BadState {
                id: id.into(),
                action: "start",
                status: status.to_string(),
            });
        }
        let fifo = Container::dir(&self.root, id).join(EXEC_FIFO);
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .ctx(|| format!("opening {}", fifo.display()))?;
        // The init writes one byte, then holds the write end (close-on-exec) until it execs
        // the program: EOF after the byte means the program runs, so `start` returns only
        // then (a signal sent right after `start` must find the program, not our setup).
        let mut buf = [0u8; 1];
        let mut got_byte = false;
        loop {
            match f.read(&mut buf) {
                Ok(1) => got_byte = true,
                Ok(_) if got_byte => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).ctx(|| format!("reading {}", fifo.display())),
            }
            if !state::process_alive(c.pid, c.pid_start) {
                if got_byte {
                    break; // started, and already finished: a short program
                }
                return Err(Error::Init("the container init died before start".into()));
            }
            // The byte, or the hang-up when the init's exec closes its end; the timeout
            // only bounds how late a dead init is noticed.
            let mut fds = [rustix::event::PollFd::new(&f, rustix::event::PollFlags::IN)];
            let slice = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&slice));
        }
        let _ = std::fs::remove_file(&fifo);
        if let Some(h) = c.spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()) {
            hooks::run(h, &c.hook_state(Status::Running))?;
        }
        Ok(())
    }

    pub fn state(&self, id: &str) -> Result<String> {
        let c = Container::load(&self.root, id)?;
        let status = c.status(&self.root);
        Ok(serde_json::to_string_pretty(&c.output(status)).expect("state serialises"))
    }

    pub fn list(&self) -> Result<Vec<(Container, Status)>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).ctx(|| format!("reading {}", self.root.display())),
        };
        for e in rd.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Ok(c) = Container::load(&self.root, &id) {
                let s = c.status(&self.root);
                out.push((c, s));
            }
        }
        out.sort_by(|a, b| a.0.created.cmp(&b.0.created));
        Ok(out)
    }

    /// The container and its status; a stopped one is refused for `action`.
    fn live(&self, id: &str, action: &'static str) -> Result<(Container, Status)> {
        let c = Container::load(&self.root, id)?;
        let status = c.status(&self.root);
        if status == Status::Stopped {
            return Err(Error::BadState {
                id: id.into(),
                action,
                status: "stopped (container not running)".into(),
            });
        }
        Ok((c, status))
    }

    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let (c, status) = self.live(id, "kill")?;
        if all {
            for pid in cgroups::pids(&c.cgroup_path)? {
                let _ = sys::kill(pid, signal);
            }
            if status == Status::Paused && (signal == libc::SIGKILL || signal == libc::SIGTERM) {
                let _ = cgroups::freeze(&c.cgroup_path, false);
            }
            return Ok(());
        }
        sys::kill(c.pid, signal).ctx(|| format!("sending signal {signal} to {}", c.pid))
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let c = match Container::load(&self.root, id) {
            Err(Error::NotFound(_)) if force => return Ok(()),
            other => other?,
        };
        let status = c.status(&self.root);
        if status != Status::Stopped {
            // A created container has run nothing yet: deleting it needs no force (runc).
            if !force && status != Status::Created {
                return Err(Error::BadState {
                    id: id.into(),
                    action: "delete",
                    status: format!("{status} (stop it first or use --force)"),
                });
            }
            if status == Status::Paused {
                let _ = cgroups::freeze(&c.cgroup_path, false);
            }
            let _ = sys::kill(c.pid, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while state::process_alive(c.pid, c.pid_start) && Instant::now() < deadline {
                // Our own child (run without --detach) must be reaped to stop existing.
                let _ = sys::waitpid(c.pid, true);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Processes left in the cgroup (the init's children when it had no pid namespace)
        // are killed by the removal.
        cgroups::remove(&c.cgroup_path)?;
        let dir = Container::dir(&self.root, id);
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        if let Some(h) = c.spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()) {
            // poststop failures are logged, not fatal: the container is already gone.
            if let Err(e) = hooks::run(h, &c.hook_state(Status::Stopped)) {
                eprintln!("warning: {e}");
            }
        }
        Ok(())
    }

    pub fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = Container::load(&self.root, id)?;
        let status = c.status(&self.root);
        let ok = if pause {
            status == Status::Running || status == Status::Created
        } else {
            status == Status::Paused
        };
        if !ok {
            return Err(Error::BadState {
                id: id.into(),
                action: if pause { "pause" } else { "resume" },
                status: status.to_string(),
            });
        }
        cgroups::freeze(&c.cgroup_path, pause)
    }

    /// Changes the resource limits of a created, running or paused container.
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let (c, _) = self.live(id, "update")?;
        cgroups::update(&c.cgroup_path, resources)
    }

    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let c = Container::load(&self.root, id)?;
        cgroups::pids(&c.cgroup_path)
    }

    pub fn stats(&self, id: &str) -> Result<serde_json::Value> {
        let c = Container::load(&self.root, id)?;
        cgroups::stats(&c.cgroup_path)
    }

    /// Processes of the container the OOM killer killed.
    pub fn oom_kills(&self, id: &str) -> Result<u64> {
        let c = Container::load(&self.root, id)?;
        Ok(cgroups::oom_kills(&c.cgroup_path))
    }

    pub fn container(&self, id: &str) -> Result<Container> {
        Container::load(&self.root, id)
    }

    /// Runs `process` inside a running container. Returns the exit status when attached,
    /// 0 when detached.
    pub fn exec(&self, id: &str, process: Process, opts: &ExecOptions) -> Result<i32> {
        let c = Container::load(&self.root, id)?;
        let status = c.status(&self.root);
        let allowed = status == Status::Running
            || status == Status::Created
            || (status == Status::Paused && opts.ignore_paused);
        if !allowed {
            return Err(Error::BadState {
                id: id.into(),
                action: "exec in",
                status: status.to_string(),
            });
        }
        let mut exec_spec = c.spec.clone();
        exec_spec.set_process(Some(process));
        crate::spec::validate(&exec_spec)?;
        let namespaces = c
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let mut join = Vec::new();
        for ns in &namespaces {
            let (_, name) = ns_info(ns.typ());
            let path = PathBuf::from(format!("/proc/{}/ns/{name}", c.pid));
            open_to_join(ns.typ(), &path, &mut join)?;
        }
        let terminal = exec_spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let console = match (terminal, opts.console_socket) {
            (true, Some(path)) => Some(
                UnixStream::connect(path)
                    .ctx(|| format!("connecting to console socket {}", path.display()))?,
            ),
            _ => None,
        };
        let (parent_sock, child_sock) = UnixStream::pair().ctx(|| "socketpair".into())?;
        let seccomp = self.compile_seccomp(&exec_spec)?;
        let plan = InitPlan {
            exec: true,
            spec: exec_spec,
            rootfs: c.rootfs.clone(),
            no_pivot: false,
            preserve_fds: opts.preserve_fds,
            join: join
                .iter()
                .map(|(fd, flag)| (fd.as_raw_fd(), *flag))
                .collect(),
            new_userns: false,
            new_cgroupns: false,
            new_mountns: false,
            console: console.as_ref().map(|c| c.as_raw_fd()),
            seccomp,
            fifo_dir: None,
        };
        let view = sealed_view(&self.root);
        let inherit = plan.inherited_fds();
        let (pid, born_inside) =
            clone_in_cgroup(&c.cgroup_path, 0).ctx(|| "forking the exec process".into())?;
        if pid == 0 {
            drop(parent_sock);
            // Born in the container's pid namespace: not to be opened or traced from
            // there while it runs our code (exec_process says so again after a re-exec).
            let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
            enter_sealed(child_sock, view.as_ref(), &inherit, false);
        }
        drop((join, console, view));
        drop(child_sock);
        let mut chan = Channel::new(parent_sock).ctx(|| "socketpair".into())?;
        let fail = |e: Error| {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, false);
            e
        };
        send_plan(&mut chan, &plan).map_err(fail)?;
        if !born_inside {
            // The exec'd process joins the container's cgroup before it runs anything.
            cgroups::add_task(&c.cgroup_path, pid).map_err(fail)?;
        }
        chan.send("go")
            .ctx(|| "talking to the exec process".into())
            .map_err(fail)?;
        relay_seccomp_listener(&mut chan, &c.spec, pid, &c.hook_state(Status::Running))
            .map_err(fail)?;
        // EOF means execve succeeded (the socket is close-on-exec); a line is an error.
        match chan.recv() {
            Ok(Some(m)) => {
                let _ = sys::waitpid(pid, false);
                return Err(Error::Init(child_error(&m)));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(fail(Error::Io {
                    context: "talking to the exec process".into(),
                    source: e,
                }))
            }
        }
        if let Some(p) = opts.pid_file {
            write_pid_file(p, pid)?;
        }
        if opts.detach {
            return Ok(0);
        }
        forward_signals_and_wait(pid)
    }
}

/// Forks (with `flags`) from inside the container's cgroup when [`cgroups::enter`] can
/// take this thread there, so the child is born in it; otherwise, or when the cgroup's
/// pids limit leaves no room for the visit, forks here and the caller moves the child.
/// Returns the pid (0 in the child) and whether the child was born in the cgroup.
fn clone_in_cgroup(cgroup: &Path, flags: i32) -> std::io::Result<(i32, bool)> {
    if let Some(dir) = cgroups::open_v2(cgroup).map_err(std::io::Error::other)? {
        use std::os::fd::AsFd;
        match sys::clone_into_cgroup(flags, dir.as_fd()) {
            Ok(pid) => return Ok((pid, true)),
            // No clone3 (old kernel, or a seccomp filter around this runtime) or no room
            // under the pids limit: fork here and move the child.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG | libc::EAGAIN)
                ) =>
            {
                return sys::clone_process(flags).map(|pid| (pid, false));
            }
            Err(e) => return Err(e),
        }
    }
    let visit = cgroups::enter(cgroup).map_err(std::io::Error::other)?;
    let Some(visit) = visit else {
        return sys::clone_process(flags).map(|pid| (pid, false));
    };
    let forked = sys::clone_process(flags);
    if let Ok(0) = forked {
        // The child stays where it was born.
        std::mem::forget(visit);
        return Ok((0, true));
    }
    let left = visit.leave();
    match (forked, left) {
        (Ok(pid), Ok(())) => Ok((pid, true)),
        (Ok(pid), Err(e)) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, false);
            Err(std::io::Error::other(e))
        }
        (Err(e), Ok(())) if e.raw_os_error() == Some(libc::EAGAIN) => {
            sys::clone_process(flags).map(|pid| (pid, false))
        }
        (Err(e), _) => Err(e),
    }
}

/// The message of an "error ..." line from the container's process, without the
/// "container init failed: " its own error already carries (the caller adds it back).
fn child_error(line: &str) -> String {
    let m = line.strip_prefix("error ").unwrap_or(line);
    m.strip_prefix("container init failed: ")
        .unwrap_or(m)
        .to_string()
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    state::atomic_write(path, pid.to_string().as_bytes())
        .ctx(|| format!("writing pid file {}", path.display()))
}

/// Unshares a time namespace for our children and sets its clock offsets.
fn enter_new_time_namespace(linux: &oci_spec::runtime::Linux) -> Result<()> {
    LinuxSyscall
        .unshare(libc::CLONE_NEWTIME)
        .ctx(|| "creating the time namespace".into())?;
    let mut offsets = String::new();
    for (clock, off) in linux.time_offsets().iter().flatten() {
        if clock != "monotonic" && clock != "boottime" {
            return Err(Error::InvalidSpec(format!(
                "timeOffsets: unknown clock {clock:?} (monotonic or boottime)"
            )));
        }
        offsets.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    if !offsets.is_empty() {
        std::fs::write("/proc/self/timens_offsets", &offsets)
            .ctx(|| format!("writing time offsets {offsets:?}"))?;
    }
    Ok(())
}

/// The host uid and gid that are root inside the container (0 without a user namespace).
fn mapped_root(linux: &oci_spec::runtime::Linux) -> (u32, u32) {
    let host = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.container_id() == 0)
            .map_or(0, |m| m.host_id())
    };
    (host(linux.uid_mappings()), host(linux.gid_mappings()))
}

fn write_id_maps(pid: i32, linux: &oci_spec::runtime::Linux) -> Result<()> {
    let fmt = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.as_deref()
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.uid_mappings());
    let gid = fmt(linux.gid_mappings());
    if !uid.is_empty() {
        std::fs::write(format!("/proc/{pid}/uid_map"), &uid)
            .ctx(|| format!("writing uid_map {uid:?}"))?;
    }
    if !gid.is_empty() {
        std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
            .ctx(|| format!("writing gid_map {gid:?}"))?;
    }
    Ok(())
}

/// Waits for our child, passing on the signals a foreground runtime is expected to forward.
fn forward_signals_and_wait(pid: i32) -> Result<i32> {
    sys::forward_signals(pid);
    let code = sys::waitpid(pid, false).ctx(|| format!("waiting for {pid}"))?;
    Ok(code.unwrap_or(0))
}

// ---------------------------------------------------------------------------------------
// Inside the clone.

/// If the container's seccomp filter notifies an agent, the process sends its listener
/// descriptor first ("seccomp"); pass it on to `listenerPath` with the container process
/// state, as the runtime spec describes, and let the process continue.
fn relay_seccomp_listener(chan: &mut Channel, spec: &Spec, pid: i32, state: &[u8]) -> Result<()> {
    let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(());
    };
    let Some(path) = sc.listener_path() else {
        return Ok(());
    };
    let (msg, fd) = chan
        .recv_with_fd()
        .ctx(|| "talking to the container process".into())?;
    match (msg.as_deref(), fd) {
        (Some("seccomp"), Some(fd)) => {
            let state: serde_json::Value = serde_json::from_slice(state).expect("state is json");
            let body = serde_json::json!({
                "ociVersion": crate::OCI_VERSION,
                "fds": ["seccompFd"],
                "pid": pid,
                "metadata": sc.listener_metadata().clone().unwrap_or_default(),
                "state": state,
            });
            let agent = UnixStream::connect(path)
                .ctx(|| format!("connecting to the seccomp agent at {}", path.display()))?;
            crate::console::send_fd(&agent, &fd, body.to_string().as_bytes())
                .ctx(|| format!("sending the seccomp listener to {}", path.display()))?;
            chan.send("ok")
                .ctx(|| "talking to the container process".into())
        }
        (Some(m), _) => Err(Error::Init(child_error(m))),
        (None, _) => Err(Error::Init(
            "the container process exited during setup".into(),
        )),
    }
}

/// In the container's process: a filter that notifies an agent is loaded before "ready",
/// while the runtime is still there to hand its listener to the agent.
fn load_notifying_filter(
    chan: &mut Channel,
    process: &Process,
    program: Option<&seccomp::Program>,
) -> Result<bool> {
    let Some(p) = program.filter(|p| p.listener) else {
        return Ok(false);
    };
    if process.no_new_privileges().unwrap_or(false) {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).ctx(|| "setting no_new_privs".into())?;
    }
    let fd = seccomp::load(p)?.expect("a listener was asked for");
    chan.send_fd("seccomp", &fd)
        .ctx(|| "sending the seccomp listener".into())?;
    drop(fd);
    chan.expect("ok")?;
    Ok(true)
}

fn send_plan(chan: &mut Channel, plan: &InitPlan) -> Result<()> {
    let json = serde_json::to_string(plan).expect("plan serialises");
    chan.send(&format!("plan {json}"))
        .ctx(|| "talking to the container process".into())
}

/// A view of the runtime binary that cannot be written through: a detached read-only
/// overlay, or failing that a sealed memfd copy. None when this process already runs from
/// such a view (the daemon starts its shims from one), so its children need no re-exec;
/// None too if neither works (then the child runs on unsealed, which is what older kernels
/// without either could do anyway).
fn sealed_view(root: &Path) -> Option<OwnedFd> {
    if sys::self_is_sealed() {
        return None;
    }
    let spare = root.join("@empty");
    let _ = std::fs::create_dir(&spare);
    sys::overlay_self_view(Some(&spare))
        .or_else(|_| sys::sealed_self_copy())
        .ok()
}

/// In the cloned child: re-execute the runtime from `view` as `runtime __init`, so that while
/// it sets up the container it can never be reached through /proc/<pid>/exe (the
/// CVE-2019-5736 class). Without a view (this process runs from one already, or nothing
/// could make one) the setup goes on here, in the forked child, which saves an exec and the
/// loading of the binary (~1.5 ms). In a new user namespace, wait for the id maps and become
/// its root first, or the exec would drop every capability.
fn enter_sealed(sock: UnixStream, view: Option<&OwnedFd>, inherit: &[RawFd], userns: bool) -> ! {
    let fail = |sock: &UnixStream, msg: String| -> ! {
        let mut s = sock;
        let _ = s.write_all(format!("error {msg}\n").as_bytes());
        std::process::exit(127);
    };
    if userns {
        let mut line = [0u8; 7];
        if (&sock).read_exact(&mut line).is_err() || &line != b"mapped\n" {
            std::process::exit(127);
        }
        if let Err(e) = sys::setresgid(0).and_then(|_| sys::setresuid(0)) {
            fail(&sock, format!("becoming root in the user namespace: {e}"));
        }
    }
    let Some(view) = view else {
        init_entry_with(sock);
    };
    for fd in inherit
        .iter()
        .copied()
        .chain(std::iter::once(sock.as_raw_fd()))
    {
        if let Err(e) = sys::clear_cloexec(fd) {
            fail(&sock, format!("passing descriptor {fd}: {e}"));
        }
    }
    let args = [
        c"berth".to_owned(),
        c"runtime".to_owned(),
        c"__init".to_owned(),
    ];
    let env = [
        std::ffi::CString::new(format!("{INIT_SOCK_ENV}={}", sock.as_raw_fd())).expect("no NUL"),
    ];
    let e = sys::fexecve(view.as_fd(), &args, &env);
    fail(&sock, format!("re-executing the sealed runtime: {e}"));
}

/// Entry point of `berth runtime __init`: the sealed child continues the setup here.
pub fn init_entry() -> ! {
    let fd: RawFd = match std::env::var(INIT_SOCK_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(fd) => fd,
        None => {
            eprintln!("berth runtime __init is internal to the runtime");
            std::process::exit(1);
        }
    };
    std::env::remove_var(INIT_SOCK_ENV);
    init_entry_with(UnixStream::from(sys::adopt_fd(fd)))
}

fn init_entry_with(sock: UnixStream) -> ! {
    let _ = sys::set_cloexec(sock.as_raw_fd());
    let mut chan = match Channel::new(sock) {
        Ok(c) => c,
        Err(_) => std::process::exit(127),
    };
    let res = chan
        .expect("plan")
        .and_then(|json| {
            serde_json::from_str::<InitPlan>(&json)
                .map_err(|e| Error::Init(format!("bad plan: {e}")))
        })
        .and_then(|plan| {
            if plan.exec {
                exec_process(plan, &mut chan)
            } else {
                init(plan, &mut chan)
            }
        });
    if let Err(e) = res {
        // After "ready" of `create` nobody reads the channel: stderr is the only witness.
        let _ = chan.send(&format!("error {e}"));
        eprintln!("berth runtime: error: container process: {e}");
    }
    std::process::exit(127);
}

fn init(plan: InitPlan, chan: &mut Channel) -> Result<()> {
    let sys = LinuxSyscall;
    sys::umask(0);
    let (join, console, fifo_dir) = plan.adopt();
    chan.expect("go")?;
    join_namespaces(&sys, join)?;
    if plan.new_cgroupns {
        sys.unshare(libc::CLONE_NEWCGROUP)
            .ctx(|| "creating the cgroup namespace".into())?;
    }
    sys::setsid().ctx(|| "setsid".into())?;
    let spec = &plan.spec;
    if plan.new_mountns {
        let ctx = RootfsContext {
            rootfs: &plan.rootfs,
            userns: plan.new_userns,
            cgroupns: plan.new_cgroupns,
        };
        rootfs::prepare(&sys, spec, &ctx)?;
    }
    chan.send("hooks").ctx(|| "talking to the runtime".into())?;
    let hook_state = chan.expect("go")?;
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().as_ref())
    {
        hooks::run(h, hook_state.as_bytes())?;
    }
    if plan.new_mountns {
        rootfs::enter(&sys, &plan.rootfs, plan.no_pivot)?;
        rootfs::finish(&sys, spec, plan.new_userns)?;
    } else {
        sys.chroot(&plan.rootfs).ctx(|| "chroot".into())?;
        sys.chdir(Path::new("/")).ctx(|| "chdir /".into())?;
    }
    if let Some(h) = spec.hostname() {
        sys.sethostname(h)
            .ctx(|| format!("setting hostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname() {
        sys.setdomainname(d)
            .ctx(|| format!("setting domainname {d:?}"))?;
    }
    let process = spec.process().as_ref().expect("validated");
    let (path, loaded) = prepare_to_exec(&sys, &plan, console, chan)?;
    chan.send("ready").ctx(|| "talking to the runtime".into())?;
    if let Some(dir) = &fifo_dir {
        // Blocks until `start` opens the read end.
        let mut w = File::from(
            rustix::fs::openat(
                dir,
                EXEC_FIFO,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .ctx(|| "opening exec.fifo".into())?,
        );
        w.write_all(&[0]).ctx(|| "writing exec.fifo".into())?;
    }
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().as_ref())
    {
        // These run inside the container: without an env of their own they see the
        // process's, as the program will.
        hooks::run_with_env(
            h,
            hook_state.replace("\"created\"", "\"running\"").as_bytes(),
            process.env().as_deref().unwrap_or_default(),
        )?;
    }
    let reaper = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(INIT_ANNOTATION))
        .is_some_and(|v| v == "true");
    finalize_and_exec(
        process,
        &path,
        if loaded { None } else { plan.seccomp.as_ref() },
        reaper,
    )
}

/// What every process entering a container does once it is in its namespaces and root:
/// terminal, rlimits, cwd and the executable's path, descriptor hygiene, personality, and
/// a seccomp filter that notifies an agent. Returns the path and whether a filter is loaded.
fn prepare_to_exec(
    sys: &dyn Syscall,
    plan: &InitPlan,
    console: Option<UnixStream>,
    chan: &mut Channel,
) -> Result<(PathBuf, bool)> {
    let process = plan.spec.process().as_ref().expect("validated");
    if let Some(sock) = &console {
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        crate::console::setup(sock, size)?;
    }
    drop(console);
    let path = prepare_process(sys, process)?;
    // Only the caller's preserved descriptors cross the exec: our sockets and exec.fifo
    // must not reach the container either.
    sys::close_fds_from(3 + plan.preserve_fds as RawFd);
    set_personality(&plan.spec)?;
    let loaded = load_notifying_filter(chan, process, plan.seccomp.as_ref())?;
    Ok((path, loaded))
}

/// Builds the exec'd process's environment inside the container: rlimits, cwd, and the
/// executable's path (resolved before reporting ready, so `create` fails on a typo).
fn prepare_process(sys: &dyn Syscall, process: &Process) -> Result<PathBuf> {
    process::apply_rlimits(sys, process.rlimits().as_deref().unwrap_or_default())?;
    let cwd = process.cwd();
    if !cwd.exists() {
        std::fs::create_dir_all(cwd).ctx(|| format!("creating cwd {}", cwd.display()))?;
    }
    sys.chdir(cwd)
        .ctx(|| format!("chdir to cwd {}", cwd.display()))?;
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    process::find_executable(&args[0], env)
}

/// `linux.personality`: the execution domain (LINUX32 makes `uname -m` say i686).
fn set_personality(spec: &Spec) -> Result<()> {
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) else {
        return Ok(());
    };
    let persona = match p.domain() {
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0,
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 8,
    };
    sys::personality(persona).ctx(|| "setting the personality".into())
}

/// Drops privileges in the order the kernel requires and execs the program.
fn finalize_and_exec(
    process: &Process,
    path: &Path,
    filter: Option<&seccomp::Program>,
    reaper: bool,
) -> Result<()> {
    let caps = process.capabilities().as_ref();
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (filter, nnp) {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while we have it.
        seccomp::load(f)?;
    }
    if let Some(io) = process.io_priority() {
        let class = match io.class() {
            oci_spec::runtime::IOPriorityClass::IoprioClassRt => 1,
            oci_spec::runtime::IOPriorityClass::IoprioClassBe => 2,
            oci_spec::runtime::IOPriorityClass::IoprioClassIdle => 3,
        };
        sys::ioprio_set(class, io.priority() as u32).ctx(|| "setting the I/O priority".into())?;
    }
    process::drop_bounding(caps)?;
    process::set_user(process)?;
    process::set_caps(caps)?;
    if nnp {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).ctx(|| "setting no_new_privs".into())?;
        if let Some(f) = filter {
            seccomp::load(f)?;
        }
    }
    sys::umask(process.user().umask().unwrap_or(0o022));
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    if reaper {
        // `--init`: this process stays as pid 1 and reaps; a child runs the program.
        let _ = rustix::thread::set_name(c"berth-init");
        sys::block_all_signals();
        let child = sys::fork().ctx(|| "forking the program under the init".into())?;
        if child > 0 {
            sys::reap_as_init(child);
        }
    }
    sys::reset_signals();
    let e = sys::execve(path, args, env);
    Err(Error::Init(format!("exec {}: {e}", path.display())))
}

fn exec_process(plan: InitPlan, chan: &mut Channel) -> Result<()> {
    let (join, console, _) = plan.adopt();
    chan.expect("go")?;
    // Non-dumpable until execve: a process in the container cannot open our /proc/<pid>/
    // files or memory while we still run the runtime's code.
    sys::prctl(libc::PR_SET_DUMPABLE, 0).ctx(|| "PR_SET_DUMPABLE".into())?;
    let sys = LinuxSyscall;
    join_namespaces(&sys, join)?;
    sys::setsid().ctx(|| "setsid".into())?;
    let process = plan.spec.process().as_ref().expect("validated");
    let (path, loaded) = prepare_to_exec(&sys, &plan, console, chan)?;
    finalize_and_exec(
        process,
        &path,
        if loaded { None } else { plan.seccomp.as_ref() },
        false,
    )
}
