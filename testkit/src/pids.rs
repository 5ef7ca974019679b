//! Signals and `/proc`: pids of processes that are not our children (shard servers, started
//! by the manager), whether they live, and what their command line says.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Sends `sig` to `pid`; true if the signal was delivered.
pub fn signal(pid: i32, sig: i32) -> bool {
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ..."; comm may contain spaces/parens, so split at the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn cmdline(pid: i32) -> Option<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

/// SIGKILLs `pid` (and its process group when it leads one), then waits briefly for it to
/// disappear. Used for processes that are not our children (shard servers).
pub fn kill_foreign(pid: i32) {
    if pid <= 0 || pid == std::process::id() as i32 {
        return;
    }
    if unsafe { libc::getpgid(pid) } == pid {
        signal(-pid, libc::SIGKILL);
    }
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(3);
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// True if `pid` is alive and its command line contains `needle` (guards against signalling
/// a pid the system has reused for something else).
pub fn cmdline_contains(pid: i32, needle: &str) -> bool {
    cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// The shard servers of a manager run with `--data-dir <servers_dir>`: `(name, pid)` from
/// each `<servers_dir>/<name>/server.pid`, sorted by name, keeping only pids whose command
/// line still names a shard-server or `servers_dir`.
pub fn shard_server_pids(servers_dir: &Path) -> Vec<(String, i32)> {
    let dir = servers_dir.display().to_string();
    let mut out: Vec<(String, i32)> = fs::read_dir(servers_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = read_pid_file(&e.path().join("server.pid"))?;
            let name = e.file_name().into_string().ok()?;
            let ours = cmdline(pid).is_some_and(|c| c.contains("shard-server") || c.contains(&dir));
            ours.then_some((name, pid))
        })
        .collect();
    out.sort();
    out
}

/// Every live process but this one whose command line contains `needle` (e.g. a data dir:
/// a shard server whose pid file is not written yet).
pub fn pids_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && cmdline_contains(pid, needle))
        .collect()
}
