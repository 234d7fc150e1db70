//! `berth daemon` driven by the real Docker CLI (Docker 28, client only) over a temporary
//! socket and data root.

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::{busybox_archive, daemon_with_busybox, docker_cli, raw_request, Daemon};
use common::{capture, wait_for};

#[test]
fn docker_cli_image_workflow_against_berth() {
    require_root!();
    if !docker_cli() {
        eprintln!("skipped: no docker CLI");
        return;
    }
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    // Version negotiation: the CLI settles on our API version.
    assert_eq!(
        d.ok(&["version", "--format", "{{.Server.APIVersion}}"])
            .trim(),
        "1.47"
    );
    assert!(d
        .ok(&["info", "--format", "{{.CgroupVersion}} {{.Images}}"])
        .trim()
        .ends_with(" 0"));
    // load, images, inspect.
    let archive = busybox_archive(work.path());
    let out = d.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: busybox:latest");
    let listed = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let (name, id) = listed.trim().split_once(' ').unwrap();
    assert_eq!(name, "busybox:latest");
    assert_eq!(id.len(), 12);
    assert_eq!(
        d.ok(&[
            "image",
            "inspect",
            "busybox",
            "--format",
            "{{.Os}} {{len .RootFS.Layers}} {{.Config.Cmd}}"
        ])
        .trim(),
        "linux 1 [sh]"
    );
    // tag, save (and the saved archive loads back elsewhere with the same ID).
    d.ok(&["tag", "busybox", "localhost/bb:1"]);
    assert_eq!(d.ok(&["images", "-q"]).lines().count(), 2);
    // Filters: reference patterns (Go's path.Match), dangling.
    assert_eq!(
        d.ok(&[
            "images",
            "--filter",
            "reference=localhost/*",
            "--format",
            "{{.Repository}}:{{.Tag}}"
        ]),
        "localhost/bb:1\n"
    );
    assert_eq!(d.ok(&["images", "-q", "--filter", "dangling=true"]), "");
    assert_eq!(
        d.ok(&["images", "-q", "--filter", "reference=busy*"])
            .trim(),
        id
    );
    let saved = work.path().join("saved.tar");
    d.ok(&["save", "-o", saved.to_str().unwrap(), "busybox"]);
    let other = Daemon::start();
    assert_eq!(
        other.ok(&["load", "-i", saved.to_str().unwrap()]).trim(),
        "Loaded image: busybox:latest"
    );
    assert_eq!(other.ok(&["images", "-q"]).trim(), id);
    drop(other);
    // import from stdin with a change.
    let tarball = work.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(common::template_rootfs())
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = capture(
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
            .args(["import", "-c", "CMD [\"/bin/sh\"]", "-", "imported:1"])
            .stdin(std::fs::File::open(&tarball).unwrap()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .starts_with("sha256:"));
    assert_eq!(
        d.ok(&[
            "image",
            "inspect",
            "imported:1",
            "--format",
            "{{.Config.Cmd}}"
        ])
        .trim(),
        "[/bin/sh]"
    );
    // rmi: Docker's messages and errors.
    assert_eq!(
        d.ok(&["rmi", "localhost/bb:1"]).trim(),
        "Untagged: localhost/bb:1"
    );
    let (code, _, err) = d.docker(&["rmi", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such image: nosuch"), "{err}");
    // prune -a frees the disk.
    let out = d.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");
    // No containers exist (they are not served yet): ps is empty, df counts the images.
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");
    // Unknown endpoints answer 404 with Docker's JSON error body.
    let (code, _, err) = d.docker(&["plugin", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("page not found"), "{err}");
}

#[test]
fn daemon_removes_its_socket_on_sigterm_and_refuses_a_second_instance() {
    require_root!();
    let d = Daemon::start();
    // A second daemon on the same socket is refused while the first answers.
    let out = capture(
        Command::new(common::berth())
            .arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", d.socket().display()))
            .arg("--data-root")
            .arg(d.dir.path().join("root2"))
            .arg("--exec-root")
            .arg(d.dir.path().join("exec2")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another daemon is listening"));
    let mut d = d;
    d.stop();
    assert!(
        !d.socket().exists(),
        "the socket outlived the daemon: {}",
        d.log()
    );
    assert!(
        d.dir.path().join("root/content/oci-layout").exists(),
        "the data root stays"
    );
}

fn post_json(d: &Daemon, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_request(d, req.as_bytes())
}

#[test]
fn docker_run_output_and_exit_codes() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // stdout and stderr arrive separately; the exit code is the container's.
    let (code, out, err) = d.docker(&["run", "--rm", "busybox", "echo", "hi"]);
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}");
    let (code, out, err) = d.docker(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    // 127 not found, 126 not executable, 125 the daemon refuses: Docker's codes.
    let (code, _, err) = d.docker(&["run", "--rm", "busybox", "nosuchcmd"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    let (code, _, err) = d.docker(&["run", "--rm", "busybox", "/etc/passwd"]);
    assert_eq!(code, 126, "{err}");
    let (code, _, err) = d.docker(&["run", "--rm", "--memory", "1k", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
    // --rm left nothing behind, failed starts included.
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
    // The container's view: its own pid 1, hostname = short id, env and user from flags.
    let out = d.ok(&[
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "busybox",
        "sh",
        "-c",
        "echo $$ $FOO $(id -u) $(pwd) $HOME; cat /proc/self/status | grep SigIgn",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap(), "1 bar 65534 /tmp /nonexistent");
    // Ignored signals of the engine must not leak into containers (SIGPIPE especially).
    assert_eq!(
        lines.next().unwrap().split_whitespace().nth(1),
        Some("0000000000000000")
    );
    // Input: -i passes stdin and closes it at its end.
    let out = capture(
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
            .args(["run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done"])
            .stdin(std::fs::File::open("/etc/hostname").unwrap()),
    );
    let host = std::fs::read_to_string("/etc/hostname").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{host}done\n")
    );
    // Limits reach the cgroup (v1 here; the container sees its own cgroup root).
    let out = d.ok(&[
        "run",
        "--rm",
        "-m",
        "64m",
        "--pids-limit",
        "20",
        "busybox",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
    ]);
    assert_eq!(out, "67108864\n20\n");
}

#[test]
fn detached_containers_logs_stop_restart_remove() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "--label",
        "app=t",
        "busybox",
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64);
    let ps = d.ok(&["ps", "--format", "{{.Names}} {{.Status}} {{.Image}}"]);
    assert!(ps.starts_with("ticker Up "), "{ps}");
    assert!(ps.trim().ends_with(" busybox"), "{ps}");
    assert_eq!(
        d.ok(&["ps", "-q", "--filter", "label=app=t"]).trim(),
        &id[..12]
    );
    assert_eq!(d.ok(&["ps", "-q", "--filter", "status=exited"]).trim(), "");
    assert!(wait_for(10, || d.ok(&["logs", "ticker"]).lines().count() >= 5));
    let logs = d.ok(&["logs", "--tail", "2", "-t", "ticker"]);
    assert_eq!(logs.lines().count(), 2, "{logs}");
    assert!(logs.lines().all(|l| l.contains("Z tick ")), "{logs}");
    // A name in use is Docker's 409 conflict.
    let (code, _, err) = d.docker(&["run", "-d", "--name", "ticker", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("The container name \"/ticker\" is already in use"),
        "{err}"
    );
    // An image in use stays: rmi refuses without force, prune skips it.
    let (code, _, err) = d.docker(&["rmi", "busybox"]);
    assert_ne!(code, 0);
    assert!(err.contains("is using its referenced image"), "{err}");
    d.ok(&["image", "prune", "-a", "-f"]);
    assert_eq!(d.ok(&["images", "-q"]).lines().count(), 1);
    // A running container is not removed without force.
    let (code, _, err) = d.docker(&["rm", "ticker"]);
    assert_ne!(code, 0);
    assert!(err.contains("container is running"), "{err}");
    // stop: the trap runs, the exit code is the program's.
    d.ok(&["stop", "ticker"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{.State.Running}}",
            "ticker"
        ])
        .trim(),
        "exited 0 false"
    );
    assert!(d.ok(&["logs", "ticker"]).trim_end().ends_with("bye"));
    assert_eq!(
        d.ok(&["ps", "-aq", "--filter", "exited=0"]).trim(),
        &id[..12]
    );
    // start again; kill gives 137; wait reports it.
    d.ok(&["start", "ticker"]);
    assert!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "ticker"])
            .trim()
            == "true"
    );
    d.ok(&["kill", "ticker"]);
    assert_eq!(d.ok(&["wait", "ticker"]).trim(), "137");
    let (code, _, err) = d.docker(&["kill", "ticker"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not running"), "{err}");
    d.ok(&["rename", "ticker", "tocker"]);
    d.ok(&["rm", "tocker"]);
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
    let (code, _, err) = d.docker(&["inspect", "tocker"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("No such object: tocker") || err.contains("No such container"),
        "{err}"
    );
    // Restart policy: on-failure with a limit.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "exit 1",
    ]);
    assert!(wait_for(20, || d
        .ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky"
        ])
        .trim()
        == "2 exited"));
}

#[test]
fn live_restore_keeps_containers_across_a_daemon_kill() {
    let Some(mut d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.05; done",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "brief",
        "busybox",
        "sh",
        "-c",
        "sleep 1; exit 42",
    ]);
    let pid = d.ok(&["inspect", "-f", "{{.State.Pid}}", "counter"]);
    d.crash_and_restart();
    // While the daemon was away: one container kept running, the other exited.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(d.ok(&["inspect", "-f", "{{.State.Pid}}", "counter"]), pid);
    assert!(d.ok(&["ps", "--format", "{{.Names}}"]).contains("counter"));
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "brief"
        ])
        .trim(),
        "exited 42"
    );
    // The log has no gap: every number, in order.
    d.ok(&["stop", "-t", "1", "counter"]);
    let logs = d.ok(&["logs", "counter"]);
    let nums: Vec<u64> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(nums.len() > 20, "{logs}");
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "gap in {logs}");
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let (status, body) = post_json(&d, "/v1.47/containers/create", "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"message\""), "{body}");
    let (status, body) = post_json(
        &d,
        "/v1.47/containers/create",
        r#"{"Image":"busybox","HostConfig":{"Memory":"lots"}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid type"), "{body}");
    let (status, body) = post_json(&d, "/v1.47/containers/create", r#"{"Image":"nosuch"}"#);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("No such image: nosuch:latest"), "{body}");
    let (status, body) = post_json(
        &d,
        "/v1.47/containers/create?name=bad/name",
        r#"{"Image":"busybox"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = post_json(&d, "/v1.47/containers/nosuch/start", "");
    assert_eq!(status, 404);
    // Ports cannot be published without a network to publish from: refused, not dropped.
    let (code, _, err) = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "8080:80",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125);
    assert!(
        err.contains("conflicting options: port publishing"),
        "{err}"
    );
    let (code, _, err) = d.docker(&["run", "--rm", "-p", "8080:80/icmp", "busybox", "true"]);
    assert_eq!(code, 125, "{err}");
    // A 10 MB header is refused before it is buffered.
    let mut req = b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 10 << 20));
    req.extend_from_slice(b"\r\n\r\n");
    let (status, _) = raw_request(&d, &req);
    assert!(status == 431 || status == 0 || status == 400, "{status}");
    // Nothing was created, and the daemon still answers.
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(
        d.ok(&["version", "-f", "{{.Server.APIVersion}}"]).trim(),
        "1.47"
    );
}

