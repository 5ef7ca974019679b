//! `POST /restore`: a new cluster from an archive of `GET /backup` ([`shardline::backup`]).
//!
//! 1. The whole archive is read and checked before anything is created: `backup.json` first
//!    (format, version, the layout as `/init` checks it), then every `shards/<id>.sqlite`,
//!    written to a staging directory under `--servers-dir` as it arrives and checked with
//!    SQLite (integrity, the `records` columns are the schema's, `replica_state` holds the
//!    position `backup.json` gives). Anything wrong: 400 naming it, nothing created.
//! 2. Each shard's stream is created empty and purged up to the snapshot's sequence, so it
//!    continues at `seq + 1` (JetStream keeps a purged stream's numbering: first sequence
//!    `seq + 1`, last `seq`), and the first entry there is the marker of term
//!    `snapshot term + 1`, above every term the snapshot has seen.
//! 3. The backup's servers are started, each receives the snapshot of each of its shards
//!    (`PUT /snapshot/{shard}`, streamed from the staged file; the server installs it when it
//!    opens the shard), then the metadata is written and the servers are brought up as by
//!    `/init`: each replica resumes at the snapshot's position and applies the marker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use shardline::backup::{self, Manifest};
use shardline::internal::Done;
use shardline::meta::ClusterMeta;
use shardline::names::{ServerName, ShardId};
use shardline::{ApiError, Term};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::control_plane::ControlPlane;
use crate::ops::placement::{assign_primaries, resolve_names};
use crate::runtime::Runtime;

/// How long the rest of a refused archive is read (and dropped) so that the client gets the
/// answer instead of a broken connection.
const DRAIN: Duration = Duration::from_secs(60);

/// A checked archive: its manifest and where each shard's file was staged.
struct Staged {
    manifest: Manifest,
    files: BTreeMap<ShardId, PathBuf>,
}

