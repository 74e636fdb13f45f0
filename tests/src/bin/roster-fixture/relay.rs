//! Byte relays that parse nothing, for the benchmarks: what a call costs when
//! it passes through one more process and nothing else is done with it, the
//! floor of any relay such as `roster serve`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};

/// Copies `from` to `to`, flushing after every read, until `from` ends.
fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `program` with its stdin and stdout passed through from this
/// process's; returns its exit code once its stdout has ended.
pub(crate) fn pipe(program: &[String]) -> i32 {
    let Some((command, args)) = program.split_first() else {
        eprintln!("roster-fixture pipe: a program to run");
        return 2;
    };
    let mut child = match Command::new(command).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("roster-fixture pipe: {command}: {e}");
            return 1;
        }
    };
    let (Some(to_child), Some(from_child)) = (child.stdin.take(), child.stdout.take()) else { return 1 };
    // Ending with stdin, this thread drops the child's stdin: it sees the end too.
    std::thread::spawn(move || copy(std::io::stdin().lock(), to_child));
    copy(from_child, std::io::stdout().lock());
    child.wait().ok().and_then(|status| status.code()).unwrap_or(1)
}

/// Listens on 127.0.0.1 (any free port), prints `listening on
/// http://127.0.0.1:PORT`, and passes every connection through to `target`.
pub(crate) fn tcp(target: &str) -> i32 {
    let listener = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr().map(|a| (l, a))) {
        Ok((listener, addr)) => {
            println!("listening on http://{addr}");
            let _ = std::io::stdout().flush();
            listener
        }
        Err(e) => {
            eprintln!("roster-fixture tcp-pipe: {e}");
            return 1;
        }
    };
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(target) else { continue };
        for stream in [&client, &server] {
            let _ = stream.set_nodelay(true);
        }
        let (Ok(client_2), Ok(server_2)) = (client.try_clone(), server.try_clone()) else { continue };
        std::thread::spawn(move || {
            copy(&client, &server);
            let _ = server.shutdown(Shutdown::Write);
        });
        std::thread::spawn(move || {
            copy(&server_2, &client_2);
            let _ = client_2.shutdown(Shutdown::Write);
        });
    }
    0
}

/// The least an rmcp-based relay does: an MCP server over stdio whose tool
/// calls and lists go, as rmcp's typed requests, to one MCP client of
/// `program`. No names rewritten, no routing table, no supervision: what is
/// left of `roster serve`'s cost once its own work is taken out.
pub(crate) async fn rmcp_proxy(program: &[String]) -> i32 {
    use rmcp::ServiceExt;
    let Some((command, args)) = program.split_first() else {
        eprintln!("roster-fixture rmcp-proxy: a program to run");
        return 2;
    };
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args);
    let upstream = match rmcp::transport::TokioChildProcess::new(cmd) {
        Ok(process) => match ().serve(process).await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("roster-fixture rmcp-proxy: {command} did not initialize: {e}");
                return 1;
            }
        },
        Err(e) => {
            eprintln!("roster-fixture rmcp-proxy: {command}: {e}");
            return 1;
        }
    };
    let proxy = Proxy { upstream: upstream.peer().clone() };
    // Non-blocking pipes, as `roster serve` reads and writes them (tokio's
    // stdin and stdout go through a blocking thread).
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let input = std::io::stdin().as_fd().try_clone_to_owned().and_then(pipe::Receiver::from_owned_fd);
    let output = std::io::stdout().as_fd().try_clone_to_owned().and_then(pipe::Sender::from_owned_fd);
    let (Ok(input), Ok(output)) = (input, output) else {
        eprintln!("roster-fixture rmcp-proxy: stdin and stdout must be pipes");
        return 2;
    };
    let code = match proxy.serve((input, output)).await {
        Ok(running) => {
            let _ = running.waiting().await;
            0
        }
        Err(e) => {
            eprintln!("roster-fixture rmcp-proxy: the client did not initialize: {e}");
            1
        }
    };
    let _ = upstream.cancel().await;
    code
}

/// The same over Streamable HTTP: listens on 127.0.0.1 (any free port, printed
/// as the HTTP modes print it) and passes every session's tool calls and lists
/// to one rmcp client of the Streamable HTTP server at `url`.
pub(crate) async fn rmcp_proxy_http(url: &str) -> i32 {
    use rmcp::ServiceExt;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
    // reqwest is built with rustls and no crypto provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.to_owned());
    let upstream = match ().serve(transport).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("roster-fixture rmcp-proxy-http: {url} did not initialize: {e}");
            return 1;
        }
    };
    let proxy = Proxy { upstream: upstream.peer().clone() };
    let service = StreamableHttpService::new(
        move || Ok(proxy.clone()),
        std::sync::Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("roster-fixture rmcp-proxy-http: {e}");
            return 1;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on http://{addr}"),
        Err(e) => {
            eprintln!("roster-fixture rmcp-proxy-http: {e}");
            return 1;
        }
    }
    let _ = std::io::stdout().flush();
    // TCP_NODELAY, as roster serve and the fixture set it.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = axum::Router::new().nest_service("/mcp", service);
    let served = axum::serve(listener, router).await;
    let _ = upstream.cancel().await;
    i32::from(served.is_err())
}

#[derive(Clone)]
struct Proxy {
    upstream: rmcp::Peer<rmcp::RoleClient>,
}

impl rmcp::ServerHandler for Proxy {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(rmcp::model::ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<rmcp::model::PaginatedRequestParams>,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let tools =
            self.upstream.list_all_tools().await.map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let result =
            self.upstream.call_tool(request).await.map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
        Ok(result.into())
    }
}