#[test]
fn exec_into_a_running_container() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "60"]);
    let (code, out, err) = d.docker(&[
        "exec",
        "-e",
        "X=1",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "box",
        "sh",
        "-c",
        "echo $X $(id -u) $(pwd); echo oops >&2; exit 4",
    ]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (4, "1 65534 /tmp\n", "oops\n")
    );
    // The exec sees the container's processes (its pid namespace), not the host's.
    let ps = d.ok(&["exec", "box", "ps", "-o", "pid,args"]);
    assert!(ps.contains("1 sleep 60"), "{ps}");
    assert!(ps.lines().count() <= 3, "{ps}");
    let (code, _, err) = d.docker(&["exec", "box", "nosuchcmd"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");
    let out = capture(
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
            .args(["exec", "-i", "box", "wc", "-c"])
            .stdin(std::fs::File::open("/etc/hostname").unwrap()),
    );
    let n = std::fs::metadata("/etc/hostname").unwrap().len();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), n.to_string());
    d.ok(&["exec", "-d", "box", "touch", "/tmp/from-detached"]);
    assert!(wait_for(5, || d
        .docker(&["exec", "box", "test", "-f", "/tmp/from-detached"])
        .0
        == 0));
    // docker attach to a running container: its later output and its exit code.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "late",
        "busybox",
        "sh",
        "-c",
        "sleep 0.5; echo late; exit 6",
    ]);
    let (code, out, err) = d.docker(&["attach", "late"]);
    assert_eq!((code, out.as_str()), (6, "late\n"), "{err}");
    // A terminal size that is not a number is refused, for an exec as for a container.
    let (status, body) = post_json(&d, "/v1.47/containers/box/exec", r#"{"Cmd":["true"]}"#);
    assert_eq!(status, 201, "{body}");
    let exec: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = exec["Id"].as_str().unwrap();
    for path in [
        format!("/v1.47/exec/{id}/resize?h=tall&w=80"),
        "/v1.47/containers/box/resize?h=tall&w=80".to_string(),
    ] {
        let (status, body) = post_json(&d, &path, "");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid h"), "{body}");
    }
    // A stopped container takes no exec.
    d.ok(&["kill", "box"]);
    d.ok(&["wait", "box"]);
    let (code, _, err) = d.docker(&["exec", "box", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not running"), "{err}");
}

#[test]
fn berth_cli_everyday_workflow() {
    require_root!();
    let d = Daemon::start();
    let archive = busybox_archive(d.dir.path());
    assert_eq!(
        d.berth_ok(&["load", "-i", archive.to_str().unwrap()]),
        "Loaded image: busybox:latest\n"
    );
    let images = d.berth_ok(&["images"]);
    let mut lines = images.lines();
    assert_eq!(
        lines.next().unwrap(),
        "REPOSITORY   TAG       IMAGE ID       CREATED        SIZE"
    );
    assert!(lines.next().unwrap().starts_with("busybox      latest    "));
    // history: Docker's columns, one line per step of the image (the archive's one layer).
    let history = d.berth_ok(&["history", "busybox"]);
    let mut lines = history.lines();
    assert_eq!(
        lines.next().unwrap(),
        "IMAGE          CREATED   CREATED BY                         SIZE      COMMENT"
    );
    let step = lines.next().unwrap();
    assert!(
        step.contains("berth scripts/mkimage-archive.sh"),
        "{history}"
    );
    assert_eq!(lines.next(), None, "{history}");
    let (code, _, err) = d.berth(&["history", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such image: nosuch"), "{err}");
    let id = d.berth_ok(&["image", "history", "-q", "--no-trunc", "busybox"]);
    assert!(id.starts_with("sha256:") && id.trim().len() == 71, "{id}");
    assert_eq!(
        d.berth_ok(&[
            "history",
            "--human=false",
            "--format",
            "{{.Size}}",
            "busybox"
        ])
        .trim()
        .parse::<u64>()
        .map(|n| n > 1_000_000),
        Ok(true)
    );
    // attach: the running container's output until it exits, then its exit code; a
    // stopped one is refused with Docker's message.
    d.berth_ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "sleep 0.5; echo tick; exit 5",
    ]);
    assert_eq!(
        d.berth(&["attach", "ticker"]),
        (5, "tick\n".into(), String::new())
    );
    let (code, _, err) = d.berth(&["attach", "ticker"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("You cannot attach to a stopped container, start it first"),
        "{err}"
    );
    d.berth_ok(&["rm", "ticker"]);
    // run: output, separate streams, exit codes 0/3/127/126/125.
    assert_eq!(
        d.berth(&["run", "--rm", "busybox", "echo", "hi"]),
        (0, "hi\n".into(), String::new())
    );
    let (code, out, err) = d.berth(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo o; echo e >&2; exit 3",
    ]);
    assert_eq!((code, out.as_str(), err.as_str()), (3, "o\n", "e\n"));
    let (code, _, err) = d.berth(&["run", "--rm", "busybox", "nosuchcmd"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    assert_eq!(d.berth(&["run", "--rm", "busybox", "/etc/passwd"]).0, 126);
    let (code, _, err) = d.berth(&["run", "--rm", "nosuch", "true"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("Unable to find image 'nosuch:latest' locally"),
        "{err}"
    );
    let (code, _, err) = d.berth(&["run", "--bogus-flag", "busybox"]);
    assert_eq!(code, 125, "{err}");
    // Detached, ps (Docker's columns), exec, logs, inspect templates, stop, rm.
    let id = d.berth_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-l",
        "tier=front",
        "busybox",
        "sh",
        "-c",
        "echo started; exec sleep 60",
    ]);
    assert_eq!(id.trim().len(), 64);
    let ps = d.berth_ok(&["ps"]);
    let header = ps.lines().next().unwrap();
    for col in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = ps.lines().nth(1).unwrap();
    assert!(row.starts_with(&id.trim()[..12]), "{row}");
    assert!(row.contains("\"sh -c echo started;…\""), "{row}");
    assert!(row.ends_with("web"), "{row}");
    assert_eq!(
        d.berth_ok(&[
            "ps",
            "--filter",
            "label=tier=front",
            "--format",
            "{{.Names}} {{.Labels}}"
        ]),
        "web tier=front\n"
    );
    let (code, out, _) = d.berth(&["exec", "web", "sh", "-c", "echo $$; exit 5"]);
    assert_eq!(code, 5);
    assert_ne!(out.trim(), "1");
    assert!(wait_for(5, || d.berth_ok(&["logs", "web"]) == "started\n"));
    assert_eq!(
        d.berth_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.Config.Labels.tier}}",
            "web"
        ]),
        "running front\n"
    );
    let full = d.berth_ok(&["inspect", "web"]);
    let v: serde_json::Value = serde_json::from_str(&full).unwrap();
    assert_eq!(v[0]["Name"], "/web");
    assert!(
        full.contains("\n        \"Id\""),
        "four-space indents like docker"
    );
    assert_eq!(d.berth_ok(&["stop", "-t", "1", "web"]), "web\n");
    assert_eq!(
        d.berth_ok(&["ps", "-a", "--format", "{{.Status}}"])
            .split(' ')
            .take(2)
            .collect::<Vec<_>>(),
        ["Exited", "(137)"]
    );
    assert_eq!(d.berth_ok(&["rm", "web"]), "web\n");
    let (code, _, err) = d.berth(&["rm", "web"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "Error response from daemon: No such container: web"
    );
    let (code, _, err) = d.berth(&["inspect", "nothing"]);
    assert_eq!((code, err.trim()), (1, "Error: No such object: nothing"));
    // Management-command spellings, and the docker CLI sees what berth made.
    d.berth_ok(&[
        "container",
        "run",
        "-d",
        "--name",
        "m",
        "busybox",
        "sleep",
        "30",
    ]);
    assert_eq!(d.berth_ok(&["container", "ls", "-q"]).trim().len(), 12);
    if docker_cli() {
        assert_eq!(d.ok(&["ps", "--format", "{{.Names}}"]), "m\n");
    }
    // No ports are published (no bridge networking yet): port says so.
    assert_eq!(d.berth_ok(&["port", "m"]), "");
    let (code, _, err) = d.berth(&["port", "m", "80"]);
    assert_eq!(
        (code, err.trim()),
        (1, "Error: No public port '80' published for m")
    );
    d.berth_ok(&["rm", "-f", "m"]);
    assert_eq!(d.berth_ok(&["image", "ls", "-q"]).lines().count(), 1);
    // system prune: stopped containers go, the image in use by none goes with -a.
    d.berth_ok(&["create", "--name", "stopped", "busybox", "true"]);
    let out = d.berth_ok(&["system", "prune", "-f", "-a"]);
    assert!(out.starts_with("Deleted Containers:\n"), "{out}");
    assert!(out.contains("Deleted Images:"), "{out}");
    assert_eq!(d.berth_ok(&["ps", "-aq"]), "");
    assert_eq!(d.berth_ok(&["images", "-q"]), "");
}

#[test]
fn volumes_named_anonymous_copy_up_and_in_use() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // Named: data outlives containers.
    assert_eq!(d.ok(&["volume", "create", "data"]), "data\n");
    d.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            "busybox",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    let (code, _, _) = d.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "touch",
        "/data/g",
    ]);
    assert_ne!(code, 0, "a read-only volume took a write");
    // A new volume over image content gets a copy of it (not for an existing one).
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "-v",
            "etc:/etc",
            "busybox",
            "grep",
            "-c",
            "root",
            "/etc/passwd"
        ]),
        "1\n"
    );
    d.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=etc,target=/x",
        "busybox",
        "test",
        "-f",
        "/x/group",
    ]);
    let ls = d.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert_eq!(ls, "local data\nlocal etc\n");
    assert!(d
        .ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "data"])
        .trim()
        .ends_with("/volumes/data/_data"));
    // In use by a (stopped) container: not removed; rm -v takes anonymous ones only.
    d.ok(&[
        "create",
        "--name",
        "user",
        "-v",
        "data:/data",
        "-v",
        "/scratch",
        "busybox",
        "true",
    ]);
    assert_eq!(d.ok(&["volume", "ls", "-q"]).lines().count(), 3);
    let (code, _, err) = d.docker(&["volume", "rm", "data"]);
    assert_ne!(code, 0);
    assert!(err.contains("volume is in use"), "{err}");
    let mounts = d.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}}:{{.Destination}} {{end}}",
        "user",
    ]);
    assert!(
        mounts.contains("volume:/data") && mounts.contains("volume:/scratch"),
        "{mounts}"
    );
    d.ok(&["rm", "-v", "user"]);
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "data\netc\n");
    d.ok(&["volume", "rm", "data", "etc"]);
    let (code, _, err) = d.docker(&["volume", "inspect", "data"]);
    assert_ne!(code, 0);
    assert!(err.contains("no such volume"), "{err}");
    // Options of the local driver: a tmpfs volume.
    d.ok(&[
        "volume",
        "create",
        "-o",
        "type=tmpfs",
        "-o",
        "device=tmpfs",
        "-o",
        "o=size=1m",
        "tv",
    ]);
    let fs = d.ok(&[
        "run",
        "--rm",
        "-v",
        "tv:/t",
        "busybox",
        "sh",
        "-c",
        "grep ' /t ' /proc/mounts | cut -d' ' -f3",
    ]);
    assert_eq!(fs, "tmpfs\n");
    d.ok(&["volume", "rm", "tv"]);
    // Berth's CLI shows the same.
    assert_eq!(d.berth_ok(&["volume", "create", "b1"]), "b1\n");
    assert_eq!(
        d.berth_ok(&["inspect", "-f", "{{.Driver}} {{.Name}}", "b1"]),
        "local b1\n"
    );
    assert_eq!(
        d.berth_ok(&["volume", "ls"]),
        "DRIVER    VOLUME NAME\nlocal     b1\n"
    );
    assert_eq!(d.berth_ok(&["volume", "rm", "b1"]), "b1\n");
    let until = a_second_from_now();
    let events = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    assert!(
        events.contains("create data\n") && events.contains("destroy b1\n"),
        "{events}"
    );
    let (code, _, err) = d.docker(&["volume", "create", "bad/name"]);
    assert_ne!(code, 0);
    assert!(err.contains("includes invalid characters"), "{err}");
}

