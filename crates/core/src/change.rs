//! Which configuration changes need a restart (SPEC §8), and what a change does
//! to a server given what it is doing.
//!
//! [`configuration_changed`] compares two definitions of the same server and
//! says whether the new one needs a restart, can be swapped in place
//! (metadata only), or is the same. Unlike the reference, which stops at the
//! first difference, it lists every field that differs, so a reload plan can
//! say why. [`Lifecycle::change_outcome`](crate::Lifecycle::change_outcome) then
//! decides the [`ChangeAction`] from the server's phase: the machine applies
//! exactly that decision, and a reload plan prints exactly that decision.

use serde::{Deserialize, Serialize};

use crate::spec::{Field, ServerSpec};

/// What a new definition means for a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Nothing that matters differs.
    None,
    /// Only metadata differs (description, `auto_start` true→false): swap in place, no restart.
    MetadataOnly,
    /// The connection differs: the server must be restarted to apply it.
    Restart,
}

/// The result of [`configuration_changed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The verdict.
    pub kind: ChangeKind,
    /// Fields that need a restart, in definition order.
    pub restart_fields: Vec<Field>,
    /// Fields that differ but need no restart.
    pub metadata_fields: Vec<Field>,
}

impl Change {
    /// True when the change needs a restart (the reference's `ConfigurationChanged` result).
    pub fn needs_restart(&self) -> bool {
        self.kind == ChangeKind::Restart
    }
}

/// What a new definition does to a server now: the one decision that both
/// applying a change and planning it use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    /// Nothing that matters differs.
    Unchanged,
    /// Only metadata differs: swapped in place, nothing restarts.
    Metadata,
    /// The connection differs and the server is up, starting, failed, unreachable or
    /// waiting for credentials: restarted with the new definition. A restart already
    /// in progress is joined: its coming start uses the new definition.
    Restart,
    /// The server is down (never started, or stopped by request) and `auto_start`
    /// was switched on: swapped in and started.
    Start,
    /// The server is down, or being stopped: swapped in, not started.
    Update,
}

impl ChangeAction {
    /// The wire name (`unchanged`, `metadata`, `restart`, `start`, `update`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Unchanged => "unchanged",
            ChangeAction::Metadata => "metadata",
            ChangeAction::Restart => "restart",
            ChangeAction::Start => "start",
            ChangeAction::Update => "update",
        }
    }
}

/// What a definition change does, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecChange {
    /// What happens to the server.
    pub action: ChangeAction,
    /// Which fields differ.
    pub change: Change,
}

/// Compares `old` with `new` per SPEC §8.
///
/// Restart when any of url, command, type, args, env, headers, timeout,
/// tool_prefix, auth (runtime credentials ignored), cwd, inherit_env or pass_env
/// differ, or when `auto_start` goes false→true. Metadata only for a description
/// change or `auto_start` true→false. Lists and maps have no nil, so nil-vs-empty
/// never counts. The name is the server's identity and is not compared.
pub fn configuration_changed(old: &ServerSpec, new: &ServerSpec) -> Change {
    let auth_differs = match (&old.auth, &new.auth) {
        (None, None) => false,
        (Some(a), Some(b)) => a.spec_only() != b.spec_only(),
        (Some(_), None) | (None, Some(_)) => true,
    };
    let restart_checks = [
        (old.url != new.url, Field::Url),
        (old.command != new.command, Field::Command),
        (old.server_type != new.server_type, Field::Type),
        (!old.auto_start && new.auto_start, Field::AutoStart),
        (old.args != new.args, Field::Args),
        (old.env != new.env, Field::Env),
        (old.headers != new.headers, Field::Headers),
        (old.timeout != new.timeout, Field::Timeout),
        (old.tool_prefix != new.tool_prefix, Field::ToolPrefix),
        (auth_differs, Field::Auth),
        (old.cwd != new.cwd, Field::Cwd),
        (old.inherit_env != new.inherit_env, Field::InheritEnv),
        (old.pass_env != new.pass_env, Field::PassEnv),
    ];
    let metadata_checks = [
        (old.description != new.description, Field::Description),
        (old.auto_start && !new.auto_start, Field::AutoStart),
    ];
    let pick =
        |checks: &[(bool, Field)]| checks.iter().filter(|(differs, _)| *differs).map(|(_, f)| *f).collect::<Vec<_>>();
    let restart_fields = pick(&restart_checks);
    let metadata_fields = pick(&metadata_checks);
    let kind = if !restart_fields.is_empty() {
        ChangeKind::Restart
    } else if !metadata_fields.is_empty() {
        ChangeKind::MetadataOnly
    } else {
        ChangeKind::None
    };
    Change { kind, restart_fields, metadata_fields }
}

#[cfg(test)]
mod tests {
    //! Every case of the reference's `TestConfigurationChanged` (muster §8.1), by name.

