//! `shardline-bench --peers` end to end on a tiny scale (real PostgreSQL, real nats-server,
//! the debug binaries). Ignored: it needs PostgreSQL (scripts/install-postgres.sh) and
//! `cargo build --workspace --bins`; run with
//! `cargo test -p shardline-bench --test peers_smoke -- --ignored --test-threads 1`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bench(out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardline-bench"));
    c.args([
        "--peers",
        "--smoke",
        "--rounds",
        "1",
        "--peer-seconds",
        "1",
        "--bin-dir",
        "target/debug",
    ])
    .arg("--out")
    .arg(out);
    if let Ok(nats) = std::env::var("NATS_SERVER_BIN") {
        c.args(["--nats-bin", &nats]);
    }
    c
}

/// Temp dirs and live processes (by command line) of the bench run with this pid.
fn leftovers(pid: u32) -> Vec<String> {
    let tag = format!("shardline-peers-{pid}-");
    let mut found = Vec::new();
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&tag) {
            found.push(e.path().display().to_string());
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&tag) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
#[ignore = "needs PostgreSQL and the debug binaries"]
fn peers_table_with_ratios_and_nothing_left_behind() {
    let out = tempfile::tempdir().unwrap();
    let child = bench(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let res = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}\n{stdout}\n{}",
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    for needle in [
        "| PostgreSQL durable (fsync=on, synchronous_commit=on) |",
        "| shardline A1 durable |",
        "shardline A1 writes / PostgreSQL relaxed writes = ",
        "shardline A1 durable writes / PostgreSQL durable writes = ",
        "check: the write table holds all ",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("peers.json")).unwrap())
            .unwrap();
    for mode in ["durable", "relaxed"] {
        let pg = &v["postgresql"][mode];
        assert!(
            pg["write"]["throughput_per_s"].as_f64().unwrap() > 0.0,
            "{pg}"
        );
        assert!(
            pg["read"]["throughput_per_s"].as_f64().unwrap() > 0.0,
            "{pg}"
        );
        assert!(
            pg["read"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
            "{pg}"
        );
        assert!(
            pg["write"]["cpu_us_per_request"].as_f64().unwrap() > 0.0,
            "{pg}"
        );
    }
    assert_eq!(v["ratios"].as_array().unwrap().len(), 4, "{v}");
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

#[test]
#[ignore = "needs PostgreSQL and the debug binaries"]
fn ctrl_c_during_postgresql_stops_it_and_removes_its_dir() {
    let out = tempfile::tempdir().unwrap();
    let mut child = bench(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until a PostgreSQL server of this run is up (its postmaster's command line names
    // the temp dir), then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !leftovers(pid).iter().any(|l| l.contains("postgres")) {
        assert!(
            Instant::now() < deadline,
            "no PostgreSQL server within 60 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "bench exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "bench still running 60 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "interrupted run reported success");
    // The postmasters' children exit on their own once the postmaster is gone: bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leftovers(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}