#[test]
fn cp_both_ways_stays_inside_the_container() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("hello.txt"), "hello\n").unwrap();
    std::fs::create_dir(w.join("tree")).unwrap();
    std::fs::write(w.join("tree/a"), "a\n").unwrap();
    d.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "60"]);
    // Host to container: into a directory, and as a new name.
    d.ok(&["cp", w.join("hello.txt").to_str().unwrap(), "box:/tmp"]);
    d.ok(&["cp", w.join("tree").to_str().unwrap(), "box:/tmp/copied"]);
    assert_eq!(
        d.ok(&["exec", "box", "cat", "/tmp/hello.txt", "/tmp/copied/a"]),
        "hello\na\n"
    );
    // Container to host (Berth's CLI too), a file and a directory.
    d.ok(&["cp", "box:/etc/passwd", w.join("passwd").to_str().unwrap()]);
    assert!(std::fs::read_to_string(w.join("passwd"))
        .unwrap()
        .starts_with("root:"));
    d.berth_ok(&["cp", "box:/tmp/copied", w.join("back").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(w.join("back/a")).unwrap(), "a\n");
    d.berth_ok(&[
        "cp",
        w.join("hello.txt").to_str().unwrap(),
        "box:/tmp/from-berth",
    ]);
    assert_eq!(d.ok(&["exec", "box", "cat", "/tmp/from-berth"]), "hello\n");
    // Paths resolve inside the container: an absolute symlink to /etc means the
    // container's /etc, and `..` stops at its root.
    d.ok(&["exec", "box", "ln", "-s", "/etc", "/tmp/etc-link"]);
    d.ok(&[
        "cp",
        "box:/tmp/etc-link/../../../etc/group",
        w.join("group").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(w.join("group")).unwrap(),
        std::fs::read_to_string(common::template_rootfs().join("etc/group")).unwrap()
    );
    d.ok(&[
        "cp",
        w.join("hello.txt").to_str().unwrap(),
        "box:/tmp/etc-link/",
    ]);
    assert_eq!(d.ok(&["exec", "box", "cat", "/etc/hello.txt"]), "hello\n");
    assert!(
        !Path::new("/etc/hello.txt").exists(),
        "cp escaped to the host"
    );
    let (code, _, err) = d.docker(&["cp", "box:/nonexistent", w.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Could not find the file /nonexistent"),
        "{err}"
    );
    // Owners: root in the container, unless -a keeps them.
    std::os::unix::fs::chown(w.join("hello.txt"), Some(1234), Some(1234)).unwrap();
    d.ok(&[
        "cp",
        w.join("hello.txt").to_str().unwrap(),
        "box:/tmp/owned-root",
    ]);
    d.ok(&[
        "cp",
        "-a",
        w.join("hello.txt").to_str().unwrap(),
        "box:/tmp/owned-kept",
    ]);
    d.berth_ok(&[
        "cp",
        "-a",
        w.join("hello.txt").to_str().unwrap(),
        "box:/tmp/owned-kept2",
    ]);
    assert_eq!(
        d.ok(&[
            "exec",
            "box",
            "stat",
            "-c",
            "%u",
            "/tmp/owned-root",
            "/tmp/owned-kept",
            "/tmp/owned-kept2"
        ]),
        "0\n1234\n1234\n"
    );
    // A stopped container: its root filesystem is mounted for the copy.
    d.ok(&["kill", "box"]);
    d.ok(&[
        "cp",
        "box:/tmp/hello.txt",
        w.join("after-stop").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(w.join("after-stop")).unwrap(),
        "hello\n"
    );
}

#[test]
fn stats_come_from_the_containers_cgroup() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "-m",
        "64m",
        "busybox",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let fmt = "{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.PIDs}}";
    let out = d.ok(&["stats", "--no-stream", "--format", fmt]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], "busy", "{out}");
    let cpu: f64 = f[1].trim_end_matches('%').parse().unwrap();
    assert!(cpu > 10.0, "a spinning shell shows CPU use: {out}");
    assert_eq!(f[4], "64MiB", "{out}");
    assert_eq!(f[5], "1", "{out}");
    // Berth's CLI reads the same numbers the same way.
    let out = d.berth_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.PIDs}}",
        "busy",
    ]);
    assert_eq!(out, "busy 1\n");
    // Network counters of its namespace, per interface, loopback left out.
    let (status, body) = raw_request(
        &d,
        b"GET /containers/busy/stats?stream=false HTTP/1.0\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["networks"]["eth0"]["rx_bytes"].is_u64(), "{body}");
    assert!(v["networks"].get("lo").is_none(), "{body}");
}

#[test]
fn diff_export_commit_update_and_swarm_refusal() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&[
        "run",
        "--name",
        "changer",
        "busybox",
        "sh",
        "-c",
        "mkdir /new && echo x > /new/f && rm /etc/group && echo y >> /etc/passwd",
    ]);
    let diff = d.ok(&["diff", "changer"]);
    for want in [
        "A /new",
        "A /new/f",
        "D /etc/group",
        "C /etc/passwd",
        "C /etc",
    ] {
        assert!(
            diff.lines().any(|l| l == want),
            "{want} missing in:\n{diff}"
        );
    }
    // export: the whole root filesystem as a tar, with the changes.
    let work = tempfile::tempdir().unwrap();
    let tarball = work.path().join("fs.tar");
    d.ok(&["export", "-o", tarball.to_str().unwrap(), "changer"]);
    let listing = capture(Command::new("tar").arg("-tf").arg(&tarball));
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|l| l == "new/f"), "{names}");
    assert!(names.lines().any(|l| l == "bin/busybox"), "{names}");
    assert!(!names.lines().any(|l| l == "etc/group"), "{names}");
    // commit: the changes become an image that runs.
    let id = d.ok(&[
        "commit",
        "-c",
        "CMD [\"cat\", \"/new/f\"]",
        "changer",
        "changed:1",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(d.ok(&["run", "--rm", "changed:1"]), "x\n");
    // update: new limits reach the running container's cgroup.
    d.ok(&[
        "run", "-d", "--name", "limited", "-m", "64m", "busybox", "sleep", "60",
    ]);
    d.ok(&["update", "-m", "128m", "--memory-swap", "256m", "limited"]);
    assert_eq!(
        d.ok(&[
            "exec",
            "limited",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        ]),
        "134217728\n"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.HostConfig.Memory}}", "limited"]),
        "134217728\n"
    );
    // info counts containers; swarm endpoints answer 503 as a daemon outside a swarm.
    assert_eq!(
        d.ok(&[
            "info",
            "-f",
            "{{.Containers}} {{.ContainersRunning}} {{.ContainersStopped}}"
        ]),
        "2 1 1\n"
    );
    let (code, _, err) = d.docker(&["service", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("This node is not a swarm manager"), "{err}");
    // Berth's CLI: the same diff and commit.
    assert_eq!(d.berth_ok(&["diff", "changer"]), d.ok(&["diff", "changer"]));
    d.berth_ok(&["commit", "changer", "changed:2"]);
    d.berth_ok(&["update", "--pids-limit", "50", "limited"]);
    assert_eq!(
        d.ok(&["exec", "limited", "cat", "/sys/fs/cgroup/pids/pids.max"]),
        "50\n"
    );
    // `update` parses --restart and --memory-swap as `run` does.
    let (code, _, err) = d.berth(&["update", "--restart", "always:x", "limited"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid restart policy format"), "{err}");
    d.berth_ok(&[
        "update",
        "--restart",
        "on-failure:3",
        "--memory-swap",
        "-1",
        "limited",
    ]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}} {{.HostConfig.MemorySwap}}",
            "limited"
        ]),
        "on-failure:3 -1\n"
    );
}

#[test]
fn healthchecks_follow_the_probe() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "h",
        "--health-cmd",
        "test -f /tmp/ok && echo fine",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "busybox",
        "sleep",
        "60",
    ]);
    let status = |d: &Daemon| d.ok(&["inspect", "-f", "{{.State.Health.Status}}", "h"]);
    assert_eq!(status(&d), "starting\n");
    assert!(
        wait_for(10, || status(&d) == "unhealthy\n"),
        "{}",
        status(&d)
    );
    assert!(d
        .ok(&["ps", "--format", "{{.Status}}"])
        .contains("(unhealthy)"));
    d.ok(&["exec", "h", "touch", "/tmp/ok"]);
    assert!(wait_for(10, || status(&d) == "healthy\n"), "{}", status(&d));
    let log = d.ok(&[
        "inspect",
        "-f",
        "{{range .State.Health.Log}}{{.ExitCode}}:{{.Output}}|{{end}}",
        "h",
    ]);
    assert!(log.contains("0:fine"), "{log}");
    assert_eq!(
        d.ok(&["ps", "-q", "--filter", "health=healthy"])
            .lines()
            .count(),
        1
    );
    // --no-healthcheck: no Health at all.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "n",
        "--no-healthcheck",
        "busybox",
        "sleep",
        "60",
    ]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Health}}", "n"]).trim(),
        "<nil>"
    );
}

#[test]
fn containers_and_shims_run_from_a_sealed_view() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // The most capable container cannot write the runtime through its pid 1 (under --init
    // pid 1 is Berth's code, forked from a shim without a re-exec).
    let out = d.ok(&[
        "run",
        "--rm",
        "--init",
        "--privileged",
        "busybox",
        "sh",
        "-c",
        "cat /proc/1/comm; echo x >> /proc/1/exe || echo refused",
    ]);
    assert_eq!(out, "berth-init\nrefused\n");
    // That is because the shim server (the daemon's child, started with the first
    // container) runs from a read-only view of the binary, not from the file on disk, and
    // so do the shims and container processes it forks.
    // (Each thread lists the children it made: the server's came from a worker thread.)
    let daemon = d.child.id();
    let children: String = std::fs::read_dir(format!("/proc/{daemon}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .collect::<Vec<_>>()
        .join(" ");
    let server = children
        .split_whitespace()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"shim-server"))
        })
        .expect("the daemon runs a shim server once a container ran");
    let exe = std::fs::read_link(format!("/proc/{server}/exe")).unwrap();
    let host = Path::new(common::berth()).canonicalize().unwrap();
    assert_ne!(exe, host, "the shim server runs the host binary itself");
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{server}/exe"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

/// `run -it` on a terminal (util-linux's `script` gives it one): the container gets a pty of
/// the terminal's size, its exit code comes back, and ctrl-p ctrl-q detaches, leaving it
/// running.
#[test]
fn run_it_on_a_terminal_sizes_and_detaches() {
    use std::io::Write;
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: needs util-linux's script");
        return;
    }
    let cli = format!(
        "BERTH_HOST=unix://{} {}",
        d.socket().display(),
        common::berth()
    );
    let line =
        format!("stty rows 30 cols 100; {cli} run -it --rm busybox sh -c 'tty; stty size; exit 3'");
    let out = capture(Command::new("script").args(["-q", "-e", "-c", &line, "/dev/null"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("/dev/pts/0") && text.contains("30 100"),
        "{text:?}"
    );

    let line = format!("{cli} run -it --name det busybox sh");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(10, || d
            .docker(&["inspect", "-f", "{{.State.Running}}", "det"])
            .1
            == "true\n"),
        "the container did not start"
    );
    // The shell is up and the CLI's terminal raw once the prompt is out; then detach.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\x10\x11").unwrap();
    assert!(
        wait_for(10, || matches!(child.try_wait(), Ok(Some(_)))),
        "ctrl-p ctrl-q did not detach"
    );
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "det"]),
        "true\n",
        "detaching stopped the container"
    );
    // An exec's pty starts at the terminal's size too.
    let line = format!("stty rows 40 cols 120; {cli} exec -it det stty size");
    let out = capture(Command::new("script").args(["-q", "-e", "-c", &line, "/dev/null"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40 120"), "{text:?}");
    d.ok(&["rm", "-f", "det"]);
}

/// Docker's signal proxy: a signal to `run` attached without a terminal goes to the
/// container, and the CLI ends with the container's exit code.
#[test]
fn attached_run_proxies_signals_to_the_container() {
    use std::io::BufRead;
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // `berth run ARGS... busybox sh -c SCRIPT` attached; SIGINT to the CLI once the script
    // says "ready". The CLI and the rest of its output come back.
    let interrupt = |args: &[&str], script: &str| {
        let mut child = d
            .berth_cmd()
            .arg("run")
            .args(args)
            .args(["busybox", "sh", "-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        (child, out)
    };
    let (mut child, mut out) = interrupt(
        &["--rm"],
        "trap 'echo got INT; exit 7' INT; echo ready; while true; do sleep 0.1; done",
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got INT\n");
    assert_eq!(child.wait().unwrap().code(), Some(7));
    // --sig-proxy=false: the signal is the CLI's own (it dies of it), the container runs on.
    let (mut child, _) = interrupt(
        &["--sig-proxy=false", "--name", "np"],
        "trap 'exit 7' INT; echo ready; while true; do sleep 0.1; done",
    );
    assert_eq!(child.wait().unwrap().code(), None, "killed by the signal");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "np"]),
        "true\n"
    );
    d.ok(&["rm", "-f", "np"]);
}

/// A first command with no daemon listening on the default socket starts `berth daemon`
/// there (default data root, its log in it) and is then served by it. In namespaces of its
/// own (mount, network, pid) with tmpfs on /run and /var/lib, the default paths are the
/// test's; when its shell ends, the pid namespace takes the daemon with it.
#[test]
fn the_cli_starts_a_daemon_when_none_answers() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let archive = busybox_archive(dir.path());
    let berth = common::berth();
    let script = format!(
        "set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
ip link set lo up
{berth} load -i {} >/dev/null
{berth} run --rm --network none busybox echo hello
test -S /run/berth/berth.sock && echo socket
grep -q 'berth daemon serving' /var/lib/berth/daemon.log && echo logged",
        archive.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--mount-proc"])
        .args(["--propagation", "private", "sh", "-c", &script])
        .env_remove("BERTH_HOST")
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nsocket\nlogged\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn init_reaps_and_forwards_signals() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // The program is not pid 1 under --init; pid 1 is Berth's reaper.
    let out = d.ok(&[
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "echo $$; cat /proc/1/comm",
    ]);
    let mut lines = out.lines();
    assert_ne!(lines.next(), Some("1"), "{out}");
    assert_ne!(lines.next(), Some("sh"), "{out}");
    // Exit codes pass through.
    assert_eq!(
        d.docker(&["run", "--rm", "--init", "busybox", "sh", "-c", "exit 7"])
            .0,
        7
    );
    // SIGTERM reaches the program (a pid 1 `sleep` would ignore it and wait for SIGKILL).
    d.ok(&[
        "run", "-d", "--init", "--name", "sleeper", "busybox", "sleep", "60",
    ]);
    let t = std::time::Instant::now();
    d.ok(&["stop", "-t", "20", "sleeper"]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "sleeper"]),
        "143\n"
    );
    // Orphans are reaped: no zombies left behind a parent that did not wait.
    d.ok(&[
        "run",
        "-d",
        "--init",
        "--name",
        "orphans",
        "busybox",
        "sh",
        "-c",
        "(sleep 0.2 &) ; sleep 60",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    let ps = d.ok(&["exec", "orphans", "ps", "-o", "stat,args"]);
    assert!(!ps.lines().any(|l| l.trim_start().starts_with('Z')), "{ps}");
}

#[test]
fn daemon_json_and_flags_set_container_defaults() {
    require_root!();
    if !docker_cli() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-daemon-")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("daemon.json");
    std::fs::write(
        &conf,
        r#"{"log-opts": {"max-size": "5m", "max-file": "2"}, "storage-driver": "overlay2",
            "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}}}"#,
    )
    .unwrap();
    // Mistakes are refused with dockerd's words: a setting twice, an unknown key.
    let out = capture(
        Command::new(common::berth())
            .args(["daemon", "--config-file"])
            .arg(&conf)
            .args(["--log-opt", "max-size=1m", "-H"])
            .arg(format!("unix://{}", dir.path().join("x.sock").display())),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("both as a flag and in the configuration file: log-opts"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"data-rot": "/x"}"#).unwrap();
    let out = capture(
        Command::new(common::berth())
            .args(["daemon", "--config-file"])
            .arg(&bad),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("don't match any configuration option: data-rot"));

    let d = Daemon::start_with(dir, &["--config-file", conf.to_str().unwrap()]);
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    d.ok(&["create", "--name", "a", "busybox", "true"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}}",
            "a"
        ]),
        "json-file 5m\n"
    );
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "ulimit -n; ulimit -Hn"
        ]),
        "1024\n2048\n"
    );
    // SIGHUP reloads the defaults.
    std::fs::write(&conf, r#"{"log-opts": {"max-size": "7m"}}"#).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status();
    assert!(wait_for(5, || {
        let _ = d.docker(&["rm", "b"]);
        d.ok(&["create", "--name", "b", "busybox", "true"]);
        d.ok(&[
            "inspect",
            "-f",
            "{{index .HostConfig.LogConfig.Config \"max-size\"}}",
            "b",
        ]) == "7m\n"
    }));
}

