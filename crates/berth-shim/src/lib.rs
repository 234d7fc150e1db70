//! The shim: the parent of one container (the conmon role).
//!
//! `berth shim-server` (a child of the daemon) forks it away on request, so it belongs to
//! no daemon and survives one being killed. It creates the container through the runtime
//! library with its own pipes or a pty as the container's stdio, reports `{"pid":N}` or
//! `{"error":...}` on the report pipe, then serves a unix socket until the container exits:
//!
//! - `{"op":"start"}`: starts the created container; answers `{"ok":true}` or an error,
//!   then, on the same connection, `{"exit_code":N}` when the container exits;
//! - `{"op":"wait"}`: `{"ok":true}`, then the exit line;
//! - `{"op":"attach","stdin":b,"stdout":b,"stderr":b}`: `{"ok":true}`, then the connection
//!   carries the container's output (Docker's multiplexed frames without a tty, raw bytes
//!   with one) and takes its input;
//! - `{"op":"resize","h":rows,"w":cols}`: resizes the pty.
//!
//! All output also goes to a json-file log. At exit the shim reaps the container, deletes
//! its runtime state and cgroup, and writes the exit record atomically before it answers
//! waiters, so a daemon that was away finds the real exit code there.

pub mod log;

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use berth_runtime::{CreateOptions, ExecOptions, Runtime};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime_root: PathBuf,
    /// The shim's socket; a tty container's console socket is `<socket>.con` meanwhile.
    pub socket: PathBuf,
    pub exit_file: PathBuf,
    /// json-file log: path, max size in bytes (0: unbounded), files kept.
    pub log: Option<(PathBuf, u64, u32)>,
    pub tty: bool,
    pub stdin: bool,
    /// Close the container's stdin when the first attached client closes its input.
    pub stdin_once: bool,
    /// Exec mode: run this process (OCI `process` JSON) in the running container `id`
    /// when `start` arrives, instead of creating a container.
    pub exec: Option<PathBuf>,
}

/// What the shim records when the container exits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exit {
    pub exit_code: i32,
    pub finished_at: String,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
}

#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    stdout: bool,
    #[serde(default)]
    stderr: bool,
    #[serde(default)]
    h: u16,
    #[serde(default)]
    w: u16,
}

