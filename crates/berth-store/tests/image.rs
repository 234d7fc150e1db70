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
    let bz = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&archive).unwrap();
        e.finish().unwrap()
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&archive).unwrap();
        e.finish().unwrap()
    };
    // The archive is an OCI layout and a docker-archive at once, as Docker 25 writes it:
    // skopeo reads it both ways.
    let file = _d1.path().join("saved.tar");
    std::fs::write(&file, &archive).unwrap();
    for transport in ["oci-archive", "docker-archive"] {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("{transport}:{}", file.display()))
            .output();
        let Ok(out) = out else {
            eprintln!("skopeo missing: layout not checked");
            break;
        };
        assert!(
            out.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(m["config"]["digest"], img.config.to_string(), "{transport}");
    }
    for (name, bytes) in [
        ("plain", archive.clone()),
        ("gzip", gz),
        ("zstd", zst),
        ("bzip2", bz),
        ("xz", xz),
    ] {
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
    // `docker import` of an xz or bzip2 tarball: stored as the plain tar, same diffID.
    let tarball = busybox_tar();
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&tarball).unwrap();
        e.finish().unwrap()
    };
    let (_d3, s3) = store();
    let plain = s3.import(&tarball[..], &[], None).unwrap();
    let imported = s3.import(&xz[..], &[], None).unwrap();
    assert_eq!(imported.layers[0].diff_id, plain.layers[0].diff_id);
    assert_eq!(imported.layers[0].blob, plain.layers[0].diff_id);
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
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("manifest.json")).unwrap()).unwrap();
    let layer = tmp.path().join(manifest[0]["Layers"][0].as_str().unwrap());
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

#[test]
fn remove_follows_docker_rules() {
    require_root!();
    let (_d, s) = store();
    let img = s
        .import(&busybox_tar()[..], &[], Some(&"busybox".parse().unwrap()))
        .unwrap();
    s.tag("busybox", &"localhost/other:1".parse().unwrap())
        .unwrap();
    // By ID with two tags: refused without force.
    let err = s.remove(img.short_id(), false).unwrap_err().to_string();
    assert!(err.contains("must be forced"), "{err}");
    // By tag: only that tag goes.
    assert_eq!(
        s.remove("busybox", false).unwrap(),
        vec!["Untagged: busybox:latest"]
    );
    assert!(s.resolve(img.short_id()).is_some());
    // The last tag: the image goes too.
    let out = s.remove("localhost/other:1", false).unwrap();
    assert_eq!(
        out,
        vec![
            "Untagged: localhost/other:1".to_string(),
            format!("Deleted: {}", img.config)
        ]
    );
    assert!(s.resolve(img.short_id()).is_none());
    assert!(matches!(
        s.remove("busybox", false),
        Err(ImageError::NotFound(_))
    ));
}