/// The staging directory, removed with everything in it when dropped.
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl<R: Runtime> ControlPlane<R> {
    pub async fn restore(&self, body: Body) -> Result<Done, ApiError> {
        let mut reader = StreamReader::new(TryStreamExt::map_err(body.into_data_stream(), |e| {
            std::io::Error::other(e.to_string())
        }));
        let _admin = self.admin.lock().await;
        if let Err(e) = self.check_unconfigured().await {
            drain(&mut reader).await;
            return Err(e);
        }
        let dir = StagingDir(
            self.settings
                .staging_dir
                .join(format!(".restore-{}", uuid::Uuid::new_v4())),
        );
        tokio::fs::create_dir_all(&dir.0)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", dir.0.display())))?;
        let staged = match read_archive(&mut reader, &dir.0).await {
            Ok(s) => s,
            Err(e) => {
                drain(&mut reader).await;
                return Err(e);
            }
        };
        // Whatever follows the end (tar pads archives to whole records with zeros).
        drain(&mut reader).await;
        drop(reader);
        let checked = {
            let (m, f) = (staged.manifest.clone(), staged.files.clone());
            tokio::task::spawn_blocking(move || check_files(&m, &f))
                .await
                .map_err(|e| ApiError::Internal(format!("file check panicked: {e}")))?
        };
        checked.map_err(ApiError::BadRequest)?;
        self.create_from(&staged).await
    }

    async fn check_unconfigured(&self) -> Result<(), ApiError> {
        if self.meta.fresh().await?.is_some() {
            return Err(ApiError::Conflict(
                "the cluster is already configured: a backup is restored into a new cluster".into(),
            ));
        }
        Ok(())
    }

    /// Steps 2 and 3 of the module comment, from a checked archive.
    async fn create_from(&self, staged: &Staged) -> Result<Done, ApiError> {
        let m = &staged.manifest;
        let plan = m.validate().map_err(ApiError::BadRequest)?;
        let servers = resolve_names(&plan.servers, &BTreeSet::new());
        let mut shards = plan.shards;
        assign_primaries(&mut shards, &servers, &BTreeMap::new());
        for s in &mut shards {
            let b = m
                .shard(s.id.as_str())
                .expect("checked: every shard is in the manifest");
            // The backup's primary again when it holds the shard (it always does, unless the
            // metadata was between an election and its placement).
            if let Some(p) = &b.primary {
                if servers.get(p).is_some_and(|sh| sh.contains(&s.id)) {
                    s.primary = Some(p.clone());
                }
            }
            s.term = Term(b.term.get() + 1);
        }
        // Streams, servers and snapshots; undone if any step fails (nothing is in the
        // metadata yet, so the restore can be retried as it was).
        let mut spawned = BTreeMap::new();
        let prepared: Result<(), ApiError> = async {
            for s in &shards {
                let b = m.shard(s.id.as_str()).expect("checked");
                self.wal.reset_stream(&s.id).await?;
                self.wal.continue_after(&s.id, b.seq).await?;
                let at = self.wal.append_marker_after(s, b.seq).await?;
                tracing::info!(shard = %s.id, seq = %at, term = %s.term, "restored stream continues after the snapshot");
            }
            spawned = self.spawn_all(&servers).await?;
            self.send_snapshots(&servers, &spawned, &staged.files).await
        }
        .await;
        if let Err(e) = prepared {
            for name in spawned.keys() {
                let _ = self.runtime.remove(name).await;
            }
            for s in &shards {
                self.wal.delete_stream(&s.id).await;
            }
            return Err(e);
        }
        let addrs = spawned;
        let mut meta = ClusterMeta {
            schema: plan.schema,
            shards: shards.clone(),
            servers: BTreeMap::new(),
        };
        meta.sort_shards();
        self.configure_new_cluster(&mut meta, &servers, &addrs)
            .await?;
        tracing::info!(
            servers = servers.len(),
            shards = shards.len(),
            created_ms = m.created_ms,
            "cluster restored from a backup"
        );
        Ok(Done::new(format!(
            "Restored {} shards on {} servers from the backup of {}",
            shards.len(),
            servers.len(),
            m.created_ms
        )))
    }

    /// Every server gets the staged snapshot of each of its shards.
    async fn send_snapshots(
        &self,
        servers: &BTreeMap<ServerName, Vec<ShardId>>,
        addrs: &BTreeMap<ServerName, String>,
        files: &BTreeMap<ShardId, PathBuf>,
    ) -> Result<(), ApiError> {
        let client: LegacyClient<_, UploadBody> =
            LegacyClient::builder(TokioExecutor::new()).build_http();
        let sends = servers.iter().flat_map(|(name, shards)| {
            let client = &client;
            shards.iter().map(move |shard| async move {
                upload(client, &addrs[name], shard, &files[shard])
                    .await
                    .map_err(|e| format!("{name}: shard {shard}: {e}"))
            })
        });
        let failed: Vec<String> = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Unavailable(format!(
                "could not hand the snapshots to the servers ({}); nothing was configured",
                failed.join("; ")
            )))
        }
    }
}

type UploadBody =
    StreamBody<futures::stream::MapOk<ReaderStream<tokio::fs::File>, fn(Bytes) -> Frame<Bytes>>>;

/// `PUT /snapshot/{shard}` on the server at `addr`, the body streamed from `file`.
async fn upload(
    client: &LegacyClient<hyper_util::client::legacy::connect::HttpConnector, UploadBody>,
    addr: &str,
    shard: &ShardId,
    file: &Path,
) -> Result<(), String> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let len = f.metadata().await.map_err(|e| e.to_string())?.len();
    let frames: fn(Bytes) -> Frame<Bytes> = Frame::data;
    let body = StreamBody::new(ReaderStream::with_capacity(f, 64 * 1024).map_ok(frames));
    let req = hyper::Request::put(format!("http://{addr}/snapshot/{shard}"))
        .header(hyper::header::CONTENT_TYPE, "application/vnd.sqlite3")
        .header(hyper::header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(600), client.request(req))
        .await
        .map_err(|_| "no answer within 600 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => e.to_string(),
    };
    Err(format!("the server answered {status}: {text}"))
}

