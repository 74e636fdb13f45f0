//! A second `roster serve` over stdio on a configuration that another one
//! holds: its client is served by the holder, through the holder's sharing
//! socket, and the bridge passes the client's JSON-RPC lines through as they
//! are. When the holder stops, the client's session goes on with a new holder
//! (the bridge replays what that one must have heard), and the requests the old
//! holder took and never answered are answered with an error.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;

use super::{Reader, Writer, stdio};

/// How long, after its client closed stdin, an attached `serve` waits for the
/// one it is attached to to close the session.
const DETACH_WAIT: Duration = Duration::from_secs(5);

/// The longest line passed through a sharing socket; a longer one ends the
/// session (rmcp's own stdio transport has no limit; this one keeps a bridge
/// from buffering without end).
const MAX_LINE: usize = 64 << 20;

/// What the client is sent in place of the answer to a replayed `initialize`:
/// nothing; and what the new holder is sent after it.
const INITIALIZED: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";

/// The id a bridge gives the client's `logging/setLevel` when it replays it to
/// a new holder; the answer to it is dropped.
const REPLAYED: &str = "roster-replayed-set-level";

/// How a bridged session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bridged {
    /// The client closed stdin.
    ClientGone,
    /// The `serve` at the other end went away; the client is still there.
    HolderGone,
}

/// A client of this process served by the `serve` that holds the
/// configuration, through its sharing socket: JSON-RPC lines passed through as
/// they are. The client's `initialize` is kept, so that when the holder stops
/// the client's session can go on with a new one (which may be this process):
/// the request is replayed there and its answer, which the client already has,
/// dropped. So is the client's last `logging/setLevel`.
pub(crate) struct Bridge {
    input: tokio::io::BufReader<Reader>,
    output: Writer,
    /// The client's `initialize` request, as it sent it.
    hello: Option<Vec<u8>>,
    /// The client's last `logging/setLevel` request, with the id [`REPLAYED`].
    level: Option<Vec<u8>>,
    /// A line read from the client that the last holder did not take.
    pending: Option<Vec<u8>>,
    /// The ids (as JSON) of the client's requests the holder has not answered.
    outstanding: std::collections::HashSet<String>,
}

/// Reads one line, newline included, of at most [`MAX_LINE`] bytes; empty at
/// the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(from: &mut R) -> std::io::Result<Vec<u8>> {
    read_bounded(from, MAX_LINE).await
}

/// [`read_line`] with the longest line `max` (give or take the reader's buffer).
async fn read_bounded<R: tokio::io::AsyncBufRead + Unpin>(from: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = Vec::new();
    loop {
        let chunk = from.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(line);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        from.consume(take);
        if done {
            return Ok(line);
        }
        if line.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {max} bytes"),
            ));
        }
    }
}

/// What a bridge reads of a JSON-RPC line: whether it is a request (an id and a
/// method) or a response (an id alone), and the method.
#[derive(serde::Deserialize)]
struct Head<'a> {
    id: Option<serde_json::Value>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
}

fn head(line: &[u8]) -> Option<Head<'_>> {
    serde_json::from_slice(line).ok()
}

/// `line`, a JSON-RPC request, with its id replaced by `id`; None if it is not
/// a JSON object.
fn with_id(line: &[u8], id: &str) -> Option<Vec<u8>> {
    let mut request: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
    request.insert("id".into(), id.into());
    let mut line = serde_json::to_vec(&request).ok()?;
    line.push(b'\n');
    Some(line)
}

