//! `POST /build` (the classic builder's API, which `docker build` uses without BuildKit
//! and `berth build` uses): the context tar is unpacked into a scratch directory, the
//! Dockerfile parsed by berth-build, and each stage run step by step: RUN in a container
//! of the current image, then committed; COPY/ADD through the layer applier into a
//! container's root filesystem, then committed; the rest as configuration changes
//! carried to the next commit. Output streams as Docker's JSON lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_build::parse::{self, Command, Instruction};
use serde_json::{json, Value};
use tokio::sync::mpsc::Sender;

use crate::images::{param, params, truthy};
use crate::{ApiError, ApiResult, Shared};

type Out = Sender<Bytes>;

async fn say(out: &Out, text: impl AsRef<str>) {
    let line = json!({"stream": text.as_ref()}).to_string() + "\r\n";
    let _ = out.send(Bytes::from(line)).await;
}

/// What one stage carries from step to step.
struct StageState {
    image: String,
    /// Configuration changes (`--change` syntax) for the next commit.
    pending: Vec<String>,
    env: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
    workdir: String,
    user: String,
    shell: Vec<String>,
}

impl StageState {
    fn vars(&self) -> BTreeMap<String, String> {
        let mut v = self.args.clone();
        v.extend(self.env.clone());
        v
    }
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// `POST /build`.
pub async fn build(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
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
            t.parse::<berth_types::Reference>()
                .map_err(|e| ApiError::bad_request(format!("invalid tag {t:?}: {e}")))?,
        );
    }
    let build_args: BTreeMap<String, Option<String>> = match param(&ps, "buildargs") {
        Some(b) if !b.is_empty() => serde_json::from_str(b)
            .map_err(|e| ApiError::bad_request(format!("invalid buildargs: {e}")))?,
        _ => BTreeMap::new(),
    };
    let target = param(&ps, "target")
        .filter(|t| !t.is_empty())
        .map(String::from);
    let quiet = truthy(param(&ps, "q"));
    let spooled = crate::images::body_to_file(&d, body).await?;
    let context = d
        .data_root
        .join("tmp")
        .join(format!("build-{}", berth_store::content::unique()));
    {
        let (spooled, context) = (spooled.clone(), context.clone());
        crate::blocking(move || {
            std::fs::create_dir_all(&context).map_err(ApiError::internal)?;
            let f = std::fs::File::open(&spooled).map_err(ApiError::internal)?;
            // `unpack` keeps every entry inside the context directory.
            tar::Archive::new(f)
                .unpack(&context)
                .map_err(|e| ApiError::bad_request(format!("reading the build context: {e}")))
        })
        .await?;
    }
    let _ = std::fs::remove_file(&spooled);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let d2 = d.clone();
    tokio::spawn(async move {
        let result = run(
            &d2,
            &context,
            &dockerfile,
            &build_args,
            target.as_deref(),
            quiet,
            &tx,
        )
        .await;
        let _ = tokio::fs::remove_dir_all(&context).await;
        match result {
            Ok(id) => {
                for (t, r) in tags.iter().zip(&tag_refs) {
                    if let Err(e) = d2.store.tag(&id, r) {
                        let msg = e.to_string();
                        let line =
                            json!({"errorDetail": {"message": msg}, "error": msg}).to_string();
                        let _ = tx.send(Bytes::from(line + "\r\n")).await;
                        return;
                    }
                    d2.image_event("tag", &id, t);
                }
                let aux = json!({"aux": {"ID": id}}).to_string() + "\r\n";
                let _ = tx.send(Bytes::from(aux)).await;
                if quiet {
                    say(&tx, format!("{id}\n")).await;
                } else {
                    say(&tx, format!("Successfully built {}\n", short(&id))).await;
                    for t in &tags {
                        let shown = t
                            .parse::<berth_types::Reference>()
                            .map(|r| r.familiar())
                            .unwrap_or_else(|_| t.clone());
                        say(&tx, format!("Successfully tagged {shown}\n")).await;
                    }
                }
            }
            Err(msg) => {
                let line = json!({"errorDetail": {"message": msg}, "error": msg}).to_string();
                let _ = tx.send(Bytes::from(line + "\r\n")).await;
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

/// Runs the build; returns the final image's id.
async fn run(
    d: &Shared,
    context: &Path,
    dockerfile: &str,
    build_args: &BTreeMap<String, Option<String>>,
    target: Option<&str>,
    quiet: bool,
    out: &Out,
) -> Result<String, String> {
    let path = context.join(dockerfile);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("Cannot locate specified Dockerfile: {dockerfile} ({e})"))?;
    let df = parse::parse(&text).map_err(|e| e.to_string())?;
    let last = match target {
        Some(t) => df
            .stage(t)
            .ok_or_else(|| format!("failed to reach build target {t} in Dockerfile"))?,
        None => df.stages.len() - 1,
    };
    // Global ARGs: their defaults, overridden by --build-arg.
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &df.global_args {
        let val = build_args.get(k).cloned().flatten().or_else(|| v.clone());
        if let Some(val) = val {
            global.insert(k.clone(), val);
        }
    }
    let total: usize = df.stages[..=last].iter().map(|s| s.steps.len() + 1).sum();
    let mut n = 0;
    let mut stage_images: Vec<String> = Vec::new();
    for stage in &df.stages[..=last] {
        n += 1;
        let base = parse::expand(&stage.base, &global, df.escape)?;
        if !quiet {
            say(
                out,
                format!(
                    "Step {n}/{total} : FROM {base}{}\n",
                    stage
                        .name
                        .as_ref()
                        .map(|a| format!(" AS {a}"))
                        .unwrap_or_default()
                ),
            )
            .await;
        }
        let image = base_image(d, &df, &stage_images, &base).await?;
        let cfg = image_config(d, &image)?;
        let env: BTreeMap<String, String> = cfg["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e.as_str()?
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let mut st = StageState {
            image,
            pending: Vec::new(),
            env,
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
        };
        if !quiet {
            say(out, format!(" ---> {}\n", short(&st.image))).await;
        }
        for step in &stage.steps {
            n += 1;
            if !quiet {
                say(
                    out,
                    format!("Step {n}/{total} : {} {}\n", step.keyword, step.original),
                )
                .await;
            }
            step_run(
                d,
                context,
                &df,
                &stage_images,
                &mut st,
                step,
                build_args,
                &global,
                quiet,
                out,
            )
            .await
            .map_err(|e| format!("{e} (Dockerfile line {})", step.line))?;
            if !quiet {
                say(out, format!(" ---> {}\n", short(&st.image))).await;
            }
        }
        if !st.pending.is_empty() {
            st.image = commit(d, &st.image, None, std::mem::take(&mut st.pending)).await?;
        }
        stage_images.push(st.image);
    }
    stage_images
        .pop()
        .ok_or_else(|| "nothing was built".to_string())
}

fn image_config(d: &Shared, id: &str) -> Result<Value, String> {
    let img = d
        .store
        .resolve(id)
        .ok_or_else(|| format!("no such image: {id}"))?;
    crate::containers::api::image_config(d, &img).map_err(|e| e.message)
}

/// The image a stage starts from: an earlier stage, `scratch` (an empty image made
/// here), or a local image.
async fn base_image(
    d: &Shared,
    df: &parse::Dockerfile,
    done: &[String],
    base: &str,
) -> Result<String, String> {
    if let Some(i) = df.stage(base) {
        if let Some(id) = done.get(i) {
            return Ok(id.clone());
        }
    }
    if base == "scratch" {
        let store = d.store.clone();
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
    match d.store.resolve(base) {
        Some(img) => Ok(img.config.to_string()),
        None => Err(format!(
            "pull access denied for {base}: the image is not here (pull it first: berth pull {base})"
        )),
    }
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

/// Commits container `cid` (or, without one, a fresh container of `image`) with the
/// pending changes; returns the new image.
async fn commit(
    d: &Shared,
    image: &str,
    cid: Option<&str>,
    changes: Vec<String>,
) -> Result<String, String> {
    let made;
    let cid = match cid {
        Some(c) => c.to_string(),
        None => {
            made = container(d, image, json!({"Cmd": ["true"]})).await?;
            made.clone()
        }
    };
    let e = d.containers.get(&cid).map_err(|e| e.message)?;
    let rec = e.snapshot();
    let store = d.store.clone();
    let (id, parent) = (rec.id.clone(), image.to_string());
    let img = crate::containers::with_rootfs(d, rec, false, move |_| {
        store
            .commit(&id, &parent, &changes, "", None)
            .map_err(ApiError::from)
    })
    .await
    .map_err(|e| e.message)?;
    remove(d, &cid).await;
    Ok(img.config.to_string())
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

#[allow(clippy::too_many_arguments)]
async fn step_run(
    d: &Shared,
    context: &Path,
    df: &parse::Dockerfile,
    stage_images: &[String],
    st: &mut StageState,
    step: &parse::Step,
    build_args: &BTreeMap<String, Option<String>>,
    global: &BTreeMap<String, String>,
    quiet: bool,
    out: &Out,
) -> Result<(), String> {
    let esc = df.escape;
    let x = |w: &str, st: &StageState| parse::expand(w, &st.vars(), esc);
    match &step.instruction {
        Instruction::Arg(list) => {
            for (k, def) in list {
                let val = build_args
                    .get(k)
                    .cloned()
                    .flatten()
                    .or_else(|| def.as_ref().map(|v| x(v, st)).transpose().ok().flatten())
                    .or_else(|| global.get(k).cloned());
                if let Some(v) = val {
                    st.args.insert(k.clone(), v);
                }
            }
        }
        Instruction::Env(pairs) => {
            for (k, v) in pairs {
                let v = x(v, st)?;
                st.pending.push(format!("ENV {k}={v}"));
                st.env.insert(k.clone(), v);
            }
        }
        Instruction::Label(pairs) => {
            for (k, v) in pairs {
                st.pending
                    .push(format!("LABEL {}={}", x(k, st)?, x(v, st)?));
            }
        }
        Instruction::Workdir(w) => {
            let w = x(w, st)?;
            let abs = if w.starts_with('/') {
                w
            } else {
                format!("{}/{w}", st.workdir.trim_end_matches('/'))
            };
            st.workdir = abs.clone();
            st.pending.push(format!("WORKDIR {abs}"));
        }
        Instruction::User(u) => {
            st.user = x(u, st)?;
            st.pending.push(format!("USER {}", st.user));
        }
        Instruction::Expose(ports) => {
            let ports: Vec<String> = ports.iter().map(|p| x(p, st)).collect::<Result<_, _>>()?;
            st.pending.push(format!("EXPOSE {}", ports.join(" ")));
        }
        Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
            let argv = exec_or_shell(c, &st.shell);
            st.pending.push(format!("{} {}", step.keyword, json!(argv)));
        }
        Instruction::Shell(v) => {
            st.shell = v.clone();
            st.pending.push(format!("SHELL {}", json!(v)));
        }
        Instruction::StopSignal(s) => st.pending.push(format!("STOPSIGNAL {}", x(s, st)?)),
        Instruction::Volume(v) => st.pending.push(format!("VOLUME {}", json!(v))),
        Instruction::Maintainer(_) | Instruction::Onbuild(_) | Instruction::Healthcheck { .. } => {
            say(
                out,
                format!(
                    " ---> {} is not applied by this builder yet\n",
                    step.keyword
                ),
            )
            .await;
        }
        Instruction::From { .. } => {}
        Instruction::Run {
            command, heredocs, ..
        } => {
            let mut argv = exec_or_shell(command, &st.shell);
            if let (Some(h), Command::Shell(_)) = (heredocs.first(), command) {
                // `RUN <<EOF`: the heredoc is the script.
                argv = st.shell.clone();
                argv.push(h.content.clone());
            }
            let mut env: Vec<String> = st.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.extend(
                st.args
                    .iter()
                    .filter(|(k, _)| !st.env.contains_key(*k))
                    .map(|(k, v)| format!("{k}={v}")),
            );
            let cid = container(
                d,
                &st.image,
                json!({"Cmd": argv, "Entrypoint": [], "Env": env, "WorkingDir": st.workdir, "User": st.user}),
            )
            .await?;
            let e = d.containers.get(&cid).map_err(|e| e.message)?;
            let seen = e.progress.borrow().exits;
            {
                let _g = e.op.lock().await;
                if let Err(err) = d.containers.start(&e).await {
                    drop(_g);
                    remove(d, &cid).await;
                    return Err(err.message);
                }
            }
            crate::containers::Containers::wait_exit(&e, seen, None).await;
            // The step's output, from its log.
            if !quiet {
                let log = std::fs::read_to_string(d.containers.log_path(&cid)).unwrap_or_default();
                for line in log.lines() {
                    if let Ok(v) = serde_json::from_str::<Value>(line) {
                        say(out, v["log"].as_str().unwrap_or("")).await;
                    }
                }
            }
            let code = e.snapshot().state.exit_code;
            if code != 0 {
                remove(d, &cid).await;
                let shown = match command {
                    Command::Shell(s) => format!("{} {s}", st.shell.join(" ")),
                    Command::Exec(v) => json!(v).to_string(),
                };
                return Err(format!(
                    "The command '{shown}' returned a non-zero code: {code}"
                ));
            }
            st.image = commit(d, &st.image, Some(&cid), std::mem::take(&mut st.pending)).await?;
        }
        Instruction::Copy {
            sources,
            dest,
            flags,
            heredocs,
            add,
        } => {
            if flags.contains_key("from") {
                let from = flags["from"][0].clone();
                return copy_from(d, df, stage_images, st, &from, sources, dest, out).await;
            }
            let dest = x(dest, st)?;
            let owner = owner(flags.get("chown").and_then(|v| v.first()))?;
            let mut tarball = Vec::new();
            {
                let mut b = tar::Builder::new(&mut tarball);
                b.follow_symlinks(false);
                let target = resolve_dest(&st.workdir, &dest);
                let many = sources.len() > 1 || dest.ends_with('/');
                if !heredocs.is_empty() {
                    for h in heredocs {
                        let name = if many {
                            format!("{}/{}", target, h.name)
                        } else {
                            target.clone()
                        };
                        add_bytes(&mut b, &name, h.content.as_bytes())?;
                    }
                } else {
                    for s in sources {
                        let s = x(s, st)?;
                        let matches = glob_context(context, &s)?;
                        if matches.is_empty() {
                            return Err(format!(
                                "COPY failed: file not found in build context: {s}"
                            ));
                        }
                        for m in matches {
                            let src = context.join(&m);
                            let meta =
                                std::fs::symlink_metadata(&src).map_err(|e| e.to_string())?;
                            if meta.is_dir() {
                                // A directory's contents, not the directory itself.
                                b.append_dir_all(target.trim_start_matches('/'), &src)
                                    .map_err(|e| e.to_string())?;
                            } else if *add && is_tar(&src) {
                                let mut inner = tar::Archive::new(open_maybe_gz(&src)?);
                                for entry in inner.entries().map_err(|e| e.to_string())? {
                                    let mut entry = entry.map_err(|e| e.to_string())?;
                                    let p = entry.path().map_err(|e| e.to_string())?.into_owned();
                                    let mut h = entry.header().clone();
                                    let name = format!(
                                        "{}/{}",
                                        target.trim_start_matches('/'),
                                        p.display()
                                    );
                                    b.append_data(&mut h, name, &mut entry)
                                        .map_err(|e| e.to_string())?;
                                }
                            } else {
                                let name = if many || sources.len() > 1 {
                                    format!(
                                        "{}/{}",
                                        target.trim_end_matches('/'),
                                        Path::new(&m)
                                            .file_name()
                                            .map(|f| f.to_string_lossy().into_owned())
                                            .unwrap_or_default()
                                    )
                                } else {
                                    target.clone()
                                };
                                b.append_path_with_name(&src, name.trim_start_matches('/'))
                                    .map_err(|e| e.to_string())?;
                            }
                        }
                    }
                }
                b.finish().map_err(|e| e.to_string())?;
            }
            copy_in(d, st, tarball, owner).await?;
        }
    }
    Ok(())
}

/// `COPY --from=<stage|image>`: the paths out of that image's root filesystem.
#[allow(clippy::too_many_arguments)]
async fn copy_from(
    d: &Shared,
    df: &parse::Dockerfile,
    stage_images: &[String],
    st: &mut StageState,
    from: &str,
    sources: &[String],
    dest: &str,
    _out: &Out,
) -> Result<(), String> {
    let src_image = match df.stage(from).and_then(|i| stage_images.get(i)) {
        Some(id) => id.clone(),
        None => d
            .store
            .resolve(from)
            .map(|i| i.config.to_string())
            .ok_or_else(|| format!("COPY --from={from}: no such stage or image"))?,
    };
    // Read the sources out of a container of the source image.
    let src_cid = container(d, &src_image, json!({"Cmd": ["true"]})).await?;
    let e = d.containers.get(&src_cid).map_err(|e| e.message)?;
    let rec = e.snapshot();
    let target = resolve_dest(&st.workdir, dest);
    let many = sources.len() > 1 || dest.ends_with('/');
    let srcs = sources.to_vec();
    let tarball = crate::containers::with_rootfs(d, rec, false, move |root| {
        let mut out = Vec::new();
        {
            let mut b = tar::Builder::new(&mut out);
            b.follow_symlinks(false);
            for s in &srcs {
                // Inside the source root; `..` cannot climb out of it.
                let rel: PathBuf = Path::new(s)
                    .components()
                    .filter(|c| matches!(c, std::path::Component::Normal(_)))
                    .collect();
                let p = root.join(&rel);
                let meta = std::fs::symlink_metadata(&p)
                    .map_err(|_| ApiError::bad_request(format!("COPY --from: {s} not found")))?;
                if meta.is_dir() {
                    b.append_dir_all(target.trim_start_matches('/'), &p)
                        .map_err(ApiError::internal)?;
                } else {
                    let name = if many {
                        format!(
                            "{}/{}",
                            target.trim_end_matches('/'),
                            rel.file_name()
                                .map(|f| f.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        )
                    } else {
                        target.clone()
                    };
                    b.append_path_with_name(&p, name.trim_start_matches('/'))
                        .map_err(ApiError::internal)?;
                }
            }
            b.finish().map_err(ApiError::internal)?;
        }
        Ok(out)
    })
    .await;
    remove(d, &src_cid).await;
    let tarball = tarball.map_err(|e| e.message)?;
    // Root owns what is copied, as with any COPY without --chown.
    copy_in(d, st, tarball, Some((0, 0))).await
}

/// Extracts `tarball` into a fresh container of the stage's image (with the layer
/// applier's path safety; `owner` replaces the entries' owners) and commits it.
async fn copy_in(
    d: &Shared,
    st: &mut StageState,
    tarball: Vec<u8>,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let cid = container(d, &st.image, json!({"Cmd": ["true"]})).await?;
    let e = d.containers.get(&cid).map_err(|e| e.message)?;
    let rec = e.snapshot();
    let applied = crate::containers::with_rootfs(d, rec, false, move |root| {
        berth_store::layer::extract(&root, std::io::Cursor::new(tarball), owner)
            .map(|_| ())
            .map_err(|e| ApiError::bad_request(e.to_string()))
    })
    .await;
    if let Err(e) = applied {
        remove(d, &cid).await;
        return Err(e.message);
    }
    st.image = commit(d, &st.image, Some(&cid), std::mem::take(&mut st.pending)).await?;
    Ok(())
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

fn owner(chown: Option<&String>) -> Result<Option<(u32, u32)>, String> {
    match chown {
        None => Ok(Some((0, 0))),
        Some(c) => {
            let (u, g) = c.split_once(':').unwrap_or((c, c));
            let n = |s: &str| {
                s.parse::<u32>()
                    .map_err(|_| format!("--chown={c}: only numeric uid:gid is supported so far"))
            };
            Ok(Some((n(u)?, n(g)?)))
        }
    }
}

fn add_bytes(b: &mut tar::Builder<&mut Vec<u8>>, name: &str, data: &[u8]) -> Result<(), String> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name.trim_start_matches('/'), data)
        .map_err(|e| e.to_string())
}

fn is_tar(p: &Path) -> bool {
    let n = p.to_string_lossy();
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

fn open_maybe_gz(p: &Path) -> Result<Box<dyn std::io::Read>, String> {
    let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let n = p.to_string_lossy();
    Ok(if n.ends_with(".gz") || n.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    })
}

/// Context paths matching `pattern` (`*` and `?` within one path segment), relative.
fn glob_context(context: &Path, pattern: &str) -> Result<Vec<String>, String> {
    let clean: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if clean.contains(&"..") {
        return Err(format!(
            "COPY failed: forbidden path outside the build context: {pattern}"
        ));
    }
    if clean.is_empty() {
        return Ok(vec![".".into()]);
    }
    let mut found = vec![String::new()];
    for seg in clean {
        let mut next = Vec::new();
        for base in &found {
            let dir = context.join(base);
            if seg.contains(['*', '?']) {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if parse::wildcard(seg, &name) {
                        next.push(if base.is_empty() {
                            name
                        } else {
                            format!("{base}/{name}")
                        });
                    }
                }
            } else if dir.join(seg).symlink_metadata().is_ok() {
                next.push(if base.is_empty() {
                    seg.to_string()
                } else {
                    format!("{base}/{seg}")
                });
            }
        }
        found = next;
    }
    found.sort();
    Ok(found)
}
