//! `berth runtime` end to end, as root, on real busybox bundles.

mod common;

use std::io::Read;
use std::path::Path;

use common::{cgroup_dirs, unique_id, wait_for, Bundle, Runtime};

fn run_sh(script: &str) -> (i32, String, String) {
    let rt = Runtime::new();
    let b = Bundle::new(&["sh", "-c", script]);
    rt.run(&unique_id("sh"), &b)
}

#[test]
fn pid_namespace_makes_the_process_pid_1() {
    require_root!();
    let (code, out, err) = run_sh("echo $$; ps -o pid | tail -n +2 | wc -l");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1");
    // Only sh (and the ps pipeline it forked) are visible.
    assert!(lines[1].trim().parse::<u32>().unwrap() <= 4, "{out}");
}

#[test]
fn uts_namespace_has_its_own_hostname() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["hostname"]);
    b.config["hostname"] = "box-one".into();
    b.save();
    let (code, out, err) = rt.run(&unique_id("uts"), &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "box-one");
    assert_ne!(
        rustix::system::uname().nodename().to_str().unwrap(),
        "box-one"
    );
}

#[test]
fn network_namespace_has_only_loopback() {
    require_root!();
    let (code, out, err) = run_sh("ls /sys/class/net");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
}

#[test]
fn mount_namespace_and_root_are_the_containers() {
    require_root!();
    let here = std::env::current_dir().unwrap();
    let (code, out, err) = run_sh(&format!(
        "cd /../../..; pwd; ls -d bin/busybox; test -e {} && echo LEAK; wc -l < /proc/self/mountinfo",
        here.display()
    ));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/");
    assert_eq!(lines[1], "bin/busybox");
    assert!(!out.contains("LEAK"));
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let container_mounts: usize = lines[2].trim().parse().unwrap();
    assert!(
        container_mounts < 60,
        "container sees {container_mounts} mounts"
    );
    assert_ne!(container_mounts, host_mounts);
}

#[test]
fn exit_status_is_passed_through() {
    require_root!();
    assert_eq!(run_sh("exit 42").0, 42);
    // Killed by a signal (from the host: pid 1 of a namespace ignores its own SIGKILL):
    // 128 + signal, as a shell reports it.
    let rt = Runtime::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique_id("sig");
    let killer = {
        let root = rt.root.path().to_path_buf();
        let id = id.clone();
        std::thread::spawn(move || {
            let state = |root: &Path| {
                common::capture(
                    std::process::Command::new(common::berth())
                        .arg("runtime")
                        .arg("--root")
                        .arg(root)
                        .args(["state", &id]),
                )
            };
            assert!(wait_for(10, || String::from_utf8_lossy(
                &state(&root).stdout
            )
            .contains("running")));
            let st = std::process::Command::new(common::berth())
                .arg("runtime")
                .arg("--root")
                .arg(&root)
                .args(["kill", &id, "KILL"])
                .status()
                .unwrap();
            assert!(st.success());
        })
    };
    assert_eq!(rt.run(&id, &b).0, 137);
    killer.join().unwrap();
}

#[test]
fn memory_limit_oom_kills_a_hog() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    b.config["linux"]["resources"]["memory"] =
        serde_json::json!({"limit": 32 << 20, "swap": 32 << 20});
    b.save();
    let id = unique_id("oom");
    let out = rt.run_args(&["run", "--keep", "--bundle", b.path().to_str().unwrap(), &id]);
    let code = out.status.code().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    assert_ne!(code, 0);
    // The kernel's own account of it, from the container's memory cgroup.
    let v1 = Path::new("/sys/fs/cgroup/memory/berth")
        .join(&id)
        .join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup/berth")
        .join(&id)
        .join("memory.events");
    let text = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap();
    let kills: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kills >= 1, "{text}");
    assert!(rt.state(&id)["status"] == "stopped");
    rt.ok(&["delete", &id]);
    assert!(cgroup_dirs(&id).is_empty());
}

#[test]
fn pids_limit_makes_fork_fail() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; wait",
    ]);
    b.config["linux"]["resources"]["pids"] = serde_json::json!({"limit": 5});
    b.save();
    let (code, _out, err) = rt.run(&unique_id("pids"), &b);
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "code {code}: {err}"
    );
}

