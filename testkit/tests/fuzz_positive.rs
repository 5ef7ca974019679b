//! Valid input is accepted: schemathesis generates only requests that `GET /openapi.json`
//! calls valid (`--mode positive`) and the check `positive_data_acceptance` fails on any
//! answer that refuses one (a 400, 413, 422…; 401, 404, 409 and 5xx count as accepted). So
//! the document must state every constraint the gateway enforces that JSON Schema can express
//! (integer ranges, name patterns, lengths, required and non-null fields). The few it cannot
//! (`low <= high`, /update's key equality, `2` rather than `2.0`, byte lengths) are listed in
//! docs/API.md and applied to the generated data by `tests/python/positive_hooks.py`, and
//! nothing else is.
//!
//! Bounded and reproducible like `fuzz.rs`: a fixed seed (`SHARDLINE_FUZZ_POSITIVE_SEED`,
//! default 7, the seed of issue 11), a number of examples per operation
//! (`SHARDLINE_FUZZ_POSITIVE_EXAMPLES`, default 25), no example database, one worker, a
//! deadline. The admin endpoints answer 401 (the token is set and not given), which counts as
//! accepted: their bodies are described but not exercised here.

use std::time::Duration;

use testkit::{json, python, ClusterOptions, LocalCluster, Value};

const TOKEN: &str = "fuzz-admin-token";
const DEADLINE: Duration = Duration::from_secs(240);

/// Four shards covering every key the document admits, `[i64::MIN, i64::MAX)`: a valid key
/// is never outside every shard.
fn wide_init() -> Value {
    let edges = [i64::MIN, -(1 << 32), 0, 1 << 32, i64::MAX];
    let shards: Vec<Value> = edges
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            json!({"Stud_id_low": w[0], "Shard_id": format!("sh{}", i + 1),
                   "Shard_size": (i128::from(w[1]) - i128::from(w[0])) as i64})
        })
        .collect();
    json!({
        "N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                   "dtypes": ["Number", "String", "Number"]},
        "shards": shards,
        "servers": {"Server0": ["sh1", "sh2", "sh3", "sh4"],
                    "Server1": ["sh1", "sh2", "sh3", "sh4"],
                    "Server2": ["sh1", "sh2", "sh3", "sh4"]},
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_valid_input_is_accepted() {
    let st = python::venv_bin("st");
    let hooks = testkit::workspace_root().join("tests/python/positive_hooks.py");
    assert!(hooks.is_file(), "{} is missing", hooks.display());
    let c = LocalCluster::start_with(ClusterOptions {
        env: vec![("SHARDLINE_ADMIN_TOKEN".into(), TOKEN.into())],
        ..Default::default()
    })
    .await;
    let resp = c
        .client()
        .post(format!("{}/init", c.gateway_url()))
        .bearer_auth(TOKEN)
        .json(&wide_init())
        .send()
        .await
        .expect("POST /init");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    c.wait_ready(Duration::from_secs(60)).await;

    let seed: u64 = env_or("SHARDLINE_FUZZ_POSITIVE_SEED", 7);
    let examples: u32 = env_or("SHARDLINE_FUZZ_POSITIVE_EXAMPLES", 25);
    let report = c.data_dir().join("schemathesis-positive");
    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("run")
        .arg(format!("{}/openapi.json", c.gateway_url()))
        .args(["--mode", "positive"])
        .args(["--seed", &seed.to_string()])
        .args(["--max-examples", &examples.to_string()])
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--checks", "positive_data_acceptance,not_a_server_error"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .current_dir(c.data_dir())
        .kill_on_drop(true);
    println!("running {cmd:?}");
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {DEADLINE:?}"))
        .expect("cannot run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout
        .lines()
        .find(|l| l.contains("generated,"))
        .unwrap_or("(no summary line)")
        .trim()
        .to_owned();
    println!("schemathesis: {summary} (seed {seed}, {examples} examples per operation)");
    assert!(
        out.status.success(),
        "the gateway refused input its /openapi.json calls valid ({summary}); see the output \
         above and {}",
        report.display(),
    );
    assert!(
        summary.contains("passed") && !summary.contains("failed"),
        "{summary}"
    );
}
