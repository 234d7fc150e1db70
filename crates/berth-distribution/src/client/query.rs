//! Questions to a registry that store nothing: the tags of a repository, what a name
//! resolves to (`docker manifest inspect`, `GET /distribution/{name}/json`), and search —
//! Docker Hub's v1 search, or for a private registry its search endpoint when it has one
//! (Berth's does) and its catalog otherwise (Docker cannot search private registries).

use std::sync::Arc;

use berth_types::auth::AuthConfig;
use berth_types::Reference;
use reqwest::header::{ACCEPT, LINK};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::auth::error_message;
use super::pull::manifest;
use super::{api_host, status_text, Client, Session};

/// Pages of a list endpoint are followed up to this many entries.
const LIST_LIMIT: usize = 10_000;

/// Docker Hub's search host.
const DOCKER_HUB_INDEX: &str = "index.docker.io";

/// What a name resolves to in its registry.
pub struct Resolved {
    /// The manifest (or index) as the registry serves it.
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: berth_types::Digest,
    /// `{os, architecture, variant}` of each image it names.
    pub platforms: Vec<Value>,
}

/// `/v2/...` lists (`tags`, `repositories`) across pages (`Link: <...>; rel="next"`).
async fn list_pages(s: &mut Session, first: String, key: &str) -> Result<Vec<String>, String> {
    let mut url = first;
    let mut out = Vec::new();
    loop {
        let resp = s.send(|c, _| c.get(&url), true).await?;
        let status = resp.status();
        let next = resp
            .headers()
            .get(LINK)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split_once('<'))
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(u, _)| s.resolve(u));
        let body = resp.bytes().await.map_err(|e| super::error_text(&e))?;
        if !status.is_success() {
            let msg = error_message(&body).unwrap_or_else(|| status_text(status));
            return Err(format!("{}: {msg}", s.endpoint.host));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{}: the list is not JSON: {e}", s.endpoint.host))?;
        out.extend(
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from)),
        );
        match next {
            Some(n) if out.len() < LIST_LIMIT => url = n,
            _ => return Ok(out),
        }
    }
}

/// Splits `docker search`'s term into a registry (when it names one, as a reference
/// would: a first part with a dot or a colon, or `localhost`) and the words to look for.
pub fn search_target(term: &str) -> (Option<&str>, &str) {
    match term.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, term),
    }
}

impl Client {
    /// The tags of `repository`, as its registry lists them.
    pub async fn tags(
        self: &Arc<Self>,
        repository: &Reference,
        auth: &AuthConfig,
    ) -> Result<Vec<String>, String> {
        let repo = repository.path().to_string();
        let host = api_host(repository.domain()).to_string();
        let mut s = self
            .session(&host, vec![format!("repository:{repo}:pull")], auth)
            .await?;
        let first = s.url(&format!("/v2/{repo}/tags/list?n=1000"));
        list_pages(&mut s, first, "tags").await
    }

    /// What `reference` names in its registry, with the platforms of its images.
    pub async fn resolve(
        self: &Arc<Self>,
        reference: &Reference,
        auth: &AuthConfig,
    ) -> Result<Resolved, String> {
        let repo = reference.path().to_string();
        let host = api_host(reference.domain()).to_string();
        let mut s = self
            .session(&host, vec![format!("repository:{repo}:pull")], auth)
            .await?;
        let want = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let (bytes, digest, media_type) = manifest(&mut s, reference, &repo, &want).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
        let platforms = if let Some(list) = v["manifests"].as_array() {
            list.iter()
                .filter(|m| m["platform"].is_object())
                .map(|m| m["platform"].clone())
                .collect()
        } else {
            // One image: its platform is in its config.
            let config = v["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let url = s.url(&format!("/v2/{repo}/blobs/{config}"));
            let resp = s.send(|c, _| c.get(&url), true).await?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| super::error_text(&e))?;
            if !status.is_success() {
                return Err(format!(
                    "fetching the config of {}: {}",
                    reference.familiar(),
                    status_text(status)
                ));
            }
            let c: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut p = json!({"architecture": c["architecture"], "os": c["os"]});
            if let Some(variant) = c["variant"].as_str() {
                p["variant"] = json!(variant);
            }
            vec![p]
        };
        let media_type = v["mediaType"]
            .as_str()
            .map(String::from)
            .unwrap_or(media_type);
        Ok(Resolved {
            bytes,
            media_type,
            digest,
            platforms,
        })
    }

    /// `docker search`: up to `limit` results in Docker Hub's shape (`name`,
    /// `description`, `star_count`, `is_official`, `is_automated`).
    pub async fn search(
        self: &Arc<Self>,
        term: &str,
        limit: usize,
        auth: &AuthConfig,
    ) -> Result<Vec<Value>, String> {
        let (registry, words) = search_target(term);
        let host = registry.unwrap_or(DOCKER_HUB_INDEX).to_string();
        let scopes = vec!["registry:catalog:*".to_string()];
        let mut s = self.session(&host, scopes, auth).await?;
        let url = s.url("/v1/search");
        let query = [("q", words.to_string()), ("n", limit.to_string())];
        let resp = s
            .send(
                |c, _| c.get(&url).query(&query).header(ACCEPT, "application/json"),
                true,
            )
            .await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| super::error_text(&e))?;
        let found: Option<Vec<Value>> = status
            .is_success()
            .then(|| serde_json::from_slice::<Value>(&body).ok())
            .flatten()
            .and_then(|v| v["results"].as_array().cloned());
        let mut results = match (found, registry) {
            (Some(r), _) => r,
            // A registry without a search endpoint: its catalog, filtered here.
            (None, Some(_))
                if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) =>
            {
                let first = s.url("/v2/_catalog?n=1000");
                list_pages(&mut s, first, "repositories")
                    .await?
                    .into_iter()
                    .filter(|r| r.contains(words))
                    .map(|r| {
                        json!({"name": r, "description": "", "star_count": 0,
                            "is_official": false, "is_automated": false})
                    })
                    .collect()
            }
            _ => {
                let msg = error_message(&body).unwrap_or_else(|| status_text(status));
                return Err(format!("Error searching {host}: {msg}"));
            }
        };
        // Names a private registry gives are pulled through it: say so in the name.
        if let Some(r) = registry {
            for v in &mut results {
                let name = v["name"].as_str().unwrap_or_default().to_string();
                if !name.starts_with(&format!("{r}/")) {
                    v["name"] = json!(format!("{r}/{name}"));
                }
            }
        }
        results.truncate(limit);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_name_a_registry_as_references_do() {
        assert_eq!(search_target("busybox"), (None, "busybox"));
        assert_eq!(search_target("library/busybox"), (None, "library/busybox"));
        assert_eq!(
            search_target("127.0.0.1:5000/busy"),
            (Some("127.0.0.1:5000"), "busy")
        );
        assert_eq!(
            search_target("registry.example/team/app"),
            (Some("registry.example"), "team/app")
        );
        assert_eq!(search_target("localhost/x"), (Some("localhost"), "x"));
    }
}
