//! Where a running `up` listens, and the lock that keeps it alone.

use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Unix socket paths must stay under 108 bytes.
const MAX_SOCKET_PATH: usize = 100;

/// The control socket of `up` for the configuration at `config`: under
/// `$XDG_RUNTIME_DIR/roster/` when that is set, else beside the configuration,
/// else (for a path too long for a socket) under `/tmp/roster-<uid>/`.
pub(crate) fn socket_path(config: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let mut h = DefaultHasher::new();
    canonical.hash(&mut h);
    let stem = canonical.file_stem().and_then(|s| s.to_str()).unwrap_or("roster");
    let name = format!("{stem}-{:016x}.sock", h.finish());
    let candidates = [
        std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("roster").join(&name)),
        canonical.parent().map(|dir| dir.join(format!(".{name}"))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.as_os_str().len() <= MAX_SOCKET_PATH)
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/roster-{}", rustix::process::getuid().as_raw())).join(&name))
}

/// Held for as long as `up` runs: a second `up` on the same configuration finds it
/// taken and refuses.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
    path: PathBuf,
}

/// Who holds the lock.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) pid: Option<u32>,
}

impl Lock {
    /// Takes the lock beside `socket`, creating its directory (mode 0700).
    pub(crate) fn acquire(socket: &Path) -> std::io::Result<Result<Lock, Held>> {
        if let Some(dir) = socket.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let path = socket.with_extension("lock");
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                file.set_len(0)?;
                file.rewind()?;
                write!(file, "{}", std::process::id())?;
                file.flush()?;
                Ok(Ok(Lock { _file: file, path }))
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Ok(Err(Held { pid: text.trim().parse().ok() }))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_socket_per_configuration() {
        let a = socket_path(Path::new("/srv/a/roster.toml"));
        let b = socket_path(Path::new("/srv/b/roster.toml"));
        assert_ne!(a, b);
        assert_eq!(a, socket_path(Path::new("/srv/a/roster.toml")));
        assert!(a.as_os_str().len() <= MAX_SOCKET_PATH);
        let deep = format!("/{}/roster.toml", "d".repeat(200));
        assert!(socket_path(Path::new(&deep)).as_os_str().len() <= MAX_SOCKET_PATH + 30);
    }
}
