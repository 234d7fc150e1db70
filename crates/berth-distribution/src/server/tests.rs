//! Every endpoint and error code, through the router as a client sees it, on both storage
//! drivers (the binary's own tests then do the same over real sockets with real clients).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use berth_types::Digest;
use tower::ServiceExt;

use super::config::Config;
use super::storage::{Driver, Filesystem, Memory};
use super::{App, Peer};

struct Client {
    router: axum::Router,
    app: Arc<App>,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn client(cfg: &Config, store: Arc<dyn Driver>) -> Client {
    let app = Arc::new(App::new(cfg, store).unwrap());
    Client {
        router: super::router(app.clone()),
        app,
    }
}

fn quiet() -> Config {
    let mut c = Config::default();
    c.log.access = "off".into();
    c
}

impl Client {
    async fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Body::from(body.to_vec())).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(Peer(([127, 0, 0, 1], 1).into())));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call("GET", uri, &[], b"").await
    }

    async fn put_manifest(&self, repo: &str, reference: &str, m: &str) -> Answer {
        self.call(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            m.as_bytes(),
        )
        .await
    }
}

fn image(config: &Digest, layers: &[&Digest]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":1}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

async fn endpoints(store: Arc<dyn Driver>) {
    let c = client(&quiet(), store.clone());
    let a = c.get("/v2/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("docker-distribution-api-version"), "registry/2.0");

    // Monolithic upload with the wrong digest: refused, nothing stored, no upload left.
    let wrong = Digest::sha256(b"something else");
    let a = c
        .call(
            "POST",
            &format!("/v2/t/x/blobs/uploads/?digest={wrong}"),
            &[],
            b"hello blob",
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    assert_eq!(
        c.call("HEAD", &format!("/v2/t/x/blobs/{wrong}"), &[], b"")
            .await
            .status,
        404
    );
    assert!(store.list("uploads").unwrap().is_empty());

    // Chunked: POST, PATCH, an out-of-order PATCH (416, the upload intact), PATCH, PUT.
    let a = c.call("POST", "/v2/t/x/blobs/uploads/", &[], b"").await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let loc = a.header("location").to_string();
    assert!(loc.starts_with("/v2/t/x/blobs/uploads/"), "{loc}");
    let a = c
        .call("PATCH", &loc, &[("content-range", "0-5")], b"hello ")
        .await;
    assert_eq!((a.status, a.header("range")), (StatusCode::ACCEPTED, "0-5"));
    let a = c
        .call("PATCH", &loc, &[("content-range", "0-3")], b"blob")
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.header("range"), "0-5");
    let a = c
        .call(
            "PUT",
            &format!("{loc}?digest=x"),
            &[("content-range", "7-10")],
            b"blob",
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "a PUT chunk is checked too"
    );
    let a = c.get(&loc).await;
    assert_eq!(
        (a.status, a.header("range")),
        (StatusCode::NO_CONTENT, "0-5")
    );
    let a = c.call("PATCH", &loc, &[], b"blob").await;
    assert_eq!(a.header("range"), "0-9");
    let good = Digest::sha256(b"hello blob");
    let a = c
        .call("PUT", &format!("{loc}?digest={good}"), &[], b"")
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(a.header("docker-content-digest"), good.to_string());
    assert_eq!(a.header("location"), format!("/v2/t/x/blobs/{good}"));
    assert_eq!(c.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");

    // Reads: whole, HEAD, ranges.
    let a = c.get(&format!("/v2/t/x/blobs/{good}")).await;
    assert_eq!(
        (a.status, a.body.as_slice()),
        (StatusCode::OK, &b"hello blob"[..])
    );
    let a = c
        .call("HEAD", &format!("/v2/t/x/blobs/{good}"), &[], b"")
        .await;
    assert_eq!((a.header("content-length"), a.body.len()), ("10", 0));
    let a = c
        .call(
            "GET",
            &format!("/v2/t/x/blobs/{good}"),
            &[("range", "bytes=6-")],
            b"",
        )
        .await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::PARTIAL_CONTENT, "blob")
    );
    assert_eq!(a.header("content-range"), "bytes 6-9/10");
    let a = c
        .call(
            "GET",
            &format!("/v2/t/x/blobs/{good}"),
            &[("range", "bytes=20-30")],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        c.get("/v2/t/x/blobs/sha256:nothex").await.code(),
        "DIGEST_INVALID"
    );

    // sha512 blobs.
    let mut h = berth_types::digest::Hasher::new(berth_types::digest::Algorithm::Sha512);
    h.update(b"long digest");
    let d512 = h.finish();
    let a = c
        .call(
            "POST",
            &format!("/v2/t/x/blobs/uploads/?digest={d512}"),
            &[],
            b"long digest",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(
        c.get(&format!("/v2/t/x/blobs/{d512}")).await.text(),
        "long digest"
    );

    // Cancel.
    let a = c.call("POST", "/v2/t/x/blobs/uploads/", &[], b"").await;
    let loc = a.header("location").to_string();
    assert_eq!(
        c.call("DELETE", &loc, &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.call("DELETE", &loc, &[], b"").await.code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    let a = c
        .call("PATCH", "/v2/t/x/blobs/uploads/../../x", &[], b"")
        .await;
    assert_eq!(
        a.code(),
        "BLOB_UPLOAD_UNKNOWN",
        "an upload id is only ever hex"
    );

    // Mounts: from a repository that has it, 201; from one that lacks it, a plain upload.
    let a = c
        .call(
            "POST",
            &format!("/v2/t/y/blobs/uploads/?mount={good}&from=t/z"),
            &[],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        c.get(&format!("/v2/t/y/blobs/{good}")).await.code(),
        "BLOB_UNKNOWN"
    );
    let a = c
        .call(
            "POST",
            &format!("/v2/t/y/blobs/uploads/?mount={good}&from=t%2Fx"),
            &[],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(
        c.get(&format!("/v2/t/y/blobs/{good}")).await.status,
        StatusCode::OK
    );

    // Manifests.
    let m = image(&good, &[]);
    for t in ["v1", "v2", "v3"] {
        let a = c.put_manifest("t/x", t, &m).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    }
    let md = Digest::sha256(m.as_bytes());
    let a = c.get("/v2/t/x/manifests/v2").await;
    assert_eq!(a.body, m.as_bytes());
    assert_eq!(
        a.header("content-type"),
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(a.header("docker-content-digest"), md.to_string());
    assert_eq!(
        c.call("HEAD", &format!("/v2/t/x/manifests/{md}"), &[], b"")
            .await
            .status,
        200
    );
    let missing = Digest::sha256(b"never pushed");
    let a = c
        .put_manifest("t/x", "bad", &image(&good, &[&missing]))
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );
    assert_eq!(
        c.get("/v2/t/x/manifests/bad").await.code(),
        "MANIFEST_UNKNOWN"
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{missing}","size":1}}]}}"#
    );
    let a = c
        .call(
            "PUT",
            "/v2/t/x/manifests/idx",
            &[("content-type", "application/vnd.oci.image.index.v1+json")],
            index.as_bytes(),
        )
        .await;
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
    assert_eq!(
        c.put_manifest("t/x", "j", "{not json").await.code(),
        "MANIFEST_INVALID"
    );
    assert_eq!(
        c.put_manifest("t/x", "j", r#"{"schemaVersion":1}"#)
            .await
            .code(),
        "MANIFEST_INVALID"
    );
    let a = c
        .call(
            "PUT",
            "/v2/t/x/manifests/j",
            &[("content-type", "application/vnd.oci.image.index.v1+json")],
            m.as_bytes(),
        )
        .await;
    assert_eq!(
        a.code(),
        "MANIFEST_INVALID",
        "a Content-Type that is not its mediaType"
    );
    assert_eq!(
        c.put_manifest("t/x", "-bad", &m).await.code(),
        "TAG_INVALID"
    );
    assert_eq!(
        c.put_manifest("t/x", &missing.to_string(), &m).await.code(),
        "DIGEST_INVALID"
    );
    assert_eq!(
        c.put_manifest("t/x", "sha256:xyz", &m).await.code(),
        "DIGEST_INVALID"
    );
    // By digest with tags as parameters.
    let a = c
        .put_manifest("t/x", &format!("{md}?tag=p1&tag=p2"), &m)
        .await;
    assert_eq!(
        (a.status, a.header("oci-tag")),
        (StatusCode::CREATED, "p1,p2")
    );

    // Tags, a page at a time; the catalog.
    let a = c.get("/v2/t/x/tags/list?n=2").await;
    assert_eq!(a.text(), r#"{"name":"t/x","tags":["p1","p2"]}"#);
    assert_eq!(
        a.header("link"),
        r#"</v2/t/x/tags/list?n=2&last=p2>; rel="next""#
    );
    let a = c.get("/v2/t/x/tags/list?n=10&last=p2").await;
    assert_eq!(a.text(), r#"{"name":"t/x","tags":["v1","v2","v3"]}"#);
    assert_eq!(
        c.get("/v2/t/x/tags/list?n=x").await.code(),
        "PAGINATION_NUMBER_INVALID"
    );
    assert_eq!(c.get("/v2/t/none/tags/list").await.code(), "NAME_UNKNOWN");
    assert_eq!(c.get("/v2/Bad/tags/list").await.code(), "NAME_INVALID");
    assert_eq!(c.get("/v2/a/../b/tags/list").await.code(), "NAME_INVALID");
    assert_eq!(
        c.get("/v2/_catalog").await.text(),
        r#"{"repositories":["t/x","t/y"]}"#
    );
    let a = c.get("/v2/_catalog?n=1").await;
    assert_eq!(a.text(), r#"{"repositories":["t/x"]}"#);
    assert!(a.header("link").contains("last=t/x"));

    // Referrers.
    let artifact = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{good}","size":10}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{}}},"annotations":{{"k":"v"}}}}"#,
        m.len()
    );
    let ad = Digest::sha256(artifact.as_bytes());
    let a = c.put_manifest("t/x", &ad.to_string(), &artifact).await;
    assert_eq!(a.header("oci-subject"), md.to_string());
    let a = c.get(&format!("/v2/t/x/referrers/{md}")).await;
    assert_eq!(
        a.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["manifests"][0]["digest"], ad.to_string());
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    assert_eq!(v["manifests"][0]["annotations"]["k"], "v");
    let a = c
        .get(&format!(
            "/v2/t/x/referrers/{md}?artifactType=application%2Fother"
        ))
        .await;
    assert_eq!(a.header("oci-filters-applied"), "artifactType");
    assert!(a.text().contains(r#""manifests":[]"#));
    // Deleting the referrer takes it out of the list.
    assert_eq!(
        c.call("DELETE", &format!("/v2/t/x/manifests/{ad}"), &[], b"")
            .await
            .status,
        202
    );
    assert!(c
        .get(&format!("/v2/t/x/referrers/{md}"))
        .await
        .text()
        .contains(r#""manifests":[]"#));

    // Search in Docker Hub's shape.
    let v: serde_json::Value =
        serde_json::from_slice(&c.get("/v1/search?q=t%2F&n=1").await.body).unwrap();
    assert_eq!(
        (v["num_results"].as_u64(), v["num_pages"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(v["results"][0]["name"], "t/x");

    // Deletes: a tag, then the manifest with the tags left on it.
    assert_eq!(
        c.call("DELETE", "/v2/t/x/manifests/v1", &[], b"")
            .await
            .status,
        202
    );
    assert_eq!(c.get("/v2/t/x/manifests/v1").await.status, 404);
    assert_eq!(
        c.call("DELETE", &format!("/v2/t/x/manifests/{md}"), &[], b"")
            .await
            .status,
        202
    );
    assert_eq!(
        c.get("/v2/t/x/manifests/v2").await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        c.get("/v2/t/x/tags/list").await.text(),
        r#"{"name":"t/x","tags":[]}"#
    );
    assert_eq!(
        c.call("DELETE", &format!("/v2/t/y/blobs/{good}"), &[], b"")
            .await
            .status,
        202
    );
    assert_eq!(
        c.get(&format!("/v2/t/y/blobs/{good}")).await.code(),
        "BLOB_UNKNOWN"
    );
    assert_eq!(c.get("/v2/nothing/here").await.code(), "NAME_UNKNOWN");

    // The metrics saw all of it.
    let t = c.get("/metrics").await.text();
    assert!(
        t.contains(
            r#"berth_registry_requests_total{route="upload",method="PATCH",status="416"} 1"#
        ),
        "{t}"
    );
    assert!(t.contains("berth_registry_blobs_committed_total 2"), "{t}");
    assert!(
        super::gc::verify(&*store).is_empty(),
        "{:?}",
        super::gc::verify(&*store)
    );
}

#[tokio::test]
async fn every_endpoint_on_the_memory_driver() {
    endpoints(Arc::new(Memory::default())).await;
}

#[tokio::test]
async fn every_endpoint_on_the_filesystem_driver() {
    let dir = tempfile::tempdir().unwrap();
    endpoints(Arc::new(Filesystem::new(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn an_upload_resumes_in_a_new_process_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Driver> = Arc::new(Filesystem::new(dir.path()).unwrap());
    let c = client(&quiet(), store.clone());
    let loc = c
        .call("POST", "/v2/r/blobs/uploads/", &[], b"")
        .await
        .header("location")
        .to_string();
    c.call("PATCH", &loc, &[], b"first half, ").await;
    // Another registry on the same store (a restart) knows nothing of the upload's hash.
    let c2 = client(&quiet(), store.clone());
    assert_eq!(c2.get(&loc).await.header("range"), "0-11");
    c2.call("PATCH", &loc, &[("content-range", "12-22")], b"second half")
        .await;
    let d = Digest::sha256(b"first half, second half");
    assert_eq!(
        c2.call("PUT", &format!("{loc}?digest={d}"), &[], b"")
            .await
            .status,
        201
    );

    // Over the blob limit: 413, the upload gone, nothing stored.
    let mut cfg = quiet();
    cfg.limits.blob = Some(8);
    cfg.limits.manifest = 64;
    let small = client(&cfg, store.clone());
    let big = b"more than eight bytes";
    let a = small
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={}", Digest::sha256(big)),
            &[],
            big,
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID")
    );
    let loc = small
        .call("POST", "/v2/r/blobs/uploads/", &[], b"")
        .await
        .header("location")
        .to_string();
    small.call("PATCH", &loc, &[], b"12345").await;
    let a = small.call("PATCH", &loc, &[], b"67890").await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(small.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");
    assert!(store.list("uploads").unwrap().is_empty());
    assert_eq!(store.list("blobs/sha256").unwrap().len(), 1);
    let a = small.put_manifest("r", "t", &image(&d, &[&d])).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Read-only: pulls work, every write is refused.
    let mut cfg = quiet();
    cfg.readonly = true;
    let ro = client(&cfg, store.clone());
    assert_eq!(ro.get(&format!("/v2/r/blobs/{d}")).await.status, 200);
    for (m, u) in [
        ("POST", "/v2/r/blobs/uploads/"),
        ("DELETE", &format!("/v2/r/blobs/{d}") as &str),
        ("PUT", "/v2/r/manifests/t"),
    ] {
        let a = ro.call(m, u, &[], b"").await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            "{m} {u}"
        );
    }
    assert!(ro.app.registry.visible("r", &d));
}

#[tokio::test]
async fn auth_refuses_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    let store: Arc<dyn Driver> = Arc::new(Memory::default());
    let mut cfg = quiet();
    cfg.auth = Some(super::config::AuthConfig {
        htpasswd: Some(file),
        ..Default::default()
    });
    let c = client(&cfg, store.clone());
    let a = c.get("/v2/").await;
    assert_eq!(
        (a.status, a.header("www-authenticate")),
        (StatusCode::UNAUTHORIZED, "Basic realm=\"Berth Registry\"")
    );
    let d = Digest::sha256(b"x");
    let a = c
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={d}"),
            &[],
            b"x",
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
    assert!(store.list("uploads").unwrap().is_empty() && store.list("blobs").unwrap().is_empty());
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:pw")
    );
    let a = c
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={d}"),
            &[("authorization", &basic)],
            b"x",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);

    // Tokens: a challenge, a token from /token, the request again with it.
    cfg.auth.as_mut().unwrap().token = Some(Default::default());
    let c = client(&cfg, store.clone());
    let a = c
        .call(
            "GET",
            &format!("/v2/r/blobs/{d}"),
            &[("host", "reg:5000")],
            b"",
        )
        .await;
    assert_eq!(
        a.header("www-authenticate"),
        "Bearer realm=\"http://reg:5000/token\",service=\"berth-registry\",scope=\"repository:r:pull\""
    );
    let t = c
        .call(
            "GET",
            "/token?service=berth-registry&scope=repository%3Ar%3Apull",
            &[("authorization", &basic)],
            b"",
        )
        .await;
    let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
    let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
    let a = c
        .call(
            "GET",
            &format!("/v2/r/blobs/{d}"),
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "x"));
    // That token holds pull, not push.
    let a = c
        .call(
            "POST",
            "/v2/r/blobs/uploads/",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.header("www-authenticate").contains("insufficient_scope"));
    let bad = c
        .call(
            "GET",
            "/token?scope=repository%3Ar%3Apull",
            &[("authorization", "Basic YWxpY2U6bm8=")],
            b"",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
}
