//! What can go wrong over stdio, and its one classification into the core's classes.

use std::fmt;
use std::io;
use std::time::Duration;

use rmcp::service::{ClientInitializeError, ServiceError};
use roster_core::Failure;

use crate::process::Exit;

/// Lines of stderr quoted in a failure message.
const QUOTED_LINES: usize = 10;

/// A failure of the stdio transport, typed.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The process could not be started.
    #[error("{}", spawn_text(command, source))]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The working directory is missing or not a directory.
    #[error("working directory {cwd:?} does not exist or is not a directory")]
    Cwd {
        /// The directory configured.
        cwd: String,
    },
    /// A pipe to the child was not there (cannot happen with piped stdio).
    #[error("the server process has no {0} pipe")]
    MissingPipe(&'static str),
    /// The process exited before the handshake completed.
    #[error("server process exited during initialize ({}){}", shown(status), Stderr(stderr))]
    ExitedDuringInit {
        /// How it exited (`None`: still running, with its stdout closed).
        status: Option<Exit>,
        /// Its last lines of stderr.
        stderr: Vec<String>,
    },
    /// The live session ended by itself: the process exited, or closed its stdout.
    #[error("{}{}", match status { Some(s) => format!("server process exited ({s})"), None => "server closed its stdout".to_owned() }, Stderr(stderr))]
    Exited {
        /// How it exited (`None`: its stdout closed first).
        status: Option<Exit>,
        /// Its last lines of stderr.
        stderr: Vec<String>,
    },
    /// No answer to `initialize` in time.
    #[error("no answer to initialize within {}s{}", after.as_secs_f32(), Stderr(stderr))]
    InitTimeout {
        /// The timeout.
        after: Duration,
        /// The server's last lines of stderr.
        stderr: Vec<String>,
    },
    /// The handshake failed with the process still alive.
    #[error("initialize failed: {source}{}", Stderr(stderr))]
    Initialize {
        /// rmcp's error (boxed: it is large).
        #[source]
        source: Box<ClientInitializeError>,
        /// The server's last lines of stderr.
        stderr: Vec<String>,
    },
    /// A request on a live session failed.
    #[error("{0}")]
    Request(#[source] ServiceError),
}

fn shown(status: &Option<Exit>) -> String {
    status.as_ref().map_or_else(|| "still running".to_owned(), ToString::to_string)
}

fn spawn_text(command: &str, source: &io::Error) -> String {
    match source.kind() {
        io::ErrorKind::NotFound => format!("command not found: {command}"),
        io::ErrorKind::PermissionDenied => format!("permission denied running {command}"),
        _ => format!("cannot start {command}: {source}"),
    }
}

/// `; stderr: a | b | c`, or nothing.
pub(crate) struct Stderr<'a>(pub(crate) &'a [String]);

impl fmt::Display for Stderr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = &self.0[self.0.len().saturating_sub(QUOTED_LINES)..];
        if lines.is_empty() { Ok(()) } else { write!(f, "; stderr: {}", lines.join(" | ")) }
    }
}

/// The single place where stdio errors become the core's failure classes
/// (SPEC §4, reference/rmcp.md §8). Decided from types, never from text.
pub fn classify(error: &StdioError) -> Failure {
    let message = error.to_string();
    match error {
        StdioError::Spawn { source, .. } => match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => {
                Failure::permanent(message)
            }
            // ENOEXEC: a file that is not a program.
            _ if source.raw_os_error() == Some(8) => Failure::permanent(message),
            // Out of processes or descriptors and the like: may pass.
            _ => Failure::transient(message),
        },
        StdioError::Cwd { .. } => Failure::permanent(message),
        StdioError::MissingPipe(_)
        | StdioError::ExitedDuringInit { .. }
        | StdioError::Exited { .. }
        | StdioError::InitTimeout { .. } => Failure::transient(message),
        StdioError::Initialize { source, .. } => roster_transport::mcp::classify_init(source, message),
        StdioError::Request(e) => classify_request(e),
    }
}

