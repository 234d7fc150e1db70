//! The stage graph and the `RUN --mount` specifications: which stages a target needs,
//! which of them wait for which, and what each mount asks for.

use std::collections::BTreeMap;

use crate::parse::{Dockerfile, Instruction};

/// The stages stage `i` reads from: its base and every `COPY --from` or
/// `RUN --mount from=` that names an earlier stage. `expand` substitutes global ARGs in
/// the names (a name that still holds a `$` after it is taken as an image).
pub fn dependencies(df: &Dockerfile, i: usize, expand: &dyn Fn(&str) -> String) -> Vec<usize> {
    let stage = &df.stages[i];
    let mut deps = Vec::new();
    let mut add = |name: &str| {
        if let Some(j) = df.stage(&expand(name)).filter(|&j| j < i) {
            if !deps.contains(&j) {
                deps.push(j);
            }
        }
    };
    add(&stage.base);
    for step in &stage.steps {
        match &step.instruction {
            Instruction::Copy { flags, .. } => {
                for f in flags.get("from").into_iter().flatten() {
                    add(f);
                }
            }
            Instruction::Run { flags, .. } => {
                for m in flags.get("mount").into_iter().flatten() {
                    if let Ok(m) = RunMount::parse(m) {
                        if let Some(f) = &m.from {
                            add(f);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    deps.sort_unstable();
    deps
}

/// Which stages building `target` needs (the target and what it reads, transitively).
pub fn needed(df: &Dockerfile, target: usize, expand: &dyn Fn(&str) -> String) -> Vec<bool> {
    let mut need = vec![false; df.stages.len()];
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut need[i], true) {
            continue;
        }
        todo.extend(dependencies(df, i, expand));
    }
    need
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `RUN --mount=...`, as the Dockerfile reference defines its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    pub kind: MountKind,
    pub target: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub readonly: bool,
    pub sharing: Sharing,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub required: bool,
    pub size: Option<u64>,
    pub env: Option<String>,
}

impl RunMount {
    pub fn parse(spec: &str) -> Result<RunMount, String> {
        let mut kv = BTreeMap::new();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
                None => (part.trim().to_ascii_lowercase(), None),
            };
            kv.insert(k, v);
        }
        let get = |k: &str| kv.get(k).cloned().flatten();
        let flag = |k: &str| -> Result<Option<bool>, String> {
            match kv.get(k) {
                None => Ok(None),
                Some(None) => Ok(Some(true)),
                Some(Some(v)) => match v.as_str() {
                    "true" | "1" => Ok(Some(true)),
                    "false" | "0" => Ok(Some(false)),
                    _ => Err(format!("--mount: {k}={v}: expected true or false")),
                },
            }
        };
        let kind = match get("type").as_deref().unwrap_or("bind") {
            "bind" => MountKind::Bind,
            "cache" => MountKind::Cache,
            "tmpfs" => MountKind::Tmpfs,
            "secret" => MountKind::Secret,
            "ssh" => MountKind::Ssh,
            other => return Err(format!("--mount: unknown mount type {other:?}")),
        };
        for k in kv.keys() {
            let known = matches!(
                k.as_str(),
                "type"
                    | "target"
                    | "dst"
                    | "destination"
                    | "source"
                    | "src"
                    | "from"
                    | "id"
                    | "ro"
                    | "readonly"
                    | "rw"
                    | "readwrite"
                    | "sharing"
                    | "mode"
                    | "uid"
                    | "gid"
                    | "required"
                    | "size"
                    | "env"
            );
            if !known {
                return Err(format!("--mount: unknown key {k:?}"));
            }
        }
        let target = get("target").or(get("dst")).or(get("destination"));
        let rw = flag("rw")?.or(flag("readwrite")?);
        let ro = flag("ro")?.or(flag("readonly")?);
        // Bind mounts are read-only unless asked otherwise; caches the other way round.
        let readonly = match (ro, rw) {
            (Some(r), _) => r,
            (None, Some(w)) => !w,
            (None, None) => kind == MountKind::Bind,
        };
        let sharing = match get("sharing").as_deref() {
            None | Some("shared") => Sharing::Shared,
            Some("private") => Sharing::Private,
            Some("locked") => Sharing::Locked,
            Some(o) => {
                return Err(format!(
                    "--mount: sharing={o}: expected shared, private or locked"
                ))
            }
        };
        let num = |k: &str, radix: u32| -> Result<Option<u32>, String> {
            get(k)
                .map(|v| {
                    u32::from_str_radix(&v, radix)
                        .map_err(|_| format!("--mount: {k}={v}: not a number"))
                })
                .transpose()
        };
        let size = match get("size") {
            Some(v) => {
                Some(parse_size(&v).ok_or_else(|| format!("--mount: size={v}: not a size"))?)
            }
            None => None,
        };
        let m = RunMount {
            kind,
            target,
            source: get("source").or(get("src")),
            from: get("from"),
            id: get("id"),
            readonly,
            sharing,
            mode: num("mode", 8)?,
            uid: num("uid", 10)?,
            gid: num("gid", 10)?,
            required: flag("required")?.unwrap_or(false),
            size,
            env: get("env"),
        };
        match m.kind {
            MountKind::Secret | MountKind::Ssh => {}
            _ if m.target.is_none() => return Err(format!("--mount={spec}: a target is required")),
            _ => {}
        }
        if m.kind == MountKind::Secret && m.id.is_none() && m.target.is_none() && m.env.is_none() {
            return Err(format!("--mount={spec}: a secret needs an id or a target"));
        }
        Ok(m)
    }

    /// A secret's id: given, or the target's file name (as BuildKit derives it).
    pub fn secret_id(&self) -> Option<String> {
        self.id.clone().or_else(|| {
            self.target
                .as_deref()
                .and_then(|t| t.rsplit('/').next())
                .map(String::from)
        })
    }

    /// Where a secret appears: its target, else /run/secrets/<id>.
    pub fn secret_target(&self) -> Option<String> {
        self.target
            .clone()
            .or_else(|| self.secret_id().map(|id| format!("/run/secrets/{id}")))
    }
}

/// `64m`, `1g`, `512k` or bytes.
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let (num, mul) = match v.trim_end_matches('b').chars().last()? {
        'k' => (&v[..v.trim_end_matches('b').len() - 1], 1u64 << 10),
        'm' => (&v[..v.trim_end_matches('b').len() - 1], 1 << 20),
        'g' => (&v[..v.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (v.trim_end_matches('b'), 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// Everything the builder does with a Dockerfile's text before running it: parsing,
/// expanding each stage's base and each step, the stage graph and the `--mount` flags.
/// For the fuzzers (the seeded test and `fuzz/`): only the parse error is returned,
/// the rest must merely not panic.
#[doc(hidden)]
pub fn exercise(text: &str) -> Result<(), crate::parse::ParseError> {
    let df = crate::parse::parse(text)?;
    let vars: BTreeMap<String, String> = [("HOME".to_string(), "/root".to_string())].into();
    let same = |w: &str| w.to_string();
    for (i, stage) in df.stages.iter().enumerate() {
        let _ = crate::parse::expand(&stage.base, &vars, df.escape);
        let _ = dependencies(&df, i, &same);
        for step in &stage.steps {
            let _ = crate::parse::expand(&step.original, &vars, df.escape);
            if let Instruction::Run { flags, .. } = &step.instruction {
                for m in flags.get("mount").into_iter().flatten() {
                    let _ = RunMount::parse(m);
                }
            }
        }
    }
    if !df.stages.is_empty() {
        let _ = needed(&df, df.stages.len() - 1, &same);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    fn same(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn stages_depend_on_bases_copies_and_mounts() {
        let df = parse(
            "FROM busybox AS a\nRUN true\nFROM busybox AS b\nRUN true\nFROM a AS c\nCOPY --from=b /x /x\nFROM busybox AS d\nRUN --mount=type=bind,from=c,target=/c true\nFROM scratch AS unused\nFROM d\nCOPY --from=1 /y /y\n",
        )
        .unwrap();
        assert_eq!(dependencies(&df, 0, &same), Vec::<usize>::new());
        assert_eq!(dependencies(&df, 2, &same), vec![0, 1]);
        assert_eq!(dependencies(&df, 3, &same), vec![2]);
        assert_eq!(dependencies(&df, 5, &same), vec![1, 3]);
        assert_eq!(
            needed(&df, 5, &same),
            vec![true, true, true, true, false, true]
        );
        assert_eq!(
            needed(&df, 1, &same),
            vec![false, true, false, false, false, false]
        );
        // An image that only looks like a later stage's name is not a dependency.
        let df = parse("FROM later AS first\nFROM busybox AS later\n").unwrap();
        assert!(dependencies(&df, 0, &same).is_empty());
    }

    #[test]
    fn run_mounts_have_buildkits_defaults() {
        let m = RunMount::parse("type=cache,target=/root/.cache,id=go,sharing=locked").unwrap();
        assert_eq!(m.kind, MountKind::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing, Sharing::Locked);
        assert!(!m.readonly);
        let m = RunMount::parse("target=/src").unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert!(m.readonly);
        assert!(
            !RunMount::parse("type=bind,target=/src,rw")
                .unwrap()
                .readonly
        );
        let m = RunMount::parse("type=secret,id=tok").unwrap();
        assert_eq!(m.secret_target().as_deref(), Some("/run/secrets/tok"));
        let m = RunMount::parse("type=secret,target=/etc/key,required=true,mode=0400").unwrap();
        assert_eq!(m.secret_id().as_deref(), Some("key"));
        assert!(m.required);
        assert_eq!(m.mode, Some(0o400));
        let m = RunMount::parse("type=tmpfs,dst=/t,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        assert!(RunMount::parse("type=nfs,target=/x").is_err());
        assert!(RunMount::parse("type=cache").is_err());
        assert!(RunMount::parse("type=cache,target=/x,colour=red").is_err());
        assert!(RunMount::parse("type=cache,target=/x,sharing=sometimes").is_err());
    }
}