#[test]
fn dropped_capabilities_are_gone() {
    require_root!();
    // The default spec keeps only AUDIT_WRITE, KILL and NET_BIND_SERVICE.
    let (code, _out, err) = run_sh("hostname other");
    assert_ne!(code, 0);
    assert!(err.contains("not permitted"), "{err}");
    let (code, out, err) = run_sh("grep CapEff /proc/self/status");
    assert_eq!(code, 0, "{err}");
    // AUDIT_WRITE (29), NET_BIND_SERVICE (10), KILL (5).
    assert_eq!(
        out.split_whitespace().nth(1).unwrap(),
        "0000000020000420",
        "{out}"
    );
    // With CAP_SYS_ADMIN added, the same command works (so the test can fail).
    let rt = Runtime::new();
    let mut b = Bundle::new(&["hostname", "other"]);
    b.add_caps(&["CAP_SYS_ADMIN"]);
    let (code, _, err) = rt.run(&unique_id("cap"), &b);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn seccomp_filter_blocks_unshare() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["unshare", "-U", "true"]);
    b.add_caps(&["CAP_SYS_ADMIN"]);
    let (code, _, err) = rt.run(&unique_id("noseccomp"), &b);
    assert_eq!(code, 0, "without seccomp unshare must work: {err}");
    b.config["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    b.save();
    let (code, _, err) = rt.run(&unique_id("seccomp"), &b);
    assert_ne!(code, 0);
    assert!(err.contains("not permitted"), "{err}");
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_uid() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["sh", "-c", "id -u; sleep 30"]);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    b.config["linux"]["uidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    b.config["linux"]["gidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    // The rootfs must be owned by the mapped root.
    let st = std::process::Command::new("chown")
        .args(["-R", "200000:200000"])
        .arg(b.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["type"] != "cgroup");
    b.save();
    let id = unique_id("userns");
    rt.create_start(&id, &b);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1).unwrap(),
        "200000",
        "{uid_line}"
    );
    rt.ok(&["kill", &id, "KILL"]);
    assert!(wait_for(5, || rt.state(&id)["status"] == "stopped"));
    rt.ok(&["delete", &id]);
}

#[test]
fn create_waits_for_start_and_state_follows() {
    require_root!();
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["sh", "-c", "echo started > /out/flag; sleep 30"]);
    b.bind("/out", dir.path());
    b.save();
    let id = unique_id("life");
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"].as_str().unwrap(), id);
    assert!(st["pid"].as_i64().unwrap() > 0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !dir.path().join("flag").exists(),
        "the program ran before start"
    );
    rt.ok(&["start", &id]);
    assert!(wait_for(5, || dir.path().join("flag").exists()));
    assert_eq!(rt.state(&id)["status"], "running");
    // start twice is an error.
    assert!(!rt.run_args(&["start", &id]).status.success());
    let list = rt.ok(&["list", "--format", "json"]);
    assert!(list.contains(&id));
    rt.ok(&["pause", &id]);
    assert_eq!(rt.state(&id)["status"], "paused");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.state(&id)["status"], "running");
    // delete of a running container needs --force.
    let out = rt.run_args(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("running"));
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    rt.ok(&["kill", &id, "SIGKILL"]);
    assert!(wait_for(5, || rt.state(&id)["status"] == "stopped"));
    rt.ok(&["delete", &id]);
    assert_nothing_left(&rt, &id, pid as i32, b.rootfs().as_path());
}

fn assert_nothing_left(rt: &Runtime, id: &str, pid: i32, rootfs: &Path) {
    assert!(!rt.root.path().join(id).exists(), "state dir left");
    assert!(
        cgroup_dirs(id).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(id)
    );
    assert!(common::process_gone(pid));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(rootfs.to_str().unwrap()), "mounts left");
}

#[test]
fn delete_force_of_a_running_container_leaves_nothing() {
    require_root!();
    let rt = Runtime::new();
    // (The trailing `true` keeps busybox sh from exec'ing the last sleep itself.)
    let b = Bundle::new(&["sh", "-c", "sleep 100 & sleep 100; true"]);
    let id = unique_id("force");
    rt.create_start(&id, &b);
    let pid = rt.state(&id)["pid"].as_i64().unwrap() as i32;
    let ps =
        || -> Vec<i32> { serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap() };
    assert!(wait_for(5, || ps().len() == 3), "{:?}", ps());
    let pids = ps();
    rt.ok(&["delete", "--force", &id]);
    assert_nothing_left(&rt, &id, pid, &b.rootfs());
    for p in pids {
        assert!(wait_for(5, || common::process_gone(p)));
    }
}

