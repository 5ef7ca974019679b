//! The cluster backup archive (`GET /backup` writes it, `POST /restore` reads it): a POSIX
//! tar stream (ustar headers, 512-byte blocks) holding, in this order,
//!
//! - `backup.json`: the [`Manifest`] (format name and version, creation time, schema, shards
//!   with their ranges and the log position each snapshot is consistent with, the server
//!   layout);
//! - `shards/<id>.sqlite`, one per shard: a complete SQLite database of one replica of the
//!   shard (tables `records` and `replica_state`), consistent with the shard's `seq`/`term`;
//! - the two zero blocks that end a tar archive.
//!
//! `tar tvf backup.tar` lists it and `tar xf` unpacks it; the headers are written and parsed
//! here (only regular files, names up to 100 bytes) so that both sides stream: the gateway
//! never holds a whole shard in memory, the manager writes each shard file to disk as it
//! arrives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{InitPlan, InitRequest, ShardSpec};
use crate::names::{ServerName, ShardId};
use crate::schema::SchemaSpec;
use crate::{Seq, Term};

/// `format` of every manifest.
pub const FORMAT: &str = "shardline-backup";
/// The manifest version this build writes and reads.
pub const VERSION: u32 = 1;
/// The first entry of every archive.
pub const MANIFEST: &str = "backup.json";
/// Largest `backup.json` a restore accepts.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// A tar block.
pub const BLOCK: usize = 512;
/// The content type of the archive.
pub const CONTENT_TYPE: &str = "application/x-tar";

/// `backup.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build.
    pub version: u32,
    /// When the backup started, in ms since the Unix epoch.
    pub created_ms: u64,
    pub schema: SchemaSpec,
    pub shards: Vec<ShardBackup>,
    /// The server layout: which shards each server held.
    pub servers: BTreeMap<ServerName, Vec<ShardId>>,
}

/// One shard of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardBackup {
    #[serde(rename = "Shard_id")]
    pub id: ShardId,
    #[serde(rename = "Stud_id_low")]
    pub low: i64,
    #[serde(rename = "Shard_size")]
    pub size: i64,
    /// The shard's primary when the backup started.
    pub primary: Option<ServerName>,
    /// The log position the snapshot is consistent with (what its `replica_state` holds).
    pub seq: Seq,
    pub term: Term,
    /// The stream's last sequence when the backup started; `seq` is at least this.
    pub log_last_seq: Seq,
    /// The server the snapshot was taken from.
    pub source: ServerName,
    /// The archive entry holding the snapshot, [`shard_file`].
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The archive path of a shard's snapshot.
pub fn shard_file(shard: &ShardId) -> String {
    format!("shards/{shard}.sqlite")
}

impl Manifest {
    /// Checks the format and version, then the layout as `/init` would: a [`InitPlan`] whose
    /// shards and servers are those of the backup. The message names what is wrong.
    pub fn validate(&self) -> Result<InitPlan, String> {
        if self.format != FORMAT {
            return Err(format!(
                "{MANIFEST}: format is {:?}, not {FORMAT:?}: not a shardline backup",
                self.format
            ));
        }
        if self.version != VERSION {
            return Err(format!(
                "{MANIFEST}: unknown version {} (this build reads version {VERSION})",
                self.version
            ));
        }
        for s in &self.shards {
            if s.file != shard_file(&s.id) {
                return Err(format!(
                    "{MANIFEST}: shard {} has file {:?}, expected {:?}",
                    s.id,
                    s.file,
                    shard_file(&s.id)
                ));
            }
            if s.seq < s.log_last_seq {
                return Err(format!(
                    "{MANIFEST}: shard {}: snapshot seq {} is below the log's last sequence {} at backup time",
                    s.id, s.seq, s.log_last_seq
                ));
            }
        }
        let init = InitRequest {
            n: self.servers.len() as u64,
            schema: self.schema.clone(),
            shards: self
                .shards
                .iter()
                .map(|s| ShardSpec {
                    low: s.low,
                    id: s.id.clone(),
                    size: s.size,
                })
                .collect(),
            servers: self
                .servers
                .iter()
                .map(|(n, sh)| (n.to_string(), sh.clone()))
                .collect(),
        };
        init.validate()
            .map_err(|e| format!("{MANIFEST}: {}", e.message()))
    }

    pub fn shard(&self, id: &str) -> Option<&ShardBackup> {
        self.shards.iter().find(|s| s.id.as_str() == id)
    }
}

/// The ustar header of a regular file `path` of `size` bytes (mode 0644, owner 0).
pub fn header(path: &str, size: u64, mtime_s: u64) -> Result<[u8; BLOCK], String> {
    let mut h = [0u8; BLOCK];
    if path.is_empty() || path.len() > 100 {
        return Err(format!("archive path {path:?} must be 1 to 100 bytes"));
    }
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size >= 1 << 33 {
        // 11 octal digits: sizes up to 8 GiB.
        return Err(format!(
            "{path}: {size} bytes is over the 8 GiB a ustar entry holds"
        ));
    }
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime_s);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    octal(&mut h[148..155], sum as u64);
    h[155] = b' ';
    Ok(h)
}

