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