#[test]
fn kill_all_reaches_every_process() {
    require_root!();
    let rt = Runtime::new();
    let b = Bundle::new(&["sh", "-c", "trap '' TERM; sleep 100 & wait"]);
    let id = unique_id("killall");
    rt.create_start(&id, &b);
    assert!(wait_for(5, || rt
        .ok(&["ps", "--format", "json", &id])
        .matches(',')
        .count()
        >= 1));
    rt.ok(&["kill", "--all", &id, "KILL"]);
    assert!(wait_for(5, || rt.state(&id)["status"] == "stopped"));
    assert!(wait_for(5, || rt
        .ok(&["ps", "--format", "json", &id])
        .trim()
        == "[]"));
    rt.ok(&["delete", &id]);
}

#[test]
fn exec_joins_the_containers_namespaces() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.config["hostname"] = "exec-host".into();
    b.save();
    let id = unique_id("exec");
    rt.create_start(&id, &b);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let out = rt.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; cat /proc/1/comm",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exec-host");
    let host_pidns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let host_mntns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(lines[1], host_pidns.to_str().unwrap());
    assert_eq!(lines[2], host_mntns.to_str().unwrap());
    assert_eq!(lines[3], "sleep");
    // The exit status comes back, and exec'd processes are in the container's cgroup.
    let out = rt.run_args(&["exec", &id, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = rt.ok(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert!(out.lines().any(|l| l.ends_with(":/")), "{out}");
    // A process.json works too, with a different user.
    let p = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        p.path(),
        serde_json::json!({"args": ["id", "-u"], "cwd": "/", "user": {"uid": 65534, "gid": 65534}})
            .to_string(),
    )
    .unwrap();
    assert_eq!(
        rt.ok(&["exec", "--process", p.path().to_str().unwrap(), &id])
            .trim(),
        "65534"
    );
    // Unknown programs report like runc (Docker maps this to exit code 127).
    let out = rt.run_args(&["exec", &id, "no-such-program"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found in $PATH"));
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn every_hook_fires_once_with_the_state() {
    require_root!();
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let hook = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r s; echo \"{name} $s\" >> {}", log.display())]});
    let mut b = Bundle::new(&["true"]);
    // startContainer runs inside the container: its log goes through a bind mount.
    b.bind(dir.path(), dir.path());
    b.config["hooks"] = serde_json::json!({
        "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")],
        "startContainer": [hook("startContainer")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")]
    });
    b.save();
    let id = unique_id("hooks");
    let (code, _, err) = rt.run(&id, &b);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    for name in [
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{name} in {text}");
        let state: serde_json::Value =
            serde_json::from_str(lines[0].split_once(' ').unwrap().1).unwrap();
        assert_eq!(state["id"].as_str().unwrap(), id, "{name}");
        assert_eq!(
            state["bundle"].as_str().unwrap(),
            b.path().canonicalize().unwrap().to_str().unwrap()
        );
        let want = match name {
            "createRuntime" | "createContainer" => "created",
            "startContainer" | "poststart" => "running",
            _ => "stopped",
        };
        assert_eq!(state["status"], want, "{name}");
    }
    // Order of the lifecycle.
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        order,
        [
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
}

#[test]
fn failing_hook_fails_create_and_cleans_up() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["true"]);
    b.config["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/false"}]});
    b.save();
    let id = unique_id("badhook");
    let out = rt.run_args(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hook /bin/false failed"));
    assert!(rt.ids().is_empty());
    assert!(cgroup_dirs(&id).is_empty());
}

/// CVE-2019-5736 class: while the runtime's code runs inside the container it must not be
/// the host binary that /proc/<pid>/exe leads to, and that view must not be writable.
#[test]
fn container_init_runs_from_a_sealed_view_of_the_runtime() {
    require_root!();
    let rt = Runtime::new();
    let b = Bundle::new(&["true"]);
    let id = unique_id("sealed");
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    // The init waits for `start` still running Berth's code.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let host = Path::new(common::berth()).canonicalize().unwrap();
    assert_ne!(exe, host, "the container init runs the host binary itself");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"))
        .unwrap_err();
    // EROFS (overlay view), EPERM (sealed memfd) or ETXTBSY: never a writable file.
    assert!(
        matches!(err.raw_os_error(), Some(30 | 1 | 26)),
        "opening the init's exe for writing: {err}"
    );
    rt.ok(&["delete", "--force", &id]);
}

