//! The project-local Python virtualenv (`.venv`, made by `make venv` from
//! `tests/python/requirements.txt`) holding schemathesis and nats-py, for the tests that drive
//! the cluster with third-party clients.

use std::path::PathBuf;

use crate::workspace_root;

/// `<venv>/bin/<name>`, where the venv is `$SHARDLINE_VENV` or `<workspace>/.venv`. Panics
/// with the command that creates it when it is missing: these tests are part of `make test`,
/// and skipping them silently would hide that they did not run.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("SHARDLINE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} not found: run `make venv` (creates {} with tests/python/requirements.txt)",
        bin.display(),
        venv.display()
    );
    bin
}
