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