/// CVE-2024-21626 class: no descriptor of the runtime and no host working directory reach
/// the container process.
#[test]
fn no_host_descriptor_or_cwd_leaks_into_the_container() {
    require_root!();
    let rt = Runtime::new();
    let b = Bundle::new(&["sh", "-c", "readlink /proc/$$/cwd; exec ls /proc/self/fd"]);
    // Hold an extra descriptor open in the runtime's caller: it must not be inherited...
    let f = std::fs::File::open("/etc/hostname").unwrap();
    let mut cmd = rt.cmd();
    cmd.current_dir("/etc").args([
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("fds"),
    ]);
    let out = common::capture(&mut cmd);
    drop(f);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // (A pipeline in the shell would itself hold pipe descriptors for a moment: list them
    // from an exec'd ls, whose own directory descriptor is the lowest free number, 3.)
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "/");
    let fds: Vec<&str> = lines.collect();
    assert_eq!(fds, ["0", "1", "2", "3"]);

    // The same through create + start, where the init also held exec.fifo and its sockets.
    let dir = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["sh", "-c", "exec ls -l /proc/self/fd > /out/fds"]);
    b.bind("/out", dir.path());
    b.save();
    let id = unique_id("fds2");
    rt.create_start(&id, &b);
    assert!(wait_for(5, || rt.state(&id)["status"] == "stopped"));
    let listing = std::fs::read_to_string(dir.path().join("fds")).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(" -> "))
        .filter_map(|l| l.split(" -> ").next()?.split_whitespace().last())
        .collect();
    // (busybox ls -l has closed its own directory descriptor by the time it prints.)
    assert_eq!(names, ["0", "1", "2"], "{listing}");
    assert!(
        !listing.contains("exec.fifo") && !listing.contains("socket"),
        "{listing}"
    );
    rt.ok(&["delete", &id]);
}

#[test]
fn preserve_fds_passes_exactly_the_asked_descriptors() {
    require_root!();
    let rt = Runtime::new();
    let b = Bundle::new(&["sh", "-c", "cat <&3; exec ls /proc/self/fd"]);
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), "through fd 3\n").unwrap();
    // The caller opens fds 3 and 4; only 3 is asked for.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<{} 4</etc/hostname; exec {} runtime --root {} run --preserve-fds 1 --bundle {} {}",
            tmp.path().display(),
            common::berth(),
            rt.root.path().display(),
            b.path().display(),
            unique_id("pfd")
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("through fd 3\n"), "{text}");
    // 0-2, the preserved 3, and ls's own directory descriptor (4): never the caller's 4,
    // which would push ls's to 5.
    let fds: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(fds, ["0", "1", "2", "3", "4"], "{text}");
}

#[test]
fn mount_target_symlink_out_of_rootfs_is_resolved_inside() {
    require_root!();
    let rt = Runtime::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("canary"), "host").unwrap();
    let b = Bundle::new(&[
        "sh",
        "-c",
        &format!(
            "grep -q ' {} .* - tmpfs ' /proc/self/mountinfo",
            outside.path().display()
        ),
    ]);
    // /escape points at a host directory by absolute path.
    std::os::unix::fs::symlink(outside.path(), b.rootfs().join("escape")).unwrap();
    let mut b = b;
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/escape", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]
        }));
    b.save();
    let (code, _out, err) = rt.run(&unique_id("symlink"), &b);
    assert_eq!(
        code, 0,
        "the tmpfs is not where the link leads inside the container: {err}"
    );
    // The tmpfs went inside the rootfs (at the link's target resolved there), never over the host dir.
    assert_eq!(
        std::fs::read_to_string(outside.path().join("canary")).unwrap(),
        "host"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(outside.path().to_str().unwrap()));
    let inside = b.rootfs().join(outside.path().strip_prefix("/").unwrap());
    assert!(
        inside.is_dir(),
        "mount point created inside the rootfs at {}",
        inside.display()
    );
}

