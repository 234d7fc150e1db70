//! The registry client end to end: `docker pull`/`push`/`login` (and Berth's CLI) through a
//! test daemon, against Debian's docker-registry (distribution 2.8: plain HTTP, htpasswd
//! behind TLS, token auth with a token server here) and against a registry scripted to
//! misbehave (wrong digests, broken and stalled connections, 500s, bad tokens), which also
//! counts what it serves.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_types::Digest;
use common::daemon::{busybox_archive, docker_cli, raw_request, Daemon};
use common::http::{self, Gate, Reply, Request};
use common::{capture, wait_for};
use serde_json::{json, Value};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn daemon() -> Option<Daemon> {
    if !common::is_root() || !docker_cli() {
        eprintln!("skipped: needs root and the docker CLI");
        return None;
    }
    Some(Daemon::start())
}

/// A gzip layer: the busybox root filesystem, or files (`path`, content).
fn layer(rootfs: Option<&Path>, files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    if let Some(r) = rootfs {
        b.append_dir_all(".", r).unwrap();
    }
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
    out
}

/// An image as a registry holds it: Docker schema2 manifest, config, gzip layers.
struct TestImage {
    manifest: Vec<u8>,
    layers: Vec<Vec<u8>>,
    config: Vec<u8>,
}

impl TestImage {
    fn new(arch: &str, layers: Vec<Vec<u8>>) -> TestImage {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| Digest::sha256(&gunzip(l)).to_string())
            .collect();
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string()
        .into_bytes();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": Digest::sha256(&config).to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": Digest::sha256(l).to_string(), "size": l.len()})).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        TestImage {
            manifest,
            layers,
            config,
        }
    }

    fn digest(&self) -> String {
        Digest::sha256(&self.manifest).to_string()
    }

    fn layer_digest(&self, i: usize) -> String {
        Digest::sha256(&self.layers[i]).to_string()
    }
}

/// How the scripted registry misbehaves on the next request whose path contains a key.
enum Fault {
    Status(u16),
    /// Stop after this many bytes and close the connection.
    Cut(usize),
    /// Other bytes of the same length.
    Garbage,
    /// A `Docker-Content-Digest` that is not the content's.
    WrongDigestHeader,
    /// Send this many bytes, then wait at the gate.
    Stall(usize, Gate),
    /// Slowly, in small writes.
    Slow,
    /// A redirect to the same path on another server (blob storage).
    Redirect(String),
}

/// A request as the scripted registry saw it.
#[derive(Debug, Clone)]
struct Served {
    method: String,
    path: String,
    /// `Range` (a GET's) or `Content-Range` (a PATCH's).
    range: Option<String>,
    bytes: usize,
    status: u16,
}

#[derive(Default)]
struct Script {
    blobs: HashMap<String, Vec<u8>>,
    /// `repo/reference` -> (media type, bytes), by tag and by digest.
    manifests: HashMap<String, (String, Vec<u8>)>,
    faults: Vec<(String, Fault)>,
    log: Vec<Served>,
    /// When set, requests need `Authorization: Bearer <this>`.
    required_token: Option<String>,
    /// What the token endpoint hands out.
    issued_token: String,
    tokens_issued: u32,
    /// Upload sessions by id.
    uploads: HashMap<String, Vec<u8>>,
    /// Request bodies larger than this are refused with 413 (a proxy's limit).
    body_limit: Option<usize>,
}

/// A registry serving what the test put in it, with faults on cue.
struct Scripted {
    script: Arc<Mutex<Script>>,
    server: http::Server,
}

impl Scripted {
    fn start(netns: &Path) -> Scripted {
        let script: Arc<Mutex<Script>> = Default::default();
        let port = Arc::new(Mutex::new(0u16));
        let (s, p) = (script.clone(), port.clone());
        let server = http::serve(
            Some(netns),
            Arc::new(move |req: &Request| {
                let port = *p.lock().unwrap();
                let mut script = s.lock().unwrap();
                let reply = scripted_answer(&mut script, req, port);
                let bytes = reply.cut.unwrap_or(reply.body.len()).min(reply.body.len());
                script.log.push(Served {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    range: req
                        .header("range")
                        .or(req.header("content-range"))
                        .map(String::from),
                    bytes: if req.method == "HEAD" { 0 } else { bytes },
                    status: reply.status,
                });
                reply
            }),
        );
        *port.lock().unwrap() = server.port;
        Scripted { script, server }
    }

    fn add(&self, repo: &str, tag: &str, img: &TestImage) {
        let mut s = self.script.lock().unwrap();
        s.blobs
            .insert(Digest::sha256(&img.config).to_string(), img.config.clone());
        for l in &img.layers {
            s.blobs.insert(Digest::sha256(l).to_string(), l.clone());
        }
        let m = (DOCKER_MANIFEST.to_string(), img.manifest.clone());
        s.manifests
            .insert(format!("{repo}/{}", img.digest()), m.clone());
        s.manifests.insert(format!("{repo}/{tag}"), m);
    }

    fn add_index(&self, repo: &str, tag: &str, entries: &[(&TestImage, &str, Option<&str>)]) {
        for (img, _, _) in entries {
            self.add(repo, &img.digest(), img);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": entries.iter().map(|(img, arch, variant)| {
                let mut p = json!({"os": "linux", "architecture": arch});
                if let Some(v) = variant { p["variant"] = json!(v); }
                json!({"mediaType": DOCKER_MANIFEST, "digest": img.digest(),
                    "size": img.manifest.len(), "platform": p})
            }).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let mut s = self.script.lock().unwrap();
        let d = Digest::sha256(&index).to_string();
        s.manifests
            .insert(format!("{repo}/{d}"), (DOCKER_LIST.into(), index.clone()));
        s.manifests
            .insert(format!("{repo}/{tag}"), (DOCKER_LIST.into(), index));
    }

    fn fault(&self, path_part: &str, f: Fault) {
        self.script
            .lock()
            .unwrap()
            .faults
            .push((path_part.to_string(), f));
    }

    fn log(&self) -> Vec<Served> {
        self.script.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.script.lock().unwrap().log.clear();
    }

    /// GETs of `path_part` since the log was cleared.
    fn gets(&self, path_part: &str) -> Vec<Served> {
        self.log()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.contains(path_part))
            .collect()
    }

    fn name(&self, repo_and_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_and_tag}", self.server.port)
    }
}