/// The Python SDK (docker-py from PyPI), when the test command provided it (scripts/test.sh
/// makes a venv with it and sets BERTH_DOCKER_PY to its python).
#[test]
fn docker_py_sdk_works_against_berth() {
    let python = match std::env::var("BERTH_DOCKER_PY") {
        Ok(p) => p,
        Err(_) => {
            eprintln!("skipped: BERTH_DOCKER_PY not set (scripts/test.sh sets it)");
            return;
        }
    };
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/docker_py.py");
    let out = capture(
        Command::new(python)
            .arg(script)
            .arg(format!("unix://{}", d.socket().display())),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "api 1.47\nrun b'hi\\n'\nstatus running\nexec 3 b'out\\n'\nput_archive True\n\
         get_archive note.txt b'put via docker-py\\n'\nwait 4\nlogs b'a\\n' b'b\\n'\n\
         killed 137\nlist []\nimages ['busybox:latest']\nvolume dv\n"
    );
}

#[test]
fn default_seccomp_profile_and_its_opt_outs() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // A user namespace needs no capability: only the profile stands in the way.
    let (code, _, err) = d.docker(&["run", "--rm", "busybox", "unshare", "-U", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("Operation not permitted"), "{err}");
    d.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "unshare",
        "-U",
        "true",
    ]);
    d.ok(&[
        "run",
        "--rm",
        "--privileged",
        "busybox",
        "unshare",
        "-U",
        "true",
    ]);
    // CAP_SYS_ADMIN releases what Docker's profile ties to it.
    d.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "busybox",
        "unshare",
        "-U",
        "true",
    ]);
    // A profile file (Docker's format), through both CLIs.
    let work = tempfile::tempdir().unwrap();
    let prof = work.path().join("p.json");
    std::fs::write(
        &prof,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", prof.display());
    let (code, _, err) = d.docker(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "busybox",
        "mkdir",
        "/x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, _, err) = d.berth(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "busybox",
        "mkdir",
        "/x",
    ]);
    assert_eq!(code, 1, "{err}");
    // Everyday programs are untouched by the default profile.
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "mkdir /t && echo ok > /t/f && cat /t/f && ps >/dev/null && echo fine"
        ]),
        "ok\nfine\n"
    );
}

#[test]
fn events_replay_and_filter() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    d.ok(&["run", "--name", "ev", "-l", "team=a", "busybox", "true"]);
    d.ok(&["rm", "ev"]);
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let since = start.to_string();
    let until = until.to_string();
    // The docker CLI: past events by container, in order.
    let out = d.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "container=ev",
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = out.lines().collect();
    for want in ["create", "attach", "start", "die", "destroy"] {
        assert!(actions.contains(&want), "{want} missing: {actions:?}");
    }
    let pos = |a: &str| actions.iter().position(|x| *x == a).unwrap();
    assert!(
        pos("create") < pos("start") && pos("start") < pos("die") && pos("die") < pos("destroy")
    );
    // Label and event filters; Berth's CLI prints Docker's line format.
    let out = d.berth_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "-f",
        "label=team=a",
        "-f",
        "event=start",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains(" container start ") && out.contains("name=ev") && out.contains("team=a"),
        "{out}"
    );
    // Image events: load (at the start), tag, untag.
    d.ok(&["tag", "busybox", "other:1"]);
    d.ok(&["rmi", "other:1"]);
    let until = a_second_from_now();
    let out = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "type=image",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(
        out, "load busybox:latest\ntag other:1\nuntag other:1\n",
        "{out}"
    );
}

#[test]
fn oom_kills_are_reported_and_always_restarts_with_the_daemon() {
    let Some(mut d) = daemon_with_busybox() else {
        return;
    };
    // A shell doubling a string in 8 MiB: the OOM killer ends it.
    let (code, _, _) = d.docker(&[
        "run",
        "--name",
        "hog",
        "-m",
        "8m",
        "--memory-swap",
        "8m",
        "busybox",
        "sh",
        "-c",
        "s=x; while :; do s=\"$s$s\"; done",
    ]);
    assert_eq!(code, 137);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.OOMKilled}} {{.State.ExitCode}}",
            "hog"
        ]),
        "true 137\n"
    );
    d.ok(&["run", "--name", "calm", "busybox", "true"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.OOMKilled}}", "calm"]),
        "false\n"
    );
    // restart=always comes back when the daemon starts; a plain container does not.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "keeper",
        "--restart",
        "always",
        "busybox",
        "sleep",
        "60",
    ]);
    d.ok(&["stop", "-t", "0", "keeper"]);
    d.crash_and_restart();
    assert!(wait_for(10, || d.ok(&[
        "inspect",
        "-f",
        "{{.State.Running}}",
        "keeper"
    ]) == "true\n"));
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "calm"]),
        "false\n"
    );
}

