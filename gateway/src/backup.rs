//! `GET /backup` and `POST /restore` (admin token, like `/init`).
//!
//! A backup is a tar stream ([`shardline::backup`]): `backup.json`, then one SQLite file per
//! shard. For each shard the gateway reads the stream's last sequence when the backup starts,
//! waits for a replica that has applied at least that far (a secondary if one has, else the
//! primary), asks it for `GET /snapshot/{shard}` and pipes the file into the answer chunk by
//! chunk, with a tar header sized from the snapshot's `content-length`: every write
//! acknowledged before the backup started is in it, and the gateway holds no shard in memory.
//!
//! A restore streams the archive it is given to the manager's `POST /restore`, which checks
//! it whole before anything is created.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use shardline::backup::{self, Manifest, ShardBackup};
use shardline::internal::Heartbeat;
use shardline::meta::{ClusterMeta, ShardMeta};
use shardline::names::ServerName;
use shardline::wal::now_ms;
use shardline::{ApiError, Seq, Term};
use tokio::time::Instant;

use crate::admin;
use crate::router::AppState;
use crate::status::last_seq;
use crate::topology::Topology;

/// How long a backup waits for some replica of a shard to have applied the log as far as it
/// reached when the backup started.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// A snapshot download that receives nothing for this long (while the gateway waits for it:
/// a slow client is not counted) fails. Making the snapshot file counts too.
const SNAPSHOT_SILENCE: Duration = Duration::from_secs(120);
/// How long the rest of a refused restore body is read and dropped.
const DRAIN: Duration = Duration::from_secs(60);
/// Between two rounds over a shard's replicas.
const POLL: Duration = Duration::from_millis(50);

pub async fn backup(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = admin::authorize(state.config.admin_token.as_deref(), &headers) {
        return e.into_response();
    }
    match start(&state).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A shard's snapshot answer, its headers read, its body not yet.
struct Source {
    shard: ShardBackup,
    body: reqwest::Response,
}

async fn start(state: &AppState) -> Result<Response, ApiError> {
    let created_ms = now_ms();
    let topology = state.topology.borrow().clone();
    let meta = match &*topology {
        Topology::Unconfigured => {
            return Err(ApiError::BadRequest(
                "the cluster is not configured: nothing to back up".into(),
            ))
        }
        t => t.routing()?.meta.clone(),
    };
    // A frozen shard's replicas may not agree on its history (README "Log faults").
    if let Some(s) = meta.shards.iter().find(|s| s.fault.is_some()) {
        return Err(ApiError::Unavailable(format!(
            "shard {} is frozen by a log fault ({}); back up once it is recovered",
            s.id,
            s.fault.as_deref().unwrap_or_default()
        )));
    }
    // Where each log ends now: every write acknowledged before this point is at or below it.
    let lasts = futures::future::join_all(
        meta.shards
            .iter()
            .map(|s| last_seq(&state.jetstream, &s.id)),
    )
    .await;
    // No overall timeout: a big shard streams for as long as the client takes it; a server
    // that stops sending for SNAPSHOT_SILENCE breaks the archive off.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(SNAPSHOT_SILENCE)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ApiError::Internal(format!("HTTP client: {e}")))?;
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let sources = futures::future::try_join_all(meta.shards.iter().zip(lasts).map(|(s, last)| {
        let (http, meta) = (&http, &meta);
        async move {
            let last = last.ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "shard {}: cannot read the end of its log from NATS; nothing was backed up",
                    s.id
                ))
            })?;
            snapshot_of(http, meta, s, last, deadline).await
        }
    }))
    .await?;
    let manifest = Manifest {
        format: backup::FORMAT.into(),
        version: backup::VERSION,
        created_ms,
        schema: meta.schema.spec(),
        shards: sources.iter().map(|s| s.shard.clone()).collect(),
        servers: meta
            .servers
            .iter()
            .map(|(n, m)| (n.clone(), m.shards.clone()))
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ApiError::Internal(format!("backup.json: {e}")))?;
    for s in &manifest.shards {
        tracing::info!(shard = %s.id, seq = %s.seq, term = %s.term, log_last_seq = %s.log_last_seq,
            source = %s.source, bytes = s.bytes, "backing up shard");
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(write_archive(tx, json, sources, created_ms / 1000));
    let mut resp = Body::from_stream(rx).into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(backup::CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"shardline-backup-{created_ms}.tar\""
    )) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// A snapshot of `shard` consistent with a sequence at least `last`, from an up replica:
/// secondaries first (the primary has the writes to serve), the primary last.
async fn snapshot_of(
    http: &reqwest::Client,
    meta: &ClusterMeta,
    shard: &ShardMeta,
    last: Seq,
    deadline: Instant,
) -> Result<Source, ApiError> {
    let id = shard.id.as_str();
    let candidates = candidates(meta, shard);
    let mut why = format!("shard {id}: no replica is up");
    for _round in 0..(CATCH_UP_WAIT.as_millis() / POLL.as_millis()) {
        for (name, addr) in &candidates {
            match try_replica(http, shard, name, addr, last).await {
                Ok(Some(source)) => return Ok(source),
                Ok(None) => why = format!("{name} has not applied up to {last} yet"),
                Err(e) => why = format!("{name}: {e}"),
            }
        }
        if Instant::now() + POLL > deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Err(ApiError::Unavailable(format!(
        "shard {id}: no replica could give a snapshot including sequence {last} within {}s \
         (last: {why}); nothing was backed up",
        CATCH_UP_WAIT.as_secs()
    )))
}

/// The up replicas of `shard` that a snapshot may come from, in the order they are asked:
/// secondaries (by name) first, the primary last.
fn candidates<'m>(meta: &'m ClusterMeta, shard: &'m ShardMeta) -> Vec<(&'m ServerName, &'m str)> {
    let mut c: Vec<(&'m ServerName, &'m str)> = meta
        .replicas(shard.id.as_str())
        .filter_map(|n| {
            let m = &meta.servers[n];
            (m.health == shardline::meta::Health::Up).then_some((n, m.addr.as_str()))
        })
        .collect();
    c.sort_by_key(|(n, _)| Some(*n) == shard.primary.as_ref());
    c
}

/// Whether `beat` is `name`'s and says its replica of `shard` is not recovering and has
/// applied the log at least up to `last`: then its snapshot holds every write acknowledged
/// before `last` was read.
fn caught_up(beat: &Heartbeat, name: &ServerName, shard: &ShardMeta, last: Seq) -> bool {
    beat.server == *name
        && beat
            .shards
            .get(&shard.id)
            .is_some_and(|p| !p.recovering && p.applied >= last)
}

