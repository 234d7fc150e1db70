//! `berth registry serve` on loopback, driven by skopeo (an independent client) and by
//! raw HTTP for the error cases.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{capture, Registry};

/// Raw requests to the registry, for the cases a well-behaved client never makes.
trait Http {
    fn http(&self, method: &str, path: &str, body: &[u8], ctype: &str) -> (u16, String);
    fn http_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        ctype: &str,
        extra: &str,
    ) -> (u16, String);
}

impl Http for Registry {
    /// One request: (status, headers and body as text).
    fn http(&self, method: &str, path: &str, body: &[u8], ctype: &str) -> (u16, String) {
        self.http_with(method, path, body, ctype, "")
    }

    /// A request with extra header lines (each ending in CRLF).
    fn http_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        ctype: &str,
        extra: &str,
    ) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: r\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, text)
    }
}

fn sha256(b: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

fn skopeo() -> bool {
    Command::new("skopeo").arg("--version").output().is_ok()
}

#[test]
fn skopeo_pushes_and_pulls_through_berth_registry() {
    if !skopeo() {
        eprintln!("skipped: no skopeo (scripts/test.sh installs it)");
        return;
    }
    let r = Registry::start();
    let archive = r.dir.path().join("bb.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage-archive.sh");
    assert!(Command::new(script)
        .arg(common::template_rootfs())
        .arg(&archive)
        .arg("busybox:latest")
        .status()
        .unwrap()
        .success());
    let dest = format!("docker://127.0.0.1:{}/test/busybox:1", r.port);
    let out = capture(
        Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(&dest),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another repository gets the blobs by cross-repository mount.
    let other = format!("docker://127.0.0.1:{}/other/bb:2", r.port);
    let out = capture(
        Command::new("skopeo")
            .args([
                "copy",
                "--insecure-policy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
            ])
            .arg(&dest)
            .arg(&other),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = |what: &str| {
        let out = capture(
            Command::new("skopeo")
                .args(["inspect", "--tls-verify=false"])
                .arg(what),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let a = inspect(&dest);
    let b = inspect(&other);
    assert_eq!(a["Digest"], b["Digest"]);
    assert_eq!(a["Layers"], b["Layers"]);
    // Pulled back into an OCI layout: the same manifest digest.
    let back = r.dir.path().join("back");
    let out = capture(
        Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
            .arg(&dest)
            .arg(format!("oci:{}:1", back.display())),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (skopeo writes an OCI manifest there: compare the layers it names.)
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let index = read(&back.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read(&back.join("blobs/sha256").join(&digest[7..]));
    let layers: Vec<&serde_json::Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(serde_json::json!(layers), a["Layers"]);
    let (_, tags) = r.http("GET", "/v2/test/busybox/tags/list", b"", "text/plain");
    assert!(
        tags.ends_with(r#"{"name":"test/busybox","tags":["1"]}"#),
        "{tags}"
    );
    let (_, cat) = r.http("GET", "/v2/_catalog", b"", "text/plain");
    assert!(
        cat.ends_with(r#"{"repositories":["other/bb","test/busybox"]}"#),
        "{cat}"
    );
}

#[test]
fn uploads_and_manifests_are_checked() {
    let r = Registry::start();
    let (status, text) = r.http("GET", "/v2/", b"", "text/plain");
    assert_eq!(status, 200);
    assert!(text
        .to_lowercase()
        .contains("docker-distribution-api-version: registry/2.0"));
    // A monolithic upload with the wrong digest is refused and leaves no blob.
    let data = b"hello blob";
    let wrong = sha256(b"something else");
    let (status, text) = r.http(
        "POST",
        &format!("/v2/t/x/blobs/uploads/?digest={wrong}"),
        data,
        "application/octet-stream",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("DIGEST_INVALID"), "{text}");
    let (status, text) = r.http("HEAD", &format!("/v2/t/x/blobs/{wrong}"), b"", "text/plain");
    assert_eq!(status, 404, "{text}");
    // Chunked: POST, PATCH, PATCH, PUT with the digest.
    let (status, text) = r.http(
        "POST",
        "/v2/t/x/blobs/uploads/",
        b"",
        "application/octet-stream",
    );
    assert_eq!(status, 202, "{text}");
    let loc = text
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .starts_with("location:")
                .then(|| l[9..].trim().to_string())
        })
        .unwrap();
    assert_eq!(
        r.http("PATCH", &loc, b"hello ", "application/octet-stream")
            .0,
        202
    );
    // Out of order: 416 with the range that is there.
    let (status, text) = r.http_with(
        "PATCH",
        &loc,
        b"blob",
        "application/octet-stream",
        "Content-Range: 0-3\r\n",
    );
    assert_eq!(status, 416, "{text}");
    assert!(text.to_lowercase().contains("range: 0-5"), "{text}");
    let (status, text) = r.http("PATCH", &loc, b"blob", "application/octet-stream");
    assert_eq!(status, 202);
    assert!(text.to_lowercase().contains("range: 0-9"), "{text}");
    let good = sha256(data);
    let (status, text) = r.http(
        "PUT",
        &format!("{loc}?digest={good}"),
        b"",
        "application/octet-stream",
    );
    assert_eq!(status, 201, "{text}");
    let (status, text) = r.http("GET", &format!("/v2/t/x/blobs/{good}"), b"", "text/plain");
    assert_eq!(status, 200);
    assert!(text.ends_with("hello blob"), "{text}");
    // A part of it, as a resuming client asks.
    let (status, text) = r.http_with(
        "GET",
        &format!("/v2/t/x/blobs/{good}"),
        b"",
        "text/plain",
        "Range: bytes=6-9\r\n",
    );
    assert_eq!(status, 206, "{text}");
    assert!(text.ends_with("\r\n\r\nblob"), "{text}");
    // Tags, a page at a time.
    let manifest_ok = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{good}","size":10}},"layers":[]}}"#
    );
    for t in ["v1", "v2", "v3"] {
        let (status, text) = r.http(
            "PUT",
            &format!("/v2/t/x/manifests/{t}"),
            manifest_ok.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        assert_eq!(status, 201, "{text}");
    }
    let (_, text) = r.http("GET", "/v2/t/x/tags/list?n=2", b"", "text/plain");
    assert!(
        text.ends_with(r#"{"name":"t/x","tags":["v1","v2"]}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"</v2/t/x/tags/list?n=2&last=v2>; rel="next""#),
        "{text}"
    );
    let (_, text) = r.http("GET", "/v2/t/x/tags/list?n=2&last=v2", b"", "text/plain");
    assert!(text.ends_with(r#"{"name":"t/x","tags":["v3"]}"#), "{text}");
    // Referrers: a signature-like artifact whose subject is v1's manifest.
    let subject = sha256(manifest_ok.as_bytes());
    let artifact = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{good}","size":10}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":{}}}}}"#,
        manifest_ok.len()
    );
    let digest = sha256(artifact.as_bytes());
    let (status, text) = r.http(
        "PUT",
        &format!("/v2/t/x/manifests/{digest}"),
        artifact.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(status, 201, "{text}");
    assert!(
        text.to_lowercase()
            .contains(&format!("oci-subject: {subject}")),
        "{text}"
    );
    let (status, text) = r.http(
        "GET",
        &format!("/v2/t/x/referrers/{subject}"),
        b"",
        "text/plain",
    );
    assert_eq!(status, 200);
    assert!(
        text.contains(&digest) && text.contains("application/vnd.example.sig"),
        "{text}"
    );
    let (_, text) = r.http(
        "GET",
        &format!("/v2/t/x/referrers/{subject}?artifactType=application/other"),
        b"",
        "text/plain",
    );
    assert!(
        text.to_lowercase()
            .contains("oci-filters-applied: artifacttype"),
        "{text}"
    );
    assert!(text.contains(r#""manifests":[]"#), "{text}");
    // Search, in Docker Hub's shape.
    let (_, text) = r.http("GET", "/v1/search?q=t/&n=10", b"", "text/plain");
    assert!(
        text.contains(r#""num_results":1"#) && text.contains(r#""name":"t/x""#),
        "{text}"
    );
    // Not visible from another repository until mounted there.
    assert_eq!(
        r.http("HEAD", &format!("/v2/t/y/blobs/{good}"), b"", "text/plain")
            .0,
        404
    );
    // A manifest naming a blob the repository lacks is refused.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{good}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{wrong}","size":14}}]}}"#
    );
    let (status, text) = r.http(
        "PUT",
        "/v2/t/x/manifests/bad",
        manifest.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("MANIFEST_BLOB_UNKNOWN"), "{text}");
    let (status, text) = r.http("GET", "/v2/t/x/manifests/bad", b"", "text/plain");
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
    let (status, _) = r.http("GET", "/v2/Bad/Name/tags/list", b"", "text/plain");
    assert_eq!(status, 400);
}

/// Blobs above 4 MiB go out by blocking sendfile on a thread of their own, falling back to
/// non-blocking sends when the client stalls: the bytes are the same either way, in full
/// and in ranges, for a reader that drains at once and for one that stops for longer than
/// a blocking send may wait (200 ms).
#[test]
fn large_blobs_arrive_whole_fast_or_slow() {
    let r = Registry::start();
    let data: Vec<u8> = (0..9u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let d = push_blob(&r, "big/blob", &data);
    let get = |range: Option<(usize, usize)>, stall: bool| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
        let extra = range.map_or(String::new(), |(a, b)| format!("Range: bytes={a}-{b}\r\n"));
        write!(
            s,
            "GET /v2/big/blob/blobs/{d} HTTP/1.1\r\nHost: r\r\n{extra}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut stalled = !stall;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if !stalled && out.len() > 1 << 20 {
                // Long enough for the server's blocking send to give up waiting.
                std::thread::sleep(std::time::Duration::from_millis(700));
                stalled = true;
            }
        }
        let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        out.split_off(at)
    };
    for stall in [false, true] {
        let body = get(None, stall);
        assert_eq!(body.len(), data.len(), "stall {stall}");
        assert!(body == data, "stall {stall}: the bytes differ");
        let (a, b) = (1_234_567, 8_765_432);
        assert!(
            get(Some((a, b)), stall) == data[a..=b],
            "stall {stall}: range differs"
        );
    }
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Pushes a blob unless the repository has it: POST, PATCH, PUT.
fn push_blob(r: &Registry, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    if r.http("HEAD", &format!("/v2/{repo}/blobs/{d}"), b"", "x").0 == 200 {
        return d;
    }
    let (status, text) = r.http("POST", &format!("/v2/{repo}/blobs/uploads/"), b"", "x");
    assert_eq!(status, 202, "{text}");
    let loc = header(&text, "location").unwrap().to_string();
    let (status, text) = r.http("PATCH", &loc, data, "application/octet-stream");
    assert_eq!(status, 202, "{text}");
    let loc = header(&text, "location").unwrap().to_string();
    let (status, text) = r.http("PUT", &format!("{loc}?digest={d}"), b"", "x");
    assert_eq!(status, 201, "{text}");
    d
}

fn oci_manifest(config: &str, config_len: usize, layers: &[(&str, usize)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

fn registry_cmd(args: &[&str], root: &Path) -> (i32, String) {
    let out = capture(
        Command::new(common::berth())
            .arg("registry")
            .args(args)
            .arg("--root")
            .arg(root),
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// 50 clients push images sharing layers into overlapping repositories at once; every
/// image reads back whole, and `verify` finds the store consistent.
#[test]
fn fifty_concurrent_pushes_leave_a_consistent_store() {
    let mut r = Registry::start();
    let base = vec![b'b'; 300_000];
    std::thread::scope(|s| {
        for i in 0..50usize {
            let (r, base) = (&r, &base);
            s.spawn(move || {
                let repo = format!("proj/app{}", i % 10);
                let mid = format!("middle layer {}", i % 5).repeat(1000);
                let own = format!("layer of image {i}");
                let config = format!(r#"{{"image":{i}}}"#);
                let layers = [
                    (push_blob(r, &repo, base), base.len()),
                    (push_blob(r, &repo, mid.as_bytes()), mid.len()),
                    (push_blob(r, &repo, own.as_bytes()), own.len()),
                ];
                let c = push_blob(r, &repo, config.as_bytes());
                let refs: Vec<(&str, usize)> =
                    layers.iter().map(|(d, n)| (d.as_str(), *n)).collect();
                let m = oci_manifest(&c, config.len(), &refs);
                let (status, text) = r.http(
                    "PUT",
                    &format!("/v2/{repo}/manifests/v{i}"),
                    m.as_bytes(),
                    "application/vnd.oci.image.manifest.v1+json",
                );
                assert_eq!(status, 201, "{text}");
            });
        }
    });
    for i in 0..50usize {
        let repo = format!("proj/app{}", i % 10);
        let (status, text) = r.http("GET", &format!("/v2/{repo}/manifests/v{i}"), b"", "x");
        assert_eq!(status, 200, "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let m: serde_json::Value = serde_json::from_str(body).unwrap();
        for l in m["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            let (status, text) = r.http("GET", &format!("/v2/{repo}/blobs/{d}"), b"", "x");
            assert_eq!(status, 200);
            assert_eq!(
                sha256(&text.as_bytes()[text.find("\r\n\r\n").unwrap() + 4..]),
                d
            );
        }
    }
    let root = r.dir.path().join("root");
    // One copy of each blob: 1 base + 5 middles + 50 own layers + 50 configs + 50 manifests.
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        156
    );
    // gc and verify refuse to touch a store being served.
    let (code, out) = registry_cmd(&["verify"], &root);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("stop it first"), "{out}");
    r.terminate();
    assert!(r.wait_exit(20).is_some_and(|s| s.success()));
    let (code, out) = registry_cmd(&["verify"], &root);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 10 repositories"), "{out}");
}

/// SIGTERM while an upload streams: the registry stops taking connections, lets that
/// request finish, and exits; started again on the same store, the upload completes.
/// Then gc: an untagged image goes, a tagged one stays, verify is clean.
#[test]
fn sigterm_lets_uploads_finish_and_gc_frees_what_nothing_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut r = Registry::start_on(tempfile::tempdir().unwrap(), None, "127.0.0.1", &root, &[]);
    let (status, text) = r.http("POST", "/v2/g/app/blobs/uploads/", b"", "x");
    assert_eq!(status, 202);
    let loc = header(&text, "location").unwrap().to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nfirst \r\n"
    )
    .unwrap();
    s.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    r.terminate();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // No new connections are taken...
    assert!(std::net::TcpStream::connect(("127.0.0.1", r.port)).is_err());
    // ...but the request in flight finishes.
    write!(s, "4\r\nhalf\r\n0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    assert_eq!(header(&out, "range"), Some("0-9"));
    assert!(r.wait_exit(20).is_some_and(|s| s.success()));
    let mut r = Registry::start_on(tempfile::tempdir().unwrap(), None, "127.0.0.1", &root, &[]);
    let (status, text) = r.http("PATCH", &loc, b", then more", "x");
    assert_eq!(status, 202, "{text}");
    let d = sha256(b"first half, then more");
    let (status, text) = r.http("PUT", &format!("{loc}?digest={d}"), b"", "x");
    assert_eq!(status, 201, "{text}");

    // Two images: v1 untagged by a second push to the same tag.
    let config = push_blob(&r, "g/app", b"{}");
    let old = push_blob(&r, "g/app", b"old layer");
    let m1 = oci_manifest(&config, 2, &[(&d, 21), (&old, 9)]);
    let m2 = oci_manifest(&config, 2, &[(&d, 21)]);
    for m in [&m1, &m2] {
        let (status, text) = r.http(
            "PUT",
            "/v2/g/app/manifests/latest",
            m.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        assert_eq!(status, 201, "{text}");
    }
    let stray = push_blob(&r, "g/app", b"pushed, never named");
    r.terminate();
    assert!(r.wait_exit(20).is_some());
    let blobs = || {
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 6);
    let (code, out) = registry_cmd(&["gc", "--dry-run"], &root);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("would remove blob {stray}")), "{out}");
    assert_eq!(blobs(), 6, "a dry run removes nothing");
    let (code, out) = registry_cmd(&["gc", "--delete-untagged"], &root);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("removed 1 manifests, 3 blobs"), "{out}");
    assert_eq!(blobs(), 3, "{out}");
    let (code, out) = registry_cmd(&["verify"], &root);
    assert_eq!(code, 0, "{out}");
    // Damage is found.
    std::fs::write(root.join("blobs/sha256").join(&config[7..]), "tampered").unwrap();
    let (code, out) = registry_cmd(&["verify"], &root);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("blob {config}: its content is")),
        "{out}"
    );
}

/// Over real sockets: the access log's JSON lines, /metrics, the size limit, a bad name,
/// read-only mode, a config file with an unknown key.
#[test]
fn logs_metrics_limits_and_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let r = Registry::start_with(
        None,
        "127.0.0.1",
        &[
            "--access-log",
            log.to_str().unwrap(),
            "--max-blob-size",
            "1KiB",
        ],
    );
    let big = vec![b'x'; 2000];
    let (status, text) = r.http(
        "POST",
        &format!("/v2/l/x/blobs/uploads/?digest={}", sha256(&big)),
        &big,
        "x",
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("SIZE_INVALID"), "{text}");
    let (status, text) = r.http("GET", "/v2/l/../x/tags/list", b"", "x");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("NAME_INVALID"));
    let (_, text) = r.http("GET", "/metrics", b"", "x");
    assert!(
        text.contains(
            r#"berth_registry_requests_total{route="upload",method="POST",status="413"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("berth_registry_request_duration_seconds_bucket{le=\"+Inf\"} 2"),
        "{text}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["status"], 413);
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["route"], "upload");
    assert!(lines[0]["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(lines[0]["ms"].is_number());

    let ro = Registry::start_with(None, "127.0.0.1", &["--readonly"]);
    let (status, text) = ro.http("POST", "/v2/l/x/blobs/uploads/", b"", "x");
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("UNSUPPORTED"));

    let cfg = dir.path().join("bad.yml");
    std::fs::write(&cfg, "addr: 127.0.0.1:0\nstorag: memory\n").unwrap();
    let out = capture(
        Command::new(common::berth())
            .args(["registry", "serve", "--config"])
            .arg(&cfg),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `storag`"), "{err}");
}

/// The real docker CLI, through a Berth daemon, against Berth's registry behind TLS with
/// token auth: login (wrong, then right), push, pull back and run, an account that may
/// only pull, anonymous pulls of a public repository, and search showing only what each
/// caller may pull.
#[test]
fn docker_cli_with_token_auth_and_tls() {
    use common::daemon::{busybox_archive, docker_cli, Daemon};
    let have = |p: &str| Command::new(p).arg("--version").output().is_ok();
    if !common::is_root() || !docker_cli() || !have("curl") || !have("openssl") {
        eprintln!("skipped: needs root, the docker CLI, curl, htpasswd and openssl");
        return;
    }
    let (d, conf) = Daemon::start_with_config();
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    // The registry on 192.0.2.2 (documentation range) on the daemon's namespace's lo.
    let ip = "192.0.2.2";
    assert!(d
        .host_cmd("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .status()
        .unwrap()
        .success());
    let certs = d.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    common::make_certs(&certs, ip);
    let mut htpasswd = Vec::new();
    for (u, p) in [("alice", "s3cret"), ("bob", "hunter2")] {
        htpasswd.extend(capture(Command::new("htpasswd").args(["-Bbn", u, p])).stdout);
    }
    std::fs::write(certs.join("htpasswd"), htpasswd).unwrap();
    let cfg = certs.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "tls: {{cert: {c}/server-cert.pem, key: {c}/server-key.pem}}\n\
             auth:\n  htpasswd: {c}/htpasswd\n  token: {{service: test-registry}}\n  access:\n\
             \x20   - {{account: alice, name: '*', actions: ['*']}}\n\
             \x20   - {{account: bob, name: 'team/*', actions: [pull]}}\n\
             \x20   - {{account: anonymous, name: 'public/*', actions: [pull]}}\n\
             log: {{access: off}}\n",
            c = certs.display()
        ),
    )
    .unwrap();
    let r = Registry::start_with(Some(&d.netns()), ip, &["--config", cfg.to_str().unwrap()]);
    let host = format!("{ip}:{}", r.port);
    let ca_dir = conf.join("certs.d").join(&host);
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(certs.join("ca.pem"), ca_dir.join("ca.crt")).unwrap();
    let login = |user: &str, pass: &str| {
        let (code, _, err) = d.login(d.docker_cmd(), &host, user, pass);
        (code, err)
    };
    let (code, err) = login("alice", "wrong");
    assert_ne!(code, 0);
    assert!(
        err.contains("401 Unauthorized") || err.contains("unauthorized"),
        "{err}"
    );
    let (code, err) = login("alice", "s3cret");
    assert_eq!(code, 0, "{err}");
    for name in ["team/bb:1", "public/bb:1", "private/bb:1"] {
        let full = format!("{host}/{name}");
        d.ok(&["tag", "busybox", &full]);
        let out = d.ok(&["push", &full]);
        assert!(out.contains("digest: sha256:"), "{out}");
        d.ok(&["rmi", &full]);
    }
    let team = format!("{host}/team/bb:1");
    d.ok(&["pull", &team]);
    assert_eq!(d.ok(&["run", "--rm", &team, "echo", "pulled"]), "pulled\n");
    d.ok(&["rmi", &team]);
    // bob may pull team/*, not push there, not read private/*.
    d.ok(&["logout", &host]);
    let (code, err) = login("bob", "hunter2");
    assert_eq!(code, 0, "{err}");
    d.ok(&["pull", &team]);
    let (code, _, err) = d.docker(&["push", &team]);
    assert_ne!(code, 0, "bob pushed");
    assert!(
        err.contains("denied") || err.contains("unauthorized"),
        "{err}"
    );
    let (code, _, err) = d.docker(&["pull", &format!("{host}/private/bb:1")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("denied") || err.contains("unauthorized"),
        "{err}"
    );
    // Anonymous: public/* only.
    d.ok(&["logout", &host]);
    d.ok(&["pull", &format!("{host}/public/bb:1")]);
    let (code, _, _) = d.docker(&["pull", &format!("{host}/private/bb:1")]);
    assert_ne!(code, 0);
    // What each account sees of the catalog and search, by curl in the namespace.
    let curl = |user: Option<&str>, path: &str| -> String {
        let mut c = d.host_cmd("curl");
        c.args(["-s", "--cacert"]).arg(certs.join("ca.pem"));
        if let Some(u) = user {
            c.args(["-u", u]);
        }
        let token_url =
            format!("https://{host}/token?service=test-registry&scope=registry:catalog:*");
        let t = capture(c.arg(&token_url));
        let v: serde_json::Value = serde_json::from_slice(&t.stdout).unwrap();
        let bearer = format!("Authorization: Bearer {}", v["token"].as_str().unwrap());
        let out = capture(
            d.host_cmd("curl")
                .args(["-s", "--cacert"])
                .arg(certs.join("ca.pem"))
                .args(["-H", &bearer])
                .arg(format!("https://{host}{path}")),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        curl(Some("alice:s3cret"), "/v2/_catalog"),
        r#"{"repositories":["private/bb","public/bb","team/bb"]}"#
    );
    assert_eq!(
        curl(Some("bob:hunter2"), "/v2/_catalog"),
        r#"{"repositories":["team/bb"]}"#
    );
    let hits = curl(Some("bob:hunter2"), "/v1/search?q=bb");
    assert!(
        hits.contains("team/bb") && !hits.contains("private"),
        "{hits}"
    );
}