/// `run` with a terminal and no console socket: the runtime holds the pty itself and
/// copies it to its own stdio (runc's behaviour); detached, that is refused.
#[test]
fn run_with_a_terminal_and_no_console_socket() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["sh", "-c", "tty; exit 3"]);
    b.config["process"]["terminal"] = true.into();
    b.save();
    let out = common::capture(
        std::process::Command::new(common::berth())
            .args(["runtime", "--root"])
            .arg(rt.root.path())
            .args(["run", "--bundle"])
            .arg(b.path())
            .arg(unique_id("owntty"))
            .stdin(std::process::Stdio::null()),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/dev/pts/0"));
    let out = common::capture(
        std::process::Command::new(common::berth())
            .args(["runtime", "--root"])
            .arg(rt.root.path())
            .args(["run", "-d", "--bundle"])
            .arg(b.path())
            .arg(unique_id("owntty")),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot allocate tty"));
}

#[test]
fn terminal_through_console_socket() {
    require_root!();
    use std::os::unix::net::UnixListener;
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let mut b = Bundle::new(&["sh", "-c", "tty; stty size; echo done"]);
    b.config["process"]["terminal"] = true.into();
    b.config["process"]["consoleSize"] = serde_json::json!({"height": 33, "width": 101});
    b.save();
    let id = unique_id("tty");
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = rustix::net::RecvAncillaryBuffer::new(&mut space);
        rustix::net::recvmsg(
            &conn,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut anc,
            rustix::net::RecvFlags::empty(),
        )
        .unwrap();
        let mut master = None;
        for m in anc.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = m {
                master = fds.next();
            }
        }
        std::fs::File::from(master.expect("a pty master"))
    });
    rt.ok(&[
        "create",
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let mut master = receiver.join().unwrap();
    rt.ok(&["start", &id]);
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&out).contains("done") {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("33 101"), "{text}");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_nothing() {
    require_root!();
    let rt = Runtime::new();
    let check = |args: &[&str], want: &str| {
        let out = rt.run_args(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert!(rt.ids().is_empty(), "{args:?} left state behind");
    };
    // Missing rootfs.
    let b = Bundle::new(&["true"]);
    std::fs::remove_dir_all(b.rootfs()).unwrap();
    check(
        &[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("x"),
        ],
        "rootfs",
    );
    // Invalid JSON.
    let b = Bundle::new(&["true"]);
    std::fs::write(b.path().join("config.json"), "{not json").unwrap();
    check(
        &[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("x"),
        ],
        "invalid bundle config",
    );
    // Unknown namespace type.
    let mut b = Bundle::new(&["true"]);
    b.config["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
    b.save();
    check(
        &[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("x"),
        ],
        "bogus",
    );
    // An id with a slash.
    let b = Bundle::new(&["true"]);
    check(
        &["create", "--bundle", b.path().to_str().unwrap(), "a/b"],
        "invalid container id",
    );
    // A program that does not exist.
    let b = Bundle::new(&["/no/such/program"]);
    check(
        &[
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("x"),
        ],
        "no such file or directory",
    );
    // An rlimit above the hard limit (root here lacks CAP_SYS_RESOURCE).
    let mut b = Bundle::new(&["true"]);
    b.config["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1u64 << 40, "soft": 1u64 << 40}]);
    b.save();
    let out = rt.run_args(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("x"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(err.contains("RLIMIT_NOFILE"), "{err}");
    }
    assert!(rt.ids().is_empty());
    // An id that exists.
    let b = Bundle::new(&["sleep", "30"]);
    let id = unique_id("dup");
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let out = rt.run_args(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(rt.ids(), vec![id.clone()]);
    rt.ok(&["delete", "--force", &id]);
    // Commands on a container that does not exist.
    let out = rt.run_args(&["state", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// On this kind of host, controllers not mounted as v1 hierarchies (hugetlb) show up in the
/// otherwise empty v2 hierarchy. crun refuses to run at all then; Berth runs, and only a
/// spec that asks for hugepage limits gets an error, which says why.
#[test]
fn hybrid_cgroup_layout_with_stray_v2_controllers_runs() {
    require_root!();
    let stray =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if stray.trim().is_empty() {
        eprintln!("skipped: this host has no controllers in its v2 hierarchy");
        return;
    }
    let (code, out, err) = run_sh("echo ran");
    assert_eq!((code, out.trim()), (0, "ran"), "{err}");
    if stray.contains("hugetlb") && !Path::new("/sys/fs/cgroup/hugetlb").exists() {
        let rt = Runtime::new();
        let mut b = Bundle::new(&["true"]);
        b.config["linux"]["resources"]["hugepageLimits"] =
            serde_json::json!([{"pageSize": "2MB", "limit": 2097152}]);
        b.save();
        let (code, _, err) = rt.run(&unique_id("huge"), &b);
        assert_eq!(code, 1);
        assert!(err.contains("hugetlb"), "{err}");
        assert!(rt.ids().is_empty());
    }
}

#[test]
fn readonly_root_masked_and_readonly_paths() {
    require_root!();
    let (code, out, err) = run_sh(
        "touch /x 2>&1 | grep -q Read-only && echo ro-root; \
         cat /proc/kcore 2>/dev/null | wc -c; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo ro-proc-sys",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["ro-root", "0", "ro-proc-sys"], "{out}");
}

#[test]
fn spec_features_and_cli_compatibility() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::berth())
        .args(["runtime", "spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    // A second spec refuses to overwrite.
    let out = std::process::Command::new(common::berth())
        .args(["runtime", "spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = std::process::Command::new(common::berth())
        .args(["runtime", "features"])
        .output()
        .unwrap();
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "user"));
    // Unknown flags are an error with status 1, as runc's.
    let out = std::process::Command::new(common::berth())
        .args(["runtime", "state", "--bogus", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Errors also go to --log as JSON lines (containerd reads them from there).
    let log = dir.path().join("log.json");
    let out = std::process::Command::new(common::berth())
        .args([
            "runtime",
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("does not exist"));
    // argv[0] berth-runc selects the runtime role.
    let link = dir.path().join("berth-runc");
    std::os::unix::fs::symlink(common::berth(), &link).unwrap();
    let out = std::process::Command::new(&link)
        .args(["--root", dir.path().to_str().unwrap(), "list", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn joining_namespaces_by_path() {
    require_root!();
    let rt = Runtime::new();
    let mut a = Bundle::new(&["sleep", "100"]);
    a.config["hostname"] = "shared-uts".into();
    a.save();
    let ida = unique_id("nsa");
    rt.create_start(&ida, &a);
    let pid = rt.state(&ida)["pid"].as_i64().unwrap();
    // B joins A's network, uts and pid namespaces by path (what `--network container:A`
    // and Kubernetes pods need).
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "hostname; readlink /proc/self/ns/net; cat /proc/1/comm",
    ]);
    b.config["hostname"] = serde_json::Value::Null;
    let nss = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    for ns in nss.iter_mut() {
        let (t, name) = match ns["type"].as_str().unwrap() {
            "network" => ("network", "net"),
            "uts" => ("uts", "uts"),
            "pid" => ("pid", "pid"),
            _ => continue,
        };
        *ns = serde_json::json!({"type": t, "path": format!("/proc/{pid}/ns/{name}")});
    }
    b.config.as_object_mut().unwrap().remove("hostname");
    b.save();
    let (code, out, err) = rt.run(&unique_id("nsb"), &b);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "shared-uts");
    assert_eq!(
        lines[1],
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(
        lines[2], "sleep",
        "pid 1 of the joined namespace is A's init"
    );
    rt.ok(&["delete", "--force", &ida]);
}

#[test]
fn time_namespace_offsets() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["cat", "/proc/uptime"]);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "time"}));
    b.config["linux"]["timeOffsets"] =
        serde_json::json!({"boottime": {"secs": 864000, "nanosecs": 0}});
    b.save();
    let (code, out, err) = rt.run(&unique_id("time"), &b);
    assert_eq!(code, 0, "{err}");
    let inside: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        inside - host > 863_000.0,
        "container uptime {inside}, host {host}"
    );
}

#[test]
fn update_changes_limits_of_a_running_container() {
    require_root!();
    let rt = Runtime::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique_id("update");
    rt.create_start(&id, &b);
    rt.ok(&["update", "--pids-limit", "42", "--memory", "67108864", &id]);
    let read = |ctl: &str, file: &str| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join("berth")
                .join(&id)
                .join(file),
        )
        .or_else(|_| {
            std::fs::read_to_string(Path::new("/sys/fs/cgroup/berth").join(&id).join(file))
        })
        .unwrap()
    };
    assert_eq!(read("pids", "pids.max").trim(), "42");
    let mem = read("memory", "memory.limit_in_bytes");
    assert_eq!(mem.trim(), "67108864");
    // Resources as JSON on stdin, as containerd sends them.
    let mut cmd = rt.cmd();
    cmd.args(["update", "--resources", "-", &id])
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"pids": {"limit": 7}}"#).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(read("pids", "pids.max").trim(), "7");
    // Stats see the container's processes.
    let ev: serde_json::Value =
        serde_json::from_str(rt.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn container_without_namespaces_chroots_and_starts() {
    require_root!();
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["sh", "-c", "echo ran > /out/flag"]);
    // No namespaces at all: no mount namespace, so no /proc inside; only chroot.
    b.config["linux"]["namespaces"] = serde_json::json!([]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.config["mounts"] = serde_json::json!([]);
    b.config["linux"]
        .as_object_mut()
        .unwrap()
        .remove("maskedPaths");
    b.config["linux"]
        .as_object_mut()
        .unwrap()
        .remove("readonlyPaths");
    b.config["root"]["readonly"] = false.into();
    b.save();
    std::fs::create_dir(b.rootfs().join("out")).unwrap();
    let id = unique_id("nons");
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(rt.state(&id)["status"], "created");
    rt.ok(&["start", &id]);
    assert!(wait_for(5, || b.rootfs().join("out/flag").exists()));
    assert!(wait_for(5, || rt.state(&id)["status"] == "stopped"));
    rt.ok(&["delete", &id]);
    drop(dir);
}

#[test]
fn rootfs_propagation_is_applied_to_the_root_mount() {
    require_root!();
    for (prop, want) in [
        ("unbindable", "unbindable"),
        ("private", ""),
        ("shared", "shared:"),
    ] {
        let rt = Runtime::new();
        let mut b = Bundle::new(&["awk", "$5 == \"/\"", "/proc/self/mountinfo"]);
        b.config["linux"]["rootfsPropagation"] = prop.into();
        b.save();
        let (code, out, err) = rt.run(&unique_id("prop"), &b);
        assert_eq!(code, 0, "{prop}: {err}");
        // Optional fields sit between the mount options and the " - " separator.
        let fields = out
            .split(" - ")
            .next()
            .unwrap()
            .split_whitespace()
            .skip(6)
            .collect::<Vec<_>>()
            .join(" ");
        if want.is_empty() {
            assert!(fields.is_empty(), "{prop}: {out}");
        } else {
            assert!(fields.contains(want), "{prop}: {out}");
        }
    }
}

/// SCMP_ACT_NOTIFY: the listener goes to the agent at listenerPath with the container's
/// state, and the agent's answers reach the container.
#[test]
fn seccomp_notify_hands_the_listener_to_the_agent() {
    require_root!();
    use std::os::unix::net::UnixListener;
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut b = Bundle::new(&["sh", "-c", "mkdir /dev/shm/d; echo rc=$?"]);
    b.config["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "listenerMetadata": "hello-agent",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.save();
    let id = unique_id("notify");
    let agent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 8192];
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &conn,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut anc,
            rustix::net::RecvFlags::empty(),
        )
        .unwrap();
        let mut fd = None;
        for m in anc.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = m {
                fd = fds.next();
            }
        }
        let msg: serde_json::Value = serde_json::from_slice(&buf[..got.bytes]).unwrap();
        let fd = fd.expect("a listener descriptor");
        use std::os::fd::AsRawFd;
        // Answer every notification with ENOSPC until the container is gone.
        let mut answered = 0;
        while let Ok(req) = libseccomp::ScmpNotifReq::receive(fd.as_raw_fd()) {
            let resp = libseccomp::ScmpNotifResp::new_error(
                req.id,
                -28,
                libseccomp::ScmpNotifRespFlags::empty(),
            );
            let _ = resp.respond(fd.as_raw_fd());
            answered += 1;
        }
        (msg, answered)
    });
    let (code, out, err) = rt.run(&id, &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "rc=1",
        "mkdir must fail with the agent's answer: {err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    let (msg, answered) = agent.join().unwrap();
    assert!(answered >= 1);
    assert_eq!(msg["fds"], serde_json::json!(["seccompFd"]));
    assert_eq!(msg["metadata"], "hello-agent");
    assert_eq!(msg["state"]["id"].as_str().unwrap(), id);
    assert!(msg["pid"].as_i64().unwrap() > 0);
}

#[test]
fn recursive_mount_attributes_reach_submounts() {
    require_root!();
    // A host directory with a mount below it, bound into the container with rro.
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(sub.clone());
    let rt = Runtime::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "touch /mnt/sub/x 2>/dev/null && echo writable || echo read-only",
    ]);
    b.config["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/mnt", "type": "bind", "source": host.path(), "options": ["rbind", "rro"]
    }));
    b.save();
    let (code, out, err) = rt.run(&unique_id("rro"), &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "read-only");
    assert!(!sub.join("x").exists());
}

