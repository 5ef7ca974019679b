//! The dashboard (`GET /ui`) in a real browser: headless Chromium (Debian's `chromium`
//! package; `make test` installs it) keeps one page open against a live local cluster while
//! the test drives the cluster, and reads the page's DOM through the DevTools protocol
//! (`--remote-debugging-pipe`: JSON messages on file descriptors 3 and 4, no WebSocket).
//!
//! Checked: before `/init` the page says how to configure the cluster; after it, the grid
//! shows every server and shard of A1 with the primaries `/status` names; data that looks like
//! markup (a row's String value in the WAL tail, an error text echoing a bad shard name) shows
//! as text and creates no element; after `kill -9` of a primary the page shows the new primary
//! and an election event within 3 s, and later the respawn and catch-up; a hung primary
//! (SIGSTOP) shows as down in the grid until it answers again; with NATS killed the page says
//! so and keeps the last metadata.
//!
//! Without a `chromium` on the PATH (or `CHROMIUM_BIN`) the test is skipped with a message,
//! unless `CI` is set: then it fails. With `DASHBOARD_SCREENSHOT=<path.png>` it also runs the
//! light load 40 s longer and saves a screenshot while a primary hangs (SIGSTOP) after the
//! kill: how `docs/dashboard.png` was made.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::{check, json, LocalCluster, Value};

/// From `kill -9` of a primary to the page showing its successor (the issue's bound).
const FAILOVER_ON_PAGE: Duration = Duration::from_secs(3);
/// For the page to catch up with something that already happened.
const PAGE: Duration = Duration::from_secs(15);
/// A killed server is respawned and catches up (manager back-off on a busy machine).
const RESPAWN: Duration = Duration::from_secs(90);
const MARKUP_ROW: &str = "<img src=x onerror=alert(1)>";
const MARKUP_SHARD: &str = "<b>x</b>";

/// `CHROMIUM_BIN`, else `chromium` on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A headless Chromium driven over the DevTools protocol on a pipe.
struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session, once a page is open.
    session: Option<String>,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: freshly created, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn launch(bin: &PathBuf, log: PathBuf) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("shardline-chromium-")
            .tempdir()
            .expect("chromium profile dir");
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (theirs_in, theirs_out) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-pipe",
            "--window-size=1400,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("chromium log"))
        .stderr(File::create(&log).expect("chromium log"));
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The
        // descriptors go to 3 (commands) and 4 (replies), as --remote-debugging-pipe expects;
        // first copied above 10 in case either already is 3 or 4.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(theirs_in, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(theirs_out, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((cmd_read, out_write));
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut from = BufReader::new(File::from(out_read));
            let mut buf = Vec::new();
            while matches!(from.read_until(0, &mut buf), Ok(n) if n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        Browser {
            child,
            commands: File::from(cmd_write),
            replies,
            next_id: 1,
            session: None,
            _profile: profile,
        }
    }

    /// Sends one DevTools command (to the page's session once open) and waits for its reply.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serialize");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("{method}: writing to chromium: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = tokio::task::block_in_place(|| self.replies.recv_timeout(left))
                .map_err(|e| format!("{method}: no reply from chromium: {e}"))?;
            if v["id"] != json!(id) {
                continue; // an event, or a reply to an earlier call that timed out
            }
            if !v["error"].is_null() {
                return Err(format!("{method}: {}", v["error"]));
            }
            return Ok(v["result"].clone());
        }
    }

    /// Opens `url` in a new page and attaches to it.
    fn open(&mut self, url: &str) {
        let target = self
            .call("Target.createTarget", json!({"url": url}))
            .expect("open page");
        let session = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .expect("attach to page");
        self.session = session["sessionId"].as_str().map(str::to_owned);
        assert!(self.session.is_some(), "no session: {session}");
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1100, "deviceScaleFactor": 1, "mobile": false}),
        )
        .expect("viewport");
    }

    /// Evaluates `expr` in the page; it must produce a JSON string.
    fn eval_json(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )?;
        if !r["exceptionDetails"].is_null() {
            return Err(format!("page threw: {}", r["exceptionDetails"]));
        }
        let s = r["result"]["value"]
            .as_str()
            .ok_or_else(|| format!("not a string: {r}"))?;
        serde_json::from_str(s).map_err(|e| format!("{e}: {s}"))
    }

    fn eval(&mut self, expr: &str) {
        self.call("Runtime.evaluate", json!({"expression": expr}))
            .expect("evaluate");
    }

    /// What the page shows, read from its DOM (text as the reader sees it).
    fn page(&mut self) -> Page {
        match self.eval_json(READ_PAGE) {
            Ok(v) => Page(v),
            Err(e) => Page(json!({"error": e})),
        }
    }

    fn screenshot(&mut self, path: &str) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .expect("screenshot");
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("dashboard: screenshot saved to {path}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session = None;
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's state as the test needs it, computed in the page.
const READ_PAGE: &str = r##"JSON.stringify((() => {
  const text = (n) => (n ? n.textContent : null);
  const banner = document.getElementById("banner");
  return {
    banner: banner.hidden ? null : text(banner),
    servers: [...document.querySelectorAll("#grid-head th.server .name")].map(text),
    shards: [...document.querySelectorAll("#grid-body tr")].map((tr) => ({
      id: text(tr.querySelector(".shard-id")),
      primary: text(tr.querySelector(".primary-name")),
      term: text(tr.querySelector(".term")),
      cells: [...tr.querySelectorAll("td.replica")].map((td) => ({
        server: td.dataset.server,
        role: td.dataset.role || null,
        text: td.textContent,
      })),
    })),
    events: [...document.querySelectorAll("#events li")].map((li) => ({
      kind: li.dataset.kind || null,
      text: text(li.querySelector(".text")),
    })),
    wal: [...document.querySelectorAll("#wal pre")].map(text),
    wal_status: text(document.getElementById("wal-status")),
    traffic: text(document.getElementById("traffic-summary")),
    img_elements: document.querySelectorAll("img").length,
    b_elements: document.querySelectorAll("b").length,
    html: document.documentElement.outerHTML,
  };
})())"##;

