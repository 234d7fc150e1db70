//! Terminal containers: a pty created inside the container whose master is handed to the
//! caller over the `--console-socket` (runc's protocol: one SCM_RIGHTS message).

use std::ffi::OsStr;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

use crate::error::{Context, Result};
use crate::sys;

/// Creates the pty, sends its master over `socket`, and makes the slave this process's
/// controlling terminal and stdio.
pub fn setup(socket: &UnixStream, size: Option<(u16, u16)>) -> Result<()> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .ctx(|| "opening /dev/ptmx".into())?;
    grantpt(&master)
        .map_err(std::io::Error::from)
        .ctx(|| "grantpt".into())?;
    unlockpt(&master)
        .map_err(std::io::Error::from)
        .ctx(|| "unlockpt".into())?;
    let name = ptsname(&master, Vec::new())
        .map_err(std::io::Error::from)
        .ctx(|| "ptsname".into())?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(OsStr::from_bytes(name.to_bytes()))
        .ctx(|| "opening the pty slave".into())?
        .into();
    if let Some((rows, cols)) = size {
        let ws = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&slave, ws)
            .map_err(std::io::Error::from)
            .ctx(|| "setting the terminal size".into())?;
    }
    send_fd(socket, &master, name.to_bytes())
        .ctx(|| "sending the pty master to the console socket".into())?;
    drop(master);
    rustix::process::ioctl_tiocsctty(&slave)
        .map_err(std::io::Error::from)
        .ctx(|| "making the pty the controlling terminal".into())?;
    for target in 0..3 {
        sys::dup2(slave.as_raw_fd(), target).ctx(|| "connecting stdio to the pty".into())?;
    }
    Ok(())
}

pub(crate) fn send_fd(socket: &UnixStream, fd: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(socket, &[IoSlice::new(name)], &mut anc, SendFlags::empty())?;
    Ok(())
}

/// Receives the pty master a runtime sends to a console socket.
pub fn recv_fd(s: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 256];
    recvmsg(
        s,
        &mut [std::io::IoSliceMut::new(&mut name)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(std::io::Error::other("no descriptor on the console socket"))
}

/// A terminal the runtime itself holds for `run` with `terminal: true` and no console
/// socket (as runc does): the pty master is received on a socket of ours, our terminal goes
/// raw, and input and output are copied until the container's side closes.
pub struct OwnConsole {
    pub socket: std::path::PathBuf,
    thread: std::thread::JoinHandle<()>,
}

impl OwnConsole {
    pub fn listen(state_root: &std::path::Path) -> std::io::Result<OwnConsole> {
        std::fs::create_dir_all(state_root)?;
        let socket = state_root.join(format!("@console-{}", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        let thread = std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let Ok(master) = recv_fd(&conn) else {
                return;
            };
            proxy(master);
        });
        Ok(OwnConsole { socket, thread })
    }

    /// Waits for the output to be copied out (the container's side is closed by then).
    /// After a failed start nothing was sent: the waiting thread is left to the exit.
    pub fn finish(self, started: bool) {
        let _ = std::fs::remove_file(&self.socket);
        if started {
            let _ = self.thread.join();
        }
    }
}

fn proxy(master: OwnedFd) {
    use std::io::{Read, Write};
    let stdin = std::io::stdin();
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        if let Ok(ws) = rustix::termios::tcgetwinsize(&stdin) {
            let _ = rustix::termios::tcsetwinsize(&master, ws);
        }
    }
    let mut out = std::fs::File::from(master);
    if let Ok(mut input) = out.try_clone() {
        // Input until our stdin ends; this thread is not waited for.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || input.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    let mut buf = [0u8; 8192];
    let mut stdout = std::io::stdout();
    // EIO once the last slave descriptor is closed: the program is done.
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 || stdout.write_all(&buf[..n]).is_err() {
            break;
        }
        let _ = stdout.flush();
    }
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
    }
}
