//! What an on-demand server offered when it last ran, kept on disk so that its
//! tools can be listed before it is started.
//!
//! One JSON file per server in the cache directory, written whole (a temporary
//! file renamed into place) with mode 0600. Each entry carries the fingerprint
//! of the definition it was listed under: an entry whose fingerprint differs
//! from the server's definition now is not used. The fingerprint covers what
//! decides which program or endpoint runs (type, command, arguments, working
//! directory, URL, the names of environment variables and headers, the prefix),
//! never a secret value.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use roster_core::ServerSpec;
use serde::{Deserialize, Serialize};

use crate::catalog::Listing;

/// An on-disk cache of listings, one file per server.
#[derive(Debug, Clone)]
pub struct ListingCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    fingerprint: String,
    listing: Listing,
}

impl ListingCache {
    /// A cache in `dir` (created when first written, mode 0700).
    pub fn new(dir: impl Into<PathBuf>) -> ListingCache {
        ListingCache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, server: &str) -> PathBuf {
        // Server names are validated ([A-Za-z0-9._-], not starting with `.` or `-`),
        // so a name is a safe file name.
        self.dir.join(format!("{server}.json"))
    }

    /// The listing kept for `server` under the definition `spec`, if any.
    pub fn load(&self, spec: &ServerSpec) -> Option<Listing> {
        let text = std::fs::read_to_string(self.path(&spec.name)).ok()?;
        let entry: Entry = serde_json::from_str(&text).ok()?;
        (entry.fingerprint == fingerprint(spec)).then_some(entry.listing)
    }

    /// Keeps `listing` for `spec`.
    ///
    /// # Errors
    /// When the directory or the file cannot be written.
    pub fn store(&self, spec: &ServerSpec, listing: &Listing) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let entry = Entry { fingerprint: fingerprint(spec), listing: listing.clone() };
        let text = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        let path = self.path(&spec.name);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    }
}

/// The fingerprint of what decides which program or endpoint `spec` runs, with
/// no secret value in it.
pub fn fingerprint(spec: &ServerSpec) -> String {
    let shape = serde_json::json!({
        "type": spec.server_type,
        "command": spec.command,
        "args": spec.args,
        "cwd": spec.cwd,
        "env": spec.env.keys().collect::<Vec<_>>(),
        "url": spec.display_url(),
        "headers": spec.headers.keys().collect::<Vec<_>>(),
        "tool_prefix": spec.tool_prefix,
    });
    digest(&SHA256, shape.to_string().as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rmcp::model::Tool;

    use super::*;

    fn listing() -> Listing {
        Listing {
            tools: vec![Tool::new("echo", "Returns its text", Arc::new(serde_json::Map::new()))],
            ..Listing::default()
        }
    }

    #[test]
    fn a_listing_comes_back_for_the_same_definition_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ListingCache::new(dir.path().join("cache"));
        let spec = ServerSpec::stdio("fs", "mcp-fs");
        assert_eq!(cache.load(&spec), None, "nothing kept yet");
        cache.store(&spec, &listing()).unwrap();
        assert_eq!(cache.load(&spec), Some(listing()));
        let mut moved = spec.clone();
        moved.args = vec!["--root".into(), "/srv".into()];
        assert_eq!(cache.load(&moved), None, "another program: not used");
        let mut described = spec.clone();
        described.description = "the files".into();
        assert_eq!(cache.load(&described), Some(listing()), "a description does not change what runs");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(mode(&cache.dir().join("fs.json")), 0o600);
    }

    #[test]
    fn no_secret_goes_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ListingCache::new(dir.path());
        let mut spec =
            ServerSpec::remote("api", roster_core::ServerType::StreamableHttp, "https://u:pw@h/mcp?token=t0k");
        spec.headers.insert("Authorization".into(), "Bearer hunter2".into());
        spec.env.insert("API_KEY".into(), "sk-live".into());
        cache.store(&spec, &listing()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("api.json")).unwrap();
        for secret in ["hunter2", "sk-live", "pw@", "t0k"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // A changed secret is the same definition; a changed header name is not.
        let mut rotated = spec.clone();
        rotated.headers.insert("Authorization".into(), "Bearer new".into());
        assert_eq!(fingerprint(&rotated), fingerprint(&spec));
        let mut renamed = spec.clone();
        renamed.headers.insert("X-Other".into(), "v".into());
        assert_ne!(fingerprint(&renamed), fingerprint(&spec));
    }

    #[test]
    fn a_damaged_file_is_no_listing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ListingCache::new(dir.path());
        std::fs::write(dir.path().join("fs.json"), "{ not json").unwrap();
        assert_eq!(cache.load(&ServerSpec::stdio("fs", "mcp-fs")), None);
    }
}
