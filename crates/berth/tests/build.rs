//! `berth build` and `docker build` (the classic builder's API) against a test daemon:
//! the build cache (hits, invalidation by content, build args, `--no-cache`,
//! `builder prune`), intermediate images, `.dockerignore`, HEALTHCHECK, ONBUILD, COPY
//! `--chown` by name and `--chmod`, `-f -`, `--iidfile`, `--label`, history, and `FROM` an
//! image that is only in a registry.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::daemon::{daemon_with_busybox, Daemon};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn build(d: &Daemon, args: &[&str]) -> String {
    let mut a = vec!["build"];
    a.extend_from_slice(args);
    d.berth_ok(&a)
}

/// The files under `dir` in `image`, sorted.
fn files_in(d: &Daemon, image: &str, dir: &str) -> Vec<String> {
    let ls = d.ok(&["run", "--rm", image, "find", dir, "-type", "f"]);
    let mut files: Vec<String> = ls.lines().map(String::from).collect();
    files.sort();
    files
}

fn id_of(d: &Daemon, image: &str) -> String {
    d.ok(&["image", "inspect", "-f", "{{.Id}}", image])
}

const APP: &str = "# syntax=docker/dockerfile:1
FROM busybox
ARG WHO=world
ENV GREETING=hello
RUN echo \"ran $WHO\" && echo \"$GREETING $WHO\" > /greeting
COPY --link a.txt /a.txt
COPY dir/ /dir/
RUN echo j\"\"oined && cat /a.txt /dir/b.txt > /both
CMD [\"cat\", \"/both\"]
";

/// Steps are reused when their parent, instruction and inputs are the same; a changed
/// file invalidates the steps from its COPY on, a build arg the RUN that sees it.
#[test]
fn the_cache_follows_contents_not_mtimes() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(
        c,
        &[("Dockerfile", APP), ("a.txt", "A\n"), ("dir/b.txt", "B\n")],
    );
    let cs = c.to_str().unwrap();
    let out = build(&d, &["-t", "app:1", cs]);
    assert!(
        out.contains("ran world") && !out.contains("Using cache"),
        "{out}"
    );
    assert!(
        out.contains("# syntax=docker/dockerfile:1: ignored"),
        "{out}"
    );
    let first = id_of(&d, "app:1");
    assert_eq!(d.ok(&["run", "--rm", "app:1"]), "A\nB\n");
    assert_eq!(
        d.ok(&["run", "--rm", "app:1", "cat", "/greeting"]),
        "hello world\n"
    );

    // Again: every step from the cache, the same image.
    let out = build(&d, &["-t", "app:1", cs]);
    assert_eq!(out.matches("Using cache").count(), 7, "{out}");
    assert!(
        !out.contains("ran world") && !out.contains("joined"),
        "{out}"
    );
    assert_eq!(id_of(&d, "app:1"), first);

    // A newer mtime, the same bytes: still the cache.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(c.join("a.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let out = build(&d, &["-t", "app:1", cs]);
    assert_eq!(out.matches("Using cache").count(), 7, "{out}");

    // Another b.txt: the steps before COPY dir/ come from the cache, the rest run.
    std::fs::write(c.join("dir/b.txt"), "B2\n").unwrap();
    let out = build(&d, &["-t", "app:1", cs]);
    assert_eq!(out.matches("Using cache").count(), 4, "{out}");
    assert!(
        !out.contains("ran world") && out.contains("joined"),
        "{out}"
    );
    assert_eq!(d.ok(&["run", "--rm", "app:1"]), "A\nB2\n");

    // A build arg the first RUN sees.
    let out = build(&d, &["--build-arg", "WHO=you", "-t", "app:2", cs]);
    assert!(out.contains("ran you"), "{out}");
    assert_eq!(out.matches("Using cache").count(), 2, "{out}");

    // The docker CLI (classic builder) sees the same cache.
    let mut docker = Command::new("docker");
    docker
        .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
        .env("DOCKER_BUILDKIT", "0");
    let (code, out, err) = d.client(&mut docker, &["build", "-t", "app:3", cs]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(" ---> Using cache") && out.contains("Successfully tagged app:3"),
        "{out}"
    );
    assert_eq!(id_of(&d, "app:3"), id_of(&d, "app:1"));

    // Metadata steps add no layers; the history says which steps did.
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", "app:1"]),
        "5\n"
    );
    let history = d.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "app:1",
    ]);
    assert!(history.contains("ENV GREETING=hello"), "{history}");
    assert!(history.contains("echo j\"\"oined"), "{history}");

    // Intermediate images: hidden without -a, kept by `image prune`, gone with
    // `builder prune` (and the next build runs again).
    let listed = d.ok(&["images", "-q"]);
    let all = d.ok(&["images", "-q", "-a"]);
    assert!(
        all.lines().count() > listed.lines().count() + 5,
        "{listed}\n{all}"
    );
    d.ok(&["image", "prune", "-f"]);
    let out = build(&d, &["--no-cache", "-t", "app:1", cs]);
    assert!(
        !out.contains("Using cache") && out.contains("ran world"),
        "{out}"
    );
    let out = build(&d, &["-t", "app:1", cs]);
    assert_eq!(out.matches("Using cache").count(), 7, "{out}");
    // system df counts the cache, through both CLIs.
    let cache_row = |out: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with("Build Cache"))
            .unwrap_or_else(|| panic!("{out}"))
            .split_whitespace()
            .skip(2)
            .map(String::from)
            .collect()
    };
    let row = cache_row(&d.berth_ok(&["system", "df"]));
    assert!(row[0].parse::<u32>().unwrap() >= 3, "{row:?}");
    let (code, out, err) = d.docker(&["system", "df"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cache_row(&out)[0], row[0], "{out}");
    // Without -a only dangling cache goes (app:2's own steps, once it is untagged); what
    // app:1 is built from stays.
    d.ok(&["rmi", "app:2"]);
    d.berth_ok(&["builder", "prune", "-f"]);
    let out = build(&d, &["-t", "app:1", cs]);
    assert_eq!(out.matches("Using cache").count(), 7, "{out}");
    let fewer = cache_row(&d.berth_ok(&["system", "df"]));
    assert!(
        fewer[0].parse::<u32>().unwrap() < row[0].parse::<u32>().unwrap(),
        "{fewer:?} {row:?}"
    );
    let row = fewer;
    // --keep-storage: a bound above what the cache takes keeps it all, a tiny one not.
    d.berth_ok(&["builder", "prune", "-f", "--keep-storage", "1g"]);
    assert_eq!(cache_row(&d.berth_ok(&["system", "df"]))[0], row[0]);
    d.berth_ok(&["builder", "prune", "-f", "--keep-storage", "1"]);
    let left: u32 = cache_row(&d.berth_ok(&["system", "df"]))[0]
        .parse()
        .unwrap();
    assert!(left < row[0].parse::<u32>().unwrap(), "{left} {row:?}");
    let out = d.berth_ok(&["builder", "prune", "-a", "-f"]);
    assert!(out.starts_with("Total reclaimed space: "), "{out}");
    assert_eq!(cache_row(&d.berth_ok(&["system", "df"]))[0], "0");
    let out = build(&d, &["-t", "app:1", cs]);
    assert!(
        !out.contains("Using cache") && out.contains("ran world"),
        "{out}"
    );
}

