//! [`LocalCluster`]'s shard servers: children of the manager, not of the test, so they are
//! found by their pid files (and by `/proc` command lines naming the cluster's data dir).

use std::fs;

use super::LocalCluster;
use crate::pids::{pid_alive, pids_naming, read_pid_file, shard_server_pids, signal};

impl LocalCluster {
    /// The pid in `<data_dir>/servers/<name>/server.pid`, if that file exists.
    pub fn server_pid(&self, name: &str) -> Option<i32> {
        read_pid_file(&self.servers_dir().join(name).join("server.pid"))
    }

    /// Names of the server dirs under `servers/` that have a pid file, sorted.
    pub fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.servers_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("server.pid").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    fn live_server_pid(&self, name: &str) -> i32 {
        let pid = self.server_pid(name).unwrap_or_else(|| {
            panic!(
                "no pid file for server {name} under {}",
                self.servers_dir().display()
            )
        });
        assert!(pid_alive(pid), "server {name} (pid {pid}) is not running");
        pid
    }

    /// SIGKILLs shard server `name` (by its pid file); returns the pid.
    pub fn kill_server(&self, name: &str) -> i32 {
        let pid = self.live_server_pid(name);
        signal(pid, libc::SIGKILL);
        pid
    }
    /// SIGSTOPs shard server `name`; returns the pid.
    pub fn stop_server(&self, name: &str) -> i32 {
        let pid = self.live_server_pid(name);
        signal(pid, libc::SIGSTOP);
        pid
    }
    /// SIGCONTs shard server `name`; returns the pid.
    pub fn cont_server(&self, name: &str) -> i32 {
        let pid = self.live_server_pid(name);
        signal(pid, libc::SIGCONT);
        pid
    }

    /// Every live process that belongs to this cluster's shard servers: pids from the pid
    /// files (when their command line is a shard-server), plus any process whose command
    /// line names this cluster's data dir (a server whose pid file is not written yet).
    pub(super) fn server_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = shard_server_pids(&self.servers_dir())
            .into_iter()
            .map(|(_, pid)| pid)
            .chain(pids_naming(&self.data_dir().display().to_string()))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}