enum Role {
    Monitor,
    Attach {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

struct Client {
    stream: UnixStream,
    role: Role,
    /// Still reading the client's input.
    reading: bool,
}

/// The container's side of stdio as the shim holds it.
enum Io {
    Pipes {
        stdin: Option<File>,
        stdout: Option<File>,
        stderr: Option<File>,
    },
    Tty(Option<File>),
}

fn write_line(w: &mut impl Write, v: &serde_json::Value) -> std::io::Result<()> {
    let mut b = v.to_string().into_bytes();
    b.push(b'\n');
    w.write_all(&b)
}

/// Reads one request line byte by byte, so nothing after it (the client's input) is
/// consumed.
fn read_line(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 {
        if b[0] == b'\n' {
            return Ok(line);
        }
        line.push(b[0]);
        if line.len() > 4096 {
            break;
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "no request line",
    ))
}

fn pipe() -> std::io::Result<(File, File)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((File::from(r), File::from(w)))
}

fn set_nonblocking(f: &impl AsFd) {
    if let Ok(fl) = rustix::fs::fcntl_getfl(f) {
        let _ = rustix::fs::fcntl_setfl(f, fl | rustix::fs::OFlags::NONBLOCK);
    }
}

fn become_shim(opts: &Options, report: File) -> ! {
    let _ = rustix::process::setsid();
    // Named for ps/top: forked shims otherwise show the server's name.
    let _ = rustix::thread::set_name(c"berth-shim");
    let code = match run(opts, report) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth shim: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// [`serve`] on stdin, where the daemon puts the control socket of `berth shim-server`.
pub fn serve_inherited() -> i32 {
    // Started from /proc/self/fd/N (the daemon's sealed view), its name would be "N".
    let _ = rustix::thread::set_name(c"berth-shim-srv");
    let is_socket = rustix::fs::fstat(std::io::stdin())
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .unwrap_or(false);
    if !is_socket {
        eprintln!("berth shim-server: stdin is not the daemon's control socket");
        return 125;
    }
    match rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 3) {
        Ok(control) => {
            // The socket now lives above stdio; stdin becomes /dev/null for the shims.
            if let Ok(null) = File::open("/dev/null") {
                let _ = rustix::stdio::dup2_stdin(&null);
            }
            serve(control)
        }
        Err(e) => {
            eprintln!("berth shim-server: {e}");
            1
        }
    }
}

/// `berth shim-server`: forks shims on request, so they start without an exec and share
/// this process's relocated pages (a PIE binary dirties ~350 KiB at load; forked shims
/// share them instead of each paying for them). Requests come on `control` (a
/// SOCK_SEQPACKET socket): one message each, the [`Options`] as JSON with the write
/// end of the shim's report pipe attached. Returns when the daemon closes its end.
pub fn serve(control: OwnedFd) -> i32 {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let n = match recvmsg(
            &control,
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) if m.bytes == 0 => return 0,
            Ok(m) => m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                eprintln!("berth shim-server: {e}");
                return 1;
            }
        };
        let mut report: Option<File> = None;
        for msg in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                report = fds.next().map(File::from);
            }
        }
        let (Some(report), Ok(opts)) = (report, serde_json::from_slice::<Options>(&buf[..n]))
        else {
            eprintln!("berth shim-server: malformed request");
            continue;
        };
        // SAFETY: this process is single-threaded, so the child may run Rust code after
        // fork. The child forks again and exits, so the shim belongs to no one (as with
        // `main`), and this process reaps the intermediate at once.
        match unsafe { libc::fork() } {
            -1 => {
                let mut report = report;
                let _ = fail(
                    &mut report,
                    format!("fork: {}", std::io::Error::last_os_error()),
                );
            }
            0 => {
                drop(control);
                // SAFETY: as above; still single-threaded.
                match unsafe { libc::fork() } {
                    0 => become_shim(&opts, report),
                    -1 => std::process::exit(1),
                    _ => std::process::exit(0),
                }
            }
            pid => {
                drop(report);
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ =
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                }
            }
        }
    }
}

fn fail(report: &mut File, msg: String) -> std::io::Error {
    let _ = write_line(report, &serde_json::json!({ "error": msg }));
    std::io::Error::other(msg)
}

