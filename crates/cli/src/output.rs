//! Output: what roster writes to stdout and stderr, and how it looks.
//!
//! Nothing is written from a runtime thread: every line goes through a queue to a
//! writer thread of its own per stream ([`init`]). A write that fails never
//! panics: a closed stdout (broken pipe) ends the output and is reported once
//! through [`stdout_closed`] (`up` stops on it, as on SIGTERM); any other failure (a
//! full disk) is a warning on stderr, and output goes on when the stream recovers.
//! For `up` the queues are bounded and lossy ([`Mode::Lossy`]): when nobody reads,
//! lines are dropped, counted, and the count is printed once output flows again;
//! supervision never waits for a terminal. Other commands wait for their reader
//! ([`Mode::Blocking`]), but a closed stdout still ends their output quietly.
//!
//! Colour follows anstream's choice (a terminal, `NO_COLOR`, `CLICOLOR`,
//! `CLICOLOR_FORCE`, `TERM=dumb`). Text that comes from servers (errors, stderr
//! lines, names from JSON) is shown with its control characters escaped, so that it
//! cannot move the cursor or rewrite the terminal.

use std::borrow::Cow;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anstyle::{AnsiColor, Style};
use roster_core::{FailureKind, Health, ServerStatus, State};
use roster_supervisor::{Action, Plan, ServerEvent};
use tokio::sync::watch;

use crate::exit;

/// Lines queued per stream before `up` starts dropping them.
const QUEUE: usize = 1024;

/// Whether a full queue waits or drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait for the reader (commands that print and exit).
    Blocking,
    /// Drop and count (`up`: supervision never waits on a terminal).
    Lossy,
}

struct Stream {
    tx: Mutex<Option<SyncSender<String>>>,
    mode: Mode,
    dropped: Arc<AtomicU64>,
    done: Mutex<Option<Receiver<()>>>,
}

struct Streams {
    out: Stream,
    err: Stream,
    closed: watch::Receiver<bool>,
    out_color: bool,
    err_color: bool,
}

static STREAMS: OnceLock<Streams> = OnceLock::new();

/// Set when a line meant for stdout could not be written (a full disk; not a
/// reader that went away, which is a normal end).
static LOST: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
enum Which {
    Stdout,
    Stderr,
}

/// Starts the writer threads. Called once, first thing. `json`: the note about
/// dropped lines is a JSON line too.
pub(crate) fn init(mode: Mode, json: bool) {
    let (closed_tx, closed) = watch::channel(false);
    let closed_tx = Arc::new(closed_tx);
    let out = spawn(Which::Stdout, mode, json, closed_tx.clone());
    let err = spawn(Which::Stderr, mode, false, closed_tx);
    let out_color = anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never;
    let err_color = anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never;
    let _ = STREAMS.set(Streams { out, err, closed, out_color, err_color });
}

fn spawn(which: Which, mode: Mode, json: bool, closed: Arc<watch::Sender<bool>>) -> Stream {
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
    let (done_tx, done) = std::sync::mpsc::channel();
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    let name = match which {
        Which::Stdout => "roster-stdout",
        Which::Stderr => "roster-stderr",
    };
    let spawned = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        write_lines(which, json, &rx, &counted, &closed);
        let _ = done_tx.send(());
    });
    let done = spawned.is_ok().then_some(done);
    Stream { tx: Mutex::new(Some(tx)), mode, dropped, done: Mutex::new(done) }
}

/// Whether the reader of stdout has gone (a pipe or socket whose other end is
/// closed), found without writing.
fn stdout_gone() -> bool {
    let stdout = std::io::stdout();
    let mut fds = [rustix::event::PollFd::new(&stdout, rustix::event::PollFlags::empty())];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(1))
        && fds[0].revents().intersects(rustix::event::PollFlags::ERR | rustix::event::PollFlags::HUP)
}

/// How often an idle stdout is checked for a reader that went away.
const PROBE: Duration = Duration::from_millis(500);

