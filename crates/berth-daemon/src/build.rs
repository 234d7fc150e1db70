//! `POST /build` (the classic builder's API, which `docker build` uses without BuildKit
//! and `berth build` uses): the context tar is unpacked into a scratch directory, the
//! Dockerfile parsed by berth-build, and each stage run step by step. Every instruction
//! makes an image: metadata steps a new config on the same layers (`empty_layer` in the
//! history), RUN a container of the current image committed, COPY/ADD the sources
//! extracted through the layer applier into a container and committed. Each step is
//! looked up first in the build cache, by a key of its parent image, the instruction as
//! expanded, the build arguments it sees and, for COPY/ADD, a checksum of what it copies
//! (contents, names, modes; not mtimes). Output streams as Docker's JSON lines.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_build::parse::{self, Command, Instruction};
use berth_build::plan;

mod copy;
mod mounts;
use berth_types::auth::AuthConfig;
use berth_types::{Digest, Reference};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::images::{param, params, truthy};
use crate::{ApiError, ApiResult, Shared};

type Out = UnboundedSender<Bytes>;

fn say(out: &Out, text: impl AsRef<str>) {
    send(out, &json!({"stream": text.as_ref()}));
}

fn send(out: &Out, v: &Value) {
    let _ = out.send(Bytes::from(v.to_string() + "\r\n"));
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The cache key of a step: its parent image and what it does.
fn step_key(parent: &str, what: &Value) -> String {
    Digest::sha256(
        json!({"parent": parent, "step": what})
            .to_string()
            .as_bytes(),
    )
    .hex()
    .to_string()
}

/// What one stage carries from step to step.
struct StageState {
    /// The stage's index in the Dockerfile.
    stage: usize,
    /// The image the last step made (its ID).
    image: String,
    env: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
    workdir: String,
    user: String,
    shell: Vec<String>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it, as Docker does).
    cmd_set: bool,
}

impl StageState {
    fn vars(&self) -> BTreeMap<String, String> {
        let mut v = self.args.clone();
        v.extend(self.env.clone());
        v
    }

    /// The state of a stage that starts from `image` with config `cfg`.
    fn from_image(image: String, cfg: &Value, stage: usize) -> StageState {
        StageState {
            image,
            stage,
            env: cfg["Env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    e.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            args: BTreeMap::new(),
            workdir: cfg["WorkingDir"].as_str().unwrap_or("").to_string(),
            user: cfg["User"].as_str().unwrap_or("").to_string(),
            shell: cfg["Shell"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]),
            cmd_set: false,
        }
    }
}

/// A metadata step's change to the image config.
#[derive(Debug, Clone, serde::Serialize)]
enum Edit {
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Cmd(Vec<String>),
    /// The entrypoint, and whether CMD goes (it came from the base image).
    Entrypoint(Vec<String>, bool),
    Shell(Vec<String>),
    StopSignal(String),
    Volume(Vec<String>),
    Author(String),
    Onbuild(String),
    /// A stage's first image: its base's ONBUILD triggers ran and are not inherited.
    ClearOnbuild,
    Healthcheck(Value),
    /// ARG: a history entry, no change to the config.
    Arg(String),
}

impl Edit {
    fn apply(&self, image: &mut Value) -> Result<(), String> {
        let c = &mut image["config"];
        match self {
            Edit::Env(pairs) => {
                if !c["Env"].is_array() {
                    c["Env"] = json!([]);
                }
                let env = c["Env"].as_array_mut().expect("an array");
                for (k, v) in pairs {
                    env.retain(|e| {
                        e.as_str().and_then(|e| e.split_once('=')).map(|(ek, _)| ek)
                            != Some(k.as_str())
                    });
                    env.push(json!(format!("{k}={v}")));
                }
            }
            Edit::Label(pairs) => {
                for (k, v) in pairs {
                    c["Labels"][k] = json!(v);
                }
            }
            Edit::Workdir(w) => c["WorkingDir"] = json!(w),
            Edit::User(u) => c["User"] = json!(u),
            Edit::Expose(ports) => {
                for p in ports {
                    let p = if p.contains('/') {
                        p.clone()
                    } else {
                        format!("{p}/tcp")
                    };
                    c["ExposedPorts"][p] = json!({});
                }
            }
            Edit::Cmd(argv) => c["Cmd"] = json!(argv),
            Edit::Entrypoint(argv, reset_cmd) => {
                c["Entrypoint"] = json!(argv);
                if *reset_cmd {
                    c["Cmd"] = Value::Null;
                }
            }
            Edit::Shell(v) => c["Shell"] = json!(v),
            Edit::StopSignal(s) => c["StopSignal"] = json!(s),
            Edit::Volume(list) => {
                for v in list {
                    c["Volumes"][v] = json!({});
                }
            }
            Edit::Author(a) => image["author"] = json!(a),
            Edit::Onbuild(t) => match c["OnBuild"].as_array_mut() {
                Some(list) => list.push(json!(t)),
                None => c["OnBuild"] = json!([t]),
            },
            Edit::ClearOnbuild => c["OnBuild"] = Value::Null,
            Edit::Healthcheck(h) => c["Healthcheck"] = h.clone(),
            Edit::Arg(_) => {}
        }
        Ok(())
    }
}

