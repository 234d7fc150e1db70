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

fn id_of(d: &Daemon, image: &str) -> String {
    d.ok(&["image", "inspect", "-f", "{{.Id}}", image])
}

const APP: &str = "FROM busybox
ARG WHO=world
ENV GREETING=hello
RUN echo \"ran $WHO\" && echo \"$GREETING $WHO\" > /greeting
COPY a.txt /a.txt
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
    let out = d.berth_ok(&["builder", "prune", "-f"]);
    assert!(out.starts_with("Total reclaimed space: "), "{out}");
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
    let ls = d.ok(&["run", "--rm", "parent:1", "find", "/ctx", "-type", "f"]);
    let mut files: Vec<&str> = ls.lines().collect();
    files.sort();
    assert_eq!(
        files,
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