/// The answer to a request of the client's that the holder took and never
/// answered: it stopped.
fn unanswered(id: &str) -> Vec<u8> {
    let message = "roster: the roster serve this request went to stopped before answering; send it again";
    let mut line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{{\"code\":-32603,\"message\":{}}}}}",
        serde_json::Value::from(message)
    )
    .into_bytes();
    line.push(b'\n');
    line
}

impl Bridge {
    /// The client on this process's stdin and stdout.
    pub(crate) fn new() -> Bridge {
        let (input, output) = stdio();
        Bridge::over(input, output)
    }

    /// The client that writes to `input` and reads `output`.
    fn over(input: Reader, output: Writer) -> Bridge {
        Bridge {
            input: tokio::io::BufReader::new(input),
            output,
            hello: None,
            level: None,
            pending: None,
            outstanding: Default::default(),
        }
    }

    /// Connects to the sharing socket at `path`, trying for `wait` (a holder
    /// may be between its lock and its bind).
    pub(crate) async fn connect(path: &Path, wait: Duration) -> Option<UnixStream> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => return Some(stream),
                Err(_) if tokio::time::Instant::now() < until => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => return None,
            }
        }
    }

    /// Serves the client through `stream` until one side ends.
    ///
    /// # Errors
    /// Reading the client's stdin or writing its stdout failed.
    pub(crate) async fn run<S>(&mut self, stream: S) -> std::io::Result<Bridged>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    {
        let (from_holder, mut to_holder) = tokio::io::split(stream);
        let mut from_holder = tokio::io::BufReader::new(from_holder);
        if let Some(hello) = &self.hello {
            // The client is initialized already: initialize this session alike.
            if to_holder.write_all(hello).await.is_err()
                || read_line(&mut from_holder).await.map_or(true, |answer| answer.is_empty())
            {
                return Ok(Bridged::HolderGone);
            }
            if to_holder.write_all(INITIALIZED).await.is_err() {
                return Ok(Bridged::HolderGone);
            }
        }
        let mut replayed = false;
        if let Some(level) = &self.level {
            if to_holder.write_all(level).await.is_err() {
                return Ok(Bridged::HolderGone);
            }
            replayed = true;
        }
        let Bridge { input, output, hello, level, pending, outstanding } = self;
        let outstanding = std::cell::RefCell::new(outstanding);
        let up = async {
            loop {
                let line = match pending.take() {
                    Some(line) => line,
                    None => read_line(input).await?,
                };
                if line.is_empty() {
                    let _ = to_holder.shutdown().await;
                    return Ok::<_, std::io::Error>(());
                }
                let request = match head(&line) {
                    Some(Head { id: Some(id), method: Some(method) }) => {
                        if hello.is_none() && method == "initialize" {
                            *hello = Some(line.clone());
                        } else if method == "logging/setLevel" {
                            *level = with_id(&line, REPLAYED).or(level.take());
                        }
                        let id = id.to_string();
                        outstanding.borrow_mut().insert(id.clone());
                        Some(id)
                    }
                    _ => None,
                };
                if to_holder.write_all(&line).await.is_err() {
                    // Not taken: it goes to the next holder, and is answered there.
                    if let Some(id) = request {
                        outstanding.borrow_mut().remove(&id);
                    }
                    *pending = Some(line);
                    return std::future::pending().await;
                }
            }
        };
        let down = async {
            loop {
                // A read that fails is the holder's end going away, as is the end.
                let line = read_line(&mut from_holder).await.unwrap_or_default();
                if line.is_empty() {
                    return Ok::<_, std::io::Error>(());
                }
                if (replayed || !outstanding.borrow().is_empty())
                    && let Some(Head { id: Some(id), method: None }) = head(&line)
                {
                    if replayed && id.as_str() == Some(REPLAYED) {
                        // The answer to the replayed setLevel: the client had its own.
                        replayed = false;
                        continue;
                    }
                    outstanding.borrow_mut().remove(&id.to_string());
                }
                output.write_all(&line).await?;
                output.flush().await?;
            }
        };
        let ended = {
            tokio::pin!(up, down);
            tokio::select! {
                ended = &mut down => {
                    // The client's side may have failed first (its stdout closed).
                    ended?;
                    Bridged::HolderGone
                }
                ended = &mut up => {
                    ended?;
                    // The client has gone: let the holder close its session.
                    let _ = tokio::time::timeout(DETACH_WAIT, down).await;
                    Bridged::ClientGone
                }
            }
        };
        if ended == Bridged::HolderGone {
            // What the holder took and did not answer, it never will.
            let mut ids: Vec<String> = outstanding.into_inner().drain().collect();
            ids.sort();
            for id in ids {
                output.write_all(&unanswered(&id)).await?;
            }
            output.flush().await?;
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, DuplexStream, ReadHalf, WriteHalf};

    /// The client's end of a bridge: what it writes, the bridge reads.
    struct Client {
        to: WriteHalf<DuplexStream>,
        from: BufReader<ReadHalf<DuplexStream>>,
    }

    fn bridged() -> (Bridge, Client) {
        let (client, ours) = tokio::io::duplex(1 << 16);
        let (input, output) = tokio::io::split(ours);
        let (from, to) = tokio::io::split(client);
        (Bridge::over(Box::new(input), Box::new(output)), Client { to, from: BufReader::new(from) })
    }

    /// One line of JSON, newline-terminated.
    fn line(message: &Value) -> Vec<u8> {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        line
    }

    async fn send(to: &mut (impl tokio::io::AsyncWrite + Unpin), message: &Value) {
        to.write_all(&line(message)).await.unwrap();
    }

    async fn next(from: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> Value {
        let mut text = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), from.read_line(&mut text)).await;
        assert!(read.expect("a line within 5 s").unwrap() > 0, "the stream ended");
        serde_json::from_str(&text).unwrap()
    }

    fn request(id: Value, method: &str, params: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    }

    fn answer(id: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {}})
    }

    #[tokio::test]
    async fn lines_pass_both_ways_and_what_a_gone_holder_took_is_answered_with_an_error() {
        let (mut bridge, mut client) = bridged();
        let (holder, ours) = tokio::io::duplex(1 << 16);
        let script = async move {
            let (from, mut to) = tokio::io::split(holder);
            let mut from = BufReader::new(from);
            send(&mut client.to, &request(json!(1), "initialize", json!({"protocolVersion": "2025-06-18"}))).await;
            send(&mut client.to, &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
            send(&mut client.to, &request(json!("a"), "tools/call", json!({"name": "slow"}))).await;
            send(&mut client.to, &request(json!(3), "tools/call", json!({"name": "also-slow"}))).await;
            assert_eq!(next(&mut from).await["method"], "initialize");
            assert_eq!(next(&mut from).await["method"], "notifications/initialized");
            assert_eq!(next(&mut from).await["id"], "a");
            assert_eq!(next(&mut from).await["id"], 3);
            send(&mut to, &answer(json!(1))).await;
            assert_eq!(next(&mut client.from).await, answer(json!(1)), "passed through as it is");
            // The holder stops with two requests unanswered.
            drop((from, to));
            let mut unanswered = [next(&mut client.from).await, next(&mut client.from).await];
            unanswered.sort_by_key(|m| m["id"].to_string());
            for (message, id) in unanswered.iter().zip([json!("a"), json!(3)]) {
                assert_eq!(message["id"], id);
                assert_eq!(message["error"]["code"], -32603);
                assert!(message["error"]["message"].as_str().unwrap().contains("send it again"), "{message}");
            }
            client
        };
        let (ended, _client) = tokio::join!(bridge.run(ours), script);
        assert_eq!(ended.unwrap(), Bridged::HolderGone);
        assert!(bridge.outstanding.is_empty(), "the unanswered were answered once");
    }

    #[tokio::test]
    async fn a_new_holder_hears_the_initialize_and_the_level_and_the_client_not_their_answers() {
        let (mut bridge, mut client) = bridged();
        let hello = request(json!(0), "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}}));
        let set_level = request(json!(7), "logging/setLevel", json!({"level": "warning"}));
        // The first holder: initialize and setLevel, both answered; then it stops.
        let (first, ours) = tokio::io::duplex(1 << 16);
        let script = async {
            let (from, mut to) = tokio::io::split(first);
            let mut from = BufReader::new(from);
            for message in [&hello, &set_level] {
                send(&mut client.to, message).await;
                assert_eq!(&next(&mut from).await, message);
                send(&mut to, &answer(message["id"].clone())).await;
                assert_eq!(next(&mut client.from).await, answer(message["id"].clone()));
            }
        };
        let (ended, ()) = tokio::join!(bridge.run(ours), script);
        assert_eq!(ended.unwrap(), Bridged::HolderGone);

        // The next holder: the client's session goes on there.
        let (second, ours) = tokio::io::duplex(1 << 16);
        let script = async {
            let (from, mut to) = tokio::io::split(second);
            let mut from = BufReader::new(from);
            assert_eq!(next(&mut from).await, hello, "the client's own initialize");
            send(&mut to, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": "2025-06-18"}})).await;
            assert_eq!(next(&mut from).await["method"], "notifications/initialized");
            let replayed = next(&mut from).await;
            assert_eq!(replayed["method"], "logging/setLevel");
            assert_eq!(replayed["params"], json!({"level": "warning"}));
            assert_eq!(replayed["id"], REPLAYED);
            send(&mut to, &answer(json!(REPLAYED))).await;
            let call = request(json!(8), "tools/call", json!({"name": "echo"}));
            send(&mut client.to, &call).await;
            assert_eq!(next(&mut from).await, call);
            send(&mut to, &answer(json!(8))).await;
            // Neither replay's answer reached the client: the next line is the call's.
            assert_eq!(next(&mut client.from).await, answer(json!(8)));
            client.to.shutdown().await.unwrap();
            let mut rest = Vec::new();
            from.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "the holder sees the client's end and nothing more");
        };
        let (ended, ()) = tokio::join!(bridge.run(ours), script);
        assert_eq!(ended.unwrap(), Bridged::ClientGone);
    }

    #[tokio::test]
    async fn a_request_a_gone_holder_never_took_goes_to_the_next_one_unanswered_by_the_bridge() {
        let (mut bridge, mut client) = bridged();
        let call = request(json!(5), "tools/call", json!({"name": "echo"}));
        // The holder has stopped reading (the request cannot be written to it)
        // but not yet closed the session: the bridge takes the request from the
        // client and keeps it.
        let (its_input, to_it) = tokio::io::duplex(1 << 16);
        let (from_it, its_output) = tokio::io::duplex(1 << 16);
        drop(its_input);
        let script = async {
            send(&mut client.to, &call).await;
            // Until the bridge has read the request, the client could still write more.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            drop(its_output);
        };
        let (ended, ()) = tokio::join!(bridge.run(tokio::io::join(from_it, to_it)), script);
        assert_eq!(ended.unwrap(), Bridged::HolderGone);
        assert!(bridge.pending.is_some(), "the request is kept for the next holder");
        let (second, ours) = tokio::io::duplex(1 << 16);
        let script = async {
            let (from, mut to) = tokio::io::split(second);
            let mut from = BufReader::new(from);
            assert_eq!(next(&mut from).await, call, "the request, once, at the next holder");
            send(&mut to, &answer(json!(5))).await;
            assert_eq!(next(&mut client.from).await, answer(json!(5)), "no error from the bridge before it");
            client.to.shutdown().await.unwrap();
            // The holder closes the session once it sees the client's end.
            from.read_to_end(&mut Vec::new()).await.unwrap();
        };
        let (ended, ()) = tokio::join!(bridge.run(ours), script);
        assert_eq!(ended.unwrap(), Bridged::ClientGone);
    }

    #[tokio::test]
    async fn lines_are_read_whole_up_to_the_limit() {
        let mut text: &[u8] = b"{\"a\":1}\nno newline at the end";
        assert_eq!(read_line(&mut text).await.unwrap(), b"{\"a\":1}\n");
        assert_eq!(read_line(&mut text).await.unwrap(), b"no newline at the end");
        assert_eq!(read_line(&mut text).await.unwrap(), b"", "the end");
        let long = [b'x'; 100];
        let mut small = BufReader::with_capacity(16, &long[..]);
        let error = read_bounded(&mut small, 40).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        let mut fits = BufReader::with_capacity(16, &long[..]);
        assert_eq!(read_bounded(&mut fits, 100).await.unwrap().len(), 100);
    }

    #[test]
    fn a_replayed_request_keeps_everything_but_its_id() {
        let original = line(&request(json!(12), "logging/setLevel", json!({"level": "debug"})));
        let replayed: Value = serde_json::from_slice(&with_id(&original, REPLAYED).unwrap()).unwrap();
        assert_eq!(replayed, request(json!(REPLAYED), "logging/setLevel", json!({"level": "debug"})));
        assert!(with_id(&original, REPLAYED).unwrap().ends_with(b"}\n"), "one line");
        assert_eq!(with_id(b"[1, 2]\n", REPLAYED), None, "not an object");
        assert_eq!(with_id(b"not json\n", REPLAYED), None);
    }

    #[test]
    fn the_heads_of_requests_responses_and_notifications_are_told_apart() {
        let request = head(br#"{"jsonrpc":"2.0","id":"x","method":"tools/list"}"#).unwrap();
        assert_eq!((request.id, request.method.as_deref()), (Some(json!("x")), Some("tools/list")));
        let response = head(br#"{"jsonrpc":"2.0","id":4,"result":{}}"#).unwrap();
        assert_eq!((response.id, response.method), (Some(json!(4)), None));
        let notification = head(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(notification.id, None);
        assert!(head(b"garbage").is_none());
    }

    #[test]
    fn the_error_for_an_unanswered_request_is_json_rpc_with_its_id() {
        for id in [json!(9), json!("req-1")] {
            let text = unanswered(&id.to_string());
            assert!(text.ends_with(b"\n"));
            let message: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(message["jsonrpc"], "2.0");
            assert_eq!(message["id"], id);
            assert_eq!(message["error"]["code"], -32603);
        }
    }
}