/// The writer thread of one stream.
fn write_lines(which: Which, json: bool, rx: &Receiver<String>, dropped: &AtomicU64, closed: &watch::Sender<bool>) {
    let mut failing = false;
    loop {
        let line = match rx.recv_timeout(PROBE) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Nothing to write: a closed stdout must still be noticed.
                if let Which::Stdout = which
                    && stdout_gone()
                {
                    closed.send_replace(true);
                    for _ in rx {}
                    return;
                }
                continue;
            }
        };
        let lost = dropped.swap(0, Ordering::SeqCst);
        let mut text = String::new();
        if lost > 0 {
            if json {
                text.push_str(&format!("{{\"dropped\":{lost}}}\n"));
            } else {
                text.push_str(&format!("… {lost} lines dropped: the output could not keep up\n"));
            }
        }
        text.push_str(&line);
        text.push('\n');
        let written = match which {
            Which::Stdout => {
                std::io::stdout().lock().write_all(text.as_bytes()).and_then(|()| std::io::stdout().flush())
            }
            Which::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
        };
        match written {
            Ok(()) => failing = false,
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                if let Which::Stdout = which {
                    closed.send_replace(true);
                }
                // Nobody reads any more: drain quietly.
                for _ in rx {}
                return;
            }
            Err(e) => {
                // A full disk and the like: say so once per episode, on the other stream.
                if !std::mem::replace(&mut failing, true)
                    && let Which::Stdout = which
                {
                    err(format!("roster: warning: cannot write to stdout ({e}); output is lost until it can"));
                }
                if let Which::Stdout = which {
                    LOST.store(true, Ordering::SeqCst);
                }
                dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn send(which: Which, line: String) {
    let Some(streams) = STREAMS.get() else {
        // Not initialized (unit tests): write directly, ignoring failures.
        let _ = match which {
            Which::Stdout => writeln!(std::io::stdout(), "{line}"),
            Which::Stderr => writeln!(std::io::stderr(), "{line}"),
        };
        return;
    };
    let stream = match which {
        Which::Stdout => &streams.out,
        Which::Stderr => &streams.err,
    };
    let tx = stream.tx.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let Some(tx) = tx else { return };
    match stream.mode {
        Mode::Blocking => {
            let _ = tx.send(line);
        }
        Mode::Lossy => match tx.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                stream.dropped.fetch_add(1, Ordering::SeqCst);
            }
        },
    }
}

/// `n` things in words: "1 server", "3 servers".
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// One line to stdout.
pub(crate) fn out(line: impl Into<String>) {
    send(Which::Stdout, line.into());
}

/// One line to stderr.
pub(crate) fn err(line: impl Into<String>) {
    send(Which::Stderr, line.into());
}

/// Several lines to stdout (a table).
pub(crate) fn out_lines(text: &str) {
    for line in text.lines() {
        out(line);
    }
}

/// Resolves once stdout is closed (its reader went away).
pub(crate) async fn stdout_closed() {
    let Some(streams) = STREAMS.get() else { return std::future::pending().await };
    let mut closed = streams.closed.clone();
    let _ = closed.wait_for(|c| *c).await;
}

/// Lets the writers finish what is queued, at most `limit` each (a reader that
/// stopped reading does not keep roster from exiting). Stdout goes first: its
/// writer may still have a warning for stderr. Answers whether any stdout line
/// could not be written.
pub(crate) fn finish(limit: Duration) -> bool {
    let Some(streams) = STREAMS.get() else { return false };
    for stream in [&streams.out, &streams.err] {
        stream.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(done) = stream.done.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = done.recv_timeout(limit);
        }
    }
    LOST.load(Ordering::SeqCst)
}

