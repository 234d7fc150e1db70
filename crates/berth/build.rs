//! Two link-time choices for the `berth` binary:
//!
//! - compact relative relocations (DT_RELR) where the linker and C library have them
//!   (binutils 2.38+, glibc 2.36+): the relocation table the loader reads at every exec
//!   shrinks from most of a megabyte to a few kilobytes, which every role pays at start (the
//!   runtime once per container, the registry and daemon in resident memory);
//! - the functions the daemon and the registry run placed together at the start of .text,
//!   in the order of `text-order.txt` (made by scripts/order-text.sh), when rustc's own lld
//!   is there to take it: the kernel maps 64 KiB of text around each page fault, so
//!   scattered hot code makes most of the binary resident; packed, an idle server's text is
//!   a fraction of that.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BERTH_NO_RELR");
    println!("cargo:rerun-if-env-changed=BERTH_TEXT_ORDER");
    println!("cargo:rerun-if-env-changed=BERTH_NO_TEXT_ORDER");
    let (host, target) = (std::env::var("HOST"), std::env::var("TARGET"));
    if host != target || !std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|o| o == "linux") {
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    if std::env::var_os("BERTH_NO_RELR").is_none() {
        relr(&out);
    }
    if std::env::var_os("BERTH_NO_TEXT_ORDER").is_none() {
        text_order();
    }
}

fn relr(out: &Path) {
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

fn text_order() {
    let order = match std::env::var_os("BERTH_TEXT_ORDER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("text-order.txt"),
    };
    println!("cargo:rerun-if-changed={}", order.display());
    if !order.is_file() {
        return;
    }
    // rustc's lld (what it links x86_64 Linux with since 1.90), found where rustc looks for
    // it; GNU ld has no ordering file, so without lld the order is simply not applied.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Some(sysroot) = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
    else {
        return;
    };
    let host = std::env::var("HOST").unwrap_or_default();
    let gcc_ld = Path::new(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/gcc-ld"));
    if !gcc_ld.join("ld.lld").exists() {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-B{}", gcc_ld.display());
    println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Entries the code no longer has are expected (the file is regenerated now and then).
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
