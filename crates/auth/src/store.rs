//! The token store: one file per (server, URL), versioned, written atomically.
//!
//! Layout: `<dir>/<server>-<hash>.json` with `<hash>` the first 16 hex digits of
//! the SHA-256 of the server's URL, so that a changed URL never finds the old
//! server's tokens; a target given only as a URL (a one-shot) uses
//! [`URL_ONLY`] for the server. Beside each file a
//! `.lock` file serializes refreshes across processes.
//!
//! The directory is created 0700 and must stay private (owned by this user, no
//! access for group or others); files are 0600, opened without following
//! symlinks, written to a temporary file, synced and renamed over the old one.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rmcp::transport::auth::{AuthError, AuthorizationMetadata, CredentialStore, StoredCredentials};
use serde::{Deserialize, Serialize};

/// The version of the file format this roster writes. Files of older versions
/// are read (and rewritten in this one on the next save); newer ones are refused
/// with a message, never overwritten.
pub const FORMAT_VERSION: u32 = 1;

/// How long a process waits for another one's refresh before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The server name used for a target given only as a URL (what the one-shots
/// call such a server).
pub const URL_ONLY: &str = "oneshot";

/// Why the store could not be read or written. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The directory is not private to this user.
    #[error("{}: {why}; tokens are kept only in a directory that is private to you", path.display())]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        why: String,
    },
    /// The file is not a token record.
    #[error("{} is not a roster credentials file ({why}); remove it with `roster logout` and log in again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error (positions only: serde_json does not quote values).
        why: String,
    },
    /// The file was written by a newer roster.
    #[error("{} has format version {found}, newer than this roster reads ({FORMAT_VERSION}); upgrade roster", path.display())]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Another process held the refresh lock for too long.
    #[error("another roster process has held {} for {}s", path.display(), LOCK_WAIT.as_secs())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
    },
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> AuthError {
        AuthError::CredentialStoreError(e.to_string())
    }
}

/// What is kept for one server. `Debug` shows no token.
#[derive(Clone, Serialize, Deserialize)]
pub struct Record {
    /// [`FORMAT_VERSION`] when written.
    pub version: u32,
    /// The server's name ([`URL_ONLY`] for a URL target).
    pub server: String,
    /// The server's URL, as configured (credentials in it are never stored: see
    /// [`Store::entry`]).
    pub url: String,
    /// The authorization server's metadata, as discovered at login: refreshes
    /// need its token endpoint, and need no discovery then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<AuthorizationMetadata>,
    /// The redirect URI the client was registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// The client id and the tokens, in rmcp's form.
    pub credentials: StoredCredentials,
    /// Scopes the server asked for (a `403 insufficient_scope` to a request
    /// made with the kept token) that a person must log in again to get: the
    /// next login asks for them, with those granted before, and clears them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("version", &self.version)
            .field("server", &self.server)
            .field("url", &roster_core::redact_url(&self.url))
            .field("issuer", &self.metadata.as_ref().and_then(|m| m.issuer.as_deref()))
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Record {
    /// The access token, if there is one.
    pub fn access_token(&self) -> Option<&str> {
        use oauth2::TokenResponse as _;
        self.credentials.token_response.as_ref().map(|t| t.access_token().secret().as_str())
    }

    /// Whether a refresh token is kept.
    pub fn has_refresh_token(&self) -> bool {
        use oauth2::TokenResponse as _;
        self.credentials.token_response.as_ref().is_some_and(|t| t.refresh_token().is_some())
    }

    /// The access token's lifetime in seconds, when the server said.
    pub fn expires_in(&self) -> Option<u64> {
        use oauth2::TokenResponse as _;
        self.credentials.token_response.as_ref().and_then(|t| t.expires_in()).map(|d| d.as_secs())
    }
}

/// The directory of token files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of `server` at `url`.
    pub fn entry(&self, server: &str, url: &str) -> Entry {
        let key = format!("{server}-{}", url_hash(url));
        Entry {
            dir: self.dir.clone(),
            path: self.dir.join(format!("{key}.json")),
            lock: self.dir.join(format!("{key}.lock")),
            server: server.to_owned(),
            url: url.to_owned(),
        }
    }

    /// The entry of `spec`, when its sessions are to send tokens: it is
    /// configured for OAuth, or someone has logged in to it. `None`: requests go
    /// without a token (and a 401 is auth required, as ever).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn entry_for(&self, spec: &roster_core::ServerSpec) -> Result<Option<Entry>, StoreError> {
        let entry = self.entry(&spec.name, &spec.url);
        let configured = spec.auth.as_ref().is_some_and(|a| a.kind == roster_core::AuthType::Oauth);
        Ok((configured || entry.read()?.is_some()).then_some(entry))
    }

    /// Creates the directory 0700 if needed, and checks that it is private.
    ///
    /// # Errors
    /// When it cannot be created, or is not owned by this user, or grants any
    /// access to group or others.
    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(|source| StoreError::Io {
            what: "creating",
            path: self.dir.clone(),
            source,
        })?;
        check_private(&self.dir)
    }
}

