//! Terminal containers: a pty created inside the container whose master is handed to the
//! caller over the `--console-socket` (runc's protocol: one SCM_RIGHTS message).

use std::ffi::OsStr;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
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
