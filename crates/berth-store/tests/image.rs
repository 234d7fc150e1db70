//! Images end to end: import, tags, index.json read by skopeo, save/load round trips.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_store::image::{ImageError, ImageStore};
use berth_types::Reference;

fn busybox_tar() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let rootfs = d.path().join("rootfs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkrootfs.sh");
    assert!(
        Command::new(script)
            .arg(&rootfs)
            .status()
            .unwrap()
            .success(),
        "mkrootfs (busybox-static)"
    );
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let d = tempfile::tempdir().unwrap();
    let s = ImageStore::open(d.path()).unwrap();
    (d, s)
}

#[test]
fn import_tags_and_unpacks_and_skopeo_reads_the_store() {
    require_root!();
    let (d, s) = store();
    let tag: Reference = "busybox".parse().unwrap();
    let img = s
        .import(
            &busybox_tar()[..],
            &["CMD [\"sh\"]".into(), "ENV GREETING=hi".into()],
            Some(&tag),
        )
        .unwrap();
    assert_eq!(s.resolve("busybox").unwrap(), img);
    assert_eq!(s.resolve("docker.io/library/busybox:latest").unwrap(), img);
    assert_eq!(s.resolve(img.short_id()).unwrap(), img);
    let config: serde_json::Value =
        serde_json::from_slice(&s.content().read(&img.config).unwrap()).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert!(config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "GREETING=hi"));
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        img.layers[0].diff_id.to_string()
    );
    let layer_dir = d
        .path()
        .join("snapshots")
        .join(img.layers[0].chain_id.hex())
        .join("fs");
    assert!(layer_dir.join("bin/busybox").is_file());
    assert!(s.content().verify().unwrap().is_empty());
    // An independent OCI tool reads the store as an image layout.
    if Command::new("skopeo").arg("--version").output().is_ok() {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg(format!(
                "oci:{}:docker.io/library/busybox:latest",
                d.path().join("content").display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], img.manifest.to_string());
        assert_eq!(v["Layers"][0], img.layers[0].blob.to_string());
    } else {
        eprintln!("skopeo not installed: OCI layout check skipped");
    }
    // Another tag for the same image.
    s.tag(
        "busybox",
        &"127.0.0.1:5000/mirror/busybox:1".parse().unwrap(),
    )
    .unwrap();
    let tags = &s.list()[0].1;
    assert_eq!(tags.len(), 2, "{tags:?}");
}

#[test]
fn save_and_load_round_trip_with_identical_digests() {
    require_root!();
    let (_d1, s1) = store();
    let img = s1
        .import(
            &busybox_tar()[..],
            &["CMD [\"sh\"]".into()],
            Some(&"busybox".parse().unwrap()),
        )
        .unwrap();
    let mut archive = Vec::new();
    s1.save(&["busybox"], &mut archive).unwrap();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&archive).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&archive[..], 1).unwrap();
    for (name, bytes) in [("plain", archive.clone()), ("gzip", gz), ("zstd", zst)] {
        let (_d2, s2) = store();
        let loaded = s2.load(&bytes[..]).unwrap();
        assert_eq!(loaded.len(), 1, "{name}");
        let (got, tags) = &loaded[0];
        assert_eq!(got.config, img.config, "{name}: same image ID");
        assert_eq!(got.manifest, img.manifest, "{name}: same manifest digest");
        assert_eq!(
            got.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
            img.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
        );
        assert_eq!(tags, &vec!["docker.io/library/busybox:latest".to_string()]);
        assert_eq!(s2.resolve("busybox").unwrap(), *got);
    }
}

#[test]
fn loads_an_archive_made_elsewhere() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let rootfs = d.path().join("rootfs");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
    assert!(Command::new(scripts.join("mkrootfs.sh"))
        .arg(&rootfs)
        .status()
        .unwrap()
        .success());
    let archive: PathBuf = d.path().join("img.tar");
    assert!(Command::new(scripts.join("mkimage-archive.sh"))
        .arg(&rootfs)
        .arg(&archive)
        .arg("example.com/tools/busybox:1.0")
        .status()
        .unwrap()
        .success());
    let (_s, s) = store();
    let loaded = s.load(std::fs::File::open(&archive).unwrap()).unwrap();
    assert_eq!(
        loaded[0].1,
        vec!["example.com/tools/busybox:1.0".to_string()]
    );
    assert!(s.resolve("example.com/tools/busybox:1.0").is_some());
}

#[test]
fn a_layer_that_does_not_match_its_config_is_refused() {
    require_root!();
    let (_d1, s1) = store();
    s1.import(&busybox_tar()[..], &[], Some(&"busybox".parse().unwrap()))
        .unwrap();
    let mut archive = Vec::new();
    s1.save(&["busybox"], &mut archive).unwrap();
    // Swap the layer for another tarball under the same name.
    let tmp = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-C")
        .arg(tmp.path())
        .arg("-xf")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map(|mut c| {
            c.stdin.take().unwrap().write_all(&archive).unwrap();
            c.wait().unwrap().success()
        })
        .unwrap());
    let layer = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path()
        .join("layer.tar");
    let evil = common::Tar::default()
        .file("evil", b"not the layer the config promised")
        .finish();
    std::fs::write(&layer, evil).unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(tmp.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let (_d2, s2) = store();
    let err = s2.load(&out.stdout[..]).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert!(s2.list().is_empty());
    assert!(s2.resolve("busybox").is_none());
}