fn du(p: &Path) -> String {
    let out = Command::new("du").args(["-sb"]).arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn gc_gives_the_disk_back() {
    require_root!();
    let (d, s) = store();
    let empty = du(d.path());
    let tar = busybox_tar();
    let first = s
        .import(&tar[..], &[], Some(&"busybox".parse().unwrap()))
        .unwrap();
    let mut archive = Vec::new();
    s.save(&["busybox"], &mut archive).unwrap();
    s.load(&archive[..]).unwrap();
    // The tag moves to a new image: the first one is dangling now (same layer, though).
    let second = s
        .import(
            &tar[..],
            &["CMD [\"sh\"]".into()],
            Some(&"busybox".parse().unwrap()),
        )
        .unwrap();
    assert_eq!(
        first.layers[0].chain_id, second.layers[0].chain_id,
        "one snapshot for both"
    );
    assert_ne!(du(d.path()), empty);
    let (removed, freed) = s.prune(false).unwrap();
    assert_eq!(removed, vec![first.config.clone()]);
    assert!(
        freed > 0 && freed < 10_000,
        "only the first image's config and manifest: {freed}"
    );
    assert!(s.resolve("busybox").is_some());
    s.remove("busybox", false).unwrap();
    let stats = s.gc().unwrap();
    assert!(stats.blobs >= 3 && stats.snapshots == 1, "{stats:?}");
    assert!(stats.bytes_freed > 1_000_000, "{stats:?}");
    assert_eq!(
        du(d.path()),
        empty,
        "the data root is back to its empty size"
    );
    assert!(s.content().verify().unwrap().is_empty());
}

/// What a crash in the middle of an import leaves (a partial ingest, a half-unpacked
/// staging layer, a half-written metadata temp file, a load's scratch directory): fsck
/// reports the store clean, the next import completes, and GC sweeps the debris.
#[test]
fn debris_of_an_interrupted_import_is_harmless() {
    require_root!();
    let (d, s) = store();
    let tar = busybox_tar();
    let img = s
        .import(&tar[..], &[], Some(&"busybox".parse().unwrap()))
        .unwrap();
    drop(s);
    // Debris, as a killed process would leave it.
    {
        let s = ImageStore::open(d.path()).unwrap();
        let mut w = s.content().ingest("import-crashed", None).unwrap();
        w.write_all(&tar[..tar.len() / 3]).unwrap();
    }
    std::fs::create_dir_all(d.path().join("snapshots/unpack-deadbeef/fs/bin")).unwrap();
    std::fs::write(d.path().join("meta/images.tmp123"), b"{\"images\": {").unwrap();
    std::fs::create_dir_all(d.path().join("tmp/load-1-2/half")).unwrap();
    let s = ImageStore::open(d.path()).unwrap();
    assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
    assert!(
        !d.path().join("tmp/load-1-2").exists() && !d.path().join("meta/images.tmp123").exists()
    );
    assert_eq!(s.resolve("busybox").unwrap(), img);
    // A broken reference is reported.
    std::fs::remove_file(s.content().path(&img.config)).unwrap();
    let problems = s.fsck().unwrap();
    assert!(
        problems.iter().any(|p| p.contains("missing")),
        "{problems:?}"
    );
    // Importing again restores what is missing; GC removes the staging debris.
    s.import(&tar[..], &[], Some(&"busybox".parse().unwrap()))
        .unwrap();
    s.gc().unwrap();
    assert!(!d.path().join("snapshots/unpack-deadbeef").exists());
}

#[test]
fn commit_turns_a_containers_changes_into_a_layer() {
    require_root!();
    let (d, s) = store();
    let base = s
        .import(
            &busybox_tar()[..],
            &["CMD [\"sh\"]".into()],
            Some(&"busybox".parse().unwrap()),
        )
        .unwrap();
    let target = d.path().join("c1-rootfs");
    let ids = base.snapshot_ids();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.snapshots().mount("c1", &refs, &target).unwrap();
    std::fs::write(target.join("newfile"), "made in the container").unwrap();
    std::fs::remove_file(target.join("bin/ls")).unwrap();
    std::fs::remove_dir_all(target.join("etc")).unwrap();
    std::fs::create_dir(target.join("etc")).unwrap();
    std::fs::write(target.join("etc/only"), "x").unwrap();
    s.snapshots().unmount("c1", &target).unwrap();
    let new = s
        .commit(
            "c1",
            "busybox",
            &["CMD [\"cat\", \"/newfile\"]".into()],
            "berth commit",
            Some(&"committed".parse().unwrap()),
        )
        .unwrap();
    s.snapshots().remove("c1").unwrap();
    assert_eq!(new.layers.len(), 2);
    assert_eq!(new.layers[0], base.layers[0]);
    let config: serde_json::Value =
        serde_json::from_slice(&s.content().read(&new.config).unwrap()).unwrap();
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["cat", "/newfile"])
    );
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(config["history"].as_array().unwrap().len(), 2);
    // A container of the new image sees exactly the committed changes.
    let target2 = d.path().join("c2-rootfs");
    let ids = new.snapshot_ids();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.snapshots().mount("c2", &refs, &target2).unwrap();
    let seen = (
        std::fs::read_to_string(target2.join("newfile")).ok(),
        target2.join("bin/ls").symlink_metadata().is_ok(),
        target2.join("etc/only").exists(),
        target2.join("etc/passwd").exists(),
        target2.join("bin/sh").symlink_metadata().is_ok(),
    );
    s.snapshots().unmount("c2", &target2).unwrap();
    s.snapshots().remove("c2").unwrap();
    assert_eq!(
        seen,
        (
            Some("made in the container".into()),
            false,
            true,
            false,
            true
        )
    );
    assert!(s.fsck().unwrap().is_empty());
}

/// `docker load` of an OCI archive (here made by skopeo from our own store): same image.
#[test]
fn loads_an_oci_archive() {
    require_root!();
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skopeo not installed: skipped");
        return;
    }
    let (d, s) = store();
    let tag: Reference = "busybox".parse().unwrap();
    let img = s.import(&busybox_tar()[..], &[], Some(&tag)).unwrap();
    let archive = d.path().join("oci.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!(
            "oci:{}:docker.io/library/busybox:latest",
            d.path().join("content").display()
        ))
        .arg(format!(
            "oci-archive:{}:docker.io/library/busybox:latest",
            archive.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_d2, other) = store();
    let loaded = other.load(std::fs::File::open(&archive).unwrap()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].0.config, img.config);
    assert_eq!(
        loaded[0].1,
        vec!["docker.io/library/busybox:latest".to_string()]
    );
    assert!(other.fsck().unwrap().is_empty());
}

#[test]
fn a_pushed_layer_is_compressed_once_and_kept_with_its_image() {
    require_root!();
    let (_d, s) = store();
    let tag: Reference = "busybox".parse().unwrap();
    let img = s.import(&busybox_tar()[..], &[], Some(&tag)).unwrap();
    let l = &img.layers[0];
    let (gz, size) = s.compressed_layer(l).unwrap();
    let data = s.content().read(&gz).unwrap();
    assert_eq!(data.len() as u64, size);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&data[..]), &mut tar).unwrap();
    assert_eq!(berth_types::Digest::sha256(&tar), l.diff_id);
    assert!(size < l.size * 3 / 4, "{size} of {}", l.size);
    // Garbage collection keeps it while an image has the layer, and asked again the store
    // does not compress again: it needs no uncompressed blob for that.
    s.gc().unwrap();
    assert!(s.content().exists(&gz));
    let blob = s.content().path(&l.blob);
    let aside = blob.with_extension("aside");
    std::fs::rename(&blob, &aside).unwrap();
    assert_eq!(s.compressed_layer(l).unwrap(), (gz.clone(), size));
    std::fs::rename(&aside, &blob).unwrap();
    s.remove("busybox", false).unwrap();
    s.gc().unwrap();
    assert!(!s.content().exists(&gz));
}