/// `.dockerignore` with an exception, HEALTHCHECK, ONBUILD, COPY `--chown` by name and
/// `--chmod`, a Dockerfile from stdin, `--iidfile` and `--label`.
#[test]
fn ignore_files_healthchecks_triggers_and_ownership() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(
        c,
        &[
            (".dockerignore", "*.log\nsecret/\n!secret/public.txt\n"),
            ("app.log", "noise\n"),
            ("keep.txt", "kept\n"),
            ("secret/key", "private\n"),
            ("secret/public.txt", "public\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY . /ctx/\nCOPY --chown=nobody:nogroup keep.txt /owned\nCOPY --chmod=600 keep.txt /private\nHEALTHCHECK --interval=5s --retries=2 CMD true\nONBUILD RUN echo triggered > /onbuild\nMAINTAINER someone\n",
            ),
        ],
    );
    let iid = c.join("iid");
    build(
        &d,
        &[
            "-t",
            "parent:1",
            "--label",
            "team=blue",
            "--iidfile",
            iid.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&iid).unwrap(),
        id_of(&d, "parent:1").trim()
    );
    assert_eq!(
        files_in(&d, "parent:1", "/ctx"),
        [
            "/ctx/.dockerignore",
            "/ctx/Dockerfile",
            "/ctx/keep.txt",
            "/ctx/secret/public.txt"
        ]
    );
    assert_eq!(
        d.ok(&["run", "--rm", "parent:1", "stat", "-c", "%u:%g %a", "/owned", "/private"]),
        "65534:65534 644\n0:0 600\n"
    );
    let inspect = |f: &str| d.ok(&["image", "inspect", "-f", f, "parent:1"]);
    assert_eq!(
        inspect("{{.Config.Healthcheck.Interval}} {{.Config.Healthcheck.Retries}}"),
        "5s 2\n"
    );
    assert_eq!(
        inspect("{{index .Config.Labels \"team\"}} {{.Author}}"),
        "blue someone\n"
    );
    assert_eq!(
        inspect("{{json .Config.OnBuild}}"),
        "[\"RUN echo triggered > /onbuild\"]\n"
    );

    // A child: the trigger runs, and is not inherited. Its Dockerfile comes from stdin.
    let mut child = d
        .berth_cmd()
        .args(["build", "-t", "child:1", "-f", "-", c.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"FROM parent:1\nCMD [\"cat\", \"/onbuild\"]\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# Executing 1 build trigger"), "{text}");
    assert_eq!(d.ok(&["run", "--rm", "child:1"]), "triggered\n");
    assert_eq!(
        d.ok(&[
            "image",
            "inspect",
            "-f",
            "{{json .Config.OnBuild}}",
            "child:1"
        ]),
        "null\n"
    );
    // A name that is not in the image's passwd: the error says so.
    write(
        c,
        &[(
            "Dockerfile.bad",
            "FROM busybox\nCOPY --chown=nosuchuser keep.txt /x\n",
        )],
    );
    let (code, _, err) = d.berth(&[
        "build",
        "-f",
        c.join("Dockerfile.bad").to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unable to find user nosuchuser"), "{err}");

    // The same context sent as a tar (as to a daemon that cannot see the directory):
    // the CLI leaves out the same files.
    let mut sent = d.berth_cmd();
    sent.env("BERTH_BUILD_SEND_CONTEXT", "1").args([
        "build",
        "-t",
        "parent:2",
        c.to_str().unwrap(),
    ]);
    let out = sent.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        files_in(&d, "parent:2", "/ctx"),
        [
            "/ctx/.dockerignore",
            "/ctx/Dockerfile",
            "/ctx/Dockerfile.bad",
            "/ctx/iid",
            "/ctx/keep.txt",
            "/ctx/secret/public.txt"
        ]
    );

    // A symlink in the context that leads out of it is not followed out.
    std::os::unix::fs::symlink("/etc", c.join("hostetc")).unwrap();
    write(
        c,
        &[(
            "Dockerfile.escape",
            "FROM busybox\nCOPY hostetc/passwd /stolen\n",
        )],
    );
    let (code, _, err) = d.berth(&[
        "build",
        "-f",
        c.join("Dockerfile.escape").to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("outside the build context"), "{err}");
    // Nor one in a stage that COPY --from reads.
    write(
        c,
        &[(
            "Dockerfile.escape",
            "FROM busybox AS evil\nRUN ln -s /etc /hostetc\nFROM busybox\nCOPY --from=evil /hostetc/passwd /stolen\n",
        )],
    );
    let (code, _, err) = d.berth(&[
        "build",
        "-f",
        c.join("Dockerfile.escape").to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("outside the source image"), "{err}");
}

/// `FROM` an image that is only in a registry: pulled, with the build's own progress.
#[test]
fn from_pulls_a_missing_base_image() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let reg = common::Registry::start_in(Some(&d.netns()));
    let base = format!("127.0.0.1:{}/bases/busybox:1", reg.port);
    d.ok(&["tag", "busybox", &base]);
    d.ok(&["push", &base]);
    d.ok(&["rmi", &base]);
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!("FROM {base}\nRUN echo on-a-pulled-base > /x\n"),
        )],
    );
    let out = build(&d, &["-t", "pulled:1", ctx.path().to_str().unwrap()]);
    assert!(
        out.contains("Pulling from bases/busybox") || out.contains("Digest: sha256:"),
        "{out}"
    );
    assert_eq!(
        d.ok(&["run", "--rm", "pulled:1", "cat", "/x"]),
        "on-a-pulled-base\n"
    );
    assert_eq!(d.docker(&["image", "inspect", &base]).0, 0);
}

