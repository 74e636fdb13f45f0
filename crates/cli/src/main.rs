//! `roster`: keeps MCP servers alive.
//!
//! Runs the MCP configurations people already have (roster's TOML, Claude
//! Desktop / Cursor `mcpServers` JSON, VS Code `servers` JSON), shows what happens
//! as it happens, stops cleanly, and is scriptable with stable JSON and exit codes:
//! 0 ok, 1 a tool reported an error, 2 usage or configuration error, 3 auth
//! required, 4 transient failure, 5 permanent failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod config;
mod control;
mod login;
mod metrics;
mod oneshot;
mod output;
mod paths;
mod serve;
mod up;

/// Exit codes, stable for scripts.
pub(crate) mod exit {
    /// Everything worked.
    pub(crate) const OK: u8 = 0;
    /// `call`: the call succeeded, but the tool reported an error. `up`: a server
    /// outlived the shutdown timeout and was killed.
    pub(crate) const TOOL_ERROR: u8 = 1;
    /// `up`: servers did not stop within the shutdown timeout and were killed.
    pub(crate) const UNCLEAN: u8 = 1;
    /// A command that prints and exits could not write all of its output.
    pub(crate) const OUTPUT_LOST: u8 = 1;
    /// Bad usage, a bad configuration, or nothing to talk to.
    pub(crate) const USAGE: u8 = 2;
    /// The server wants credentials.
    pub(crate) const AUTH: u8 = 3;
    /// A transient failure: trying again may work.
    pub(crate) const TRANSIENT: u8 = 4;
    /// A permanent failure: it will not work until something changes.
    pub(crate) const PERMANENT: u8 = 5;
    /// Stopped by a second signal: everything was killed at once.
    pub(crate) const FORCED: u8 = 130;
}

/// roster keeps MCP servers alive: it starts them, health-checks them with MCP
/// ping, restarts them with backoff, and tells you what happened.
#[derive(Debug, Parser)]
#[command(name = "roster", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The configuration: roster TOML, or an MCP client's JSON (Claude Desktop,
    /// Cursor, VS Code).
    #[arg(long, short = 'c', global = true, value_name = "PATH", default_value = "roster.toml")]
    pub(crate) config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// How logs (on stderr, filtered by RUST_LOG) are written.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Write what roster writes to stderr (its notes, warnings, errors and
    /// logs) to PATH instead, appended (created owner-only): for `serve` under
    /// an MCP client that keeps no server's stderr.
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate the configuration and list the servers it would run.
    Check,
    /// Supervise the servers in the foreground until Ctrl-C or SIGTERM.
    Up {
        #[command(flatten)]
        options: up::UpOptions,
    },
    /// Supervise like `up`, and serve one MCP server in front of every server
    /// (over stdio, or Streamable HTTP with --http): what an MCP client runs.
    Serve {
        #[command(flatten)]
        options: up::UpOptions,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// The status of every server of a running `up` or `serve`.
    Status {
        /// Keep the table up to date: redrawn in place on a terminal, one line
        /// per change otherwise. Ends with Ctrl-C or when `up` stops.
        #[arg(long)]
        watch: bool,
    },
    /// Start a server of a running `up`.
    Start {
        /// The server's name.
        name: String,
    },
    /// Stop a server of a running `up`.
    Stop {
        /// The server's name.
        name: String,
    },
    /// Restart a server of a running `up`.
    Restart {
        /// The server's name.
        name: String,
    },
    /// Follow the events of a running `up`.
    Events {
        /// First replay the kept events numbered after SEQ (every event carries
        /// its number, `seq`), then follow: a script resumes where it left off.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// What reloading the configuration file would do now, and why.
    Plan,
    /// Connect to one server, ping it, disconnect.
    Ping {
        #[command(flatten)]
        target: oneshot::TargetArgs,
    },
    /// Connect to one server, list its tools, disconnect.
    Tools {
        #[command(flatten)]
        target: oneshot::TargetArgs,
    },
    /// Connect to one server, call a tool, disconnect.
    Call {
        /// The tool's name.
        tool: String,
        #[command(flatten)]
        target: oneshot::TargetArgs,
        /// The arguments, as a JSON object.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
    },
    /// Log in to a remote server with OAuth (a browser; PKCE), and keep its tokens.
    Login {
        #[command(flatten)]
        args: login::LoginArgs,
    },
    /// Remove (and revoke) a remote server's tokens.
    Logout {
        #[command(flatten)]
        args: login::LogoutArgs,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn init_logging(format: LogFormat) {
    // rmcp logs every failed connection as an error; roster reports them itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,rmcp=off".into());
    // rmcp's OAuth code logs authorization codes at debug level: never, whatever RUST_LOG says.
    let filter = match "rmcp::transport::auth=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // Logs go through stderr's queue (never blocking a runtime thread), and a
    // write that fails is not reported by writing again.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(output::LogWriter).log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(output::stderr_color()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How long the output may take to drain at exit, when its reader is slow.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Makes `path` roster's stderr: opened for appending (created owner-only), and
/// put in place of file descriptor 2, so that every write to stderr, a panic's
/// included, goes there.
fn log_to(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    rustix::stdio::dup2_stderr(&file)?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.log_file
        && let Err(e) = log_to(path)
    {
        eprintln!("roster: cannot write the log file {}: {e}", path.display());
        return ExitCode::from(exit::USAGE);
    }
    let mode = match cli.command {
        Command::Up { .. } | Command::Serve { .. } => output::Mode::Lossy,
        _ => output::Mode::Blocking,
    };
    output::init(mode, cli.json);
    init_logging(cli.log_format);
    let code = if let Command::Completions { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "roster", &mut script);
        output::out_lines(&String::from_utf8_lossy(&script));
        exit::OK
    } else {
        // One thread: a supervisor waits on pipes, sockets and timers; it never computes.
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(run(&cli)),
            Err(e) => {
                output::err(format!("roster: cannot start the runtime: {e}"));
                exit::USAGE
            }
        }
    };
    let lost = output::finish(DRAIN);
    // A command that prints and exits says so when its output did not all reach
    // stdout (a full disk); `up` warned as it went and keeps its own code.
    let code =
        if lost && code == exit::OK && matches!(mode, output::Mode::Blocking) { exit::OUTPUT_LOST } else { code };
    ExitCode::from(code)
}

async fn run(cli: &Cli) -> u8 {
    match &cli.command {
        Command::Check => up::check(cli),
        Command::Up { options } => up::up(cli, *options, None).await,
        Command::Serve { options, args } => up::up(cli, *options, Some(args)).await,
        Command::Status { watch } => control::status(cli, *watch).await,
        Command::Start { name } => control::act(cli, "start", name).await,
        Command::Stop { name } => control::act(cli, "stop", name).await,
        Command::Restart { name } => control::act(cli, "restart", name).await,
        Command::Events { since } => control::events(cli, *since).await,
        Command::Plan => control::plan(cli).await,
        Command::Ping { target } => oneshot::run(cli, target, oneshot::Op::Ping).await,
        Command::Tools { target } => oneshot::run(cli, target, oneshot::Op::Tools).await,
        Command::Call { tool, target, args } => {
            oneshot::run(cli, target, oneshot::Op::Call { tool: tool.clone(), args: args.clone() }).await
        }
        Command::Login { args } => login::login(cli, args).await,
        Command::Logout { args } => login::logout(cli, args).await,
        Command::Completions { .. } => exit::OK,
    }
}