/// Reads the archive: `backup.json`, every shard's file into `dir`, the end. Every problem
/// is a 400 naming it.
async fn read_archive<Rd: AsyncRead + Unpin>(r: &mut Rd, dir: &Path) -> Result<Staged, ApiError> {
    let bad = ApiError::BadRequest;
    let first = next_entry(r)
        .await?
        .ok_or_else(|| bad("the archive is empty".into()))?;
    if first.path != backup::MANIFEST {
        return Err(bad(format!(
            "the archive starts with {:?}, not {}: not a shardline backup",
            first.path,
            backup::MANIFEST
        )));
    }
    if first.size > backup::MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "{} is {} bytes, more than the {} accepted",
            backup::MANIFEST,
            first.size,
            backup::MAX_MANIFEST_BYTES
        )));
    }
    let mut json = vec![0u8; first.size as usize];
    read_full(r, &mut json, backup::MANIFEST).await?;
    skip_padding(r, first.size).await?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| bad(format!("{} is not a valid manifest: {e}", backup::MANIFEST)))?;
    manifest.validate().map_err(bad)?;
    let mut files = BTreeMap::new();
    while let Some(entry) = next_entry(r).await? {
        let shard = manifest
            .shards
            .iter()
            .find(|s| s.file == entry.path)
            .ok_or_else(|| {
                bad(format!(
                    "unexpected archive entry {:?}: {} names no such shard file",
                    entry.path,
                    backup::MANIFEST
                ))
            })?;
        if files.contains_key(&shard.id) {
            return Err(bad(format!(
                "{:?} appears twice in the archive",
                entry.path
            )));
        }
        if entry.size != shard.bytes {
            return Err(bad(format!(
                "{:?} is {} bytes but {} says {}",
                entry.path,
                entry.size,
                backup::MANIFEST,
                shard.bytes
            )));
        }
        let path = dir.join(format!("{}.sqlite", shard.id));
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", path.display())))?;
        let copied = tokio::io::copy(&mut r.take(entry.size), &mut out)
            .await
            .map_err(|e| bad(format!("reading {:?}: {e}", entry.path)))?;
        if copied != entry.size {
            return Err(bad(format!(
                "the archive ends inside {:?} ({copied} of {} bytes): truncated",
                entry.path, entry.size
            )));
        }
        out.flush()
            .await
            .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))?;
        skip_padding(r, entry.size).await?;
        files.insert(shard.id.clone(), path);
    }
    // The second zero block of the end.
    let mut block = [0u8; backup::BLOCK];
    read_full(r, &mut block, "the end of the archive").await?;
    if let Some(missing) = manifest.shards.iter().find(|s| !files.contains_key(&s.id)) {
        return Err(bad(format!(
            "the archive has no {} although {} lists shard {}",
            missing.file,
            backup::MANIFEST,
            missing.id
        )));
    }
    Ok(Staged { manifest, files })
}

async fn next_entry<Rd: AsyncRead + Unpin>(r: &mut Rd) -> Result<Option<backup::Entry>, ApiError> {
    let mut block = [0u8; backup::BLOCK];
    read_full(r, &mut block, "a tar header").await?;
    backup::parse_header(&block).map_err(ApiError::BadRequest)
}

async fn skip_padding<Rd: AsyncRead + Unpin>(r: &mut Rd, size: u64) -> Result<(), ApiError> {
    let mut pad = vec![0u8; backup::padding(size)];
    read_full(r, &mut pad, "padding").await
}

async fn read_full<Rd: AsyncRead + Unpin>(
    r: &mut Rd,
    buf: &mut [u8],
    what: &str,
) -> Result<(), ApiError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ApiError::BadRequest(
            format!("the archive ends early, in {what}: truncated"),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the archive could not be read ({what}): {e}"
        ))),
    }
}

/// Reads a refused body to its end (for at most [`DRAIN`]), so that the sender gets the
/// answer rather than a broken connection.
pub async fn drain_body(body: Body) {
    let mut r = StreamReader::new(TryStreamExt::map_err(body.into_data_stream(), |e| {
        std::io::Error::other(e.to_string())
    }));
    drain(&mut r).await;
}

/// Reads what is left of a refused body, for at most [`DRAIN`].
async fn drain<Rd: AsyncRead + Unpin>(r: &mut Rd) {
    let _ = tokio::time::timeout(DRAIN, tokio::io::copy(r, &mut tokio::io::sink())).await;
}