    use super::*;
    use crate::spec::{AuthConfig, AuthType, ClientCredentials, ServerType, TokenExchange};

    fn stdio() -> ServerSpec {
        let mut s = ServerSpec::stdio("test", "cmd");
        s.auto_start = true;
        s
    }

    fn changed(old: &ServerSpec, new: &ServerSpec) -> bool {
        configuration_changed(old, new).needs_restart()
    }

    fn with(base: &ServerSpec, f: impl FnOnce(&mut ServerSpec)) -> ServerSpec {
        let mut s = base.clone();
        f(&mut s);
        s
    }

    #[test]
    fn no_change() {
        let c = configuration_changed(&stdio(), &stdio());
        assert_eq!(c.kind, ChangeKind::None);
        assert!(c.restart_fields.is_empty() && c.metadata_fields.is_empty());
    }

    #[test]
    fn command_changed() {
        let old = with(&stdio(), |s| s.command = "old-cmd".into());
        let new = with(&stdio(), |s| s.command = "new-cmd".into());
        assert!(changed(&old, &new));
        assert_eq!(configuration_changed(&old, &new).restart_fields, [Field::Command]);
    }

    #[test]
    fn url_changed() {
        let old = ServerSpec::remote("t", ServerType::StreamableHttp, "http://old-url");
        let new = ServerSpec::remote("t", ServerType::StreamableHttp, "http://new-url");
        assert!(changed(&old, &new));
    }

    #[test]
    fn type_changed() {
        let old = with(&stdio(), |s| s.server_type = ServerType::Stdio);
        let new = with(&stdio(), |s| s.server_type = ServerType::StreamableHttp);
        assert!(changed(&old, &new));
    }

    #[test]
    fn autostart_enabled() {
        let old = with(&stdio(), |s| s.auto_start = false);
        let new = with(&stdio(), |s| s.auto_start = true);
        assert!(changed(&old, &new));
        assert_eq!(configuration_changed(&old, &new).restart_fields, [Field::AutoStart]);
    }

    #[test]
    fn autostart_disabled_does_not_trigger_change() {
        let old = with(&stdio(), |s| s.auto_start = true);
        let new = with(&stdio(), |s| s.auto_start = false);
        let c = configuration_changed(&old, &new);
        assert!(!c.needs_restart());
        assert_eq!(c.kind, ChangeKind::MetadataOnly);
        assert_eq!(c.metadata_fields, [Field::AutoStart]);
    }

    #[test]
    fn args_changed() {
        let old = with(&stdio(), |s| s.args = vec!["old-arg".into()]);
        let new = with(&stdio(), |s| s.args = vec!["new-arg".into()]);
        assert!(changed(&old, &new));
    }

    #[test]
    fn args_added() {
        let new = with(&stdio(), |s| s.args = vec!["new-arg".into()]);
        assert!(changed(&stdio(), &new));
    }

    #[test]
    fn env_changed() {
        let old = with(&stdio(), |s| _ = s.env.insert("KEY".into(), "old-value".into()));
        let new = with(&stdio(), |s| _ = s.env.insert("KEY".into(), "new-value".into()));
        assert!(changed(&old, &new));
    }

    #[test]
    fn env_added() {
        let new = with(&stdio(), |s| _ = s.env.insert("NEW_KEY".into(), "value".into()));
        assert!(changed(&stdio(), &new));
    }

    #[test]
    fn headers_changed() {
        let base = ServerSpec::remote("t", ServerType::StreamableHttp, "http://x");
        let old = with(&base, |s| _ = s.headers.insert("Authorization".into(), "Bearer old-token".into()));
        let new = with(&base, |s| _ = s.headers.insert("Authorization".into(), "Bearer new-token".into()));
        assert!(changed(&old, &new));
    }

    #[test]
    fn timeout_changed() {
        let old = with(&stdio(), |s| s.timeout = Some(30));
        let new = with(&stdio(), |s| s.timeout = Some(60));
        assert!(changed(&old, &new));
    }

    #[test]
    fn timeout_added() {
        // The reference's 0 is "unset" here.
        let new = with(&stdio(), |s| s.timeout = Some(60));
        assert!(changed(&stdio(), &new));
    }

    #[test]
    fn tool_prefix_changed() {
        let old = with(&stdio(), |s| s.tool_prefix = "old_prefix".into());
        let new = with(&stdio(), |s| s.tool_prefix = "new_prefix".into());
        assert!(changed(&old, &new));
    }

    #[test]
    fn tool_prefix_added() {
        let new = with(&stdio(), |s| s.tool_prefix = "my_prefix".into());
        assert!(changed(&stdio(), &new));
    }

    #[test]
    fn description_change_does_not_trigger_restart() {
        let old = with(&stdio(), |s| s.description = "old".into());
        let new = with(&stdio(), |s| s.description = "new".into());
        let c = configuration_changed(&old, &new);
        assert_eq!(c.kind, ChangeKind::MetadataOnly);
        assert_eq!(c.metadata_fields, [Field::Description]);
    }

