//! Who may do what: accounts from an htpasswd file (bcrypt), rules that grant pull, push
//! and delete per repository pattern, and either HTTP basic auth on every request or
//! bearer tokens from the built-in issuer (`GET /token`, Docker Hub's flow: a 401 with a
//! challenge, a token for the scopes asked, the request again with it).
//!
//! Tokens are JWTs signed with HMAC-SHA256 by a key only this process knows (or one from
//! a file, for several registries behind one issuer); they name the account and the
//! actions granted per repository, and expire.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::config::{AccessRule, AuthConfig, TokenConfig};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One thing a request needs: an action on a repository (or `registry:catalog:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub kind: &'static str,
    pub name: String,
    pub action: &'static str,
}

impl Need {
    pub fn repo(name: &str, action: &'static str) -> Need {
        Need {
            kind: "repository",
            name: name.to_string(),
            action,
        }
    }

    pub fn catalog() -> Need {
        Need {
            kind: "registry",
            name: "catalog".into(),
            action: "*",
        }
    }
}

/// Why a request is refused, and what to tell the client.
#[derive(Debug)]
pub enum Refusal {
    /// No (valid) credentials: 401 with a challenge.
    Unauthorized { challenge: String, message: String },
    /// Signed in, not allowed: 403.
    Denied(String),
}