/// The snapshot answer of `name` when it has applied at least `last`; `None` when it has not
/// yet.
async fn try_replica(
    http: &reqwest::Client,
    shard: &ShardMeta,
    name: &ServerName,
    addr: &str,
    last: Seq,
) -> Result<Option<Source>, String> {
    let beat: Heartbeat = http
        .get(format!("http://{addr}/heartbeat"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("heartbeat: {e}"))?
        .json()
        .await
        .map_err(|e| format!("heartbeat: {e}"))?;
    if !caught_up(&beat, name, shard, last) {
        return Ok(None);
    }
    let resp = http
        .get(format!("http://{addr}/snapshot/{}", shard.id))
        .send()
        .await
        .map_err(|e| format!("snapshot: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("snapshot answered {status}: {text}"));
    }
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (Some(seq), Some(term)) = (header("shardline-seq"), header("shardline-term")) else {
        return Err("snapshot answer lacks shardline-seq/shardline-term".into());
    };
    let Some(bytes) = resp.content_length() else {
        return Err("snapshot answer has no content-length".into());
    };
    if Seq(seq) < last {
        return Ok(None);
    }
    Ok(Some(Source {
        shard: ShardBackup {
            id: shard.id.clone(),
            low: shard.low,
            size: shard.size,
            primary: shard.primary.clone(),
            seq: Seq(seq),
            term: Term(term),
            log_last_seq: last,
            source: name.clone(),
            file: backup::shard_file(&shard.id),
            bytes,
        },
        body: resp,
    }))
}

/// Writes the archive into `tx`: the manifest, each shard's file as it arrives, the end. A
/// snapshot that breaks off or is not of its announced size ends the stream with an error,
/// so the client sees a truncated archive (which a restore refuses), never a wrong one.
async fn write_archive(
    mut tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    manifest: Vec<u8>,
    sources: Vec<Source>,
    mtime: u64,
) {
    let started = std::time::Instant::now();
    let result: Result<u64, String> = async {
        let mut total = 0u64;
        let mut put = |b: Bytes| {
            total += b.len() as u64;
            let mut tx = tx.clone();
            async move {
                tx.send(Ok(b))
                    .await
                    .map_err(|_| "the client went away".to_string())
            }
        };
        put(Bytes::copy_from_slice(&backup::header(
            backup::MANIFEST,
            manifest.len() as u64,
            mtime,
        )?))
        .await?;
        let pad = backup::padding(manifest.len() as u64);
        put(Bytes::from(manifest)).await?;
        put(Bytes::from(vec![0u8; pad])).await?;
        for mut s in sources {
            let size = s.shard.bytes;
            put(Bytes::copy_from_slice(&backup::header(
                &s.shard.file,
                size,
                mtime,
            )?))
            .await?;
            let mut got = 0u64;
            loop {
                let chunk = (s.body.chunk().await)
                    .map_err(|e| format!("shard {}: snapshot broke off: {e}", s.shard.id))?;
                let Some(chunk) = chunk else { break };
                got += chunk.len() as u64;
                if got > size {
                    break;
                }
                put(chunk).await?;
            }
            if got != size {
                return Err(format!(
                    "shard {}: snapshot has {got} bytes, announced {size}",
                    s.shard.id
                ));
            }
            put(Bytes::from(vec![0u8; backup::padding(size)])).await?;
        }
        put(Bytes::from_static(&backup::END)).await?;
        Ok(total)
    }
    .await;
    match result {
        Ok(total) => tracing::info!(
            bytes = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup sent"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "backup aborted");
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
    }
}

pub async fn restore(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = admin::authorize(state.config.admin_token.as_deref(), &headers) {
        drain(body).await;
        return e.into_response();
    }
    let configured = matches!(&*state.topology.borrow().clone(), Topology::Configured(_));
    if configured {
        drain(body).await;
        return ApiError::Conflict(
            "the cluster is already configured: a backup is restored into a new cluster".into(),
        )
        .into_response();
    }
    match forward_restore(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Reads what the client sends of a refused archive (for at most [`DRAIN`]) and drops it: a
/// client still writing its body when the answer comes would otherwise see the connection
/// break (a broken pipe) instead of the answer.
async fn drain(body: Body) {
    let mut data = body.into_data_stream();
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(Ok(_)) = futures::StreamExt::next(&mut data).await {}
    })
    .await;
}

/// Streams the archive to the manager's `POST /restore` and passes its answer on.
async fn forward_restore(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let url = format!("{}/restore", state.config.manager_url.trim_end_matches('/'));
    let uri: Uri = url
        .parse()
        .map_err(|e| ApiError::Internal(format!("manager url {url}: {e}")))?;
    let mut req = Request::post(uri).header(CONTENT_TYPE, backup::CONTENT_TYPE);
    if let Some(auth) = headers.get(AUTHORIZATION) {
        req = req.header(AUTHORIZATION, auth);
    }
    let req = req
        .body(body)
        .map_err(|e| ApiError::Internal(format!("restore request: {e}")))?;
    let client: LegacyClient<_, Body> = LegacyClient::builder(TokioExecutor::new()).build_http();
    let unreachable = |e: String| {
        ApiError::Unavailable(format!(
            "manager at {} did not answer the restore: {e}",
            state.config.manager_url
        ))
    };
    let timeout = Duration::from_millis(state.config.admin_timeout_ms);
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| unreachable("timed out; the restore may still complete".into()))?
        .map_err(|e| unreachable(crate::upstream::chain(&e)))?;
    let status = resp.status();
    let bytes = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok(admin::passthrough(
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        &bytes,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shardline::internal::ReplicaProgress;
    use shardline::meta::{Health, ServerMeta};
    use shardline::names::ShardId;
    use shardline::schema::{Schema, SchemaSpec};

    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    fn shard() -> ShardMeta {
        ShardMeta {
            id: ShardId::parse("sh1").unwrap(),
            low: 0,
            size: 10,
            primary: Some(name("S0")),
            term: Term(2),
            fault: None,
            log_id: None,
        }
    }

    fn beat(server: &str, applied: u64, recovering: bool) -> Heartbeat {
        Heartbeat {
            server: name(server),
            shards: [(
                ShardId::parse("sh1").unwrap(),
                ReplicaProgress {
                    applied: Seq(applied),
                    term: Term(2),
                    recovering,
                    stale_ms: None,
                    stalled_ms: None,
                    fault: None,
                    log_id: None,
                },
            )]
            .into(),
            nats_connected: true,
        }
    }

    #[test]
    fn only_a_replica_that_applied_the_log_end_is_caught_up() {
        let (s, last) = (shard(), Seq(57));
        assert!(caught_up(&beat("S1", 57, false), &name("S1"), &s, last));
        assert!(caught_up(&beat("S1", 60, false), &name("S1"), &s, last));
        assert!(!caught_up(&beat("S1", 56, false), &name("S1"), &s, last));
        assert!(!caught_up(&beat("S1", 57, true), &name("S1"), &s, last));
        // Another server now answers at that address.
        assert!(!caught_up(&beat("S9", 57, false), &name("S1"), &s, last));
    }

    #[test]
    fn secondaries_are_asked_before_the_primary_and_down_replicas_never() {
        let sh1 = ShardId::parse("sh1").unwrap();
        let server = |addr: &str, health| ServerMeta {
            addr: addr.into(),
            shards: vec![sh1.clone()],
            health,
            applied: BTreeMap::new(),
        };
        let meta = ClusterMeta {
            schema: Schema::parse(&SchemaSpec {
                columns: vec!["Stud_id".into()],
                dtypes: vec!["Number".into()],
            })
            .unwrap(),
            shards: vec![shard()],
            servers: [
                (name("S0"), server("a:0", Health::Up)),
                (name("S1"), server("a:1", Health::Down)),
                (name("S2"), server("a:2", Health::Up)),
                (name("S3"), server("a:3", Health::Recovering)),
                (name("S4"), server("a:4", Health::Up)),
            ]
            .into(),
        };
        let sh = shard();
        let order: Vec<&str> = candidates(&meta, &sh)
            .into_iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(order, ["S2", "S4", "S0"]);
    }
}