fn run(opts: &Options, mut report: File) -> std::io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let runtime = Runtime {
        root: opts.runtime_root.clone(),
        systemd_cgroup: false,
    };
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(&opts.socket).map_err(|e| {
        fail(
            &mut report,
            format!("binding {}: {e}", opts.socket.display()),
        )
    })?;
    let con_path = PathBuf::from(format!("{}.con", opts.socket.display()));
    let mut clients: Vec<Client> = Vec::new();
    let process = match &opts.exec {
        Some(path) => {
            let p: berth_runtime::oci_spec::runtime::Process = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| fail(&mut report, format!("exec process {}: {e}", path.display())))?;
            write_line(&mut report, &serde_json::json!({ "pid": 0 }))?;
            // Attaches come first; the process runs at "start" (its reply comes later).
            loop {
                let (s, _) = listener.accept()?;
                match take_request(s, opts) {
                    Some(Accepted::Client(c)) => clients.push(c),
                    Some(Accepted::Start(s)) => break Some((p, s)),
                    None => {}
                }
            }
        }
        None => None,
    };

    // The container inherits fds 0-2 of this process while the runtime creates it.
    let mut io;
    let console;
    if opts.tty {
        let _ = std::fs::remove_file(&con_path);
        console = Some(UnixListener::bind(&con_path)?);
        io = Io::Tty(None);
    } else {
        console = None;
        let (in_r, in_w) = if opts.stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (null.try_clone()?, None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        rustix::stdio::dup2_stdin(&in_r)?;
        rustix::stdio::dup2_stdout(&out_w)?;
        rustix::stdio::dup2_stderr(&err_w)?;
        io = Io::Pipes {
            stdin: in_w,
            stdout: Some(out_r),
            stderr: Some(err_r),
        };
    }
    let pid_file = PathBuf::from(format!("{}.pid", opts.socket.display()));
    let mut exec_start = None;
    let created = match process {
        Some((p, s)) => {
            exec_start = Some(s);
            runtime
                .exec(
                    &opts.id,
                    p,
                    &ExecOptions {
                        console_socket: console.as_ref().map(|_| con_path.as_path()),
                        pid_file: Some(&pid_file),
                        detach: true,
                        preserve_fds: 0,
                        ignore_paused: false,
                    },
                )
                .map(|_| ())
        }
        None => runtime.create(&CreateOptions {
            id: &opts.id,
            bundle: &opts.bundle,
            console_socket: console.as_ref().map(|_| con_path.as_path()),
            pid_file: None,
            no_pivot: false,
            preserve_fds: 0,
        }),
    };
    // From here on our stdio is /dev/null: the container holds the other ends.
    let _ = rustix::stdio::dup2_stdin(&null);
    let _ = rustix::stdio::dup2_stdout(&null);
    let _ = rustix::stdio::dup2_stderr(&null);
    if let Err(e) = created {
        let _ = std::fs::remove_file(&opts.socket);
        let _ = std::fs::remove_file(&con_path);
        if let Some(mut s) = exec_start {
            let _ = write_line(&mut s, &serde_json::json!({ "error": e.to_string() }));
            return Err(std::io::Error::other(e.to_string()));
        }
        let _ = runtime.delete(&opts.id, true);
        return Err(fail(&mut report, e.to_string()));
    }
    if let Some(con) = console {
        let master = con
            .accept()
            .and_then(|(s, _)| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                berth_runtime::console::recv_fd(&s)
            })
            .map_err(|e| fail(&mut report, format!("receiving the pty: {e}")));
        let _ = std::fs::remove_file(&con_path);
        io = Io::Tty(Some(File::from(master?)));
    }
    let pid = if opts.exec.is_some() {
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&pid_file);
        pid
    } else {
        match runtime.container(&opts.id) {
            Ok(c) => c.pid,
            Err(e) => return Err(fail(&mut report, e.to_string())),
        }
    };
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("a container pid is positive"),
        rustix::process::PidfdFlags::empty(),
    )?;
    let mut log = match &opts.log {
        Some((path, size, files)) => Some(log::JsonLog::new(path, *size, *files)?),
        None => None,
    };
    match exec_start {
        Some(mut s) => {
            write_line(&mut s, &serde_json::json!({ "ok": true, "pid": pid }))?;
            s.set_read_timeout(None)?;
            clients.push(Client {
                stream: s,
                role: Role::Monitor,
                reading: true,
            });
        }
        None => write_line(&mut report, &serde_json::json!({ "pid": pid }))?,
    }
    drop(report);

    trim_heap();
    let mut buf = vec![0u8; 64 * 1024];
    let exit_code = loop {
        // Descriptor order: listener, pidfd, stdout/pty, stderr, then one per client.
        let (out, err) = match &io {
            Io::Pipes { stdout, stderr, .. } => (stdout.as_ref(), stderr.as_ref()),
            Io::Tty(m) => (m.as_ref(), None),
        };
        let mut fds = vec![
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(&pidfd, PollFlags::IN),
        ];
        let out_at = out.map(|f| {
            fds.push(PollFd::new(f, PollFlags::IN));
            fds.len() - 1
        });
        let err_at = err.map(|f| {
            fds.push(PollFd::new(f, PollFlags::IN));
            fds.len() - 1
        });
        let first_client = fds.len();
        for c in &clients {
            let flags = if c.reading {
                PollFlags::IN
            } else {
                PollFlags::empty()
            };
            fds.push(PollFd::new(&c.stream, flags));
        }
        match poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            r => r?,
        };
        let ready = |i: usize| !fds[i].revents().is_empty();
        let new_client = ready(0);
        let exited = ready(1);
        let out_ready = out_at.is_some_and(ready);
        let err_ready = err_at.is_some_and(ready);
        let client_ready: Vec<bool> = (0..clients.len())
            .map(|i| ready(first_client + i))
            .collect();
        drop(fds);

        if out_ready {
            pump(&mut io, 0, &mut buf, &mut log, &mut clients, opts.tty);
        }
        if err_ready {
            pump(&mut io, 1, &mut buf, &mut log, &mut clients, opts.tty);
        }
        // Client input (stdin) and hang-ups.
        let mut gone = Vec::new();
        for (i, r) in client_ready.iter().enumerate() {
            if !r {
                continue;
            }
            let c = &mut clients[i];
            let wants_stdin = matches!(c.role, Role::Attach { stdin: true, .. });
            match c.stream.read(&mut buf) {
                Ok(n) if n > 0 && wants_stdin => {
                    let sink = match &mut io {
                        Io::Pipes { stdin, .. } => stdin.as_mut(),
                        Io::Tty(m) => m.as_mut(),
                    };
                    if let Some(s) = sink {
                        let _ = s.write_all(&buf[..n]);
                    }
                }
                Ok(n) if n > 0 => {}
                Ok(_) if wants_stdin => {
                    // End of the client's input; it still reads output.
                    c.reading = false;
                    if opts.stdin_once {
                        if let Io::Pipes { stdin, .. } = &mut io {
                            *stdin = None;
                        }
                    }
                }
                _ => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            clients.remove(i);
        }
        if new_client {
            if let Ok((s, _)) = listener.accept() {
                if let Some(c) = accept(s, &runtime, opts, &io) {
                    clients.push(c);
                }
            }
        }
        if exited {
            break reap(pid);
        }
    };

    // Output the container wrote just before exiting is still in the pipes.
    // (Processes outside a pid namespace may keep them open: take what is there, no more.)
    match &io {
        Io::Pipes { stdout, stderr, .. } => {
            stdout.iter().chain(stderr.iter()).for_each(set_nonblocking)
        }
        Io::Tty(m) => m.iter().for_each(set_nonblocking),
    }
    for stream in 0..2 {
        while pump(&mut io, stream, &mut buf, &mut log, &mut clients, opts.tty) {}
    }
    if let Some(l) = &mut log {
        l.flush();
    }
    let exit = Exit {
        exit_code,
        finished_at: berth_types::time::now_rfc3339(),
        oom_killed: opts.exec.is_none() && runtime.oom_kills(&opts.id).unwrap_or(0) > 0,
    };
    let _ = berth_types::fs::atomic_write(
        &opts.exit_file,
        serde_json::to_string(&exit).unwrap_or_default().as_bytes(),
    );
    let _ = std::fs::remove_file(&opts.socket);
    for c in &mut clients {
        if matches!(c.role, Role::Monitor) {
            let _ = write_line(
                &mut c.stream,
                &serde_json::json!({ "exit_code": exit_code }),
            );
        }
    }
    // Waiters and attached clients are done before the cgroup goes (rmdir of a v1 cgroup
    // can wait for an RCU grace period): the daemon waits for this state to be gone before
    // it starts the container again.
    drop(clients);
    if opts.exec.is_none() {
        let _ = runtime.delete(&opts.id, true);
    }
    Ok(())
}

