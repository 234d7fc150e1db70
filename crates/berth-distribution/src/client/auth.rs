//! Answering a registry's `WWW-Authenticate` challenge: basic credentials, or a bearer
//! token from the realm it names (anonymous, with basic credentials, with an identity
//! token through the OAuth2 refresh grant, or a registry token used as it is). Answers are
//! kept per registry, scopes and user until they expire.

use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use serde_json::Value;

use super::{error_text, status_text, Session};

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// `Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` (quoted values may hold commas and escaped quotes).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

impl Session {
    /// The key answers are kept under: registry, scopes, user.
    fn cache_key(&self) -> String {
        let user = self
            .auth
            .basic()
            .map(|(u, _)| u)
            .unwrap_or_else(|| self.auth.identitytoken.clone());
        format!(
            "{}|{}|{}",
            self.endpoint.base,
            self.scopes.join(" "),
            berth_types::Digest::sha256(format!("{user}\0{}", self.auth.registrytoken).as_bytes())
        )
    }

    pub(super) fn cached_authorization(&self) -> Option<HeaderValue> {
        let key = self.cache_key();
        let mut tokens = self.client.tokens.lock().expect("tokens lock");
        match tokens.get(&key) {
            Some((v, until)) if *until > Instant::now() => HeaderValue::from_str(v).ok(),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remember(&mut self, value: String, lifetime: Duration) -> Result<(), String> {
        let header = HeaderValue::from_str(&value).map_err(|e| format!("authorization: {e}"))?;
        self.authorization = Some(header);
        self.client
            .tokens
            .lock()
            .expect("tokens lock")
            .insert(self.cache_key(), (value, Instant::now() + lifetime));
        Ok(())
    }

    /// Answers a challenge; later requests of the session carry the answer.
    pub(super) async fn answer(&mut self, challenge: &Challenge) -> Result<(), String> {
        match challenge {
            Challenge::Basic => {
                let Some((user, pass)) = self.auth.basic() else {
                    return Err("no basic auth credentials".into());
                };
                let v = format!("Basic {}", berth_types::auth::encode_basic(&user, &pass));
                self.remember(v, Duration::from_secs(3600))
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                if !self.auth.registrytoken.is_empty() {
                    let v = format!("Bearer {}", self.auth.registrytoken);
                    return self.remember(v, Duration::from_secs(3600));
                }
                let mut scopes = self.scopes.clone();
                if let Some(s) = scope {
                    for s in s.split(' ').filter(|s| !s.is_empty()) {
                        if !scopes.iter().any(|x| x == s) {
                            scopes.push(s.to_string());
                        }
                    }
                }
                let (token, lifetime) = self.token(realm, service.as_deref(), &scopes).await?;
                self.remember(format!("Bearer {token}"), lifetime)
            }
        }
    }

    /// A token from the realm.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, Duration), String> {
        let http = &self.endpoint.http;
        let resp = if !self.auth.identitytoken.is_empty() {
            let mut form = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", self.auth.identitytoken.clone()),
                ("client_id", "berth".to_string()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_string()));
            }
            http.post(realm).form(&form).send().await
        } else {
            let mut query: Vec<(&str, &str)> = Vec::new();
            if let Some(s) = service {
                query.push(("service", s));
            }
            for s in scopes {
                query.push(("scope", s));
            }
            let mut rb = http.get(realm).query(&query);
            if let Some((user, pass)) = self.auth.basic() {
                query.push(("account", &user));
                rb = http.get(realm).query(&query).basic_auth(&user, Some(&pass));
            }
            rb.send().await
        };
        let resp =
            resp.map_err(|e| format!("fetching a token from {realm}: {}", error_text(&e)))?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let msg = error_message(&body).unwrap_or_else(|| status_text(status));
            return Err(format!("Get \"{realm}\": unauthorized: {msg}"));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the token server at {realm} answered with no JSON: {e}"))?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token server at {realm} gave no token"))?;
        // Tokens live 60 s unless told otherwise; stop using one a little before.
        let secs = v["expires_in"].as_u64().unwrap_or(60).max(10);
        Ok((token.to_string(), Duration::from_secs(secs * 9 / 10)))
    }
}

/// The message of a registry's or token server's JSON error body.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if let Some(e) = v["errors"].as_array().and_then(|a| a.first()) {
        let msg = e["message"].as_str().unwrap_or_default();
        let code = e["code"].as_str().unwrap_or_default().to_lowercase();
        return Some(if code.is_empty() {
            msg.to_string()
        } else {
            format!("{}: {msg}", code.replace('_', " "))
        });
    }
    v["details"]
        .as_str()
        .or(v["message"].as_str())
        .or(v["error"].as_str())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_like_docker() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://127.0.0.1:1/t, scope="a:b:pull,push""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: Some("a:b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(
            parse_params(r#"a="x\"y,z", b=2"#),
            vec![("a".into(), "x\"y,z".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#).as_deref(),
            Some("denied: no")
        );
        assert_eq!(
            error_message(br#"{"details":"incorrect username or password"}"#).as_deref(),
            Some("incorrect username or password")
        );
        assert_eq!(error_message(b"<html>"), None);
    }
}
