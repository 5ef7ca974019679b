//! The short soak (`shardline-bench --soak`, see `make soak`) on the debug binaries: about a
//! minute of updates over a fixed key set on A1 with a margin of 50 entries, a server killed
//! and another released from the WAL floor and re-seeded; the soak itself checks values,
//! replicas and the plateau of stream bytes, SQLite bytes and RSS, and prints PASS or FAIL.

use std::process::Command;
use std::time::Instant;

use testkit::{bin, nats_server_bin, workspace_root};

#[test]
fn short_soak_plateaus_and_keeps_every_acknowledged_write() {
    let bench = bin("shardline-bench");
    let bin_dir = bench.parent().unwrap().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let run = Command::new(&bench)
        .current_dir(workspace_root())
        .args([
            "--soak",
            "--soak-secs",
            "60",
            "--soak-keys",
            "1000",
            "--soak-clients",
            "8",
        ])
        .args([
            "--soak-retain",
            "50",
            "--soak-hold-max",
            "300",
            "--soak-trim-ms",
            "1000",
        ])
        .args(["--soak-sample-ms", "1000"])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--nats-bin")
        .arg(nats_server_bin())
        .arg("--out")
        .arg(out.path())
        .env_remove("SOAK_SECS")
        .output()
        .expect("run shardline-bench --soak");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    println!("short soak took {:?}", started.elapsed());
    assert!(
        run.status.success() && stdout.contains("soak: PASS"),
        "the soak failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    for f in [
        "soak.csv",
        "soak-stream.svg",
        "soak-sqlite.svg",
        "soak-rss.svg",
    ] {
        assert!(out.path().join(f).is_file(), "{f} not written");
    }
}
