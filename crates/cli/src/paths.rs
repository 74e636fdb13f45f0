//! Where a running `up` listens, and the lock that keeps it alone.
//!
//! - The **lock** is an exclusive `flock` on the configuration file itself: every
//!   `up` of that file sees it, whatever path reaches the file (a hard link, a
//!   symbolic link, another working directory) and whatever `XDG_RUNTIME_DIR` says.
//! - The **runtime directory** holds the control socket and a pid file. It is
//!   `$XDG_RUNTIME_DIR/roster`, or `/tmp/roster-<uid>` when that is unset. roster
//!   refuses one that is not a directory owned by the user, or that the group or
//!   others may write to, and says why; it never follows a symbolic link there.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Unix socket paths must stay under 108 bytes.
const MAX_SOCKET_PATH: usize = 100;

/// The runtime directory: `$XDG_RUNTIME_DIR/roster`, else `/tmp/roster-<uid>`.
pub(crate) fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("roster"),
        None => PathBuf::from(format!("/tmp/roster-{}", rustix::process::getuid().as_raw())),
    }
}

/// roster's state directory: `$XDG_STATE_HOME/roster`, else
/// `~/.local/state/roster`, else (no home) under the runtime directory.
pub(crate) fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("roster");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/roster"),
        None => runtime_dir().join("state"),
    }
}

/// Where `roster serve` keeps the listings of the on-demand servers of the
/// configuration at `config`: one directory per configuration file.
pub(crate) fn listing_cache_dir(config: &Path) -> PathBuf {
    state_dir().join("listings").join(config_id(config))
}

/// A name for the configuration file: its stem and a hash of its canonical path
/// (SHA-256, so that it stays the same across versions of roster).
fn config_id(config: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let canonical = canonical(config);
    let hash = ring::digest::digest(&ring::digest::SHA256, canonical.as_os_str().as_bytes());
    let hash: String = hash.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let stem: String = canonical.file_stem().and_then(|s| s.to_str()).unwrap_or("roster").chars().take(24).collect();
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    format!("{stem}-{hash}")
}

/// The canonical path of the configuration, or the path as given.
fn canonical(config: &Path) -> PathBuf {
    std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf())
}

/// The control socket of `up` for the configuration at `config`, in the runtime
/// directory: named after the file and a hash of its canonical path.
pub(crate) fn socket_path(config: &Path) -> PathBuf {
    let name = format!("{}.sock", config_id(config));
    let dir = runtime_dir();
    let path = dir.join(&name);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        path
    } else {
        PathBuf::from(format!("/tmp/roster-{}", rustix::process::getuid().as_raw())).join(name)
    }
}

/// Why a runtime directory cannot be used.
fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot use {}: {e}", dir.display()))?;
    let uid = rustix::process::getuid().as_raw();
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symbolic link; roster does not follow one there", dir.display()));
    }
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != uid {
        return Err(format!("{} belongs to uid {}, not to you (uid {uid})", dir.display(), meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} may be written by its group or others (mode {:o}); make it private: chmod 700 {}",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        ));
    }
    Ok(())
}

/// Creates the runtime directory (mode 0700) if needed and checks it.
///
/// # Errors
/// Why it cannot be used, in words.
pub(crate) fn ensure_runtime_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("cannot create {}: its parent does not exist ({e})", dir.display()));
        }
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check_dir(dir)
}

/// Opens `path` for writing without following a symbolic link, as a regular file
/// of the user's, mode 0600.
fn open_private(path: &Path, create: bool) -> Result<File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(create).mode(0o600).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            format!("{} is a symbolic link; roster does not follow one there", path.display())
        } else {
            format!("cannot open {}: {e}", path.display())
        }
    })?;
    let meta = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.uid() != rustix::process::getuid().as_raw() {
        return Err(format!("{} is not a regular file of yours", path.display()));
    }
    Ok(file)
}

/// Held for as long as `up` runs: a second `up` on the same configuration finds
/// the file locked and refuses.
#[derive(Debug)]
pub(crate) struct Lock {
    /// The locked configuration files (a new one is added when an editor replaces
    /// the file by a new one).
    files: Vec<(u64, u64, File)>,
    pid_path: PathBuf,
}