/// Each staged file is a sound SQLite database with the schema's `records` columns and the
/// position `backup.json` gives.
fn check_files(m: &Manifest, files: &BTreeMap<ShardId, PathBuf>) -> Result<(), String> {
    use rusqlite::{Connection, OpenFlags};
    for s in &m.shards {
        let path = &files[&s.id];
        let what = |e: rusqlite::Error| format!("{}: not a usable SQLite database: {e}", s.file);
        // A URI (for `immutable=1`: no lock, no -wal or -shm made beside the staged file).
        let escaped = path
            .display()
            .to_string()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23");
        let uri = format!("file:{escaped}?immutable=1");
        let conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(what)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(what)?;
        if check != "ok" {
            return Err(format!("{}: corrupted: {check}", s.file));
        }
        let mut cols = conn
            .prepare("SELECT name FROM pragma_table_info('records') ORDER BY cid")
            .map_err(what)?;
        let cols: Vec<String> = cols
            .query_map([], |r| r.get(0))
            .map_err(what)?
            .collect::<rusqlite::Result<_>>()
            .map_err(what)?;
        if cols != m.schema.columns {
            return Err(format!(
                "{}: its records columns {cols:?} are not the schema's {:?}",
                s.file, m.schema.columns
            ));
        }
        let (seq, term): (i64, i64) = conn
            .query_row(
                "SELECT applied_seq, term FROM replica_state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(what)?;
        if seq as u64 != s.seq.get() || term as u64 != s.term.get() {
            return Err(format!(
                "{}: holds position seq {seq} term {term}, but {} says seq {} term {}",
                s.file,
                backup::MANIFEST,
                s.seq,
                s.term
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(bytes: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": backup::FORMAT, "version": backup::VERSION, "created_ms": 1,
            "schema": {"columns": ["Stud_id", "Stud_name"], "dtypes": ["Number", "String"]},
            "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 10, "primary": "S0",
                        "seq": 5, "term": 1, "log_last_seq": 5, "source": "S0",
                        "file": "shards/sh1.sqlite", "bytes": bytes}],
            "servers": {"S0": ["sh1"]}
        }))
        .unwrap()
    }

    fn entry(out: &mut Vec<u8>, path: &str, body: &[u8]) {
        out.extend_from_slice(&backup::header(path, body.len() as u64, 0).unwrap());
        out.extend_from_slice(body);
        out.extend(std::iter::repeat_n(0u8, backup::padding(body.len() as u64)));
    }

    /// An archive of the given entries, ended properly.
    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, b) in entries {
            entry(&mut out, p, b);
        }
        out.extend_from_slice(&backup::END);
        out
    }

    async fn read(bytes: Vec<u8>) -> Result<BTreeMap<ShardId, Vec<u8>>, String> {
        let dir = std::env::temp_dir().join(format!("restore-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let _cleanup = StagingDir(dir.clone());
        let staged = read_archive(&mut &bytes[..], &dir)
            .await
            .map_err(|e| e.message())?;
        Ok(staged
            .files
            .iter()
            .map(|(k, p)| (k.clone(), std::fs::read(p).unwrap()))
            .collect())
    }

    #[tokio::test]
    async fn a_whole_archive_is_staged() {
        let file = vec![7u8; 1000];
        let m = manifest(1000);
        let got = read(archive(&[
            ("backup.json", &m),
            ("shards/sh1.sqlite", &file),
        ]))
        .await
        .unwrap();
        assert_eq!(got[&ShardId::parse("sh1").unwrap()], file);
    }

    #[tokio::test]
    async fn every_broken_archive_is_refused_naming_the_problem() {
        let file = vec![7u8; 1000];
        let m = manifest(1000);
        let whole = archive(&[("backup.json", &m), ("shards/sh1.sqlite", &file)]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "ends early"),
            (archive(&[]), "empty"),
            (
                archive(&[("shards/sh1.sqlite", &file), ("backup.json", &m)]),
                "starts with \"shards/sh1.sqlite\"",
            ),
            (
                archive(&[("backup.json", b"{nope")]),
                "not a valid manifest",
            ),
            (archive(&[("backup.json", &m)]), "has no shards/sh1.sqlite"),
            (
                archive(&[("backup.json", &m), ("shards/sh1.sqlite", &file[..999])]),
                "999 bytes but backup.json says 1000",
            ),
            (
                archive(&[
                    ("backup.json", &m),
                    ("shards/sh1.sqlite", &file),
                    ("shards/sh1.sqlite", &file),
                ]),
                "appears twice",
            ),
            (
                archive(&[("backup.json", &m), ("shards/sh9.sqlite", &file)]),
                "unexpected archive entry \"shards/sh9.sqlite\"",
            ),
            (whole[..512 + 512 + 512 + 700].to_vec(), "truncated"),
            (whole[..whole.len() - 512].to_vec(), "truncated"),
        ];
        for (bytes, needle) in cases {
            let e = read(bytes).await.unwrap_err();
            assert!(e.contains(needle), "{e:?} does not say {needle:?}");
        }
    }
}