/// A request on a live session: the server's own rejection (an unknown tool, bad
/// arguments) is permanent; a timeout or a closed transport is transient.
pub fn classify_request(error: &ServiceError) -> Failure {
    match error {
        ServiceError::McpError(_) => Failure::permanent(error.to_string()),
        _ => Failure::transient(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::{ErrorData, ProtocolVersion};
    use roster_core::FailureKind;

    use super::*;

    fn spawn(kind: io::ErrorKind) -> StdioError {
        StdioError::Spawn { command: "mcp-x".into(), source: io::Error::from(kind) }
    }

    fn exit(code: i32) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        Exit::Status(std::process::ExitStatus::from_raw(code << 8))
    }

    fn init(source: ClientInitializeError) -> StdioError {
        StdioError::Initialize { source: Box::new(source), stderr: vec![] }
    }

    #[test]
    fn classification_table() {
        let table: Vec<(StdioError, FailureKind)> = vec![
            (spawn(io::ErrorKind::NotFound), FailureKind::Permanent),
            (spawn(io::ErrorKind::PermissionDenied), FailureKind::Permanent),
            (
                StdioError::Spawn { command: "x".into(), source: io::Error::from_raw_os_error(8) },
                FailureKind::Permanent,
            ),
            (spawn(io::ErrorKind::WouldBlock), FailureKind::Transient),
            (StdioError::Cwd { cwd: "/nope".into() }, FailureKind::Permanent),
            (StdioError::ExitedDuringInit { status: Some(exit(1)), stderr: vec![] }, FailureKind::Transient),
            (StdioError::Exited { status: Some(exit(3)), stderr: vec![] }, FailureKind::Transient),
            (StdioError::Exited { status: None, stderr: vec![] }, FailureKind::Transient),
            (StdioError::InitTimeout { after: Duration::from_secs(10), stderr: vec![] }, FailureKind::Transient),
            (init(ClientInitializeError::ConnectionClosed("initialize response".into())), FailureKind::Transient),
            (init(ClientInitializeError::Cancelled), FailureKind::Cancelled),
            (init(ClientInitializeError::JsonRpcError(ErrorData::invalid_request("no", None))), FailureKind::Permanent),
            (init(ClientInitializeError::ExpectedInitResult(None)), FailureKind::Permanent),
            (
                init(ClientInitializeError::NoCompatibleProtocolVersion {
                    client_supported: vec![ProtocolVersion::V_2025_11_25],
                    server_supported: vec![],
                }),
                FailureKind::Permanent,
            ),
            (StdioError::Request(ServiceError::TransportClosed), FailureKind::Transient),
            (
                StdioError::Request(ServiceError::McpError(ErrorData::invalid_params("no such tool", None))),
                FailureKind::Permanent,
            ),
            (StdioError::MissingPipe("stdout"), FailureKind::Transient),
        ];
        for (error, expected) in table {
            assert_eq!(classify(&error).kind(), expected, "{error}");
        }
    }

    #[test]
    fn messages_name_the_command_and_quote_stderr() {
        assert_eq!(spawn(io::ErrorKind::NotFound).to_string(), "command not found: mcp-x");
        assert_eq!(spawn(io::ErrorKind::PermissionDenied).to_string(), "permission denied running mcp-x");
        assert_eq!(spawn(io::ErrorKind::WouldBlock).to_string(), "cannot start mcp-x: operation would block");
        let e =
            StdioError::ExitedDuringInit { status: Some(exit(3)), stderr: (0..15).map(|i| format!("l{i}")).collect() };
        assert_eq!(
            e.to_string(),
            "server process exited during initialize (exit status: 3); stderr: l5 | l6 | l7 | l8 | l9 | l10 | l11 | l12 | l13 | l14"
        );
        let e = StdioError::Exited { status: Some(exit(1)), stderr: vec!["boom".into()] };
        assert_eq!(e.to_string(), "server process exited (exit status: 1); stderr: boom");
        assert_eq!(StdioError::Exited { status: None, stderr: vec![] }.to_string(), "server closed its stdout");
    }
}
