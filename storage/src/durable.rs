//! What makes a flush durable. sled's `flush` on Linux ends in `sync_file_range`, which writes
//! the pages but neither the file's metadata (its growth) nor the drive's cache: a power loss can
//! still take flushed commits. So every flush is followed by `fdatasync` on sled's log file.
//! Values over ~128 KiB live in blob files instead; our sled (`storage/vendor`) syncs each blob
//! and its directory entry when it writes it, before the log entry pointing at it. The directory
//! entries sled created before are synced once, at open.

use std::fs::File;
use std::io;
use std::path::Path;

/// sled's files in a database directory.
const LOG: &str = "db";
const CONF: &str = "conf";
const BLOBS: &str = "blobs";

pub(crate) struct DurableFiles {
    /// sled's log: every commit is appended here.
    log: File,
    /// A disk that fails every sync from now on (unit tests).
    #[cfg(test)]
    pub(crate) failing: std::sync::atomic::AtomicBool,
}

/// sled's log in `dir`, if there is one yet, opened before anything of the database is read
/// or written back: a handle learns only of the write errors after it was opened, so a failed
/// writeback of what a killed process left (sled's own flusher would swallow the error) is
/// told to this one's first sync.
pub(crate) fn open_log(dir: &Path) -> io::Result<Option<File>> {
    match File::open(dir.join(LOG)) {
        Ok(log) => Ok(Some(log)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl DurableFiles {
    /// Make sled's log in `dir` durable (through `log`, from [`open_log`] before sled opened it;
    /// a new database's is opened now), the directory's entries, and the blobs already there
    /// (a build before ours synced them at each flush instead).
    pub(crate) fn open(dir: &Path, log: Option<File>) -> io::Result<DurableFiles> {
        let log = match log {
            Some(log) => log,
            None => File::open(dir.join(LOG))?,
        };
        log.sync_all()?;
        if let Ok(conf) = File::open(dir.join(CONF)) {
            conf.sync_all()?;
        }
        sync_blobs(&dir.join(BLOBS))?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(DurableFiles {
            log,
            #[cfg(test)]
            failing: Default::default(),
        })
    }

    /// Before sled reads `dir`: drop its files' pages from the OS cache, so that what it reads
    /// is what is on disk. After a failed writeback the kernel may keep pages it never wrote,
    /// marked clean, and a new process would read them as if they were durable (a store that
    /// failed a flush is opened again by a restart, see `Store::flush`). Pages still dirty
    /// (a killed process's writes, not yet written back) stay: they are written in time.
    pub(crate) fn forget_cached(dir: &Path) -> io::Result<()> {
        // What else sled reads at open is synced before it is used (`conf` at open, below;
        // snapshots before their rename).
        let mut files = vec![dir.join(LOG)];
        match std::fs::read_dir(dir.join(BLOBS)) {
            Ok(blobs) => {
                for blob in blobs {
                    files.push(blob?.path());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for path in files {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
            posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
                .map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// After sled's flush: make what it wrote survive a power loss.
    pub(crate) fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("the disk failed (a test's)"));
        }
        self.log.sync_data()
    }
}

fn sync_blobs(blobs: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        match File::open(entry?.path()) {
            Ok(blob) => blob.sync_all()?,
            // sled removed it meanwhile (a page rewritten inline).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    sync_dir(blobs)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_real_sled_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc");
        let db = sled::open(&path).unwrap();
        db.insert("k", vec![0u8; 300 * 1024]).unwrap(); // big enough to be a blob
        db.flush().unwrap();
        let files = DurableFiles::open(&path, open_log(&path).unwrap()).unwrap();
        files.sync().unwrap();
        assert!(std::fs::read_dir(path.join(BLOBS)).unwrap().count() > 0);
    }

    #[test]
    fn a_directory_without_sled_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DurableFiles::open(dir.path(), None).is_err());
    }
}
