//! Where things are: the workspace, the nats-server binary, the workspace's own binaries,
//! the workload `/init` bodies, and free loopback ports.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

pub(crate) fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The `nats-server` binary: `$NATS_SERVER_BIN`, else `<workspace>/.tools/bin/nats-server`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = env_path("NATS_SERVER_BIN") {
        assert!(
            p.is_file(),
            "NATS_SERVER_BIN={} does not exist; run `scripts/install-nats.sh`",
            p.display()
        );
        return p;
    }
    let p = workspace_root().join(".tools/bin/nats-server");
    assert!(
        p.is_file(),
        "nats-server not found at {}: run `scripts/install-nats.sh` (or `make test`), \
         or set NATS_SERVER_BIN",
        p.display()
    );
    p
}

/// A workspace binary: `<workspace>/target/debug/<name>` (or `$CARGO_TARGET_DIR/debug`, or
/// `$SHARDLINE_BIN_DIR/<name>`). Panics if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let dir = env_path("SHARDLINE_BIN_DIR").unwrap_or_else(|| {
        env_path("CARGO_TARGET_DIR")
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    workspace_root().join(t)
                }
            })
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("debug")
    });
    bin_in(&dir, name).unwrap_or_else(|e| {
        panic!("{e}: run `cargo build --workspace` first (or set SHARDLINE_BIN_DIR)")
    })
}

/// `<dir>/<name>` if that binary exists, else what is missing.
pub fn bin_in(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("binary `{name}` not found at {}", p.display()))
    }
}

/// A path given on a command line: as it is when absolute or present in the current
/// directory, else relative to the workspace (so defaults such as `target/release` work
/// from any directory).
pub fn resolve(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let ws = workspace_root().join(p);
    if ws.exists() {
        ws
    } else {
        p.to_path_buf()
    }
}

/// `<workspace>/workloads/<name>.init.json`, parsed (e.g. `workload("a1")`).
pub fn workload(name: &str) -> Value {
    let p = workspace_root()
        .join("workloads")
        .join(format!("{name}.init.json"));
    let text = fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read workload {}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("workload {} is not valid JSON: {e}", p.display()))
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