const MOUNTS: &str = r#"FROM busybox AS left
ARG TOKEN
# Each of the two stages waits for the other's mark: they finish only if they run at once.
RUN --mount=type=cache,id=rendezvous,target=/r touch /r/left-$TOKEN && i=0; while [ ! -e /r/right-$TOKEN ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; test -e /r/right-$TOKEN
RUN mkdir /out && echo from-left > /out/file

FROM busybox AS right
ARG TOKEN
RUN --mount=type=cache,id=rendezvous,target=/r touch /r/right-$TOKEN && i=0; while [ ! -e /r/left-$TOKEN ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; test -e /r/left-$TOKEN

FROM busybox
ARG TOKEN
ARG TARGETARCH
COPY --from=right /etc/hostname /right-was-built
RUN --mount=type=cache,target=/cache,sharing=locked echo $TOKEN >> /cache/log && wc -l < /cache/log > /runs
RUN --mount=type=secret,id=tok grep -q "^s3cret-" /run/secrets/tok && echo secret-seen
RUN --mount=type=secret,id=tok,env=TOK test "${TOK%-value}" = s3cret && echo "$TARGETARCH" > /arch
RUN --mount=type=bind,source=data,target=/data cat /data/x > /copied
RUN --mount=type=bind,from=left,source=/out,target=/left cat /left/file > /from-left
RUN --mount=type=tmpfs,target=/scratch grep -q " /scratch tmpfs" /proc/mounts && echo marker-in-a-layer > /visible
"#;

/// RUN `--mount` (cache kept across builds, secrets by file and env and in no layer,
/// binds of the context and of a stage, tmpfs), independent stages at once, the
/// platform ARGs, and `-o` exports.
#[test]
fn run_mounts_secrets_parallel_stages_and_exports() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(c, &[("Dockerfile", MOUNTS), ("data/x", "bound\n")]);
    let secret = c.join("secret.txt");
    std::fs::write(&secret, "s3cret-value").unwrap();
    let secret_arg = format!("id=tok,src={}", secret.display());
    let out_dir = c.join("exported");
    let out_tar = c.join("files.tar");
    let out_oci = c.join("image.tar");
    let build_with = |token: &str, extra: &[&str]| {
        let mut a = vec![
            "build",
            "--build-arg",
            token,
            "--secret",
            &secret_arg,
            "-t",
            "mounts:1",
        ];
        a.extend_from_slice(extra);
        a.push(c.to_str().unwrap());
        d.berth(&a)
    };
    let (code, out, err) = build_with(
        "TOKEN=one",
        &[
            "-o",
            &format!("type=local,dest={}", out_dir.display()),
            "-o",
            &format!("type=tar,dest={}", out_tar.display()),
            "-o",
            &format!("type=oci,dest={}", out_oci.display()),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("secret-seen"), "{out}");
    // The output reads stage by stage although they ran at once.
    let left = out.find("FROM busybox AS left").unwrap();
    let right = out.find("FROM busybox AS right").unwrap();
    assert!(left < right, "{out}");
    let run = |args: &[&str]| {
        let mut a = vec!["run", "--rm", "mounts:1"];
        a.extend_from_slice(args);
        d.ok(&a)
    };
    assert_eq!(
        run(&["cat", "/runs", "/copied", "/from-left"]),
        "1\nbound\nfrom-left\n"
    );
    let arch = run(&["cat", "/arch"]);
    assert!(["amd64\n", "arm64\n"].contains(&arch.as_str()), "{arch}");
    // Mount points the steps needed are gone; nothing of the secret is in the image.
    assert_eq!(
        run(&["sh", "-c", "ls -d /cache /data /left /scratch /run/secrets 2>&1 | wc -l; ls /run 2>/dev/null | wc -l"]),
        "5\n0\n"
    );

    // The exports: the files, the files as a tar, and an image archive.
    assert_eq!(
        std::fs::read_to_string(out_dir.join("copied")).unwrap(),
        "bound\n"
    );
    assert!(out_dir.join("bin/busybox").exists());
    let names = Command::new("tar")
        .arg("tf")
        .arg(&out_tar)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&names.stdout)
        .lines()
        .any(|l| l == "from-left"));
    let (code, _, err) = d.berth(&["load", "-i", out_oci.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // Every layer of the saved image, searched: the marker is found, the secret is not.
    let layers = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("xf")
        .arg(&out_oci)
        .arg("-C")
        .arg(layers.path())
        .status()
        .unwrap();
    assert!(st.success());
    let grep = |needle: &str| {
        Command::new("grep")
            .args(["-r", "-a", "-l", "-z", needle])
            .arg(layers.path())
            .output()
            .unwrap()
            .stdout
    };
    assert!(
        !grep("marker-in-a-layer").is_empty(),
        "the search finds what is there"
    );
    assert!(grep("s3cret-value").is_empty(), "the secret is in no layer");

    // Again with another token: the cache mount kept its file, so it has two lines now;
    // a changed bound file reruns its step.
    std::fs::write(c.join("data/x"), "bound again\n").unwrap();
    let (code, out, err) = build_with("TOKEN=two", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(run(&["cat", "/runs", "/copied"]), "2\nbound again\n");

    // A required secret that is not given, and a platform that cannot run here.
    let (code, _, err) = d.berth(&["build", "--build-arg", "TOKEN=three", c.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("secret-seen") || err.contains("returned a non-zero code"),
        "{err}"
    );
    let (code, _, err) = d.berth(&["build", "--platform", "linux/s390x", c.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("platform linux/s390x cannot run here"),
        "{err}"
    );
}

/// `ADD <url>`: fetched by the daemon (from a server in its network namespace), named
/// by the URL, mode 0600, checked with `--checksum`.
#[test]
fn add_fetches_urls_with_checksums() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let body = b"served over http\n".to_vec();
    let sum = format!("sha256:{}", berth_types::Digest::sha256(&body).hex());
    let served = body.clone();
    let server = common::http::serve(
        Some(&d.netns()),
        std::sync::Arc::new(move |r: &common::http::Request| {
            if r.path.starts_with("/files/notes.txt") {
                common::http::Reply::new(200, served.clone())
            } else {
                common::http::Reply::new(404, "no")
            }
        }),
    );
    let url = format!("http://127.0.0.1:{}/files/notes.txt", server.port);
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD --checksum={sum} {url} /srv/\nADD {url} /renamed.txt\n"),
        )],
    );
    build(&d, &["-t", "fetched:1", ctx.path().to_str().unwrap()]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "fetched:1",
            "sh",
            "-c",
            "cat /srv/notes.txt /renamed.txt; stat -c %a /srv/notes.txt"
        ]),
        "served over http\nserved over http\n600\n"
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    write(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD --checksum={wrong} {url} /srv/\n"),
        )],
    );
    let (code, _, err) = d.berth(&["build", ctx.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("checksum mismatch"), "{err}");
    write(
        ctx.path(),
        &[("Dockerfile", &format!("FROM busybox\nCOPY {url} /x\n"))],
    );
    let (code, _, err) = d.berth(&["build", ctx.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("source can't be a URL for COPY"), "{err}");
}

/// `COPY --link`: a layer made without the parent, so a changed parent reuses it (the
/// same diffID on top of another base) instead of copying again.
#[test]
fn linked_copies_serve_any_parent() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(
        c,
        &[
            (
                "Dockerfile",
                "FROM busybox\nARG BASE\nRUN echo $BASE > /base\nCOPY --link --chown=nobody:nogroup files/ /opt/files/\nRUN cat /base /opt/files/x > /seen\n",
            ),
            ("files/x", "linked\n"),
        ],
    );
    let cs = c.to_str().unwrap();
    let layer = |tag: &str| d.ok(&["image", "inspect", "-f", "{{index .RootFS.Layers 2}}", tag]);
    let out = build(&d, &["--build-arg", "BASE=one", "-t", "linked:1", cs]);
    assert!(!out.contains("linked layer"), "{out}");
    let out = build(&d, &["--build-arg", "BASE=two", "-t", "linked:2", cs]);
    assert!(
        out.contains("Using the linked layer from the cache"),
        "{out}"
    );
    assert_eq!(layer("linked:1"), layer("linked:2"));
    assert_ne!(
        d.ok(&["image", "inspect", "-f", "{{.Id}}", "linked:1"]),
        d.ok(&["image", "inspect", "-f", "{{.Id}}", "linked:2"])
    );
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "linked:2",
            "sh",
            "-c",
            "cat /seen; stat -c '%u:%g' /opt/files/x; stat -c %a /opt"
        ]),
        "two\nlinked\n65534:65534\n755\n"
    );
    // The same parent again: the step itself from the cache.
    let out = build(&d, &["--build-arg", "BASE=two", "-t", "linked:2", cs]);
    assert_eq!(out.matches("Using cache").count(), 4, "{out}");
}

/// WORKDIR creates the directories the image lacks (root, 0755, one layer) and leaves
/// existing ones as they are.
#[test]
fn workdir_creates_what_is_missing() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nWORKDIR /srv/app/data\nWORKDIR /tmp\nRUN pwd > /pwd\n",
        )],
    );
    build(&d, &["-t", "wd:1", ctx.path().to_str().unwrap()]);
    let tmp_before = d.ok(&["run", "--rm", "busybox", "stat", "-c", "%a %u", "/tmp"]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "wd:1",
            "sh",
            "-c",
            "stat -c '%a %u' /srv /srv/app/data; cat /pwd"
        ]),
        "755 0\n755 0\n/tmp\n"
    );
    assert_eq!(
        d.ok(&["run", "--rm", "wd:1", "stat", "-c", "%a %u", "/tmp"]),
        tmp_before
    );
    let layers = |i: &str| {
        d.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", i])
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(layers("wd:1"), layers("busybox") + 2);
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{.Config.WorkingDir}}", "wd:1"]),
        "/tmp\n"
    );
}