#[test]
fn tcp_hosts_only_on_loopback() {
    require_root!();
    if !docker_cli() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::Builder::new()
        .prefix("berth-daemon-")
        .tempdir()
        .unwrap();
    let tcp = format!("tcp://127.0.0.1:{port}");
    let d = Daemon::start_with(dir, &["-H", &tcp]);
    let ns = d.netns();
    assert!(wait_for(5, || common::net(Some(&ns), move || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })));
    let out = capture(d.host_cmd("docker").env("DOCKER_HOST", &tcp).args([
        "version",
        "-f",
        "{{.Server.APIVersion}}",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.47\n");
    let out = capture(d.host_cmd(common::berth()).args([
        "-H",
        &tcp,
        "version",
        "-f",
        "{{.Server.ApiVersion}}",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.47\n");
    drop(d);
    // Beyond loopback, plain TCP would hand root to the network: refused.
    let out = capture(Command::new(common::berth()).args(["daemon", "-H", "tcp://0.0.0.0:23750"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs TLS client verification"));
}

/// bollard (the Rust Engine API client) against Berth: images, a container's whole life,
/// its logs and exit code.
#[test]
fn bollard_client_works_against_berth() {
    use bollard::container::{
        Config, CreateContainerOptions, LogOutput, LogsOptions, RemoveContainerOptions,
        StartContainerOptions, WaitContainerOptions,
    };
    use futures_util::StreamExt;
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_unix(
            d.socket().to_str().unwrap(),
            30,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let v = docker.version().await.unwrap();
        assert_eq!(v.api_version.as_deref(), Some("1.47"));
        let images = docker.list_images::<String>(None).await.unwrap();
        assert_eq!(images[0].repo_tags, vec!["busybox:latest".to_string()]);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: "bolly",
                    platform: None,
                }),
                Config {
                    image: Some("busybox"),
                    cmd: Some(vec!["sh", "-c", "echo from-bollard; exit 5"]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        docker
            .start_container(&created.id, None::<StartContainerOptions<String>>)
            .await
            .unwrap();
        let mut waits = docker.wait_container(
            &created.id,
            Some(WaitContainerOptions {
                condition: "not-running",
            }),
        );
        // A non-zero status comes back as bollard's error carrying the code.
        match waits.next().await.unwrap() {
            Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => {
                assert_eq!(code, 5)
            }
            other => panic!("unexpected wait result: {other:?}"),
        }
        let logs: Vec<LogOutput> = docker
            .logs(
                &created.id,
                Some(LogsOptions::<String> {
                    stdout: true,
                    ..Default::default()
                }),
            )
            .map(|l| l.unwrap())
            .collect()
            .await;
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].to_string(), "from-bollard\n");
        let inspect = docker.inspect_container("bolly", None).await.unwrap();
        assert_eq!(inspect.state.unwrap().exit_code, Some(5));
        docker
            .remove_container("bolly", None::<RemoveContainerOptions>)
            .await
            .unwrap();
        let err = docker.inspect_container("bolly", None).await.unwrap_err();
        assert!(err.to_string().contains("No such container"), "{err}");
    });
}

/// `kill -9` of the daemon in the middle of a `docker load`: nothing half-loaded is
/// visible afterwards, the store checks clean, and the same load then succeeds.
#[test]
fn daemon_killed_mid_load_loses_nothing() {
    use std::io::{Read, Write};
    require_root!();
    let mut d = Daemon::start();
    let archive = std::fs::read(busybox_archive(d.dir.path())).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    write!(
        s,
        "POST /v1.47/images/load HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        archive.len()
    )
    .unwrap();
    // Half the archive, slowly; then the daemon dies.
    for chunk in archive[..archive.len() / 2].chunks(64 * 1024) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.crash_and_restart();
    drop(s);
    assert_eq!(
        d.ok(&["images", "-q", "-a"]),
        "",
        "a half-loaded image is visible"
    );
    // The same load, whole, works.
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    write!(
        s,
        "POST /v1.47/images/load HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        archive.len()
    )
    .unwrap();
    s.write_all(&archive).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.contains("Loaded image: busybox:latest"), "{answer}");
    d.stop();
    // Checked with the daemon stopped: every blob matches its digest, every reference holds.
    let store = berth_store::image::ImageStore::open(&d.dir.path().join("root")).unwrap();
    assert_eq!(store.fsck().unwrap(), Vec::<String>::new());
}

#[test]
fn host_config_flags_reach_the_container() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let run = |args: &[&str]| {
        let mut a = vec!["run", "--rm"];
        a.extend_from_slice(args);
        d.ok(&a)
    };
    assert_eq!(run(&["-w", "/app/sub", "busybox", "pwd"]), "/app/sub\n");
    assert_eq!(
        run(&[
            "--read-only",
            "--tmpfs",
            "/scratch",
            "busybox",
            "sh",
            "-c",
            "touch /x 2>/dev/null || touch /scratch/y && echo ro"
        ]),
        "ro\n"
    );
    assert_eq!(
        run(&[
            "--add-host",
            "db:10.1.2.3",
            "busybox",
            "grep",
            "-w",
            "db",
            "/etc/hosts"
        ]),
        "10.1.2.3\tdb\n"
    );
    assert_eq!(
        run(&["--group-add", "42", "-u", "nobody", "busybox", "id", "-G"]),
        "65534 42\n"
    );
    assert_eq!(run(&["-h", "named", "busybox", "hostname"]), "named\n");
    assert_eq!(
        run(&[
            "--device",
            "/dev/null:/dev/extra",
            "busybox",
            "sh",
            "-c",
            "echo x > /dev/extra && echo dev"
        ]),
        "dev\n"
    );
    assert_eq!(
        d.berth_ok(&[
            "run",
            "--rm",
            "--device",
            "/dev/null:/dev/extra",
            "--group-add",
            "7",
            "busybox",
            "sh",
            "-c",
            "test -c /dev/extra && id -G"
        ]),
        "0 7\n"
    );
    let (code, _, err) = d.docker(&["run", "--rm", "--device", "/nonexistent", "busybox", "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("error gathering device information"), "{err}");
    // Privileged: the host's devices and every capability.
    let n: usize = run(&["--privileged", "busybox", "sh", "-c", "ls /dev | wc -l"])
        .trim()
        .parse()
        .unwrap();
    assert!(n > 20, "{n} device entries");
    assert_eq!(
        run(&[
            "--privileged",
            "busybox",
            "sh",
            "-c",
            "grep CapEff /proc/self/status | cut -f2"
        ])
        .trim(),
        run(&[
            "--cap-add",
            "ALL",
            "busybox",
            "sh",
            "-c",
            "grep CapEff /proc/self/status | cut -f2"
        ])
        .trim()
    );
    // Sharing the host's pid namespace shows the host's processes.
    let n: usize = run(&["--pid", "host", "busybox", "sh", "-c", "ps | wc -l"])
        .trim()
        .parse()
        .unwrap();
    assert!(n > 10, "{n}");
}

#[test]
fn containers_share_namespaces_with_container_modes() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    // A container's own network namespace has a working loopback.
    assert!(d
        .ok(&["run", "--rm", "busybox", "ip", "addr", "show", "lo"])
        .contains("LOOPBACK,UP"));
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-h",
        "webhost",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:8080",
        "-h",
        "/etc",
    ]);
    // The same loopback: the web server answers on 127.0.0.1 of the other container.
    assert!(wait_for(5, || d
        .docker(&[
            "run",
            "--rm",
            "--network",
            "container:web",
            "busybox",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/hostname"
        ])
        .1
        == "webhost\n"));
    // The same address on the bridge.
    let ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    let shared = d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:web",
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(shared.contains(&format!("inet {}/", ip.trim())), "{shared}");
    // The same processes.
    let ps = d.ok(&[
        "run",
        "--rm",
        "--pid",
        "container:web",
        "busybox",
        "ps",
        "-o",
        "args",
    ]);
    assert!(ps.contains("httpd -f -p 127.0.0.1:8080"), "{ps}");
    // Only with a running container.
    d.ok(&["stop", "-t", "0", "web"]);
    let (code, _, err) = d.docker(&[
        "run",
        "--rm",
        "--network",
        "container:web",
        "busybox",
        "true",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("non running container"), "{err}");
}

/// Unix seconds one second ahead, as a string: `--until` for events that already happened.
fn a_second_from_now() -> String {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string()
}

/// `docker pull` (and `berth pull`) from Berth's own registry on loopback, after skopeo
/// pushed an image there: same digest, runnable, and "up to date" the second time.
#[test]
fn pull_from_a_registry_on_loopback() {
    require_root!();
    if !docker_cli() || Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skipped: needs the docker CLI and skopeo");
        return;
    }
    let d = Daemon::start();
    let registry = common::Registry::start_in(Some(&d.netns()));
    let port = registry.port;
    let archive = busybox_archive(d.dir.path());
    let name = format!("127.0.0.1:{port}/test/busybox:1");
    let out = capture(
        d.host_cmd("skopeo")
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{name}")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = d.ok(&["pull", &name]);
    assert!(pulled.contains("Pull complete"), "{pulled}");
    let digest = pulled
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap()
        .to_string();
    let out = capture(
        d.host_cmd("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{name}")),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["Digest"],
        digest.as_str(),
        "the registry's manifest digest is kept"
    );
    assert_eq!(d.ok(&["run", "--rm", &name, "echo", "pulled"]), "pulled\n");
    assert_eq!(
        d.berth_ok(&[
            "images",
            "--digests",
            "-f",
            "reference=*/test/*",
            "--format",
            "{{.Digest}}"
        ]),
        format!("{digest}\n")
    );
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{index .RepoDigests 0}}", &name]),
        format!("127.0.0.1:{port}/test/busybox@{digest}\n")
    );
    assert!(d
        .ok(&["pull", &name])
        .contains("Status: Image is up to date"));
    // Berth's CLI, by digest, and a missing image with Docker's words.
    let by_digest = format!("127.0.0.1:{port}/test/busybox@{digest}");
    let out = d.berth_ok(&["pull", &by_digest]);
    assert!(out.contains("up to date"), "{out}");
    let (code, _, err) = d.docker(&["pull", &format!("127.0.0.1:{port}/nope:1")]);
    assert_ne!(code, 0);
    assert!(err.contains("manifest unknown"), "{err}");
    // push: a loaded image goes up byte for byte and comes back.
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let pushed = format!("127.0.0.1:{port}/pushed/bb:2");
    d.ok(&["tag", "busybox", &pushed]);
    let out = d.ok(&["push", &pushed]);
    assert!(out.contains("2: digest: sha256:"), "{out}");
    let out = capture(
        d.host_cmd("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{pushed}")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = d.berth_ok(&["push", &pushed]);
    assert!(again.contains("Layer already exists"), "{again}");
    d.ok(&["rmi", &pushed, "busybox"]);
    d.ok(&["pull", &pushed]);
    assert_eq!(
        d.ok(&["run", "--rm", &pushed, "echo", "round trip"]),
        "round trip\n"
    );
    let (code, _, err) = d.docker(&["push", &format!("127.0.0.1:{port}/absent:1")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("does not exist locally") || err.contains("No such image"),
        "{err}"
    );
    drop(registry);
}

/// An HTTP GET from the daemon's "host" (its network namespace): the whole answer.
fn http_get(d: &Daemon, port: u16, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    common::net(Some(&d.netns()), move || {
        use std::io::{Read, Write};
        let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => s,
            Err(e) => return format!("connect: {e}"),
        };
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let _ = s.write_all(req.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// What the daemon's "host" has of Berth's: links other than `lo`, namespaces bound under
/// the exec root, and the published-port rules.
fn network_leftovers(d: &Daemon) -> (String, Vec<String>, String) {
    let links = capture(d.host_cmd("ip").args(["-o", "link", "show"]));
    let links: String = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .filter(|n| n != "lo")
        .collect::<Vec<_>>()
        .join(" ");
    let netns: Vec<String> = std::fs::read_dir(d.dir.path().join("exec/netns"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ports = capture(
        d.host_cmd("nft")
            .args(["list", "chain", "ip", "berth", "ports"]),
    );
    let ports = String::from_utf8_lossy(&ports.stdout)
        .lines()
        .filter(|l| l.contains("dnat"))
        .collect::<Vec<_>>()
        .join("\n");
    (links, netns, ports)
}

/// Waits (up to 5 s) for the daemon's link removals to reach `done`.
fn settle(d: &Daemon, done: impl Fn(&str, &[String], &str) -> bool) {
    wait_for(5, || {
        let (l, n, p) = network_leftovers(d);
        done(&l, &n, &p)
    });
}

#[test]
fn bridge_network_published_ports_and_no_leftovers() {
    let Some(mut d) = daemon_with_busybox() else {
        return;
    };
    // The default bridge takes Docker's subnet (nothing else routes it in this namespace).
    let addr = d.ok(&[
        "run", "--rm", "busybox", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(addr.contains("inet 172.17.0."), "{addr}");
    assert!(addr.contains("/16"), "{addr}");
    let route = d.ok(&["run", "--rm", "busybox", "ip", "route"]);
    assert!(route.contains("default via 172.17.0.1 dev eth0"), "{route}");
    let hosts = d.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        "--name",
        "named-one",
        "--add-host",
        "gw:host-gateway",
        "busybox",
        "cat",
        "/etc/hosts",
    ]);
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with("172.17.0.") && l.ends_with("\tbox named-one")),
        "{hosts}"
    );
    assert!(hosts.contains("172.17.0.1\tgw"), "{hosts}");

    // A web server published on the host's loopback answers there.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1:8080:80",
        "busybox",
        "sh",
        "-c",
        "mkdir /www && echo hello-from-berth > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    assert!(
        wait_for(5, || http_get(&d, 8080, "/").contains("hello-from-berth")),
        "{}",
        http_get(&d, 8080, "/")
    );
    let web_ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    let web_ip = web_ip.trim().to_string();
    assert_eq!(d.ok(&["port", "web"]), "80/tcp -> 127.0.0.1:8080\n");
    assert!(d.ok(&["ps"]).contains("127.0.0.1:8080->80/tcp"));
    let nets = d.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert_eq!(nets, "bridge bridge\nhost host\nnone null\n");
    let members = d.ok(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}",
    ]);
    assert_eq!(members.trim(), format!("web {web_ip}/16"));
    // Containers on the bridge reach each other.
    let got = d.ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{web_ip}/"),
    ]);
    assert_eq!(got, "hello-from-berth\n");

    // -P: a port from the ephemeral range; the same host port again: a clear error.
    d.ok(&[
        "run", "-d", "--name", "any", "-P", "--expose", "80", "busybox", "httpd", "-f", "-p", "80",
    ]);
    let any = d.ok(&["port", "any", "80"]);
    let port: u16 = any.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(port >= 32768, "{any}");
    assert!(
        wait_for(5, || http_get(&d, port, "/").starts_with("HTTP/1")),
        "{}",
        http_get(&d, port, "/")
    );
    let (code, _, err) = d.docker(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        "127.0.0.1:8080:80",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("Bind for 127.0.0.1:8080 failed: port is already allocated"),
        "{err}"
    );
    d.ok(&["rm", "clash"]);

    // Hairpin: a container reaches its own published port through the host's address.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "loop",
        "-p",
        "8090:80",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /w && echo hairpin > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    let got = d.ok(&[
        "exec",
        "loop",
        "timeout",
        "3",
        "wget",
        "-qO-",
        "http://172.17.0.1:8090/",
    ]);
    assert_eq!(got, "hairpin\n");
    d.ok(&["rm", "-f", "loop"]);

    // --network none has only lo; host sees the daemon's host, bridge included.
    let none = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ip",
        "-o",
        "link",
    ]);
    assert_eq!(none.lines().count(), 1, "{none}");
    let host = d.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ip",
        "-o",
        "link",
    ]);
    assert!(host.contains("berth0"), "{host}");
    let (code, _, err) = d.docker(&["run", "--rm", "--network", "nowhere", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("network nowhere not found"), "{err}");

    // kill -9 of the daemon: the published port keeps answering, and addresses stay taken.
    d.crash_and_restart();
    assert!(http_get(&d, 8080, "/").contains("hello-from-berth"));
    let again = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    assert_eq!(again.trim(), web_ip);
    let fresh = d.ok(&[
        "run", "--rm", "busybox", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(
        !fresh.contains(&format!("inet {web_ip}/")),
        "a duplicate address: {fresh}"
    );
    let (code, _, err) = d.docker(&["run", "--rm", "-p", "127.0.0.1:8080:80", "busybox", "true"]);
    assert_eq!(code, 125, "the port is still held after the restart: {err}");

    // A container that dies while no daemon runs: the next daemon removes what it held.
    let pid: i32 = d
        .ok(&["inspect", "-f", "{{.State.Pid}}", "any"])
        .trim()
        .parse()
        .unwrap();
    let _ = d.child.kill();
    let _ = d.child.wait();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(wait_for(5, || common::process_gone(pid)));
    d.crash_and_restart();
    assert!(wait_for(5, || d.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}}",
        "any"
    ]) == "exited\n"));
    // Links go just after the exit is recorded (off the path of `run --rm`).
    settle(&d, |l, n, _| {
        n.len() == 1 && l.split(' ').filter(|x| x.starts_with("vb")).count() == 1
    });
    let (links, netns, ports) = network_leftovers(&d);
    assert_eq!(netns.len(), 1, "only web's namespace: {netns:?}");
    assert_eq!(
        links.split(' ').filter(|l| l.starts_with("vb")).count(),
        1,
        "{links}"
    );
    assert!(!ports.contains(&port.to_string()), "{ports}");

    // Everything goes with the containers.
    d.ok(&["rm", "-f", "web", "any"]);
    settle(&d, |l, n, p| l == "berth0" && n.is_empty() && p.is_empty());
    let (links, netns, ports) = network_leftovers(&d);
    assert_eq!(links, "berth0", "only the bridge stays");
    assert!(netns.is_empty(), "{netns:?}");
    assert!(ports.is_empty(), "{ports}");
    assert!(http_get(&d, 8080, "/").starts_with("connect:"));
}