/// Gives the heap the runtime used to create the container back to the system: a shim
/// lives as long as its container, and hundreds of them may run.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads what one output stream has and hands it to the log and the attached clients.
/// Returns false at end of stream (or when nothing is there, for the final drain).
fn pump(
    io: &mut Io,
    stream: usize,
    buf: &mut [u8],
    log: &mut Option<log::JsonLog>,
    clients: &mut Vec<Client>,
    tty: bool,
) -> bool {
    let src = match io {
        Io::Pipes { stdout, stderr, .. } => {
            if stream == 0 {
                stdout
            } else {
                stderr
            }
        }
        Io::Tty(m) if stream == 0 => m,
        Io::Tty(_) => return false,
    };
    let Some(f) = src.as_mut() else {
        return false;
    };
    let n = match f.read(buf) {
        Ok(0) => {
            // A pty reads EIO once the last slave is closed: also the end.
            *src = None;
            return false;
        }
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
        Err(_) => {
            *src = None;
            return false;
        }
    };
    let data = &buf[..n];
    if let Some(l) = log {
        l.write(stream, data);
    }
    let mut frame = Vec::with_capacity(n + 8);
    if !tty {
        frame.push(stream as u8 + 1);
        frame.extend_from_slice(&[0, 0, 0]);
        frame.extend_from_slice(&(n as u32).to_be_bytes());
    }
    frame.extend_from_slice(data);
    clients.retain_mut(|c| match c.role {
        Role::Attach { stdout, stderr, .. } => {
            let wanted = if stream == 0 { stdout } else { stderr };
            !wanted || c.stream.write_all(&frame).is_ok()
        }
        Role::Monitor => true,
    });
    true
}