fn scripted_answer(s: &mut Script, req: &Request, port: u16) -> Reply {
    if req.path == "/token" {
        s.tokens_issued += 1;
        return Reply::json(200, json!({"token": s.issued_token, "expires_in": 300}));
    }
    if let Some(want) = &s.required_token {
        if req.header("authorization") != Some(&format!("Bearer {want}")) {
            return Reply::json(
                401,
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
            )
            .header(
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"scripted\",scope=\"repository:t/img:pull\""
                ),
            );
        }
    }
    if req.path == "/v2/" {
        return Reply::json(200, json!({}));
    }
    if let Some(limit) = s.body_limit {
        if req.body.len() > limit {
            return Reply::new(413, "<html>413 Request Entity Too Large</html>");
        }
    }
    if let Some(reply) = receive(s, req) {
        return reply;
    }
    let fault = s
        .faults
        .iter()
        .position(|(k, _)| req.path.contains(k.as_str()))
        .map(|i| s.faults.remove(i).1);
    let unknown = |code: &str| {
        Reply::json(
            404,
            json!({"errors": [{"code": code, "message": format!("{} unknown", code.to_lowercase())}]}),
        )
    };
    let rest = req.path.strip_prefix("/v2/").unwrap_or_default();
    let (content_type, body, digest) = if let Some((repo, r)) = rest.split_once("/manifests/") {
        let Some((ct, m)) = s.manifests.get(&format!("{repo}/{r}")).cloned() else {
            return unknown("MANIFEST_UNKNOWN");
        };
        let d = Digest::sha256(&m).to_string();
        (ct, m, d)
    } else if let Some((_, d)) = rest.split_once("/blobs/") {
        let Some(b) = s.blobs.get(d).cloned() else {
            return unknown("BLOB_UNKNOWN");
        };
        ("application/octet-stream".to_string(), b, d.to_string())
    } else {
        return unknown("NAME_UNKNOWN");
    };
    let (status, body, range) = match req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(from) if from >= body.len() => return Reply::new(416, Vec::new()),
        Some(from) => (206, body[from..].to_vec(), Some(from)),
        None => (200, body, None),
    };
    let len = body.len();
    let mut reply = Reply::new(status, body)
        .header("Content-Type", content_type)
        .header("Docker-Content-Digest", digest);
    if let Some(from) = range {
        let total = from + len;
        reply = reply.header(
            "Content-Range",
            format!("bytes {from}-{}/{total}", total - 1),
        );
    }
    match fault {
        None => reply,
        Some(Fault::Status(code)) => Reply::json(
            code,
            json!({"errors": [{"code": "UNKNOWN", "message": "scripted failure"}]}),
        ),
        Some(Fault::Cut(n)) => {
            reply.cut = Some(n);
            reply
        }
        Some(Fault::Garbage) => {
            reply.body.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            reply
        }
        Some(Fault::WrongDigestHeader) => {
            reply.headers.retain(|(n, _)| n != "Docker-Content-Digest");
            reply.header(
                "Docker-Content-Digest",
                Digest::sha256(b"something else").to_string(),
            )
        }
        Some(Fault::Stall(n, gate)) => {
            reply.cut = Some(n);
            reply.stall = Some(gate);
            reply
        }
        Some(Fault::Slow) => {
            reply.pace = Some((16 << 10, Duration::from_millis(5)));
            reply
        }
        Some(Fault::Redirect(base)) => {
            Reply::new(307, Vec::new()).header("Location", format!("{base}{}", req.path))
        }
    }
}

