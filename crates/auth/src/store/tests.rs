use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;

fn credentials(access: &str) -> StoredCredentials {
    let token = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": format!("{access}-refresh"),
    });
    StoredCredentials::new(
        "client-1".into(),
        Some(serde_json::from_value(token).unwrap()),
        vec!["read".into()],
        Some(7),
    )
}

fn record(entry: &Entry, access: &str) -> Record {
    Record {
        version: FORMAT_VERSION,
        server: entry.server().into(),
        url: entry.url().into(),
        metadata: None,
        redirect_uri: Some("http://127.0.0.1:1/callback".into()),
        credentials: credentials(access),
        required_scopes: Vec::new(),
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_record_goes_to_a_private_file_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("a/credentials"));
    let entry = store.entry("docs", "https://mcp.example/mcp");
    assert!(entry.read().unwrap().is_none(), "nothing kept yet");
    entry.write(&record(&entry, "tok-A")).unwrap();
    let back = entry.read().unwrap().expect("kept");
    assert_eq!(back.access_token(), Some("tok-A"));
    assert!(back.has_refresh_token());
    assert_eq!(back.expires_in(), Some(3600));
    assert_eq!(back.credentials.token_received_at, Some(7));
    assert_eq!(mode(entry.path()), 0o600);
    assert_eq!(mode(store.dir()), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700, "the parents made for it too");
    let leftovers: Vec<_> = fs::read_dir(store.dir()).unwrap().filter_map(Result::ok).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left: {leftovers:?}");
    assert!(entry.remove().unwrap());
    assert!(!entry.remove().unwrap(), "a second removal finds nothing");
    assert!(entry.read().unwrap().is_none());
}

#[test]
fn the_key_is_the_server_and_its_url() {
    let store = Store::new("/nowhere");
    let a = store.entry("docs", "https://mcp.example/mcp");
    assert_eq!(a.path(), store.entry("docs", "https://mcp.example/mcp").path(), "stable");
    assert_ne!(a.path(), store.entry("docs", "https://mcp.example/v2").path(), "a changed URL");
    assert_ne!(a.path(), store.entry("wiki", "https://mcp.example/mcp").path(), "another server");
    let name = a.path().file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("docs-") && name.ends_with(".json") && name.len() == "docs-".len() + 16 + 5, "{name}");
}

#[test]
fn a_record_of_another_server_or_url_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("creds"));
    let entry = store.entry("docs", "https://mcp.example/mcp");
    let mut foreign = record(&entry, "tok");
    foreign.url = "https://other.example/mcp".into();
    entry.write(&foreign).unwrap();
    assert!(entry.read().unwrap().is_none());
    foreign.url = entry.url().into();
    foreign.server = "wiki".into();
    entry.write(&foreign).unwrap();
    assert!(entry.read().unwrap().is_none());
}

#[test]
fn a_newer_format_is_refused_and_a_broken_file_is_named_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("creds"));
    store.ensure_dir().unwrap();
    let entry = store.entry("docs", "https://mcp.example/mcp");
    fs::write(entry.path(), r#"{"version": 2, "anything": "else"}"#).unwrap();
    let e = entry.read().unwrap_err();
    assert!(matches!(e, StoreError::NewerVersion { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("upgrade roster"), "{e}");
    fs::write(entry.path(), r#"{"version": 1, "access_token": "sekret-value""#).unwrap();
    let e = entry.read().unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&entry.path().display().to_string()), "{text}");
    assert!(!text.contains("sekret-value"), "{text}");
    assert!(text.contains("roster logout"), "{text}");
}

#[test]
fn an_older_format_is_read_and_rewritten_in_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("creds"));
    let entry = store.entry("docs", "https://mcp.example/mcp");
    let mut old = record(&entry, "tok");
    old.version = 0;
    let text = serde_json::to_string(&old).unwrap();
    store.ensure_dir().unwrap();
    fs::write(entry.path(), text).unwrap();
    let back = entry.read().unwrap().expect("an older file is read");
    entry.write(&back).unwrap();
    let written: serde_json::Value = serde_json::from_slice(&fs::read(entry.path()).unwrap()).unwrap();
    assert_eq!(written["version"], FORMAT_VERSION);
}

#[test]
fn symlinks_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("creds"));
    store.ensure_dir().unwrap();
    let entry = store.entry("docs", "https://mcp.example/mcp");
    let target = dir.path().join("target");
    fs::write(&target, "precious").unwrap();
    std::os::unix::fs::symlink(&target, entry.path()).unwrap();
    assert!(matches!(entry.read(), Err(StoreError::Io { what: "opening", .. })), "a planted link is not read");
    entry.write(&record(&entry, "tok")).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious", "the rename replaced the link, not its target");
    assert!(!fs::symlink_metadata(entry.path()).unwrap().file_type().is_symlink());

    let linked = Store::new(dir.path().join("link"));
    std::os::unix::fs::symlink(store.dir(), linked.dir()).unwrap();
    let e = linked.ensure_dir().unwrap_err();
    assert!(e.to_string().contains("a symlink is not accepted"), "{e}");
}

