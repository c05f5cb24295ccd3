//! Heads of the audit chain kept outside the database: the anchor file
//! (`SAMVAULT_AUDIT_ANCHOR_FILE`, rewritten atomically at every append) and the checkpoints
//! webhook receivers keep (`audit.checkpoint`). A head is an entry's number and MAC; a log
//! that no longer holds that entry with that MAC was cut or rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::storage::{Db, StorageError};

/// An entry's number and its `hash` (a MAC under the audit key), written `SEQ:MAC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub mac: String,
}

impl Head {
    /// Parses `SEQ:MAC` (64 lowercase hex digits), as the anchor file, checkpoint events and
    /// `audit verify --checkpoint` write it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (seq, mac) = text
            .trim()
            .split_once(':')
            .ok_or("expected SEQ:MAC, like 1234:5f3a…")?;
        let seq = seq
            .parse::<i64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or("the entry number must be a positive integer")?;
        let hex_digits = mac.len() == 64
            && mac
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_digits {
            return Err("the MAC must be 64 lowercase hex digits".into());
        }
        Ok(Self {
            seq,
            mac: mac.to_string(),
        })
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.mac)
    }
}

/// Whether the anchor file may move on to a new head.
#[derive(Debug)]
pub enum AnchorState {
    /// No anchor yet.
    Missing,
    /// The log still holds the anchored entry with its MAC.
    Held(Head),
    /// The anchored entry is gone or differs, or the file is unusable: it must stay as it is.
    Lost(String),
}

/// The anchor file of one process: appends hand it their heads, and it writes the newest one.
#[derive(Debug)]
pub struct AnchorFile {
    path: PathBuf,
    /// The newest head appended by this process and not yet written.
    wanted: std::sync::Mutex<Option<Head>>,
    /// The newest head this process wrote (or gave up on); held while writing, so appends
    /// queued behind a write are covered by the next one (a disk flush takes milliseconds).
    written: tokio::sync::Mutex<i64>,
}

impl AnchorFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            wanted: std::sync::Mutex::new(None),
            written: tokio::sync::Mutex::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file name `head` (or a later head of this process) before returning, unless
    /// it names a head the log no longer holds: that file is evidence and stays as it is.
    pub async fn advance(&self, db: &Db, head: Head) {
        {
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            if wanted.as_ref().is_none_or(|w| w.seq < head.seq) {
                *wanted = Some(head.clone());
            }
        }
        let mut written = self.written.lock().await;
        if *written >= head.seq {
            return;
        }
        // Still there: whoever takes it writes it (or a later one) before `written` moves.
        let newest = self.wanted.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(newest) = newest else {
            return;
        };
        *written = newest.seq;
        match self.state(db).await {
            // Another process (a CLI command) anchored a later head meanwhile.
            Ok(AnchorState::Held(old)) if old.seq >= newest.seq => {}
            Ok(AnchorState::Missing | AnchorState::Held(_)) => self.write(newest).await,
            Ok(AnchorState::Lost(why)) => tracing::error!(
                anchor = %self.path.display(),
                why,
                "the audit log no longer holds the head in SAMVAULT_AUDIT_ANCHOR_FILE: it was cut or \
                 rewritten; the anchor is kept as evidence (docs/RUNBOOK.md, \"The audit anchor does not match\")"
            ),
            Err(e) => tracing::error!(error = %e, "audit anchor not moved: the log cannot be read"),
        }
    }

    async fn write(&self, head: Head) {
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write(&path, &head)).await;
        if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::error!(error = %e, "SAMVAULT_AUDIT_ANCHOR_FILE: cannot write the audit head");
        }
    }

    /// Whether the log still holds the head in the file.
    pub async fn state(&self, db: &Db) -> Result<AnchorState, StorageError> {
        let head = match read(&self.path) {
            Ok(None) => return Ok(AnchorState::Missing),
            Ok(Some(head)) => head,
            Err(why) => return Ok(AnchorState::Lost(why)),
        };
        let stored: Option<String> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
                .bind(head.seq)
                .fetch_optional(db.reader())
                .await?;
        Ok(match stored {
            Some(mac) if mac == head.mac => AnchorState::Held(head),
            Some(_) => AnchorState::Lost(format!("entry {} has another MAC", head.seq)),
            None => AnchorState::Lost(format!("entry {} is not in the log", head.seq)),
        })
    }
}

/// The head in the anchor file; `None` when there is no file yet.
pub fn read(path: &Path) -> Result<Option<Head>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Head::parse(&text)
            .map(Some)
            .map_err(|why| format!("{}: {why}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the anchor file with `head`: a new file (mode 0600) in the same directory,
/// flushed to disk, renamed over the old one, and the directory flushed, so a crash leaves
/// the old head or the new one, never a torn file.
pub fn write(path: &Path, head: &Head) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let written =
        write_new(&tmp, format!("{head}\n").as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory is; not every platform can open one.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_garbage_is_refused() {
        let head = Head {
            seq: 42,
            mac: "ab".repeat(32),
        };
        assert_eq!(Head::parse(&head.to_string()), Ok(head.clone()));
        assert_eq!(Head::parse(&format!(" {head}\n")), Ok(head));
        for bad in [
            "",
            "42",
            "x:ab",
            "0:".to_string().as_str(),
            &format!("-1:{}", "ab".repeat(32)),
            &format!("42:{}", "AB".repeat(32)),
            &format!("42:{}", "ab".repeat(31)),
        ] {
            assert!(Head::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_anchor_file_is_replaced_whole_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.anchor");
        assert_eq!(read(&path), Ok(None));
        for seq in [1, 2] {
            let head = Head {
                seq,
                mac: "0f".repeat(32),
            };
            write(&path, &head).unwrap();
            assert_eq!(read(&path), Ok(Some(head)));
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(read(&path).unwrap_err().contains("audit.anchor"));
    }
}