#[test]
fn user_networks_dns_isolation_connect_and_disconnect() {
    let Some(mut d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&["network", "create", "appnet"]);
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.77.0.0/24",
        "--gateway",
        "10.77.0.254",
        "fixed",
    ]);
    d.ok(&["network", "create", "--label", "spare=1", "spare"]);
    let (code, _, err) = d.docker(&["network", "create", "appnet"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("network with name appnet already exists"),
        "{err}"
    );
    // The next of Docker's pools: the default bridge has 172.17.0.0/16.
    let subnet = d.ok(&[
        "network",
        "inspect",
        "appnet",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
    ]);
    assert_eq!(subnet, "172.18.0.0/16\n");
    let custom = d.ok(&[
        "network",
        "ls",
        "--filter",
        "type=custom",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(custom, "appnet\nfixed\nspare\n");

    d.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "appnet",
        "--network-alias",
        "database",
        "busybox",
        "sh",
        "-c",
        "mkdir /www && echo db-here > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let db_ip = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.appnet.IPAddress}}",
        "db",
    ]);
    let db_ip = db_ip.trim().to_string();
    assert!(db_ip.starts_with("172.18.0."), "{db_ip}");
    // By name and by alias, through the embedded DNS server.
    let conf = d.ok(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "busybox",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(conf.starts_with("nameserver 127.0.0.11\n"), "{conf}");
    assert!(conf.contains("ndots:0"), "{conf}");
    let looked = d.ok(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "busybox",
        "nslookup",
        "database",
        "127.0.0.11",
    ]);
    assert!(looked.contains(&db_ip), "{looked}");
    let pinged = d.ok(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "busybox",
        "ping",
        "-c1",
        "-W2",
        "db",
    ]);
    assert!(pinged.contains("1 packets received"), "{pinged}");
    for name in ["db", "database"] {
        let got = d.ok(&[
            "run",
            "--rm",
            "--network",
            "appnet",
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{name}/"),
        ]);
        assert_eq!(got, "db-here\n", "{name}");
    }
    // Another network cannot reach it. (busybox's `wget -T` crashes, so `timeout`
    // bounds the attempt, from a shell: a signal to pid 1 would be ignored.)
    for net in ["bridge", "fixed"] {
        let out = d.ok(&[
            "run",
            "--rm",
            "--network",
            net,
            "busybox",
            "sh",
            "-c",
            &format!("timeout 2 wget -qO- http://{db_ip}/; echo rc=$?"),
        ]);
        assert!(
            !out.contains("db-here"),
            "{net} reached a container on appnet"
        );
        assert!(
            out.contains("rc=143") || out.contains("rc=1\n"),
            "{net}: {out}"
        );
    }
    // The same reaches it once on the network.
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "busybox",
        "timeout",
        "2",
        "wget",
        "-qO-",
        &format!("http://{db_ip}/"),
    ]);
    assert_eq!(got, "db-here\n");

    // A static address, and the network's own gateway.
    let addr = d.ok(&[
        "run",
        "--rm",
        "--network",
        "fixed",
        "--ip",
        "10.77.0.10",
        "busybox",
        "sh",
        "-c",
        "ip -o -4 addr show eth0; ip route",
    ]);
    assert!(addr.contains("inet 10.77.0.10/24"), "{addr}");
    assert!(addr.contains("default via 10.77.0.254"), "{addr}");
    let (code, _, err) = d.docker(&["run", "--rm", "--ip", "172.17.0.50", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("user specified IP address is supported on user defined networks only"),
        "{err}"
    );

    // connect and disconnect a running container.
    d.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "600"]);
    d.ok(&["network", "connect", "--alias", "boxy", "appnet", "box"]);
    let links = d.ok(&["exec", "box", "ip", "-o", "link"]);
    assert!(links.contains("eth1"), "{links}");
    assert_eq!(
        d.ok(&["exec", "box", "wget", "-qO-", &format!("http://{db_ip}/")]),
        "db-here\n"
    );
    let members = d.ok(&[
        "network",
        "inspect",
        "appnet",
        "-f",
        "{{range .Containers}}{{.Name}} {{end}}",
    ]);
    assert!(
        members.contains("box") && members.contains("db"),
        "{members}"
    );
    let looked = d.ok(&["exec", "db", "nslookup", "boxy", "127.0.0.11"]);
    assert!(looked.contains("172.18.0."), "{looked}");
    d.ok(&["network", "disconnect", "appnet", "box"]);
    let links = d.ok(&["exec", "box", "ip", "-o", "link"]);
    assert!(!links.contains("eth1"), "{links}");
    let (code, _, err) = d.docker(&["network", "rm", "appnet"]);
    assert_ne!(code, 0);
    assert!(err.contains("has active endpoints"), "{err}");

    // kill -9 of the daemon: names still resolve from containers that kept running.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "cli",
        "--network",
        "appnet",
        "busybox",
        "sleep",
        "600",
    ]);
    d.crash_and_restart();
    assert_eq!(
        d.ok(&["exec", "cli", "wget", "-qO-", "http://database/"]),
        "db-here\n"
    );

    // Prune takes only what no container uses; the rest goes with its containers.
    let pruned = d.ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("spare") && pruned.contains("fixed"),
        "{pruned}"
    );
    assert!(!pruned.contains("appnet"), "{pruned}");
    d.ok(&["rm", "-f", "db", "box", "cli"]);
    d.ok(&["network", "rm", "appnet"]);
    settle(&d, |l, n, _| l == "berth0" && n.is_empty());
    let (links, netns, _) = network_leftovers(&d);
    assert_eq!(links, "berth0", "only the default bridge stays");
    assert!(netns.is_empty(), "{netns:?}");
    let rules = capture(d.host_cmd("nft").args(["list", "table", "ip", "berth"]));
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("br-"), "{rules}");

    // The same through Berth's own CLI.
    d.berth_ok(&["network", "create", "--subnet", "10.78.0.0/24", "clinet"]);
    let ls = d.berth_ok(&["network", "ls"]);
    assert!(
        ls.starts_with("NETWORK ID     NAME      DRIVER    SCOPE\n"),
        "{ls}"
    );
    assert!(ls.contains(" clinet    bridge    local\n"), "{ls}");
    d.berth_ok(&[
        "run",
        "-d",
        "--name",
        "web2",
        "--network",
        "clinet",
        "--network-alias",
        "www",
        "--ip",
        "10.78.0.9",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    let looked = d.berth_ok(&[
        "run",
        "--rm",
        "--network",
        "clinet",
        "busybox",
        "nslookup",
        "www",
        "127.0.0.11",
    ]);
    assert!(looked.contains("10.78.0.9"), "{looked}");
    d.berth_ok(&["run", "-d", "--name", "box2", "busybox", "sleep", "600"]);
    d.berth_ok(&["network", "connect", "--ip", "10.78.0.20", "clinet", "box2"]);
    let addr = d.berth_ok(&["exec", "box2", "ip", "-o", "-4", "addr", "show", "eth1"]);
    assert!(addr.contains("10.78.0.20/24"), "{addr}");
    d.berth_ok(&["network", "disconnect", "clinet", "box2"]);
    d.berth_ok(&["rm", "-f", "web2", "box2"]);
    assert_eq!(d.berth_ok(&["network", "rm", "clinet"]), "clinet\n");
    settle(&d, |l, _, _| l == "berth0");
    let (links, _, _) = network_leftovers(&d);
    assert_eq!(links, "berth0");
}

/// A stand-in upstream resolver on 127.0.0.1:53 of the daemon's "host": every A query is
/// answered with 10.9.9.9, anything else with no records.
fn fake_upstream_dns(d: &Daemon) {
    let sock = common::net(Some(&d.netns()), || {
        std::net::UdpSocket::bind("127.0.0.1:53").unwrap()
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            let mut i = 12;
            while i < n && q[i] != 0 {
                i += q[i] as usize + 1;
            }
            i += 5;
            if i > n {
                continue;
            }
            let is_a = q[i - 4..i - 2] == [0, 1];
            let mut r = q[..i].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[7] = u8::from(is_a);
            if is_a {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 9, 9, 9]);
            }
            let _ = sock.send_to(&r, peer);
        }
    });
}

#[test]
fn address_pools_no_iptables_and_dns_forwarding() {
    require_root!();
    if !docker_cli() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-daemon-")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("daemon.json");
    std::fs::write(
        &conf,
        r#"{"default-address-pools": [{"base": "10.123.0.0/16", "size": 24}], "iptables": false,
            "ipv6": true, "fixed-cidr-v6": "fd00:abcd::/64"}"#,
    )
    .unwrap();
    let d = Daemon::start_with(dir, &["--config-file", conf.to_str().unwrap()]);
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    // The default bridge and new networks come from the configured pool.
    let addr = d.ok(&[
        "run", "--rm", "busybox", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(addr.contains("inet 10.123.0.2/24"), "{addr}");
    // ipv6 + fixed-cidr-v6: the default bridge has IPv6 too.
    let addr6 = d.ok(&[
        "run", "--rm", "busybox", "ip", "-o", "-6", "addr", "show", "eth0", "scope", "global",
    ]);
    assert!(addr6.contains("inet6 fd00:abcd::"), "{addr6}");
    d.ok(&["network", "create", "n1"]);
    let subnet = d.ok(&[
        "network",
        "inspect",
        "n1",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
    ]);
    assert_eq!(subnet, "10.123.1.0/24\n");
    // --iptables=false: no ruleset at all, and the bridge still carries traffic.
    let out = capture(d.host_cmd("nft").args(["list", "table", "ip", "berth"]));
    assert!(!out.status.success(), "a ruleset was written");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "n1",
        "busybox",
        "sh",
        "-c",
        "mkdir /w && echo up > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "busybox",
        "wget",
        "-qO-",
        "http://srv/",
    ]);
    assert_eq!(got, "up\n");
    // Names the embedded DNS does not know go to the container's --dns, from the host.
    fake_upstream_dns(&d);
    let looked = d.ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "--dns",
        "127.0.0.1",
        "busybox",
        "nslookup",
        "elsewhere.test",
        "127.0.0.11",
    ]);
    assert!(looked.contains("10.9.9.9"), "{looked}");
    // ... while container names are answered here, never asked upstream.
    let looked = d.ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "--dns",
        "127.0.0.1",
        "busybox",
        "nslookup",
        "srv",
        "127.0.0.11",
    ]);
    assert!(
        looked.contains("10.123.1.") && !looked.contains("10.9.9.9"),
        "{looked}"
    );
    // Over TCP too (a client retries there when an answer is truncated): asked from
    // inside srv's namespace.
    let key = d.ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "srv"]);
    let reply = common::net(Some(Path::new(key.trim())), || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.11:53").unwrap();
        let q: &[u8] = &[
            0, 21, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b's', b'r', b'v', 0, 0, 1, 0, 1,
        ];
        s.write_all(q).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut r).unwrap();
        r
    });
    assert_eq!(&reply[..2], &[0x12, 0x34], "the query's id: {reply:?}");
    assert_eq!(&reply[reply.len() - 4..][..3], &[10, 123, 1], "{reply:?}");
    d.ok(&["rm", "-f", "srv"]);
    d.ok(&["network", "rm", "n1"]);
}

impl Daemon {
    /// `berth compose ARGS` in `dir`: (exit code, stdout, stderr).
    fn compose(&self, dir: &Path, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(common::berth());
        cmd.env("BERTH_HOST", format!("unix://{}", self.socket().display()))
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_PROFILES")
            .current_dir(dir)
            .arg("compose");
        self.client(&mut cmd, args)
    }

