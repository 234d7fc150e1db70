//! Registry credentials as the Engine API carries them: the body of `POST /auth` and the
//! `X-Registry-Auth` header (base64url of the same JSON) on pulls and pushes.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Docker's `AuthConfig`. Empty fields are left out, as the docker CLI does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// `base64(username:password)`, as config.json stores it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serveraddress: String,
    /// A refresh token from an earlier login, traded for access tokens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identitytoken: String,
    /// A bearer token sent to the registry as it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registrytoken: String,
}

impl AuthConfig {
    /// Username and password, from the fields or else from `auth`.
    pub fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() || !self.password.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let raw = decode_any(self.auth.trim())?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.basic().is_none() && self.identitytoken.is_empty() && self.registrytoken.is_empty()
    }

    /// The `X-Registry-Auth` value.
    pub fn to_header(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE.encode(json)
    }

    /// Reads an `X-Registry-Auth` value. Clients differ (URL-safe or standard alphabet, with
    /// or without padding, even plain JSON from old ones), so all are accepted; a value that
    /// is none of them is an error, not anonymous access.
    pub fn from_header(value: &str) -> Result<AuthConfig, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(AuthConfig::default());
        }
        let json = if value.starts_with('{') {
            value.as_bytes().to_vec()
        } else {
            decode_any(value).ok_or("X-Registry-Auth is not base64")?
        };
        if json.iter().all(u8::is_ascii_whitespace) || json == b"{}" || json == b"null" {
            return Ok(AuthConfig::default());
        }
        serde_json::from_slice(&json).map_err(|e| format!("X-Registry-Auth: {e}"))
    }
}

/// An `X-Registry-Config` value for `configs`.
pub fn configs_to_header(configs: &std::collections::HashMap<String, AuthConfig>) -> String {
    base64::engine::general_purpose::URL_SAFE
        .encode(serde_json::to_vec(configs).unwrap_or_default())
}

/// Reads an `X-Registry-Config` value (builds): the credentials of every registry the
/// client knows, keyed as config.json keys them (`host:port`, Docker Hub's
/// `https://index.docker.io/v1/`).
pub fn configs_from_header(
    value: &str,
) -> Result<std::collections::HashMap<String, AuthConfig>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Default::default());
    }
    let json = if value.starts_with('{') {
        value.as_bytes().to_vec()
    } else {
        decode_any(value).ok_or("X-Registry-Config is not base64")?
    };
    if json.iter().all(u8::is_ascii_whitespace) || json == b"null" {
        return Ok(Default::default());
    }
    serde_json::from_slice(&json).map_err(|e| format!("X-Registry-Config: {e}"))
}

/// `base64(user:pass)` as config.json's `auth` field holds it.
pub fn encode_basic(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// The header Berth's CLI sends build secrets in (`berth build --secret`): a base64 JSON
/// map from id to the secret's base64 bytes. Docker's classic build API has no secrets.
pub const BUILD_SECRETS_HEADER: &str = "x-berth-build-secrets";

pub fn secrets_to_header(secrets: &std::collections::BTreeMap<String, Vec<u8>>) -> String {
    let m: std::collections::BTreeMap<&String, String> = secrets
        .iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect();
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&m).unwrap_or_default())
}

pub fn secrets_from_header(
    value: &str,
) -> Result<std::collections::HashMap<String, Vec<u8>>, String> {
    let json = decode_any(value.trim()).ok_or("build secrets: not base64")?;
    let m: std::collections::HashMap<String, String> =
        serde_json::from_slice(&json).map_err(|e| format!("build secrets: {e}"))?;
    m.into_iter()
        .map(|(k, v)| {
            decode_any(&v)
                .map(|b| (k.clone(), b))
                .ok_or(format!("build secret {k}: not base64"))
        })
        .collect()
}

fn decode_any(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_secrets_round_trip() {
        let mut m = std::collections::BTreeMap::new();
        m.insert("tok".to_string(), b"s3cr\0t\n".to_vec());
        let back = secrets_from_header(&secrets_to_header(&m)).unwrap();
        assert_eq!(back["tok"], b"s3cr\0t\n");
        assert!(secrets_from_header("!!").is_err());
    }

    #[test]
    fn header_round_trip_and_every_alphabet() {
        let a = AuthConfig {
            username: "u".into(),
            password: "p?>>".into(),
            serveraddress: "127.0.0.1:5000".into(),
            ..Default::default()
        };
        let h = a.to_header();
        assert_eq!(AuthConfig::from_header(&h).unwrap(), a);
        let std = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(serde_json::to_vec(&a).unwrap());
        assert_eq!(AuthConfig::from_header(&std).unwrap(), a);
        assert_eq!(
            AuthConfig::from_header(
                r#"{"username":"u","password":"p?>>","serveraddress":"127.0.0.1:5000"}"#
            )
            .unwrap(),
            a
        );
        assert!(AuthConfig::from_header("").unwrap().is_empty());
        assert!(AuthConfig::from_header("e30=").unwrap().is_empty());
        assert!(AuthConfig::from_header("%%%").is_err());
    }

    #[test]
    fn registry_configs_of_builds() {
        let a = AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        let map = std::collections::HashMap::from([("127.0.0.1:5000".to_string(), a.clone())]);
        let h = configs_to_header(&map);
        assert_eq!(configs_from_header(&h).unwrap()["127.0.0.1:5000"], a);
        assert!(configs_from_header("").unwrap().is_empty());
        assert!(configs_from_header("e30=").unwrap().is_empty());
        assert!(configs_from_header("%%").is_err());
    }

    #[test]
    fn basic_from_fields_or_auth() {
        let a = AuthConfig {
            auth: encode_basic("me", "se:cret"),
            ..Default::default()
        };
        assert_eq!(a.basic(), Some(("me".into(), "se:cret".into())));
        assert!(!a.is_empty());
        assert!(AuthConfig::default().basic().is_none());
    }
}
