//! Links with compact relative relocations (DT_RELR) where the linker and C library have
//! them (binutils 2.38+, glibc 2.36+): the relocation table the loader reads at every exec
//! shrinks from most of a megabyte to a few kilobytes, which every role pays at start (the
//! runtime once per container, the registry and daemon in resident memory).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BERTH_NO_RELR");
    let (host, target) = (std::env::var("HOST"), std::env::var("TARGET"));
    if host != target
        || std::env::var_os("BERTH_NO_RELR").is_some()
        || !std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|o| o == "linux")
    {
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return;
    };
    let src = out.join("relr.c");
    let exe = out.join("relr");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // A program linked with the flag must also run here: a C library without DT_RELR
    // support refuses it at load time.
    let linked = Command::new(cc)
        .args(["-pie", "-fPIE", "-Wl,-z,pack-relative-relocs", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success());
    if linked && Command::new(&exe).status().is_ok_and(|s| s.success()) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
