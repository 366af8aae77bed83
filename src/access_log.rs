//! The access log: one JSON line per request, written by a dedicated thread.
//!
//! The data path hands a finished line to a bounded channel with `try_send` and never
//! waits: if the writer falls behind (slow disk, a pipe nobody reads), lines beyond
//! the buffer are dropped and counted (`cutover_access_log_dropped_total`) rather than
//! slowing requests. The thread opens the file itself, so even an `open` that blocks
//! (a FIFO without a reader) holds up nothing but the log.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};

/// Lines buffered between the data path and the writer.
const BUFFERED_LINES: usize = 16 * 1024;

pub struct AccessLog {
    /// Bounded queue to the writer thread: `try_send` never blocks a request, and a
    /// full queue drops the line.
    tx: SyncSender<String>,
}

impl AccessLog {
    /// Starts the writer for `path` (`-` is standard output).
    pub fn start(path: &Path) -> io::Result<AccessLog> {
        let (tx, rx) = sync_channel(BUFFERED_LINES);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("cutover-access-log".into())
            .spawn(move || write_loop(&path, &rx))?;
        Ok(AccessLog { tx })
    }

    /// Queues a line; false when it was dropped because the writer is behind or gone.
    pub fn log(&self, line: String) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn write_loop(path: &PathBuf, rx: &Receiver<String>) {
    let out: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(io::stdout())
    } else {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the access log; lines are dropped");
                return;
            }
        }
    };
    let mut out = io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let mut line = Some(line);
        // Write what is queued, then flush once the queue is empty.
        loop {
            if let Some(l) = line.take()
                && (out.write_all(l.as_bytes()).is_err() || out.write_all(b"\n").is_err())
            {
                tracing::error!(path = %path.display(), "access log write failed; stopping it");
                return;
            }
            match rx.try_recv() {
                Ok(next) => line = Some(next),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}
