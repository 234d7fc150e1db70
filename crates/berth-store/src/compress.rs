//! gzip on every core, for layers on their way to a registry: the input is cut into blocks,
//! each block deflated on its own thread and ended with a sync flush (so it ends on a byte
//! boundary), and the pieces are written in order behind one gzip header, an empty final
//! block and the trailer. The result is one ordinary gzip member any gunzip reads; what is
//! lost is only the 32 KiB of history a block cannot see across its start.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use flate2::{Compress, Compression, FlushCompress};

/// Input per block: large enough that the history lost at block starts costs little.
const BLOCK: usize = 1 << 20;

/// gzip's header: no name, no mtime (reproducible output), OS unknown, as Go's writer.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Deflates one block, ending with a sync flush (`last`: with the final block instead).
fn deflate(level: u32, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let done = c.total_in() as usize;
        let status = c
            .compress_vec(&data[done..], &mut out, flush)
            .map_err(io::Error::other)?;
        let consumed = c.total_in() as usize == data.len();
        // Finished when all input is in and the output did not fill the space it had.
        if consumed && (status == flate2::Status::StreamEnd || out.len() < out.capacity()) {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 << 10));
    }
}

/// Whether a block looks incompressible (media, archives, already compressed files): a
/// few samples deflated at level 1 barely shrink. Such a block is stored, at memory speed,
/// instead of being searched for matches that are not there.
fn incompressible(block: &[u8]) -> bool {
    const SAMPLE: usize = 8 << 10;
    if block.len() < 4 * SAMPLE {
        return false;
    }
    let step = (block.len() - SAMPLE) / 3;
    let (mut raw, mut packed) = (0usize, 0usize);
    for i in 0..4 {
        let sample = &block[i * step..i * step + SAMPLE];
        match deflate(1, sample, false) {
            Ok(out) => packed += out.len(),
            Err(_) => return false,
        }
        raw += SAMPLE;
    }
    packed * 100 >= raw * 97
}

/// Reads up to a whole block (short only at the end of the input).
fn read_block(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; BLOCK];
    let mut filled = 0;
    while filled < BLOCK {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Writes the pieces that are next in order.
fn write_ready(
    pending: &mut BTreeMap<u64, Vec<u8>>,
    next_out: &mut u64,
    out: &mut impl Write,
) -> io::Result<()> {
    while let Some(piece) = pending.remove(next_out) {
        out.write_all(&piece)?;
        *next_out += 1;
    }
    Ok(())
}

/// Compresses `input` into `out` as gzip at `level` (0-9) on `threads` threads. Returns
/// the number of bytes read.
pub fn gzip(
    mut input: impl Read,
    mut out: impl Write,
    level: u32,
    threads: usize,
) -> io::Result<u64> {
    let threads = threads.max(1);
    out.write_all(&HEADER)?;
    let mut crc = crc32fast::Hasher::new();
    let mut total = 0u64;
    std::thread::scope(|scope| -> io::Result<()> {
        let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(threads);
        let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, io::Result<Vec<u8>>)>();
        for _ in 0..threads {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || loop {
                let next = rx.lock().expect("work queue").recv();
                let Ok((n, block)) = next else { return };
                let level = if incompressible(&block) { 0 } else { level };
                if tx.send((n, deflate(level, &block, false))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        // Pieces arrive in any order and leave in block order.
        let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut next_out = 0u64;
        let mut sent = 0u64;
        loop {
            let block = read_block(&mut input)?;
            if block.is_empty() {
                break;
            }
            crc.update(&block);
            total += block.len() as u64;
            // At most `threads` blocks queued and a few in flight: memory stays bounded.
            while sent - next_out > 2 * threads as u64 {
                let (n, piece) = done_rx
                    .recv()
                    .map_err(|_| io::Error::other("a compressing thread stopped"))?;
                pending.insert(n, piece?);
                write_ready(&mut pending, &mut next_out, &mut out)?;
            }
            work_tx
                .send((sent, block))
                .map_err(|_| io::Error::other("the compressing threads stopped"))?;
            sent += 1;
        }
        drop(work_tx);
        while next_out < sent {
            let (n, piece) = done_rx
                .recv()
                .map_err(|_| io::Error::other("a compressing thread stopped"))?;
            pending.insert(n, piece?);
            write_ready(&mut pending, &mut next_out, &mut out)?;
        }
        Ok(())
    })?;
    out.write_all(&deflate(level, &[], true)?)?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    out.write_all(&(total as u32).to_le_bytes())?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn any_gunzip_reads_it_back_whatever_the_threads_and_sizes() {
        // Text, runs and noise (mixed within each block), across block boundaries.
        let mut data = Vec::new();
        let mut x: u32 = 7;
        for i in 0..(3 * BLOCK + 12345) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push(match i % 3000 {
                0..=999 => b"layer "[i % 6],
                1000..=1999 => 0,
                _ => (x >> 16) as u8,
            });
        }
        for (len, threads) in [(0, 1), (1, 2), (BLOCK, 2), (BLOCK + 1, 3), (data.len(), 4)] {
            let mut out = Vec::new();
            let n = gzip(&data[..len], &mut out, 6, threads).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(
                gunzip(&out),
                &data[..len],
                "{len} bytes on {threads} threads"
            );
            // The same output every time: pushed digests are stable.
            let mut again = Vec::new();
            gzip(&data[..len], &mut again, 6, threads).unwrap();
            assert_eq!(out, again);
        }
        let mut out = Vec::new();
        gzip(&data[..], &mut out, 6, 2).unwrap();
        assert!(
            out.len() < data.len() * 3 / 4,
            "{} of {}",
            out.len(),
            data.len()
        );
        // Also the system's gunzip, when there is one.
        if let Ok(mut child) = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            let mut stdin = child.stdin.take().unwrap();
            let feed = std::thread::spawn(move || stdin.write_all(&out));
            let got = child.wait_with_output().unwrap();
            feed.join().unwrap().unwrap();
            assert!(got.status.success());
            assert_eq!(got.stdout, data);
        }
    }
}
