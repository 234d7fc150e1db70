//! `berth registry gc` and `berth registry verify`, on a store no registry is serving.
//!
//! gc marks every blob a kept manifest names (its config, layers, child manifests, and the
//! manifests themselves) and sweeps the rest, with the repositories' links to them;
//! `--delete-untagged` first drops the manifests no tag reaches (through indexes and
//! referrers). Abandoned uploads older than the configured age go too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use berth_types::digest::Hasher;
use berth_types::Digest;

use super::api::{blob_key, layer_key, repo_key, repositories, revision_key};
use super::storage::Driver;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub manifests_removed: Vec<(String, Digest)>,
    pub blobs_removed: Vec<Digest>,
    pub bytes_freed: u64,
    pub links_removed: usize,
    pub uploads_removed: usize,
}

fn digests_below(store: &dyn Driver, key: &str) -> Vec<Digest> {
    let mut out = Vec::new();
    for alg in store.list(key).unwrap_or_default() {
        for hex in store.list(&format!("{key}/{alg}")).unwrap_or_default() {
            if let Ok(d) = format!("{alg}:{hex}").parse() {
                out.push(d);
            }
        }
    }
    out
}

fn manifest_json(store: &dyn Driver, d: &Digest) -> serde_json::Value {
    store
        .get(&blob_key(d))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The digests a manifest names: config, layers, child manifests, subject excluded.
fn references(v: &serde_json::Value) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut add = |x: &serde_json::Value| {
        if let Some(d) = x["digest"].as_str().and_then(|s| s.parse().ok()) {
            out.push(d);
        }
    };
    add(&v["config"]);
    for key in ["layers", "manifests"] {
        for x in v[key].as_array().into_iter().flatten() {
            add(x);
        }
    }
    out
}

fn tags(store: &dyn Driver, name: &str) -> BTreeMap<String, Digest> {
    let dir = format!("{}/_manifests/tags", repo_key(name));
    store
        .list(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let b = store.get(&format!("{dir}/{t}")).ok()?;
            Some((t, String::from_utf8_lossy(&b).trim().parse().ok()?))
        })
        .collect()
}

