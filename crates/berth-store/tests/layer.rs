//! The layer applier on real files, as root (ownership and device nodes need it).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

mod common;

use berth_store::layer::{apply, detect, Compression};
use berth_types::Digest;
use common::Tar;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn applies_every_kind_of_entry_and_computes_the_diff_id() {
    require_root!();
    let mut t = Tar::default();
    t.dir("etc/")
        .file("etc/hostname", b"layer\n")
        .entry(
            "bin/tool",
            tar::EntryType::Regular,
            b"#!/bin/sh\n",
            "",
            0o4755,
        )
        .symlink("bin/link", "tool")
        .hardlink("bin/hard", "bin/tool")
        .entry("dev/fifo", tar::EntryType::Fifo, b"", "", 0o600)
        .dir("empty/");
    let mut tarball = t.finish();
    // A character device needs the device numbers in the header's ustar fields.
    {
        let mut h = tar::Header::new_ustar();
        h.set_path("dev/null2").unwrap();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_mode(0o666);
        h.set_size(0);
        h.set_cksum();
        let end = tarball.len() - 1024;
        tarball.splice(end..end, h.as_bytes().iter().copied());
    }
    let expected = Digest::sha256(&tarball);
    for (kind, input) in [
        (Compression::None, tarball.clone()),
        (Compression::Gzip, gzip(&tarball)),
        (
            Compression::Zstd,
            zstd::encode_all(&tarball[..], 3).unwrap(),
        ),
    ] {
        assert_eq!(detect(&input), kind);
        let root = tempfile::tempdir().unwrap();
        let applied = apply(root.path(), &input[..]).unwrap();
        assert_eq!(applied.diff_id, expected, "{kind:?}");
        assert_eq!(applied.size, tarball.len() as u64);
        let r = root.path();
        assert_eq!(std::fs::read(r.join("etc/hostname")).unwrap(), b"layer\n");
        let md = std::fs::metadata(r.join("bin/tool")).unwrap();
        assert_eq!(
            md.permissions().mode() & 0o7777,
            0o4755,
            "set-uid survives the chown"
        );
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
        assert_eq!(md.mtime(), 1_700_000_000);
        assert_eq!(md.nlink(), 2, "hardlink");
        assert_eq!(
            std::fs::read_link(r.join("bin/link")).unwrap(),
            Path::new("tool")
        );
        assert!(std::fs::metadata(r.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let dev = std::fs::metadata(r.join("dev/null2")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(
            std::fs::metadata(r.join("etc")).unwrap().mtime(),
            1_700_000_000,
            "dir times set last"
        );
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    require_root!();
    let tarball = Tar::default()
        .file(".wh.gone", b"")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/kept", b"x")
        .finish();
    let root = tempfile::tempdir().unwrap();
    apply(root.path(), &tarball[..]).unwrap();
    let w = std::fs::symlink_metadata(root.path().join("gone")).unwrap();
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert!(!root.path().join(".wh.gone").exists());
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(
        root.path().join("opaque").as_path(),
        "trusted.overlay.opaque",
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..n], b"y");
    assert!(root.path().join("opaque/kept").exists());
}

#[test]
fn hostile_paths_stay_inside_the_layer_root() {
    require_root!();
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let host_dir = outer.path().join("host");
    std::fs::create_dir(&host_dir).unwrap();
    let tarball = Tar::default()
        // `..` climbs no higher than the root.
        .file("../escape-dotdot", b"x")
        .file("a/../../../escape-deep", b"x")
        // Absolute names are taken as relative to the root.
        .file(&format!("{}/abs", host_dir.display()), b"x")
        // A symlink to a host directory, then a file "through" it.
        .symlink("hostlink", host_dir.to_str().unwrap())
        .file("hostlink/through-abs", b"x")
        .symlink("up", "../../../../..")
        .file(&format!("up{}/through-rel", host_dir.display()), b"x")
        .finish();
    let applied = apply(&root, &tarball[..]).unwrap();
    assert_eq!(applied.entries, 7);
    // Nothing appeared outside the root...
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(outside.len(), 2, "{outside:?}");
    assert_eq!(
        std::fs::read_dir(&host_dir).unwrap().count(),
        0,
        "the host directory was written to"
    );
    // ...and everything landed inside it.
    assert!(root.join("escape-dotdot").exists());
    assert!(root.join("escape-deep").exists());
    let inner_host = root.join(host_dir.strip_prefix("/").unwrap());
    assert!(inner_host.join("abs").exists());
    assert!(inner_host.join("through-abs").exists());
    assert!(inner_host.join("through-rel").exists());
}

#[test]
fn hardlink_to_a_host_file_is_refused() {
    require_root!();
    let outer = tempfile::tempdir().unwrap();
    let secret = outer.path().join("secret");
    std::fs::write(&secret, "host").unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let tarball = Tar::default()
        .hardlink("stolen", secret.to_str().unwrap())
        .finish();
    let err = apply(&root, &tarball[..]).unwrap_err().to_string();
    assert!(err.contains("not in the layer"), "{err}");
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    assert!(!root.join("stolen").exists());
}

#[test]
fn truncated_and_oversized_streams_are_errors() {
    require_root!();
    // A header that promises 1 TiB, followed by a few bytes.
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..4].copy_from_slice(b"huge");
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut tarball = h.as_bytes().to_vec();
    tarball.extend_from_slice(&[b'a'; 4096]);
    let root = tempfile::tempdir().unwrap();
    let err = apply(root.path(), &tarball[..]).unwrap_err().to_string();
    assert!(err.contains("huge"), "{err}");
    // A gzip stream cut in half.
    let good = Tar::default().file("f", &vec![7u8; 100_000]).finish();
    let gz = gzip(&good);
    let root = tempfile::tempdir().unwrap();
    assert!(apply(root.path(), &gz[..gz.len() / 2]).is_err());
    // Garbage that is not a tar at all.
    let root = tempfile::tempdir().unwrap();
    assert!(apply(
        root.path(),
        &b"this is not a tar archive, just text that goes on"[..]
    )
    .is_err());
}
