//! The syscall boundary. Everything that changes kernel state for a container goes through
//! [`Syscall`], so the setup logic above it can be unit-tested with [`RecordingSyscall`]
//! without root. This is the only module of the crate with `unsafe`.

use std::cell::RefCell;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, io::Error>;

fn cstr(p: &OsStr) -> Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Kernel operations used while building a container's world.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount2(&self, target: &Path, flags: i32) -> Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn chroot(&self, path: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn fchdir(&self, fd: BorrowedFd<'_>) -> Result<()>;
    fn mknod(&self, path: &Path, mode: u32, dev: u64) -> Result<()>;
    fn symlink(&self, original: &Path, link: &Path) -> Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()>;
    fn sethostname(&self, name: &str) -> Result<()>;
    fn setdomainname(&self, name: &str) -> Result<()>;
    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> Result<()>;
    fn unshare(&self, flags: i32) -> Result<()>;
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<()>;
    /// mount_setattr(2) on `target` and every mount below it.
    fn mount_setattr_recursive(&self, target: &Path, set: u64, clear: u64) -> Result<()>;
}

/// The real kernel.
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<()> {
        let source = source.map(|s| cstr(s.as_os_str())).transpose()?;
        let target = cstr(target.as_os_str())?;
        let fstype = fstype.map(|s| cstr(OsStr::new(s))).transpose()?;
        let data = data.map(|s| cstr(OsStr::new(s))).transpose()?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
        check(unsafe {
            libc::mount(
                ptr(&source),
                target.as_ptr(),
                ptr(&fstype),
                flags as libc::c_ulong,
                ptr(&data) as *const libc::c_void,
            )
        })
    }

    fn umount2(&self, target: &Path, flags: i32) -> Result<()> {
        let target = cstr(target.as_os_str())?;
        // SAFETY: target is a valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        let new_root = cstr(new_root.as_os_str())?;
        let put_old = cstr(put_old.as_os_str())?;
        // SAFETY: both arguments are valid C strings; pivot_root has no libc wrapper.
        let rc =
            unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        check(rc as libc::c_int)
    }

    fn chroot(&self, path: &Path) -> Result<()> {
        let path = cstr(path.as_os_str())?;
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chroot(path.as_ptr()) })
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        std::env::set_current_dir(path)
    }

    fn fchdir(&self, fd: BorrowedFd<'_>) -> Result<()> {
        // SAFETY: fd is a live descriptor borrowed for the duration of the call.
        check(unsafe { libc::fchdir(fd.as_raw_fd()) })
    }

    fn mknod(&self, path: &Path, mode: u32, dev: u64) -> Result<()> {
        let path = cstr(path.as_os_str())?;
        // SAFETY: path is a valid C string.
        check(unsafe { libc::mknod(path.as_ptr(), mode, dev) })
    }

    fn symlink(&self, original: &Path, link: &Path) -> Result<()> {
        std::os::unix::fs::symlink(original, link)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        // SAFETY: the pointer and length describe the bytes of `name`.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn setdomainname(&self, name: &str) -> Result<()> {
        // SAFETY: the pointer and length describe the bytes of `name`.
        check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) })
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> Result<()> {
        // SAFETY: fd is a live namespace descriptor borrowed for the call.
        check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })
    }

    fn unshare(&self, flags: i32) -> Result<()> {
        // SAFETY: unshare only takes flags.
        check(unsafe { libc::unshare(flags) })
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<()> {
        let lim = libc::rlimit64 {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: lim is a valid rlimit64 on the stack; the old-limit pointer may be null.
        check(unsafe {
            libc::prlimit64(
                0,
                resource as libc::__rlimit_resource_t,
                &lim,
                std::ptr::null_mut(),
            )
        })
    }
    fn mount_setattr_recursive(&self, target: &Path, set: u64, clear: u64) -> Result<()> {
        let target = cstr(target.as_os_str())?;
        let attr = MountAttr {
            attr_set: set,
            attr_clr: clear,
            propagation: 0,
            userns_fd: 0,
        };
        const AT_RECURSIVE: libc::c_uint = 0x8000;
        // SAFETY: target is a valid C string and attr a valid mount_attr of the given size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target.as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        check(rc as libc::c_int)
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One recorded call of [`RecordingSyscall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
    },
    Umount(PathBuf, i32),
    PivotRoot(PathBuf, PathBuf),
    Chroot(PathBuf),
    Chdir(PathBuf),
    Fchdir,
    Mknod(PathBuf, u32, u64),
    Symlink(PathBuf, PathBuf),
    Chown(PathBuf, u32, u32),
    Hostname(String),
    Domainname(String),
    Setns(i32),
    Unshare(i32),
    Rlimit(u32, u64, u64),
    MountSetattr(PathBuf, u64, u64),
}

/// A fake kernel that records what it was asked to do and always succeeds.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
}

impl RecordingSyscall {
    fn push(&self, c: Call) -> Result<()> {
        self.calls.borrow_mut().push(c);
        Ok(())
    }
    pub fn mounts(&self) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .cloned()
            .collect()
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<()> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn umount2(&self, target: &Path, flags: i32) -> Result<()> {
        self.push(Call::Umount(target.into(), flags))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.push(Call::PivotRoot(new_root.into(), put_old.into()))
    }
    fn chroot(&self, path: &Path) -> Result<()> {
        self.push(Call::Chroot(path.into()))
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        self.push(Call::Chdir(path.into()))
    }
    fn fchdir(&self, _fd: BorrowedFd<'_>) -> Result<()> {
        self.push(Call::Fchdir)
    }
    fn mknod(&self, path: &Path, mode: u32, dev: u64) -> Result<()> {
        self.push(Call::Mknod(path.into(), mode, dev))
    }
    fn symlink(&self, original: &Path, link: &Path) -> Result<()> {
        self.push(Call::Symlink(original.into(), link.into()))
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        self.push(Call::Chown(path.into(), uid, gid))
    }
    fn sethostname(&self, name: &str) -> Result<()> {
        self.push(Call::Hostname(name.into()))
    }
    fn setdomainname(&self, name: &str) -> Result<()> {
        self.push(Call::Domainname(name.into()))
    }
    fn setns(&self, _fd: BorrowedFd<'_>, nstype: i32) -> Result<()> {
        self.push(Call::Setns(nstype))
    }
    fn unshare(&self, flags: i32) -> Result<()> {
        self.push(Call::Unshare(flags))
    }
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<()> {
        self.push(Call::Rlimit(resource, soft, hard))
    }
    fn mount_setattr_recursive(&self, target: &Path, set: u64, clear: u64) -> Result<()> {
        self.push(Call::MountSetattr(target.into(), set, clear))
    }
}

// ---- Process-level primitives that have no fake: they are the process model itself. ----

/// Fork-like clone into new namespaces. Returns 0 in the child, the child's pid in the parent.
///
/// The caller must be single-threaded (the runtime role is), so the child may run ordinary
/// Rust code after it returns.
pub fn clone_process(flags: i32) -> Result<i32> {
    // SAFETY: a raw clone with a null stack behaves like fork(2): the child gets a copy of
    // the address space. The runtime process is single-threaded, so no lock can be held by
    // another thread at the moment of the copy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// `clone_process` with the child born in the cgroup v2 directory `cgroup`
/// (CLONE_INTO_CGROUP, Linux 5.7): no process is moved, so no global lock is taken.
pub fn clone_into_cgroup(flags: i32, cgroup: BorrowedFd<'_>) -> Result<i32> {
    // struct clone_args of linux/sched.h, up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: as for clone_process: no stack is given (the child runs on a copy of this
    // one, as after fork(2)) and the process is single-threaded; `args` lives across the
    // call and its size is passed with it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Caps glibc's malloc at `n` arenas. glibc gives threads that allocate at the same time
/// arenas of their own (up to 8 per core), each keeping the pages it once used; a daemon
/// of a few mostly idle threads gains nothing from them but resident memory.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

/// Gives the free pages of malloc's heap back to the kernel.
pub fn trim_malloc() {
    // SAFETY: malloc_trim takes the allocator's own locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives the program about to be executed the signal state a fresh process has: Rust
/// ignores SIGPIPE at start-up, and ignored signals survive execve (`yes | head` would
/// then see EPIPE instead of dying quietly).
pub fn reset_signals() {
    // The kernel's struct sigaction (not libc's, whose mask is 128 bytes): glibc refuses to
    // touch the real-time signals it reserves, and an ignored one would leak all the same.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a valid kernel sigaction with SIG_DFL; the old action is not requested.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
    // SAFETY: an empty set, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Blocks every signal in this process (before forking a child that resets its own mask,
/// so the `--init` reaper misses no SIGCHLD).
pub fn block_all_signals() {
    // SAFETY: a full set initialised by sigfillset; the old mask is not needed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// fork(2). Only for single-threaded callers (the container's init is).
pub fn fork() -> io::Result<i32> {
    // SAFETY: the caller is single-threaded, so the child may keep running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// The `--init` reaper, as pid 1 of the container: closes every descriptor above stdio
/// (so the runtime sees the program's exec), forwards every signal to `child`, reaps
/// every orphan, and exits as `child` does (128 + signal when it is killed).
/// All signals must already be blocked (see [`block_all_signals`]).
pub fn reap_as_init(child: i32) -> ! {
    // SAFETY: close_range on descriptors of this process, none of which it uses again.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: plain signal and wait calls with valid out pointers.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        loop {
            let sig = libc::sigwaitinfo(&all, std::ptr::null_mut());
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(child, sig);
                continue;
            }
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    libc::_exit(code);
                }
            }
        }
    }
}

/// Brings `lo` up in the network namespace of process `pid` (a new network namespace
/// starts with it down, and programs talking to 127.0.0.1 then fail). Done from a thread
/// of its own, which joins that namespace and ends with it.
pub fn loopback_up(pid: i32) -> io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: setns on a namespace descriptor we own, for this thread only (network
        // namespaces are per thread); the thread ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a plain datagram socket, closed below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ifreq is plain data; the name fits (3 bytes with the NUL) and the ioctls
        // read and write only that struct.
        let r = unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in b"lo\0".iter().enumerate() {
                req.ifr_name[i] = *b as libc::c_char;
            }
            let mut r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
            if r == 0 {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
            }
            let e = io::Error::last_os_error();
            libc::close(sock);
            if r == 0 {
                Ok(())
            } else {
                Err(e)
            }
        };
        r
    })
    .join()
    .map_err(|_| io::Error::other("the loopback thread panicked"))?
}

/// Replaces the process image. Returns only on failure.
pub fn execve(path: &Path, args: &[String], env: &[String]) -> io::Error {
    let to_c = |v: &[String]| -> Result<Vec<CString>> {
        v.iter()
            .map(|s| {
                CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
            })
            .collect()
    };
    let (path, args, env) = match (cstr(path.as_os_str()), to_c(args), to_c(env)) {
        (Ok(p), Ok(a), Ok(e)) => (p, a, e),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are null-terminated arrays of valid C strings kept alive above.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Replaces the process image with the program behind an open descriptor.
pub fn fexecve(fd: BorrowedFd<'_>, args: &[CString], env: &[CString]) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv/envp are null-terminated arrays of live C strings; fd is a live descriptor.
    unsafe { libc::fexecve(fd.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

pub fn setresuid(uid: u32) -> Result<()> {
    // SAFETY: plain integer arguments. Raw syscall on purpose: the process is single-threaded
    // and glibc's cross-thread broadcast is not needed.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } as libc::c_int)
}

pub fn setresgid(gid: u32) -> Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } as libc::c_int)
}

pub fn setgroups(gids: &[u32]) -> Result<()> {
    // SAFETY: the pointer and length describe `gids`.
    check(unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) } as libc::c_int)
}

pub fn setsid() -> Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() })
}

pub fn prctl(option: i32, arg: libc::c_ulong) -> Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) })
}

pub fn umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::kill(pid, sig) })
}

/// Waits for a child; returns its exit status in shell convention (128+signal when killed).
pub fn waitpid(pid: i32, nohang: bool) -> Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, if nohang { libc::WNOHANG } else { 0 }) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        return Ok(Some(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            status
        }));
    }
}

/// Duplicates `fd` onto `target` (clearing close-on-exec on the copy).
pub fn dup2(fd: RawFd, target: RawFd) -> Result<()> {
    // SAFETY: plain descriptor numbers; dup2 validates them.
    check(unsafe { libc::dup2(fd, target) })
}

/// Takes ownership of an inherited descriptor number.
pub fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: called only for descriptors this process inherited on purpose (their numbers
    // came from the runtime that created it) and that nothing else in the process owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn set_cloexec(fd: RawFd) -> Result<()> {
    // SAFETY: F_SETFD takes an integer argument.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })
}

/// Clears close-on-exec so a descriptor survives execve (for --preserve-fds and LISTEN_FDS).
pub fn clear_cloexec(fd: RawFd) -> Result<()> {
    // SAFETY: F_SETFD takes an integer argument.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })
}

/// Marks every descriptor from `first` up close-on-exec, so no host descriptor leaks into
/// the container (the CVE-2024-21626 class).
pub fn close_fds_from(first: RawFd) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd >= first {
            // SAFETY: fcntl(F_SETFD) on a number at worst fails with EBADF (the read_dir fd).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// A sealed in-memory copy of this executable, so that no container process can reach the
/// host binary through /proc/<pid>/exe (the CVE-2019-5736 class).
pub fn sealed_self_copy() -> Result<OwnedFd> {
    let name = CString::new("berth").expect("static");
    // SAFETY: name is a valid C string.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut src = std::fs::File::open("/proc/self/exe")?;
    let mut dst = std::fs::File::from(memfd.try_clone()?);
    io::copy(&mut src, &mut dst)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS takes an integer argument.
    check(unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(memfd)
}

/// Whether this process already runs from an executable nothing can write through: one on
/// a read-only mount (such as the view [`overlay_view`] makes) or a memfd sealed against
/// writes. Such a process needs no sealed copy of itself for the container's sake.
pub fn self_is_sealed() -> bool {
    let Ok(exe) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    if rustix::fs::fstatvfs(&exe)
        .is_ok_and(|st| st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    {
        return true;
    }
    rustix::fs::fcntl_get_seals(&exe).is_ok_and(|s| s.contains(rustix::fs::SealFlags::WRITE))
}

/// A read-only view of this executable that nothing can write through: see
/// [`overlay_view`].
pub fn overlay_self_view(spare_lower: Option<&Path>) -> Result<OwnedFd> {
    overlay_view(&std::fs::read_link("/proc/self/exe")?, spare_lower)
}

/// A read-only view of the executable at `exe` that nothing can write through: its
/// directory as the lower layer of a detached overlay mount (no upper layer, so read-only;
/// attached nowhere, so unreachable by path). Costs no copy, unlike [`sealed_self_copy`].
pub fn overlay_view(exe: &Path, spare_lower: Option<&Path>) -> Result<OwnedFd> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags,
        MountAttrFlags,
    };
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let dir = dir
        .to_str()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if dir.contains([':', ',', '\\']) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL)); // would need escaping
    }
    // Without an upper layer overlayfs needs two lower layers that do not overlap: the
    // binary's directory on top of a spare directory. Only the binary's name is opened and
    // its directory is on top, so the spare's content cannot matter. A given spare
    // directory saves creating a detached tmpfs for the purpose (two fewer mount calls).
    let spare = spare_lower
        .and_then(|p| p.to_str())
        .filter(|p| !p.contains([':', ',', '\\']))
        .filter(|p| !Path::new(p).starts_with(dir) && !Path::new(dir).starts_with(p))
        .filter(|p| Path::new(p).is_dir());
    let (lower2, _tmpfs) = match spare {
        Some(p) => (p.to_string(), None),
        None => {
            let empty_fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
            fsconfig_create(&empty_fs)?;
            let empty = fsmount(
                &empty_fs,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_RDONLY,
            )?;
            (format!("/proc/self/fd/{}", empty.as_raw_fd()), Some(empty))
        }
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "lowerdir", format!("{dir}:{lower2}"))?;
    fsconfig_create(&fs)?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )?;
    let fd = rustix::fs::openat(
        &mnt,
        name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(fd)
}

pub fn mkfifo(path: &Path, mode: u32) -> Result<()> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: p is a valid C string.
    check(unsafe { libc::mkfifo(p.as_ptr(), mode) })
}

pub fn getpid() -> i32 {
    std::process::id() as i32
}

static FORWARD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_handler(sig: libc::c_int) {
    let pid = FORWARD_PID.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards the signals a foreground runtime receives (Ctrl-C, TERM, HUP, ...) to `pid`.
pub fn forward_signals(pid: i32) {
    FORWARD_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        // SAFETY: the handler only reads an atomic and calls kill, both async-signal-safe;
        // sa_mask is zeroed and SA_RESTART keeps waitpid going.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_handler as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Loads a compiled seccomp BPF program (8-byte `sock_filter` instructions) for this
/// thread with `flags` (SECCOMP_FILTER_FLAG_*). Returns what the syscall returns (a
/// listener descriptor with SECCOMP_FILTER_FLAG_NEW_LISTENER).
pub fn seccomp_set_filter(bpf: &[u8], flags: u32) -> Result<i32> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const u8,
    }
    if bpf.is_empty() || bpf.len() % 8 != 0 || bpf.len() / 8 > u16::MAX as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let prog = SockFprog {
        len: (bpf.len() / 8) as u16,
        filter: bpf.as_ptr(),
    };
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    // SAFETY: prog points at `bpf`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            &prog as *const SockFprog,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// ioprio_set(2) for this process.
pub fn ioprio_set(class: u32, level: u32) -> Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    let value = (class << 13) | (level & 0x1fff);
    // SAFETY: plain integer arguments.
    check(
        unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) } as libc::c_int,
    )
}

/// personality(2): sets the execution domain (LINUX32 makes `uname -m` report i686).
pub fn personality(persona: libc::c_ulong) -> Result<()> {
    // SAFETY: plain integer argument.
    check(unsafe { libc::personality(persona) })
}