/// Who holds the lock.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) pid: Option<u32>,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another `up` runs on this configuration.
    Held(Held),
    /// The files could not be used: why.
    Unusable(String),
}

fn flock(file: &File) -> Result<bool, String> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(format!("cannot lock the configuration: {e}")),
    }
}

impl Lock {
    /// Locks the configuration at `config` and writes roster's pid beside `socket`.
    pub(crate) fn acquire(config: &Path, socket: &Path) -> Result<Lock, LockError> {
        let file =
            File::open(config).map_err(|e| LockError::Unusable(format!("cannot open {}: {e}", config.display())))?;
        let meta = file.metadata().map_err(|e| LockError::Unusable(e.to_string()))?;
        let pid_path = socket.with_extension("pid");
        if !flock(&file).map_err(LockError::Unusable)? {
            let pid = File::open(&pid_path)
                .ok()
                .and_then(|mut f| {
                    let mut text = String::new();
                    f.read_to_string(&mut text).ok().map(|_| text)
                })
                .and_then(|t| t.trim().parse().ok());
            return Err(LockError::Held(Held { pid }));
        }
        let mut pid_file = open_private(&pid_path, true).map_err(LockError::Unusable)?;
        let write = pid_file.set_len(0).and_then(|()| write!(pid_file, "{}", std::process::id()));
        write.map_err(|e| LockError::Unusable(format!("cannot write {}: {e}", pid_path.display())))?;
        Ok(Lock { files: vec![(meta.dev(), meta.ino(), file)], pid_path })
    }

    /// After a reload: the file at `config` may be a new one (editors often write
    /// a new file and rename it over the old); lock it too.
    ///
    /// # Errors
    /// When another `up` holds the new file.
    pub(crate) fn follow(&mut self, config: &Path) -> Result<(), String> {
        let Ok(file) = File::open(config) else { return Ok(()) };
        let Ok(meta) = file.metadata() else { return Ok(()) };
        if self.files.iter().any(|(dev, ino, _)| *dev == meta.dev() && *ino == meta.ino()) {
            return Ok(());
        }
        if flock(&file)? {
            self.files.push((meta.dev(), meta.ino(), file));
            Ok(())
        } else {
            Err(format!("another `roster up` has locked the new {}", config.display()))
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn one_socket_per_configuration() {
        let a = socket_path(Path::new("/srv/a/roster.toml"));
        let b = socket_path(Path::new("/srv/b/roster.toml"));
        assert_ne!(a, b);
        assert_eq!(a, socket_path(Path::new("/srv/a/roster.toml")));
        assert!(a.as_os_str().len() <= MAX_SOCKET_PATH);
        let deep = format!("/{}/{}.toml", "d".repeat(200), "n".repeat(200));
        assert!(socket_path(Path::new(&deep)).as_os_str().len() <= MAX_SOCKET_PATH);
    }

    #[test]
    fn a_shared_or_foreign_runtime_directory_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("roster");
        ensure_runtime_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = ensure_runtime_dir(&dir).unwrap_err();
        assert!(why.contains("may be written by its group or others (mode 777)"), "{why}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(ensure_runtime_dir(&link).unwrap_err().contains("symbolic link"));
    }

    #[test]
    fn a_symbolic_link_at_the_pid_file_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let config = tmp.path().join("roster.toml");
        std::fs::write(&config, "").unwrap();
        let socket = tmp.path().join("x.sock");
        std::os::unix::fs::symlink(&victim, socket.with_extension("pid")).unwrap();
        match Lock::acquire(&config, &socket) {
            Err(LockError::Unusable(why)) => assert!(why.contains("symbolic link"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn the_lock_is_on_the_file_whatever_path_reaches_it() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("roster.toml");
        std::fs::write(&config, "").unwrap();
        let hard = tmp.path().join("hard.toml");
        std::fs::hard_link(&config, &hard).unwrap();
        let held = Lock::acquire(&config, &tmp.path().join("a.sock")).unwrap();
        match Lock::acquire(&hard, &tmp.path().join("b.sock")) {
            Err(LockError::Held(Held { pid })) => assert_eq!(pid, None, "b's pid file was never written"),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(Lock::acquire(&hard, &tmp.path().join("b.sock")).is_ok());
    }
}