pub struct Auth {
    users: HashMap<String, String>,
    rules: Vec<AccessRule>,
    realm: String,
    token: Option<(TokenConfig, Vec<u8>)>,
    /// Credentials bcrypt already accepted (sha256 of user and password), so a client
    /// that sends basic auth on every request pays bcrypt once.
    verified: Mutex<HashSet<[u8; 32]>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}:{1}: {2}")]
    Entry(String, usize, String),
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        let path = cfg.htpasswd.as_deref().unwrap_or(Path::new(""));
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read(shown.clone(), e))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(AuthError::Entry(shown, i + 1, "no ':' in the line".into()));
            };
            if !hash.starts_with("$2") {
                return Err(AuthError::Entry(
                    shown,
                    i + 1,
                    format!("{user}: only bcrypt entries are taken (htpasswd -B)"),
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        let token = match &cfg.token {
            None => None,
            Some(t) => {
                let key = match &t.key {
                    Some(p) => {
                        std::fs::read(p).map_err(|e| AuthError::Read(p.display().to_string(), e))?
                    }
                    None => {
                        let mut k = vec![0u8; 32];
                        std::fs::File::open("/dev/urandom")
                            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut k))
                            .map_err(|e| AuthError::Read("/dev/urandom".into(), e))?;
                        k
                    }
                };
                Some((t.clone(), key))
            }
        };
        Ok(Auth {
            users,
            rules: cfg.access.clone(),
            realm: cfg.realm.clone().unwrap_or_else(|| "Berth Registry".into()),
            token,
            verified: Mutex::new(HashSet::new()),
        })
    }

    pub fn uses_tokens(&self) -> bool {
        self.token.is_some()
    }

    /// The account these credentials sign in, or why not.
    fn sign_in(&self, user: &str, password: &str) -> bool {
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let cache = || self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache().contains(&key) {
            return true;
        }
        let ok = self
            .users
            .get(user)
            .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false));
        if ok {
            cache().insert(key);
        }
        ok
    }

    /// `account` (None: anonymous) may do `action` on repository `name`.
    pub fn allowed(&self, account: Option<&str>, name: &str, action: &str) -> bool {
        if self.rules.is_empty() {
            return account.is_some();
        }
        self.rules.iter().any(|r| {
            let who = match account {
                None => r.account == "anonymous",
                Some(a) => r.account == "*" || r.account == a,
            };
            who && glob(&r.name, name) && r.actions.iter().any(|x| x == action || x == "*")
        })
    }

    fn basic(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
        let v = headers
            .get(axum::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    fn challenge(&self, needs: &[Need], host: &str, scheme: &str, error: bool) -> String {
        match &self.token {
            None => format!("Basic realm=\"{}\"", self.realm),
            Some((t, _)) => {
                let realm = t
                    .realm
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{host}/token"));
                let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.service);
                let scopes = scopes_of(needs);
                if !scopes.is_empty() {
                    c.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
                }
                if error {
                    c.push_str(",error=\"insufficient_scope\"");
                }
                c
            }
        }
    }

    /// The account a request acts as, if it may do all of `needs`. `host` and `scheme`
    /// make the default token realm (this registry's own `/token`).
    pub fn check(
        &self,
        headers: &axum::http::HeaderMap,
        needs: &[Need],
        host: &str,
        scheme: &str,
    ) -> Result<Option<String>, Refusal> {
        let unauthorized = |msg: &str, error: bool| Refusal::Unauthorized {
            challenge: self.challenge(needs, host, scheme, error),
            message: msg.to_string(),
        };
        if let Some((_, key)) = &self.token {
            let bearer = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")));
            let Some(token) = bearer else {
                // No token: anonymous access still works where the rules grant it (but
                // the base endpoint always challenges, so clients learn how to sign in).
                if !needs.is_empty() && needs.iter().all(|n| self.anonymous_may(n)) {
                    return Ok(None);
                }
                return Err(unauthorized("authentication required", false));
            };
            let claims = self
                .verify(token.trim(), key)
                .ok_or_else(|| unauthorized("invalid or expired token", false))?;
            let granted = |n: &Need| {
                claims["access"].as_array().into_iter().flatten().any(|a| {
                    a["type"] == n.kind
                        && a["name"] == n.name.as_str()
                        && a["actions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|x| x == n.action || x == "*")
                })
            };
            if !needs.iter().all(granted) {
                return Err(unauthorized("insufficient scope", true));
            }
            let sub = claims["sub"].as_str().filter(|s| !s.is_empty());
            return Ok(sub.map(str::to_string));
        }
        let account = match Self::basic(headers) {
            Some((u, p)) if self.sign_in(&u, &p) => Some(u),
            Some(_) => return Err(unauthorized("invalid username or password", false)),
            None => None,
        };
        let ok = needs.iter().all(|n| match n.kind {
            "registry" => account.is_some() || self.anonymous_may(n),
            _ => self.allowed(account.as_deref(), &n.name, n.action),
        });
        match (ok, &account) {
            (true, None) if needs.is_empty() => Err(unauthorized("authentication required", false)),
            (true, _) => Ok(account),
            (false, None) => Err(unauthorized("authentication required", false)),
            (false, Some(a)) => Err(Refusal::Denied(format!(
                "requested access to the resource is denied for {a}"
            ))),
        }
    }

    fn anonymous_may(&self, n: &Need) -> bool {
        match n.kind {
            "registry" => self.rules.iter().any(|r| r.account == "anonymous"),
            _ => self.allowed(None, &n.name, n.action),
        }
    }

    /// `GET /token?service=&scope=…` with optional basic credentials: a token for what of
    /// the scopes the account may have (Docker Hub's answer shape).
    pub fn issue(
        &self,
        headers: &axum::http::HeaderMap,
        scopes: &[String],
    ) -> Result<serde_json::Value, Refusal> {
        self.grant(Asker::Password(Self::basic(headers)), scopes, false)
    }

    /// `POST /token`, OAuth2's form (containerd's way): `grant_type=password` with
    /// `username`/`password`, or `refresh_token`; `access_type=offline` asks for a refresh
    /// token too.
    pub fn issue_oauth(&self, form: &str) -> Result<serde_json::Value, Refusal> {
        let field = |k: &str| super::api::query(Some(form), k);
        let scopes: Vec<String> = super::api::query_all(Some(form), "scope");
        let offline = field("access_type").as_deref() == Some("offline");
        let asker = match field("grant_type").as_deref() {
            Some("password") => Asker::Password(Some((
                field("username").unwrap_or_default(),
                field("password").unwrap_or_default(),
            ))),
            Some("refresh_token") => Asker::Refresh(field("refresh_token").unwrap_or_default()),
            other => {
                return Err(Refusal::Denied(format!(
                    "unsupported grant_type {:?} (password, refresh_token)",
                    other.unwrap_or("")
                )))
            }
        };
        self.grant(asker, scopes.as_slice(), offline)
    }

    fn sign(key: &[u8], claims: &serde_json::Value) -> String {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = B64.encode(claims.to_string());
        let signing = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(signing.as_bytes());
        format!("{signing}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn grant(
        &self,
        asker: Asker,
        scopes: &[String],
        offline: bool,
    ) -> Result<serde_json::Value, Refusal> {
        let Some((t, key)) = &self.token else {
            return Err(Refusal::Denied("this registry issues no tokens".into()));
        };
        let refused = |message: &str| Refusal::Unauthorized {
            challenge: format!("Basic realm=\"{}\"", self.realm),
            message: message.into(),
        };
        let account = match asker {
            Asker::Password(Some((u, p))) if self.sign_in(&u, &p) => Some(u),
            Asker::Password(Some(_)) => return Err(refused("invalid username or password")),
            Asker::Password(None) => None,
            Asker::Refresh(r) => {
                let claims = self
                    .verify_any(&r, key)
                    .filter(|c| c["typ"] == "refresh")
                    .ok_or_else(|| refused("invalid or expired refresh token"))?;
                let sub = claims["sub"].as_str().unwrap_or_default();
                // An account removed since keeps nothing.
                if !self.users.contains_key(sub) {
                    return Err(refused("invalid or expired refresh token"));
                }
                Some(sub.to_string())
            }
        };
        let mut access = Vec::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')) {
            let Some((kind, rest)) = s.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let granted: Vec<&str> = match kind {
                "repository" => actions
                    .split(',')
                    .filter(|a| matches!(*a, "pull" | "push" | "delete"))
                    .filter(|a| self.allowed(account.as_deref(), name, a))
                    .collect(),
                "registry" if name == "catalog" => {
                    if account.is_some() || self.rules.iter().any(|r| r.account == "anonymous") {
                        vec!["*"]
                    } else {
                        vec![]
                    }
                }
                _ => vec![],
            };
            if !granted.is_empty() {
                access.push(json!({"type": kind, "name": name, "actions": granted}));
            }
        }
        let now = super::now_secs();
        let sub = account.clone().unwrap_or_default();
        let claims = json!({
            "iss": t.issuer, "sub": sub, "aud": t.service,
            "iat": now, "nbf": now.saturating_sub(5), "exp": now + t.expiry,
            "jti": super::api::uuid(), "access": access,
        });
        let token = Self::sign(key, &claims);
        let mut answer = json!({"token": token, "access_token": token, "expires_in": t.expiry,
            "issued_at": berth_types::time::now_rfc3339()});
        if offline && account.is_some() {
            let refresh = json!({"iss": t.issuer, "sub": sub, "aud": t.service, "typ": "refresh",
                "iat": now, "nbf": now.saturating_sub(5), "exp": now + 30 * 86400,
                "jti": super::api::uuid()});
            answer["refresh_token"] = json!(Self::sign(key, &refresh));
        }
        Ok(answer)
    }

    /// An access token's claims (refresh tokens are not access tokens).
    fn verify(&self, token: &str, key: &[u8]) -> Option<serde_json::Value> {
        self.verify_any(token, key)
            .filter(|c| c["typ"] != "refresh")
    }

    fn verify_any(&self, token: &str, key: &[u8]) -> Option<serde_json::Value> {
        let (t, _) = self.token.as_ref()?;
        let (signing, sig) = token.rsplit_once('.')?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(signing.as_bytes());
        mac.verify_slice(&B64.decode(sig).ok()?).ok()?;
        let (_, payload) = signing.split_once('.')?;
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let now = super::now_secs();
        let fresh = claims["exp"].as_u64().is_some_and(|e| now < e)
            && claims["nbf"].as_u64().is_some_and(|n| n <= now);
        (fresh && claims["aud"] == t.service.as_str() && claims["iss"] == t.issuer.as_str())
            .then_some(claims)
    }
}

/// Who asks the issuer for a token.
enum Asker {
    Password(Option<(String, String)>),
    Refresh(String),
}

/// `repository:<name>:pull,push` scopes for a challenge, one per repository.
fn scopes_of(needs: &[Need]) -> Vec<String> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for n in needs {
        let key = format!("{}:{}", n.kind, n.name);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, acts)) if !acts.contains(&n.action) => acts.push(n.action),
            Some(_) => {}
            None => out.push((key, vec![n.action])),
        }
    }
    out.into_iter()
        .map(|(k, a)| format!("{k}:{}", a.join(",")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(rules: &str, token: bool) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, format!("# accounts\nalice:{hash}\nbob:{hash}\n")).unwrap();
        let mut cfg: AuthConfig = serde_yaml_ng::from_str(rules).unwrap();
        cfg.htpasswd = Some(file);
        if token {
            cfg.token = Some(TokenConfig::default());
        }
        (Auth::new(&cfg).unwrap(), dir)
    }

    fn basic(u: &str, p: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        h.insert("authorization", format!("Basic {v}").parse().unwrap());
        h
    }

    #[test]
    fn patterns() {
        assert!(glob("*", "a/b"));
        assert!(glob("alice/*", "alice/app"));
        assert!(!glob("alice/*", "bob/app"));
        assert!(glob("*/base", "x/y/base"));
        assert!(!glob("exact", "exact2"));
    }

    #[test]
    fn basic_auth_and_rules() {
        let (a, _d) = auth(
            "access: [{account: alice, name: 'alice/*', actions: ['*']},
                      {account: '*', name: '*', actions: [pull]},
                      {account: anonymous, name: 'public/*', actions: [pull]}]",
            false,
        );
        let push = [Need::repo("alice/app", "push")];
        assert_eq!(
            a.check(&basic("alice", "secret"), &push, "h", "http")
                .unwrap(),
            Some("alice".into())
        );
        assert!(matches!(
            a.check(&basic("bob", "secret"), &push, "h", "http"),
            Err(Refusal::Denied(_))
        ));
        assert!(a
            .check(
                &basic("bob", "secret"),
                &[Need::repo("x", "pull")],
                "h",
                "http"
            )
            .is_ok());
        match a.check(&basic("alice", "wrong"), &push, "h", "http") {
            Err(Refusal::Unauthorized { challenge, .. }) => {
                assert_eq!(challenge, "Basic realm=\"Berth Registry\"")
            }
            other => panic!("{other:?}"),
        }
        let none = axum::http::HeaderMap::new();
        assert!(a
            .check(&none, &[Need::repo("public/x", "pull")], "h", "http")
            .is_ok());
        assert!(a
            .check(&none, &[Need::repo("private/x", "pull")], "h", "http")
            .is_err());
    }

    #[test]
    fn tokens_carry_only_what_was_granted() {
        let (a, _d) = auth(
            "access: [{account: alice, name: 'alice/*', actions: [pull, push]},
                      {account: '*', name: '*', actions: [pull]}]",
            true,
        );
        let need = [Need::repo("alice/app", "push")];
        let none = axum::http::HeaderMap::new();
        match a.check(&none, &need, "127.0.0.1:5000", "http") {
            Err(Refusal::Unauthorized { challenge, .. }) => assert_eq!(
                challenge,
                "Bearer realm=\"http://127.0.0.1:5000/token\",service=\"berth-registry\",scope=\"repository:alice/app:push\""
            ),
            other => panic!("{other:?}"),
        }
        let scopes = ["repository:alice/app:pull,push".to_string()];
        let bob = a.issue(&basic("bob", "secret"), &scopes).unwrap();
        let alice = a.issue(&basic("alice", "secret"), &scopes).unwrap();
        assert!(a.issue(&basic("alice", "nope"), &scopes).is_err());
        let bearer = |t: &serde_json::Value| {
            let mut h = axum::http::HeaderMap::new();
            let v = format!("Bearer {}", t["token"].as_str().unwrap());
            h.insert("authorization", v.parse().unwrap());
            h
        };
        assert_eq!(
            a.check(&bearer(&alice), &need, "h", "http").unwrap(),
            Some("alice".into())
        );
        // bob's token holds pull only: push asks again, with insufficient_scope.
        match a.check(&bearer(&bob), &need, "h", "http") {
            Err(Refusal::Unauthorized { challenge, .. }) => {
                assert!(
                    challenge.ends_with("error=\"insufficient_scope\""),
                    "{challenge}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(a
            .check(
                &bearer(&bob),
                &[Need::repo("alice/app", "pull")],
                "h",
                "http"
            )
            .is_ok());
        // OAuth2's form, as containerd posts it, and a refresh token that works only as one.
        let form = "grant_type=password&username=alice&password=secret&access_type=offline&scope=repository%3Aalice%2Fapp%3Apull%2Cpush";
        let o = a.issue_oauth(form).unwrap();
        assert!(a.check(&bearer(&o), &need, "h", "http").is_ok());
        let refresh = o["refresh_token"].as_str().unwrap();
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {refresh}").parse().unwrap(),
        );
        assert!(a.check(&h, &need, "h", "http").is_err());
        let again = a
            .issue_oauth(&format!(
                "grant_type=refresh_token&refresh_token={refresh}&scope=repository:alice/app:push"
            ))
            .unwrap();
        assert!(a.check(&bearer(&again), &need, "h", "http").is_ok());
        assert!(a
            .issue_oauth("grant_type=password&username=alice&password=no")
            .is_err());
        assert!(a
            .issue_oauth("grant_type=refresh_token&refresh_token=forged")
            .is_err());
        // A token altered in any byte is no token.
        let t = alice["token"].as_str().unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let claims = String::from_utf8(B64.decode(parts[1]).unwrap()).unwrap();
        let claims = claims.replace("\"sub\":\"alice\"", "\"sub\":\"mallory\"");
        assert!(claims.contains("mallory"));
        let forged = format!("{}.{}.{}", parts[0], B64.encode(claims), parts[2]);
        let mut h = axum::http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {forged}").parse().unwrap());
        assert!(a.check(&h, &need, "h", "http").is_err());
    }
}