    fn compose_ok(&self, dir: &Path, args: &[&str]) -> (String, String) {
        let (code, out, err) = self.compose(dir, args);
        assert_eq!(
            code,
            0,
            "compose {args:?}: {err}\ndaemon log:\n{}",
            self.log()
        );
        (out, err)
    }
}

const SHOP: &str = r#"
name: shop
x-common: &common
  image: busybox
services:
  web:
    <<: *common
    command: sh -c "mkdir -p /www && echo $${GREETING} > /www/index.html && echo serving && exec httpd -f -p 80 -h /www"
    init: true
    environment:
      GREETING: ${GREETING:-nobody}
    ports: ["127.0.0.1:${WEB_PORT}:80"]
    volumes: [data:/data]
    healthcheck:
      test: wget -qO- http://127.0.0.1/ || exit 1
      interval: 1s
      retries: 20
  client:
    <<: *common
    command: sh -c "wget -qO- http://web/ > /data/got && exec sleep 600"
    init: true
    volumes: [data:/data]
    secrets: [token]
    configs:
      - source: motd
        target: /etc/motd
    depends_on:
      web:
        condition: service_healthy
  extra:
    image: busybox
    command: sleep 600
    init: true
    profiles: [debug]
volumes:
  data: {}
secrets:
  token:
    file: ./token.txt
configs:
  motd:
    file: ./motd.txt
"#;

#[test]
fn compose_up_scale_recreate_profiles_and_down() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("compose.yaml"), SHOP).unwrap();
    std::fs::write(p.join(".env"), "GREETING=hello-compose\nWEB_PORT=18080\n").unwrap();
    std::fs::write(p.join("token.txt"), "s3cret\n").unwrap();
    std::fs::write(p.join("motd.txt"), "welcome\n").unwrap();

    let (_, err) = d.compose_ok(p, &["up", "-d"]);
    assert!(err.contains("Network shop_default  Created"), "{err}");
    assert!(err.contains("Container shop-web-1  Healthy"), "{err}");
    assert!(err.contains("Container shop-client-1  Started"), "{err}");
    // The page from .env, through the published port on the host's loopback...
    assert!(
        wait_for(5, || http_get(&d, 18080, "/").contains("hello-compose")),
        "{} {}",
        http_get(&d, 18080, "/"),
        d.ok(&["ps", "-a"])
    );
    // ... and by service name from the client, into the shared named volume.
    assert!(wait_for(5, || d
        .docker(&["exec", "shop-client-1", "cat", "/data/got"])
        .1
        == "hello-compose\n"));
    let (ps, _) = d.compose_ok(p, &["ps"]);
    assert!(ps.starts_with("NAME "), "{ps}");
    assert!(
        ps.contains("shop-web-1")
            && ps.contains("(healthy)")
            && ps.contains("127.0.0.1:18080->80/tcp"),
        "{ps}"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{index .Config.Labels \"com.docker.compose.service\"}} {{index .Config.Labels \"com.docker.compose.container-number\"}}", "shop-web-1"]),
        "web 1\n"
    );
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "shop_data\n");
    let (logs, _) = d.compose_ok(p, &["logs", "web"]);
    assert!(logs.contains("shop-web-1  | serving"), "{logs}");
    let (got, _) = d.compose_ok(p, &["exec", "-T", "web", "cat", "/www/index.html"]);
    assert_eq!(got, "hello-compose\n");
    let (services, _) = d.compose_ok(p, &["config", "--services"]);
    assert_eq!(services, "web\nclient\n");
    // One-off runs: secrets and configs from files, removed afterwards with --rm.
    let (got, _) = d.compose_ok(
        p,
        &[
            "run",
            "--rm",
            "-T",
            "client",
            "cat",
            "/run/secrets/token",
            "/etc/motd",
        ],
    );
    assert_eq!(got, "s3cret\nwelcome\n");
    let (code, _, _) = d.compose(
        p,
        &[
            "run",
            "--rm",
            "-T",
            "--no-deps",
            "client",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(code, 3, "the one-off's exit code");
    assert_eq!(
        d.ok(&[
            "ps",
            "-aq",
            "--filter",
            "label=com.docker.compose.oneoff=True"
        ]),
        "",
        "one-off containers went with --rm"
    );

    // Up again: nothing recreated.
    let ids = |d: &Daemon| {
        d.ok(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            "label=com.docker.compose.project=shop",
        ])
    };
    let before = ids(&d);
    let (_, err) = d.compose_ok(p, &["up", "-d"]);
    assert!(
        !err.contains("Recreated") && err.contains("Container shop-web-1  Running"),
        "{err}"
    );
    assert_eq!(ids(&d), before);
    let web_id = d.ok(&["inspect", "-f", "{{.Id}}", "shop-web-1"]);
    // A change to one service recreates only that one.
    std::fs::write(
        p.join("compose.yaml"),
        SHOP.replace("exec sleep 600\"\n    init", "exec sleep 601\"\n    init"),
    )
    .unwrap();
    let (_, err) = d.compose_ok(p, &["up", "-d"]);
    assert!(err.contains("Container shop-client-1  Recreated"), "{err}");
    assert!(!err.contains("Container shop-web-1  Recreated"), "{err}");
    assert_eq!(d.ok(&["inspect", "-f", "{{.Id}}", "shop-web-1"]), web_id);

    // Scale, and a profile.
    d.compose_ok(p, &["up", "-d", "--scale", "client=3"]);
    let (ps, _) = d.compose_ok(p, &["ps", "--services"]);
    assert_eq!(ps, "client\nweb\n");
    let (q, _) = d.compose_ok(p, &["ps", "-q", "client"]);
    assert_eq!(q.lines().count(), 3, "{q}");
    d.compose_ok(p, &["--profile", "debug", "up", "-d", "extra"]);
    assert!(d
        .ok(&["ps", "--format", "{{.Names}}"])
        .contains("shop-extra-1"));
    // Without the profile, extra is not an orphan.
    let (_, err) = d.compose_ok(p, &["up", "-d"]);
    assert!(!err.contains("orphan"), "{err}");

    // down -v: no containers, networks or volumes of the project left.
    d.compose_ok(p, &["--profile", "debug", "down", "-v"]);
    assert_eq!(ids(&d), "");
    assert_eq!(
        d.ok(&[
            "ps",
            "-aq",
            "--filter",
            "label=com.docker.compose.project=shop"
        ]),
        ""
    );
    assert_eq!(d.ok(&["network", "ls", "--filter", "name=shop", "-q"]), "");
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "");

    // Bad files: clear errors naming the key path, and cycles.
    std::fs::write(
        p.join("compose.yaml"),
        "services:\n  web:\n    imagee: busybox\n",
    )
    .unwrap();
    let (code, _, err) = d.compose(p, &["up", "-d"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("services.web additional properties 'imagee' not allowed"),
        "{err}"
    );
    std::fs::write(p.join("compose.yaml"), "services:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on: [a]\n").unwrap();
    let (code, _, err) = d.compose(p, &["up", "-d"]);
    assert_ne!(code, 0);
    assert!(err.contains("dependency cycle detected"), "{err}");
    std::fs::write(
        p.join("compose.yaml"),
        "services:\n  web:\n    image: busybox\n    ports: 80\n",
    )
    .unwrap();
    let (code, _, err) = d.compose(p, &["config"]);
    assert_ne!(code, 0);
    assert!(err.contains("services.web.ports must be a array"), "{err}");
}

#[test]
fn ipv6_on_user_networks() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:77::/64",
        "v6net",
    ]);
    let cfg = d.ok(&[
        "network",
        "inspect",
        "v6net",
        "-f",
        "{{.EnableIPv6}} {{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ]);
    assert!(
        cfg.starts_with("true ") && cfg.contains("fd00:77::/64"),
        "{cfg}"
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "v6net",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /w && echo over-v6 > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    let a6 = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.v6net.GlobalIPv6Address}}",
        "a",
    ]);
    assert_eq!(a6, "fd00:77::2\n");
    let addr = d.ok(&[
        "run",
        "--rm",
        "--network",
        "v6net",
        "--ip6",
        "fd00:77::99",
        "busybox",
        "sh",
        "-c",
        "ip -o -6 addr show eth0 scope global; ip -6 route",
    ]);
    assert!(addr.contains("inet6 fd00:77::99/64"), "{addr}");
    assert!(addr.contains("default via fd00:77::1"), "{addr}");
    // Container to container over IPv6, by address and by name (AAAA from the embedded DNS).
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        "v6net",
        "busybox",
        "wget",
        "-qO-",
        "http://[fd00:77::2]/",
    ]);
    assert_eq!(got, "over-v6\n");
    let looked = d.ok(&[
        "run",
        "--rm",
        "--network",
        "v6net",
        "busybox",
        "nslookup",
        "-type=AAAA",
        "a",
        "127.0.0.11",
    ]);
    assert!(looked.contains("fd00:77::2"), "{looked}");
    // The IPv6 subnet is masqueraded out, in the ip6 table written with the ip one.
    let rules = capture(d.host_cmd("nft").args(["list", "table", "ip6", "berth"]));
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("ip6 saddr fd00:77::/64") && rules.contains("masquerade"),
        "{rules}"
    );
    // Without a subnet: a unique-local /64 of its own.
    d.ok(&["network", "create", "--ipv6", "auto6"]);
    let sub = d.ok(&[
        "network",
        "inspect",
        "auto6",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ]);
    assert!(
        sub.contains(" fd") && sub.trim_end().ends_with("::/64"),
        "{sub}"
    );
    let (code, _, err) = d.docker(&["network", "create", "--subnet", "fd00:99::/64", "nov6"]);
    assert_ne!(code, 0);
    assert!(err.contains("IPv6"), "{err}");
    d.ok(&["rm", "-f", "a"]);
    d.ok(&["network", "rm", "v6net", "auto6"]);
    let rules = capture(d.host_cmd("nft").args(["list", "table", "ip6", "berth"]));
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("fd00:77"));
}