    #[test]
    fn no_change_with_all_fields() {
        let spec = with(&ServerSpec::remote("t", ServerType::StreamableHttp, "http://x"), |s| {
            s.headers.insert("H".into(), "v".into());
            s.env.insert("E".into(), "v".into());
            s.timeout = Some(30);
            s.tool_prefix = "p".into();
        });
        assert_eq!(configuration_changed(&spec, &spec.clone()).kind, ChangeKind::None);
    }

    fn oauth_forward() -> AuthConfig {
        AuthConfig { kind: AuthType::Oauth, forward_token: true, ..AuthConfig::default() }
    }

    fn remote_with_auth(auth: Option<AuthConfig>) -> ServerSpec {
        with(&ServerSpec::remote("t", ServerType::StreamableHttp, "http://x"), |s| s.auth = auth)
    }

    #[test]
    fn auth_added() {
        assert!(changed(&remote_with_auth(None), &remote_with_auth(Some(oauth_forward()))));
    }

    #[test]
    fn auth_removed() {
        assert!(changed(&remote_with_auth(Some(oauth_forward())), &remote_with_auth(None)));
    }

    #[test]
    fn auth_type_changed() {
        let old = AuthConfig { kind: AuthType::Oauth, ..AuthConfig::default() };
        let new = AuthConfig { kind: AuthType::None, ..AuthConfig::default() };
        assert!(changed(&remote_with_auth(Some(old)), &remote_with_auth(Some(new))));
    }

    #[test]
    fn auth_forward_token_changed() {
        let new = AuthConfig { forward_token: false, ..oauth_forward() };
        assert!(changed(&remote_with_auth(Some(oauth_forward())), &remote_with_auth(Some(new))));
    }

    #[test]
    fn auth_no_change() {
        assert!(!changed(&remote_with_auth(Some(oauth_forward())), &remote_with_auth(Some(oauth_forward()))));
    }

    fn token_exchange(scopes: &str, resolved: bool) -> AuthConfig {
        AuthConfig {
            kind: AuthType::Oauth,
            token_exchange: Some(TokenExchange {
                enabled: true,
                token_endpoint: "https://dex.example/token".into(),
                expected_issuer: "https://dex.example".into(),
                connector_id: "github".into(),
                scopes: scopes.into(),
                resolved: resolved
                    .then(|| ClientCredentials { client_id: "id".into(), client_secret: "secret".into() }),
            }),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn auth_token_exchange_runtime_credentials_differ_only() {
        let current = remote_with_auth(Some(token_exchange("openid profile", true)));
        let new = remote_with_auth(Some(token_exchange("openid profile", false)));
        assert!(!changed(&current, &new));
        // Neither input is changed by the comparison.
        assert!(current.auth.as_ref().unwrap().token_exchange.as_ref().unwrap().resolved.is_some());
    }

    #[test]
    fn auth_token_exchange_spec_field_changed() {
        let current = remote_with_auth(Some(token_exchange("openid profile", true)));
        let new = remote_with_auth(Some(token_exchange("openid profile offline_access", false)));
        assert!(changed(&current, &new));
    }

    // roster additions.
    #[test]
    fn cwd_and_environment_policy_changes_need_a_restart() {
        let new = with(&stdio(), |s| s.cwd = Some("/srv".into()));
        assert_eq!(configuration_changed(&stdio(), &new).restart_fields, [Field::Cwd]);
        let new = with(&stdio(), |s| s.inherit_env = false);
        assert_eq!(configuration_changed(&stdio(), &new).restart_fields, [Field::InheritEnv]);
    }

    #[test]
    fn every_differing_field_is_listed() {
        let old = with(&stdio(), |s| s.auto_start = false);
        let new = with(&old, |s| {
            s.command = "x".into();
            s.args = vec!["a".into()];
            s.description = "d".into();
        });
        let c = configuration_changed(&old, &new);
        assert_eq!(c.restart_fields, [Field::Command, Field::Args]);
        assert_eq!(c.metadata_fields, [Field::Description]);
        assert_eq!(c.kind, ChangeKind::Restart);
    }

    #[test]
    fn change_actions_have_wire_names() {
        let actions = [
            (ChangeAction::Unchanged, "unchanged"),
            (ChangeAction::Metadata, "metadata"),
            (ChangeAction::Restart, "restart"),
            (ChangeAction::Start, "start"),
            (ChangeAction::Update, "update"),
        ];
        for (action, name) in actions {
            assert_eq!(action.as_str(), name);
            assert_eq!(serde_json::to_value(action).unwrap(), name);
        }
    }

    #[test]
    fn name_is_not_compared() {
        let new = with(&stdio(), |s| s.name = "other".into());
        assert_eq!(configuration_changed(&stdio(), &new).kind, ChangeKind::None);
    }
}
