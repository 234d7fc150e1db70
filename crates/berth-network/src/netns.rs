//! Network namespaces that outlive their processes: a namespace is made by a short-lived
//! thread and kept by a bind mount of its `/proc/thread-self/ns/net` on a file, so the
//! daemon can wire it before the container exists and a restarted container keeps it.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::mount::{unmount, UnmountFlags};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType, UnshareFlags};

use crate::Error;

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::System(format!("{what} {}: {e}", path.display()))
}

/// Makes a new network namespace and binds it to `path` (created).
pub fn create(path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    }
    File::create(path).map_err(|e| io("creating", path, e))?;
    let target = path.to_path_buf();
    // A thread of its own: unshare moves only the calling thread, which ends right after,
    // so no thread of the daemon is ever left in the new namespace.
    let made = std::thread::spawn(move || -> Result<(), Error> {
        // SAFETY: only CLONE_NEWNET, which changes nothing about this thread's memory or
        // descriptors; the thread does nothing else but bind the namespace and exit.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
            .map_err(|e| Error::System(format!("unshare(CLONE_NEWNET): {e}")))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)
            .map_err(|e| io("binding the network namespace on", &target, e))
    })
    .join()
    .map_err(|_| Error::System("the namespace thread panicked".into()))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Releases the namespace (it goes once nothing else holds it) and removes the file.
pub fn remove(path: &Path) -> Result<(), Error> {
    match unmount(path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(io("unmounting", path, e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path, e)),
    }
}

/// Runs `f` on a thread inside the namespace at `path`; netlink sockets opened there stay
/// bound to that namespace after the thread ends.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let ns = File::open(path).map_err(|e| io("opening", path, e))?;
    std::thread::spawn(move || -> Result<T, Error> {
        move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(|e| Error::System(format!("setns(CLONE_NEWNET): {e}")))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::System("the namespace thread panicked".into()))?
}
