//! The config file as a source: read at start, then re-read when the file changes (inotify on
//! its directory, so editors that write a new file and rename it over the old one are seen) or
//! when SIGHUP asks for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_config::file::{ValidatedFile, load_with};
use gantry_config::{Errors, StaticConfig};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::reconcile::{SourceId, Update};

/// Changes arriving within this window are read as one: an editor's save is often several
/// events (truncate, write, rename).
const DEBOUNCE: Duration = Duration::from_millis(25);

/// Whether an event can change what the file says. Opening and reading the file are events too:
/// reacting to them would make every reload trigger the next.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn origin(&self) -> String {
        self.path.display().to_string()
    }

    /// Reads, parses and validates the file, and the certificate and key files it names
    /// (relative paths are relative to the config file's directory).
    pub fn read(&self) -> Result<ValidatedFile, Errors> {
        let origin = self.origin();
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            let mut errs = Errors::new();
            errs.push(&origin, "", format!("cannot read the config file: {e}"));
            errs
        })?;
        let base = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let read = |name: &str| {
            let p = base.join(name);
            std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        load_with(&text, &origin, &read)
    }

    /// The file's routers and services as an update for the reconciler.
    pub fn update(&self, started_with: &StaticConfig) -> Update {
        let result = self.read().map(|v| {
            if &v.static_config != started_with {
                warn!(
                    file = %self.origin(),
                    "entrypoints or admin address changed: they take effect at the next restart"
                );
            }
            v.state
        });
        Update::from_result(SourceId::File, self.origin(), result)
    }

    /// Starts watching the file's directory now, so that a change made after this call is never
    /// missed. Call it before the first [`FileSource::read`], then [`FileWatch::run`].
    pub fn watch(self) -> FileWatch {
        let (events_tx, events) = mpsc::unbounded_channel::<()>();
        let file_name = self.path.file_name().map(|n| n.to_os_string());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if changes_content(&ev.kind)
                    && ev
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
                {
                    let _ = events_tx.send(());
                }
            }
            Err(e) => debug!(error = %e, "file watch error"),
        });
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher = match watcher.and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w)) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(file = %self.origin(), error = %e, "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        FileWatch {
            source: self,
            _watcher: watcher,
            events,
        }
    }
}

/// A file source with its watch in place.
#[derive(Debug)]
pub struct FileWatch {
    source: FileSource,
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    /// Sends an update after every change and every `reload` signal, until `shutdown`. The first
    /// update (the state at start) is the caller's to send.
    pub async fn run(
        mut self,
        started_with: StaticConfig,
        updates: mpsc::Sender<Update>,
        reload: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = reload.notified() => {}
                ev = self.events.recv() => {
                    if ev.is_none() {
                        // The watcher is gone; SIGHUP still works.
                        reload.notified().await;
                    }
                    // Wait for the burst of events of one save to settle.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, self.events.recv()).await {}
                }
            }
            if updates.send(self.source.update(&started_with)).await.is_err() {
                return;
            }
        }
    }
}