#[test]
fn sysctls_are_set_before_proc_sys_turns_read_only() {
    require_root!();
    let rt = Runtime::new();
    let mut b = Bundle::new(&["cat", "/proc/sys/kernel/msgmax"]);
    b.config["linux"]["sysctl"] = serde_json::json!({"kernel.msgmax": "12345"});
    b.save();
    let (code, out, err) = rt.run(&unique_id("sysctl"), &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "12345");
}

#[test]
fn created_containers_delete_without_force() {
    require_root!();
    let rt = Runtime::new();
    let b = Bundle::new(&["true"]);
    let id = unique_id("delcreated");
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    rt.ok(&["delete", &id]);
    assert!(rt.ids().is_empty());
    assert!(wait_for(5, || common::process_gone(pid as i32)));
}

#[test]
fn process_extras_io_priority_personality_and_all_capabilities() {
    require_root!();
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["sh", "-c", "uname -m; grep CapEff /proc/self/status"]);
    b.config["process"]["ioPriority"] =
        serde_json::json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    b.config["linux"]["personality"] = serde_json::json!({"domain": "LINUX32"});
    // Every capability there is, whether this host's root holds it or not.
    let all: Vec<String> = (0..=40).filter_map(caps_name).collect();
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        b.config["process"]["capabilities"][set] = serde_json::json!(all);
    }
    // startContainer hooks see the process's environment when they have none of their own.
    b.config["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("HOOKVAR=from-process".into());
    b.config["hooks"] = serde_json::json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo $HOOKVAR > /out/hook"]}]});
    b.bind("/out", dir.path());
    b.save();
    let (code, out, err) = rt.run(&unique_id("extras"), &b);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "i686");
    let eff = u64::from_str_radix(lines[1].split_whitespace().nth(1).unwrap(), 16).unwrap();
    let held = u64::from_str_radix(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("CapEff"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap(),
        16,
    )
    .unwrap();
    assert_eq!(
        eff, held,
        "the container gets every capability the host's root holds"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hook"))
            .unwrap()
            .trim(),
        "from-process"
    );
}