#[test]
fn a_directory_others_can_enter_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("creds"));
    store.ensure_dir().unwrap();
    fs::set_permissions(store.dir(), fs::Permissions::from_mode(0o750)).unwrap();
    let entry = store.entry("docs", "https://mcp.example/mcp");
    let e = entry.write(&record(&entry, "tok")).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::NotPrivate { .. }), "{text}");
    assert!(text.contains("mode 750") && text.contains("chmod 700"), "{text}");
    assert!(!entry.path().exists(), "nothing written");
}

#[test]
fn debug_shows_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let entry = Store::new(dir.path().join("creds")).entry("docs", "https://user:pw@mcp.example/mcp");
    let text = format!("{:?}", record(&entry, "tok-SECRET"));
    assert!(!text.contains("tok-SECRET"), "{text}");
    assert!(!text.contains("pw@"), "URL credentials are redacted: {text}");
    assert!(text.contains("\"docs\"") && text.contains("mcp.example/mcp"), "what it is for is shown: {text}");
}

#[test]
fn a_token_without_a_refresh_token_says_so() {
    let entry = Store::new("/nowhere").entry("docs", "https://mcp.example/mcp");
    let mut r = record(&entry, "tok");
    let token = serde_json::json!({"access_token": "tok", "token_type": "Bearer"});
    r.credentials.token_response = Some(serde_json::from_value(token).unwrap());
    assert!(!r.has_refresh_token());
    assert_eq!(r.expires_in(), None);
}

#[test]
fn a_server_sends_tokens_when_configured_for_oauth_or_logged_in_to() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("creds"));
    let mut spec =
        roster_core::ServerSpec::remote("docs", roster_core::ServerType::StreamableHttp, "https://mcp.example/mcp");
    assert!(store.entry_for(&spec).unwrap().is_none(), "neither");
    spec.auth = Some(roster_core::AuthConfig { kind: roster_core::AuthType::Oauth, ..Default::default() });
    assert_eq!(store.entry_for(&spec).unwrap().unwrap().path(), store.entry("docs", "https://mcp.example/mcp").path());
    spec.auth = Some(roster_core::AuthConfig { kind: roster_core::AuthType::None, ..Default::default() });
    assert!(store.entry_for(&spec).unwrap().is_none(), "auth of another kind");
    let entry = store.entry("docs", "https://mcp.example/mcp");
    entry.write(&record(&entry, "tok")).unwrap();
    assert!(store.entry_for(&spec).unwrap().is_some(), "logged in to");
}

#[test]
fn a_record_that_cannot_be_removed_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let entry = Store::new(dir.path().join("creds")).entry("docs", "https://mcp.example/mcp");
    fs::create_dir_all(entry.path()).unwrap();
    let err = entry.remove().unwrap_err();
    assert!(err.to_string().starts_with(&format!("removing {}", entry.path().display())), "{err}");
}

#[tokio::test]
async fn the_lock_excludes_a_second_holder_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let entry = Store::new(dir.path().join("creds")).entry("docs", "https://mcp.example/mcp");
    let first = entry.lock().await.unwrap();
    let other = entry.clone();
    let second = tokio::spawn(async move { other.lock().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "the second waits");
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap().unwrap();
    assert_eq!(mode(&entry.path().with_extension("lock")), 0o600);
}

#[tokio::test]
async fn the_credential_store_keeps_the_record_around_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let entry = Store::new(dir.path().join("creds")).entry("docs", "https://mcp.example/mcp");
    let metadata: AuthorizationMetadata = serde_json::from_value(serde_json::json!({
        "authorization_endpoint": "https://as.example/authorize",
        "token_endpoint": "https://as.example/token",
        "issuer": "https://as.example",
    }))
    .unwrap();
    let store = entry.credential_store(Some(metadata), Some("http://127.0.0.1:9/callback".into()));
    assert!(store.load().await.unwrap().is_none());
    store.save(credentials("one")).await.unwrap();
    assert_eq!(store.load().await.unwrap().and_then(|c| c.token_received_at), Some(7), "loaded back");
    let kept = entry.read().unwrap().unwrap();
    assert_eq!(kept.metadata.as_ref().and_then(|m| m.issuer.as_deref()), Some("https://as.example"));
    assert_eq!(kept.redirect_uri.as_deref(), Some("http://127.0.0.1:9/callback"));
    // A store that knows no metadata (a later refresh) keeps what the file has.
    let later = entry.credential_store(None, None);
    later.save(credentials("two")).await.unwrap();
    let kept = entry.read().unwrap().unwrap();
    assert_eq!(kept.access_token(), Some("two"));
    assert_eq!(kept.metadata.and_then(|m| m.token_endpoint.into()), Some("https://as.example/token".to_owned()));
    assert_eq!(kept.redirect_uri.as_deref(), Some("http://127.0.0.1:9/callback"));
    later.clear().await.unwrap();
    assert!(later.load().await.unwrap().is_none());
}