/// Uploads and manifest PUTs: what a push sends.
fn receive(s: &mut Script, req: &Request) -> Option<Reply> {
    let rest = req.path.strip_prefix("/v2/")?;
    if let Some((repo, tag)) = rest
        .split_once("/manifests/")
        .filter(|_| req.method == "PUT")
    {
        let ct = req.header("content-type").unwrap_or_default().to_string();
        let d = Digest::sha256(&req.body).to_string();
        for r in [tag, d.as_str()] {
            s.manifests
                .insert(format!("{repo}/{r}"), (ct.clone(), req.body.clone()));
        }
        return Some(Reply::new(201, Vec::new()).header("Docker-Content-Digest", d));
    }
    let (repo, id) = rest.split_once("/blobs/uploads/")?;
    let here = |id: &str, len: usize| {
        Reply::new(202, Vec::new())
            .header("Location", format!("/v2/{repo}/blobs/uploads/{id}"))
            .header("Range", format!("0-{}", len.saturating_sub(1)))
    };
    match req.method.as_str() {
        "POST" => {
            let id = format!("u{}", s.uploads.len() + 1);
            s.uploads.insert(id.clone(), Vec::new());
            Some(here(&id, 0))
        }
        "PATCH" | "PUT" => {
            let Some(data) = s.uploads.get_mut(id) else {
                return Some(Reply::json(
                    404,
                    json!({"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]}),
                ));
            };
            if let Some(start) = req
                .header("content-range")
                .and_then(|r| r.split('-').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                if start != data.len() {
                    return Some(Reply::new(416, Vec::new()));
                }
            }
            data.extend_from_slice(&req.body);
            if req.method == "PATCH" {
                let len = data.len();
                return Some(here(id, len));
            }
            let data = s.uploads.remove(id).unwrap_or_default();
            let want = req.param("digest").first().map(|d| d.to_string());
            let got = Digest::sha256(&data).to_string();
            if want.as_deref() != Some(got.as_str()) {
                return Some(Reply::json(
                    400,
                    json!({"errors": [{"code": "DIGEST_INVALID"}]}),
                ));
            }
            s.blobs.insert(got.clone(), data);
            Some(Reply::new(201, Vec::new()).header("Docker-Content-Digest", got))
        }
        _ => None,
    }
}

fn ok_out(what: &str, (code, out, err): (i32, String, String)) -> String {
    assert_eq!(code, 0, "{what}: {err}\n{out}");
    out
}

fn images(d: &Daemon) -> String {
    d.ok(&["images", "-q", "-a"])
}

/// The store checked with the daemon stopped: every blob matches its digest and every
/// image has what it needs.
fn fsck(d: &mut Daemon) {
    d.stop();
    let store = berth_store::image::ImageStore::open(&d.dir.path().join("root")).unwrap();
    assert_eq!(store.fsck().unwrap(), Vec::<String>::new());
}

/// Two layers: busybox, then `/hello`.
fn busybox_image(arch: &str, hello: &str) -> TestImage {
    TestImage::new(
        arch,
        vec![
            layer(Some(common::template_rootfs()), &[]),
            layer(None, &[("hello", hello.as_bytes())]),
        ],
    )
}

/// Retries, digests, truncated blobs and tokens: every failure is a clear error, every
/// recoverable one is recovered, and the store never holds a corrupt image.
#[test]
fn a_registry_that_misbehaves_never_corrupts_the_store() {
    let Some(mut d) = daemon() else { return };
    let reg = Scripted::start(&d.netns());
    let img = busybox_image("amd64", "A");
    reg.add("t/img", "1", &img);
    let name = reg.name("t/img:1");
    let top = img.layer_digest(1);

    // A 500 on the manifest, then success: retried.
    reg.fault("/manifests/1", Fault::Status(500));
    let out = d.ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(reg.gets("/manifests/1").len(), 2);
    assert_eq!(d.ok(&["run", "--rm", &name, "cat", "/hello"]), "A");
    d.ok(&["rmi", &name]);
    assert_eq!(images(&d), "");

    // A blob whose bytes are not its digest: refused, nothing of it kept as an image.
    reg.clear_log();
    reg.fault(&top, Fault::Garbage);
    let (code, _, err) = d.docker(&["pull", &name]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "filesystem layer verification failed for digest {top}"
        )),
        "{err}"
    );
    assert_eq!(images(&d), "");

    // A connection that breaks half way: continued with Range, each byte served once.
    reg.clear_log();
    let half = img.layers[1].len() / 2;
    reg.fault(&top, Fault::Cut(half));
    let out = d.ok(&["pull", &name]);
    assert!(out.contains("Pull complete"), "{out}");
    let gets = reg.gets(&top);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].range.as_deref(), Some(&*format!("bytes={half}-")));
    assert_eq!(
        gets.iter().map(|g| g.bytes).sum::<usize>(),
        img.layers[1].len()
    );
    assert_eq!(d.ok(&["run", "--rm", &name, "cat", "/hello"]), "A");
    d.ok(&["rmi", &name]);

    // A manifest that is not the digest asked for, or not the digest the registry claims.
    let by_digest = format!("{}@{}", reg.name("t/img"), img.digest());
    reg.fault("/manifests/", Fault::Garbage);
    let (code, _, err) = d.docker(&["pull", &by_digest]);
    assert_ne!(code, 0);
    assert!(err.contains("manifest verification failed"), "{err}");
    reg.fault("/manifests/1", Fault::WrongDigestHeader);
    let (code, _, err) = d.docker(&["pull", &name]);
    assert_ne!(code, 0);
    assert!(err.contains("manifest verification failed"), "{err}");
    assert_eq!(images(&d), "");

    // Token auth: a token the registry refuses is an error in Docker's words; a good one
    // is fetched once and reused by the next pull.
    {
        let mut s = reg.script.lock().unwrap();
        s.required_token = Some("good".into());
        s.issued_token = "bad".into();
    }
    let (code, _, err) = d.docker(&["pull", &name]);
    assert_ne!(code, 0);
    assert!(
        err.contains("pull access denied for")
            && err.contains("may require 'docker login'")
            && err.contains("authentication required"),
        "{err}"
    );
    reg.script.lock().unwrap().issued_token = "good".into();
    d.ok(&["pull", &name]);
    let issued = reg.script.lock().unwrap().tokens_issued;
    assert!(d.ok(&["pull", &name]).contains("Image is up to date"));
    assert_eq!(reg.script.lock().unwrap().tokens_issued, issued);
    assert_eq!(d.ok(&["run", "--rm", &name, "cat", "/hello"]), "A");

    // A blob redirected to storage elsewhere: followed, and the registry's token is not
    // sent there.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Default::default();
    let storage = {
        let (script, seen) = (reg.script.clone(), seen.clone());
        http::serve(
            Some(&d.netns()),
            Arc::new(move |req: &Request| {
                seen.lock()
                    .unwrap()
                    .push(req.header("authorization").map(String::from));
                let digest = req.path.rsplit('/').next().unwrap_or_default();
                match script.lock().unwrap().blobs.get(digest) {
                    Some(b) => Reply::new(200, b.clone()),
                    None => Reply::new(404, Vec::new()),
                }
            }),
        )
    };
    d.ok(&["rmi", &name]);
    reg.fault(
        &top,
        Fault::Redirect(format!("http://127.0.0.1:{}", storage.port)),
    );
    d.ok(&["pull", &name]);
    assert_eq!(*seen.lock().unwrap(), vec![None]);
    assert_eq!(d.ok(&["run", "--rm", &name, "cat", "/hello"]), "A");

    fsck(&mut d);
}