/// The Python docker-compose 1.29 (Debian's) against Berth, and each compose seeing the
/// other's project.
#[test]
fn python_docker_compose_against_berth() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("skipped: docker-compose (Debian's package) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("docker-compose.yml"),
        r#"
services:
  web:
    image: busybox
    command: sh -c "mkdir -p /www && echo py-compose > /www/index.html && exec httpd -f -p 80 -h /www"
    init: true
    ports: ["127.0.0.1:18181:80"]
    healthcheck:
      test: wget -qO- http://127.0.0.1/ || exit 1
      interval: 1s
  client:
    image: busybox
    command: sh -c "wget -qO- http://web/ && exec sleep 600"
    init: true
    depends_on:
      web:
        condition: service_healthy
    volumes: [data:/data]
volumes:
  data: {}
"#,
    )
    .unwrap();
    let py = |args: &[&str]| {
        d.client(
            Command::new("docker-compose")
                .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
                .current_dir(p)
                .args(["-p", "pyshop"]),
            args,
        )
    };
    let (code, _, err) = py(&["up", "-d"]);
    assert_eq!(code, 0, "{err}\n{}", d.log());
    assert!(wait_for(5, || http_get(&d, 18181, "/").contains("py-compose")));
    assert!(wait_for(5, || py(&["logs", "--no-color", "client"])
        .1
        .contains("py-compose")));
    let (code, out, _) = py(&["ps"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("pyshop_web_1") && out.contains("Up (healthy)"),
        "{out}"
    );
    // Berth's compose finds the same project by its labels, and takes it down.
    let (ps, _) = d.compose_ok(p, &["-p", "pyshop", "ps", "--services"]);
    assert_eq!(ps, "client\nweb\n");
    d.compose_ok(p, &["-p", "pyshop", "down", "-v"]);
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "");
    // And the other way round: Berth brings it up, docker-compose takes it down.
    d.compose_ok(p, &["-p", "pyshop", "up", "-d"]);
    let (code, _, err) = py(&["down", "-v"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    assert_eq!(
        d.ok(&["network", "ls", "--filter", "name=pyshop", "-q"]),
        ""
    );
}

#[test]
fn compose_up_attached_prefixes_output_and_exit_code_from() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("compose.yaml"),
        "name: att\nservices:\n  job:\n    image: busybox\n    command: sh -c 'echo hello from job; sleep 0.5; exit 7'\n  idle:\n    image: busybox\n    command: sleep 600\n    init: true\n",
    )
    .unwrap();
    let (code, out, err) = d.compose(p, &["up", "--exit-code-from", "job"]);
    assert_eq!(code, 7, "the job's exit code: {out}{err}");
    assert!(out.contains("att-job-1   | hello from job"), "{out}");
    assert!(out.contains("att-job-1 exited with code 7"), "{out}");
    // --abort-on-container-exit stopped the other service.
    let state = d.ok(&["inspect", "-f", "{{.State.Status}}", "att-idle-1"]);
    assert_eq!(state, "exited\n");
    // On a terminal (util-linux's `script` gives it one) the prefixes are coloured.
    if Command::new("script").arg("--version").output().is_ok() {
        let line = format!(
            "BERTH_HOST=unix://{} {} compose up --exit-code-from job",
            d.socket().display(),
            common::berth()
        );
        let out = capture(
            Command::new("script")
                .args(["-q", "-e", "-c", &line, "/dev/null"])
                .current_dir(p)
                .env_remove("NO_COLOR"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(7), "{text}");
        assert!(
            text.contains("\x1b[") && text.contains("hello from job"),
            "{text:?}"
        );
    }
    d.compose_ok(p, &["down"]);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl.
#[test]
fn tls_hosts_verify_client_certificates() {
    require_root!();
    if !docker_cli() || Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: needs the docker CLI and openssl");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-daemon-")
        .tempdir()
        .unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    common::make_certs(&certs, "127.0.0.1");
    let f = |n: &str| certs.join(n).display().to_string();
    // Beyond loopback (in the daemon's own namespace), allowed with client verification.
    let d = Daemon::start_with(
        dir,
        &[
            "-H",
            "tcp://0.0.0.0:23761",
            "--tlsverify",
            "--tlscacert",
            &f("ca.pem"),
            "--tlscert",
            &f("server-cert.pem"),
            "--tlskey",
            &f("server-key.pem"),
        ],
    );
    let ns = d.netns();
    assert!(wait_for(5, || common::net(Some(&ns), || {
        std::net::TcpStream::connect(("127.0.0.1", 23761)).is_ok()
    })));
    let docker = |args: &[&str]| {
        let out = capture(d.host_cmd("docker").env_remove("DOCKER_HOST").args(args));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ca, cert, key) = (f("ca.pem"), f("cert.pem"), f("key.pem"));
    let verified = [
        "--tlsverify",
        "--tlscacert",
        &ca,
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
        "-H",
        "tcp://127.0.0.1:23761",
        "version",
        "-f",
        "{{.Server.APIVersion}}",
    ];
    let (code, out, err) = docker(&verified);
    assert_eq!((code, out.as_str()), (0, "1.47\n"), "{err}");
    // No client certificate: refused in the handshake.
    let (code, _, err) = docker(&[
        "--tls",
        "--tlscacert",
        &f("ca.pem"),
        "-H",
        "tcp://127.0.0.1:23761",
        "version",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("tls"),
        "{err}"
    );
    // Plain HTTP gets nothing.
    let (code, _, _) = docker(&[
        "-H",
        "tcp://127.0.0.1:23761",
        "version",
        "-f",
        "{{.Server.APIVersion}}",
    ]);
    assert_ne!(code, 0);
    // Berth's CLI the same ways: flags, then DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
    let berth = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = d.host_cmd(common::berth());
        c.env_remove("DOCKER_HOST").env_remove("BERTH_HOST");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = capture(c.args(args));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = berth(&verified, &[]);
    assert_eq!((code, out.as_str()), (0, "1.47\n"), "{err}");
    let env = [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs.to_str().unwrap()),
    ];
    let (code, out, err) = berth(&["-H", "tcp://127.0.0.1:23761", "ps", "-q"], &env);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    // A CA that did not sign the daemon's certificate: refused.
    let (code, _, err) = berth(
        &[
            "--tlsverify",
            "--tlscacert",
            &f("cert.pem"),
            "-H",
            "tcp://127.0.0.1:23761",
            "ps",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // No client certificate: the daemon refuses the handshake.
    let (code, _, err) = berth(
        &["--tls", "-H", "tcp://127.0.0.1:23761", "ps"],
        &[("HOME", "/nonexistent")],
    );
    assert_ne!(code, 0, "{err}");
    // Without --tlsverify, beyond loopback is still refused.
    let out = capture(Command::new(common::berth()).args([
        "daemon",
        "--tls",
        "-H",
        "tcp://0.0.0.0:23762",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs TLS client verification"));
}

#[test]
fn build_from_a_dockerfile_with_the_docker_and_berth_clis() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path();
    std::fs::create_dir_all(ctx.join("dir")).unwrap();
    std::fs::write(ctx.join("greeting.txt"), "from the context\n").unwrap();
    std::fs::write(ctx.join("dir/inner.txt"), "inner\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        r#"# syntax=docker/dockerfile:1
FROM busybox AS base
ARG GREETING=hello
ENV APP=/app
WORKDIR $APP
COPY greeting.txt ./
COPY dir/ ./sub/
RUN echo "$GREETING from RUN" > run.txt \
    && cat greeting.txt
RUN <<EOF
echo heredoc > /app/heredoc.txt
EOF
LABEL org.example.built=yes
EXPOSE 8080
CMD ["cat", "/app/run.txt"]

FROM busybox
COPY --from=base /app/run.txt /app/sub/inner.txt /copied/
CMD ["cat", "/copied/run.txt", "/copied/inner.txt"]
"#,
    )
    .unwrap();
    let ctx_s = ctx.to_str().unwrap();
    // The docker CLI's classic builder (POST /build).
    let out = capture(
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
            .env("DOCKER_BUILDKIT", "0")
            .args([
                "build",
                "--build-arg",
                "GREETING=howdy",
                "-t",
                "built:1",
                ctx_s,
            ]),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{}", d.log());
    assert!(
        text.contains("from the context"),
        "RUN output streams: {text}"
    );
    assert!(text.contains("Successfully tagged built:1"), "{text}");
    assert_eq!(d.ok(&["run", "--rm", "built:1"]), "howdy from RUN\ninner\n");
    // --target stops at the named stage, with its configuration.
    d.berth_ok(&["build", "--target", "base", "-t", "base:1", ctx_s]);
    assert_eq!(d.ok(&["run", "--rm", "base:1"]), "hello from RUN\n");
    let cfg = d.ok(&["inspect", "-f", "{{.Config.WorkingDir}} {{index .Config.Labels \"org.example.built\"}} {{json .Config.ExposedPorts}}", "base:1"]);
    assert_eq!(cfg, "/app yes {\"8080/tcp\":{}}\n");
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "base:1",
            "cat",
            "/app/heredoc.txt",
            "/app/sub/inner.txt"
        ]),
        "heredoc\ninner\n"
    );
    // A failing RUN exits with its code (through both CLIs), a bad Dockerfile with 1.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN exit 3\n").unwrap();
    let (code, _, err) = d.berth(&["build", ctx_s]);
    assert_eq!(code, 3);
    assert!(err.contains("returned a non-zero code: 3"), "{err}");
    let mut docker = std::process::Command::new("docker");
    docker
        .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
        .env("DOCKER_BUILDKIT", "0");
    let (code, _, err) = d.client(&mut docker, &["build", ctx_s]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("returned a non-zero code: 3"), "{err}");
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUNN x\n").unwrap();
    let (code, _, err) = d.berth(&["build", ctx_s]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Dockerfile:2:1: unknown instruction: RUNN"),
        "{err}"
    );
    // Nothing of the build's own containers is left.
    assert_eq!(
        d.ok(&["ps", "-aq", "--filter", "label=org.berth.build"]),
        ""
    );

    // compose `build:`: the service's image is built (as <project>-<service>) and run.
    let proj = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(proj.path().join("app")).unwrap();
    std::fs::write(
        proj.path().join("app/Dockerfile"),
        "FROM busybox\nARG WORD=unset\nRUN echo \"built $WORD\" > /msg\nCMD [\"cat\", \"/msg\"]\n",
    )
    .unwrap();
    std::fs::write(
        proj.path().join("compose.yaml"),
        "name: bp\nservices:\n  app:\n    build:\n      context: ./app\n      args: {WORD: by-compose}\n",
    )
    .unwrap();
    let (_, err) = d.compose_ok(proj.path(), &["up", "-d"]);
    assert!(err.contains("Service app  Built"), "{err}");
    assert!(wait_for(5, || d.ok(&["logs", "bp-app-1"]) == "built by-compose\n"));
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.Config.Image}}", "bp-app-1"]),
        "bp-app\n"
    );
    // Built once: a second up does not build again; `compose build` does.
    let (_, err) = d.compose_ok(proj.path(), &["up", "-d"]);
    assert!(!err.contains("Building"), "{err}");
    let (_, err) = d.compose_ok(proj.path(), &["build"]);
    assert!(err.contains("Service app  Built"), "{err}");
    d.compose_ok(proj.path(), &["down"]);
}

const VAULT: &str = r#"
name: vault
services:
  db:
    image: busybox
    command: sleep 600
    init: true
    environment:
      VERSION: ${DB_VERSION:-1}
  app:
    build: ./app
    command: sleep 600
    init: true
    depends_on:
      db:
        condition: service_started
        restart: true
    secrets: [token]
    configs:
      - source: banner
        target: /etc/banner.txt
secrets:
  token:
    environment: VAULT_TOKEN
configs:
  banner:
    content: "welcome to the vault"
"#;

/// Compose: secrets from `environment` and configs from `content` written into the
/// container; `restart: true` dependents restarted with their dependency (by `restart`
/// and when `up` recreates it); `down --rmi local` removes the images compose built.
#[test]
fn compose_inline_secrets_restart_dependents_and_rmi() {
    let Some(d) = daemon_with_busybox() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("compose.yaml"), VAULT).unwrap();
    std::fs::create_dir_all(p.join("app")).unwrap();
    std::fs::write(
        p.join("app/Dockerfile"),
        "FROM busybox\nRUN echo built > /built\n",
    )
    .unwrap();
    let compose = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = d.berth_cmd();
        cmd.env_remove("COMPOSE_PROJECT_NAME")
            .current_dir(p)
            .arg("compose");
        for (k, v) in env {
            cmd.env(k, v);
        }
        d.client(&mut cmd, args)
    };
    let (code, _, err) = compose(&["up", "-d"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("VAULT_TOKEN"), "{err}");
    let secret = [("VAULT_TOKEN", "t0k3n")];
    let (code, _, err) = compose(&["up", "-d"], &secret);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        d.ok(&[
            "exec",
            "vault-app-1",
            "cat",
            "/run/secrets/token",
            "/etc/banner.txt",
            "/built"
        ]),
        "t0k3nwelcome to the vaultbuilt\n"
    );
    assert_eq!(
        d.ok(&[
            "exec",
            "vault-app-1",
            "stat",
            "-c",
            "%a",
            "/run/secrets/token"
        ]),
        "444\n"
    );
    let started = |name: &str| d.ok(&["inspect", "-f", "{{.State.StartedAt}}", name]);
    // `restart db` restarts app after it.
    let before = started("vault-app-1");
    let (code, _, err) = compose(&["restart", "db"], &secret);
    assert_eq!(code, 0, "{err}");
    let db_at = err.find("Container vault-db-1  Restarted");
    let app_at = err.find("Container vault-app-1  Restarted");
    assert!(db_at.is_some() && app_at > db_at, "{err}");
    assert_ne!(started("vault-app-1"), before);
    // `up` recreating db (its environment changed) restarts app, which is not recreated.
    let app_id = d.ok(&["inspect", "-f", "{{.Id}}", "vault-app-1"]);
    let before = started("vault-app-1");
    let (code, _, err) = compose(&["up", "-d"], &[secret[0], ("DB_VERSION", "2")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Container vault-db-1  Recreated"), "{err}");
    assert!(err.contains("Container vault-app-1  Restarted"), "{err}");
    assert_eq!(d.ok(&["inspect", "-f", "{{.Id}}", "vault-app-1"]), app_id);
    assert_ne!(started("vault-app-1"), before);
    // down --rmi local: the built image goes, busybox (named by `image:`) stays.
    let (code, _, err) = compose(&["down", "--rmi", "sideways"], &secret);
    assert_ne!(code, 0);
    assert!(err.contains("invalid --rmi option"), "{err}");
    let (code, _, err) = compose(&["down", "--rmi", "local", "-t", "0"], &secret);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Image vault-app  Removed"), "{err}");
    assert_eq!(d.docker(&["image", "inspect", "vault-app"]).0, 1);
    assert_eq!(d.docker(&["image", "inspect", "busybox"]).0, 0);
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}