/// Zero bytes after an entry of `size` bytes, up to the next block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0u8; 2 * BLOCK];

/// An entry's header as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
}

/// Parses one header block: `Ok(None)` for a zero block (the end of the archive), an error
/// naming what is wrong for anything that is not a regular file's ustar header.
pub fn parse_header(h: &[u8; BLOCK]) -> Result<Option<Entry>, String> {
    if h.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if &h[257..262] != b"ustar" {
        return Err("not a tar archive (no ustar header)".into());
    }
    let stored = parse_octal(&h[148..156]).ok_or("tar header: bad checksum field")?;
    let mut copy = *h;
    copy[148..156].copy_from_slice(b"        ");
    let sum: u64 = copy.iter().map(|b| *b as u64).sum();
    if sum != stored {
        return Err("tar header: checksum mismatch (corrupted archive)".into());
    }
    let name = c_str(&h[..100])?;
    let prefix = c_str(&h[345..500])?;
    let path = if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    };
    if !matches!(h[156], b'0' | 0) {
        return Err(format!(
            "tar entry {path:?}: only regular files are expected (type {:?})",
            h[156] as char
        ));
    }
    let size = parse_octal(&h[124..136]).ok_or_else(|| format!("tar entry {path:?}: bad size"))?;
    Ok(Some(Entry { path, size }))
}

fn octal(field: &mut [u8], v: u64) {
    // Digits filling all but the last byte, which stays NUL.
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn c_str(field: &[u8]) -> Result<String, String> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).map_err(|_| "tar header: name is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = header("shards/sh1.sqlite", 1234, 1_700_000_000).unwrap();
        let e = parse_header(&h).unwrap().unwrap();
        assert_eq!(
            e,
            Entry {
                path: "shards/sh1.sqlite".into(),
                size: 1234
            }
        );
        assert_eq!(parse_header(&[0u8; BLOCK]).unwrap(), None);
        assert_eq!(padding(1234), 512 * 3 - 1234);
        assert_eq!(padding(1024), 0);
    }

    #[test]
    fn corrupt_headers_are_refused() {
        let mut h = header("backup.json", 10, 0).unwrap();
        h[0] = b'x';
        assert!(parse_header(&h).unwrap_err().contains("checksum"));
        let mut g = [1u8; BLOCK];
        g[257] = b'x';
        assert!(parse_header(&g).unwrap_err().contains("not a tar"));
        assert!(header(&"x".repeat(101), 1, 0).is_err());
    }

    /// The system's `tar` reads what we write (skipped where there is none).
    #[test]
    fn system_tar_lists_the_archive() {
        let dir = std::env::temp_dir().join(format!("shardline-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.tar");
        let mut out = Vec::new();
        for (name, body) in [
            ("backup.json", &b"{}"[..]),
            ("shards/sh1.sqlite", &[7u8; 700]),
        ] {
            out.extend_from_slice(&header(name, body.len() as u64, 0).unwrap());
            out.extend_from_slice(body);
            out.extend(std::iter::repeat_n(0u8, padding(body.len() as u64)));
        }
        out.extend_from_slice(&END);
        std::fs::write(&path, &out).unwrap();
        let Ok(listed) = std::process::Command::new("tar")
            .arg("tf")
            .arg(&path)
            .output()
        else {
            eprintln!("no tar command: skipped");
            return;
        };
        let _ = std::fs::remove_dir_all(&dir);
        assert!(listed.status.success(), "{listed:?}");
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout),
            "backup.json\nshards/sh1.sqlite\n"
        );
    }

    #[test]
    fn manifests_are_checked() {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": FORMAT, "version": VERSION, "created_ms": 1,
            "schema": {"columns": ["Stud_id", "Stud_name"], "dtypes": ["Number", "String"]},
            "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 10, "primary": "S0",
                        "seq": 5, "term": 1, "log_last_seq": 5, "source": "S0",
                        "file": "shards/sh1.sqlite", "bytes": 4096}],
            "servers": {"S0": ["sh1"]}
        }))
        .unwrap();
        assert!(m.validate().is_ok());
        let mut v = m.clone();
        v.version = 9;
        assert!(v.validate().unwrap_err().contains("unknown version 9"));
        let mut f = m.clone();
        f.format = "zip".into();
        assert!(f.validate().unwrap_err().contains("not a shardline backup"));
        let mut s = m.clone();
        s.schema.dtypes = vec!["Number".into()];
        assert!(s.validate().is_err());
        let mut l = m;
        l.shards[0].log_last_seq = Seq(6);
        assert!(l.validate().unwrap_err().contains("below"));
    }
}
