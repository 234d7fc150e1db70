//! One suite for every snapshotter, on real mounts (as root): layers applied with the layer
//! applier, then a container view mounted over them.

mod common;

use std::path::Path;

use berth_store::layer::apply;
use berth_store::snapshot::{Copy, Overlay, Snapshotter};
use common::Tar;

fn layer(s: &dyn Snapshotter, id: &str, tarball: &[u8]) {
    let dir = s.create_layer(id).unwrap();
    apply(&dir, tarball).unwrap();
}

/// Mounts on drop, so a failing assertion still unmounts.
struct Mounted<'a> {
    s: &'a dyn Snapshotter,
    key: &'a str,
    target: &'a Path,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self.s.unmount(self.key, self.target);
        let _ = self.s.remove(self.key);
    }
}

fn suite(s: &dyn Snapshotter, target: &Path) {
    layer(
        s,
        "base",
        &Tar::default()
            .file("a", b"base a")
            .file("b", b"base b")
            .dir("dir/")
            .file("dir/x", b"base x")
            .file("keep/y", b"y")
            .finish(),
    );
    layer(
        s,
        "top",
        &Tar::default()
            .file("a", b"top a")
            .file(".wh.b", b"")
            .dir("dir/")
            .file("dir/.wh..wh..opq", b"")
            .file("dir/new", b"top new")
            .finish(),
    );
    s.mount("c1", &["base", "top"], target).unwrap();
    let _m = Mounted {
        s,
        key: "c1",
        target,
    };
    assert_eq!(
        std::fs::read_to_string(target.join("a")).unwrap(),
        "top a",
        "upper layers win"
    );
    assert!(
        !target.join("b").exists(),
        "a whiteout hides the lower file"
    );
    assert!(
        !target.join("dir/x").exists(),
        "an opaque dir hides the lower dir's content"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("dir/new")).unwrap(),
        "top new"
    );
    assert_eq!(std::fs::read_to_string(target.join("keep/y")).unwrap(), "y");
    // Writes go to the container, not the layers.
    std::fs::write(target.join("a"), "container").unwrap();
    let base = s.create_layer("base").unwrap();
    assert_eq!(std::fs::read_to_string(base.join("a")).unwrap(), "base a");
    assert!(
        s.mount("bad/key", &["base"], target).is_err(),
        "ids are checked"
    );
}

#[test]
fn overlay_snapshotter() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let s = Overlay::new(&d.path().join("snapshots")).unwrap();
    suite(&s, &d.path().join("rootfs"));
}

#[test]
fn copy_snapshotter() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let s = Copy::new(&d.path().join("snapshots")).unwrap();
    suite(&s, &d.path().join("rootfs"));
}

#[test]
fn image_with_120_layers_mounts_and_shows_the_top_view() {
    require_root!();
    for legacy in [false, true] {
        many_layers(legacy);
    }
}

fn many_layers(legacy: bool) {
    let d = tempfile::tempdir().unwrap();
    // Long layer directory names, as real ones are (64 hex characters): 120 of them would
    // not fit one page of mount data as plain paths.
    let root = d.path().join("a-rather-long-data-root-path/snapshots");
    let s = if legacy {
        Overlay::legacy(&root).unwrap()
    } else {
        Overlay::new(&root).unwrap()
    };
    let ids: Vec<String> = (0..120).map(|i| format!("{i:064x}")).collect();
    for (i, id) in ids.iter().enumerate() {
        layer(
            &s,
            id,
            &Tar::default()
                .file(&format!("layer-{i}"), b"x")
                .file("top", format!("{i}").as_bytes())
                .finish(),
        );
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let target = d.path().join("rootfs");
    s.mount("big", &refs, &target).unwrap();
    let _m = Mounted {
        s: &s,
        key: "big",
        target: &target,
    };
    assert_eq!(
        std::fs::read_to_string(target.join("top")).unwrap(),
        "119",
        "legacy={legacy}"
    );
    for i in 0..120 {
        assert!(
            target.join(format!("layer-{i}")).exists(),
            "layer {i} missing (legacy={legacy})"
        );
    }
}