/// Answers `{"ok":true}` and keeps the connection as a client in `role`.
fn keep(mut s: UnixStream, role: Role) -> Option<Client> {
    write_line(&mut s, &serde_json::json!({ "ok": true })).ok()?;
    s.set_read_timeout(None).ok()?;
    Some(Client {
        stream: s,
        role,
        reading: true,
    })
}

fn attach_role(req: &Request, opts: &Options) -> Role {
    Role::Attach {
        stdin: req.stdin && opts.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    }
}

enum Accepted {
    Client(Client),
    /// An exec's `start`, answered once the process runs.
    Start(UnixStream),
}

/// Before an exec starts: attaches and waits are kept, `start` ends the wait.
fn take_request(mut s: UnixStream, opts: &Options) -> Option<Accepted> {
    let req = read_request(&mut s)?;
    let ok = serde_json::json!({ "ok": true });
    match req.op.as_str() {
        "start" => Some(Accepted::Start(s)),
        "wait" => keep(s, Role::Monitor).map(Accepted::Client),
        "attach" => keep(s, attach_role(&req, opts)).map(Accepted::Client),
        _ => {
            let _ = write_line(&mut s, &ok);
            None
        }
    }
}

fn read_request(s: &mut UnixStream) -> Option<Request> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // A client that stops reading must not stall the container's output for long.
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    let line = read_line(s).ok()?;
    match serde_json::from_slice(&line) {
        Ok(r) => Some(r),
        Err(e) => {
            let _ = write_line(s, &serde_json::json!({ "error": e.to_string() }));
            None
        }
    }
}

/// Takes a new connection's request. Returns the client to keep, if any.
fn accept(mut s: UnixStream, runtime: &Runtime, opts: &Options, io: &Io) -> Option<Client> {
    let req = read_request(&mut s)?;
    let ok = serde_json::json!({ "ok": true });
    match req.op.as_str() {
        "start" if opts.exec.is_some() => None,
        "start" => match runtime.start(&opts.id) {
            Ok(()) => keep(s, Role::Monitor),
            Err(e) => {
                let _ = write_line(&mut s, &serde_json::json!({ "error": e.to_string() }));
                None
            }
        },
        "wait" => keep(s, Role::Monitor),
        "attach" => keep(s, attach_role(&req, opts)),
        "resize" => {
            if let Io::Tty(Some(m)) = io {
                let ws = rustix::termios::Winsize {
                    ws_row: req.h,
                    ws_col: req.w,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let _ = rustix::termios::tcsetwinsize(m, ws);
            }
            let _ = write_line(&mut s, &ok);
            None
        }
        other => {
            let _ = write_line(
                &mut s,
                &serde_json::json!({ "error": format!("unknown request {other:?}") }),
            );
            None
        }
    }
}

/// The container's exit status as Docker reports it: the code, or 128 + the signal.
fn reap(pid: i32) -> i32 {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return 255;
    };
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                if let Some(code) = st.exit_status() {
                    return code;
                }
                if let Some(sig) = st.terminating_signal() {
                    return 128 + sig;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            _ => return 255,
        }
    }
}
