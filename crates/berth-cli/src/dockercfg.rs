//! Registry credentials in the docker CLI's own file, `$DOCKER_CONFIG/config.json`
//! (`~/.docker/config.json`), so `berth login` and `docker login` share them: `auths`
//! entries, and `credsStore`/`credHelpers` through `docker-credential-<name>` helpers.
//! Keys Berth does not know are kept as they are.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use berth_types::auth::{encode_basic, AuthConfig};
use serde_json::{json, Value};

/// Docker Hub's key in `auths`, whatever name the user typed.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

fn dir() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker"),
    }
}

pub fn path() -> PathBuf {
    dir().join("config.json")
}

/// The registry a server address or a reference's domain names, as the key of `auths`.
pub fn server_key(server: &str) -> String {
    let host = bare(server);
    match host.as_str() {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.into(),
        _ => host,
    }
}

/// `https://host:5000/v2/` as `host:5000`.
fn bare(s: &str) -> String {
    let s = s
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    s.split('/').next().unwrap_or(s).to_string()
}

fn load() -> Result<Value, String> {
    let p = path();
    match std::fs::read(&p) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(json!({})),
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

fn save(v: &Value) -> Result<(), String> {
    let p = path();
    let d = dir();
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    let tmp = d.join(format!(".config.json.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(
            serde_json::to_string_pretty(v)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("saving {}: {e}", p.display())
    })
}

/// The helper for `key`: `credHelpers` by host, else `credsStore`.
fn helper(cfg: &Value, key: &str) -> Option<String> {
    let host = bare(key);
    cfg["credHelpers"][&host]
        .as_str()
        .or(cfg["credHelpers"][key].as_str())
        .or(cfg["credsStore"].as_str())
        .filter(|h| !h.is_empty())
        .map(String::from)
}

/// Runs `docker-credential-<name> <verb>` with `input` on its stdin.
fn run_helper(name: &str, verb: &str, input: &str) -> Result<String, String> {
    let prog = format!("docker-credential-{name}");
    let mut child = Command::new(&prog)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {prog}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {prog}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let msg = if stdout.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_string()
        } else {
            stdout
        };
        return Err(format!("{prog} {verb}: {msg}"));
    }
    Ok(stdout)
}

/// The credentials stored for a registry (empty when there are none).
pub fn credentials(server: &str) -> Result<AuthConfig, String> {
    let cfg = load()?;
    let key = server_key(server);
    if let Some(h) = helper(&cfg, &key) {
        return match run_helper(&h, "get", &key) {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out)
                    .map_err(|e| format!("docker-credential-{h} get: {e}"))?;
                let user = v["Username"].as_str().unwrap_or_default();
                let secret = v["Secret"].as_str().unwrap_or_default().to_string();
                let mut a = AuthConfig {
                    serveraddress: key.clone(),
                    ..Default::default()
                };
                if user == "<token>" {
                    a.identitytoken = secret;
                } else {
                    a.username = user.to_string();
                    a.password = secret;
                }
                Ok(a)
            }
            // Helpers say "credentials not found in native keychain" for nothing stored.
            Err(e) if e.contains("not found") => Ok(AuthConfig::default()),
            Err(e) => Err(e),
        };
    }
    let auths = cfg["auths"].as_object().cloned().unwrap_or_default();
    let entry = auths.get(&key).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| server_key(k) == key)
            .map(|(_, v)| v)
    });
    let Some(e) = entry else {
        return Ok(AuthConfig::default());
    };
    let mut a: AuthConfig = serde_json::from_value(e.clone()).unwrap_or_default();
    if let Some((u, p)) = a.basic() {
        a.username = u;
        a.password = p;
        a.auth.clear();
    }
    a.serveraddress = key;
    Ok(a)
}

/// The credentials of every registry config.json names (for a build's
/// `X-Registry-Config`), keyed as config.json keys them.
pub fn all_credentials() -> std::collections::HashMap<String, AuthConfig> {
    let Ok(cfg) = load() else {
        return Default::default();
    };
    let mut keys: Vec<String> = cfg["auths"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.extend(
        cfg["credHelpers"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let a = credentials(&k).ok()?;
            (!a.is_empty()).then_some((k, a))
        })
        .collect()
}

/// Stores credentials for `server` (where `docker login` would).
pub fn store(server: &str, user: &str, password: &str, identity_token: &str) -> Result<(), String> {
    let mut cfg = load()?;
    let key = server_key(server);
    if let Some(h) = helper(&cfg, &key) {
        let (u, s) = if identity_token.is_empty() {
            (user, password)
        } else {
            ("<token>", identity_token)
        };
        let input = json!({"ServerURL": key, "Username": u, "Secret": s}).to_string();
        run_helper(&h, "store", &input)?;
        // Docker keeps an empty entry so `auths` lists every registry logged in to.
        cfg["auths"][&key] = json!({});
    } else if identity_token.is_empty() {
        cfg["auths"][&key] = json!({"auth": encode_basic(user, password)});
    } else {
        cfg["auths"][&key] =
            json!({"auth": encode_basic(user, ""), "identitytoken": identity_token});
    }
    save(&cfg)
}

/// Whether a credential helper keeps the secrets for `server`.
pub fn uses_helper(server: &str) -> bool {
    load().is_ok_and(|cfg| helper(&cfg, &server_key(server)).is_some())
}

/// Removes what is stored for `server`; false when nothing was.
pub fn erase(server: &str) -> Result<bool, String> {
    let mut cfg = load()?;
    let key = server_key(server);
    let mut found = false;
    if let Some(auths) = cfg["auths"].as_object_mut() {
        let keys: Vec<String> = auths
            .keys()
            .filter(|k| server_key(k) == key)
            .cloned()
            .collect();
        for k in keys {
            auths.remove(&k);
            found = true;
        }
    }
    if let Some(h) = helper(&cfg, &key) {
        match run_helper(&h, "erase", &key) {
            Ok(_) => found = true,
            Err(e) if e.contains("not found") => {}
            Err(e) => return Err(e),
        }
    }
    if found {
        save(&cfg)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_follow_docker() {
        assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_key(""), DOCKER_HUB_KEY);
        assert_eq!(server_key("https://index.docker.io/v1/"), DOCKER_HUB_KEY);
        assert_eq!(server_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(server_key("https://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
    }
}