/// `registry-mirrors`: Docker Hub's names are pulled from the mirror (asked anonymously),
/// and keep their Docker Hub names.
#[test]
fn a_mirror_serves_docker_hub_names() {
    if !common::is_root() || !docker_cli() {
        eprintln!("skipped: needs root and the docker CLI");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-daemon-")
        .tempdir()
        .unwrap();
    let netns = dir.path().join("netns");
    common::make_netns(&netns);
    let reg = Scripted::start(&netns);
    let img = busybox_image("amd64", "mirrored");
    reg.add("library/busybox", "latest", &img);
    let mirror = format!("http://127.0.0.1:{}", reg.server.port);
    let d = Daemon::start_with(dir, &["--registry-mirror", &mirror]);
    let out = d.ok(&["pull", "busybox"]);
    assert!(
        out.contains("Status: Downloaded newer image for busybox:latest"),
        "{out}"
    );
    assert_eq!(
        d.ok(&["run", "--rm", "busybox", "cat", "/hello"]),
        "mirrored"
    );
    let digests = d.ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", "busybox"]);
    assert!(
        digests.contains(&format!("busybox@{}", img.digest())),
        "{digests}"
    );
    assert!(reg.gets("/v2/library/busybox/manifests/latest").len() == 1);
}

/// An index with two platforms: this machine's is chosen, `--platform` picks the other,
/// and a platform it lacks is Docker's error.
#[test]
fn manifest_lists_pick_the_platform() {
    let Some(d) = daemon() else { return };
    let reg = Scripted::start(&d.netns());
    let amd = busybox_image("amd64", "amd64 here");
    let arm = TestImage::new("arm64", vec![layer(None, &[("hello", b"arm64 there")])]);
    reg.add_index(
        "t/img",
        "multi",
        &[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))],
    );
    let name = reg.name("t/img:multi");
    let out = d.ok(&["pull", &name]);
    assert!(
        out.contains(&amd.digest()) || out.contains("Digest: sha256:"),
        "{out}"
    );
    assert_eq!(d.ok(&["run", "--rm", &name, "cat", "/hello"]), "amd64 here");
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{.Architecture}}", &name]),
        "amd64\n"
    );
    ok_out(
        "berth pull --platform",
        d.berth(&["pull", "--platform", "linux/arm64", &name]),
    );
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{.Architecture}}", &name]),
        "arm64\n"
    );
    let (code, _, err) = d.docker(&["pull", "--platform", "linux/s390x", &name]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no matching manifest for linux/s390x in the manifest list entries"),
        "{err}"
    );

    // `run` pulls what is missing (`--pull missing`), never (`never`) or again (`always`).
    let single = reg.name("t/img:amd");
    reg.add("t/img", "amd", &amd);
    let (code, _, err) = d.berth(&["run", "--rm", "--pull", "never", &single, "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("No such image"), "{err}");
    let (code, out, err) = d.berth(&["run", "--rm", &single, "cat", "/hello"]);
    assert_eq!((code, out.as_str()), (0, "amd64 here"), "{err}");
    assert!(
        err.contains(&format!("Unable to find image '{single}' locally"))
            && err.contains("Downloaded newer image"),
        "{err}"
    );
    let (code, _, err) = d.berth(&["run", "--rm", "--pull", "always", &single, "true"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Image is up to date"), "{err}");
    let (code, _, err) = d.berth(&["run", "--rm", "--pull", "sometimes", &single, "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("invalid pull option"), "{err}");
    d.berth_ok(&["rmi", &single]);
    assert_eq!(d.berth_ok(&["pull", "-q", &single]), format!("{single}\n"));
}

fn docker_child(d: &Daemon, args: &[&str]) -> Child {
    Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
        .env("DOCKER_CONFIG", d.docker_config())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The partial downloads in the daemon's content store: (file, size).
fn ingests(d: &Daemon) -> Vec<(PathBuf, u64)> {
    let dir = d.dir.path().join("root/content/ingest");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let data = e.path().join("data");
            let len = std::fs::metadata(&data).ok()?.len();
            Some((data, len))
        })
        .collect()
}

/// Concurrent pulls share one download; a pull whose client goes away stops (the
/// registry sees the connection close); a pull whose daemon is killed continues where it
/// stopped the next time, downloading only the rest.
#[test]
fn interrupted_pulls_resume_and_concurrent_pulls_share_downloads() {
    let Some(mut d) = daemon() else { return };
    let reg = Scripted::start(&d.netns());
    let img = busybox_image("amd64", "shared");
    reg.add("t/img", "1", &img);
    let name = reg.name("t/img:1");

    // Two pulls at once, each blob slow: one GET per blob.
    for i in 0..2 {
        reg.fault(&img.layer_digest(i), Fault::Slow);
    }
    let a = docker_child(&d, &["pull", &name]);
    let b = docker_child(&d, &["pull", &name]);
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..2 {
        assert_eq!(reg.gets(&img.layer_digest(i)).len(), 1, "{:?}", reg.log());
    }
    d.ok(&["rmi", &name]);

    // A big layer (incompressible, 24 MiB) that stalls half way.
    let mut noise = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = TestImage::new(
        "amd64",
        vec![
            layer(Some(common::template_rootfs()), &[]),
            layer(None, &[("big", &noise)]),
        ],
    );
    reg.add("t/big", "1", &big);
    let big_name = reg.name("t/big:1");
    let blob = big.layer_digest(1);
    let size = big.layers[1].len();

    // The client goes away: the daemon drops its download (the registry sees it).
    reg.clear_log();
    let quarter = size / 4;
    let gate = Gate::default();
    reg.fault(&blob, Fault::Stall(quarter, gate.clone()));
    let mut cli = docker_child(&d, &["pull", &big_name]);
    assert!(
        wait_for(20, || ingests(&d).iter().any(|(_, n)| *n == quarter as u64)),
        "the download did not reach {quarter} bytes: {:?}",
        ingests(&d)
    );
    let _ = cli.kill();
    let _ = cli.wait();
    assert!(
        wait_for(10, || *reg.server.abandoned.lock().unwrap() == 1),
        "the daemon kept downloading after its client went away"
    );

    // Continued, then the daemon is killed half way.
    let half = size / 2;
    let gate = Gate::default();
    reg.fault(&blob, Fault::Stall(half - quarter, gate.clone()));
    let mut cli = docker_child(&d, &["pull", &big_name]);
    assert!(
        wait_for(20, || ingests(&d).iter().any(|(_, n)| *n == half as u64)),
        "the download did not reach {half} bytes: {:?}",
        ingests(&d)
    );
    d.crash_and_restart();
    let _ = cli.kill();
    let _ = cli.wait();
    gate.open();

    // The next pull asks only for the rest, and the image is whole.
    let out = d.ok(&["pull", &big_name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    let gets = reg.gets(&blob);
    let ranges: Vec<Option<String>> = gets.iter().map(|g| g.range.clone()).collect();
    assert_eq!(
        ranges,
        vec![
            None,
            Some(format!("bytes={quarter}-")),
            Some(format!("bytes={half}-"))
        ],
        "{gets:?}"
    );
    assert_eq!(gets[2].bytes, size - half);
    assert_eq!(
        d.ok(&["run", "--rm", &big_name, "wc", "-c", "/big"])
            .split_whitespace()
            .next(),
        Some(&*(24 << 20).to_string())
    );
    assert!(ingests(&d).is_empty(), "{:?}", ingests(&d));
    fsck(&mut d);
}

/// A loaded image (its layer an uncompressed tar) is pushed gzip-compressed, in chunks to a
/// registry whose proxy refuses bodies over 256 KiB (Docker fails there), comes back
/// runnable with the pushed digest, and a push to another registry sends the same
/// compressed bytes.
#[test]
fn pushes_compress_layers_and_fall_back_to_chunks() {
    let Some(d) = daemon() else { return };
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let reg = Scripted::start(&d.netns());
    reg.script.lock().unwrap().body_limit = Some(256 << 10);
    let name = reg.name("t/pushed:1");
    d.ok(&["tag", "busybox", &name]);
    let out = d.ok(&["push", &name]);
    let pushed = out
        .lines()
        .find_map(|l| l.strip_prefix("1: digest: "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let (_, manifest) = reg.script.lock().unwrap().manifests[&format!("t/pushed/{pushed}")].clone();
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = &m["layers"][0];
    assert!(
        layer["mediaType"].as_str().unwrap().ends_with("gzip"),
        "{m}"
    );
    let gz = layer["digest"].as_str().unwrap().to_string();
    let size = layer["size"].as_u64().unwrap() as usize;
    assert!(size > 256 << 10, "the layer fits one request: {size}");
    let log = reg.log();
    let patches: Vec<&Served> = log
        .iter()
        .filter(|s| s.method == "PATCH" && s.status == 202)
        .collect();
    assert!(patches.len() >= 2, "{log:?}");
    assert!(log.iter().any(|s| s.status == 413), "{log:?}");
    // Contiguous chunks, each within the limit, covering the blob.
    let mut next = 0usize;
    for p in &patches {
        let (a, b) = p.range.as_deref().unwrap().split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(a == next && b - a < 256 << 10, "{log:?}");
        next = b + 1;
    }
    assert_eq!(next, size);
    // Pulled while the loaded image is here: the same image (its ID), nothing downloaded.
    reg.clear_log();
    let out = d.ok(&["pull", &name]);
    assert!(out.contains("Image is up to date"), "{out}");
    assert!(reg.gets("/blobs/").is_empty(), "{:?}", reg.log());
    // Back from the registry: the pushed digest, runnable.
    d.ok(&["rmi", &name, "busybox"]);
    let out = d.ok(&["pull", &name]);
    assert!(out.contains(&format!("Digest: {pushed}")), "{out}");
    assert_eq!(d.ok(&["run", "--rm", &name, "echo", "back"]), "back\n");
    // Another registry gets the same compressed layer.
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let other = common::Registry::start_in(Some(&d.netns()));
    let name = format!("127.0.0.1:{}/again/bb:1", other.port);
    d.ok(&["tag", "busybox", &name]);
    let out = d.berth_ok(&["push", &name]);
    assert!(out.contains(&format!("1: digest: {pushed}")), "{out}");
    let head = common::net(Some(&d.netns()), {
        let url = format!("/v2/again/bb/blobs/{gz}");
        let port = other.port;
        move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(c, "HEAD {url} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            out
        }
    });
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
}

/// `search` against private registries (Berth's search endpoint; distribution's catalog),
/// with the docker CLI and Berth's printing the same table; `pull -a`; `manifest inspect`
/// printing what the docker CLI prints; `GET /distribution/{name}/json`.
#[test]
fn search_all_tags_and_manifest_inspect() {
    if !have("docker-registry") {
        eprintln!("skipped: needs docker-registry");
        return;
    }
    let Some(d) = daemon() else { return };
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let berth_reg = common::Registry::start_in(Some(&d.netns()));
    let b = format!("127.0.0.1:{}", berth_reg.port);
    let dist = Distribution::start(&d.netns(), "127.0.0.1", "", "");
    let g = format!("127.0.0.1:{}", dist.port);
    for name in [
        format!("{b}/team/alpha:1"),
        format!("{b}/team/alpha:2"),
        format!("{b}/team/beta:1"),
        format!("{g}/team/gamma:1"),
    ] {
        d.ok(&["tag", "busybox", &name]);
        d.ok(&["push", &name]);
        d.ok(&["rmi", &name]);
    }

    // Search: the registry's endpoint, then a catalog; both CLIs print the same.
    let out = d.ok(&["search", &format!("{b}/alpha")]);
    let mut lines = out.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(head, ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"], "{out}");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row, [format!("{b}/team/alpha").as_str(), "0"], "{out}");
    assert_eq!(lines.next(), None, "{out}");
    for args in [
        vec!["search".to_string(), format!("{b}/team")],
        vec![
            "search".into(),
            "--limit".into(),
            "1".into(),
            format!("{b}/team"),
        ],
        vec![
            "search".into(),
            "--format".into(),
            "{{.Name}}: {{.StarCount}}".into(),
            format!("{b}/a"),
        ],
        vec![
            "search".into(),
            "-f".into(),
            "stars=1".into(),
            format!("{b}/team"),
        ],
        vec!["search".into(), format!("{g}/gam")],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(d.berth_ok(&args), d.ok(&args), "{args:?}");
    }
    assert!(d
        .ok(&["search", &format!("{b}/team")])
        .contains("team/beta"));
    assert!(d
        .berth_ok(&["search", &format!("{g}/gam")])
        .contains(&format!("{g}/team/gamma")));
    let (code, _, err) = d.berth(&["search", "--limit", "500", &format!("{b}/x")]);
    assert_ne!(code, 0);
    assert!(err.contains("between 1 and 100"), "{err}");

    // pull -a: every tag.
    let out = d.ok(&["pull", "-a", &format!("{b}/team/alpha")]);
    assert!(
        out.contains(&format!(
            "Status: Downloaded newer image for {b}/team/alpha"
        )),
        "{out}"
    );
    let tags = d.ok(&["images", "--format", "{{.Tag}}", &format!("{b}/team/alpha")]);
    let mut tags: Vec<&str> = tags.lines().collect();
    tags.sort();
    assert_eq!(tags, ["1", "2"]);
    let out = d.berth_ok(&["pull", "-a", &format!("{b}/team/alpha")]);
    assert!(out.contains("Image is up to date"), "{out}");
    let (code, _, err) = d.berth(&["pull", "-a", &format!("{b}/team/alpha:1")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tag can't be used with --all-tags/-a"),
        "{err}"
    );

    // manifest inspect: as the docker CLI prints it (that one talks to the registry itself,
    // so it runs on the daemon's host).
    let name = format!("{g}/team/gamma:1");
    let ours = d.berth_ok(&["manifest", "inspect", &name]);
    let theirs = capture(
        d.host_cmd("docker")
            .env("DOCKER_CONFIG", d.docker_config())
            .args(["manifest", "inspect", "--insecure", &name]),
    );
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout));
    let m: Value = serde_json::from_str(&ours).unwrap();
    let verbose: Value =
        serde_json::from_str(&d.berth_ok(&["manifest", "inspect", "-v", &name])).unwrap();
    assert_eq!(verbose["Descriptor"]["platform"]["architecture"], "amd64");
    assert_eq!(verbose["Manifest"], m);

    // The Engine API's distribution inspect: the descriptor the docker CLI sees.
    let (status, body) = raw_request(
        &d,
        format!("GET /v1.47/distribution/{name}/json HTTP/1.0\r\nHost: d\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Platforms"][0]["os"], "linux");
    let theirs = capture(
        d.host_cmd("docker")
            .env("DOCKER_CONFIG", d.docker_config())
            .args(["manifest", "inspect", "-v", "--insecure", &name]),
    );
    let theirs: Value = serde_json::from_slice(&theirs.stdout).unwrap();
    for k in ["digest", "size", "mediaType"] {
        assert_eq!(
            v["Descriptor"][k], theirs["Descriptor"][k],
            "{k}: {v} / {theirs}"
        );
    }
    let (status, _) = raw_request(
        &d,
        format!("GET /v1.47/distribution/{g}/team/none:1/json HTTP/1.0\r\nHost: d\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status, 404);
}

/// Debian's docker-registry (distribution 2.8) in the daemon's network namespace.
struct Distribution {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Distribution {
    /// `auth` and `tls` are YAML for the `auth:` and `http.tls:` sections.
    fn start(netns: &Path, addr: &str, auth: &str, tls: &str) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        // Port 0, read back from its log: no window for another socket to take the port.
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}:0\n{tls}{auth}",
            root = dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log_path = dir.path().join("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = common::in_netns(Some(netns), "docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let listening = || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let at = log.split("listening on ").nth(1)?;
            let addr = at.split(['"', ' ', ',']).next()?;
            addr.rsplit(':').next()?.parse::<u16>().ok()
        };
        assert!(
            wait_for(10, || listening().is_some()),
            "docker-registry did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        Distribution {
            child,
            port: listening().unwrap(),
            _dir: dir,
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token server for distribution's token auth: basic credentials `tok:secret` get a
/// JWT (RS256, signed by openssl with `key.pem`, its certificate in the x5c header) for
/// the scopes asked; anything else gets a 401.
fn token_server(netns: &Path, certs: &Path) -> (http::Server, Arc<Mutex<u32>>) {
    use base64::Engine;
    let pem = std::fs::read_to_string(certs.join("token-cert.pem")).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key = certs.join("token-key.pem");
    let issued = Arc::new(Mutex::new(0u32));
    let count = issued.clone();
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("tok:secret")
    );
    let server = http::serve(
        Some(netns),
        Arc::new(move |req: &Request| {
            if req.header("authorization") != Some(good.as_str()) {
                return Reply::json(401, json!({"details": "incorrect username or password"}));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let access: Vec<Value> = req
                .param("scope")
                .iter()
                .flat_map(|s| s.split(' '))
                .filter_map(|s| {
                    let mut p = s.splitn(3, ':');
                    let (t, n, a) = (p.next()?, p.next()?, p.next()?);
                    Some(json!({"type": t, "name": n, "actions": a.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [der]});
            let claims = json!({"iss": "berth-test", "sub": "tok", "aud": "berth-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
                "access": access});
            let input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let mut sign = Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut sign.stdin.take().unwrap(), input.as_bytes()).unwrap();
            let sig = sign.wait_with_output().unwrap().stdout;
            *count.lock().unwrap() += 1;
            Reply::json(
                200,
                json!({"token": format!("{input}.{}", b64url(&sig)), "expires_in": 300}),
            )
        }),
    );
    (server, issued)
}

/// Debian's docker-registry three ways: plain HTTP on loopback; htpasswd basic auth behind
/// TLS with a CA made here (an address that is not loopback, so the certificate must
/// verify: `certs.d`); token auth with a token server here. Push, remove, pull back:
/// identical digests, runnable; `docker login`/`berth login` store what the other uses.
#[test]
fn distribution_registry_plain_tls_basic_and_token_auth() {
    if !have("docker-registry") || !have("htpasswd") || !have("openssl") {
        eprintln!("skipped: needs docker-registry, htpasswd (apache2-utils) and openssl");
        return;
    }
    if !common::is_root() || !docker_cli() {
        eprintln!("skipped: needs root and the docker CLI");
        return;
    }
    let (d, conf) = Daemon::start_with_config();
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);

    // Plain HTTP on loopback, no auth: push, remove, pull back.
    let plain = Distribution::start(&d.netns(), "127.0.0.1", "", "");
    let name = format!("127.0.0.1:{}/plain/bb:1", plain.port);
    d.ok(&["tag", "busybox", &name]);
    let out = d.ok(&["push", &name]);
    let pushed = out
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in {out}"))
        .to_string();
    d.ok(&["rmi", &name]);
    let out = d.ok(&["pull", &name]);
    assert!(out.contains(&format!("Digest: {pushed}")), "{out}");
    assert_eq!(d.ok(&["run", "--rm", &name, "echo", "plain"]), "plain\n");
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{index .RepoDigests 0}}", &name]),
        format!("127.0.0.1:{}/plain/bb@{pushed}\n", plain.port)
    );
    // Another repository of the same registry: the layers are mounted, not sent.
    let other = format!("127.0.0.1:{}/plain/other:1", plain.port);
    d.ok(&["tag", "busybox", &other]);
    let out = d.ok(&["push", &other]);
    assert!(out.contains("Mounted from plain/bb"), "{out}");

    // htpasswd behind TLS on 192.0.2.1 (documentation range, on the namespace's lo).
    let ip = "192.0.2.1";
    let st = d
        .host_cmd("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .status()
        .unwrap();
    assert!(st.success());
    let certs = d.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    common::make_certs(&certs, ip);
    let htpasswd = capture(Command::new("htpasswd").args(["-Bbn", "alice", "s3cret"]));
    std::fs::write(certs.join("htpasswd"), &htpasswd.stdout).unwrap();
    let tls = Distribution::start(
        &d.netns(),
        ip,
        &format!(
            "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
            certs.join("htpasswd").display()
        ),
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            certs.join("server-cert.pem").display(),
            certs.join("server-key.pem").display()
        ),
    );
    let host = format!("{ip}:{}", tls.port);
    let name = format!("{host}/secure/bb:1");
    d.ok(&["tag", "busybox", &name]);
    // docker-credential-berthtest: a credential helper keeping one entry in a file.
    let helper_dir = d.dir.path().join("helper");
    std::fs::create_dir_all(&helper_dir).unwrap();
    let helper = helper_dir.join("docker-credential-berthtest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nf=\"$(dirname \"$0\")/store.json\"\ncase \"$1\" in\n  store) cat > \"$f\" ;;\n  get) if [ -f \"$f\" ]; then cat \"$f\"; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n  erase) if [ -f \"$f\" ]; then rm \"$f\"; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n  list) echo '{}' ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helper_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let login = |cli: &str, user: &str, pass: &str| {
        let mut cmd = match cli {
            "docker" => d.docker_cmd(),
            _ => d.berth_cmd(),
        };
        cmd.env("PATH", &path);
        d.login(cmd, &host, user, pass)
    };
    // Not trusted yet: the certificate is the error.
    let (code, _, err) = login("docker", "alice", "s3cret");
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let ca_dir = conf.join("certs.d").join(&host);
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(certs.join("ca.pem"), ca_dir.join("ca.crt")).unwrap();
    // Trusted, but no credentials.
    let (code, _, err) = d.docker(&["push", &name]);
    assert_ne!(code, 0);
    assert!(err.contains("no basic auth credentials"), "{err}");
    let (code, _, err) = login("docker", "alice", "wrong");
    assert_ne!(code, 0);
    assert!(err.contains("401 Unauthorized"), "{err}");
    let (code, out, err) = login("docker", "alice", "s3cret");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Login Succeeded"), "{out}");
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(d.docker_config().join("config.json")).unwrap())
            .unwrap();
    assert!(cfg["auths"][&host]["auth"].is_string(), "{cfg}");
    let out = d.ok(&["push", &name]);
    let pushed = out
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    d.ok(&["rmi", &name]);
    // Berth's CLI uses the docker CLI's credentials.
    let out = d.berth_ok(&["pull", &name]);
    assert!(out.contains(&pushed), "{out}");
    assert_eq!(d.ok(&["run", "--rm", &name, "echo", "tls"]), "tls\n");
    let out = d.berth_ok(&["logout", &host]);
    assert!(
        out.contains(&format!("Removing login credentials for {host}")),
        "{out}"
    );
    d.ok(&["rmi", &name]);
    let (code, _, err) = d.berth(&["pull", &name]);
    assert_ne!(code, 0);
    assert!(err.contains("no basic auth credentials"), "{err}");
    let (code, out, err) = login("berth", "alice", "s3cret");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Login Succeeded"), "{out}");
    d.ok(&["pull", &name]);

    // A credential helper (`credsStore`) keeps the secret instead of config.json; both
    // CLIs go through it.
    d.berth_ok(&["logout", &host]);
    let cfg_path = d.docker_config().join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["credsStore"] = json!("berthtest");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (code, out, err) = login("berth", "alice", "s3cret");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Login Succeeded"), "{out}");
    let kept: Value =
        serde_json::from_slice(&std::fs::read(helper_dir.join("store.json")).unwrap()).unwrap();
    assert_eq!(
        (
            kept["ServerURL"].as_str(),
            kept["Username"].as_str(),
            kept["Secret"].as_str()
        ),
        (Some(host.as_str()), Some("alice"), Some("s3cret"))
    );
    let cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["auths"][&host], json!({}), "{cfg}");
    d.ok(&["rmi", &name]);
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
        .env("DOCKER_CONFIG", d.docker_config())
        .env("PATH", &path);
    ok_out(
        "docker pull through the helper",
        d.client(&mut c, &["pull", &name]),
    );
    let out = ok_out(
        "berth logout through the helper",
        d.client(d.berth_cmd().env("PATH", &path), &["logout", &host]),
    );
    assert!(out.contains("Removing login credentials"), "{out}");
    assert!(!helper_dir.join("store.json").exists());
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("credsStore");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    // A registry that wants a client certificate: refused until certs.d has one.
    let mtls = Distribution::start(
        &d.netns(),
        ip,
        "",
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
            certs.join("server-cert.pem").display(),
            certs.join("server-key.pem").display(),
            certs.join("ca.pem").display()
        ),
    );
    let host = format!("{ip}:{}", mtls.port);
    let name = format!("{host}/mtls/bb:1");
    let ca_dir = conf.join("certs.d").join(&host);
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(certs.join("ca.pem"), ca_dir.join("ca.crt")).unwrap();
    d.ok(&["tag", "busybox", &name]);
    // (TLS 1.3 tells a missing client certificate after the handshake: a broken stream.)
    let (code, _, _) = d.docker(&["push", &name]);
    assert_ne!(code, 0, "pushed without a client certificate");
    std::fs::copy(certs.join("cert.pem"), ca_dir.join("client.cert")).unwrap();
    std::fs::copy(certs.join("key.pem"), ca_dir.join("client.key")).unwrap();
    let out = d.ok(&["push", &name]);
    assert!(out.contains("1: digest: sha256:"), "{out}");
    drop(mtls);

    // Token auth.
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=berth-test-token"])
        .arg("-keyout")
        .arg(certs.join("token-key.pem"))
        .arg("-out")
        .arg(certs.join("token-cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let (tokens, issued) = token_server(&d.netns(), &certs);
    let reg = Distribution::start(
        &d.netns(),
        "127.0.0.1",
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: berth-registry\n    issuer: berth-test\n    rootcertbundle: {}\n",
            tokens.port,
            certs.join("token-cert.pem").display()
        ),
        "",
    );
    let host = format!("127.0.0.1:{}", reg.port);
    let name = format!("{host}/tok/bb:1");
    d.ok(&["tag", "busybox", &name]);
    let (code, _, _) = d.docker(&["push", &name]);
    assert_ne!(code, 0, "pushed without credentials");
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
        .env("DOCKER_CONFIG", d.docker_config());
    let out = ok_out(
        "docker login (token)",
        d.client(&mut c, &["login", "-u", "tok", "-p", "secret", &host]),
    );
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = d.ok(&["push", &name]);
    assert!(out.contains("1: digest: sha256:"), "{out}");
    d.ok(&["rmi", &name]);
    d.ok(&["pull", &name]);
    let before = *issued.lock().unwrap();
    assert!(d.ok(&["pull", &name]).contains("Image is up to date"));
    assert_eq!(*issued.lock().unwrap(), before, "the token was not reused");
    assert_eq!(d.ok(&["run", "--rm", &name, "echo", "token"]), "token\n");
    drop((plain, tls, reg));
}

/// `berth compose build/push/pull` against Berth's registry: the service's image goes up
/// and comes back.
#[test]
fn compose_pushes_and_pulls_service_images() {
    let Some(d) = daemon() else { return };
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let reg = common::Registry::start_in(Some(&d.netns()));
    let image = format!("127.0.0.1:{}/comp/app:1", reg.port);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("compose.yaml"),
        format!("name: comp\nservices:\n  app:\n    image: {image}\n    build: ./app\n    command: cat /made\n"),
    )
    .unwrap();
    std::fs::create_dir_all(p.join("app")).unwrap();
    std::fs::write(
        p.join("app/Dockerfile"),
        "FROM busybox\nRUN echo made-here > /made\n",
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let mut cmd = d.berth_cmd();
        cmd.current_dir(p).arg("compose");
        ok_out(&format!("compose {args:?}"), d.client(&mut cmd, args))
    };
    compose(&["build"]);
    compose(&["push"]);
    d.ok(&["rmi", &image]);
    assert_ne!(d.docker(&["image", "inspect", &image]).0, 0);
    compose(&["pull"]);
    assert_eq!(
        d.ok(&["run", "--rm", &image, "cat", "/made"]),
        "made-here\n"
    );
}