/// The first 16 hex digits of the SHA-256 of `url`.
fn url_hash(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn check_private(dir: &Path) -> Result<(), StoreError> {
    let meta =
        fs::symlink_metadata(dir).map_err(|source| StoreError::Io { what: "reading", path: dir.to_owned(), source })?;
    let not_private = |why: String| StoreError::NotPrivate { path: dir.to_owned(), why };
    if !meta.is_dir() {
        return Err(not_private("not a directory (a symlink is not accepted)".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(not_private(format!("owned by uid {}, not by you (uid {me})", meta.uid())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(not_private(format!("mode {mode:o} lets others in; run `chmod 700 {}`", dir.display())));
    }
    Ok(())
}

/// One server's file and lock.
#[derive(Debug, Clone)]
pub struct Entry {
    dir: PathBuf,
    path: PathBuf,
    lock: PathBuf,
    server: String,
    url: String,
}

impl Entry {
    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server this entry is for.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The URL this entry is for.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A record of `credentials` for this entry, with no discovery metadata
    /// and no redirect URI (not written until [`Entry::write`]).
    pub fn record(&self, credentials: StoredCredentials) -> Record {
        Record {
            version: FORMAT_VERSION,
            server: self.server.clone(),
            url: self.url.clone(),
            metadata: None,
            redirect_uri: None,
            credentials,
            required_scopes: Vec::new(),
        }
    }

    /// The record, if one is kept.
    ///
    /// # Errors
    /// When the file cannot be read, is not a record, or is newer than this roster.
    pub fn read(&self) -> Result<Option<Record>, StoreError> {
        let io = |what, source| StoreError::Io { what, path: self.path.clone(), source };
        let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening", e)),
        };
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| io("reading", e))?;
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            path: self.path.clone(),
            why: format!("line {} column {}", e.line(), e.column()),
        };
        let Version { version } = serde_json::from_str(&text).map_err(corrupt)?;
        if version > FORMAT_VERSION {
            return Err(StoreError::NewerVersion { path: self.path.clone(), found: version });
        }
        let record: Record = serde_json::from_str(&text).map_err(corrupt)?;
        if record.url != self.url || record.server != self.server {
            // A hash collision or a file copied by hand: not this server's tokens.
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Writes `record` atomically (a 0600 temporary file, synced, renamed).
    ///
    /// # Errors
    /// When the directory is not private or a write fails.
    pub fn write(&self, record: &Record) -> Result<(), StoreError> {
        Store::new(&self.dir).ensure_dir()?;
        let mut record = record.clone();
        record.version = FORMAT_VERSION;
        let text = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            why: format!("not serializable: line {} column {}", e.line(), e.column()),
        })?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{:x}.tmp",
            self.path.file_name().and_then(|n| n.to_str()).unwrap_or("record"),
            std::process::id(),
            fastrand_u64()
        ));
        let io = |what, path: &Path, source| StoreError::Io { what, path: path.to_owned(), source };
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| io("creating", &tmp, e))?;
            file.write_all(&text).map_err(|e| io("writing", &tmp, e))?;
            file.sync_all().map_err(|e| io("syncing", &tmp, e))?;
            fs::rename(&tmp, &self.path).map_err(|e| io("replacing", &self.path, e))?;
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the record. `Ok(false)` when there was none.
    ///
    /// # Errors
    /// When the file exists and cannot be removed.
    pub fn remove(&self) -> Result<bool, StoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { what: "removing", path: self.path.clone(), source }),
        }
    }

    /// Takes the cross-process lock of this entry, waiting at most [`LOCK_WAIT`].
    /// Released when the returned guard is dropped (or the process dies).
    ///
    /// # Errors
    /// When the lock file cannot be opened, or another process holds the lock too long.
    pub async fn lock(&self) -> Result<Lock, StoreError> {
        Store::new(&self.dir).ensure_dir()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.lock)
            .map_err(|source| StoreError::Io { what: "opening", path: self.lock.clone(), source })?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(StoreError::Io { what: "locking", path: self.lock.clone(), source: e.into() });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::LockTimeout { path: self.lock.clone() });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// rmcp's view of this entry: loads and saves the credentials, keeping the
    /// rest of the record (`metadata`, `redirect_uri`) as `template` has it when
    /// there is no file yet.
    pub fn credential_store(
        &self,
        template: Option<AuthorizationMetadata>,
        redirect_uri: Option<String>,
    ) -> FileCredentials {
        FileCredentials { entry: self.clone(), metadata: template, redirect_uri }
    }
}

fn fastrand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // `ring`'s system random; a clock-derived value would do as well for a name.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}

/// A held refresh lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// An [`Entry`] as rmcp's [`CredentialStore`]. It does no locking of its own:
/// roster takes the entry's [`Lock`] around every refresh and login.
#[derive(Debug, Clone)]
pub struct FileCredentials {
    entry: Entry,
    metadata: Option<AuthorizationMetadata>,
    redirect_uri: Option<String>,
}

#[async_trait::async_trait]
impl CredentialStore for FileCredentials {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        Ok(self.entry.read()?.map(|r| r.credentials))
    }

    async fn save(&self, credentials: StoredCredentials) -> Result<(), AuthError> {
        let record = match self.entry.read()? {
            Some(mut record) => {
                record.credentials = credentials;
                if self.metadata.is_some() {
                    record.metadata.clone_from(&self.metadata);
                }
                if self.redirect_uri.is_some() {
                    record.redirect_uri.clone_from(&self.redirect_uri);
                }
                record
            }
            None => Record {
                metadata: self.metadata.clone(),
                redirect_uri: self.redirect_uri.clone(),
                ..self.entry.record(credentials)
            },
        };
        Ok(self.entry.write(&record)?)
    }

    async fn clear(&self) -> Result<(), AuthError> {
        self.entry.remove()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
