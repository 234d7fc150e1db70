//! Blob bodies by `sendfile(2)` on plain TCP connections, under hyper.
//!
//! A blob is handed to hyper as `Bytes` over a mapping of its file ([`map`]); every such
//! mapping is registered by address. The connection type under hyper ([`Stream`]) looks at
//! each buffer hyper asks it to write: one that lies inside a registered mapping is sent
//! with `sendfile` from the file at the same offset, which moves page-cache pages into the
//! socket without copying them through user space and without ever touching the mapping.
//! Anything else (headers, JSON, buffers of other drivers) is written as usual, so the bytes
//! on the wire are the same either way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Start address → (length, file) of every live mapping.
static MAPS: RwLock<BTreeMap<usize, (usize, Arc<File>)>> = RwLock::new(BTreeMap::new());

struct Mapped {
    map: memmap2::Mmap,
    start: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        MAPS.write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.start);
    }
}

/// The whole file as `Bytes` over a mapping of it, registered for [`Stream`].
pub fn map(file: File) -> io::Result<Bytes> {
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a mapping is undefined behaviour if the file changes under it. The registry
    // maps only objects written once, to a temporary file renamed into place (the storage
    // driver's `put` and `rename`), so the mapped inode is never written again; deleting its
    // name (gc, DELETE) leaves the mapping valid. Uploads, which are appended to, are never
    // mapped.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let start = map.as_ptr() as usize;
    MAPS.write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(start, (len, Arc::new(file)));
    Ok(Bytes::from_owner(Mapped { map, start }))
}

/// The file and offset a buffer is the bytes of, if it lies inside a mapping.
fn lookup(buf: &[u8]) -> Option<(Arc<File>, u64)> {
    if buf.is_empty() {
        return None;
    }
    let p = buf.as_ptr() as usize;
    let maps = MAPS.read().unwrap_or_else(|e| e.into_inner());
    let (start, (len, file)) = maps.range(..=p).next_back()?;
    (p + buf.len() <= start + len).then(|| (file.clone(), (p - start) as u64))
}

/// A TCP connection that sends mapped buffers with `sendfile`.
pub struct Stream(TcpStream);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some((file, offset)) = lookup(&bufs[first]) {
            let len = bufs[first].len();
            if len >= BLOCKING_AT_LEAST
                && tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread
            {
                let sock = &self.0;
                let sent = tokio::task::block_in_place(|| send_blocking(sock, &file, offset, len));
                match sent {
                    Ok(0) => {}
                    other => return Poll::Ready(other),
                }
            }
            loop {
                ready!(self.0.poll_write_ready(cx))?;
                let sock = &self.0;
                let sent = sock.try_io(Interest::WRITABLE, || {
                    let mut at = offset;
                    rustix::fs::sendfile(sock, &*file, Some(&mut at), len).map_err(io::Error::from)
                });
                match sent {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return Poll::Ready(other),
                }
            }
        }
        // Everything up to the next mapped buffer, written as it is.
        let end = bufs[first..]
            .iter()
            .position(|b| lookup(b).is_some())
            .map_or(bufs.len(), |i| first + i);
        Pin::new(&mut self.0).poll_write_vectored(cx, &bufs[first..end])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Large bodies are sent by blocking `sendfile` on a thread of their own: the kernel then
/// waits for room in the socket itself, where a non-blocking send returns at every full
/// buffer and costs a trip through epoll and the scheduler of tokio each time.
const BLOCKING_AT_LEAST: usize = 4 << 20;

/// How long one blocking send may wait for the client; after that the connection goes back
/// to non-blocking sends, so a slow reader never holds a thread for long.
const BLOCKING_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Sends up to `len` bytes of `file` from `offset` with the socket in blocking mode, until
/// all is sent or the client stops taking data for [`BLOCKING_WAIT`]. Ok(0): nothing went.
fn send_blocking(sock: &TcpStream, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    set_socket_timeout(sock, Timeout::Send, Some(BLOCKING_WAIT))?;
    rustix::io::ioctl_fionbio(sock, false)?;
    let mut sent = 0;
    let mut result = Ok(());
    while sent < len {
        let mut at = offset + sent as u64;
        match rustix::fs::sendfile(sock, file, Some(&mut at), len - sent) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => {
                result = Err(io::Error::from(e));
                break;
            }
        }
    }
    // Back to what tokio expects of its sockets, whatever happened.
    rustix::io::ioctl_fionbio(sock, true)?;
    match result {
        Err(e) if sent == 0 => Err(e),
        _ => Ok(sent),
    }
}

/// A listener whose connections are [`Stream`]s.
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (Stream(s), a);
                }
                // Out of descriptors and the like: wait a little, as axum's own does.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_inside_a_mapping_name_their_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blob");
        std::fs::write(&p, b"0123456789").unwrap();
        let b = map(File::open(&p).unwrap()).unwrap();
        assert_eq!(&b[..], b"0123456789");
        let part = b.slice(3..7);
        assert_eq!(lookup(&part).map(|(_, o)| o), Some(3));
        assert!(lookup(b"0123").is_none(), "other memory is not a mapping");
        let copy = part.to_vec();
        assert!(lookup(&copy).is_none());
    }
}
