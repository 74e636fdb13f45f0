//! A bare rmcp client, written the way rmcp's own examples write one, so that the
//! CLI benchmarks can run roster side by side with it doing the same work.
//!
//! ```text
//! bare-mcp tools -- COMMAND ARGS...   list the tools of a stdio server
//! bare-mcp tools URL                  list the tools of a Streamable HTTP server
//! bare-mcp ping URL                   ping a Streamable HTTP server
//! ```

#![allow(missing_docs)]

use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest, ProtocolVersion};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};

fn config() -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("bare-mcp", "0"))
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (op, rest) = args.split_first().ok_or("usage: bare-mcp tools|ping TARGET")?;
    let client = match rest {
        [dash, command, cmd_args @ ..] if dash == "--" => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(cmd_args);
            config().serve(TokioChildProcess::new(cmd)?).await?
        }
        [url] => config().serve(StreamableHttpClientTransport::from_uri(url.clone())).await?,
        _ => return Err("usage: bare-mcp tools|ping TARGET".into()),
    };
    match op.as_str() {
        "tools" => {
            let tools = client.list_all_tools().await?;
            for t in tools {
                println!("{}", t.name);
            }
        }
        "ping" => {
            client.send_request(ClientRequest::PingRequest(PingRequest::default())).await?;
            println!("pong");
        }
        other => return Err(format!("unknown operation {other}").into()),
    }
    client.cancel().await?;
    Ok(())
}
