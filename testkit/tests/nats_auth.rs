//! NATS credentials end to end, against a real nats-server that requires them: with a user
//! and password, and with a token, the whole cluster works (init, shard servers spawned by
//! the manager, writes, reads through the gateway); clients without or with wrong
//! credentials are refused; unusable combinations stop a binary at start-up with a clear
//! error; secrets never reach a log or a shard server's command line.

use std::fs;
use std::time::Duration;

use async_nats::ConnectErrorKind;
use testkit::{bin, json, wait_for, ClusterOptions, LocalCluster, NatsCreds, Proc, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// A password with characters a URL or a config file would choke on.
const PASSWORD: &str = "s3cret pa:ss@w#rd/1";
const TOKEN: &str = "t0ken-with:odd@chars#1";

/// The password or the token: what must never be printed.
fn secret(creds: &NatsCreds) -> &str {
    match creds {
        NatsCreds::UserPassword { password, .. } => password,
        NatsCreds::Token(t) => t,
    }
}

fn rows(keys: &[u64]) -> Value {
    let data: Vec<Value> = keys
        .iter()
        .map(|k| json!({"Stud_id": k, "Stud_name": format!("n{k}"), "Stud_marks": k % 100}))
        .collect();
    json!({ "data": data })
}

/// Writes one row to each shard of a1 (keys `offset`, `4096 + offset`, ...), then polls
/// reads through the gateway until those rows are seen.
async fn write_and_read(c: &LocalCluster, offset: u64) {
    let keys: Vec<u64> = (0..4).map(|shard| shard * 4096 + offset).collect();
    let (status, body) = c.post("/write", rows(&keys)).await;
    assert_eq!(status, 200, "write through the gateway: {body}");
    wait_for(
        DEADLINE,
        "the rows read back through the gateway",
        || async {
            let (status, body) = c
                .post("/read", json!({"Stud_id": {"low": 0, "high": 16383}}))
                .await;
            let read: Vec<u64> = (body["data"].as_array().into_iter().flatten())
                .filter_map(|r| r["Stud_id"].as_u64())
                .collect();
            status == 200 && keys.iter().all(|k| read.contains(k))
        },
    )
    .await;
}

/// Every shard server the manager spawned runs with the credentials in its environment
/// (the manager got them as flags, so they cannot have been inherited) and not on its
/// command line, and reached NATS.
fn check_servers(c: &LocalCluster, creds: &NatsCreds) {
    let names = c.server_names();
    assert_eq!(names.len(), 6, "servers: {names:?}");
    for name in names {
        let pid = c.server_pid(&name).expect("pid file");
        let environ = fs::read(format!("/proc/{pid}/environ")).expect("read environ");
        let environ: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        for (k, v) in creds.env() {
            assert!(
                environ.contains(&format!("{k}={v}")),
                "server {name} lacks {k} in its environment"
            );
        }
        let cmdline = String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap())
            .replace('\0', " ");
        let secret = secret(creds);
        assert!(!cmdline.contains(secret), "secret on {name}'s command line");
        let log = c.servers_dir().join(&name).join("server.log");
        let log = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            log.contains("connected to NATS"),
            "server {name} log:\n{log}"
        );
        assert!(!log.contains(secret), "secret in {name}'s log");
    }
}

/// A client without credentials, and one with the wrong ones, are refused by the server.
async fn assert_refused(c: &LocalCluster, wrong: NatsCreds) {
    let url = c.nats().url();
    let err = async_nats::connect(url.as_str())
        .await
        .expect_err("a client without credentials must be refused");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    let err = wrong
        .apply(async_nats::ConnectOptions::new())
        .connect(url.as_str())
        .await
        .expect_err("a client with wrong credentials must be refused");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}

/// A gateway given wrong credentials keeps serving /healthz but never reaches NATS: it logs
/// the refusal and is never ready.
async fn gateway_with_wrong_creds_is_refused(c: &LocalCluster, wrong: &NatsCreds) {
    let mut gw = Proc::builder("gateway-wrong-creds", bin("gateway"))
        .args(["--listen", "127.0.0.1:0", "--nats-url", &c.nats().url()])
        .args(["--manager-url", &c.manager_url()])
        .envs(wrong.env())
        .env("RUST_LOG", "info")
        .spawn();
    let addr = gw.listening(DEADLINE).await;
    wait_for(DEADLINE, "the gateway to log the refused credentials", || {
        let log = fs::read_to_string(gw.log_path()).unwrap_or_default();
        async move { log.contains("authorization violation") && log.contains("SHARDLINE_NATS_") }
    })
    .await;
    let (status, body) = c
        .request(testkit::Method::GET, &format!("http://{addr}/readyz"), None)
        .await;
    assert_eq!(status, 503, "a gateway without NATS is not ready: {body}");
    let log = fs::read_to_string(gw.log_path()).unwrap_or_default();
    assert!(
        !log.contains(secret(wrong)),
        "secret in the gateway log:\n{log}"
    );
    assert!(
        gw.is_running(),
        "refused credentials must not crash the gateway"
    );
}