/// A writer for tracing: each formatted event is one queued message on stderr.
#[derive(Clone, Copy, Default)]
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        err(text.strip_suffix('\n').unwrap_or(&text).to_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// Whether stdout gets colour.
pub(crate) fn stdout_color() -> bool {
    STREAMS.get().is_some_and(|s| s.out_color)
}

/// Whether stderr gets colour.
pub(crate) fn stderr_color() -> bool {
    STREAMS.get().is_some_and(|s| s.err_color)
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
    if !color {
        return text.to_owned();
    }
    let style = match tone {
        Tone::Good => Style::new().fg_color(Some(AnsiColor::Green.into())),
        Tone::Bad => Style::new().fg_color(Some(AnsiColor::Red.into())),
        Tone::Warn => Style::new().fg_color(Some(AnsiColor::Yellow.into())),
        Tone::Dim => Style::new().dimmed(),
    };
    format!("{style}{text}{style:#}")
}

/// `text` with its control characters (other than tab and, if `lines`, newline)
/// shown as escapes: text from a server cannot drive the terminal.
pub(crate) fn escape(text: &str, lines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t' && !(lines && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
        match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m}m", s / 3600),
        }
    } else if s >= 60 {
        match s % 60 {
            0 => format!("{}m", s / 60),
            rest => format!("{}m{rest}s", s / 60),
        }
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
            let health = match (s.health, s.ping_latency_us) {
                (Health::Unknown, _) => "-".to_owned(),
                (Health::Degraded, Some(us)) => format!("degraded ({})", short_duration(Duration::from_micros(us))),
                (Health::Healthy | Health::Degraded | Health::Unhealthy, _) => s.health.to_string(),
            };
            let error = match (&s.last_error, &s.warning) {
                (Some(error), _) => error.replace('\n', " "),
                (None, Some(warning)) => format!("warning: {}", warning.replace('\n', " ")),
                (None, None) => String::new(),
            };
            [
                escape(&s.name, false).into_owned(),
                s.server_type.to_string(),
                s.state.to_string(),
                health,
                s.consecutive_failures.to_string(),
                retry,
                s.uptime_ms.map(|u| short_duration(Duration::from_millis(u))).unwrap_or_default(),
                ellipsize(&escape(&error, false), 100),
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
                let pad = widths[i].saturating_sub(visible_len(cell));
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
    for s in servers.iter().filter(|s| s.state == State::AuthRequired) {
        let name = escape(&s.name, false);
        out.push_str(&format!("{name} waits for a login: roster login {name}\n"));
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

/// Length without ANSI escapes (those roster writes itself: CSI … m).
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
        Some(_) | None => ev.error.as_deref().map(|x| format!(": {}", escape(x, false))).unwrap_or_default(),
    };
    format!(
        "{}  {:width$}  {}  {}{}",
        paint(&clock(e.at_unix_ms), Tone::Dim, color),
        escape(&e.server, false),
        paint(&change, state_tone(ev.state), color),
        reason,
        error
    )
    .trim_end()
    .to_owned()
}

/// `up`'s compact output (without `-v`): one line per attempt of a retrying
/// server, one line per change otherwise. The steps inside an attempt or a
/// restart (starting, stopping, the Recovery* reasons) are left out, so a line
/// reads from the state last shown to the outcome: `failed → running`.
#[derive(Debug, Default)]
pub(crate) struct Compact {
    /// The state last shown per server.
    shown: std::collections::HashMap<String, State>,
}

impl Compact {
    /// The line for `e`, or `None` when the compact output leaves it out.
    pub(crate) fn line(&mut self, e: &ServerEvent, width: usize, color: bool) -> Option<String> {
        use roster_core::Reason;
        let ev = &e.event;
        let quiet_step = matches!(
            ev.reason,
            Some(
                Reason::RecoveryStarted
                    | Reason::RecoverySucceeded
                    | Reason::RecoveryFailed
                    | Reason::RecoveryAwaitingAuth
            )
        ) || matches!(ev.state, State::Starting | State::Stopping);
        if quiet_step {
            // A line after the steps reads from where they began.
            self.shown.entry(e.server.clone()).or_insert(ev.previous_state);
            return None;
        }
        let from = self.shown.insert(e.server.clone(), ev.state).unwrap_or(ev.previous_state);
        let error = ev.error.as_deref().map(|x| escape(x, false).into_owned());
        let retry = ev.retry_in_ms.map(|ms| short_duration(Duration::from_millis(ms)));
        let text = match ev.reason {
            Some(Reason::ToolsMissing) => format!("warning: {}", error.unwrap_or_default()),
            // An attempt ended in failure: one line says which, why and what next.
            Some(Reason::Failed) if ev.previous_state == State::Starting => {
                let state = if ev.state == State::Failed { String::new() } else { format!("{}: ", ev.state) };
                let attempt =
                    if ev.failures > 0 { format!("attempt {} failed", ev.failures) } else { "failed".to_owned() };
                let next = retry.map_or_else(|| "; not retried".to_owned(), |d| format!("; next in {d}"));
                format!("{state}{attempt}: {}{next}", error.unwrap_or_default())
            }
            Some(_) | None => {
                let change = if from != ev.state {
                    format!("{from} → {}", ev.state)
                } else if ev.previous_health != ev.health {
                    format!("{} ({} → {})", ev.state, ev.previous_health, ev.health)
                } else {
                    ev.state.to_string()
                };
                let why = error.map(|x| format!(": {x}")).unwrap_or_default();
                let next = match (ev.reason, retry) {
                    (Some(Reason::Failed), Some(d)) => format!("; restart in {d}"),
                    (Some(_) | None, _) => String::new(),
                };
                format!("{change}{why}{next}")
            }
        };
        let tone = match ev.health {
            Health::Degraded => Tone::Warn,
            Health::Unknown | Health::Healthy | Health::Unhealthy => state_tone(ev.state),
        };
        Some(format!(
            "{}  {:width$}  {}",
            paint(&clock(e.at_unix_ms), Tone::Dim, color),
            escape(&e.server, false),
            paint(&text, tone, color)
        ))
    }
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
            format!("{}: {what}{why}", escape(&step.server, false))
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
    fn counts_take_the_plural_except_for_one() {
        assert_eq!(count(0, "server"), "0 servers");
        assert_eq!(count(1, "server"), "1 server");
        assert_eq!(count(2, "server"), "2 servers");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(short_duration(Duration::from_millis(80)), "80ms");
        assert_eq!(short_duration(Duration::from_millis(5200)), "5.2s");
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(184)), "3m4s");
        assert_eq!(short_duration(Duration::from_secs(3720)), "1h2m");
        assert_eq!(short_duration(Duration::from_secs(120)), "2m");
        assert_eq!(short_duration(Duration::from_secs(7200)), "2h");
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

    /// A server's lifecycle, run by the real core with every close answered at
    /// once and wall time counted from the Unix epoch.
    struct Run {
        name: &'static str,
        l: roster_core::Lifecycle,
        t0: std::time::Instant,
        now: std::time::Instant,
        events: Vec<ServerEvent>,
    }

    impl Run {
        fn new(name: &'static str, spec: roster_core::ServerSpec) -> Run {
            let now = std::time::Instant::now();
            let l = roster_core::Lifecycle::new(spec.validated().unwrap(), roster_core::Settings::default(), 1);
            Run { name, l, t0: now, now, events: Vec::new() }
        }

        /// Feeds `event`; returns the generation of a connect it asks for.
        fn feed(&mut self, event: roster_core::Event) -> Option<roster_core::Generation> {
            use roster_core::{Effect, Event};
            let t = self.l.handle(self.now, event);
            let mut connect = None;
            for effect in t.effects {
                match effect {
                    Effect::Publish(event) => self.events.push(ServerEvent {
                        seq: self.events.len() as u64 + 1,
                        server: self.name.to_owned(),
                        at_unix_ms: (self.now - self.t0).as_millis() as u64,
                        event,
                    }),
                    Effect::Connect { generation, .. } => connect = Some(generation),
                    Effect::CloseSession { generation } => {
                        connect = connect.or(self.feed(Event::SessionClosed { generation }));
                    }
                    Effect::CancelConnect { .. }
                    | Effect::Ping { .. }
                    | Effect::ListTools { .. }
                    | Effect::CallAuthHook(_)
                    | Effect::Reply(_) => {}
                }
            }
            connect
        }

        /// Waits for the next deadline and fires it.
        fn fire(&mut self) -> Option<roster_core::Generation> {
            self.now = self.l.poll_timeout().expect("a deadline");
            self.feed(roster_core::Event::Timeout)
        }

        fn compact(&self) -> String {
            let mut compact = Compact::default();
            let lines: Vec<String> = self.events.iter().filter_map(|e| compact.line(e, 4, false)).collect();
            lines.join("\n")
        }
    }

    #[test]
    fn compact_output_golden_a_retrying_remote_server_says_one_line_per_attempt() {
        use roster_core::{Event, Failure, ServerSpec, ServerType};
        let spec = ServerSpec::remote("gone", ServerType::StreamableHttp, "http://127.0.0.1:9/mcp");
        let mut run = Run::new("gone", spec);
        let refused = || Failure::transient("connection refused (os error 111)");
        let mut attempt = run.feed(Event::StartRequested);
        for _ in 0..5 {
            run.feed(Event::ConnectFailed { generation: attempt.unwrap(), failure: refused() });
            attempt = run.fire();
        }
        // Starting and Failed, then RecoveryStarted, Starting, Failed and
        // RecoveryFailed per retry, and the sixth attempt's first two.
        assert_eq!(run.events.len(), 2 + 4 * 4 + 2);
        let golden = "\
00:00:00.000  gone  attempt 1 failed: connection refused (os error 111); next in 30s
00:00:30.000  gone  attempt 2 failed: connection refused (os error 111); next in 1m
00:01:30.000  gone  unreachable: attempt 3 failed: server unreachable after 3 consecutive failures: connection refused (os error 111); next in 2m
00:03:30.000  gone  unreachable: attempt 4 failed: server unreachable after 4 consecutive failures: connection refused (os error 111); next in 4m
00:07:30.000  gone  unreachable: attempt 5 failed: server unreachable after 5 consecutive failures: connection refused (os error 111); next in 8m";
        assert_eq!(run.compact(), golden);
    }

    #[test]
    fn compact_output_golden_a_crashing_stdio_server_says_each_change_once() {
        use roster_core::{Event, Failure, ServerSpec};
        let mut run = Run::new("fs", ServerSpec::stdio("fs", "mcp-fs"));
        let attempt = run.feed(Event::StartRequested).unwrap();
        run.feed(Event::ConnectSucceeded { generation: attempt });
        for _ in 0..2 {
            let live = run.l.session().unwrap();
            run.now += Duration::from_secs(2);
            run.feed(Event::SessionLost { generation: live, failure: Failure::transient("exited with status 1") });
            let attempt = run.fire().unwrap();
            run.feed(Event::ConnectSucceeded { generation: attempt });
        }
        let live = run.l.session().unwrap();
        run.feed(Event::StopRequested);
        run.feed(Event::SessionClosed { generation: live });
        let golden = "\
00:00:00.000  fs    unknown → running
00:00:02.000  fs    running → failed: exited with status 1; restart in 200ms
00:00:02.200  fs    failed → running
00:00:04.200  fs    running → failed: exited with status 1; restart in 30s
00:00:34.200  fs    failed → running
00:00:34.200  fs    running → stopped";
        assert_eq!(run.compact(), golden);
    }

    #[test]
    fn compact_output_shows_health_changes_and_warnings_and_no_steps() {
        use roster_core::{Event, ServerSpec, ToolListing};
        let mut run = Run::new("fs", ServerSpec::stdio("fs", "mcp-fs"));
        let attempt = run.feed(Event::StartRequested).unwrap();
        run.feed(Event::ConnectSucceeded { generation: attempt });
        run.feed(Event::ToolsListed { generation: attempt, listing: ToolListing::Listed { count: 0 } });
        run.feed(Event::HealthCheckRequested);
        run.feed(Event::PingSucceeded { generation: attempt, latency: Duration::from_millis(6_500) });
        run.feed(Event::RestartRequested);
        let golden = "\
00:00:00.000  fs    unknown → running
00:00:00.000  fs    warning: offers tools but listed none: it may have started only half-way
00:00:00.000  fs    running (healthy → degraded): MCP ping took 6.5s, more than degraded_after (5s)
00:00:00.000  fs    running → stopped";
        assert_eq!(run.compact(), golden, "the restart's stopping step is left out");
    }

    #[test]
    fn control_characters_from_servers_are_escaped() {
        assert_eq!(escape("plain text\twith a tab", false), "plain text\twith a tab");
        assert_eq!(escape("\x1b[2J\x1b]0;pwned\x07boom", false), "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}boom");
        assert_eq!(escape("two\nlines\r", false), "two\\nlines\\r");
        assert_eq!(escape("two\nlines", true), "two\nlines");
        assert_eq!(escape("\u{9b}31m", false), "\\u{9b}31m", "C1 controls too");
    }
}
