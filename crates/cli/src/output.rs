//! Human output: tables, event lines, plans; colour only on a terminal and never
//! with `NO_COLOR`.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roster_core::{FailureKind, Health, ServerStatus, State};
use roster_supervisor::{Action, Plan, ServerEvent};

use crate::exit;

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether stdout gets colour.
pub(crate) fn stdout_color() -> bool {
    !no_color() && std::io::stdout().is_terminal()
}

/// Whether stderr gets colour.
pub(crate) fn stderr_color() -> bool {
    !no_color() && std::io::stderr().is_terminal()
}

#[derive(Clone, Copy)]
pub(crate) enum Tone {
    Good,
    Bad,
    Warn,
    Dim,
}

/// `text` in `tone`, when `color` is on.
pub(crate) fn paint(text: &str, tone: Tone, color: bool) -> String {
    let code = match tone {
        Tone::Good => "32",
        Tone::Bad => "31",
        Tone::Warn => "33",
        Tone::Dim => "2",
    };
    if color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
}

pub(crate) fn state_tone(state: State) -> Tone {
    match state {
        State::Running | State::Connected => Tone::Good,
        State::Failed | State::Unreachable => Tone::Bad,
        State::AuthRequired | State::Starting | State::Stopping => Tone::Warn,
        State::Unknown | State::Stopped | State::Disconnected => Tone::Dim,
    }
}

/// The exit code for a failure class.
pub(crate) fn exit_code(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::NeedsCredentials => exit::AUTH,
        FailureKind::Transient | FailureKind::Cancelled => exit::TRANSIENT,
        FailureKind::Permanent => exit::PERMANENT,
    }
}

/// `1h2m`, `3m4s`, `5.2s`, `80ms`.
pub(crate) fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else if d >= Duration::from_secs(1) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix-millisecond timestamp.
pub(crate) fn clock(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let text = humantime::format_rfc3339_millis(t).to_string();
    text.get(11..23).unwrap_or(&text).to_owned()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// The status table.
pub(crate) fn status_table(servers: &[ServerStatus], color: bool) -> String {
    let now = now_ms();
    let rows: Vec<[String; 8]> = servers
        .iter()
        .map(|s| {
            let retry = s.next_retry_after.map_or_else(String::new, |t| {
                if t > now {
                    format!("in {}", short_duration(Duration::from_millis(t - now)))
                } else {
                    "now".to_owned()
                }
            });
            let health = match s.health {
                Health::Unknown => "-".to_owned(),
                Health::Healthy | Health::Unhealthy => s.health.to_string(),
            };
            [
                s.name.clone(),
                s.server_type.to_string(),
                s.state.to_string(),
                health,
                s.consecutive_failures.to_string(),
                retry,
                s.uptime_ms.map(|u| short_duration(Duration::from_millis(u))).unwrap_or_default(),
                ellipsize(&s.last_error.clone().unwrap_or_default().replace('\n', " "), 100),
            ]
        })
        .collect();
    let header = ["NAME", "TYPE", "STATE", "HEALTH", "FAILURES", "NEXT RETRY", "UPTIME", "LAST ERROR"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()).take(7) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 7 {
                let pad = widths[i].saturating_sub(crate::output::visible_len(cell));
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| paint(h, Tone::Dim, color)).collect(), &mut out);
    for (row, s) in rows.into_iter().zip(servers) {
        let mut cells = row.to_vec();
        cells[2] = paint(&cells[2], state_tone(s.state), color);
        line(cells, &mut out);
    }
    out
}

/// At most `max` characters, with `…` when cut.
pub(crate) fn ellipsize(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Length without ANSI escapes.
pub(crate) fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// One event as a line: time, server (padded to `width`), from → to, reason, error.
pub(crate) fn event_line(e: &ServerEvent, width: usize, color: bool) -> String {
    let ev = &e.event;
    let change = if ev.previous_state == ev.state {
        if ev.previous_health == ev.health {
            ev.state.to_string()
        } else {
            format!("{} ({} → {})", ev.state, ev.previous_health, ev.health)
        }
    } else {
        format!("{} → {}", ev.previous_state, ev.state)
    };
    let reason = ev.reason.map(|r| r.as_str().trim_start_matches("MCPServer").to_owned()).unwrap_or_default();
    // RecoveryFailed follows a Failed that already said why.
    let error = match ev.reason {
        Some(roster_core::Reason::RecoveryFailed) => String::new(),
        Some(_) | None => ev.error.as_deref().map(|x| format!(": {x}")).unwrap_or_default(),
    };
    format!(
        "{}  {:width$}  {}  {}{}",
        paint(&clock(e.at_unix_ms), Tone::Dim, color),
        e.server,
        paint(&change, state_tone(ev.state), color),
        reason,
        error
    )
    .trim_end()
    .to_owned()
}

/// A plan, one line per change (and a summary when nothing changes).
pub(crate) fn plan_lines(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .changes()
        .map(|step| {
            let why = if step.fields.is_empty() {
                String::new()
            } else {
                format!(" ({})", step.fields.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "))
            };
            let what = match step.action {
                Action::Add { start: true } => "add and start",
                Action::Add { start: false } => "add (auto_start is off)",
                Action::Remove => "remove (stop and drop)",
                Action::Restart => "restart",
                Action::Update => "update (down: not started)",
                Action::Start => "update and start (auto_start switched on)",
                Action::Metadata => "update in place (metadata only)",
                Action::Unchanged => "unchanged",
            };
            format!("{}: {what}{why}", step.server)
        })
        .collect();
    if out.is_empty() {
        out.push("no changes".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(short_duration(Duration::from_millis(80)), "80ms");
        assert_eq!(short_duration(Duration::from_millis(5200)), "5.2s");
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(184)), "3m4s");
        assert_eq!(short_duration(Duration::from_secs(3720)), "1h2m");
    }

    #[test]
    fn colour_is_off_unless_asked() {
        assert_eq!(paint("x", Tone::Good, false), "x");
        assert_eq!(paint("x", Tone::Good, true), "\x1b[32mx\x1b[0m");
        assert_eq!(visible_len(&paint("abc", Tone::Bad, true)), 3);
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123");
    }
}