fn caps_name(n: u32) -> Option<String> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES.get(n as usize).map(|s| format!("CAP_{s}"))
}

/// The binary defines the two maths functions its code uses (crates/berth/src/math.rs), so
/// no Berth process maps libm.so (~0.5 MiB resident in each, counted in every shim).
#[test]
fn the_binary_does_not_need_libm() {
    let out = std::process::Command::new("readelf")
        .args(["-d", common::berth()])
        .output()
        .expect("readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("libc.so"), "{dynamic}");
    assert!(!dynamic.contains("libm.so"), "{dynamic}");
}

/// build.rs hands crates/berth/text-order.txt to lld, so the functions the daemon and the
/// registry run lead .text (scripts/order-text.sh explains why): the binary's first functions by address are
/// nearly all in the file. (Not all: the linker moves whole sections, and a few functions,
/// such as crtbegin.o's, share one with a listed function; a debug build also lacks some
/// of the listed names.)
#[test]
fn the_daemons_functions_lead_the_text() {
    let order = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/text-order.txt"))
        .expect("crates/berth/text-order.txt");
    let listed: std::collections::HashSet<&str> = order.lines().collect();
    let out = std::process::Command::new("nm")
        .args(["-n", "--defined-only", common::berth()])
        .output()
        .expect("nm (binutils)");
    let symbols = String::from_utf8_lossy(&out.stdout);
    let first: Vec<&str> = symbols
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T").then_some(name)
        })
        .take(50)
        .collect();
    assert_eq!(first.len(), 50, "{symbols:.2000}");
    let stray: Vec<&&str> = first.iter().filter(|s| !listed.contains(**s)).collect();
    assert!(
        stray.len() <= 10,
        "functions ahead of the ordered ones: {stray:?}"
    );
}