async fn cluster_with(creds: NatsCreds) -> LocalCluster {
    LocalCluster::start_with(ClusterOptions {
        nats_auth: Some(creds),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn user_password_cluster_end_to_end() {
    let creds = NatsCreds::user_password("shardline", PASSWORD);
    let c = cluster_with(creds.clone()).await;
    // /init spawns the six servers and waits until they caught up: each read its shard's
    // stream through an authenticated connection.
    c.init(testkit::workload("a1")).await;
    write_and_read(&c, 1).await;
    check_servers(&c, &creds);

    // A server killed and respawned by the manager gets the credentials again.
    let victim = "Server2";
    let old = c.kill_server(victim);
    wait_for(DEADLINE, "Server2 respawned and up", || async {
        let respawned = c
            .server_pid(victim)
            .is_some_and(|p| p != old && testkit::pid_alive(p));
        respawned
            && testkit::check::status(&c)
                .await
                .is_ok_and(|s| s["health"][victim] == "up")
    })
    .await;
    check_servers(&c, &creds);
    write_and_read(&c, 2).await;

    assert_refused(
        &c,
        NatsCreds::user_password("shardline", "wrong-password-42"),
    )
    .await;
    gateway_with_wrong_creds_is_refused(
        &c,
        &NatsCreds::user_password("shardline", "wrong-password-42"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_cluster_end_to_end() {
    let creds = NatsCreds::token(TOKEN);
    let c = cluster_with(creds.clone()).await;
    c.init(testkit::workload("a1")).await;
    write_and_read(&c, 1).await;
    check_servers(&c, &creds);

    assert_refused(&c, NatsCreds::token("wrong-token-42")).await;
    // A user and password are no substitute for the token.
    assert_refused(&c, NatsCreds::user_password("shardline", TOKEN)).await;
    gateway_with_wrong_creds_is_refused(&c, &NatsCreds::token("wrong-token-42")).await;
}

/// Credentials that cannot work stop every binary at once, with a message naming the
/// variables, and without printing the secret.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_credentials_stop_at_startup() {
    let data = tempfile::tempdir().expect("temp dir");
    let data = data.path().display().to_string();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("SHARDLINE_NATS_USER", "u"),
                ("SHARDLINE_NATS_PASSWORD", PASSWORD),
                ("SHARDLINE_NATS_TOKEN", TOKEN),
            ],
            "both a user (SHARDLINE_NATS_USER / --nats-user) and a token",
        ),
        (
            &[("SHARDLINE_NATS_USER", "u")],
            "a user (SHARDLINE_NATS_USER / --nats-user) is set without a password",
        ),
        (
            &[("SHARDLINE_NATS_PASSWORD", PASSWORD)],
            "a password (SHARDLINE_NATS_PASSWORD / --nats-password) is set without a user",
        ),
    ];
    for (env, message) in cases {
        for (name, args) in [
            ("gateway", vec!["--listen", "127.0.0.1:0"]),
            (
                "manager",
                vec!["--listen", "127.0.0.1:0", "--data-dir", &data],
            ),
            (
                "shard-server",
                vec!["--name", "Server0", "--data-dir", &data],
            ),
        ] {
            let mut p = Proc::builder(name, bin(name))
                .args(args)
                // Nothing listens there: the binary must stop before trying.
                .args(["--nats-url", "nats://127.0.0.1:1"])
                .envs(env.iter().copied())
                .env("RUST_BACKTRACE", "0")
                .spawn();
            let status = p
                .wait_exit(DEADLINE)
                .unwrap_or_else(|| panic!("{name} with {env:?} kept running"));
            assert!(
                !status.success(),
                "{name} with {env:?} exited with {status}"
            );
            let log = fs::read_to_string(p.log_path()).unwrap_or_default();
            assert!(
                log.contains(message),
                "{name} with {env:?}: no `{message}` in\n{log}"
            );
            assert!(
                !log.contains(PASSWORD) && !log.contains(TOKEN),
                "{name} printed a secret:\n{log}"
            );
            assert!(p.stdout_lines().is_empty(), "{name} started listening");
        }
    }
}
