//! Starting shims through `berth shim-server`, a single-threaded child of the daemon that
//! forks them: no exec per container, and the shims share the server's relocated pages.
//! The daemon's threads never fork. If the server is gone it is started again.

use std::io::{BufRead, BufReader, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use rustix::net::{
    sendmsg, socketpair, AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketFlags, SocketType,
};
use serde_json::Value;

#[derive(Default)]
pub struct Spawner {
    server: Mutex<Option<(OwnedFd, Child)>>,
}

fn start_server() -> Result<(OwnedFd, Child), String> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let binary = super::shim_binary()?;
    // The server runs from a read-only view of the binary, so every shim it forks, and each
    // container process a shim forks in turn, is already out of reach of CVE-2019-5736 and
    // needs no sealed re-exec of its own (one exec fewer per container start and per exec).
    // The view lives as long as the server runs from it. Without one (no overlayfs), each
    // child seals itself as before.
    let view = berth_runtime::sys::overlay_view(&binary, None).ok();
    let program = match &view {
        Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        None => binary.clone(),
    };
    let child = Command::new(program)
        .arg0(&binary)
        .arg("shim-server")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the shim server: {e}"))?;
    Ok((ours, child))
}

fn send(control: &OwnedFd, body: &[u8], fd: &OwnedFd) -> std::io::Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(
        control,
        &[IoSlice::new(body)],
        &mut anc,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

impl Spawner {
    /// Starts a shim and returns its report (`{"pid":N}`; an `error` becomes Err).
    pub fn spawn(&self, opts: &berth_shim::Options) -> Result<Value, String> {
        let body = serde_json::to_vec(opts).map_err(|e| e.to_string())?;
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("pipe: {e}"))?;
        {
            let mut server = self.server.lock().expect("spawner lock");
            let mut sent = false;
            for _ in 0..2 {
                if server.is_none() {
                    *server = Some(start_server()?);
                }
                let (control, child) = server.as_mut().expect("started");
                if send(control, &body, &w).is_ok() {
                    sent = true;
                    break;
                }
                // The server died: reap it and start another.
                let _ = child.kill();
                let _ = child.wait();
                *server = None;
            }
            if !sent {
                return Err("the shim server does not take requests".into());
            }
        }
        drop(w);
        let mut line = String::new();
        let _ = BufReader::new(std::fs::File::from(r)).read_line(&mut line);
        let v: Value = serde_json::from_str(&line)
            .map_err(|_| "the shim exited without reporting".to_string())?;
        match v["error"].as_str() {
            Some(e) => Err(e.to_string()),
            None => Ok(v),
        }
    }
}