/// The manifests of `name` a tag reaches, through index children and referrers.
fn reachable(store: &dyn Driver, name: &str, revisions: &BTreeSet<Digest>) -> BTreeSet<Digest> {
    // subject → its referrers, read from the manifests themselves.
    let mut referrers: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
    for d in revisions {
        let v = manifest_json(store, d);
        if let Some(s) = v["subject"]["digest"].as_str().and_then(|s| s.parse().ok()) {
            referrers.entry(s).or_default().push(d.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo: Vec<Digest> = tags(store, name).into_values().collect();
    while let Some(d) = todo.pop() {
        if !revisions.contains(&d) || !seen.insert(d.clone()) {
            continue;
        }
        todo.extend(references(&manifest_json(store, &d)));
        todo.extend(referrers.get(&d).into_iter().flatten().cloned());
    }
    seen
}

pub fn collect(
    store: &dyn Driver,
    dry_run: bool,
    delete_untagged: bool,
    upload_max_age_secs: u64,
) -> std::io::Result<Report> {
    let mut report = Report::default();
    let mut marked: BTreeSet<Digest> = BTreeSet::new();
    let repos = repositories(store);
    for name in &repos {
        let revisions: BTreeSet<Digest> =
            digests_below(store, &format!("{}/_manifests/revisions", repo_key(name)))
                .into_iter()
                .collect();
        let keep = if delete_untagged {
            reachable(store, name, &revisions)
        } else {
            revisions.clone()
        };
        for d in revisions.difference(&keep) {
            report.manifests_removed.push((name.clone(), d.clone()));
            if !dry_run {
                let v = manifest_json(store, d);
                if let Some(s) = v["subject"]["digest"]
                    .as_str()
                    .and_then(|s| s.parse::<Digest>().ok())
                {
                    let key = format!(
                        "{}/_referrers/{}/{}/{}-{}",
                        repo_key(name),
                        s.algorithm().as_str(),
                        s.hex(),
                        d.algorithm().as_str(),
                        d.hex()
                    );
                    let _ = store.delete(&key);
                }
                store.delete(&revision_key(name, d))?;
            }
        }
        for d in &keep {
            marked.insert(d.clone());
            marked.extend(references(&manifest_json(store, d)));
        }
    }
    for d in digests_below(store, "blobs") {
        if marked.contains(&d) {
            continue;
        }
        report.bytes_freed += store.size(&blob_key(&d)).unwrap_or(0);
        if !dry_run {
            store.delete(&blob_key(&d))?;
        }
        report.blobs_removed.push(d);
    }
    // Links to swept blobs would make repositories claim what is gone.
    let swept: BTreeSet<&Digest> = report.blobs_removed.iter().collect();
    for name in &repos {
        for d in digests_below(store, &format!("{}/_layers", repo_key(name))) {
            if swept.contains(&d) {
                report.links_removed += 1;
                if !dry_run {
                    let _ = store.delete(&layer_key(name, &d));
                }
            }
        }
    }
    let now = super::now_secs();
    for id in store.list("uploads").unwrap_or_default() {
        let key = format!("uploads/{id}");
        let age = now.saturating_sub(store.modified(&key).unwrap_or(now));
        if age > upload_max_age_secs {
            report.uploads_removed += 1;
            if !dry_run {
                let _ = store.delete(&key);
            }
        }
    }
    Ok(report)
}

/// Everything wrong with a store: blobs whose bytes are not their digest, links to blobs
/// that are not there, manifests naming what their repository cannot see, tags and
/// referrers pointing nowhere, debris of interrupted writes.
pub fn verify(store: &dyn Driver) -> Vec<String> {
    let mut problems = Vec::new();
    for d in digests_below(store, "blobs") {
        let key = blob_key(&d);
        let got = store.reader(&key, 0).and_then(|mut r| {
            let mut h = Hasher::new(d.algorithm());
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(h.finish());
                }
                h.update(&buf[..n]);
            }
        });
        match got {
            Ok(g) if g == d => {}
            Ok(g) => problems.push(format!("blob {d}: its content is {g}")),
            Err(e) => problems.push(format!("blob {d}: {e}")),
        }
    }
    for alg in store.list("blobs").unwrap_or_default() {
        if !matches!(alg.as_str(), "sha256" | "sha512") {
            problems.push(format!("blobs/{alg}: not a digest algorithm"));
        }
        for f in store.list(&format!("blobs/{alg}")).unwrap_or_default() {
            if format!("{alg}:{f}").parse::<Digest>().is_err() {
                problems.push(format!("blobs/{alg}/{f}: debris (not a digest)"));
            }
        }
    }
    let exists = |d: &Digest| store.size(&blob_key(d)).is_ok();
    for name in repositories(store) {
        let layers: BTreeSet<Digest> =
            digests_below(store, &format!("{}/_layers", repo_key(&name)))
                .into_iter()
                .collect();
        let revisions: BTreeSet<Digest> =
            digests_below(store, &format!("{}/_manifests/revisions", repo_key(&name)))
                .into_iter()
                .collect();
        for d in layers.iter().filter(|d| !exists(d)) {
            problems.push(format!("{name}: links blob {d}, which is not stored"));
        }
        for d in &revisions {
            if !exists(d) {
                problems.push(format!("{name}: manifest {d} is not stored"));
                continue;
            }
            let v = manifest_json(store, d);
            if !v.is_object() {
                problems.push(format!("{name}: manifest {d} is not JSON"));
                continue;
            }
            for layer in v["layers"].as_array().into_iter().flatten() {
                let t = layer["mediaType"].as_str().unwrap_or_default();
                if t.contains("foreign") || t.contains("nondistributable") {
                    continue;
                }
                if let Some(r) = layer["digest"]
                    .as_str()
                    .and_then(|s| s.parse::<Digest>().ok())
                {
                    if !(exists(&r) && (layers.contains(&r) || revisions.contains(&r))) {
                        problems.push(format!(
                            "{name}: manifest {d} names layer {r}, which it cannot see"
                        ));
                    }
                }
            }
            if let Some(r) = v["config"]["digest"]
                .as_str()
                .and_then(|s| s.parse::<Digest>().ok())
            {
                if !(exists(&r) && (layers.contains(&r) || revisions.contains(&r))) {
                    problems.push(format!(
                        "{name}: manifest {d} names config {r}, which it cannot see"
                    ));
                }
            }
            for m in v["manifests"].as_array().into_iter().flatten() {
                if let Some(r) = m["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()) {
                    if !revisions.contains(&r) {
                        problems.push(format!(
                            "{name}: index {d} names manifest {r}, which it lacks"
                        ));
                    }
                }
            }
        }
        for (t, d) in tags(store, &name) {
            if !revisions.contains(&d) {
                problems.push(format!("{name}:{t} points at {d}, which it lacks"));
            }
        }
        let dir = format!("{}/_manifests/tags", repo_key(&name));
        for t in store.list(&dir).unwrap_or_default() {
            if !super::api::valid_tag(&t) {
                problems.push(format!("{name}: {dir}/{t}: debris (not a tag)"));
            }
        }
        let refs = format!("{}/_referrers", repo_key(&name));
        for alg in store.list(&refs).unwrap_or_default() {
            for hex in store.list(&format!("{refs}/{alg}")).unwrap_or_default() {
                for m in store
                    .list(&format!("{refs}/{alg}/{hex}"))
                    .unwrap_or_default()
                {
                    let d = m.replacen('-', ":", 1).parse::<Digest>();
                    if !d.is_ok_and(|d| revisions.contains(&d)) {
                        problems.push(format!(
                            "{name}: referrer {m} of {alg}:{hex} is not a manifest of it"
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::storage::Memory;

    fn put_blob(s: &dyn Driver, name: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256(data);
        s.put(&blob_key(&d), data).unwrap();
        s.put(&layer_key(name, &d), b"").unwrap();
        d
    }

    fn put_manifest(s: &dyn Driver, name: &str, v: serde_json::Value, tag: Option<&str>) -> Digest {
        let bytes = v.to_string();
        let d = Digest::sha256(bytes.as_bytes());
        s.put(&blob_key(&d), bytes.as_bytes()).unwrap();
        s.put(
            &revision_key(name, &d),
            b"application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
        if let Some(t) = tag {
            s.put(
                &format!("{}/_manifests/tags/{t}", repo_key(name)),
                d.to_string().as_bytes(),
            )
            .unwrap();
        }
        d
    }

    fn image(config: &Digest, layers: &[&Digest]) -> serde_json::Value {
        serde_json::json!({"schemaVersion": 2, "config": {"digest": config.to_string()},
            "layers": layers.iter().map(|l| serde_json::json!({"digest": l.to_string()})).collect::<Vec<_>>()})
    }

    #[test]
    fn sweeps_what_nothing_names_and_keeps_the_rest() {
        let s = Memory::default();
        let cfg = put_blob(&s, "a", b"config");
        let shared = put_blob(&s, "a", b"shared layer");
        let old = put_blob(&s, "a", b"old layer");
        let stray = put_blob(&s, "a", b"pushed, never named");
        let _v1 = put_manifest(&s, "a", image(&cfg, &[&shared, &old]), None);
        let v2 = put_manifest(&s, "a", image(&cfg, &[&shared]), Some("latest"));
        s.put(&layer_key("b", &shared), b"").unwrap();
        s.put(&layer_key("b", &cfg), b"").unwrap();
        put_manifest(&s, "b", image(&cfg, &[&shared]), Some("x"));
        assert!(verify(&s).is_empty(), "{:?}", verify(&s));
        // Without --delete-untagged only the stray blob goes.
        let dry = collect(&s, true, false, u64::MAX).unwrap();
        assert_eq!(dry.blobs_removed, vec![stray.clone()]);
        assert!(
            s.size(&blob_key(&stray)).is_ok(),
            "a dry run removes nothing"
        );
        let r = collect(&s, false, false, u64::MAX).unwrap();
        assert_eq!(r.blobs_removed, vec![stray.clone()]);
        assert_eq!(r.bytes_freed, 19);
        assert_eq!(r.links_removed, 1);
        assert!(verify(&s).is_empty(), "{:?}", verify(&s));
        // With it, the untagged v1 and then its old layer go; v2's and b's stay.
        let r = collect(&s, false, true, u64::MAX).unwrap();
        assert_eq!(r.manifests_removed.len(), 1);
        assert!(r.blobs_removed.contains(&old));
        assert!(!r.blobs_removed.contains(&shared));
        assert!(s.size(&blob_key(&v2)).is_ok());
        assert!(verify(&s).is_empty(), "{:?}", verify(&s));
    }

    #[test]
    fn verify_finds_damage() {
        let s = Memory::default();
        let cfg = put_blob(&s, "a", b"config");
        let layer = put_blob(&s, "a", b"layer");
        put_manifest(&s, "a", image(&cfg, &[&layer]), Some("t"));
        s.put(&blob_key(&layer), b"tampered").unwrap();
        s.delete(&blob_key(&cfg)).unwrap();
        s.put(
            &format!("{}/_manifests/tags/gone", repo_key("a")),
            Digest::sha256(b"x").to_string().as_bytes(),
        )
        .unwrap();
        let p = verify(&s).join("\n");
        assert!(p.contains(&format!("blob {layer}: its content is")), "{p}");
        assert!(
            p.contains(&format!("links blob {cfg}, which is not stored")),
            "{p}"
        );
        assert!(p.contains("a:gone points at"), "{p}");
    }

    #[test]
    fn old_uploads_are_purged() {
        let s = Memory::default();
        s.create("uploads/0123").unwrap();
        assert_eq!(collect(&s, false, false, 3600).unwrap().uploads_removed, 0);
        assert_eq!(
            collect(&s, false, false, 0).unwrap().uploads_removed,
            0,
            "not older than 0 s yet"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(collect(&s, false, false, 0).unwrap().uploads_removed, 1);
        assert!(s.list("uploads").unwrap().is_empty());
    }
}
