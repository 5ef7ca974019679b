//! The Docker engine as the tests use it: `docker` and compose commands, whether Docker
//! tests can run here, removing a project's leftovers, and the lock that runs Docker tests
//! one at a time across test processes.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The images the compose file uses (tag `latest`, as `make images` builds them).
pub const IMAGES: [&str; 4] = [
    "shardline-nats:latest",
    "shardline-shard-server:latest",
    "shardline-manager:latest",
    "shardline-gateway:latest",
];
/// Label on everything a project creates.
pub const LABEL_PROJECT: &str = "io.shardline.project";
/// How long a test waits for the lock held by another Docker test.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// Runs `docker <args>`; returns its output (never panics).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run docker: {e}").into_bytes(),
        })
}

pub(super) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `docker-compose` (v1) or `docker compose` (v2), whichever works.
pub(super) fn compose_cmd() -> Option<Vec<String>> {
    let ok = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else if ok("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else {
        None
    }
}

/// Why Docker tests cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
    if !info.status.success() {
        return Some(format!(
            "no Docker engine reachable (`docker info` failed: {})",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    if compose_cmd().is_none() {
        return Some("neither `docker-compose` nor `docker compose` is available".into());
    }
    let missing: Vec<&str> = IMAGES
        .iter()
        .copied()
        .filter(|i| !docker(&["image", "inspect", i]).status.success())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "images not built: {} (run `make images`)",
            missing.join(", ")
        ));
    }
    None
}

/// Removes every container (the manager's first), volume and network labelled
/// `io.shardline.project=<project>`.
pub fn remove_project(project: &str) {
    let label = format!("label={LABEL_PROJECT}={project}");
    let manager = stdout(&docker(&[
        "ps",
        "-aq",
        "--filter",
        &label,
        "--filter",
        "label=com.docker.compose.service=manager",
    ]));
    for (what, list, rm) in [
        ("manager", manager, vec!["rm", "-f"]),
        ("containers", String::new(), vec!["rm", "-f", "-v"]),
        ("volumes", String::new(), vec!["volume", "rm", "-f"]),
        ("networks", String::new(), vec!["network", "rm"]),
    ] {
        let list = match what {
            "containers" => stdout(&docker(&["ps", "-aq", "--filter", &label])),
            "volumes" => stdout(&docker(&["volume", "ls", "-q", "--filter", &label])),
            "networks" => stdout(&docker(&["network", "ls", "-q", "--filter", &label])),
            _ => list,
        };
        if !list.is_empty() {
            let mut args = rm;
            args.extend(list.lines());
            let _ = docker(&args);
        }
    }
}

/// Removes what earlier test runs left behind when they were killed before their `Drop`
/// (projects `sltest<pid>x<n>` whose process is gone).
pub(super) fn sweep_stale_projects() {
    let mut projects = BTreeSet::new();
    for kind in [["ps", "-a"], ["volume", "ls"], ["network", "ls"]] {
        let fmt = format!("{{{{.Label \"{LABEL_PROJECT}\"}}}}");
        let mut args = kind.to_vec();
        args.extend(["--filter", "label=io.shardline.project", "--format", &fmt]);
        projects.extend(stdout(&docker(&args)).lines().map(str::to_string));
    }
    for p in projects {
        let pid = p
            .strip_prefix("sltest")
            .and_then(|r| r.split('x').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        if let Some(pid) = pid {
            if !crate::pid_alive(pid) {
                eprintln!("docker test: removing leftovers of project {p} (pid {pid} is gone)");
                remove_project(&p);
            }
        }
    }
}

/// Serializes Docker tests across test processes (flock).
pub(super) struct Lock(#[allow(dead_code)] File);

pub(super) fn lock() -> Lock {
    let path = std::env::temp_dir().join("shardline-docker-tests.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Lock(f);
        }
        assert!(
            Instant::now() < deadline,
            "another Docker test held {} for {LOCK_TIMEOUT:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