/// `POST /build`.
pub async fn build(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let dockerfile = param(&ps, "dockerfile").unwrap_or("Dockerfile").to_string();
    let tags: Vec<String> = ps
        .iter()
        .filter(|(k, _)| k == "t")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
        .collect();
    let mut tag_refs = Vec::new();
    for t in &tags {
        tag_refs.push(
            t.parse::<Reference>()
                .map_err(|e| ApiError::bad_request(format!("invalid tag {t:?}: {e}")))?,
        );
    }
    let json_param = |key: &str| -> ApiResult<BTreeMap<String, Option<String>>> {
        match param(&ps, key) {
            Some(b) if !b.is_empty() => serde_json::from_str(b)
                .map_err(|e| ApiError::bad_request(format!("invalid {key}: {e}"))),
            _ => Ok(BTreeMap::new()),
        }
    };
    let build_args = json_param("buildargs")?;
    let labels: Vec<(String, String)> = json_param("labels")?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    let target = param(&ps, "target")
        .filter(|t| !t.is_empty())
        .map(String::from);
    let auth = match headers.get("x-registry-config").map(|v| v.to_str()) {
        None => HashMap::new(),
        Some(Ok(v)) => berth_types::auth::configs_from_header(v).map_err(ApiError::bad_request)?,
        Some(Err(_)) => return Err(ApiError::bad_request("X-Registry-Config is not text")),
    };
    if let Some(p) = param(&ps, "platform") {
        check_platform(p).map_err(ApiError::bad_request)?;
    }
    let secrets = match headers.get(berth_types::auth::BUILD_SECRETS_HEADER) {
        None => HashMap::new(),
        Some(v) => berth_types::auth::secrets_from_header(v.to_str().unwrap_or(""))
            .map_err(ApiError::bad_request)?,
    };
    let network = param(&ps, "networkmode")
        .filter(|n| !n.is_empty() && *n != "default")
        .map(String::from);
    let quiet = truthy(param(&ps, "q"));
    let no_cache = truthy(param(&ps, "nocache"));
    let pull = truthy(param(&ps, "pull"));
    let in_place = match headers.get(CONTEXT_DIR_HEADER) {
        Some(dir) => Some(context_in_place(
            dir.to_str().unwrap_or(""),
            headers
                .get(CONTEXT_STAT_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )?),
        None => None,
    };
    let unpacked = d
        .data_root
        .join("tmp")
        .join(format!("build-{}", berth_store::content::unique()));
    {
        // Unpacked as it arrives; `unpack` keeps every entry inside the directory.
        use futures_util::TryStreamExt;
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let dir = unpacked.clone();
        crate::blocking(move || {
            std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
            tar::Archive::new(reader)
                .unpack(&dir)
                .map_err(|e| ApiError::bad_request(format!("reading the build context: {e}")))
        })
        .await?;
    }
    let ctx = match in_place {
        Some(root) => {
            let ignore = std::fs::read_to_string(root.join(".dockerignore"))
                .map(|t| berth_types::ignore::Ignore::parse(&t))
                .ok();
            copy::Context {
                root,
                ignore,
                extras: Some(unpacked.clone()),
                what: "build context",
            }
        }
        None => copy::Context {
            root: unpacked.clone(),
            ignore: None,
            extras: None,
            what: "build context",
        },
    };
    let unique = berth_store::content::unique();
    let scratch = d
        .data_root
        .join("tmp")
        .join(format!("build-{unique}-scratch"));
    let secret_dir = secret_root(&d.data_root)
        .map(|r| r.join(format!("build-{unique}")))
        .unwrap_or_else(|| scratch.join("secrets"));
    for dir in [&scratch, &secret_dir] {
        std::fs::create_dir_all(dir).map_err(ApiError::internal)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(ApiError::internal)?;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let d2 = d.clone();
    tokio::spawn(async move {
        let mut b = Build {
            d: &d2,
            ctx: Arc::new(ctx),
            build_args: &build_args,
            global: BTreeMap::new(),
            quiet,
            no_cache,
            pull,
            auth: &auth,
            out: tx.clone(),
            network,
            scratch: &scratch,
            secret_dir: &secret_dir,
            secrets: &secrets,
            stages: Arc::default(),
            planned: Arc::default(),
        };
        let result = b.run(&dockerfile, target.as_deref(), &labels).await;
        drop(b);
        for dir in [&unpacked, &scratch, &secret_dir] {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        // The daemon's secrets directory goes once no build uses it (removing a
        // directory that is not empty fails, so a running build keeps it).
        if let Some(root) = secret_dir.parent().filter(|p| p.starts_with("/dev/shm")) {
            let _ = tokio::fs::remove_dir(root).await;
        }
        match result {
            Ok(img) => {
                let id = img.config.to_string();
                let _ = d2.store.keep_result(&img);
                for (t, r) in tags.iter().zip(&tag_refs) {
                    if let Err(e) = d2.store.tag(&id, r) {
                        let msg = e.to_string();
                        send(&tx, &json!({"errorDetail": {"message": msg}, "error": msg}));
                        return;
                    }
                    d2.image_event("tag", &id, t);
                }
                send(&tx, &json!({"aux": {"ID": id}}));
                if quiet {
                    say(&tx, format!("{id}\n"));
                } else {
                    say(&tx, format!("Successfully built {}\n", short(&id)));
                    for t in &tags {
                        let shown = t
                            .parse::<Reference>()
                            .map(|r| r.familiar())
                            .unwrap_or_else(|_| t.clone());
                        say(&tx, format!("Successfully tagged {shown}\n"));
                    }
                }
            }
            Err(msg) => {
                // A RUN that failed: its exit code, which the docker CLI exits with.
                let code = msg
                    .split_once("returned a non-zero code: ")
                    .and_then(|(_, rest)| {
                        rest.split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse::<i64>()
                            .ok()
                    });
                let detail = match code {
                    Some(c) => json!({"message": msg, "code": c}),
                    None => json!({"message": msg}),
                };
                send(&tx, &json!({"errorDetail": detail, "error": msg}))
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Berth's CLI on the daemon's host names its context directory instead of sending it
/// (`berth build` reads nothing twice, and the cache sees unchanged files by their
/// inodes); the directory's device and inode, as the client sees them, prove that the
/// daemon sees the same directory. A tar in the body then holds only what the client
/// adds (a Dockerfile from stdin).
pub const CONTEXT_DIR_HEADER: &str = "x-berth-context-dir";
pub const CONTEXT_STAT_HEADER: &str = "x-berth-context-stat";

/// The in-place context `dir`, if the daemon sees the same directory as the client
/// (`stat` is its `dev:ino`); 412 otherwise, and the client sends a tar instead.
fn context_in_place(dir: &str, stat: &str) -> ApiResult<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let p = PathBuf::from(dir);
    let same = p.is_absolute()
        && std::fs::metadata(&p)
            .is_ok_and(|m| m.is_dir() && format!("{}:{}", m.dev(), m.ino()) == stat);
    if !same {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("the build context {dir} is not visible to the daemon"),
        ));
    }
    Ok(p)
}

/// Where this daemon's builds keep secrets: a tmpfs (/dev/shm) when the host has one, so
/// they never touch a disk; one directory per data root.
fn secret_root(data_root: &Path) -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    shm.is_dir().then(|| {
        let tag = Digest::sha256(data_root.as_os_str().as_encoded_bytes()).hex()[..16].to_string();
        shm.join(format!("berth-{tag}"))
    })
}

/// What builds of a daemon that died left behind: their scratch directories and secrets.
pub fn clean_leftovers(data_root: &Path) {
    if let Some(r) = secret_root(data_root) {
        let _ = std::fs::remove_dir_all(r);
    }
    if let Ok(rd) = std::fs::read_dir(data_root.join("tmp")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("build-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// `POST /build/prune`: the build cache and the images builds made along the way.
pub async fn prune(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let keep = match param(&ps, "keep-storage").filter(|k| !k.is_empty() && *k != "0") {
        Some(k) => Some(
            k.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid keep-storage {k:?}")))?,
        ),
        None => None,
    };
    let store = d.store.clone();
    let all = truthy(param(&ps, "all"));
    let (entries, freed) = crate::blocking(move || {
        store
            .prune_build_cache_to(keep, all)
            .map_err(ApiError::from)
    })
    .await?;
    let _ = entries;
    Ok(Json(json!({"CachesDeleted": [], "SpaceReclaimed": freed})))
}

/// A stage's image, or why it failed, once it has finished.
type StageDone = tokio::sync::watch::Sender<Option<Result<String, String>>>;

/// One build: where its steps read from and report to.
#[derive(Clone)]
struct Build<'a> {
    d: &'a Shared,
    ctx: Arc<copy::Context>,
    build_args: &'a BTreeMap<String, Option<String>>,
    /// Global ARGs (before the first FROM), after --build-arg.
    global: BTreeMap<String, String>,
    quiet: bool,
    no_cache: bool,
    /// Pull base images even when they are here.
    pull: bool,
    auth: &'a HashMap<String, AuthConfig>,
    out: Out,
    /// `networkmode`: the network of RUN steps.
    network: Option<String>,
    /// Scratch space for this build (copies for binds), removed with it.
    scratch: &'a Path,
    /// Where secrets are written for their binds (a tmpfs when there is one).
    secret_dir: &'a Path,
    secrets: &'a HashMap<String, Vec<u8>>,
    /// Each stage's image (or failure) once it is built.
    stages: Arc<Vec<StageDone>>,
    /// The stages the target needs.
    planned: Arc<Vec<bool>>,
}

impl Build<'_> {
    fn say(&self, text: impl AsRef<str>) {
        if !self.quiet {
            say(&self.out, text);
        }
    }

    /// Runs the stages `target` needs, independent ones at once; returns the final image.
    /// Each stage reports through a channel of its own, relayed in stage order, so the
    /// output reads as if the stages ran one after another.
    async fn run(
        &mut self,
        dockerfile: &str,
        target: Option<&str>,
        labels: &[(String, String)],
    ) -> Result<berth_store::image::Image, String> {
        let text = self
            .ctx
            .read(dockerfile)
            .map_err(|e| format!("Cannot locate specified Dockerfile: {dockerfile} ({e})"))?;
        let df = parse::parse(&text).map_err(|e| e.to_string())?;
        if let Some(syntax) = &df.syntax {
            self.say(format!(
                "# syntax={syntax}: ignored, Berth's own builder reads this Dockerfile\n"
            ));
        }
        let last = match target {
            Some(t) => df
                .stage(t)
                .ok_or_else(|| format!("failed to reach build target {t} in Dockerfile"))?,
            None => df.stages.len() - 1,
        };
        self.global = platform_args();
        for (k, v) in &df.global_args {
            let val = self
                .build_args
                .get(k)
                .cloned()
                .flatten()
                .or_else(|| v.clone())
                .or_else(|| self.global.get(k).cloned());
            if let Some(val) = val {
                self.global.insert(k.clone(), val);
            }
        }
        let expand = |w: &str| parse::expand(w, &self.global, df.escape).unwrap_or_default();
        let need = plan::needed(&df, last, &expand);
        let order: Vec<usize> = (0..=last).filter(|&i| need[i]).collect();
        let total: usize = order.iter().map(|&i| df.stages[i].steps.len() + 1).sum();
        self.planned = Arc::new(need);
        self.stages = Arc::new(
            (0..df.stages.len())
                .map(|_| tokio::sync::watch::channel(None).0)
                .collect(),
        );
        let mut relays = Vec::new();
        let mut stages = Vec::new();
        let mut first = 0;
        for &i in &order {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            relays.push(rx);
            let b = Build {
                out: tx,
                ..self.clone()
            };
            let df = &df;
            stages.push(async move {
                let r = b.stage(df, i, first, total).await;
                b.stages[i].send_replace(Some(
                    r.as_ref().map(|s| s.image.clone()).map_err(Clone::clone),
                ));
                r
            });
            first += df.stages[i].steps.len() + 1;
        }
        let out = self.out.clone();
        let relay = async move {
            for mut rx in relays {
                while let Some(b) = rx.recv().await {
                    let _ = out.send(b);
                }
            }
        };
        let (results, ()) = tokio::join!(futures_util::future::join_all(stages), relay);
        let mut final_state = None;
        for r in results {
            final_state = Some(r?);
        }
        let mut st = final_state.ok_or_else(|| "nothing was built".to_string())?;
        if !labels.is_empty() {
            // --label: on the final image, as Docker adds them.
            self.configure(
                &mut st,
                format!(
                    "/bin/sh -c #(nop) LABEL {}",
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Edit::Label(labels.to_vec()),
            )
            .await?;
        }
        self.d
            .store
            .resolve(&st.image)
            .ok_or_else(|| format!("the built image {} is gone", st.image))
    }

    /// One stage, its steps numbered from `first`.
    async fn stage(
        &self,
        df: &parse::Dockerfile,
        i: usize,
        first: usize,
        total: usize,
    ) -> Result<StageState, String> {
        let stage = &df.stages[i];
        let mut n = first + 1;
        let base = parse::expand(&stage.base, &self.global, df.escape)?;
        if let Some(p) = &stage.platform {
            check_platform(&parse::expand(p, &self.global, df.escape)?)?;
        }
        let alias = stage
            .name
            .as_ref()
            .map(|a| format!(" AS {a}"))
            .unwrap_or_default();
        self.say(format!("Step {n}/{total} : FROM {base}{alias}\n"));
        let image = self.base_image(df, &base, i).await?;
        let cfg = image_config(self.d, &image)?;
        let mut s = StageState::from_image(image, &cfg, i);
        self.say(format!(" ---> {}\n", short(&s.image)));
        let triggers: Vec<String> = cfg["OnBuild"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        if !triggers.is_empty() {
            self.say(format!("# Executing {} build trigger(s)\n", triggers.len()));
            for t in &triggers {
                let step = parse::parse(&format!("FROM scratch\n{t}\n"))
                    .map_err(|e| format!("ONBUILD {t}: {e}"))?
                    .stages
                    .remove(0)
                    .steps
                    .remove(0);
                self.step(df, &mut s, &step).await?;
            }
            self.configure(&mut s, "".into(), Edit::ClearOnbuild)
                .await?;
        }
        for step in &stage.steps {
            n += 1;
            self.say(format!(
                "Step {n}/{total} : {} {}\n",
                step.keyword, step.original
            ));
            self.step(df, &mut s, step)
                .await
                .map_err(|e| format!("{e} (Dockerfile line {})", step.line))?;
            self.say(format!(" ---> {}\n", short(&s.image)));
        }
        Ok(s)
    }

    /// The image of stage `i`, once it is built.
    async fn stage_image(&self, i: usize) -> Result<String, String> {
        if !self.planned.get(i).copied().unwrap_or(false) {
            return Err(format!(
                "stage {i} is named through a variable set inside a stage; name it directly or with a global ARG"
            ));
        }
        let mut rx = self.stages[i].subscribe();
        let v = rx
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| format!("stage {i} did not finish"))?;
        match v.clone() {
            Some(Ok(id)) => Ok(id),
            Some(Err(_)) | None => Err(format!("stage {i} failed")),
        }
    }

    /// The image a stage starts from: an earlier stage, `scratch` (an empty image made
    /// here), a local image, or one pulled from its registry.
    async fn base_image(
        &self,
        df: &parse::Dockerfile,
        base: &str,
        before: usize,
    ) -> Result<String, String> {
        if let Some(i) = df.stage(base).filter(|&i| i < before) {
            return self.stage_image(i).await;
        }
        if base == "scratch" {
            let store = self.d.store.clone();
            return crate::blocking(move || {
                let mut empty = Vec::new();
                tar::Builder::new(&mut empty)
                    .finish()
                    .map_err(ApiError::internal)?;
                let img = store
                    .import(std::io::Cursor::new(empty), &[], None)
                    .map_err(ApiError::from)?;
                Ok(img.config.to_string())
            })
            .await
            .map_err(|e| e.message);
        }
        if !self.pull {
            if let Some(img) = self.d.store.resolve(base) {
                return Ok(img.config.to_string());
            }
        }
        let reference: Reference = base.parse().map_err(|e| format!("FROM {base}: {e}"))?;
        let out = self.out.clone();
        let quiet = self.quiet;
        let progress: berth_distribution::client::Progress = Box::new(move |v| {
            if !quiet {
                send(&out, &v);
            }
        });
        let img = self
            .d
            .registry
            .pull(
                self.d.store.clone(),
                &reference,
                &self.auth_for(&reference),
                None,
                progress,
            )
            .await?;
        self.d
            .image_event("pull", &img.config.to_string(), &reference.familiar());
        Ok(img.config.to_string())
    }

    /// The credentials the client sent for the registry of `r`.
    fn auth_for(&self, r: &Reference) -> AuthConfig {
        let want = if r.domain() == "docker.io" {
            "index.docker.io".to_string()
        } else {
            r.domain().to_string()
        };
        self.auth
            .iter()
            .find(|(k, _)| {
                let host = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                host.split('/').next() == Some(want.as_str())
            })
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    }

    /// Whether the cache has the step `key`; the stage moves on to its image if so.
    fn hit(&self, st: &mut StageState, key: &str) -> bool {
        if self.no_cache {
            return false;
        }
        match self.d.store.cached_step(key) {
            Some(img) => {
                self.say(" ---> Using cache\n");
                st.image = img.config.to_string();
                true
            }
            None => false,
        }
    }

    /// A metadata step: a new config on the same layers (or the cached one).
    async fn configure(
        &self,
        st: &mut StageState,
        created_by: String,
        edit: Edit,
    ) -> Result<(), String> {
        let key = step_key(&st.image, &json!({ "configure": &edit }));
        if self.hit(st, &key) {
            return Ok(());
        }
        let store = self.d.store.clone();
        let parent = st.image.clone();
        let img = crate::blocking(move || {
            store
                .configure(&parent, &created_by, |c| edit.apply(c))
                .map_err(ApiError::from)
        })
        .await
        .map_err(|e| e.message)?;
        self.step_made(st, &key, &img)
    }

    /// A step's image: remembered in the cache under `key`, and the stage moves on to it.
    fn step_made(
        &self,
        st: &mut StageState,
        key: &str,
        img: &berth_store::image::Image,
    ) -> Result<(), String> {
        self.d
            .store
            .remember_step(key, img)
            .map_err(|e| e.to_string())?;
        st.image = img.config.to_string();
        Ok(())
    }

    async fn step(
        &self,
        df: &parse::Dockerfile,
        st: &mut StageState,
        step: &parse::Step,
    ) -> Result<(), String> {
        let esc = df.escape;
        let x = |w: &str, st: &StageState| parse::expand(w, &st.vars(), esc);
        let nop = |text: String| format!("/bin/sh -c #(nop) {} {text}", step.keyword);
        match &step.instruction {
            Instruction::Arg(list) => {
                for (k, def) in list {
                    let val = self
                        .build_args
                        .get(k)
                        .cloned()
                        .flatten()
                        .or_else(|| def.as_ref().map(|v| x(v, st)).transpose().ok().flatten())
                        .or_else(|| self.global.get(k).cloned());
                    if let Some(v) = val {
                        st.args.insert(k.clone(), v);
                    }
                }
                // The classic builder commits ARG as it is written; the values reach the
                // cache through the RUN steps that see them.
                let text = list
                    .iter()
                    .map(|(k, def)| match def {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                self.configure(st, nop(text.clone()), Edit::Arg(text)).await
            }
            Instruction::Env(pairs) => {
                let mut out = Vec::new();
                for (k, v) in pairs {
                    let v = x(v, st)?;
                    st.env.insert(k.clone(), v.clone());
                    out.push((k.clone(), v));
                }
                let text = out
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.configure(st, nop(text), Edit::Env(out)).await
            }
            Instruction::Label(pairs) => {
                let mut out = Vec::new();
                for (k, v) in pairs {
                    out.push((x(k, st)?, x(v, st)?));
                }
                let text = out
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.configure(st, nop(text), Edit::Label(out)).await
            }
            Instruction::Workdir(w) => {
                let w = x(w, st)?;
                let abs = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", st.workdir.trim_end_matches('/'))
                };
                st.workdir = abs.clone();
                let edit = Edit::Workdir(abs.clone());
                let key = step_key(&st.image, &json!({ "configure": &edit }));
                if self.hit(st, &key) {
                    return Ok(());
                }
                if self.make_workdir(st, &abs, &key, nop(abs.clone())).await? {
                    return Ok(());
                }
                self.configure(st, nop(abs), edit).await
            }
            Instruction::User(u) => {
                st.user = x(u, st)?;
                let u = st.user.clone();
                self.configure(st, nop(u.clone()), Edit::User(u)).await
            }
            Instruction::Expose(ports) => {
                let ports: Vec<String> =
                    ports.iter().map(|p| x(p, st)).collect::<Result<_, _>>()?;
                self.configure(st, nop(ports.join(" ")), Edit::Expose(ports))
                    .await
            }
            Instruction::Cmd(c) => {
                let argv = exec_or_shell(c, &st.shell);
                st.cmd_set = true;
                self.configure(st, nop(json!(argv).to_string()), Edit::Cmd(argv))
                    .await
            }
            Instruction::Entrypoint(c) => {
                let argv = exec_or_shell(c, &st.shell);
                let reset = !st.cmd_set;
                self.configure(
                    st,
                    nop(json!(argv).to_string()),
                    Edit::Entrypoint(argv, reset),
                )
                .await
            }
            Instruction::Shell(v) => {
                st.shell = v.clone();
                self.configure(st, nop(json!(v).to_string()), Edit::Shell(v.clone()))
                    .await
            }
            Instruction::StopSignal(s) => {
                let s = x(s, st)?;
                self.configure(st, nop(s.clone()), Edit::StopSignal(s))
                    .await
            }
            Instruction::Volume(v) => {
                let v: Vec<String> = v.iter().map(|p| x(p, st)).collect::<Result<_, _>>()?;
                self.configure(st, nop(json!(v).to_string()), Edit::Volume(v))
                    .await
            }
            Instruction::Maintainer(m) => {
                self.configure(st, nop(m.clone()), Edit::Author(m.clone()))
                    .await
            }
            Instruction::Onbuild(t) => {
                self.configure(st, nop(t.clone()), Edit::Onbuild(t.clone()))
                    .await
            }
            Instruction::Healthcheck { command, flags } => {
                let h = healthcheck(command.as_ref(), flags, &st.shell)?;
                self.configure(st, nop(step.original.clone()), Edit::Healthcheck(h))
                    .await
            }
            Instruction::From { .. } => Ok(()),
            Instruction::Run {
                command,
                heredocs,
                flags,
            } => self.run_step(df, st, command, heredocs, flags).await,
            Instruction::Copy {
                sources,
                dest,
                flags,
                heredocs,
                add,
            } => {
                let chmod = match flags.get("chmod").and_then(|v| v.first()) {
                    Some(m) => Some(
                        u32::from_str_radix(m, 8)
                            .map_err(|_| format!("--chmod={m}: expected an octal mode"))?,
                    ),
                    None => None,
                };
                let owner = self
                    .owner(st, flags.get("chown").and_then(|v| v.first()))
                    .await?;
                if let Some(from) = flags.get("from").and_then(|v| v.first()) {
                    let from = x(from, st)?;
                    return self
                        .copy_from(df, st, &from, sources, &x(dest, st)?, owner, chmod)
                        .await;
                }
                let dest = x(dest, st)?;
                let mut fetched = Vec::new();
                let mut local = Vec::new();
                for src in sources {
                    let src = x(src, st)?;
                    if *add && (src.starts_with("http://") || src.starts_with("https://")) {
                        let sum = flags.get("checksum").and_then(|v| v.first());
                        fetched.push(self.fetch_url(&src, sum.map(String::as_str)).await?);
                    } else if src.starts_with("http://") || src.starts_with("https://") {
                        return Err(format!(
                            "COPY {src}: source can't be a URL for COPY (use ADD)"
                        ));
                    } else {
                        local.push(src);
                    }
                }
                if flags.contains_key("checksum") && fetched.is_empty() {
                    return Err("ADD --checksum needs a URL source".into());
                }
                let many = sources.len() > 1 || dest.ends_with('/');
                let target = resolve_dest(&st.workdir, &dest);
                let docs: Vec<(String, Vec<u8>)> = heredocs
                    .iter()
                    .map(|h| (h.name.clone(), h.content.clone().into_bytes()))
                    .collect();
                let ctx = self.ctx.clone();
                let add = *add;
                let (entries, sum) = tokio::task::spawn_blocking(move || {
                    let entries = copy::plan(&ctx, &local, &fetched, &docs, &target, many, add)?;
                    let sum = copy::sum(&entries, chmod)?;
                    Ok::<_, String>((entries, sum))
                })
                .await
                .map_err(|e| e.to_string())??;
                let what = json!({"copy": dest, "sum": sum, "owner": owner, "chmod": chmod});
                let created_by =
                    format!("/bin/sh -c #(nop) {} sha256:{sum} in {dest} ", step.keyword);
                let link = flags
                    .get("link")
                    .and_then(|v| v.first())
                    .is_some_and(|v| v != "false");
                if link {
                    return self
                        .copy_linked(st, entries, what, chmod, owner, created_by)
                        .await;
                }
                let key = step_key(&st.image, &what);
                if self.hit(st, &key) {
                    return Ok(());
                }
                let t0 = std::time::Instant::now();
                let tarball = tokio::task::spawn_blocking(move || {
                    let mut t = Vec::new();
                    copy::write_tar(&entries, chmod, None, &mut t).map(|()| t)
                })
                .await
                .map_err(|e| e.to_string())??;
                tracing::debug!(tar = ?t0.elapsed(), "build: copy step");
                self.copy_in(st, tarball, owner, &key, created_by).await
            }
        }
    }

    /// `RUN`: the command in a container of the current image, committed.
    async fn run_step(
        &self,
        df: &parse::Dockerfile,
        st: &mut StageState,
        command: &Command,
        heredocs: &[parse::Heredoc],
        flags: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), String> {
        let mut run_mounts = Vec::new();
        for m in flags.get("mount").into_iter().flatten() {
            let m = parse::expand(m, &st.vars(), df.escape)?;
            run_mounts.push(plan::RunMount::parse(&m)?);
        }
        let network = match flags
            .get("network")
            .and_then(|v| v.first())
            .map(String::as_str)
        {
            None | Some("default") => self.network.clone(),
            Some(n @ ("none" | "host")) => Some(n.to_string()),
            Some(o) => return Err(format!("RUN --network={o}: expected default, none or host")),
        };
        if let Some(sec) = flags.get("security").and_then(|v| v.first()) {
            if sec != "sandbox" {
                return Err(format!(
                    "RUN --security={sec}: Berth runs build steps sandboxed only"
                ));
            }
        }
        let mut from_ids = HashMap::new();
        for (n, m) in run_mounts.iter().enumerate() {
            if let (plan::MountKind::Bind, Some(f)) = (m.kind, &m.from) {
                let f = parse::expand(f, &st.vars(), df.escape)?;
                from_ids.insert(n, self.source_image(df, st, &f).await?);
            }
        }
        let mount_key = mounts::key(&run_mounts, &self.ctx, &from_ids).await?;
        let mut argv = exec_or_shell(command, &st.shell);
        if let (Some(h), Command::Shell(_)) = (heredocs.first(), command) {
            // `RUN <<EOF`: the heredoc is the script.
            argv = st.shell.clone();
            argv.push(h.content.clone());
        }
        let mut env: Vec<String> = st.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let args: Vec<String> = st
            .args
            .iter()
            .filter(|(k, _)| !st.env.contains_key(*k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(args.iter().cloned());
        // The predefined proxy ARGs reach RUN without an ARG line and stay out of the
        // history and the cache key, as Docker keeps them.
        for (k, v) in self.build_args {
            if PROXY_ARGS.contains(&k.as_str()) && !st.args.contains_key(k) {
                if let Some(v) = v {
                    env.push(format!("{k}={v}"));
                }
            }
        }
        let key = step_key(
            &st.image,
            &json!({"run": argv, "args": args, "mounts": mount_key, "network": network}),
        );
        if self.hit(st, &key) {
            return Ok(());
        }
        let mut from_dirs = HashMap::new();
        for (n, image) in &from_ids {
            let source = run_mounts[*n].source.as_deref().unwrap_or(".");
            from_dirs.insert(*n, self.export_path(image, source).await?);
        }
        let sources = mounts::Sources {
            data_root: &self.d.data_root,
            context: &self.ctx,
            scratch: self.scratch,
            secret_dir: self.secret_dir,
            secrets: self.secrets,
        };
        let prepared = mounts::prepare(&run_mounts, &sources, &from_dirs).await?;
        env.extend(prepared.env.iter().cloned());
        let shown = match command {
            Command::Shell(s) => format!("{} {s}", st.shell.join(" ")),
            Command::Exec(v) => json!(v).to_string(),
        };
        let created_by = if args.is_empty() {
            shown.clone()
        } else {
            format!("|{} {} {shown}", args.len(), args.join(" "))
        };
        let d = self.d;
        let cid = container(
            d,
            &st.image,
            json!({"Cmd": argv, "Entrypoint": [], "Env": env, "WorkingDir": st.workdir, "User": st.user,
                "HostConfig": {"Binds": prepared.binds, "Tmpfs": prepared.tmpfs, "NetworkMode": network}}),
        )
        .await?;
        self.say(format!(" ---> Running in {}\n", short(&cid)));
        let e = d.containers.get(&cid).map_err(|e| e.message)?;
        // The mount points the container will have to create, to take away again.
        let tops = if prepared.targets.is_empty() {
            Vec::new()
        } else {
            let targets = prepared.targets.clone();
            crate::containers::with_rootfs(d, e.snapshot(), false, move |root| {
                Ok(mounts::missing_tops(&root, &targets))
            })
            .await
            .unwrap_or_default()
        };
        let seen = e.progress.borrow().exits;
        {
            let _g = e.op.lock().await;
            if let Err(err) = d.containers.start(&e).await {
                drop(_g);
                remove(d, &cid).await;
                return Err(err.message);
            }
        }
        // The step's output as it comes, from its log.
        let log = d.containers.log_path(&cid);
        let mut shown_upto = 0;
        let exited = crate::containers::Containers::wait_exit(&e, seen, None);
        tokio::pin!(exited);
        loop {
            let done = tokio::select! {
                _ = &mut exited => true,
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => false,
            };
            if !self.quiet {
                shown_upto = self.relay_log(&log, shown_upto).await;
            }
            if done {
                break;
            }
        }
        let code = e.snapshot().state.exit_code;
        if code != 0 {
            remove(d, &cid).await;
            return Err(format!(
                "The command '{shown}' returned a non-zero code: {code}"
            ));
        }
        if !tops.is_empty() {
            let _ = crate::containers::with_rootfs(d, e.snapshot(), false, move |root| {
                for (top, target) in &tops {
                    mounts::remove_mount_point(&root, top, target);
                }
                Ok(())
            })
            .await;
        }
        let img = commit(d, &st.image, &cid, created_by).await?;
        drop(prepared);
        self.say(format!("Removing intermediate container {}\n", short(&cid)));
        self.step_made(st, &key, &img)
    }

    /// `COPY --link`: the files as a layer of their own, made without looking at the
    /// parent (missing directories above them are created 0755, as BuildKit does), so the
    /// same layer serves on any parent: a changed base reuses it rather than copying again.
    async fn copy_linked(
        &self,
        st: &mut StageState,
        entries: Vec<copy::Entry>,
        what: Value,
        chmod: Option<u32>,
        owner: (u32, u32),
        created_by: String,
    ) -> Result<(), String> {
        let layer_key = step_key("", &json!({ "linked": what }));
        let key = step_key(&st.image, &json!({ "linked": what }));
        if self.hit(st, &key) {
            return Ok(());
        }
        let store = self.d.store.clone();
        let made = (!self.no_cache)
            .then(|| store.cached_step(&layer_key))
            .flatten()
            .and_then(|img| img.layers.last().cloned())
            .filter(|l| l.media_type == berth_store::image::MEDIA_LAYER);
        if made.is_some() {
            self.say(" ---> Using the linked layer from the cache\n");
        }
        let parent = st.image.clone();
        let img = tokio::task::spawn_blocking(move || {
            let blob = match made {
                Some(l) => l.blob,
                None => {
                    let mut t = Vec::new();
                    copy::write_tar(&entries, chmod, Some(owner), &mut t)?;
                    store.write_layer(&t).map_err(|e| e.to_string())?
                }
            };
            store
                .add_layer(&parent, &blob, &created_by)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.d
            .store
            .remember_step(&layer_key, &img)
            .map_err(|e| e.to_string())?;
        self.step_made(st, &key, &img)
    }

    /// WORKDIR of a directory the image lacks: created (root, 0755, as Docker does) in a
    /// layer of its own, the config changed in the same step. False when it is there (a
    /// path through a symlink counts as there: it is not followed out of the root).
    async fn make_workdir(
        &self,
        st: &mut StageState,
        dir: &str,
        key: &str,
        created_by: String,
    ) -> Result<bool, String> {
        let d = self.d;
        let cid = container(d, &st.image, json!({"Cmd": ["true"]})).await?;
        let e = d.containers.get(&cid).map_err(|e| e.message)?;
        let rel: Vec<String> = dir
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(String::from)
            .collect();
        let made = crate::containers::with_rootfs(d, e.snapshot(), false, move |root| {
            let mut cur = root.clone();
            let mut missing = Vec::new();
            for (i, part) in rel.iter().enumerate() {
                cur.push(part);
                match std::fs::symlink_metadata(&cur) {
                    Ok(m) if m.file_type().is_symlink() || !m.is_dir() => return Ok(false),
                    Ok(_) => {}
                    Err(_) => {
                        missing = rel[..=i].to_vec();
                        break;
                    }
                }
            }
            if missing.is_empty() {
                return Ok(false);
            }
            let mut t = Vec::new();
            {
                let mut b = tar::Builder::new(&mut t);
                for n in missing.len()..=rel.len() {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_cksum();
                    b.append_data(&mut h, rel[..n].join("/"), std::io::empty())
                        .map_err(ApiError::internal)?;
                }
                b.finish().map_err(ApiError::internal)?;
            }
            berth_store::layer::extract(&root, std::io::Cursor::new(t), Some((0, 0)))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(true)
        })
        .await;
        match made {
            Ok(true) => {}
            Ok(false) => {
                remove(d, &cid).await;
                return Ok(false);
            }
            Err(e) => {
                remove(d, &cid).await;
                return Err(e.message);
            }
        }
        let img = commit_changing(
            d,
            &st.image,
            &cid,
            created_by,
            vec![format!("WORKDIR {dir}")],
        )
        .await?;
        self.step_made(st, key, &img)?;
        Ok(true)
    }

    /// The image a `--from=` names: an earlier stage, a local image, or a pulled one.
    async fn source_image(
        &self,
        df: &parse::Dockerfile,
        st: &StageState,
        from: &str,
    ) -> Result<String, String> {
        match df.stage(from).filter(|&i| i < st.stage) {
            Some(i) => self.stage_image(i).await,
            None => match self.d.store.resolve(from) {
                Some(i) => Ok(i.config.to_string()),
                None => self.base_image(df, from, st.stage).await,
            },
        }
    }

    /// `ADD <url>`: the file fetched into the scratch directory (mode 0600, as Docker
    /// writes it), checked against `--checksum` when given; its name is the URL's last
    /// path segment.
    async fn fetch_url(
        &self,
        url: &str,
        checksum: Option<&str>,
    ) -> Result<(String, PathBuf), String> {
        use tokio::io::AsyncWriteExt;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("ADD {url}: {e}"))?;
        let name = parsed
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|n| !n.is_empty())
            .unwrap_or("__unnamed__")
            .to_string();
        let want = match checksum {
            Some(c) => Some(
                c.parse::<Digest>()
                    .map_err(|e| format!("ADD --checksum={c}: {e}"))?,
            ),
            None => None,
        };
        self.say(format!("Downloading {url}\n"));
        let mut resp = reqwest::Client::new()
            .get(parsed)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("ADD {url}: {e}"))?;
        let path = self
            .scratch
            .join(format!("url-{}", berth_store::content::unique()));
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            let std_f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| e.to_string())?;
            tokio::fs::File::from_std(std_f)
        };
        let mut h = berth_types::Hasher::new(berth_types::digest::Algorithm::Sha256);
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("ADD {url}: {e}"))? {
            h.update(&chunk);
            f.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        f.flush().await.map_err(|e| e.to_string())?;
        let got = h.finish();
        if let Some(w) = want {
            if w != got {
                return Err(format!(
                    "ADD {url}: checksum mismatch: expected {w}, got {got}"
                ));
            }
        }
        Ok((name, path))
    }

    /// A copy of `source` out of `image`, in the build's scratch directory.
    async fn export_path(&self, image: &str, source: &str) -> Result<PathBuf, String> {
        let cid = container(self.d, image, json!({"Cmd": ["true"]})).await?;
        let e = self.d.containers.get(&cid).map_err(|e| e.message)?;
        let dest = self
            .scratch
            .join(format!("from-{}", berth_store::content::unique()));
        let src = source.to_string();
        let r = crate::containers::with_rootfs(self.d, e.snapshot(), false, move |root| {
            let path = mounts::inside(&root, &src).map_err(ApiError::bad_request)?;
            mounts::copy_tree(&path, &dest).map_err(ApiError::internal)?;
            Ok(dest)
        })
        .await;
        remove(self.d, &cid).await;
        r.map_err(|e| e.message)
    }

    /// Sends the complete lines of a JSON log written after `from`; returns where the
    /// next read starts.
    async fn relay_log(&self, log: &Path, from: u64) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Ok(mut f) = tokio::fs::File::open(log).await else {
            return from;
        };
        if f.seek(std::io::SeekFrom::Start(from)).await.is_err() {
            return from;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).await.is_err() {
            return from;
        }
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return from;
        };
        for line in buf[..end].split(|&b| b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                say(&self.out, v["log"].as_str().unwrap_or(""));
            }
        }
        from + end as u64 + 1
    }

    /// `--chown=user:group`: numbers as they are, names through the image's
    /// /etc/passwd and /etc/group. Root owns what is copied without it.
    async fn owner(&self, st: &StageState, chown: Option<&String>) -> Result<(u32, u32), String> {
        let Some(c) = chown else {
            return Ok((0, 0));
        };
        let (u, g) = match c.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (c.clone(), None),
        };
        let numeric = |s: &str| s.parse::<u32>().ok();
        if numeric(&u).is_some() && g.as_deref().is_none_or(|g| numeric(g).is_some()) {
            let uid = numeric(&u).unwrap_or(0);
            return Ok((uid, g.as_deref().and_then(numeric).unwrap_or(uid)));
        }
        // Names: read the image's own files, inside its root.
        let cid = container(self.d, &st.image, json!({"Cmd": ["true"]})).await?;
        let e = self.d.containers.get(&cid).map_err(|e| e.message)?;
        let files = crate::containers::with_rootfs(self.d, e.snapshot(), false, |root| {
            let read = |f: &str| {
                berth_store::layer::read_in_root(&root, f)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            Ok((read("etc/passwd"), read("etc/group")))
        })
        .await;
        remove(self.d, &cid).await;
        let (passwd, group) = files.map_err(|e| e.message)?;
        let lookup = |db: &str, name: &str, field: usize| -> Option<(u32, Option<u32>)> {
            db.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name) && f.len() > field).then(|| {
                    (
                        f[field].parse().ok().unwrap_or(0),
                        f.get(field + 1).and_then(|x| x.parse().ok()),
                    )
                })
            })
        };
        let (uid, primary) = match numeric(&u) {
            Some(n) => (n, None),
            None => lookup(&passwd, &u, 2).ok_or_else(|| {
                format!("--chown={c}: unable to find user {u}: no matching entries in passwd file")
            })?,
        };
        let gid = match g {
            None => primary.unwrap_or(uid),
            Some(g) => match numeric(&g) {
                Some(n) => n,
                None => lookup(&group, &g, 2).map(|(n, _)| n).ok_or_else(|| {
                    format!(
                        "--chown={c}: unable to find group {g}: no matching entries in group file"
                    )
                })?,
            },
        };
        Ok((uid, gid))
    }

    /// `COPY --from=<stage|image>`: the paths out of that image's root filesystem.
    #[allow(clippy::too_many_arguments)]
    async fn copy_from(
        &self,
        df: &parse::Dockerfile,
        st: &mut StageState,
        from: &str,
        sources: &[String],
        dest: &str,
        owner: (u32, u32),
        chmod: Option<u32>,
    ) -> Result<(), String> {
        let d = self.d;
        let src_image = self
            .source_image(df, st, from)
            .await
            .map_err(|e| format!("COPY --from={from}: {e}"))?;
        // What it copies is fixed by the source image: no need to read it for the key.
        let key = step_key(
            &st.image,
            &json!({"copy-from": src_image, "sources": sources, "dest": dest, "owner": owner, "chmod": chmod}),
        );
        if self.hit(st, &key) {
            return Ok(());
        }
        let src_cid = container(d, &src_image, json!({"Cmd": ["true"]})).await?;
        let e = d.containers.get(&src_cid).map_err(|e| e.message)?;
        let rec = e.snapshot();
        let target = resolve_dest(&st.workdir, dest);
        let many = sources.len() > 1 || dest.ends_with('/');
        let srcs = sources.to_vec();
        // Planned as a context COPY is, rooted in the source's files: a symlink there
        // is not followed out of them.
        let tarball = crate::containers::with_rootfs(d, rec, false, move |root| {
            let ctx = copy::Context {
                root,
                ignore: None,
                extras: None,
                what: "source image",
            };
            let entries = copy::plan(&ctx, &srcs, &[], &[], &target, many, false)
                .map_err(ApiError::bad_request)?;
            let mut out = Vec::new();
            copy::write_tar(&entries, chmod, None, &mut out).map_err(ApiError::internal)?;
            Ok(out)
        })
        .await;
        remove(d, &src_cid).await;
        let tarball = tarball.map_err(|e| e.message)?;
        let created_by = format!(
            "/bin/sh -c #(nop) COPY --from={from} {} in {dest} ",
            sources.join(" ")
        );
        self.copy_in(st, tarball, owner, &key, created_by).await
    }

    /// Extracts `tarball` into a fresh container of the stage's image (with the layer
    /// applier's path safety; `owner` replaces the entries' owners) and commits it.
    async fn copy_in(
        &self,
        st: &mut StageState,
        tarball: Vec<u8>,
        owner: (u32, u32),
        key: &str,
        created_by: String,
    ) -> Result<(), String> {
        let d = self.d;
        let t0 = std::time::Instant::now();
        let cid = container(d, &st.image, json!({"Cmd": ["true"]})).await?;
        let e = d.containers.get(&cid).map_err(|e| e.message)?;
        let rec = e.snapshot();
        let t1 = t0.elapsed();
        let applied = crate::containers::with_rootfs(d, rec, false, move |root| {
            berth_store::layer::extract(&root, std::io::Cursor::new(tarball), Some(owner))
                .map(|_| ())
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .await;
        if let Err(e) = applied {
            remove(d, &cid).await;
            return Err(e.message);
        }
        let t2 = t0.elapsed();
        let img = commit(d, &st.image, &cid, created_by).await?;
        tracing::debug!(
            create = ?t1,
            extract = ?(t2 - t1),
            commit = ?(t0.elapsed() - t2),
            "build: copy step"
        );
        self.step_made(st, key, &img)
    }
}

const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The host's platform as Go names it: the only one a build can run.
fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

/// The automatic platform ARGs (BuildKit's `TARGETPLATFORM` family), all the host's.
fn platform_args() -> BTreeMap<String, String> {
    let (os, arch) = host_platform();
    let mut m = BTreeMap::new();
    for side in ["BUILD", "TARGET"] {
        m.insert(format!("{side}PLATFORM"), format!("{os}/{arch}"));
        m.insert(format!("{side}OS"), os.to_string());
        m.insert(format!("{side}ARCH"), arch.to_string());
        m.insert(format!("{side}VARIANT"), String::new());
    }
    m
}

/// `--platform`: Berth runs what the host runs and says so for anything else.
fn check_platform(p: &str) -> Result<(), String> {
    let (os, arch) = host_platform();
    let mut parts = p.split('/');
    let (want_os, want_arch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(arch));
    if p.is_empty() || (want_os == os && want_arch == arch) {
        return Ok(());
    }
    Err(format!(
        "platform {p} cannot run here: Berth builds only for the host's platform {os}/{arch} (no emulation)"
    ))
}

/// HEALTHCHECK as the image config holds it (durations in nanoseconds).
fn healthcheck(
    command: Option<&Command>,
    flags: &BTreeMap<String, Vec<String>>,
    shell: &[String],
) -> Result<Value, String> {
    let Some(c) = command else {
        return Ok(json!({"Test": ["NONE"]}));
    };
    let test = match c {
        Command::Shell(s) => {
            if shell == ["/bin/sh", "-c"] {
                json!(["CMD-SHELL", s])
            } else {
                let mut v = vec!["CMD".to_string()];
                v.extend(shell.iter().cloned());
                v.push(s.clone());
                json!(v)
            }
        }
        Command::Exec(v) => {
            let mut all = vec!["CMD".to_string()];
            all.extend(v.iter().cloned());
            json!(all)
        }
    };
    let mut h = json!({"Test": test});
    for (flag, field) in [
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ] {
        if let Some(v) = flags.get(flag).and_then(|v| v.last()) {
            h[field] = json!(berth_types::time::go_duration(v)
                .map_err(|e| format!("HEALTHCHECK --{flag}: {e}"))?);
        }
    }
    if let Some(r) = flags.get("retries").and_then(|v| v.last()) {
        h["Retries"] = json!(r
            .parse::<u64>()
            .map_err(|_| format!("HEALTHCHECK --retries={r}: expected a number"))?);
    }
    Ok(h)
}

fn image_config(d: &Shared, id: &str) -> Result<Value, String> {
    let img = d
        .store
        .resolve(id)
        .ok_or_else(|| format!("no such image: {id}"))?;
    crate::containers::api::image_config(d, &img).map_err(|e| e.message)
}

/// Makes a container of `image` (not started), for commits and copies.
async fn container(d: &Shared, image: &str, body: Value) -> Result<String, String> {
    let mut b = body;
    b["Image"] = json!(image);
    b["Labels"] = json!({"org.berth.build": "true"});
    let (_, Json(v)) = crate::containers::api::create(
        State(d.clone()),
        RawQuery(None),
        Bytes::from(b.to_string()),
    )
    .await
    .map_err(|e| e.message)?;
    Ok(v["Id"].as_str().unwrap_or("").to_string())
}

async fn remove(d: &Shared, id: &str) {
    if let Ok(e) = d.containers.get(id) {
        let _g = e.op.lock().await;
        let _ = d.containers.remove_stopped(&e).await;
    }
}

/// Commits container `cid` (made from `image`) as a new image and removes it.
async fn commit(
    d: &Shared,
    image: &str,
    cid: &str,
    created_by: String,
) -> Result<berth_store::image::Image, String> {
    commit_changing(d, image, cid, created_by, Vec::new()).await
}

/// [`commit`] with Dockerfile-style config `changes` (an exited container only).
async fn commit_changing(
    d: &Shared,
    image: &str,
    cid: &str,
    created_by: String,
    changes: Vec<String>,
) -> Result<berth_store::image::Image, String> {
    let e = d.containers.get(cid).map_err(|e| e.message)?;
    let rec = e.snapshot();
    let store = d.store.clone();
    let (id, parent) = (rec.id.clone(), image.to_string());
    let img = if rec.state.running {
        crate::containers::with_rootfs(d, rec, false, move |_| {
            store
                .commit(&id, &parent, &changes, &created_by, None)
                .map_err(ApiError::from)
        })
        .await
    } else {
        // The step's container has exited and goes next: its changes become the layer.
        crate::blocking(move || {
            store
                .commit_taking(&id, &parent, &changes, &created_by)
                .map_err(ApiError::from)
        })
        .await
    }
    .map_err(|e| e.message)?;
    remove(d, cid).await;
    Ok(img)
}

/// A command's argv: exec form as is, shell form through the stage's SHELL.
fn exec_or_shell(c: &Command, shell: &[String]) -> Vec<String> {
    match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut v = shell.to_vec();
            v.push(s.clone());
            v
        }
    }
}

fn resolve_dest(workdir: &str, dest: &str) -> String {
    if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!(
            "{}/{dest}",
            if workdir.is_empty() {
                ""
            } else {
                workdir.trim_end_matches('/')
            }
        )
    }
}