struct Page(Value);

impl Page {
    fn strings(&self, key: &str) -> Vec<String> {
        self.0[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn primary(&self, shard: &str) -> Option<String> {
        self.0["shards"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == shard)?["primary"]
            .as_str()
            .map(str::to_owned)
    }
    /// Role and text of `server`'s cell in `shard`'s row.
    fn cell(&self, shard: &str, server: &str) -> Option<(String, String)> {
        let row = self.0["shards"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == shard)?;
        let cell = row["cells"]
            .as_array()?
            .iter()
            .find(|c| c["server"] == server)?;
        Some((
            cell["role"].as_str().unwrap_or("").to_owned(),
            cell["text"].as_str().unwrap_or("").to_owned(),
        ))
    }
    fn has_event(&self, kind: &str, needles: &[&str]) -> bool {
        self.0["events"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                e["kind"] == kind
                    && e["text"]
                        .as_str()
                        .is_some_and(|t| needles.iter().all(|n| t.contains(n)))
            })
        })
    }
    fn html(&self) -> &str {
        self.0["html"].as_str().unwrap_or("")
    }
    /// Without the serialized DOM, for failure messages.
    fn brief(&self) -> String {
        let mut v = self.0.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("html");
        }
        format!("{v:#}")
    }
}

/// Polls the page until `ok` holds; panics with what the page showed after `timeout`.
async fn wait_page(
    b: &mut Browser,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Page) -> bool,
) -> (Page, Duration) {
    let start = Instant::now();
    loop {
        let page = b.page();
        if ok(&page) {
            return (page, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "the page did not show {what} within {timeout:?}; it shows:\n{}",
            page.brief()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::with_capacity(s.len() * 3 / 4), 0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Writes a row every 50 ms until aborted, so the traffic chart has something to draw.
fn light_load(c: &LocalCluster) -> tokio::task::JoinHandle<()> {
    let (client, url) = (c.client().clone(), c.gateway_url());
    tokio::spawn(async move {
        for i in 0u64.. {
            let key = 100 + (i * 997) % 16_000;
            let row = json!({"data": [{"Stud_id": key, "Stud_name": format!("load{i}"), "Stud_marks": i % 100}]});
            let _ = client.post(format!("{url}/write")).json(&row).send().await;
            if i % 4 == 0 {
                let q = json!({"Stud_id": {"low": key, "high": key}});
                let _ = client.post(format!("{url}/read")).json(&q).send().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_the_cluster_in_a_real_browser() {
    let Some(bin) = chromium() else {
        assert!(
            !in_ci(),
            "CI is set but chromium is missing: `make test` installs it (apt-get install chromium)"
        );
        eprintln!(
            "SKIPPED the_dashboard_follows_the_cluster_in_a_real_browser: no `chromium` on the \
             PATH (install Debian's chromium, or set CHROMIUM_BIN); under CI=true this fails"
        );
        return;
    };
    let mut c = LocalCluster::start().await;
    // `/` leads to the page.
    let (code, body) = c.get("/").await;
    assert_eq!(code, 200, "GET / (redirected): {body}");
    assert!(body
        .as_str()
        .is_some_and(|h| h.contains(r#"src="/ui/dashboard.js""#)));
    let mut b = Browser::launch(&bin, c.logs_dir().join("chromium.log"));
    b.open(&format!("{}/ui#wal=sh1", c.gateway_url()));

    // Not configured yet: the page says how to configure it.
    wait_page(&mut b, PAGE, "the /init hint", |p| {
        p.0["banner"]
            .as_str()
            .is_some_and(|t| t.contains("not configured") && t.contains("POST /init"))
    })
    .await;

    // A1: every server and shard in the grid, with the primaries /status names.
    let a1 = testkit::workload("a1");
    c.init(&a1).await;
    let st = check::status(&c).await.expect("/status");
    let servers: Vec<String> = a1["servers"].as_object().unwrap().keys().cloned().collect();
    let shards: Vec<String> = a1["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Shard_id"].as_str().unwrap().to_owned())
        .collect();
    let primaries: Vec<(String, String)> = shards
        .iter()
        .map(|s| (s.clone(), check::primary_of(&st, s).expect("a primary")))
        .collect();
    let (page, _) = wait_page(&mut b, PAGE, "every server and shard of A1", |p| {
        let ids: Vec<String> = p.0["shards"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        p.strings("servers") == servers
            && ids == shards
            && primaries
                .iter()
                .all(|(s, pr)| p.primary(s).as_ref() == Some(pr))
    })
    .await;
    assert!(page.0["banner"].is_null(), "{}", page.brief());

    // A String value that looks like markup, in the WAL tail: text, no element.
    let row = json!({"data": [{"Stud_id": 7, "Stud_name": MARKUP_ROW, "Stud_marks": 1}]});
    let (code, body) = c.post("/write", &row).await;
    assert_eq!(code, 200, "{body}");
    let (page, _) = wait_page(
        &mut b,
        PAGE,
        "the markup-looking row in sh1's WAL tail",
        |p| p.strings("wal").iter().any(|e| e.contains(MARKUP_ROW)),
    )
    .await;
    assert_eq!(page.0["img_elements"], 0, "a row value became an element");
    assert!(
        page.html().contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the row value is not escaped text in the DOM"
    );
    assert!(page
        .strings("wal")
        .iter()
        .any(|e| e.contains("Subject: wal.sh1")));
    // Each replica of sh1 shows its applied sequence and, once it applied the row, lag 0.
    let replicas = check::replicas_of(&st);
    let sh1 = replicas["sh1"].clone();
    wait_page(
        &mut b,
        PAGE,
        "sh1's replicas applied and not lagging",
        |p| {
            sh1.iter().all(|srv| {
                p.cell("sh1", srv)
                    .is_some_and(|(role, text)| !role.is_empty() && text.contains("· lag 0"))
            })
        },
    )
    .await;

    // An error text echoing a markup-looking shard name: text, no element.
    b.eval(&format!(
        "location.hash = '#wal=' + encodeURIComponent('{MARKUP_SHARD}')"
    ));
    let (page, _) = wait_page(&mut b, PAGE, "the 400 for a markup-looking shard", |p| {
        p.0["wal_status"]
            .as_str()
            .is_some_and(|t| t.contains("400") && t.contains("invalid") && t.contains(MARKUP_SHARD))
    })
    .await;
    assert_eq!(page.0["b_elements"], 0, "an error text became markup");
    assert!(page.html().contains("&lt;b&gt;x&lt;/b&gt;"));
    b.eval("location.hash = '#wal=sh1'");
    // The same validation without the page.
    check::failure(&c.get("/ui/api/wal/sh9").await, 404, "no shard sh9").unwrap();
    check::failure(&c.get("/ui/api/wal/sh1?n=0").await, 400, "n must be").unwrap();
    let (code, tail) = c.get("/ui/api/wal/sh1?n=1").await;
    assert_eq!(code, 200, "{tail}");
    assert_eq!(tail["messages"].as_array().map(Vec::len), Some(1), "{tail}");

    // Failover: kill -9 sh1's primary; the page shows the successor and the election.
    let load = light_load(&c);
    wait_page(&mut b, PAGE, "write traffic", |p| {
        p.0["traffic"]
            .as_str()
            .is_some_and(|t| !t.contains("writes –"))
    })
    .await;
    let old = check::primary_of(&check::status(&c).await.expect("/status"), "sh1").unwrap();
    c.kill_server(&old);
    let killed = Instant::now();
    let (page, _) = wait_page(
        &mut b,
        FAILOVER_ON_PAGE,
        "a new primary of sh1 and the election",
        |p| {
            p.primary("sh1").is_some_and(|n| n != old && n != "none")
                && p.has_event("election", &["sh1", &old])
                && p.has_event("down", &[&old])
        },
    )
    .await;
    let new = page.primary("sh1").unwrap();
    eprintln!(
        "dashboard: {old} killed; page showed {new} as sh1's primary and the election after {:?}",
        killed.elapsed()
    );
    assert!(
        page.has_event("election", &["sh1", &old, &new]),
        "{}",
        page.brief()
    );
    let st = check::status(&c).await.expect("/status");
    assert_eq!(check::primary_of(&st, "sh1").as_deref(), Some(new.as_str()));

    // The manager respawns the killed server; the page tells its way back.
    wait_page(&mut b, RESPAWN, "the respawn and catch-up", |p| {
        p.has_event("respawned", &[&old]) && p.has_event("caught_up", &[&old])
    })
    .await;

    // A primary that hangs (SIGSTOP) is not respawned: it stays down in the grid until it
    // answers again. The screenshot is taken in that state.
    if std::env::var_os("DASHBOARD_SCREENSHOT").is_some() {
        // Enough traffic for the chart to show a shape.
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    let st = check::status(&c).await.expect("/status");
    let hung = check::primary_of(&st, "sh2").unwrap();
    c.stop_server(&hung);
    let (page, _) = wait_page(
        &mut b,
        PAGE,
        "the hung primary down and sh2's successor",
        |p| {
            p.primary("sh2").is_some_and(|n| n != hung && n != "none")
                && p.cell("sh2", &hung).is_some_and(|(role, _)| role == "down")
                && p.has_event("election", &["sh2", &hung])
        },
    )
    .await;
    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        b.screenshot(&path);
    }
    let successor = page.primary("sh2").unwrap();
    c.cont_server(&hung);
    wait_page(&mut b, RESPAWN, "the hung server back", |p| {
        p.cell("sh2", &hung)
            .is_some_and(|(role, _)| role == "secondary")
            && (p.has_event("up", &[&hung]) || p.has_event("caught_up", &[&hung]))
            && p.primary("sh2").as_deref() == Some(successor.as_str())
    })
    .await;
    load.abort();

    // NATS gone: the page says so and keeps showing the last metadata it had.
    c.nats_mut().kill();
    wait_page(&mut b, PAGE, "that NATS is down", |p| {
        p.0["banner"]
            .as_str()
            .is_some_and(|t| t.contains("NATS is disconnected"))
            && p.strings("servers") == servers
    })
    .await;
}
